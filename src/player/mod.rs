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
//!
//! Layout: this file holds the settings, the shared state and [`Player`]; `fetch.rs` the
//! fetcher and dispatcher, `recovery.rs` the recovery readers, `sender.rs` the senders,
//! `checkpoint.rs` the gauges and cursor checkpoints, `behind.rs` the check that the log
//! still holds what was delivered from it, [`queue`] the paper's state machine,
//! [`replica`] leading or standing by, [`args`] the flags, [`cursor`] the cursor stores.

pub mod args;
mod behind;
mod checkpoint;
pub mod cursor;
mod fetch;
pub mod metrics;
pub mod queue;
mod recovery;
pub mod replica;
mod sender;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::grpc;
use crate::player::cursor::CursorStore;
use crate::proto::log_store_client::LogStoreClient;
use crate::proto::shard_client::ShardClient;
use crate::proto::{AppliedRequest, BoundsRequest};
use crate::routing::ShardMap;
use queue::{QueueLimits, QueueState, TargetQueue};

use crate::limits::{
    DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES, DEFAULT_QUEUE_BYTES, DEFAULT_WINDOW,
    DEFAULT_WINDOW_BYTES, MAX_BATCH_BYTES, MAX_QUEUE_BYTES, MAX_WINDOW, MAX_WINDOW_BYTES,
    MIN_QUEUE_BYTES,
};

/// Player settings; every field has a default (see [`PlayerConfig::new`]).
#[derive(Debug, Clone)]
pub struct PlayerConfig {
    pub logstore: String,
    pub shards: ShardMap,
    /// Fencing token sent on every stream.
    pub epoch: u64,
    pub player_id: String,
    /// Most entries in one batch.
    pub batch_entries: usize,
    /// Most bytes in one batch (a single larger entry still goes alone); never above
    /// `max_entry_bytes`.
    pub batch_bytes: usize,
    /// The entry-size limit (see [`crate::limits`]); the LogStore's and the shards' must
    /// not be larger.
    pub max_entry_bytes: usize,
    /// Most batches in flight (sent, not acknowledged) per shard.
    pub window_batches: usize,
    /// Most bytes of entries in flight per shard (a batch still goes when none is in
    /// flight). Bounds a shard's read-ahead however large batches are, so that the batch
    /// count can be high enough to keep small batches flowing through a slow commit.
    pub window_bytes: usize,
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
    /// Seed of the retry loops' jitter, for a run that must replay (a simulation); `None`
    /// (the default) seeds it at random.
    pub jitter_seed: Option<u64>,
}

impl PlayerConfig {
    pub fn new(logstore: String, shards: ShardMap) -> Self {
        PlayerConfig {
            logstore,
            shards,
            epoch: 1,
            player_id: format!("player-{}", std::process::id()),
            batch_entries: DEFAULT_BATCH_ENTRIES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES,
            window_batches: DEFAULT_WINDOW,
            window_bytes: DEFAULT_WINDOW_BYTES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            catchup_bytes: 4 * 1024 * 1024,
            watermark_every: 1000,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            startup_probe: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(1),
            retain_log: false,
            jitter_seed: None,
        }
    }

    /// Checks the settings once, naming the bad one.
    pub fn validate(&self) -> Result<(), PlayerError> {
        let bad = |what: &str| Err(PlayerError::Config(what.to_owned()));
        if self.batch_entries == 0 {
            return bad("--batch-entries must be at least 1");
        }
        if !(1..=MAX_WINDOW).contains(&self.window_batches) {
            return bad(&format!(
                "--window must be 1 to {MAX_WINDOW}, not {}",
                self.window_batches
            ));
        }
        if !(1..=MAX_WINDOW_BYTES).contains(&self.window_bytes) {
            return bad(&format!(
                "--window-bytes must be 1 to 1 GiB, not {}",
                self.window_bytes
            ));
        }
        if !(MIN_QUEUE_BYTES..=MAX_QUEUE_BYTES).contains(&self.queue_bytes)
            || !(MIN_QUEUE_BYTES..=MAX_QUEUE_BYTES).contains(&self.catchup_bytes)
        {
            return bad(&format!(
                "--queue-bytes (and the catch-up queue) must be 64 KiB to 1 GiB, not {} (catch-up {})",
                self.queue_bytes, self.catchup_bytes
            ));
        }
        if let Err(e) = crate::limits::validate(self.max_entry_bytes) {
            return bad(&e);
        }
        if !(1..=MAX_BATCH_BYTES).contains(&self.batch_bytes) {
            return bad(&format!(
                "--batch-bytes must be 1 to 8 MiB, not {}",
                self.batch_bytes
            ));
        }
        if self.checkpoint_interval.is_zero() || self.checkpoint_interval > MAX_CHECKPOINT_INTERVAL
        {
            return bad(&format!(
                "--checkpoint-interval must be above 0 and at most {}, not {}",
                humantime::format_duration(MAX_CHECKPOINT_INTERVAL),
                humantime::format_duration(self.checkpoint_interval)
            ));
        }
        if !(1..=MAX_WATERMARK_EVERY).contains(&self.watermark_every) {
            return bad(&format!(
                "--watermark-every must be 1 to {MAX_WATERMARK_EVERY}, not {}",
                self.watermark_every
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff must be positive and max >= min");
        }
        if self.logstore.split(',').all(|a| a.trim().is_empty()) {
            return bad("no LogStore address");
        }
        // Empty items (a trailing comma) are skipped, as the channel skips them.
        for addr in self
            .logstore
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if let Err(e) = crate::routing::check_addr(addr) {
                return bad(&format!("LogStore address {addr:?} is not HOST:PORT ({e})"));
            }
            // A shard at the LogStore's address would never take a delivery: its slots
            // would wait forever while the player looks healthy.
            let key = crate::routing::addr_key(addr);
            if let Some(s) = self
                .shards
                .shards
                .iter()
                .find(|s| crate::routing::addr_key(&s.addr) == key)
            {
                return bad(&format!(
                    "shard {} is at {addr}, which --logstore names as the LogStore's address",
                    s.id
                ));
            }
        }
        Ok(())
    }
}

/// The longest `--checkpoint-interval` (and the CRD's `checkpointInterval`, whose rule
/// repeats it): an hour. Cursors are saved, and retention runs, once per interval; a longer
/// one would leave a successor an hour of the log to replay and hold retention that long.
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// A shard whose next entry retention removed (one added after the log was trimmed) can
/// never be delivered to: at start, say which, rather than fail the main stream from it.
fn retained_past(
    config: &PlayerConfig,
    applied: &[Option<u64>],
    first: u64,
) -> Result<(), PlayerError> {
    let shards = config.shards.shards.iter().zip(applied);
    match shards
        .clone()
        .find(|(_, a)| a.is_some_and(|a| a + 1 < first))
    {
        Some((s, Some(a))) => Err(PlayerError::Retention {
            shard: s.id.clone(),
            needed: a + 1,
            first,
        }),
        _ => Ok(()),
    }
}

/// The most `--watermark-every`: an idle shard's applied index (and so its cursor, and
/// retention) moves once per this many entries of the log.
pub const MAX_WATERMARK_EVERY: u64 = 1_000_000;

/// Why the player stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlayerError {
    #[error("invalid player setting: {0}")]
    Config(String),
    /// Asked to stop (SIGTERM) before it could start: not a failure.
    #[error("stopped before the LogStore answered")]
    Stopped,
    #[error("fenced by shard {shard}: {message}")]
    Fenced {
        shard: String,
        message: String,
        /// The shard's highest epoch, when it said.
        highest: Option<u64>,
    },
    #[error(
        "shard {shard} has seen epoch {seen}, which no lease holder was ever given (this replica holds the lease at epoch {lease_epoch}, its highest): a process outside the lease (a player started by hand with --epoch, or one using another lease) delivered to it, or the lease was deleted or reset and counts from 1 again. Stop any such process, then {remedy}"
    )]
    UnknownEpoch {
        shard: String,
        seen: u64,
        lease_epoch: u64,
        /// How to raise this lease's epoch (see [`crate::lease::LeaseBackend::raise_epoch_hint`]).
        remedy: String,
    },
    #[error(
        "the LogStore at {addr} serves log {found}, but this player started on log {expected}: the log behind the address changed; restart the player against the intended log"
    )]
    WrongLog {
        addr: String,
        expected: String,
        found: String,
    },
    #[error(
        "the --logstore addresses serve different logs ({found}): list the replicas of one log"
    )]
    MixedLogs { found: String },
    #[error(
        "the LogStore at {addr} accepts entries up to {log} bytes but this player was started with --max-entry-bytes {ours}; use the same value on every component"
    )]
    EntryLimit { addr: String, log: u64, ours: u64 },
    #[error(
        "the log no longer holds index {needed} (first is {first}); shard {shard} cannot be caught up"
    )]
    Retention {
        shard: String,
        needed: u64,
        first: u64,
    },
    #[error(
        "the log {log_id} at {addr} ends at index {last}, but {who} through {through} from it: the log lost entries that were delivered (its data directory put back to an older copy, or a disk that lost acknowledged writes). Entries appended to it next would take indexes already applied and be skipped by the shards, silently, so the player stops. Restore the shards to a copy taken at or before index {last}, or start the log on a new directory (a new log id) and rebuild the shards from it"
    )]
    LogBehind {
        addr: String,
        log_id: String,
        last: u64,
        /// "shard s0 has applied", "this player has read".
        who: String,
        through: u64,
    },
    #[error(
        "the log {log_id} at {addr} holds another entry at index {index} than the one {who} there (fingerprint {held:016x}, against {had:016x}): the log was put back to an older copy and has grown past what was delivered from it since, or the shard's data comes from another copy of this log. The log's entries up to {index} would be skipped as applied, silently, so the player stops. Restore the shards to a copy taken at or before the log's copy, or start the log on a new directory (a new log id) and rebuild the shards from it"
    )]
    LogDiverged {
        addr: String,
        log_id: String,
        /// "shard s0 applied", "this player read".
        who: String,
        index: u64,
        /// The fingerprint of the entry the log holds at `index`.
        held: u64,
        /// The fingerprint of the entry `who` names.
        had: u64,
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
    /// The slots the map gives the shard, as its Hello says them.
    slots: Vec<crate::proto::SlotRange>,
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
    /// The fingerprint of the entry at `current_index` (0 before the first dispatch).
    current_fingerprint: u64,
}

impl Dispatch {
    /// The dispatcher of a main stream that starts at `start`, for `targets` shards.
    fn before(start: u64, targets: usize) -> Dispatch {
        Dispatch {
            current_index: start - 1,
            last_real: vec![start - 1; targets],
            since_watermark: 0,
            current_fingerprint: 0,
        }
    }
}

struct Shared {
    config: PlayerConfig,
    /// The log this player delivers (learned from `Bounds` at start) and its entry limit.
    log_id: String,
    log_max_entry_bytes: u64,
    targets: Vec<Target>,
    dispatch: Mutex<Dispatch>,
    log: LogStoreClient<Channel>,
    stats: Arc<PlayerStats>,
    shutdown: CancellationToken,
    fatal: Mutex<Option<PlayerError>>,
    /// Itself, for spawning recovery readers from `&self` methods.
    me: std::sync::Weak<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; keep going with the data as is
    // rather than cascading the panic through every task.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits between retries: exponential from `backoff_min` to `backoff_max`, with jitter so
/// that many shards reconnecting at once spread out; never gives up (the loops using it
/// stop on shutdown). A loop takes a new one after a success.
///
/// `what` names the loop; with [`PlayerConfig::jitter_seed`] set, each loop draws its
/// jitter from that seed mixed with its name (reproducible, yet not in lockstep).
fn backoff(config: &PlayerConfig, what: &str) -> Backoff {
    use backon::BackoffBuilder as _;
    use std::hash::{Hash, Hasher};
    let mut builder = backon::ExponentialBuilder::default()
        .with_min_delay(config.backoff_min)
        .with_max_delay(config.backoff_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    if let Some(seed) = config.jitter_seed {
        // SipHash with fixed keys: the same name gives the same salt in every process.
        let mut salt = std::hash::DefaultHasher::new();
        what.hash(&mut salt);
        builder = builder.with_jitter_seed(seed ^ salt.finish());
    }
    Backoff {
        delays: builder.build(),
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
        match &e {
            // A stale leader being fenced is how failover is meant to work.
            PlayerError::Fenced { .. } => tracing::warn!(error = %e, "player stopping"),
            _ => tracing::error!(error = %e, "player stopping"),
        }
        let mut f = lock(&self.fatal);
        if f.is_none() {
            *f = Some(e);
        }
        self.shutdown.cancel();
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
        let limit = crate::limits::message_limit(config.max_entry_bytes);
        let channel = grpc::connect_lazy(&config.logstore, &grpc::Expected::Log)?;
        let log = LogStoreClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let Some(bounds) = log_bounds(&log, &config, &shutdown).await? else {
            return Err(PlayerError::Stopped);
        };
        if bounds.max_entry_bytes > config.max_entry_bytes as u64 {
            return Err(PlayerError::EntryLimit {
                addr: config.logstore.clone(),
                log: bounds.max_entry_bytes,
                ours: config.max_entry_bytes as u64,
            });
        }
        tracing::info!(log_id = %bounds.log_id, first = bounds.first, last = bounds.last, "LogStore answered");
        same_log_everywhere(&config.logstore, &bounds.log_id).await?;
        let probed = probe_shards(&config, &bounds.log_id).await;
        let applied: Vec<Option<u64>> = probed.iter().map(|p| p.as_ref().ok().copied()).collect();
        let furthest = config.shards.shards.iter().zip(&applied);
        if let Some((s, Some(through))) = furthest.max_by_key(|(_, a)| **a)
            && let Err(unreached) = behind::reaches(
                &fetch::leader_log(&log, &config).await,
                &bounds.log_id,
                *through,
                behind::Unanswered::Wait,
                &shutdown,
            )
            .await
        {
            let who = format!("shard {} has applied", s.id);
            return Err(unreached.error(&config.logstore, &bounds.log_id, who, *through));
        }
        // No shard answered: start at the log's head; each shard catches up by a recovery
        // stream when it connects.
        let start = match applied.iter().flatten().min() {
            Some(&min) => min + 1,
            None => bounds.last + 1,
        };
        for (s, p) in config.shards.shards.iter().zip(&probed) {
            match p {
                Ok(a) => tracing::info!(shard = %s.id, applied = a, "shard reported"),
                Err(reason) => {
                    tracing::warn!(shard = %s.id, addr = %s.addr, %reason, "shard's applied index unknown at startup; it will catch up when it connects")
                }
            }
        }
        retained_past(&config, &applied, bounds.first)?;
        tracing::info!(start, epoch = config.epoch, "main stream starts");
        let limits = QueueLimits {
            normal_bytes: config.queue_bytes,
            catchup_bytes: config.catchup_bytes,
        };
        let targets = config
            .shards
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| Target {
                id: s.id.clone(),
                addr: s.addr.clone(),
                slots: crate::proto::SlotRange::of(&config.shards.slots_of(i)),
                queue: Mutex::new(TargetQueue::new(limits)),
                ready: Notify::new(),
                room: Notify::new(),
            })
            .collect();
        let n = config.shards.len();
        stats.current_index.store(start - 1, Ordering::Relaxed);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            log_id: bounds.log_id,
            log_max_entry_bytes: bounds.max_entry_bytes,
            dispatch: Mutex::new(Dispatch::before(start, n)),
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

/// How long one `Bounds` call at start may take before it is tried again.
const BOUNDS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The LogStore's bounds, asked until it answers (`None`: shut down first). A server without
/// the LogStore API (`--logstore` names a shard's address) stops the player naming it:
/// retrying cannot change that answer, and so does a server whose certificate names another
/// part. (A TLS mismatch is retried, saying so: while a
/// LogPlayer's `tls.mode` changes, its LogStore and players roll at the same time.)
async fn log_bounds(
    log: &LogStoreClient<Channel>,
    config: &PlayerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<crate::proto::BoundsResponse>, PlayerError> {
    let mut retry = backoff(config, "bounds");
    loop {
        // A LogStore that accepts the connection and never answers (frozen, or a half-dead
        // host) must neither hold up a shutdown nor the next try.
        let mut request = tonic::Request::new(BoundsRequest {});
        request.set_timeout(BOUNDS_WAIT);
        let mut client = log.clone();
        let asked = tokio::select! {
            r = client.bounds(request) => r,
            _ = shutdown.cancelled() => return Ok(None),
        };
        match asked {
            Ok(b) => return Ok(Some(b.into_inner())),
            // Not a proxy's 404 (see `grpc::not_served`): that one is retried.
            Err(status) if let Some(why) = crate::client::not_a_log_store(&status) => {
                return Err(PlayerError::Config(format!(
                    "the server at {}: {why}: is it a shard's address? --logstore takes the \
                     LogStore's",
                    config.logstore
                )));
            }
            Err(status) => {
                tracing::warn!(%status, addr = %config.logstore, "LogStore not answering yet");
                tokio::select! {
                    _ = tokio::time::sleep(retry.next()) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

/// With several `--logstore` addresses (the replicas of one log), asks each that answers
/// within [`BOUNDS_WAIT`] which log it serves: addresses of two logs are refused at start,
/// naming each (the player used to run on whichever answered, and stop only once a call
/// reached the other). An address that does not answer is left to the client's failover.
async fn same_log_everywhere(addrs: &str, log_id: &str) -> Result<(), PlayerError> {
    if !addrs.contains(',') {
        return Ok(());
    }
    let mut answers = Vec::new();
    for (addr, asked) in crate::client::log_ids_at(addrs).await {
        match asked {
            Ok(id) if !id.is_empty() => answers.push((addr, id)),
            Ok(_) => {}
            // Not a LogStore at all (a shard): the client balances over every address, so
            // the player ran or not depending on which one answered first, then flapped.
            Err(status) if let Some(why) = crate::client::not_a_log_store(&status) => {
                return Err(PlayerError::Config(format!(
                    "the server at {addr} (one of --logstore {addrs}): {why}: is it a \
                     shard's address? --logstore takes the LogStore's replicas"
                )));
            }
            Err(_) => {} // left to the client's failover
        }
    }
    if answers.iter().all(|(_, id)| id == log_id) {
        return Ok(());
    }
    let found = answers
        .iter()
        .map(|(addr, id)| format!("{addr} serves {id}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(PlayerError::MixedLogs { found })
}

/// Asks every shard its applied index (for up to `startup_probe`). A shard that does not
/// answer, or answers as another shard or for another log, counts as unknown (`Err` says
/// why): its sender sorts it out when it connects.
async fn probe_shards(config: &PlayerConfig, log_id: &str) -> Vec<Result<u64, String>> {
    let probes = config.shards.shards.iter().map(|s| {
        let wait = config.startup_probe;
        async move {
            let ask = async {
                let ch = grpc::connect(&s.addr, &grpc::Expected::Shard(s.id.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                let r = ShardClient::new(ch)
                    .applied(AppliedRequest {})
                    .await
                    .map_err(|st| format!("{}: {}", st.code(), st.message()))?;
                Ok::<_, String>(r.into_inner())
            };
            let r = tokio::time::timeout(wait, ask)
                .await
                .map_err(|_| format!("no answer within {wait:?}"))??;
            let other_log = !r.log_id.is_empty() && r.log_id != log_id;
            if r.shard_id != s.id || other_log {
                return Err(format!(
                    "the shard at this address reports shard {:?} of log {:?}, not the one the \
                     map names, or applies another log",
                    r.shard_id, r.log_id
                ));
            }
            Ok(r.applied_index)
        }
    });
    futures::future::join_all(probes).await
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
