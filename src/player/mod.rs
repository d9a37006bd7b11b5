//! The LogPlayer: reads the log and delivers each entry's mutations to the shards that own
//! them, exactly once and in order per shard.
//!
//! Parts (after the paper): the **fetcher** tails the LogStore from `min(applied) + 1` (the
//! main stream); the **dispatcher** splits each entry by shard, tags each part with the
//! previous index that touched that shard, skips shards that already acknowledged it and
//! pushes to the [`queue::TargetQueue`]s; one **sender** per shard keeps a bidirectional
//! `Deliver` stream with a bounded in-flight window and reads cumulative acks; a
//! **recovery reader** fills a returning (or overflowing) shard's catch-up queue from the
//! log. Every `watermark_every` entries an idle shard gets a watermark so its applied index
//! keeps up. Resuming a queue and dispatching share one lock (`Dispatch`), so a recovery
//! range and the main stream can never overlap or leave a hole.

pub mod args;
pub mod cursor;
pub mod metrics;
pub mod queue;
pub mod replica;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::grpc;
use crate::model::now_micros;
use crate::player::cursor::{CursorStore, Cursors};
use crate::player::metrics::Metrics;
use crate::proto::log_store_client::LogStoreClient;
use crate::proto::shard_client::ShardClient;
use crate::proto::{
    AppliedRequest, Batch, BoundsRequest, DeliverRequest, Entry, Hello, Mutation, ReadRequest,
    RetainRequest, ShardEntry, deliver_request, deliver_response,
};
use crate::routing::ShardMap;
use queue::{Push, QueueLimits, QueueState, ReadDone, Recovery, TargetQueue};

/// Player settings; every field has a default (see [`PlayerConfig::default`]).
#[derive(Debug, Clone)]
pub struct PlayerConfig {
    pub logstore: String,
    pub shards: ShardMap,
    /// Fencing token sent on every stream.
    pub epoch: u64,
    pub player_id: String,
    /// Most entries in one batch.
    pub batch_entries: usize,
    /// Most bytes in one batch (a single larger entry still goes alone).
    pub batch_bytes: usize,
    /// Most batches in flight (sent, not acknowledged) per shard.
    pub window_batches: usize,
    /// Byte limit of a shard's normal queue before it switches to recovery from the log.
    pub queue_bytes: usize,
    /// Byte limit of a shard's catch-up queue (the recovery reader waits beyond it).
    pub catchup_bytes: usize,
    /// Every this many entries, idle shards get a watermark.
    pub watermark_every: u64,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long startup waits for shards to report their applied index.
    pub startup_probe: Duration,
    /// How often the leader saves its ack cursors (when it has a cursor store).
    pub checkpoint_interval: Duration,
    /// After each checkpoint, let the LogStore drop segments below the lowest cursor.
    pub retain_log: bool,
}

impl PlayerConfig {
    pub fn new(logstore: String, shards: ShardMap) -> Self {
        PlayerConfig {
            logstore,
            shards,
            epoch: 1,
            player_id: format!("player-{}", std::process::id()),
            batch_entries: 512,
            batch_bytes: 1024 * 1024,
            window_batches: 16,
            queue_bytes: 8 * 1024 * 1024,
            catchup_bytes: 4 * 1024 * 1024,
            watermark_every: 1000,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            startup_probe: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(1),
            retain_log: false,
        }
    }

    /// Checks the settings once, naming the bad one.
    pub fn validate(&self) -> Result<(), PlayerError> {
        let bad = |what: &str| Err(PlayerError::Config(what.to_owned()));
        if self.batch_entries == 0 {
            return bad("batch entries must be at least 1");
        }
        if self.window_batches == 0 {
            return bad("window batches must be at least 1");
        }
        if self.queue_bytes < 64 * 1024 || self.catchup_bytes < 64 * 1024 {
            return bad("queue and catch-up limits must be at least 64 KiB");
        }
        if self.batch_bytes > grpc::MAX_MESSAGE_BYTES / 2 {
            return bad("batch bytes must be at most half the 16 MiB message limit");
        }
        if self.watermark_every == 0 {
            return bad("watermark interval must be at least 1");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff must be positive and max >= min");
        }
        Ok(())
    }
}

/// Why the player stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlayerError {
    #[error("invalid player setting: {0}")]
    Config(String),
    #[error("fenced by shard {shard}: {message}")]
    Fenced { shard: String, message: String },
    #[error(
        "the log no longer holds index {needed} (first is {first}); shard {shard} cannot be caught up"
    )]
    Retention {
        shard: String,
        needed: u64,
        first: u64,
    },
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
}

/// Counters for progress output, and the Prometheus metrics.
#[derive(Default)]
pub struct PlayerStats {
    pub metrics: Arc<crate::player::metrics::Metrics>,
    pub dispatched: AtomicU64,
    pub current_index: AtomicU64,
    pub reconnects: AtomicU64,
    pub recoveries: AtomicU64,
    pub overflows: AtomicU64,
    pub watermarks: AtomicU64,
}

/// A shard as the player sees it.
struct Target {
    id: String,
    addr: String,
    queue: Mutex<TargetQueue>,
    /// Items arrived (wakes the sender).
    ready: Notify,
    /// Catch-up room freed or the queue changed state (wakes recovery readers).
    room: Notify,
}

/// The dispatcher's state; its lock also guards resuming a queue.
struct Dispatch {
    current_index: u64,
    /// Per target, the last log index that touched it (the next part's `prev_index`).
    last_real: Vec<u64>,
    since_watermark: u64,
}

struct Shared {
    config: PlayerConfig,
    targets: Vec<Target>,
    dispatch: Mutex<Dispatch>,
    log: LogStoreClient<Channel>,
    stats: Arc<PlayerStats>,
    shutdown: CancellationToken,
    fatal: Mutex<Option<PlayerError>>,
    /// Itself, for spawning recovery readers from `&self` methods.
    me: std::sync::Weak<Shared>,
}

/// Splits an entry's mutations by owning shard (order kept within each shard).
fn split(map: &ShardMap, mutations: &[Mutation]) -> Vec<Vec<Mutation>> {
    let mut parts: Vec<Vec<Mutation>> = vec![Vec::new(); map.len()];
    for m in mutations {
        parts[map.shard_of(&m.key)].push(owned(m));
    }
    parts
}

/// A copy of `m` that owns its bytes. Decoded `Bytes` fields are slices of the whole
/// response they came in (up to a MiB); queueing a slice for a stalled shard would pin every
/// such response, so memory would grow with the log rather than with the shard's share.
fn owned(m: &Mutation) -> Mutation {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; keep going with the data as is
    // rather than cascading the panic through every task.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits between retries: exponential from `backoff_min` to `backoff_max`, with jitter so
/// that many shards reconnecting at once spread out; never gives up (the loops using it
/// stop on shutdown). A loop takes a new one after a success.
fn backoff(config: &PlayerConfig) -> Backoff {
    use backon::BackoffBuilder as _;
    Backoff {
        delays: backon::ExponentialBuilder::default()
            .with_min_delay(config.backoff_min)
            .with_max_delay(config.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build(),
        max: config.backoff_max,
    }
}

/// The delays of one retry loop.
struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}

impl Shared {
    fn fail(&self, e: PlayerError) {
        tracing::error!(error = %e, "player stopping");
        let mut f = lock(&self.fatal);
        if f.is_none() {
            *f = Some(e);
        }
        self.shutdown.cancel();
    }

    /// Dispatches one main-stream entry (called by the fetcher only).
    fn dispatch(&self, entry: Entry) {
        let now = now_micros();
        let parts = split(&self.config.shards, &entry.mutations);
        let mut d = lock(&self.dispatch);
        debug_assert!(entry.index > d.current_index, "main stream out of order");
        for (t, mutations) in parts.into_iter().enumerate() {
            if mutations.is_empty() {
                continue;
            }
            let prev = d.last_real[t];
            d.last_real[t] = entry.index;
            let part = ShardEntry {
                index: entry.index,
                prev_index: prev,
                mutations,
                append_start_micros: entry.append_start_micros,
                dispatch_micros: now,
            };
            self.push(t, part);
        }
        d.current_index = entry.index;
        d.since_watermark += 1;
        if d.since_watermark >= self.config.watermark_every {
            d.since_watermark = 0;
            let current = d.current_index;
            for t in 0..self.targets.len() {
                let behind = lock(&self.targets[t].queue).last_ack()
                    < current.saturating_sub(self.config.watermark_every);
                if behind && d.last_real[t] != current {
                    let wm = ShardEntry {
                        index: current,
                        prev_index: d.last_real[t],
                        dispatch_micros: now,
                        ..Default::default()
                    };
                    if self.push(t, wm) == Push::Queued {
                        self.stats.watermarks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.stats
            .current_index
            .store(d.current_index, Ordering::Relaxed);
        self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
        self.stats.metrics.dispatched.inc();
    }

    fn push(self: &Shared, t: usize, part: ShardEntry) -> Push {
        let target = &self.targets[t];
        let outcome = lock(&target.queue).push_normal(part);
        match outcome {
            Push::Queued => target.ready.notify_one(),
            Push::Overflow(rec) => {
                self.stats.overflows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shard = %target.id, from = rec.from, to = rec.to, "queue overflowed; recovering from the log");
                self.spawn_recovery(t, rec);
            }
            _ => {}
        }
        outcome
    }

    fn spawn_recovery(&self, t: usize, rec: Recovery) {
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

    /// Reads `[from, to]` (and any extension) for target `t` into its catch-up queue, ending
    /// each range with a watermark so the shard's applied index reaches the range's end.
    async fn recover(self: Arc<Self>, t: usize, rec: Recovery) {
        let target = &self.targets[t];
        let (mut from, mut to) = (rec.from, rec.to);
        let mut prev = from - 1;
        let mut retry = backoff(&self.config);
        tracing::info!(shard = %target.id, term = rec.term, from, to, "recovery started");
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.read_range(t, rec.term, from, to, &mut prev).await {
                Ok(Some(())) => {}
                Ok(None) => return, // stale term
                Err(status) => {
                    if status.code() == Code::OutOfRange {
                        let first = self.first_index().await.unwrap_or(0);
                        self.fail(PlayerError::Retention {
                            shard: target.id.clone(),
                            needed: from,
                            first,
                        });
                        return;
                    }
                    tracing::warn!(shard = %target.id, %status, "recovery read failed; retrying");
                    tokio::time::sleep(retry.next()).await;
                    continue;
                }
            }
            retry = backoff(&self.config);
            // The range is read: close it with a watermark at `to`.
            let wm = ShardEntry {
                index: to,
                prev_index: prev,
                dispatch_micros: now_micros(),
                ..Default::default()
            };
            let done = {
                let mut q = lock(&target.queue);
                if prev < to {
                    q.push_catchup(rec.term, wm);
                }
                q.read_done(rec.term, to)
            };
            match done {
                ReadDone::Complete => {
                    target.ready.notify_one();
                    tracing::info!(shard = %target.id, term = rec.term, to, "recovery read complete");
                    return;
                }
                ReadDone::Continue { from: f, to: t2 } => {
                    from = f;
                    to = t2;
                }
                ReadDone::Stale => return,
            }
        }
    }

    /// One pass over `[from, to]`; `Ok(None)` when the term expired. Advances `from` past
    /// what was pushed so a retry resumes there.
    async fn read_range(
        &self,
        t: usize,
        term: u64,
        from: u64,
        to: u64,
        prev: &mut u64,
    ) -> Result<Option<()>, tonic::Status> {
        let target = &self.targets[t];
        let start = (*prev + 1).max(from);
        if start > to {
            return Ok(Some(()));
        }
        let mut stream = self
            .log
            .clone()
            .read(ReadRequest {
                from: start,
                to,
                max_batch_bytes: 0,
            })
            .await?
            .into_inner();
        while let Some(resp) = stream.message().await? {
            for entry in resp.entries {
                let mutations: Vec<Mutation> = entry
                    .mutations
                    .iter()
                    .filter(|m| self.config.shards.shard_of(&m.key) == t)
                    .map(owned)
                    .collect();
                if mutations.is_empty() {
                    continue;
                }
                let mut part = Some(ShardEntry {
                    index: entry.index,
                    prev_index: *prev,
                    mutations,
                    append_start_micros: entry.append_start_micros,
                    dispatch_micros: now_micros(),
                });
                // Wait for room (bounded memory), then push.
                loop {
                    let room = target.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    // None: no room yet; Some(pushed?) otherwise.
                    let outcome = {
                        let mut q = lock(&target.queue);
                        if q.catchup_has_room(term) {
                            part.take().map(|p| q.push_catchup(term, p))
                        } else {
                            None
                        }
                    };
                    match outcome {
                        Some(Push::Queued) => {
                            target.ready.notify_one();
                            break;
                        }
                        Some(Push::DroppedAcked) => break,
                        Some(_) => return Ok(None),
                        None => {}
                    }
                    tokio::select! {
                        _ = room => {}
                        _ = self.shutdown.cancelled() => return Ok(None),
                    }
                }
                *prev = entry.index;
            }
        }
        Ok(Some(()))
    }

    async fn first_index(&self) -> Option<u64> {
        let b = self.log.clone().bounds(BoundsRequest {}).await.ok()?;
        Some(b.into_inner().first)
    }

    /// Keeps one shard's delivery stream up for the life of the player.
    async fn sender(self: Arc<Self>, t: usize) {
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

    /// Refreshes the per-shard gauges often, and saves the ack cursors (then lets the
    /// LogStore drop what every shard has acknowledged, if asked) every checkpoint.
    async fn monitor(self: Arc<Self>, cursors: Option<Arc<dyn CursorStore>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = tokio::time::Instant::now();
        let ids: Vec<String> = self.targets.iter().map(|t| t.id.clone()).collect();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            let known = self.refresh_gauges();
            if let Some(store) = &cursors
                && last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                last_checkpoint = tokio::time::Instant::now();
                self.checkpoint(store.as_ref(), known, &ids).await;
            }
        }
        // A last checkpoint on the way out, so a successor starts from fresh cursors.
        if let Some(store) = &cursors {
            let known = self.refresh_gauges();
            self.checkpoint(store.as_ref(), known, &ids).await;
        }
    }

    /// Sets the acked-index and lag gauges; returns the cursors that are known: each shard's
    /// acknowledged index, and the index through which it has everything routed to it.
    fn refresh_gauges(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let m = &self.stats.metrics;
        // One snapshot of the dispatcher: the current index and, per shard, the last real
        // entry dispatched to it up to there.
        let (current, last_real) = {
            let d = lock(&self.dispatch);
            (d.current_index, d.last_real.clone())
        };
        m.current_index.set(current as i64);
        let mut acked = BTreeMap::new();
        let mut covered = BTreeMap::new();
        for (t, &real) in self.targets.iter().zip(&last_real) {
            let last = lock(&t.queue).last_ack();
            // Everything dispatched to the shard up to `current` is acknowledged: the shard
            // has every entry for it through `current`.
            let through = if last >= real {
                current.max(last)
            } else {
                last
            };
            let label = Metrics::shard(&t.id);
            m.acked.get_or_create(&label).set(last as i64);
            m.lag
                .get_or_create(&label)
                .set(current.saturating_sub(through) as i64);
            if last > 0 {
                acked.insert(t.id.clone(), last);
                covered.insert(t.id.clone(), through);
            }
        }
        (acked, covered)
    }

    async fn checkpoint(
        &self,
        store: &dyn CursorStore,
        (acked, covered): (BTreeMap<String, u64>, BTreeMap<String, u64>),
        ids: &[String],
    ) {
        let cursors = Cursors {
            epoch: self.config.epoch,
            acked,
            covered,
        };
        if let Err(e) = store.save(&cursors).await {
            tracing::warn!(error = %e, "could not save the ack cursors");
            return;
        }
        if !self.config.retain_log {
            return;
        }
        // Only what every shard acknowledged, per the stored (merged) cursors, may go.
        let lowest = match store.load().await {
            Ok(saved) => saved.lowest(ids),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the ack cursors back");
                None
            }
        };
        if let Some(lowest) = lowest
            && lowest > 0
        {
            match self
                .log
                .clone()
                .retain(RetainRequest { below: lowest + 1 })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.segments_removed > 0 {
                        tracing::info!(
                            below = lowest + 1,
                            first = r.first,
                            removed = r.segments_removed,
                            "log retention"
                        );
                    }
                }
                Err(status) => tracing::warn!(%status, "log retention failed"),
            }
        }
    }

    /// The main stream, for the life of the player (reconnecting as needed).
    async fn fetcher(self: Arc<Self>) {
        let mut retry = backoff(&self.config);
        while !self.shutdown.is_cancelled() {
            let from = lock(&self.dispatch).current_index + 1;
            let result: Result<(), tonic::Status> = async {
                let mut stream = self
                    .log
                    .clone()
                    .read(ReadRequest {
                        from,
                        to: 0,
                        max_batch_bytes: 0,
                    })
                    .await?
                    .into_inner();
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m?,
                        _ = self.shutdown.cancelled() => return Ok(()),
                    };
                    let Some(resp) = msg else { return Ok(()) };
                    retry = backoff(&self.config);
                    for entry in resp.entries {
                        self.dispatch(entry);
                    }
                }
            }
            .await;
            match result {
                Ok(()) => {}
                Err(status) if status.code() == Code::OutOfRange => {
                    let first = self.first_index().await.unwrap_or(0);
                    self.fail(PlayerError::Retention {
                        shard: "(main stream)".into(),
                        needed: from,
                        first,
                    });
                    return;
                }
                Err(status) => {
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

enum SessionEnd {
    Fenced(String),
    Broken(String),
}

fn classify(status: tonic::Status) -> SessionEnd {
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

/// A snapshot of one target, for progress output.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub id: String,
    pub state: QueueState,
    pub term: u64,
    pub last_ack: u64,
    pub queued: usize,
}

/// A running player.
pub struct Player {
    shared: Arc<Shared>,
    cursors: Option<Arc<dyn CursorStore>>,
}

impl Player {
    /// Connects to the LogStore, asks every shard its applied index (for up to
    /// `startup_probe`), and prepares to start the main stream at `min(applied) + 1`.
    pub async fn start(
        config: PlayerConfig,
        stats: Arc<PlayerStats>,
        shutdown: CancellationToken,
    ) -> Result<Player, PlayerError> {
        config.validate()?;
        let channel = grpc::endpoint(&config.logstore)?.connect_lazy();
        let log = LogStoreClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
        let probes = config.shards.shards.iter().map(|s| {
            let addr = s.addr.clone();
            let wait = config.startup_probe;
            async move {
                let ask = async {
                    let ch = grpc::connect(&addr).await.ok()?;
                    let r = ShardClient::new(ch).applied(AppliedRequest {}).await.ok()?;
                    Some(r.into_inner().applied_index)
                };
                tokio::time::timeout(wait, ask).await.ok().flatten()
            }
        });
        let applied: Vec<Option<u64>> = futures::future::join_all(probes).await;
        let start = match applied.iter().flatten().min() {
            Some(&min) => min + 1,
            None => {
                // No shard answered: start at the log's head; each shard catches up by a
                // recovery stream when it connects.
                let mut log = log.clone();
                let mut retry = backoff(&config);
                loop {
                    match log.bounds(BoundsRequest {}).await {
                        Ok(b) => break b.into_inner().last + 1,
                        Err(status) => {
                            tracing::warn!(%status, "LogStore not answering yet");
                            tokio::select! {
                                _ = tokio::time::sleep(retry.next()) => {}
                                _ = shutdown.cancelled() => break 1,
                            }
                        }
                    }
                }
            }
        };
        for (s, a) in config.shards.shards.iter().zip(&applied) {
            match a {
                Some(a) => tracing::info!(shard = %s.id, applied = a, "shard reported"),
                None => {
                    tracing::warn!(shard = %s.id, "shard did not answer at startup; it will catch up when it connects")
                }
            }
        }
        tracing::info!(start, epoch = config.epoch, "main stream starts");
        let limits = QueueLimits {
            normal_bytes: config.queue_bytes,
            catchup_bytes: config.catchup_bytes,
        };
        let targets = config
            .shards
            .shards
            .iter()
            .map(|s| Target {
                id: s.id.clone(),
                addr: s.addr.clone(),
                queue: Mutex::new(TargetQueue::new(limits)),
                ready: Notify::new(),
                room: Notify::new(),
            })
            .collect();
        let n = config.shards.len();
        stats.current_index.store(start - 1, Ordering::Relaxed);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            dispatch: Mutex::new(Dispatch {
                current_index: start - 1,
                last_real: vec![start - 1; n],
                since_watermark: 0,
            }),
            config,
            targets,
            log,
            stats,
            shutdown,
            fatal: Mutex::new(None),
        });
        Ok(Player {
            shared,
            cursors: None,
        })
    }

    /// Saves ack cursors to `store` every checkpoint interval while running.
    pub fn with_cursors(mut self, store: Arc<dyn CursorStore>) -> Player {
        self.cursors = Some(store);
        self
    }

    /// Runs until shutdown (or a fatal error such as being fenced).
    pub async fn run(self) -> Result<(), PlayerError> {
        let shared = self.shared.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(shared.clone().monitor(self.cursors.clone()));
        for t in 0..shared.targets.len() {
            tasks.spawn(shared.clone().sender(t));
        }
        tasks.spawn(shared.clone().fetcher());
        while tasks.join_next().await.is_some() {}
        match lock(&shared.fatal).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn status(&self) -> Vec<TargetStatus> {
        status_of(&self.shared)
    }
}

fn status_of(shared: &Shared) -> Vec<TargetStatus> {
    shared
        .targets
        .iter()
        .map(|t| {
            let q = lock(&t.queue);
            TargetStatus {
                id: t.id.clone(),
                state: q.state(),
                term: q.term(),
                last_ack: q.last_ack(),
                queued: q.len(),
            }
        })
        .collect()
}
