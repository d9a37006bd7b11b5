//! The real code under deterministic simulation (turmoil): the real LogStore (its WAL and
//! group commit), two real shards (redb), and two real player replicas contending for a lease,
//! each a simulated host running its real tonic server or client over the simulation's
//! network, with a writer appending non-idempotent transactions. Each seed drives a fault
//! schedule — partitions between a replica and a shard or the log, the LogStore, shard and
//! replica hosts crashed and restarted, the leader cut off from the lease store while the
//! other replica takes over, message latency — until the writer's appends are in; then faults stop,
//! everything comes back, and the seed ends with the exactly-once check (every shard's state
//! against what the log implies). Replica `p1` keeps sending after it loses the lease, as a
//! paused process would, so only the shards' fencing stops it; an observer polls the shards'
//! statistics and fails the seed if one commits under an epoch below one it has seen.
//!
//! ```sh
//! F="--release --features mutations,sim-disk"
//! cargo test $F --test sim -- --nocapture                        # seeds 0..500 and the switches (CI)
//! LOGPLAYER_SIM_SEED=17 cargo test $F --test sim -- --nocapture  # one seed
//! LOGPLAYER_SIM_SEEDS=100000 cargo test $F --test sim -- --nocapture every_seed   # ~4 h on 2 cores
//! RUST_LOG=info LOGPLAYER_SIM_SEED=17 cargo test $F --test sim -- --nocapture  # what it logs
//! ```
//!
//! Deterministic: each seed runs in a process of its own (`LOGPLAYER_SIM_JOBS` at a time,
//! one per core by default), and the same seed gives the same trace — the same faults at the
//! same steps, the same events logged at the same simulated times — which
//! `the_same_seed_gives_the_same_trace` checks. What that rests on: turmoil's seeded network
//! and clock; each host's tokio runtime seeded by turmoil (which needs `--cfg
//! tokio_unstable`, set in `.cargo/config.toml`); the player's retry jitter seeded
//! (`PlayerConfig::jitter_seed`); blocking work inline on each host's task
//! (`logplayer::blocking`). A seed run after other seeds in the same process can differ
//! from the same seed in a fresh one (state somewhere in the stack outlives a simulation),
//! hence a process per seed. `LOGPLAYER_SIM_TRACE=<file>` appends each run's event trace.
//!
//! With the `mutations` feature, `a_shard_ignoring_epochs_fails_some_seed` turns the shards'
//! fencing off and shows that some seed of the CI range fails.
//!
//! What is simulated: the network (latency, partitions), the clock (tokio time inside each
//! host; the lease's expiry), host crashes, and — with the `sim-disk` feature, as in CI —
//! the disk: the WAL and redb run on turmoil's simulated disk (`logplayer::disk`), where a
//! crash is a power loss (every write not yet synced is gone; a pending write survives only
//! as a prefix of whole 512-byte blocks, a torn write). Without the feature a crash keeps
//! every written byte, as a process crash does. With both features,
//! `a_log_skipping_fsync_fails_some_seed` shows the simulated disk biting: a WAL that
//! acknowledges before it syncs fails a seed. Disk I/O errors too (0.05% of the disk's
//! operations fail): a LogStore whose WAL failed and a shard whose store failed stop with an
//! error, and each host's software runs under a supervisor that restarts it (and gives up,
//! failing the seed, after the same error 20 starts in a row). Not simulated: a full disk.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use logplayer::client::Log;
use logplayer::harness::check::check;
use logplayer::lease::{LeaseBackend, LeaseConfig, LeaseError, LeaseState};
use logplayer::logstore::{LogStore, LogStoreConfig};
use logplayer::player::replica::ReplicaConfig;
use logplayer::player::{PlayerConfig, PlayerStats};
use logplayer::proto::{Mutation, mutation::Op};
use logplayer::routing::ShardMap;
use logplayer::shard::journal::JournalStore;
use logplayer::shard::{ShardCore, ShardSelf};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

type HostResult = Result<(), Box<dyn std::error::Error>>;

const LOG_PORT: u16 = 7000;
const SHARD_PORT: u16 = 7001;
const SHARDS: usize = 2;
const PLAYERS: usize = 2;
const ENTRIES: u64 = 200;
/// Simulation steps between two fault decisions.
const FAULT_EVERY: u64 = 40;

/// A connection the simulated network accepted, as tonic's server wants it.
struct Accepted(turmoil::net::TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

async fn listen(port: u16) -> io::Result<impl futures::Stream<Item = io::Result<Accepted>>> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| Accepted(s));
        Some((accepted, l))
    }))
}

/// The lease as its store keeps it: shared by both replicas, outside any host (so a
/// replica's crash does not lose it), timed by the simulation's clock.
#[derive(Default)]
struct LeaseRecord {
    holder: Option<String>,
    epoch: u64,
    renewed: Duration,
}

/// One replica's view of the lease store, which a fault can cut it off from.
struct SimLease {
    record: Arc<std::sync::Mutex<LeaseRecord>>,
    me: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

const LEASE: Duration = Duration::from_millis(500);

#[async_trait::async_trait]
impl LeaseBackend for SimLease {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LeaseError::Io {
                path: "simulated lease store".into(),
                source: io::Error::other("cut off"),
            });
        }
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let live = r.holder.is_some() && now <= r.renewed + LEASE;
        if live && r.holder.as_deref() != Some(&self.me) {
            return Ok(LeaseState::Other {
                holder: r.holder.clone().unwrap_or_default(),
                epoch: r.epoch,
            });
        }
        if !live || r.holder.as_deref() != Some(&self.me) {
            r.epoch += 1;
            r.holder = Some(self.me.clone());
        }
        r.renewed = now;
        Ok(LeaseState::Held { epoch: r.epoch })
    }
    async fn release(&self) -> Result<(), LeaseError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if r.holder.as_deref() == Some(&self.me) {
            r.holder = None;
        }
        Ok(())
    }
    fn identity(&self) -> &str {
        &self.me
    }
    fn lease_duration(&self) -> Duration {
        LEASE
    }
}

/// Every client channel of this process dials over the simulated network.
fn use_simulated_network() {
    logplayer::blocking::run_inline();
    logplayer::grpc::set_dialer(Arc::new(|authority: String| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(authority).await?;
            Ok(Box::new(stream) as Box<dyn logplayer::grpc::DialedIo>)
        })
    }));
}

fn shard_map() -> ShardMap {
    let specs: Vec<String> = (0..SHARDS)
        .map(|s| format!("s{s}=s{s}:{SHARD_PORT}"))
        .collect();
    ShardMap::from_specs(&specs).expect("a valid map")
}

/// A transaction that changes state on every apply: a counter add and a list append on keys
/// spread over both shards.
fn txn(i: u64) -> Vec<Mutation> {
    let key = |k: u64| format!("k{}", k % 7);
    vec![
        Mutation {
            key: key(i).into(),
            op: Some(Op::Add(i as i64 + 1)),
        },
        Mutation {
            key: format!("l{}", i % 5).into(),
            op: Some(Op::Append(i.to_le_bytes().to_vec().into())),
        },
    ]
}

/// What one seed did: its faults, and a hash of its trace (each fault with the step it came
/// at, the steps taken and the simulated time at the end).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Run {
    crashes: u32,
    partitions: u32,
    lease_cuts: u32,
    /// Servers that stopped on a disk error and were restarted by their supervisor.
    restarts: u32,
    /// Stale-epoch requests the shards refused (counted since each shard's last restart).
    fenced: u64,
    /// The lease's last epoch: how many times a replica took the lease.
    epochs: u64,
    steps: u64,
    /// Events the hosts logged (see [`EventTrace`]).
    events: u64,
    trace: u64,
}

/// What the hosts logged, hashed in order: each of LogPlayer's own events at INFO and
/// above, with its simulated time, level, message and numeric fields. Two runs of a seed
/// that log the same events at the same simulated times get the same hash.
#[derive(Clone, Default)]
struct EventTrace(Arc<std::sync::Mutex<Vec<String>>>);

impl EventTrace {
    /// The events so far, one line each.
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventTrace {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        use std::fmt::Write;
        struct Fields<'a>(&'a mut String);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.0, " {value:?}");
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                let _ = write!(self.0, " {}={value}", field.name());
            }
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                let _ = write!(self.0, " {}={value}", field.name());
            }
            fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                let _ = write!(self.0, " {}={value}", field.name());
            }
        }
        let mut line = format!(
            "{:?} {} {}",
            turmoil::sim_elapsed().unwrap_or_default(),
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

/// This thread's subscriber for one seed: the event trace, and with `RUST_LOG` set what
/// the hosts log, printed (best with one seed).
fn subscribe(trace: &EventTrace) -> tracing::subscriber::DefaultGuard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let own = tracing_subscriber::filter::Targets::new()
        .with_target("logplayer", tracing::Level::INFO)
        .with_target("sim", tracing::Level::INFO);
    let print = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_ansi(false)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let subscriber = tracing_subscriber::registry()
        .with(trace.clone().with_filter(own))
        .with(print);
    tracing::subscriber::set_default(subscriber)
}

/// Runs one seed; `Err` names what went wrong.
fn run_seed(seed: u64) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let events = EventTrace::default();
    let _subscribed = subscribe(&events);
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(300))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(5));
    // On the simulated disk, a crash loses every write not yet synced, a pending write
    // survives only as a prefix of whole 512-byte blocks (a torn write), and now and then
    // an operation fails.
    #[cfg(feature = "sim-disk")]
    builder.fs().block_size(512).io_error_probability(0.0005);
    let mut sim = builder.build();
    // Dropped before `sim` (declared after it): the hosts' teardown must not reach for a
    // disk that no longer exists outside the simulation.
    let _teardown = PowerCutAtEnd;
    let log_dir = dir.path().join("log");
    sim.host("log", move || supervised("log", serve_log(log_dir.clone())));
    for s in 0..SHARDS {
        let shard_dir = dir.path().join(format!("s{s}"));
        sim.host(format!("s{s}"), move || {
            supervised("shard", serve_shard(s, shard_dir.clone()))
        });
    }
    let lease = Arc::new(std::sync::Mutex::new(LeaseRecord::default()));
    let cuts: Vec<_> = (0..PLAYERS)
        .map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .collect();
    for (p, cut) in cuts.iter().enumerate() {
        sim.host(
            format!("p{p}"),
            replica(seed, p, lease.clone(), cut.clone()),
        );
    }
    // Set by the writer once its appends are in: faults stop, and what is down comes back,
    // before the exactly-once check reads every shard.
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fenced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    sim.client("observer", observe_shards(checked.clone(), fenced.clone()));
    sim.client("writer", write_and_check(seed, quiet.clone(), checked));
    let mut schedule = Schedule {
        faults: StdRng::seed_from_u64(seed ^ 0x5eed),
        down: None,
        healed: false,
        cut_until: [0; PLAYERS],
        trace: std::hash::DefaultHasher::new(),
        lease: lease.clone(),
        cuts,
    };
    let mut run = Run::default();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
        run.steps += 1;
        let stop = quiet.load(std::sync::atomic::Ordering::SeqCst);
        schedule.step(&mut sim, &mut run, stop);
    }
    use std::hash::{Hash, Hasher};
    let mut trace = schedule.trace;
    sim.elapsed().hash(&mut trace);
    run.steps.hash(&mut trace);
    let logged = events.lines();
    logged.hash(&mut trace);
    run.events = logged.len() as u64;
    if let Some(path) = std::env::var_os("LOGPLAYER_SIM_TRACE") {
        // Appended: a run per process, several processes.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let _ = writeln!(f, "=== seed {seed}\n{}", logged.join("\n"));
    }
    run.trace = trace.finish();
    run.fenced = fenced.load(std::sync::atomic::Ordering::SeqCst);
    run.restarts = RESTARTS.load(std::sync::atomic::Ordering::SeqCst);
    run.epochs = lease.lock().map(|r| r.epoch).unwrap_or_default();
    Ok(run)
}

/// Replica `p`'s software: the real `player::replica::run` over the shared lease record.
fn replica(
    seed: u64,
    p: usize,
    lease: Arc<std::sync::Mutex<LeaseRecord>>,
    cut: Arc<std::sync::atomic::AtomicBool>,
) -> impl Fn() -> futures::future::BoxFuture<'static, HostResult> {
    move || {
        let backend = Arc::new(SimLease {
            record: lease.clone(),
            me: format!("p{p}"),
            cut: cut.clone(),
        });
        Box::pin(async move {
            let mut player = PlayerConfig::new(format!("log:{LOG_PORT}"), shard_map());
            player.player_id = format!("p{p}");
            player.jitter_seed = Some(seed ^ p as u64);
            let config = ReplicaConfig {
                player,
                lease: LeaseConfig {
                    lease_duration: LEASE,
                    renew_deadline: Duration::from_millis(350),
                    retry_period: Duration::from_millis(50),
                },
                cursors: None,
                // p1 is a leader that keeps sending after its lease is gone, as a paused
                // process would (`--fault-keep-leading`): only the shards' fencing stops it.
                keep_leading_after_loss: p == 1,
            };
            let stats = Arc::new(PlayerStats::default());
            logplayer::player::replica::run(config, backend, stats, CancellationToken::new())
                .await?;
            HostResult::Ok(())
        })
    }
}

/// The writer: appends `ENTRIES` transactions (retrying with their sequence), sets
/// `appended` so faults stop, then runs the exactly-once check and sets `checked`.
async fn write_and_check(
    seed: u64,
    appended: Arc<std::sync::atomic::AtomicBool>,
    checked: Arc<std::sync::atomic::AtomicBool>,
) -> HostResult {
    let log = loop {
        match Log::connect(&format!("log:{LOG_PORT}")).await {
            Ok(log) => break log,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let writer = format!("writer-{seed}");
    let mut i = 1;
    while i <= ENTRIES {
        // A retry after a lost reply reuses the sequence: appended once either way.
        match log.append(txn(i), Some((&writer, i)), 0).await {
            Ok(_) => i += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    appended.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = check(&log, &shard_map(), Duration::from_secs(60)).await?;
    if !report.pass {
        return Err(format!("exactly-once violated:\n{report}").into());
    }
    checked.store(true, std::sync::atomic::Ordering::SeqCst);
    HostResult::Ok(())
}

/// The fault schedule: every `FAULT_EVERY` steps, restores what the last fault took down or
/// injects a new one, drawn from its own seeded RNG; once the writer is done, restores
/// everything and injects nothing.
struct Schedule {
    faults: StdRng,
    /// The host the last fault crashed, restarted at the next decision.
    down: Option<String>,
    healed: bool,
    /// Per replica: the step its cut-off from the lease store ends (0: not cut off).
    cut_until: [u64; PLAYERS],
    /// Each fault with its step.
    trace: std::hash::DefaultHasher,
    lease: Arc<std::sync::Mutex<LeaseRecord>>,
    cuts: Vec<Arc<std::sync::atomic::AtomicBool>>,
}

impl Schedule {
    fn step(&mut self, sim: &mut turmoil::Sim<'_>, run: &mut Run, stop: bool) {
        use std::hash::Hash;
        for (p, until) in self.cut_until.iter_mut().enumerate() {
            if *until != 0 && (stop || run.steps >= *until) {
                self.cuts[p].store(false, std::sync::atomic::Ordering::SeqCst);
                *until = 0;
            }
        }
        if stop {
            if let Some(host) = self.down.take() {
                sim.bounce(host.as_str());
            }
            if !self.healed {
                heal(sim);
                self.healed = true;
            }
            return;
        }
        if !run.steps.is_multiple_of(FAULT_EVERY) {
            return;
        }
        if let Some(host) = self.down.take() {
            tracing::info!(step = run.steps, host, "restart and heal");
            sim.bounce(host.as_str());
            heal(sim);
            return;
        }
        let fault = self.faults.random_range(0..8);
        (run.steps, fault).hash(&mut self.trace);
        let player = format!("p{}", self.faults.random_range(0..PLAYERS));
        tracing::info!(step = run.steps, fault, player, "fault");
        match fault {
            0 | 1 => {
                let host = format!("s{}", self.faults.random_range(0..SHARDS));
                crash(sim, host.as_str());
                self.down = Some(host);
                run.crashes += 1;
            }
            2 => {
                crash(sim, player.as_str());
                self.down = Some(player);
                run.crashes += 1;
            }
            3 => {
                let shard = format!("s{}", self.faults.random_range(0..SHARDS));
                sim.partition(player.as_str(), shard.as_str());
                run.partitions += 1;
            }
            4 => {
                sim.partition(player.as_str(), "log");
                run.partitions += 1;
            }
            5 => self.cut_off_the_leader(run),
            6 => {
                crash(sim, "log");
                self.down = Some("log".to_owned());
                run.crashes += 1;
            }
            _ => {}
        }
    }

    /// The leader cannot reach the lease store: the other replica takes over while this one
    /// may still be sending (p1 keeps sending until fenced).
    fn cut_off_the_leader(&mut self, run: &mut Run) {
        let holder = self.lease.lock().ok().and_then(|r| r.holder.clone());
        let leader = holder.and_then(|h| h.strip_prefix('p')?.parse::<usize>().ok());
        if let Some(p) = leader.filter(|_| self.cut_until.iter().all(|&u| u == 0)) {
            self.cuts[p].store(true, std::sync::atomic::Ordering::SeqCst);
            self.cut_until[p] = run.steps + CUT_STEPS;
            run.lease_cuts += 1;
        }
    }
}

/// A shard statistic that restarts from zero when its shard does, summed over restarts.
#[derive(Default)]
struct Counter {
    before: u64,
    last: u64,
}

impl Counter {
    fn see(&mut self, now: u64) -> u64 {
        if now < self.last {
            self.before += self.last;
        }
        self.last = now;
        self.before + self.last
    }
}

/// Reads every shard's statistics until the check is done: the stale-epoch requests the
/// shards refused go to `fenced`; a batch a shard committed under an epoch lower than one it
/// had committed under fails the seed, and so does a duplicate a shard skipped, a gap it
/// refused or a batch it refused as malformed (what a stream that carries each entry once,
/// in order, never causes). Polled, because a shard's
/// statistics do not survive its crash.
async fn observe_shards(
    checked: Arc<std::sync::atomic::AtomicBool>,
    fenced: Arc<std::sync::atomic::AtomicU64>,
) -> HostResult {
    let mut refused: Vec<Counter> = (0..SHARDS).map(|_| Counter::default()).collect();
    let mut stale: Vec<Counter> = (0..SHARDS).map(|_| Counter::default()).collect();
    let mut skipped: Vec<Counter> = (0..SHARDS).map(|_| Counter::default()).collect();
    let mut gaps: Vec<Counter> = (0..SHARDS).map(|_| Counter::default()).collect();
    let mut malformed: Vec<Counter> = (0..SHARDS).map(|_| Counter::default()).collect();
    let mut conns: Vec<Option<logplayer::client::ShardConn>> = (0..SHARDS).map(|_| None).collect();
    loop {
        let last_round = checked.load(std::sync::atomic::Ordering::SeqCst);
        for s in 0..SHARDS {
            if conns[s].is_none() {
                conns[s] =
                    logplayer::client::ShardConn::connect(&format!("s{s}:{SHARD_PORT}"), None)
                        .await
                        .ok();
            }
            let Some(conn) = &conns[s] else { continue };
            let Ok(stats) = conn.stats(false).await else {
                conns[s] = None;
                continue;
            };
            refused[s].see(stats.fenced_refusals);
            let commits = stale[s].see(stats.stale_epoch_commits);
            let (dups, holes) = (
                skipped[s].see(stats.duplicates_skipped),
                gaps[s].see(stats.gaps_refused),
            );
            // A current-epoch stream carries each entry once, in order (the queue model's
            // property): a shard never has to skip a duplicate or refuse a gap.
            let bad = malformed[s].see(stats.malformed_refused);
            if dups + holes + bad > 0 {
                return Err(format!(
                    "shard s{s} skipped {dups} duplicates, refused {holes} gaps and {bad} malformed batches"
                )
                .into());
            }
            if commits > 0 {
                return Err(
                    format!("shard s{s} committed {commits} batches under a stale epoch").into(),
                );
            }
        }
        let total: u64 = refused.iter().map(|c| c.before + c.last).sum();
        fenced.store(total, std::sync::atomic::Ordering::SeqCst);
        if last_round {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The LogStore host's software: open the log, serve it until it stops.
fn serve_log(
    dir: std::path::PathBuf,
) -> impl Fn() -> futures::future::BoxFuture<'static, HostResult> {
    move || {
        let dir = dir.clone();
        Box::pin(async move {
            let (log, _) = LogStore::open(LogStoreConfig::new(dir))?;
            let incoming = listen(LOG_PORT).await?;
            logplayer::logstore::service::serve_incoming(
                log,
                incoming,
                CancellationToken::new(),
                "logstore",
            )
            .await?;
            HostResult::Ok(())
        })
    }
}

/// Shard `s`'s software: open its store, serve it until it stops.
fn serve_shard(
    s: usize,
    dir: std::path::PathBuf,
) -> impl Fn() -> futures::future::BoxFuture<'static, HostResult> {
    move || {
        let dir = dir.clone();
        Box::pin(async move {
            let store = JournalStore::open(&dir)?;
            let me = ShardSelf {
                id: format!("s{s}"),
                addr: format!("s{s}:{SHARD_PORT}"),
                max_entry_bytes: logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
            };
            let core = ShardCore::open(store, me)?;
            let incoming = listen(SHARD_PORT).await?;
            logplayer::shard::service::serve_incoming(
                core,
                incoming,
                CancellationToken::new(),
                logplayer::shard::gather::DEFAULT_COMMIT_DELAY,
                "shard",
            )
            .await?;
            HostResult::Ok(())
        })
    }
}

/// Starts failing with the same error after which [`supervised`] gives up.
const GIVE_UP_AFTER: u32 = 20;

/// Each host's last failure and how many starts in a row ended with it.
static LAST_FAILURE: std::sync::Mutex<std::collections::BTreeMap<&str, (String, u32)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Restarts by [`supervised`] in this process (one seed per process).
static RESTARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs a host's software as its supervisor (Kubernetes) would: when it exits with an
/// error (a disk error at open, a WAL that failed), it starts again after a pause.
async fn supervised(
    what: &'static str,
    software: impl Fn() -> futures::future::BoxFuture<'static, HostResult>,
) -> HostResult {
    loop {
        match software().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // What restarts do not cure (a corrupt WAL) ends the host, and the seed:
                // the same error, start after start, across the schedule's crashes too.
                let message = e.to_string();
                let same = {
                    let mut last = LAST_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = last.entry(what).or_default();
                    entry.1 = if entry.0 == message { entry.1 + 1 } else { 1 };
                    entry.0 = message;
                    entry.1
                };
                if same >= GIVE_UP_AFTER {
                    return Err(e);
                }
                RESTARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(host = what, error = %e, "exited; restarting it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Cuts the simulated disk's power when dropped (see [`logplayer::disk`]).
struct PowerCutAtEnd;

impl Drop for PowerCutAtEnd {
    fn drop(&mut self) {
        #[cfg(feature = "sim-disk")]
        logplayer::disk::power_cut(true);
    }
}

/// Crashes `host` as a power loss would: on the simulated disk (`sim-disk`), what it wrote
/// but did not sync is gone, and its destructors cannot write on the way down.
fn crash(sim: &mut turmoil::Sim<'_>, host: &str) {
    #[cfg(feature = "sim-disk")]
    logplayer::disk::power_cut(true);
    sim.crash(host);
    #[cfg(feature = "sim-disk")]
    logplayer::disk::power_cut(false);
}

/// Repairs every partition the schedule can make.
fn heal(sim: &mut turmoil::Sim<'_>) {
    for p in 0..PLAYERS {
        for host in ["s0", "s1", "log"] {
            sim.repair(format!("p{p}").as_str(), host);
        }
    }
}

/// How many steps a replica stays cut off from the lease store: longer than the lease, so
/// the other replica takes over while the cut one may still be sending.
const CUT_STEPS: u64 = 1500;

/// The seed a child process runs (set by the parent), or one seed asked for by hand.
const SEED_VAR: &str = "LOGPLAYER_SIM_SEED";

impl Run {
    /// The line a child prints for its parent.
    fn line(&self, seed: u64) -> String {
        format!(
            "sim-run seed={seed} crashes={} partitions={} lease_cuts={} restarts={} fenced={} epochs={} steps={} events={} trace={:016x}",
            self.crashes,
            self.partitions,
            self.lease_cuts,
            self.restarts,
            self.fenced,
            self.epochs,
            self.steps,
            self.events,
            self.trace
        )
    }

    /// Reads a child's line back.
    fn parse(line: &str) -> Option<Run> {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let num = |name: &str| field(name)?.parse::<u64>().ok();
        Some(Run {
            crashes: num("crashes")? as u32,
            partitions: num("partitions")? as u32,
            lease_cuts: num("lease_cuts")? as u32,
            restarts: num("restarts")? as u32,
            fenced: num("fenced")?,
            epochs: num("epochs")?,
            steps: num("steps")?,
            events: num("events")?,
            trace: u64::from_str_radix(field("trace")?, 16).ok()?,
        })
    }
}

/// Runs `seed` alone in a child process (this test binary again): `Ok` with what it did, or
/// `Err` with the child's output.
///
/// One process per seed, because a run in a process that already ran other seeds can
/// differ from the same seed in a fresh one (something process-wide in the stack remembers
/// earlier runs); run first in a fresh process, a seed replays exactly (the determinism
/// test checks it), so a failing seed printed here fails the same way when rerun.
fn run_child(seed: u64) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args(["--exact", "every_seed_ends_exactly_once", "--nocapture"])
        .env(SEED_VAR, seed.to_string())
        .output()
        .map_err(|e| format!("running the child for seed {seed}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sim-run ").map(|_| l))
        .and_then(Run::parse);
    match run {
        Some(run) if out.status.success() => Ok(run),
        _ => Err(format!(
            "{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Seeds `0..n`: `LOGPLAYER_SIM_SEEDS`, by default 500 in a release build (CI) and 20 in the
/// debug build plain `cargo test` makes (about 8x slower per seed).
fn seed_count() -> u64 {
    let default = if cfg!(debug_assertions) { 20 } else { 500 };
    std::env::var("LOGPLAYER_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Children at once: `LOGPLAYER_SIM_JOBS`, by default one per core.
fn jobs() -> usize {
    std::env::var("LOGPLAYER_SIM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Runs seeds `0..n`, each in a child, `jobs()` at a time, until all pass or one fails:
/// the sum of what they did, or the first failure (its seed and output).
fn run_seeds(n: u64) -> Result<Run, (u64, String)> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let started = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let total = std::sync::Mutex::new(Run::default());
    let failure = std::sync::Mutex::new(None::<(u64, String)>);
    std::thread::scope(|scope| {
        for _ in 0..jobs() {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= n {
                        return;
                    }
                    match run_child(seed) {
                        Ok(run) => {
                            let mut t = total.lock().unwrap_or_else(|p| p.into_inner());
                            t.crashes += run.crashes;
                            t.partitions += run.partitions;
                            t.lease_cuts += run.lease_cuts;
                            t.restarts += run.restarts;
                            t.fenced += run.fenced;
                            t.steps += run.steps;
                            t.events += run.events;
                        }
                        Err(output) => {
                            stop.store(true, Ordering::SeqCst);
                            let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                            // The lowest failing seed is the one to report.
                            if f.as_ref().is_none_or(|(s, _)| seed < *s) {
                                *f = Some((seed, output));
                            }
                            return;
                        }
                    }
                    let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if d.is_multiple_of(100) {
                        eprintln!("sim: {d} of {n} seeds passed ({:.1?})", started.elapsed());
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(f) => Err(f),
        None => Ok(total.into_inner().unwrap_or_else(|p| p.into_inner())),
    }
}

/// Every seed of the range ends with each shard holding exactly what the log implies, and
/// no shard committing under a stale epoch. With `LOGPLAYER_SIM_SEED=N`, runs seed N alone,
/// in this process (how the parent runs each seed, and how to rerun a failing one).
#[test]
fn every_seed_ends_exactly_once() {
    if let Some(seed) = std::env::var(SEED_VAR).ok().and_then(|v| v.parse().ok()) {
        use_simulated_network();
        match run_seed(seed) {
            Ok(run) => println!("{}", run.line(seed)),
            Err(e) => panic!("seed {seed} failed (rerun: {SEED_VAR}={seed}): {e}"),
        }
        return;
    }
    let started = std::time::Instant::now();
    let n = seed_count();
    let total = match run_seeds(n) {
        Ok(total) => total,
        Err((seed, output)) => {
            let features: Vec<&str> = [
                (cfg!(feature = "mutations"), "mutations"),
                (cfg!(feature = "sim-disk"), "sim-disk"),
            ]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
            let features = match features.is_empty() {
                true => String::new(),
                false => format!(" --features {}", features.join(",")),
            };
            let mutation = std::env::var(logplayer::mutations::ENV)
                .map(|m| format!("{}={m} ", logplayer::mutations::ENV))
                .unwrap_or_default();
            let rerun = format!(
                "{mutation}{SEED_VAR}={seed} cargo test --release{features} --test sim -- --nocapture"
            );
            panic!("seed {seed} failed (rerun: {rerun}):\n{output}")
        }
    };
    assert!(
        n < 20 || total.crashes > 0 && total.partitions > 0 && total.fenced > 0,
        "the fault schedule injected nothing, or no stale leader ever reached a shard: {total:?}"
    );
    println!(
        "sim: {n} seeds, {} crashes, {} partitions, {} lease cut-offs, {} restarts after disk errors, {} stale-epoch requests refused, each ended exactly once ({:.1?}, {} at a time)",
        total.crashes,
        total.partitions,
        total.lease_cuts,
        total.restarts,
        total.fenced,
        started.elapsed(),
        jobs()
    );
}

/// Runs the CI range with `mutation` on (the children inherit it) and returns the line
/// naming the seed that failed; panics if none did, or if the failure is not one of
/// `because`.
#[cfg(feature = "mutations")]
fn some_seed_fails(mutation: &str, because: &[&str]) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args(["--exact", "every_seed_ends_exactly_once", "--nocapture"])
        .env(logplayer::mutations::ENV, mutation)
        .env_remove(SEED_VAR)
        .env("LOGPLAYER_SIM_SEEDS", "500")
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text.lines().find(|l| l.contains("failed (rerun:"));
    assert!(
        !out.status.success() && failed.is_some(),
        "no seed noticed {mutation}:\n{text}"
    );
    assert!(
        because.iter().any(|b| text.contains(b)),
        "a seed failed with {mutation} on, but not for it:\n{text}"
    );
    let failed = failed.unwrap_or_default().to_owned();
    println!("sim: with {mutation} on, {failed}");
    failed
}

/// With the shards' fencing check off, some seed of the CI range fails: the simulation sees
/// what fencing is for.
#[cfg(feature = "mutations")]
#[test]
fn a_shard_ignoring_epochs_fails_some_seed() {
    // The stale leader's stream gets through: its entries commit under the stale epoch, or
    // arrive twice and are skipped as duplicates.
    some_seed_fails(
        "shard-ignores-epochs",
        &["under a stale epoch", "skipped", "exactly-once violated"],
    );
}

/// With the player's queues accepting pushes of an expired term, some seed fails: a stale
/// recovery reader's entries reach a shard that already has them.
#[cfg(feature = "mutations")]
#[test]
fn a_queue_ignoring_terms_fails_some_seed() {
    some_seed_fails("queue-ignores-terms", &["skipped", "exactly-once violated"]);
    // (The shards refuse what such a queue sends out of order on a stream as malformed;
    // "skipped" names that count too.)
}

/// With the WAL acknowledging appends it has not synced, some seed fails: the simulated
/// disk loses unsynced writes on a crash, so a shard ends up holding entries the log lost.
/// The player now says so itself before any shard goes wrong: the log, regrown after the
/// crash, holds other entries at indexes a shard applied, or ends below them.
#[cfg(all(feature = "mutations", feature = "sim-disk"))]
#[test]
fn a_log_skipping_fsync_fails_some_seed() {
    some_seed_fails(
        "log-skips-fsync",
        &[
            "exactly-once violated",
            "WAL corruption",
            "holds another entry at index",
            "the log lost entries that were delivered",
        ],
    );
}

/// One seed, run twice, each in a fresh process, gives the same trace: the same faults at
/// the same steps, the same events logged at the same simulated times, the same end.
#[test]
fn the_same_seed_gives_the_same_trace() {
    #[cfg(not(tokio_unstable))]
    panic!(
        "built without --cfg tokio_unstable (set in .cargo/config.toml; a RUSTFLAGS variable \
         replaces it): the simulated hosts' runtimes cannot be seeded"
    );
    let seed = std::env::var("LOGPLAYER_SIM_SAME_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let a = run_child(seed).unwrap_or_else(|e| panic!("seed {seed} failed:\n{e}"));
    let b = run_child(seed).unwrap_or_else(|e| panic!("seed {seed} failed:\n{e}"));
    assert_eq!(a, b, "seed {seed} ran differently twice");
    println!("sim: seed {seed} twice, the same trace: {}", a.line(seed));
}
