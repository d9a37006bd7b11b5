//! One sender per shard: keeps a bidirectional `Deliver` stream up (Hello with the epoch,
//! batches within the in-flight window, cumulative acks), and reconnects with backoff.

use super::{PlayerError, Shared, Target, backoff, lock};
use crate::grpc;
use crate::model::now_micros;
use crate::player::metrics::Metrics;
use crate::proto::shard_client::ShardClient;
use crate::proto::{Batch, DeliverRequest, Hello, deliver_request, deliver_response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

impl Shared {
    /// Keeps one shard's delivery stream up for the life of the player.
    pub(super) async fn sender(self: Arc<Self>, t: usize) {
        let target = &self.targets[t];
        let mut retry = backoff(&self.config);
        while !self.shutdown.is_cancelled() {
            match self.deliver_session(t).await {
                Ok(()) => retry = backoff(&self.config),
                Err(SessionEnd::Fenced(message)) => {
                    self.fail(PlayerError::Fenced {
                        shard: target.id.clone(),
                        message,
                    });
                    return;
                }
                Err(SessionEnd::Broken(reason)) => {
                    tracing::debug!(shard = %target.id, %reason, "delivery stream ended");
                }
            }
            lock(&target.queue).suspend();
            target.room.notify_waiters();
            if self.shutdown.is_cancelled() {
                return;
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.stats
                .metrics
                .reconnects
                .get_or_create(&Metrics::shard(&target.id))
                .inc();
            let wait = retry.next();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One connection: hello, resume, then batches out and acks in until it breaks.
    async fn deliver_session(&self, t: usize) -> Result<(), SessionEnd> {
        let target = &self.targets[t];
        let broken = |e: &dyn std::fmt::Display| SessionEnd::Broken(e.to_string());
        let channel = grpc::connect(&target.addr).await.map_err(|e| broken(&e))?;
        let mut client = ShardClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(self.config.window_batches + 1);
        let hello = DeliverRequest {
            msg: Some(deliver_request::Msg::Hello(Hello {
                epoch: self.config.epoch,
                player_id: self.config.player_id.clone(),
            })),
        };
        tx.send(hello).await.map_err(|e| broken(&e))?;
        let mut inbound = client
            .deliver(ReceiverStream::new(rx))
            .await
            .map_err(classify)?
            .into_inner();
        let applied = match inbound.message().await.map_err(classify)? {
            Some(r) => match r.msg {
                Some(deliver_response::Msg::Welcome(w)) => w.applied_index,
                _ => {
                    return Err(SessionEnd::Broken(
                        "first response was not a Welcome".into(),
                    ));
                }
            },
            None => return Err(SessionEnd::Broken("stream ended before Welcome".into())),
        };
        // Resume under the dispatcher's lock: no main-stream push can slip between reading
        // current_index and the queue's state change.
        let recovery = {
            let d = lock(&self.dispatch);
            let mut q = lock(&target.queue);
            let rec = q.resume(applied, d.current_index);
            tracing::info!(shard = %target.id, applied, current = d.current_index, term = q.term(), state = q.state().short(), "shard connected");
            rec
        };
        if let Some(rec) = recovery {
            self.spawn_recovery(t, rec);
        }
        // (last index, earliest dispatch time) of each batch in flight.
        let mut in_flight: std::collections::VecDeque<(u64, u64)> = Default::default();
        loop {
            // Fill the window.
            while in_flight.len() < self.config.window_batches {
                let batch = lock(&target.queue)
                    .next_batch(self.config.batch_entries, self.config.batch_bytes);
                let Some(last) = batch.last().map(|e| e.index) else {
                    break;
                };
                let dispatched = batch.iter().map(|e| e.dispatch_micros).min().unwrap_or(0);
                target.room.notify_waiters();
                in_flight.push_back((last, dispatched));
                let msg = DeliverRequest {
                    msg: Some(deliver_request::Msg::Batch(Batch { entries: batch })),
                };
                tx.send(msg).await.map_err(|e| broken(&e))?;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    // Drain: wait briefly for what is in flight to be acknowledged.
                    let deadline = tokio::time::sleep(Duration::from_secs(2));
                    tokio::pin!(deadline);
                    while !in_flight.is_empty() {
                        tokio::select! {
                            m = inbound.message() => match m {
                                Ok(Some(r)) => if let Some(deliver_response::Msg::Ack(a)) = r.msg {
                                    self.acked(target, &mut in_flight, a.applied_index);
                                },
                                _ => break,
                            },
                            _ = &mut deadline => break,
                        }
                    }
                    return Ok(());
                }
                m = inbound.message() => {
                    match m.map_err(classify)? {
                        Some(r) => match r.msg {
                            Some(deliver_response::Msg::Ack(a)) => {
                                self.acked(target, &mut in_flight, a.applied_index);
                            }
                            _ => return Err(SessionEnd::Broken("unexpected response".into())),
                        },
                        None => return Err(SessionEnd::Broken("shard closed the stream".into())),
                    }
                }
                _ = target.ready.notified(), if in_flight.len() < self.config.window_batches => {}
            }
        }
    }

    /// A cumulative ack: record it, observe the delivery delay of the batches it covers,
    /// and free their window slots.
    fn acked(
        &self,
        target: &Target,
        in_flight: &mut std::collections::VecDeque<(u64, u64)>,
        applied: u64,
    ) {
        lock(&target.queue).on_ack(applied);
        let now = now_micros();
        let delay = self
            .stats
            .metrics
            .delivery_delay
            .get_or_create(&Metrics::shard(&target.id));
        while let Some(&(last, dispatched)) = in_flight.front() {
            if last > applied {
                break;
            }
            if dispatched > 0 {
                delay.observe(now.saturating_sub(dispatched) as f64 / 1e6);
            }
            in_flight.pop_front();
        }
    }
}

/// How a delivery session ended: fenced (stop) or broken (reconnect).
pub(super) enum SessionEnd {
    Fenced(String),
    Broken(String),
}

pub(super) fn classify(status: tonic::Status) -> SessionEnd {
    let fenced = status
        .metadata()
        .get(grpc::ERROR_KEY)
        .is_some_and(|v| v == "fenced");
    if fenced {
        SessionEnd::Fenced(status.message().to_owned())
    } else {
        SessionEnd::Broken(format!("{}: {}", status.code(), status.message()))
    }
}
