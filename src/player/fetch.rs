//! The main stream: the fetcher tails the LogStore from `min(applied) + 1`, and the
//! dispatcher splits each entry by shard, tags each part with the previous index that
//! touched that shard, and pushes it to the target queues (starting a recovery when a queue
//! overflows), with a watermark for idle shards every `watermark_every` entries.

use super::queue::{Push, Recovery};
use super::{PlayerError, Shared, backoff, lock};
use crate::grpc::{self, Reason};
use crate::model::now_micros;
use crate::player::metrics::Metrics;
use crate::proto::{Entry, Mutation, ReadRequest, ShardEntry};
use crate::routing::ShardMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Shared {
    /// Dispatches the main-stream entries of one response, in order (called by the fetcher
    /// only). Each shard's parts (and watermarks) are collected first and then pushed under
    /// one lock of its queue, with one wake-up of its sender (at high rates a response holds
    /// many entries; per entry, each shard cost a lock and a wake-up — the saving is not yet
    /// measured). The dispatcher's lock is held throughout, so a queue
    /// resumed meanwhile sees `current_index` and its pushes agree, as with one entry.
    fn dispatch(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let count = entries.len() as u64;
        let now = now_micros();
        let mut d = lock(&self.dispatch);
        let mut parts: Vec<Vec<ShardEntry>> = vec![Vec::new(); self.targets.len()];
        for entry in entries {
            debug_assert!(entry.index > d.current_index, "main stream out of order");
            for (t, mutations) in split(&self.config.shards, &entry.mutations)
                .into_iter()
                .enumerate()
            {
                if mutations.is_empty() {
                    continue;
                }
                let prev = d.last_real[t];
                d.last_real[t] = entry.index;
                parts[t].push(ShardEntry {
                    index: entry.index,
                    prev_index: prev,
                    mutations,
                    append_start_micros: entry.append_start_micros,
                    dispatch_micros: now,
                });
            }
            d.current_index = entry.index;
            d.since_watermark += 1;
            if d.since_watermark >= self.config.watermark_every {
                d.since_watermark = 0;
                let current = d.current_index;
                for (t, target) in self.targets.iter().enumerate() {
                    let behind = lock(&target.queue).last_ack()
                        < current.saturating_sub(self.config.watermark_every);
                    if behind && d.last_real[t] != current {
                        parts[t].push(ShardEntry {
                            index: current,
                            prev_index: d.last_real[t],
                            dispatch_micros: now,
                            ..Default::default()
                        });
                    }
                }
            }
        }
        for (t, parts) in parts.into_iter().enumerate() {
            if !parts.is_empty() {
                self.push(t, parts);
            }
        }
        self.stats
            .current_index
            .store(d.current_index, Ordering::Relaxed);
        self.stats.dispatched.fetch_add(count, Ordering::Relaxed);
        self.stats.metrics.dispatched.inc_by(count);
    }

    /// Pushes one shard's parts, in order, under one lock of its queue; wakes its sender
    /// once, and starts a recovery for each overflow. A watermark is the part with no
    /// mutations (a real part always has some); those queued are counted.
    fn push(&self, t: usize, parts: Vec<ShardEntry>) {
        let target = &self.targets[t];
        let mut queued = false;
        let mut recoveries = Vec::new();
        let mut watermarks_queued = 0;
        {
            let mut queue = lock(&target.queue);
            for part in parts {
                let watermark = part.mutations.is_empty();
                match queue.push_normal(part) {
                    Push::Queued => {
                        queued = true;
                        watermarks_queued += u64::from(watermark);
                    }
                    Push::Overflow(rec) => recoveries.push(rec),
                    _ => {}
                }
            }
        }
        if watermarks_queued > 0 {
            self.stats
                .watermarks
                .fetch_add(watermarks_queued, Ordering::Relaxed);
        }
        if queued {
            target.ready.notify_one();
        }
        for rec in recoveries {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = %target.id, from = rec.from, to = rec.to, "queue overflowed; recovering from the log");
            self.spawn_recovery(t, rec);
        }
    }

    pub(super) fn spawn_recovery(&self, t: usize, rec: Recovery) {
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        self.stats
            .metrics
            .recoveries
            .get_or_create(&Metrics::shard(&self.targets[t].id))
            .inc();
        if let Some(shared) = self.me.upgrade() {
            tokio::spawn(async move { shared.recover(t, rec).await });
        }
    }

    /// The client the main stream reads from: the log leader's, when the LogStore is a
    /// replicated one whose leader is one of the configured addresses (a follower learns that
    /// an entry is committed a replication round after the leader does, which would add that
    /// round to every delivery); otherwise the client over every address. Asked again at each
    /// reconnection.
    async fn main_stream_log(
        &self,
    ) -> crate::proto::log_store_client::LogStoreClient<tonic::transport::Channel> {
        let addrs = &self.config.logstore;
        if !addrs.contains(',') {
            return self.log.clone();
        }
        let mut log = self.log.clone();
        let ask = log.bounds(crate::proto::BoundsRequest {});
        let leader = match tokio::time::timeout(std::time::Duration::from_secs(1), ask).await {
            Ok(Ok(b)) => b.into_inner().replica.map(|r| r.leader_addr),
            _ => None,
        };
        let Some(leader) = leader.filter(|l| addrs.split(',').any(|a| a.trim() == l)) else {
            return self.log.clone();
        };
        match grpc::connect_lazy(&leader) {
            Ok(channel) => {
                let limit = crate::limits::message_limit(self.config.max_entry_bytes);
                tracing::debug!(%leader, "the main stream reads from the log leader");
                crate::proto::log_store_client::LogStoreClient::new(channel)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit)
            }
            Err(_) => self.log.clone(),
        }
    }

    /// The main stream, for the life of the player (reconnecting as needed).
    pub(super) async fn fetcher(self: Arc<Self>) {
        let mut retry = backoff(&self.config, "fetcher");
        while !self.shutdown.is_cancelled() {
            let from = lock(&self.dispatch).current_index + 1;
            let result: Result<(), tonic::Status> = async {
                let mut stream = self
                    .main_stream_log()
                    .await
                    .read(ReadRequest {
                        from,
                        to: 0,
                        max_batch_bytes: 0,
                        follow: true,
                    })
                    .await?
                    .into_inner();
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m?,
                        _ = self.shutdown.cancelled() => return Ok(()),
                    };
                    let Some(resp) = msg else { return Ok(()) };
                    if resp.log_id != self.log_id {
                        self.fail(PlayerError::WrongLog {
                            addr: self.config.logstore.clone(),
                            expected: self.log_id.clone(),
                            found: resp.log_id,
                        });
                        return Ok(());
                    }
                    retry = backoff(&self.config, "fetcher");
                    if self.stats.metrics.clear_problem(MAIN_STREAM) {
                        self.stats.metrics.read_stalled.set(0);
                        tracing::info!("the main stream reads again");
                    }
                    self.dispatch(resp.entries);
                }
            }
            .await;
            let status = match result {
                Ok(()) => None,
                Err(status) => Some(grpc::decode_refusal(status)),
            };
            match status.as_ref().map(|s| (s, Reason::of(s))) {
                None => {}
                Some((_, Some(Reason::BelowRetention))) => {
                    let first = self.first_index().await.unwrap_or(0);
                    self.fail(PlayerError::Retention {
                        shard: "(main stream)".into(),
                        needed: from,
                        first,
                    });
                    return;
                }
                Some((status, Some(reason @ (Reason::EntryTooLarge | Reason::Corrupt)))) => {
                    // Retrying will not help until somebody acts: say so once, loudly.
                    let message = format!("cannot read entry {from}: {}", status.message());
                    self.stats.metrics.read_stalled.set(1);
                    if self.stats.metrics.set_problem(MAIN_STREAM, &message) {
                        tracing::error!(index = from, reason = reason.as_str(), %message, "the main stream is stalled; retrying slowly");
                    }
                }
                Some((status, _)) => {
                    tracing::warn!(%status, from, "main stream failed; reconnecting");
                }
            }
            let wait = retry.next();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// What `/readyz` lists a main-stream problem under.
const MAIN_STREAM: &str = "main stream";

/// Splits an entry's mutations by owning shard (order kept within each shard).
pub(super) fn split(map: &ShardMap, mutations: &[Mutation]) -> Vec<Vec<Mutation>> {
    let mut parts: Vec<Vec<Mutation>> = vec![Vec::new(); map.len()];
    for m in mutations {
        parts[map.shard_of(&m.key)].push(owned(m));
    }
    parts
}

/// A copy of `m` that owns its bytes. Decoded `Bytes` fields are slices of the whole
/// response they came in (up to a MiB); queueing a slice for a stalled shard would pin every
/// such response, so memory would grow with the log rather than with the shard's share.
pub(super) fn owned(m: &Mutation) -> Mutation {
    use crate::proto::mutation::Op;
    use bytes::Bytes;
    let copy = |b: &Bytes| Bytes::copy_from_slice(b);
    Mutation {
        key: copy(&m.key),
        op: m.op.as_ref().map(|op| match op {
            Op::Put(b) => Op::Put(copy(b)),
            Op::Append(b) => Op::Append(copy(b)),
            other => other.clone(),
        }),
    }
}
