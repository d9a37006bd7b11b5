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
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(tonic::Status) -> ClientError + '_ {
        move |status| ClientError::Rpc {
            what,
            addr: self.addr.clone(),
            status,
        }
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
            .map_err(self.err("append"))?;
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
            .map_err(self.err("append stream"))?;
        Ok(r.into_inner())
    }

    /// `(first, last)`.
    pub async fn bounds(&self) -> Result<(u64, u64), ClientError> {
        let b = self
            .client
            .clone()
            .bounds(BoundsRequest {})
            .await
            .map_err(self.err("bounds"))?
            .into_inner();
        Ok((b.first, b.last))
    }

    /// Every entry in `[from, to]`.
    pub async fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        let mut stream = self
            .client
            .clone()
            .read(ReadRequest {
                from,
                to,
                max_batch_bytes: 0,
            })
            .await
            .map_err(self.err("read"))?
            .into_inner();
        while let Some(r) = stream.message().await.map_err(self.err("read"))? {
            out.extend(r.entries);
        }
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
            client: ShardClient::new(channel).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(tonic::Status) -> ClientError + '_ {
        move |status| ClientError::Rpc {
            what,
            addr: self.addr.clone(),
            status,
        }
    }

    pub async fn applied(&self) -> Result<AppliedResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .applied(AppliedRequest {})
            .await
            .map_err(self.err("applied"))?
            .into_inner())
    }

    /// The shard's state as JSON lines.
    pub async fn dump(&self) -> Result<Vec<String>, ClientError> {
        let mut stream = self
            .client
            .clone()
            .dump(DumpRequest {})
            .await
            .map_err(self.err("dump"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.message().await.map_err(self.err("dump"))? {
            out.push(r.json);
        }
        Ok(out)
    }

    pub async fn stats(&self, reset: bool) -> Result<StatsResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .stats(StatsRequest { reset })
            .await
            .map_err(self.err("stats"))?
            .into_inner())
    }
}
