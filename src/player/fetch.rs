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
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Shared {
    /// Dispatches the main-stream entries of one response, in order (called by the fetcher
    /// only). Each shard's parts (and watermarks) are collected first and then pushed under
    /// one lock of its queue, with one wake-up of its sender (at high rates a response holds
    /// many entries; per entry, each shard cost a lock and a wake-up — the saving is not yet
    /// measured). The dispatcher's lock is held throughout, so a queue
    /// resumed meanwhile sees `current_index` and its pushes agree, as with one entry.
    /// A response that does not continue the main stream ([`in_order`]) is refused whole.
    fn dispatch(&self, entries: Vec<Entry>) -> Result<(), tonic::Status> {
        if entries.is_empty() {
            return Ok(());
        }
        let count = entries.len() as u64;
        let now = now_micros();
        let mut d = lock(&self.dispatch);
        in_order(d.current_index + 1, u64::MAX, &entries)?;
        let mut parts: Vec<Vec<ShardEntry>> = vec![Vec::new(); self.targets.len()];
        let split = split(&self.config.shards, &entries);
        for (entry, split) in entries.into_iter().zip(split) {
            let fingerprint = crate::model::fingerprint(&entry);
            for (t, mutations) in split.into_iter().enumerate() {
                if mutations.is_empty() {
                    continue;
                }
                let part = tag(&mut d.last_real[t], &entry, mutations, now, fingerprint);
                parts[t].push(part);
            }
            d.current_index = entry.index;
            d.current_fingerprint = fingerprint;
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
                            fingerprint,
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
        Ok(())
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

    /// The client the main stream reads from: [`leader_log`], asked again at each
    /// reconnection.
    pub(super) async fn main_stream_log(
        &self,
    ) -> crate::proto::log_store_client::LogStoreClient<tonic::transport::Channel> {
        leader_log(&self.log, &self.config).await
    }

    /// Whether the log still reaches `read`, the last index the main stream read, and holds
    /// there the entry it read (`fingerprint`, see `behind`): asked each time the main
    /// stream (re)connects. `Ok(false)`: the log could not show the entry (it does not hold
    /// it yet, or did not answer); the main stream must not read on (a follow read past the
    /// log's end waits for it to grow, and would deliver a regrown log unchecked), so it
    /// asks again.
    async fn log_keeps_what_was_read(
        &self,
        log: &crate::proto::log_store_client::LogStoreClient<tonic::transport::Channel>,
        read: u64,
        fingerprint: u64,
    ) -> Result<bool, PlayerError> {
        let go_on = super::behind::Unanswered::GoOn;
        if let Err(unreached) =
            super::behind::reaches(log, &self.log_id, read, go_on, &self.shutdown).await
        {
            let who = "this player has read".into();
            return Err(unreached.error(&self.config.logstore, &self.log_id, who, read));
        }
        match super::behind::holds(log, &self.log_id, read, fingerprint).await {
            super::behind::Held::Other(held) => Err(PlayerError::LogDiverged {
                addr: self.config.logstore.clone(),
                log_id: self.log_id.clone(),
                who: "this player read".into(),
                index: read,
                held,
                had: fingerprint,
            }),
            super::behind::Held::Unknown(why) => {
                tracing::debug!(index = read, %why, "cannot check the last entry read against the log yet; not reading on");
                Ok(false)
            }
            super::behind::Held::Same
            | super::behind::Held::Unchecked(_)
            | super::behind::Held::AnotherLog => Ok(true),
        }
    }

    /// The main stream, for the life of the player (reconnecting as needed).
    pub(super) async fn fetcher(self: Arc<Self>) {
        let mut retry = backoff(&self.config, "fetcher");
        while !self.shutdown.is_cancelled() {
            let (read, fingerprint) = {
                let d = lock(&self.dispatch);
                (d.current_index, d.current_fingerprint)
            };
            let from = read + 1;
            let log = self.main_stream_log().await;
            match self.log_keeps_what_was_read(&log, read, fingerprint).await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(retry.next()) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
            let result: Result<(), tonic::Status> = async {
                let mut stream = log
                    .clone()
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
                    self.dispatch(resp.entries)?;
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

/// The log leader's client, when the LogStore is a replicated one whose leader is one of
/// the configured addresses (a follower learns that an entry is committed a replication
/// round after the leader does, which would add that round to every delivery, and only a
/// leader knows where the log ends); otherwise `log`, the client over every address.
pub(super) async fn leader_log(
    log: &crate::proto::log_store_client::LogStoreClient<tonic::transport::Channel>,
    config: &super::PlayerConfig,
) -> crate::proto::log_store_client::LogStoreClient<tonic::transport::Channel> {
    let addrs = &config.logstore;
    if !addrs.contains(',') {
        return log.clone();
    }
    let mut asking = log.clone();
    let ask = asking.bounds(crate::proto::BoundsRequest {});
    let leader = match tokio::time::timeout(std::time::Duration::from_secs(1), ask).await {
        Ok(Ok(b)) => b.into_inner().replica.map(|r| r.leader_addr),
        _ => None,
    };
    let Some(leader) = leader.filter(|l| addrs.split(',').any(|a| a.trim() == l)) else {
        return log.clone();
    };
    match grpc::connect_lazy(&leader, &grpc::Expected::Log) {
        Ok(channel) => {
            let limit = crate::limits::message_limit(config.max_entry_bytes);
            tracing::debug!(%leader, "asking the log leader");
            crate::proto::log_store_client::LogStoreClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        }
        Err(_) => log.clone(),
    }
}

/// Checks that a response of a read that has delivered everything below `next` holds
/// `next`, `next + 1`, ... in order, none past `to`. The player tags each shard's part with
/// the previous index it saw for that shard, so an index the LogStore skipped would never be
/// asked for (its mutations lost without a gap any shard could see) and one sent twice would
/// be sent to the shards twice. Our LogStore never does either; a wrong peer, or a bug in
/// one, stops the read (`corrupt`, retried slowly) instead of losing or repeating data.
pub(super) fn in_order(next: u64, to: u64, entries: &[Entry]) -> Result<(), tonic::Status> {
    for (expected, e) in (next..).zip(entries) {
        if e.index != expected || e.index > to {
            return Err(Reason::Corrupt.status(format!(
                "the LogStore sent entry {} where {expected} was next{} (a log's indexes are dense and increasing); nothing of this response was delivered",
                e.index,
                if to == u64::MAX {
                    String::new()
                } else {
                    format!(" of a read up to {to}")
                },
            )));
        }
    }
    Ok(())
}

/// What `/readyz` lists a main-stream problem under.
const MAIN_STREAM: &str = "main stream";

/// A shard's part of `entry` (its `mutations`), naming the last index before it that touched
/// the shard (`last_real`, which moves to this entry) as its previous index: the shard
/// refuses a part whose previous index it has not applied, so an entry lost on the way is a
/// refusal, never a gap in its state.
fn tag(
    last_real: &mut u64,
    entry: &Entry,
    mutations: Vec<Mutation>,
    now: u64,
    fingerprint: u64,
) -> ShardEntry {
    let prev_index = std::mem::replace(last_real, entry.index);
    ShardEntry {
        index: entry.index,
        prev_index,
        mutations,
        append_start_micros: entry.append_start_micros,
        dispatch_micros: now,
        fingerprint,
    }
}

/// Each entry's mutations split by owning shard (`[entry][shard]`, order kept within each
/// shard), copied ([`Copies`]) into chunks that hold one shard's mutations each.
pub(super) fn split(map: &ShardMap, entries: &[Entry]) -> Vec<Vec<Vec<Mutation>>> {
    let routes: Vec<usize> = entries
        .iter()
        .flat_map(|e| &e.mutations)
        .map(|m| map.shard_of(&m.key))
        .collect();
    let mut sizes = vec![0usize; map.len()];
    for (m, &t) in entries.iter().flat_map(|e| &e.mutations).zip(&routes) {
        sizes[t] += Copies::len_of(m);
    }
    let mut copies: Vec<Copies> = sizes.into_iter().map(Copies::with_capacity).collect();
    let mut route = routes.iter();
    entries
        .iter()
        .map(|e| {
            let mut parts: Vec<Vec<Mutation>> = vec![Vec::new(); map.len()];
            for (m, &t) in e.mutations.iter().zip(route.by_ref()) {
                parts[t].push(copies[t].copy(m));
            }
            parts
        })
        .collect()
}

/// Copies of mutations that own their bytes, in buffers of at most [`COPY_CHUNK`] bytes.
/// Decoded `Bytes` fields are slices of the whole response they came in (up to a MiB);
/// queueing a slice for a stalled shard would pin every such response, so memory would grow
/// with the log rather than with the shard's share. A chunk holds one shard's mutations
/// only, so what a queue pins is its own share plus at most a chunk; it costs one allocation
/// per chunk instead of two per mutation, and its slices are encoded without the allocation
/// a `Bytes` of its own makes on its first clone (prost clones every `Bytes` field it
/// encodes).
pub(super) struct Copies {
    buf: BytesMut,
    /// Bytes still to copy, as sized when made (the last chunk is no larger than needed).
    left: usize,
}

/// The most one chunk of [`Copies`] holds (a larger key or value gets a chunk of its own).
/// Small enough that a chunk pinned by one queued entry costs little and stays out of the
/// allocator's huge-allocation path; large enough for hundreds of 100-byte mutations.
const COPY_CHUNK: usize = 64 * 1024;

impl Copies {
    /// Chunks for `bytes` bytes of keys and values (more are copied too, in new chunks).
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Copies {
            buf: BytesMut::new(),
            left: bytes,
        }
    }

    /// The bytes a copy of `m` takes.
    pub(super) fn len_of(m: &Mutation) -> usize {
        use crate::proto::mutation::Op;
        m.key.len()
            + match &m.op {
                Some(Op::Put(b) | Op::Append(b)) => b.len(),
                _ => 0,
            }
    }

    fn copy_bytes(&mut self, b: &Bytes) -> Bytes {
        if b.is_empty() {
            return Bytes::new(); // pins no chunk
        }
        if self.buf.capacity() < b.len() {
            self.buf = BytesMut::with_capacity(b.len().max(self.left.min(COPY_CHUNK)));
        }
        self.left = self.left.saturating_sub(b.len());
        self.buf.extend_from_slice(b);
        self.buf.split().freeze()
    }

    /// A copy of `m` whose bytes are in this buffer's chunks.
    pub(super) fn copy(&mut self, m: &Mutation) -> Mutation {
        use crate::proto::mutation::Op;
        Mutation {
            key: self.copy_bytes(&m.key),
            op: m.op.as_ref().map(|op| match op {
                Op::Put(b) => Op::Put(self.copy_bytes(b)),
                Op::Append(b) => Op::Append(self.copy_bytes(b)),
                other => other.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mutation::Op;
    use prost::Message;

    fn entry(index: u64, keys: std::ops::Range<u32>) -> Entry {
        Entry {
            index,
            mutations: keys
                .map(|k| Mutation {
                    key: Bytes::from(format!("key-{k}")),
                    op: Some(if k % 3 == 0 {
                        Op::Add(k as i64)
                    } else {
                        Op::Append(Bytes::from(vec![k as u8; 100 + k as usize]))
                    }),
                })
                .collect(),
            append_start_micros: index,
        }
    }

    /// An entry with a value larger than a chunk of copies, between two small ones.
    fn big(index: u64) -> Entry {
        let mut e = entry(index, 1..3);
        e.mutations.insert(
            1,
            Mutation {
                key: Bytes::from_static(b"key-big"),
                op: Some(Op::Put(Bytes::from(vec![9u8; 3 * COPY_CHUNK]))),
            },
        );
        e
    }

    /// Whether `inner` lies within `outer`'s memory.
    fn within(inner: &[u8], outer: &[u8]) -> bool {
        let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
        !inner.is_empty() && o.start <= i.start && i.end <= o.end
    }

    #[test]
    fn entries_split_by_shard_in_order_into_copies_that_do_not_pin_the_response() {
        let map =
            ShardMap::from_specs(&["a=127.0.0.1:1", "b=127.0.0.1:2", "c=127.0.0.1:3"]).unwrap();
        // Decoded from one buffer, as a response is: every field is a slice of it.
        let sent = crate::proto::ReadResponse {
            entries: vec![entry(1, 0..10), entry(2, 10..13), entry(3, 13..30), big(4)],
            ..Default::default()
        };
        let wire = Bytes::from(sent.encode_to_vec());
        let got = crate::proto::ReadResponse::decode(wire.clone()).unwrap();
        let parts = split(&map, &got.entries);
        assert_eq!(parts.len(), 4);
        for (e, parts) in got.entries.iter().zip(&parts) {
            assert_eq!(parts.len(), map.len());
            // Each shard's part is that shard's mutations, in the entry's order.
            for (t, part) in parts.iter().enumerate() {
                let want: Vec<&Mutation> = e
                    .mutations
                    .iter()
                    .filter(|m| map.shard_of(&m.key) == t)
                    .collect();
                assert_eq!(
                    part.iter().collect::<Vec<_>>(),
                    want,
                    "entry {} shard {t}",
                    e.index
                );
                for m in part {
                    assert!(
                        !within(&m.key, &wire),
                        "a key still points into the response"
                    );
                    if let Some(Op::Append(v) | Op::Put(v)) = &m.op {
                        assert!(!within(v, &wire), "a value still points into the response");
                    }
                }
            }
        }
        // Every mutation went somewhere.
        let total: usize = parts.iter().flatten().map(Vec::len).sum();
        assert_eq!(total, 33);
    }

    /// Each shard's part names the last entry before it that touched that shard, whatever
    /// touched the others in between (the shard's gap check rests on it).
    #[test]
    fn each_part_names_the_last_entry_that_touched_its_shard() {
        // Entry 1 touches s0 and s1, 2 only s1, 3 only s0, 4 both; the stream started at 1.
        let touches: [(u64, &[usize]); 4] = [(1, &[0, 1]), (2, &[1]), (3, &[0]), (4, &[0, 1])];
        let mut last_real = [0u64; 2];
        let mut named: Vec<(u64, usize, u64)> = Vec::new();
        for (index, shards) in touches {
            let e = entry(index, 0..1);
            for &t in shards {
                let part = tag(&mut last_real[t], &e, e.mutations.clone(), 0, 0);
                assert_eq!(part.index, index);
                named.push((index, t, part.prev_index));
            }
        }
        assert_eq!(
            named,
            vec![
                (1, 0, 0),
                (1, 1, 0),
                (2, 1, 1),
                (3, 0, 1),
                (4, 0, 3),
                (4, 1, 2)
            ]
        );
        assert_eq!(last_real, [4, 4]);
    }

    #[test]
    fn a_response_must_continue_the_log_densely_and_stay_in_its_range() {
        let run =
            |indexes: &[u64]| -> Vec<Entry> { indexes.iter().map(|&i| entry(i, 0..1)).collect() };
        assert!(in_order(5, u64::MAX, &run(&[5, 6, 7])).is_ok());
        assert!(in_order(5, 7, &run(&[5, 6, 7])).is_ok());
        assert!(in_order(5, u64::MAX, &[]).is_ok());
        for (next, to, indexes, says) in [
            (5, u64::MAX, &[6, 7][..], "entry 6 where 5 was next"),
            (5, u64::MAX, &[5, 7], "entry 7 where 6 was next"),
            (5, u64::MAX, &[5, 5], "entry 5 where 6 was next"),
            (5, u64::MAX, &[4, 5], "entry 4 where 5 was next"),
            (
                5,
                6,
                &[5, 6, 7],
                "entry 7 where 7 was next of a read up to 6",
            ),
        ] {
            let status = in_order(next, to, &run(indexes)).unwrap_err();
            assert_eq!(Reason::of(&status), Some(Reason::Corrupt), "{indexes:?}");
            assert!(
                status.message().contains(says),
                "{indexes:?}: {}",
                status.message()
            );
        }
    }
}
