//! The `logplayer` binary: one command per component. Parses flags (each with a default or
//! required, each with an environment variable), sets up logging, and hands off to the
//! library. `anyhow` lives here and nowhere else.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use logplayer::player::args::PlayerArgs;
use tokio_util::sync::CancellationToken;

use logplayer::harness::{bench, cluster, demo};
use logplayer::{client, grpc, logstore, player, shard};

#[derive(Parser)]
#[command(
    name = "logplayer",
    version,
    about = "Exactly-once, in-order delivery of a write-ahead log to storage shards",
    long_about = "LogPlayer delivers every entry of a write-ahead log to the shards that own its \
keys, exactly once and in log order per shard, through shard crashes, player crashes and \
disconnects.\n\nStart here: `logplayer demo` runs everything on this machine and checks it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the LogStore: the durable write-ahead log server.
    Logstore(LogstoreArgs),
    /// Run a shard server (a delivery target), or `shard dump` its state.
    Shard(ShardArgs),
    /// Run the player: read the log, deliver to the shards.
    Player(PlayerArgs),
    /// Run everything on this machine with faults injected, and check exactly-once.
    Demo(DemoArgs),
    /// Append generated transactions to a running LogStore.
    Load(LoadArgs),
    /// Measure delivery delays and throughput over shard counts and transaction sizes.
    Bench(BenchArgs),
    /// Measure failover: take the leader replica down repeatedly under load and report the
    /// time to the new leader's first delivery (p50/p99), with the default lease settings.
    FailoverBench(FailoverBenchArgs),
    /// Print the LogPlayer and Shard CustomResourceDefinitions as YAML, or write them into
    /// directories (`logplayer crd --write crds --write charts/logplayer-operator/files/crds`
    /// regenerates the committed copies).
    Crd(CrdArgs),
    /// Run the Kubernetes operator: reconcile LogPlayer and Shard resources (one replica
    /// leads behind a Lease; the others stand by).
    Operator(OperatorArgs),
}

#[derive(Args)]
struct OperatorArgs {
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "LOGPLAYER_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: String,
    /// The Lease the operator replicas elect a leader with.
    #[arg(
        long,
        env = "LOGPLAYER_LEASE_NAME",
        default_value = "logplayer-operator"
    )]
    lease_name: String,
    /// Namespace of that Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: the pod name, else host-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the player, LogStore and shard pods when a LogPlayer sets no spec.image.
    #[arg(long, env = "LOGPLAYER_DEFAULT_IMAGE", default_value = concat!("ghcr.io/logplayer/logplayer:", env!("CARGO_PKG_VERSION")))]
    default_image: String,
    /// DNS suffix for Service addresses (`<svc>.<ns>.svc.<domain>`); empty relies on the
    /// pods' DNS search path (`<svc>.<ns>.svc`).
    #[arg(long, env = "LOGPLAYER_CLUSTER_DOMAIN", default_value = "")]
    cluster_domain: String,
    /// How long the operator's Lease lasts without renewal.
    #[arg(long, env = "LOGPLAYER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The leader stops reconciling when it could not renew for this long.
    #[arg(long, env = "LOGPLAYER_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// How often replicas try to acquire or renew the Lease.
    #[arg(long, env = "LOGPLAYER_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
}

#[derive(Args)]
struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing (repeat for several:
    /// `--write crds --write charts/logplayer-operator/files/crds` regenerates both copies).
    #[arg(long)]
    write: Vec<PathBuf>,
}

#[derive(Args)]
struct FailoverBenchArgs {
    /// Leader takedowns to measure.
    #[arg(long, default_value_t = 20)]
    takedowns: usize,
    /// SIGTERM (graceful: the leader releases its lease) instead of SIGKILL.
    #[arg(long)]
    graceful: bool,
    /// Player replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Shards.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Background load in transactions per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Extra arguments for every replica (e.g. "--lease-duration 1s"), space separated.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    player_args: String,
    /// Where to keep data and logs (default: a temporary directory).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct LogstoreArgs {
    /// Directory of the WAL segments.
    #[arg(long, env = "LOGPLAYER_DATA")]
    data: PathBuf,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Segment size in bytes before a new segment file is started.
    #[arg(long, env = "LOGPLAYER_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ShardArgs {
    #[command(subcommand)]
    action: Option<ShardAction>,
    /// Shard id (as in the player's shard map).
    #[arg(long, env = "LOGPLAYER_SHARD_ID", required = true)]
    id: Option<String>,
    /// Directory of the shard's database.
    #[arg(long, env = "LOGPLAYER_DATA", required = true)]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: String,
    /// UNSAFE, for benchmarks: commit without fsync. Still atomic and exactly-once, but a
    /// crash can roll the applied index back (the player then redelivers from the log).
    #[arg(long)]
    no_fsync: bool,
}

#[derive(Subcommand)]
enum ShardAction {
    /// Print a shard's state as JSON lines: offline from --data, or online from --addr.
    Dump {
        /// A stopped shard's data directory.
        #[arg(long, conflicts_with = "addr", required_unless_present = "addr")]
        data: Option<PathBuf>,
        /// A running shard's address.
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Keep data and logs here instead of a temporary directory.
    #[arg(long, env = "LOGPLAYER_DEMO_DATA")]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Transactions per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Length of the load phase.
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 1024)]
    txn_bytes: usize,
    /// Keys per transaction.
    #[arg(long, default_value_t = 10)]
    keys: usize,
}

#[derive(Args, Clone)]
struct LoadFlags {
    /// Transactions per second (0 = as fast as --concurrency appenders can).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Appenders in flight when --rate is 0.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Keys per transaction.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Distinct keys to draw from.
    #[arg(long, default_value_t = 100_000)]
    key_space: usize,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, env = "LOGPLAYER_LOGSTORE", default_value = "127.0.0.1:7000")]
    logstore: String,
    #[command(flatten)]
    load: LoadFlags,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 1024)]
    txn_bytes: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// Shard counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2,10,20")]
    shards: Vec<usize>,
    /// Transaction sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,10240")]
    sizes: Vec<usize>,
    #[command(flatten)]
    load: LoadFlags,
    /// Where to keep data and logs (default: a temporary directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write results as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runs per configuration; with more than one, a median row follows the runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Freeze shard s0 (SIGSTOP) for this many seconds from one second into each run, to
    /// measure the player's memory and the other shards' delays while one shard stalls.
    #[arg(long, default_value_t = 0)]
    stall_seconds: u64,
    /// Start the shards with --no-fsync (isolates the player's cost from the disk).
    #[arg(long)]
    shard_no_fsync: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run_failover_bench(a: FailoverBenchArgs) -> anyhow::Result<()> {
    use logplayer::harness::failover::{Takedown, take_down_leader, wait_for_leader};
    let tmp = tempfile::Builder::new()
        .prefix("logplayer-failover-")
        .tempdir()?;
    let dir = a.data.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut c = cluster::Cluster::start(&dir, &cluster::binary(), a.shards).await?;
    let extra: Vec<&str> = a.player_args.split_whitespace().collect();
    c.start_replicas(a.replicas, &extra).await?;
    wait_for_leader(&c, Duration::from_secs(30)).await?;
    let log = client::Log::connect(c.logstore.addr()).await?;
    let mut spec = load_spec(
        &LoadFlags {
            rate: a.rate,
            seconds: 24 * 3600,
            concurrency: 64,
            keys: 10,
            key_space: 10_000,
        },
        1024,
    );
    spec.seed = 9;
    let load = {
        let log = log.clone();
        tokio::spawn(async move { bench::drive(&log, &spec, None).await })
    };
    let how = if a.graceful {
        Takedown::Term
    } else {
        Takedown::Kill
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ms = Vec::new();
    println!("takedown,old_epoch,new_epoch,takeover_ms");
    for _ in 0..a.takedowns {
        let f = take_down_leader(&mut c, how, Duration::from_secs(60)).await?;
        println!("{how},{},{},{:.1}", f.old_epoch, f.new_epoch, f.millis);
        if f.new_epoch <= f.old_epoch {
            bail!("epoch did not increase: {} -> {}", f.old_epoch, f.new_epoch);
        }
        ms.push(f.millis);
        // Let the replaced replica rejoin as a standby before the next takedown.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    load.abort();
    // Appends the aborted load had in flight may still land; the checker waits for a quiet log.
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "{} {how} takedowns: takeover p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    let check =
        logplayer::harness::check::check(&log, &c.shard_map(), Duration::from_secs(60)).await?;
    print!("{check}");
    for p in c.players.iter_mut().chain(c.shards.iter_mut()) {
        p.terminate(Duration::from_secs(5)).await;
    }
    c.logstore.terminate(Duration::from_secs(5)).await;
    if !check.pass {
        bail!("exactly-once check failed");
    }
    println!("exactly-once: PASS");
    Ok(())
}

/// One measured run of one bench configuration, on a fresh cluster in `dir`.
async fn bench_once(
    a: &BenchArgs,
    dir: &std::path::Path,
    bin: &std::path::Path,
    n: usize,
    size: usize,
    run: u32,
    shard_extra: &[&str],
) -> anyhow::Result<bench::BenchRow> {
    let mut c = cluster::Cluster::start_with(dir, bin, n, &[], shard_extra).await?;
    c.start_player(&[]).await?;
    let log = client::Log::connect(c.logstore.addr()).await?;
    // Warm up (connections, page cache), then measure from clean histograms.
    let mut warm = load_spec(&a.load, size);
    warm.duration = Duration::from_secs(1);
    bench::drive(&log, &warm, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reading with reset discards the warm-up samples.
    let mut warmup = bench::Delays::default();
    for s in &c.shards {
        warmup.collect(s.addr()).await?;
    }
    let spec = load_spec(&a.load, size);
    let stall = async {
        if a.stall_seconds > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.shards[0].stop()?;
            tokio::time::sleep(Duration::from_secs(a.stall_seconds)).await;
            c.shards[0].cont()?;
        }
        Ok::<_, cluster::ClusterError>(())
    };
    let (load, stalled) = tokio::join!(bench::drive(&log, &spec, None), stall);
    stalled?;
    let peak = c.players[0].peak_rss_mib().unwrap_or(0.0);
    let check =
        logplayer::harness::check::check(&log, &c.shard_map(), Duration::from_secs(120)).await?;
    let mut delays = bench::Delays::default();
    for s in &c.shards {
        delays.collect(s.addr()).await?;
    }
    let row = bench::BenchRow::from(n, &spec, run, &load, &delays, peak, a.stall_seconds);
    for p in c.players.iter_mut().chain(c.shards.iter_mut()) {
        p.terminate(Duration::from_secs(5)).await;
    }
    c.logstore.terminate(Duration::from_secs(5)).await;
    if !check.pass {
        bail!("exactly-once check failed during the bench:\n{check}");
    }
    Ok(row)
}

/// Cancels the token on SIGTERM/SIGINT.
fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        grpc::shutdown_signal().await;
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Logstore(a) => {
            let (log, summary) = logstore::LogStore::open(a.data.clone(), Some(a.segment_bytes))
                .with_context(|| format!("opening the log in {}", a.data.display()))?;
            tracing::info!(
                first = summary.first,
                last = summary.last,
                torn_bytes = summary.torn_bytes_truncated,
                writers = summary.writers,
                "log opened"
            );
            let (listener, addr) = grpc::bind(&a.listen).await?;
            println!("listening on {addr}");
            logstore::service::serve(log, listener, on_signal()).await?;
        }
        Command::Shard(a) => match a.action {
            Some(ShardAction::Dump {
                data: Some(dir), ..
            }) => {
                let store = shard::store::RedbStore::open_existing(&dir)?;
                let mut out = std::io::stdout().lock();
                let mut err = None;
                shard::ShardStore::dump(&store, &mut |k, v| {
                    if err.is_none() {
                        err = std::io::Write::write_all(
                            &mut out,
                            format!("{}\n", logplayer::model::json_line(k, v)).as_bytes(),
                        )
                        .err();
                    }
                })?;
                if let Some(e) = err {
                    return Err(e.into());
                }
            }
            Some(ShardAction::Dump { addr, .. }) => {
                let addr = addr.context("give --data DIR or --addr ADDR")?;
                for line in client::ShardConn::connect(&addr).await?.dump().await? {
                    println!("{line}");
                }
            }
            None => {
                let (Some(id), Some(data)) = (a.id, a.data) else {
                    bail!("shard needs --id and --data");
                };
                let mut store = shard::store::RedbStore::open(&data)
                    .with_context(|| format!("opening shard store in {}", data.display()))?;
                if a.no_fsync {
                    tracing::warn!("--no-fsync: commits are not durable until a later sync");
                    store.set_fsync(false);
                }
                let core = shard::ShardCore::open(store)?;
                let d = core.durable();
                tracing::info!(shard = %id, applied = d.applied, highest_epoch = d.highest_epoch, "shard opened");
                let (listener, addr) = grpc::bind(&a.listen).await?;
                println!("listening on {addr}");
                shard::service::serve(id, core, listener, on_signal()).await?;
            }
        },
        Command::Player(a) => {
            let identity = a.identity.clone().unwrap_or_else(default_identity);
            let config = a.player_config(a.shard_map()?, &identity);
            let stats = std::sync::Arc::new(player::PlayerStats::default());
            let shutdown = on_signal();
            if let Some(addr) = &a.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                tracing::info!(addr = %listener.local_addr()?, "metrics listening");
                let (m, s) = (stats.metrics.clone(), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = logplayer::metrics::serve(m, listener, s).await {
                        tracing::error!(error = %e, "metrics server failed");
                    }
                });
            }
            if a.retain_log && a.cursor_file.is_none() && !a.cursor_shard_status {
                bail!("--retain-log needs a cursor store: --cursor-file or --cursor-shard-status");
            }
            let cursors: Option<std::sync::Arc<dyn logplayer::player::cursor::CursorStore>> =
                match (&a.cursor_file, a.cursor_shard_status) {
                    (Some(p), _) => Some(std::sync::Arc::new(
                        logplayer::player::cursor::FileCursors::new(p),
                    )),
                    (None, true) => {
                        let client = kube::Client::try_default()
                            .await
                            .context("connecting to Kubernetes for the cursor store")?;
                        Some(std::sync::Arc::new(
                            logplayer::player::cursor::KubeCursors::new(client, &a.lease_namespace),
                        ))
                    }
                    (None, false) => None,
                };
            let lease_config = a.lease_config();
            let backend: Option<std::sync::Arc<dyn logplayer::lease::LeaseBackend>> =
                match (&a.lease_file, &a.lease_name) {
                    (Some(path), _) => Some(std::sync::Arc::new(logplayer::lease::FileLease::new(
                        path.clone(),
                        identity.clone(),
                        a.lease_duration,
                    )?)),
                    (None, Some(name)) => {
                        let client = kube::Client::try_default()
                            .await
                            .context("connecting to Kubernetes for the lease")?;
                        Some(std::sync::Arc::new(logplayer::lease::KubeLease::new(
                            client,
                            &a.lease_namespace,
                            name,
                            &identity,
                            a.lease_duration,
                        )?))
                    }
                    (None, None) => None,
                };
            match backend {
                Some(backend) => {
                    lease_config.validate()?;
                    let replica = player::replica::ReplicaConfig {
                        player: config,
                        lease: lease_config,
                        cursors,
                        keep_leading_after_loss: a.fault_keep_leading,
                    };
                    player::replica::run(replica, backend, stats, shutdown).await?;
                }
                None => {
                    stats.metrics.leader.set(1);
                    stats.metrics.epoch.set(config.epoch as i64);
                    stats.metrics.set_ready(true);
                    let mut p = player::Player::start(config, stats, shutdown).await?;
                    if let Some(c) = cursors {
                        p = p.with_cursors(c);
                    }
                    p.run().await?;
                }
            }
        }
        Command::Demo(a) => {
            let pass = demo::run(demo::DemoConfig {
                data: a.data,
                shards: a.shards,
                rate: a.rate,
                seconds: a.seconds,
                txn_bytes: a.txn_bytes,
                keys_per_txn: a.keys,
            })
            .await?;
            if !pass {
                std::process::exit(1);
            }
        }
        Command::Load(a) => {
            let log = client::Log::connect(&a.logstore).await?;
            let spec = load_spec(&a.load, a.txn_bytes);
            let r = bench::drive(&log, &spec, None).await;
            println!("{}", serde_json::to_string(&r)?);
        }
        Command::Bench(a) => run_bench(a).await?,
        Command::FailoverBench(a) => run_failover_bench(a).await?,
        Command::Crd(a) => {
            if a.write.is_empty() {
                print!("{}", logplayer::crd::crds_yaml()?);
            }
            for dir in &a.write {
                for path in logplayer::crd::write_crds(dir)? {
                    println!("wrote {}", path.display());
                }
            }
        }
        Command::Operator(a) => run_operator(a).await?,
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "logplayer".into());
    format!("{host}-{}", std::process::id())
}

async fn run_operator(a: OperatorArgs) -> anyhow::Result<()> {
    use logplayer::operator;
    let lease = logplayer::lease::LeaseConfig {
        lease_duration: a.lease_duration,
        renew_deadline: a.renew_deadline,
        retry_period: a.retry_period,
    };
    lease.validate()?;
    let config = operator::OperatorConfig {
        lease_name: a.lease_name,
        lease_namespace: a.lease_namespace,
        identity: a.identity.unwrap_or_else(default_identity),
        lease,
        defaults: operator::desired::Defaults {
            image: a.default_image,
            cluster_domain: a.cluster_domain,
        },
    };
    let metrics = std::sync::Arc::new(operator::OperatorMetrics::default());
    let shutdown = on_signal();
    let listener = tokio::net::TcpListener::bind(&a.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics address {}", a.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let server = tokio::spawn(logplayer::metrics::serve(
        metrics.clone(),
        listener,
        shutdown.clone(),
    ));
    tracing::info!(identity = %config.identity, lease = %config.lease_name, namespace = %config.lease_namespace, "operator starting");
    operator::run(config, metrics, shutdown.clone())
        .await
        .context("running the operator")?;
    shutdown.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "metrics server");
    }
    Ok(())
}

fn load_spec(l: &LoadFlags, txn_bytes: usize) -> bench::LoadSpec {
    bench::LoadSpec {
        rate: l.rate,
        duration: Duration::from_secs(l.seconds),
        count: 0,
        concurrency: l.concurrency,
        keys_per_txn: l.keys,
        key_space: l.key_space,
        txn_bytes,
        seed: 7,
    }
}

async fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("logplayer-bench-")
        .tempdir()?;
    let root = a.data.clone().unwrap_or_else(|| tmp.path().to_owned());
    let bin = cluster::binary();
    let mut rows = Vec::new();
    let shard_extra: &[&str] = if a.shard_no_fsync {
        &["--no-fsync"]
    } else {
        &[]
    };
    if a.stall_seconds > 0 && a.stall_seconds + 1 >= a.load.seconds {
        bail!(
            "--stall-seconds ({}) must end before the run does (--seconds {})",
            a.stall_seconds,
            a.load.seconds
        );
    }
    println!("{}", bench::BenchRow::csv_header());
    for &n in &a.shards {
        for &size in &a.sizes {
            let mut runs = Vec::new();
            for run in 1..=a.runs {
                let dir = root.join(format!("s{n}-b{size}-r{}-{run}", a.load.rate));
                std::fs::create_dir_all(&dir)?;
                let row = bench_once(&a, &dir, &bin, n, size, run, shard_extra).await?;
                println!("{}", row.csv());
                runs.push(row);
            }
            if runs.len() > 1
                && let Some(m) = bench::BenchRow::median_of(&runs)
            {
                println!("{}", m.csv());
                runs.push(m);
            }
            rows.extend(runs);
        }
    }
    if let Some(p) = &a.csv {
        let mut text = format!("{}\n", bench::BenchRow::csv_header());
        for r in &rows {
            text.push_str(&r.csv());
            text.push('\n');
        }
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
