//! The LogStore's gRPC edge: `Append`, `Read` (tailing and bounded), `Bounds`, `Retain`,
//! plus health and reflection. Errors become statuses here and nowhere else.

use std::pin::Pin;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{LogStore, LogStoreError};
use crate::grpc::{self, GrpcError};
use crate::logstore::wal::WalError;
use crate::proto::log_store_server::{LogStore as LogStoreRpc, LogStoreServer};
use crate::proto::{
    AppendRequest, AppendResponse, BoundsRequest, BoundsResponse, ReadRequest, ReadResponse,
    RetainRequest, RetainResponse,
};

/// Appends of one `AppendStream` submitted but not yet answered.
const APPEND_PIPELINE: usize = 1024;
/// Default and largest size of one `ReadResponse`.
const DEFAULT_READ_BATCH_BYTES: usize = 1024 * 1024;
const MAX_READ_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Responses buffered per read stream; a slow reader holds back its own stream only.
const READ_STREAM_BUFFER: usize = 4;

fn to_status(e: LogStoreError) -> Status {
    match &e {
        LogStoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
        LogStoreError::StaleSequence { .. } => Status::failed_precondition(e.to_string()),
        LogStoreError::Wal(WalError::Removed { .. }) => Status::out_of_range(e.to_string()),
        LogStoreError::Stopped => Status::unavailable(e.to_string()),
        LogStoreError::Wal(WalError::Corruption { .. }) | LogStoreError::Decode { .. } => {
            Status::data_loss(e.to_string())
        }
        LogStoreError::Wal(_) => Status::internal(e.to_string()),
    }
}

#[derive(Clone)]
struct Service {
    log: LogStore,
    shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl LogStoreRpc for Service {
    type ReadStream = BoxStream<ReadResponse>;
    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut inbound = request.into_inner();
        // Submitted appends awaiting durability, in request order.
        let (pending_tx, mut pending_rx) = mpsc::channel(APPEND_PIPELINE);
        let (tx, rx) = mpsc::channel(APPEND_PIPELINE);
        let log = self.log.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => return,
                };
                let submitted = match msg {
                    Ok(Some(r)) => {
                        let writer = (!r.writer_id.is_empty()).then_some((r.writer_id, r.sequence));
                        log.submit(r.mutations, writer, r.append_start_micros)
                            .await
                            .map_err(to_status)
                    }
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let refused = submitted.is_err();
                if pending_tx.send(submitted).await.is_err() || refused {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(submitted) = pending_rx.recv().await {
                let out = match submitted {
                    Ok(reply) => match reply.await {
                        Ok(r) => r.map_err(to_status),
                        Err(_) => Err(to_status(LogStoreError::Stopped)),
                    },
                    Err(status) => Err(status),
                };
                let refused = out.is_err();
                let msg = out.map(|a| AppendResponse {
                    index: a.index,
                    duplicate: a.duplicate,
                });
                if tx.send(msg).await.is_err() || refused {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let r = request.into_inner();
        let writer = (!r.writer_id.is_empty()).then_some((r.writer_id, r.sequence));
        let out = self
            .log
            .append(r.mutations, writer, r.append_start_micros)
            .await
            .map_err(to_status)?;
        Ok(Response::new(AppendResponse {
            index: out.index,
            duplicate: out.duplicate,
        }))
    }

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = request.into_inner();
        if r.from == 0 {
            return Err(Status::invalid_argument("read: `from` must be at least 1"));
        }
        if r.to != 0 && r.to < r.from {
            return Err(Status::invalid_argument(format!(
                "read: `to` ({}) is below `from` ({})",
                r.to, r.from
            )));
        }
        let (first, _) = self.log.bounds();
        if r.from < first {
            return Err(Status::out_of_range(format!(
                "read: entries below {first} were removed by retention; asked from {}",
                r.from
            )));
        }
        let max = match r.max_batch_bytes as usize {
            0 => DEFAULT_READ_BATCH_BYTES,
            n => n.min(MAX_READ_BATCH_BYTES),
        };
        let (tx, rx) = mpsc::channel(READ_STREAM_BUFFER);
        let log = self.log.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut head = log.head();
            let mut pos = r.from;
            loop {
                if r.to != 0 && pos > r.to {
                    return; // bounded read complete: end the stream with OK
                }
                let available = *head.borrow_and_update();
                if pos > available {
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                let to = if r.to == 0 {
                    available
                } else {
                    r.to.min(available)
                };
                let entries = match log.read(pos, to, max) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let Some(last) = entries.last().map(|e| e.index) else {
                    return;
                };
                pos = last + 1;
                tokio::select! {
                    sent = tx.send(Ok(ReadResponse { entries })) => if sent.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn bounds(&self, _r: Request<BoundsRequest>) -> Result<Response<BoundsResponse>, Status> {
        let (first, last) = self.log.bounds();
        Ok(Response::new(BoundsResponse { first, last }))
    }

    async fn retain(&self, r: Request<RetainRequest>) -> Result<Response<RetainResponse>, Status> {
        let (first, removed) = self
            .log
            .retain(r.into_inner().below)
            .await
            .map_err(to_status)?;
        Ok(Response::new(RetainResponse {
            first,
            segments_removed: removed as u32,
        }))
    }
}

/// Serves the LogStore until `shutdown` is cancelled; then stops accepting, ends the read
/// streams, lets in-flight appends finish, and returns.
pub async fn serve(
    log: LogStore,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let svc = LogStoreServer::new(Service {
        log,
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
    let router = grpc::router("logplayer.v1.LogStore")
        .await?
        .add_service(svc);
    grpc::serve(router, listener, shutdown, "logstore").await
}
