//! The tooling commands: `demo`, `load`, `bench` and `failover-bench`. They drive real
//! processes through [`crate::harness`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::client;
use crate::harness::{bench, cluster, demo, floor};

#[derive(Args)]
pub struct FailoverBenchArgs {
    /// Leader takedowns to measure.
    #[arg(long, default_value_t = 20, value_parser = at_least::<1>)]
    takedowns: usize,
    /// SIGTERM (graceful: the leader releases its lease) instead of SIGKILL.
    #[arg(long)]
    graceful: bool,
    /// Player replicas (at least 2: a leader and a standby to take over).
    #[arg(long, default_value_t = 3, value_parser = at_least::<2>)]
    replicas: usize,
    /// Take down the log leader of a LogStore of this many log replicas instead of the
    /// player leader: time from SIGKILL to the next acknowledged append.
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=7))]
    log_replicas: Option<u64>,
    /// Shards.
    #[arg(long, default_value_t = 4, value_parser = at_least::<1>)]
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
pub struct DemoArgs {
    /// Keep data and logs here instead of a temporary directory.
    #[arg(long, env = "LOGPLAYER_DEMO_DATA")]
    data: Option<PathBuf>,
    /// Shards.
    #[arg(long, default_value_t = 4, value_parser = at_least::<1>)]
    shards: usize,
    /// Transactions per second (0 = as fast as 64 appenders can).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Length of the load phase; it goes on past this until the last fault is injected.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Times the fault schedule (seven faults; five with one log replica) runs, spread evenly
    /// over --seconds: a soak, e.g. `--seconds 600 --rounds 20`.
    #[arg(long, default_value_t = 1, value_parser = at_least::<1>)]
    rounds: usize,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 1024)]
    txn_bytes: usize,
    /// Keys per transaction.
    #[arg(long, default_value_t = 10, value_parser = at_least::<1>)]
    keys: usize,
    /// Log replicas: 3 runs the LogStore as a Raft group (and kills its leader and freezes
    /// a follower among the faults); 1 runs the single-node LogStore. Odd, 1 to 7.
    #[arg(long, default_value_t = 3, value_parser = log_replicas)]
    logstore_replicas: usize,
}

#[derive(Args, Clone)]
pub struct LoadFlags {
    /// Transactions per second (0 = as fast as --concurrency appenders can).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Appenders in flight when --rate is 0.
    #[arg(long, default_value_t = 256, value_parser = at_least::<1>)]
    concurrency: usize,
    /// Keys per transaction.
    #[arg(long, default_value_t = 10, value_parser = at_least::<1>)]
    keys: usize,
    /// Distinct keys to draw from.
    #[arg(long, default_value_t = 100_000, value_parser = at_least::<1>)]
    key_space: usize,
}

#[derive(Args)]
pub struct LoadArgs {
    #[arg(long, env = "LOGPLAYER_LOGSTORE", default_value = "127.0.0.1:7000")]
    logstore: String,
    #[command(flatten)]
    load: LoadFlags,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 1024)]
    txn_bytes: usize,
    /// Writer ids are PREFIX-RUN-N (RUN new each run, N each append stream): the
    /// certificate must grant writing as them (`logplayer://writer/PREFIX-*`, as the
    /// operator's `demo-writer-tls` does for a `writerIds` entry `PREFIX-*`).
    #[arg(long, env = "LOGPLAYER_WRITER_PREFIX", default_value = crate::harness::bench::WRITER_PREFIX, value_parser = parse_writer_prefix)]
    writer_prefix: String,
}

/// A count that must be at least `N` (clap's ranged parsers are for fixed-width integers).
fn at_least<const N: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= N => Ok(n),
        Ok(_) => Err(format!("must be at least {N}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A count of log replicas: odd, 1 to 7 (the CRD's rule: an even group survives no more
/// failures than one fewer, and a tool run on one machine gains nothing past seven).
fn log_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=7).contains(&n) && n % 2 == 1 => Ok(n),
        Ok(_) => Err(
            "must be odd, 1 to 7 (an even count of log replicas survives no more failures than one fewer)"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// A writer-id prefix: letters, digits, `.`, `_` and `-` (the ids it makes are written in
/// the log and matched against certificates' writer names).
fn parse_writer_prefix(s: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return Err(format!(
            "{s:?}: 1 to 64 of letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(s.to_owned())
}

#[derive(Args)]
pub struct BenchArgs {
    /// Shard counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2,10,20", value_parser = at_least::<1>)]
    shards: Vec<usize>,
    /// Transaction sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,10240")]
    sizes: Vec<usize>,
    /// Log replicas to measure, comma separated: 1 is the single-node LogStore, 3 a Raft
    /// group of three on this machine (sharing its disk). Each odd, 1 to 7.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = log_replicas)]
    logstore_replicas: Vec<usize>,
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
    /// The shards' store (`journal`, `redb`; `auto` is the journal for the bench's new
    /// directories): to compare them on the same load.
    #[arg(long, value_enum, default_value_t = crate::shard::any::StoreKind::Auto)]
    shard_store: crate::shard::any::StoreKind,
    /// Fail (exit 1) when any run's shard write amplification (bytes the shards write to
    /// disk per byte of payload) is above this: the guard `.ci/run` uses.
    #[arg(long)]
    max_shard_write_amp: Option<f64>,
}

/// The security of a command that runs the whole system on this machine: mutual TLS with
/// certificates it issues into a temporary directory (a CA, and one per component), or
/// `--insecure`. The returned directory lives as long as the run needs the files.
fn local_security(tls: &super::TlsArgs) -> anyhow::Result<Option<tempfile::TempDir>> {
    if tls.insecure() {
        tls.install()?;
        return Ok(None);
    }
    if tls.files_given() {
        anyhow::bail!(
            "this command issues its own certificates: leave out --tls-cert/--tls-key/--tls-ca \
             (or pass --insecure to run plaintext)"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("logplayer-tls-")
        .tempdir()?;
    let certs = crate::tls::issue::issue_local(dir.path())?;
    let client = crate::tls::Tls::load(certs.client.clone())?;
    crate::tls::install(crate::tls::Security::Tls(client));
    cluster::use_tls(certs);
    tracing::info!(dir = %dir.path().display(), "mutual TLS with certificates issued for this run");
    Ok(Some(dir))
}

/// Runs the demo; exits 1 when the exactly-once check fails.
pub async fn run_demo(a: DemoArgs, tls: &super::TlsArgs) -> anyhow::Result<()> {
    let _certs = local_security(tls)?;
    let pass = demo::run(demo::DemoConfig {
        data: a.data,
        shards: a.shards,
        rate: a.rate,
        seconds: a.seconds,
        txn_bytes: a.txn_bytes,
        keys_per_txn: a.keys,
        logstore_replicas: a.logstore_replicas,
        rounds: a.rounds,
    })
    .await?;
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}

/// Appends generated transactions and prints what the drive did as JSON.
pub async fn run_load(a: LoadArgs) -> anyhow::Result<()> {
    // Its writer ids are `PREFIX-RUN-N`: a certificate that cannot append as them would
    // have every append refused.
    super::require(crate::tls::identity::Fit::WriteAs(format!(
        "{}-",
        a.writer_prefix
    )))?;
    let log = client::Log::connect(&a.logstore).await?;
    let spec = load_spec(&a.load, a.txn_bytes);
    fits_the_log(&log, &spec, &a.logstore).await?;
    let r = bench::drive_as(&log, &spec, &a.writer_prefix).await;
    println!("{}", serde_json::to_string(&r)?);
    // The report says how many; the exit status says whether any failed.
    if r.failed > 0 {
        bail!(
            "{} of {} appends failed (see the LogStore's logs and the report above)",
            r.failed,
            r.failed + r.appended
        );
    }
    Ok(())
}

/// Refuses a load whose largest transaction the LogStore at `addr` would refuse
/// (`entry-too-large` on every append otherwise, each one counted failed).
async fn fits_the_log(log: &client::Log, spec: &bench::LoadSpec, addr: &str) -> anyhow::Result<()> {
    let limit = log.describe().await?.max_entry_bytes;
    spec.fits(
        limit,
        &format!("the LogStore at {addr} (or raise its limit)"),
        "--txn-bytes",
    )
    .map_err(anyhow::Error::msg)
}

/// `p50 X ms, p99 Y ms, max Z ms` of `ms` (sorted in place).
fn percentiles(ms: &mut [f64]) -> String {
    if ms.is_empty() {
        return "no samples".into();
    }
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    )
}

/// The failover benches' end: the exactly-once check, every process stopped.
async fn check_and_stop(c: &mut cluster::Cluster, log: &client::Log) -> anyhow::Result<()> {
    let check = crate::harness::check::check(log, &c.shard_map(), Duration::from_secs(60)).await?;
    print!("{check}");
    c.stop().await;
    if !check.pass {
        bail!("exactly-once check failed");
    }
    println!("exactly-once: PASS");
    Ok(())
}

/// The failover benches' background load: `rate` 1 KB transactions/s until aborted.
fn background_load(
    log: &client::Log,
    rate: u64,
    seed: u64,
) -> tokio::task::JoinHandle<bench::LoadReport> {
    let mut spec = load_spec(
        &LoadFlags {
            rate,
            seconds: 24 * 3600,
            concurrency: 64,
            keys: 10,
            key_space: 10_000,
        },
        1024,
    );
    spec.seed = seed;
    let log = log.clone();
    tokio::spawn(async move { bench::drive(&log, &spec, None).await })
}

/// `failover-bench --log-replicas N`: the log leader SIGKILLed `--takedowns` times under
/// load (a player delivering to the shards), each timed from the SIGKILL to the next
/// acknowledged append; then the exactly-once check.
async fn run_log_failover_bench(a: &FailoverBenchArgs, replicas: usize) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("logplayer-log-failover-")
        .tempdir()?;
    let dir = a.data.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut c = cluster::Cluster::start_replicated(
        &dir,
        &cluster::binary(),
        (a.shards, &[]),
        replicas,
        &[],
    )
    .await?;
    c.start_player(&[]).await?;
    let log = client::Log::connect(&c.logstore_addrs()).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.log_leader().await.is_none() {
        if std::time::Instant::now() > deadline {
            bail!("no log leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load = background_load(&log, a.rate, 11);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ms = Vec::new();
    let mut probe = crate::harness::workload::Workload::new(10, 10_000, 1024, 12);
    let mut probe_seq = 0u64;
    println!("takedown,old_leader,new_leader,first_ack_ms");
    for _ in 0..a.takedowns {
        let mut leader = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while leader.is_none() && std::time::Instant::now() < deadline {
            leader = c.log_leader().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(l) = leader else {
            bail!("no log leader within 30 s");
        };
        c.log_replicas()[l].kill().await;
        let killed = std::time::Instant::now();
        // A probe writer that starts after the SIGKILL, so that no answer already on its way
        // from the old leader counts: its first acknowledged append ends the failover.
        probe_seq += 1;
        let txn = probe.next_txn();
        // Its id is one the run's client certificate may write as (`load-*`).
        while let Err(e) = log
            .append(txn.clone(), Some(("load-failover-probe", probe_seq)), 0)
            .await
        {
            // A refusal of the probe itself would be refused again for 30 s: say so at once.
            if let client::ClientError::Rpc { status, .. } = &e
                && matches!(
                    status.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                )
            {
                bail!("the log refused the failover probe's append: {e}");
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("no append acknowledged within 30 s of killing the log leader: {e}");
            }
        }
        let took = killed.elapsed().as_secs_f64() * 1000.0;
        let new = c
            .log_leader()
            .await
            .map(|i| (i + 1).to_string())
            .unwrap_or("?".into());
        println!("kill,{},{new},{took:.1}", l + 1);
        ms.push(took);
        c.log_replicas()[l].restart().await?;
        // Let it catch up as a follower before the next takedown.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    load.abort();
    println!(
        "{} log leader kills ({replicas} log replicas): first acknowledged append after {}",
        ms.len(),
        percentiles(&mut ms)
    );
    check_and_stop(&mut c, &log).await
}

pub async fn run_failover_bench(a: FailoverBenchArgs, tls: &super::TlsArgs) -> anyhow::Result<()> {
    let _certs = local_security(tls)?;
    use crate::harness::failover::{Takedown, take_down_leader, wait_for_leader};
    if let Some(r) = a.log_replicas {
        return run_log_failover_bench(&a, r as usize).await;
    }
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
    let load = background_load(&log, a.rate, 9);
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
    println!(
        "{} {how} takedowns: takeover {}",
        ms.len(),
        percentiles(&mut ms)
    );
    check_and_stop(&mut c, &log).await
}

/// One measured run of one bench configuration, on a fresh cluster in `dir`.
async fn bench_once(
    a: &BenchArgs,
    dir: &std::path::Path,
    bin: &std::path::Path,
    (n, replicas): (usize, usize),
    size: usize,
    run: u32,
    shard_extra: &[&str],
) -> anyhow::Result<bench::BenchRow> {
    let mut c = if replicas > 1 {
        cluster::Cluster::start_replicated(dir, bin, (n, shard_extra), replicas, &[]).await?
    } else {
        cluster::Cluster::start_with(dir, bin, n, &[], shard_extra).await?
    };
    c.start_player(&[]).await?;
    let log = client::Log::connect(&c.logstore_addrs()).await?;
    // Warm up (connections, page cache), then measure from clean histograms.
    let mut warm = load_spec(&a.load, size);
    warm.duration = Duration::from_secs(2);
    let idle = floor::probe(dir).await;
    // The floor under load is probed during the warm-up, at the run's rate, so that the
    // probe's own fsyncs and pings do not land in the measured window.
    let loaded = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        floor::probe(dir).await
    };
    let (_, loaded) = tokio::join!(bench::drive(&log, &warm, None), loaded);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reading with reset discards the warm-up samples.
    let mut warmup = bench::Delays::default();
    for s in &c.shards {
        warmup.collect(s.addr()).await?;
    }
    let spec = load_spec(&a.load, size);
    let pids = c.component_pids();
    let usage = || pids.clone().map(|p| floor::Usage::of_all(&p));
    let before = usage();
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
    let after = usage();
    let cost = |i: usize| {
        floor::Cost::of(
            after[i].since(before[i]),
            load.appended,
            load.appended_bytes,
        )
    };
    let costs = bench::Costs {
        logstore: cost(0),
        shards: cost(1),
        player: cost(2),
    };
    let peak = c.players[0].peak_rss_mib().unwrap_or(0.0);
    let check =
        crate::harness::check::check(&log, &c.shard_map(), Duration::from_secs(120)).await?;
    let mut delays = bench::Delays::default();
    for s in &c.shards {
        delays.collect(s.addr()).await?;
    }
    let row = bench::BenchRow::from(
        (n, replicas),
        &spec,
        run,
        &load,
        &delays,
        peak,
        a.stall_seconds,
    )
    .with_floor(&bench::Floors { idle, loaded }, &costs);
    eprintln!("{}", row.summary());
    c.stop().await;
    if !check.pass {
        bail!("exactly-once check failed during the bench:\n{check}");
    }
    Ok(row)
}

/// The load a set of flags asks for.
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

pub async fn run_bench(a: BenchArgs, tls: &super::TlsArgs) -> anyhow::Result<()> {
    let _certs = local_security(tls)?;
    let tmp = tempfile::Builder::new()
        .prefix("logplayer-bench-")
        .tempdir()?;
    let root = a.data.clone().unwrap_or_else(|| tmp.path().to_owned());
    let bin = cluster::binary();
    let mut rows = Vec::new();
    let mut shard_extra = vec!["--store", crate::shard::any::name(a.shard_store)];
    if a.shard_no_fsync {
        shard_extra.push("--no-fsync");
    }
    let shard_extra = &shard_extra[..];
    // Its servers run with the default limit: refused before any starts.
    for &size in &a.sizes {
        load_spec(&a.load, size)
            .fits(
                crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
                "the LogStore bench starts",
                "--sizes",
            )
            .map_err(anyhow::Error::msg)?;
    }
    if a.stall_seconds > 0 && a.stall_seconds + 1 >= a.load.seconds {
        bail!(
            "--stall-seconds ({}) must end before the run does (--seconds {})",
            a.stall_seconds,
            a.load.seconds
        );
    }
    println!("{}", bench::BenchRow::csv_header());
    for (&n, &replicas) in a
        .shards
        .iter()
        .flat_map(|n| a.logstore_replicas.iter().map(move |r| (n, r)))
    {
        for &size in &a.sizes {
            let mut runs = Vec::new();
            for run in 1..=a.runs {
                let dir = root.join(format!("s{n}-l{replicas}-b{size}-r{}-{run}", a.load.rate));
                std::fs::create_dir_all(&dir)?;
                let row = bench_once(&a, &dir, &bin, (n, replicas), size, run, shard_extra).await?;
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
    if let Some(max) = a.max_shard_write_amp {
        check_write_amp(&rows, max)?;
    }
    Ok(())
}

/// `--max-shard-write-amp`: every run (not the medians) within the bound.
fn check_write_amp(rows: &[bench::BenchRow], max: f64) -> anyhow::Result<()> {
    let over: Vec<String> = rows
        .iter()
        .filter(|r| r.run != "median" && (r.shards_write_amp.is_nan() || r.shards_write_amp > max))
        .map(|r| {
            format!(
                "{} shards x {} B, run {}: {:.2}",
                r.shards, r.txn_bytes, r.run, r.shards_write_amp
            )
        })
        .collect();
    if !over.is_empty() {
        bail!(
            "shard write amplification above --max-shard-write-amp {max}: {}",
            over.join("; ")
        );
    }
    println!("shard write amplification within {max} in every run");
    Ok(())
}
