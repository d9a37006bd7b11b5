//! The real code under deterministic simulation (turmoil): the real LogStore (its WAL and
//! group commit), two real shards (redb), and the real player, each a simulated host running
//! its real tonic server or client over the simulation's network, with a writer appending
//! non-idempotent transactions. Each seed drives a fault schedule — partitions between the
//! player and a shard or the log, shard hosts crashed and restarted, message latency — until
//! the writer's appends are in; then faults stop, everything comes back, and the seed ends
//! with the exactly-once check (every shard's state against what the log implies).
//!
//! ```sh
//! cargo test --release --test sim -- --nocapture                 # seeds 0..500 (CI)
//! LOGPLAYER_SIM_SEED=17 cargo test --release --test sim -- --nocapture   # one seed
//! LOGPLAYER_SIM_SEEDS=100000 cargo test --release --test sim     # a long run (~7 h)
//! ```
//!
//! Not yet deterministic: the same seed can run differently twice (see the ignored test at
//! the end), so a failing seed is a lead, not a replay.
//!
//! What is simulated so far: the network (latency, partitions), the clock (tokio time inside
//! each host), and host crashes (a crashed host loses its process state; its files stay, as
//! after a process crash). Blocking work runs inline on each host's task
//! (`logplayer::blocking`). Not yet: disk faults (unsynced writes lost on power loss, torn
//! writes, a full disk), which need the WAL and redb on turmoil's simulated disk.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use logplayer::client::Log;
use logplayer::harness::check::check;
use logplayer::logstore::{LogStore, LogStoreConfig};
use logplayer::player::{Player, PlayerConfig, PlayerStats};
use logplayer::proto::{Mutation, mutation::Op};
use logplayer::routing::ShardMap;
use logplayer::shard::store::RedbStore;
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
const ENTRIES: u64 = 150;
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
    steps: u64,
    trace: u64,
}

/// Runs one seed; `Err` names what went wrong.
fn run_seed(seed: u64) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(300))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let log_dir = dir.path().join("log");
    sim.host("log", move || {
        let dir = log_dir.clone();
        async move {
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
        }
    });
    for s in 0..SHARDS {
        let shard_dir = dir.path().join(format!("s{s}"));
        sim.host(format!("s{s}"), move || {
            let dir = shard_dir.clone();
            async move {
                let store = RedbStore::open(&dir)?;
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
                    "shard",
                )
                .await?;
                HostResult::Ok(())
            }
        });
    }
    sim.host("player", || async {
        let config = PlayerConfig::new(format!("log:{LOG_PORT}"), shard_map());
        let stats = Arc::new(PlayerStats::default());
        let player = Player::start(config, stats, CancellationToken::new()).await?;
        player.run().await?;
        HostResult::Ok(())
    });
    // Set by the writer once its appends are in: faults stop, and what is down comes back,
    // before the exactly-once check reads every shard.
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appended = quiet.clone();
    sim.client("writer", async move {
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        appended.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = check(&log, &shard_map(), Duration::from_secs(60)).await?;
        if !report.pass {
            return Err(format!("exactly-once violated:\n{report}").into());
        }
        HostResult::Ok(())
    });
    let mut faults = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut down: Option<String> = None;
    let mut run = Run::default();
    let mut healed = false;
    let mut trace = std::hash::DefaultHasher::new();
    loop {
        use std::hash::{Hash, Hasher};
        match sim.step() {
            Ok(true) => {
                sim.elapsed().hash(&mut trace);
                run.steps.hash(&mut trace);
                run.trace = trace.finish();
                return Ok(run);
            }
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
        run.steps += 1;
        let stop = quiet.load(std::sync::atomic::Ordering::SeqCst);
        if stop {
            if let Some(host) = down.take() {
                sim.bounce(host.as_str());
            }
            if !healed {
                heal(&mut sim);
                healed = true;
            }
            continue;
        }
        if run.steps % FAULT_EVERY != 0 {
            continue;
        }
        if let Some(host) = down.take() {
            sim.bounce(host.as_str());
            heal(&mut sim);
            continue;
        }
        let fault = faults.random_range(0..6);
        (run.steps, fault).hash(&mut trace);
        match fault {
            0 | 1 => {
                let host = format!("s{}", faults.random_range(0..SHARDS));
                sim.crash(host.as_str());
                down = Some(host);
                run.crashes += 1;
            }
            2 => {
                let shard = format!("s{}", faults.random_range(0..SHARDS));
                sim.partition("player", shard.as_str());
                run.partitions += 1;
            }
            3 => {
                sim.partition("player", "log");
                run.partitions += 1;
            }
            _ => {}
        }
    }
}

/// Repairs every partition the schedule can make.
fn heal(sim: &mut turmoil::Sim<'_>) {
    for host in ["s0", "s1", "log"] {
        sim.repair("player", host);
    }
}

fn seeds() -> Vec<u64> {
    if let Some(one) = std::env::var("LOGPLAYER_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![one];
    }
    // 500 seeds take about 2.5 min in a release build; the debug build `cargo test` runs
    // is about 8x slower per seed, so it samples 20 (CI runs the 500 in release).
    let default = if cfg!(debug_assertions) { 20 } else { 500 };
    let n = std::env::var("LOGPLAYER_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

#[test]
fn every_seed_ends_exactly_once() {
    use_simulated_network();
    let started = std::time::Instant::now();
    let seeds = seeds();
    let (mut crashes, mut partitions) = (0, 0);
    for (done, &seed) in seeds.iter().enumerate() {
        match run_seed(seed) {
            Ok(run) => {
                crashes += run.crashes;
                partitions += run.partitions;
                if seeds.len() == 1 {
                    println!("sim: seed {seed}: {run:?}");
                }
            }
            Err(e) => panic!("seed {seed} failed (rerun: LOGPLAYER_SIM_SEED={seed}): {e}"),
        }
        if (done + 1) % 50 == 0 {
            eprintln!(
                "sim: {} of {} seeds passed ({:.1?})",
                done + 1,
                seeds.len(),
                started.elapsed()
            );
        }
    }
    assert!(
        seeds.len() < 20 || crashes > 0 && partitions > 0,
        "the fault schedule injected nothing"
    );
    println!(
        "sim: {} seeds, {crashes} shard crashes, {partitions} partitions, each ended exactly once ({:.1?})",
        seeds.len(),
        started.elapsed()
    );
}

#[test]
#[ignore = "not deterministic yet: tokio's scheduler RNG is seeded only under --cfg tokio_unstable, backoff jitter draws from an unseeded RNG, and the checker's deadlines are wall-clock; a failing seed is printed but may not fail again"]
fn the_same_seed_gives_the_same_trace() {
    use_simulated_network();
    let a = run_seed(7).expect("seed 7 passes");
    let b = run_seed(7).expect("seed 7 passes");
    assert_eq!(a, b, "seed 7 ran differently twice");
}
