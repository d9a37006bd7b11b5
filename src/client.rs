//! Thin client helpers over the generated stubs, for the CLI, the demo, the bench and tests.

use tonic::transport::Channel;

use crate::grpc;
use crate::proto::log_store_client::LogStoreClient;
use crate::proto::shard_client::ShardClient;
use crate::proto::{
    AppendRequest, AppliedRequest, AppliedResponse, BoundsRequest, DumpRequest, Entry, Mutation,
    ReadRequest, StatsRequest, StatsResponse,
};

/// Errors talking to our servers.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] grpc::GrpcError),
    #[error("{what} at {addr}: {status}")]
    Rpc {
        what: &'static str,
        addr: String,
        status: tonic::Status,
    },
}

/// Names the call and the address in an RPC's error.
fn rpc_err(addr: &str, what: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    let addr = addr.to_owned();
    move |status| ClientError::Rpc { what, addr, status }
}

/// Awaits one call, naming it and the address in its error.
async fn call<T>(
    addr: &str,
    what: &'static str,
    rpc: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    rpc.await
        .map(tonic::Response::into_inner)
        .map_err(rpc_err(addr, what))
}

/// Hands every message of a server stream to `f`, naming the call in an error.
async fn each_message<T>(
    addr: &str,
    what: &'static str,
    mut stream: tonic::Streaming<T>,
    mut f: impl FnMut(T),
) -> Result<(), ClientError> {
    while let Some(m) = stream.message().await.map_err(rpc_err(addr, what))? {
        f(m);
    }
    Ok(())
}

/// A LogStore client.
#[derive(Clone)]
pub struct Log {
    addr: String,
    client: LogStoreClient<Channel>,
}

impl Log {
    pub async fn connect(addr: &str) -> Result<Log, ClientError> {
        let channel = grpc::connect(addr).await?;
        Ok(Log {
            addr: addr.to_owned(),
            client: LogStoreClient::new(channel)
                .max_decoding_message_size(crate::limits::message_limit(
                    crate::limits::MAX_MAX_ENTRY_BYTES,
                ))
                .max_encoding_message_size(crate::limits::message_limit(
                    crate::limits::MAX_MAX_ENTRY_BYTES,
                )),
        })
    }

    pub async fn append(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(&str, u64)>,
        start_micros: u64,
    ) -> Result<u64, ClientError> {
        let (writer_id, sequence) = writer.map(|(w, s)| (w.to_owned(), s)).unwrap_or_default();
        let r = self
            .client
            .clone()
            .append(AppendRequest {
                mutations,
                writer_id,
                sequence,
                append_start_micros: start_micros,
            })
            .await
            .map_err(rpc_err(&self.addr, "append"))?;
        Ok(r.into_inner().index)
    }

    /// Opens a pipelined append stream: requests go in through `requests`; one response
    /// comes back per request, in order, once it is durable.
    pub async fn append_stream(
        &self,
        requests: tokio::sync::mpsc::Receiver<AppendRequest>,
    ) -> Result<tonic::Streaming<crate::proto::AppendResponse>, ClientError> {
        let r = self
            .client
            .clone()
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .map_err(rpc_err(&self.addr, "append stream"))?;
        Ok(r.into_inner())
    }

    /// `(first, last)`.
    pub async fn bounds(&self) -> Result<(u64, u64), ClientError> {
        let b = self.describe().await?;
        Ok((b.first, b.last))
    }

    /// Everything `Bounds` says: first and last index, the log id and the entry limit.
    pub async fn describe(&self) -> Result<crate::proto::BoundsResponse, ClientError> {
        call(
            &self.addr,
            "bounds",
            self.client.clone().bounds(BoundsRequest {}),
        )
        .await
    }

    /// Every entry in `[from, to]`.
    pub async fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        let request = ReadRequest {
            from,
            to,
            max_batch_bytes: 0,
            follow: false,
        };
        let stream = call(&self.addr, "read", self.client.clone().read(request)).await?;
        each_message(&self.addr, "read", stream, |r| out.extend(r.entries)).await?;
        Ok(out)
    }
}

/// A shard client (not the delivery stream: that is the player's).
#[derive(Clone)]
pub struct ShardConn {
    addr: String,
    client: ShardClient<Channel>,
}

impl ShardConn {
    pub async fn connect(addr: &str) -> Result<ShardConn, ClientError> {
        let channel = grpc::connect(addr).await?;
        Ok(ShardConn {
            addr: addr.to_owned(),
            client: ShardClient::new(channel).max_decoding_message_size(
                crate::limits::message_limit(crate::limits::MAX_MAX_ENTRY_BYTES),
            ),
        })
    }

    pub async fn applied(&self) -> Result<AppliedResponse, ClientError> {
        call(
            &self.addr,
            "applied",
            self.client.clone().applied(AppliedRequest {}),
        )
        .await
    }

    /// The shard's state as JSON lines.
    pub async fn dump(&self) -> Result<Vec<String>, ClientError> {
        let mut client = self.client.clone();
        let stream = call(&self.addr, "dump", client.dump(DumpRequest {})).await?;
        let mut out = Vec::new();
        each_message(&self.addr, "dump", stream, |r| out.push(r.json)).await?;
        Ok(out)
    }

    pub async fn stats(&self, reset: bool) -> Result<StatsResponse, ClientError> {
        let request = StatsRequest { reset };
        call(&self.addr, "stats", self.client.clone().stats(request)).await
    }
}
