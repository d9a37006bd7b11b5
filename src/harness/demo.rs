//! `logplayer demo`: the whole system on one machine. Starts a LogStore (three log replicas
//! by default), shards and three player replicas behind a file lease as child processes,
//! drives multi-shard `add`/`append` transactions, and mid-run SIGKILLs and restarts shards,
//! SIGKILLs the leader, freezes the next leader (SIGSTOP past its lease, then SIGCONT so it
//! wakes stale and is fenced), kills a shard and the leader at once, SIGKILLs the log leader
//! and freezes a log follower (that schedule `rounds` times over the run). It prints each
//! failover's duration and epochs, checks every shard against the state the log implies, and
//! ends with `exactly-once: PASS` or `FAIL`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientError, Log, ShardConn};
use crate::harness::bench::{Delays, LoadReport, LoadSpec, drive_holding, ms};
use crate::harness::check::{Report, check};
use crate::harness::cluster::{Cluster, ClusterError};
use crate::harness::failover::{
    Failover, FailoverError, Takedown, take_down_leader, wait_for_leader,
};

/// Player replicas the demo runs.
const REPLICAS: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Fault {
    Shard,
    KillLeader,
    StopLeader,
    ShardAndLeader,
    /// SIGKILL the log leader (replicated log only).
    KillLogLeader,
    /// SIGSTOP a log follower for a few seconds (replicated log only).
    FreezeLogFollower,
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub data: Option<PathBuf>,
    pub shards: usize,
    pub rate: u64,
    pub seconds: u64,
    pub txn_bytes: usize,
    pub keys_per_txn: usize,
    /// 1: the single-node LogStore; more: a Raft group of that many log replicas.
    pub logstore_replicas: usize,
    /// Times the fault schedule runs, spread evenly over `seconds` (at least 1).
    pub rounds: usize,
}

/// Errors that stop the demo before it can judge.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Check(#[from] crate::harness::check::CheckError),
    #[error(transparent)]
    Failover(#[from] FailoverError),
    #[error("creating the data directory: {0}")]
    Dir(std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// The fault schedule, as fractions of a round (the log faults only with log replicas); a
/// run is `rounds` of them.
const SCHEDULE: [(f64, Fault); 7] = [
    (0.1, Fault::Shard),
    (0.22, Fault::KillLeader),
    (0.35, Fault::KillLogLeader),
    (0.48, Fault::StopLeader),
    (0.62, Fault::FreezeLogFollower),
    (0.75, Fault::ShardAndLeader),
    (0.88, Fault::Shard),
];

/// How long the demo waits for the shards to refuse a woken stale leader.
const WOKEN_WATCH: Duration = Duration::from_secs(10);

/// What the run has done so far.
struct Run {
    cluster: Cluster,
    delays: Delays,
    faults: Vec<String>,
    failovers: Vec<Failover>,
    /// Log leader failovers: SIGKILL to the first acknowledged append after it, in ms.
    log_failovers: Vec<f64>,
    /// Appends acknowledged so far (the load's progress).
    appended: Arc<AtomicU64>,
    /// What the shards counted in the seconds after each frozen leader woke. Read then, not
    /// at the end: a shard restarted by a later fault starts its counters again.
    woken: Vec<Fencing>,
}

/// Where the demo keeps its data: `--data`, or a temporary directory removed at the end.
fn data_dir(cfg: &DemoConfig) -> Result<(PathBuf, Option<tempfile::TempDir>), DemoError> {
    match &cfg.data {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(DemoError::Dir)?;
            Ok((d.clone(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("logplayer-demo-")
                .tempdir()
                .map_err(DemoError::Dir)?;
            Ok((tmp.path().to_owned(), Some(tmp)))
        }
    }
}

/// What the shards say about fencing, summed over all of them.
#[derive(Debug, Default, Clone, Copy)]
struct Fencing {
    /// Streams and batches refused because their epoch was below the highest seen.
    refusals: u64,
    /// Commits under an epoch below one that had already committed (must stay 0).
    stale_commits: u64,
}

/// The demo's load.
fn load_spec(cfg: &DemoConfig) -> LoadSpec {
    LoadSpec {
        rate: cfg.rate,
        duration: Duration::from_secs(cfg.seconds),
        count: 0,
        concurrency: 64,
        keys_per_txn: cfg.keys_per_txn,
        key_space: 2000,
        txn_bytes: cfg.txn_bytes,
        seed: 42,
    }
}

/// Lets the load stop past its duration when dropped (see [`drive_holding`]).
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Runs the demo; returns whether exactly-once held.
pub async fn run(cfg: DemoConfig) -> Result<bool, DemoError> {
    let spec = load_spec(&cfg);
    // Its servers run with the default limit: refused before any starts (every append
    // failed, and the check passed on an empty log).
    spec.fits(
        crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
        "the LogStore the demo starts",
        "--txn-bytes",
    )
    .map_err(DemoError::Config)?;
    let (dir, _tmp) = data_dir(&cfg)?;
    println!("LogPlayer demo: data and logs in {}", dir.display());
    let bin = crate::harness::cluster::binary();
    let replicated = cfg.logstore_replicas > 1;
    let mut cluster = if replicated {
        Cluster::start_replicated(&dir, &bin, (cfg.shards, &[]), cfg.logstore_replicas, &[]).await?
    } else {
        Cluster::start(&dir, &bin, cfg.shards).await?
    };
    // The replicas keep delivering after losing the lease, as a leader paused between its
    // lease check and its send would: the frozen leader below is stopped by the shards'
    // fencing alone, and the summary counts the refusals.
    cluster
        .start_replicas(REPLICAS, &["--fault-keep-leading"])
        .await?;
    let (first_leader, first_epoch) = wait_for_leader(&cluster, Duration::from_secs(30)).await?;
    println!(
        "started LogStore at {} ({}), {} shards, {REPLICAS} player replicas (player-{first_leader} leads, epoch {first_epoch}); {} s of {} txn/s, {} keys x {} B each",
        cluster.logstore_addrs(),
        if replicated {
            format!("{} log replicas, Raft", cfg.logstore_replicas)
        } else {
            "single node".to_string()
        },
        cfg.shards,
        cfg.seconds,
        cfg.rate,
        cfg.keys_per_txn,
        cfg.txn_bytes / cfg.keys_per_txn.max(1)
    );
    let log = Log::connect(&cluster.logstore_addrs()).await?;
    let log_id = log.describe().await?.log_id;
    println!("log id {log_id}");
    let appended = Arc::new(AtomicU64::new(0));
    // The load outlasts `seconds` until the schedule's last fault is in: a fault that runs
    // late (each takeover waits out a lease) must still find entries for its new leader to
    // deliver. Released on every way out of this function, errors included.
    let hold = Release(Arc::new(AtomicBool::new(true)));
    let load = {
        let (log, spec, appended) = (log.clone(), spec.clone(), appended.clone());
        let hold = hold.0.clone();
        tokio::spawn(async move { drive_holding(&log, &spec, Some(appended), &hold).await })
    };
    let mut run = Run {
        cluster,
        delays: Delays::default(),
        faults: Vec::new(),
        failovers: Vec::new(),
        log_failovers: Vec::new(),
        appended: appended.clone(),
        woken: Vec::new(),
    };
    run.follow_schedule(&cfg, replicated, &load, &hold.0)
        .await?;
    let report = load.await.ok();
    println!("load done; waiting for every shard to catch up and checking...");
    let result = check(&log, &run.cluster.shard_map(), Duration::from_secs(60)).await?;
    let fencing = run.collect_stats().await;
    run.print_summary(&result, report.as_ref(), first_epoch, &log_id, fencing);
    run.stop().await;
    // Each says what did not hold, so all are asked.
    let (fenced, loaded) = (run.fencing_held(fencing), appended_any(report.as_ref()));
    let pass = result.pass && fenced && loaded;
    println!("exactly-once: {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

impl Run {
    /// Whether every failover raised the epoch and every frozen leader was fenced once it
    /// woke (refused, and nothing committed under its stale epoch); says what did not hold.
    fn fencing_held(&self, fencing: Fencing) -> bool {
        let epochs_increase = self.failovers.iter().all(|f| f.new_epoch > f.old_epoch);
        let froze = self.failovers.iter().any(|f| f.takedown == Takedown::Stop);
        let woken = &self.woken;
        // Each watch counted its own stale commits; the shards' own counters (since their last
        // restart) may hold more.
        let stale_commits = woken
            .iter()
            .map(|w| w.stale_commits)
            .sum::<u64>()
            .max(fencing.stale_commits);
        let fenced = !froze || (woken.iter().all(|w| w.refusals > 0) && stale_commits == 0);
        if !epochs_increase {
            println!("an epoch did not increase across a failover");
        }
        if !fenced {
            let refusals: Vec<String> = woken.iter().map(|w| w.refusals.to_string()).collect();
            println!(
                "a frozen leader was not fenced: refusals after each woke {}, {stale_commits} commits under a stale epoch",
                refusals.join(", ")
            );
        }
        epochs_increase && fenced
    }
}

/// Whether the load appended anything: a check of an empty log passes and proves nothing.
fn appended_any(report: Option<&LoadReport>) -> bool {
    let loaded = report.is_some_and(|r| r.appended > 0);
    if !loaded {
        println!("no append was acknowledged: there was nothing to check");
    }
    loaded
}

/// One line of progress: appended entries, the leader and each shard's applied index.
async fn print_progress(cluster: &Cluster, appended: u64, t: f64) {
    let mut applied = Vec::new();
    for s in &cluster.shards {
        let a = match ShardConn::connect(s.addr(), None).await {
            Ok(c) => c
                .applied()
                .await
                .map(|a| a.applied_index.to_string())
                .unwrap_or("down".into()),
            Err(_) => "down".into(),
        };
        applied.push(a);
    }
    let leader = cluster
        .leader()
        .map(|(i, e)| format!("player-{i} epoch {e}"))
        .unwrap_or("none".into());
    println!(
        "  t={t:>4.1}s appended {appended:>7}  leader {leader}  shard applied [{}]",
        applied.join(", ")
    );
}

impl Run {
    /// Injects the schedule's faults while the load runs, printing progress each second;
    /// releases `hold` (the load past its duration) once the last fault is in.
    async fn follow_schedule<T>(
        &mut self,
        cfg: &DemoConfig,
        replicated: bool,
        load: &tokio::task::JoinHandle<T>,
        hold: &AtomicBool,
    ) -> Result<(), DemoError> {
        let started = Instant::now();
        let rounds = cfg.rounds.max(1);
        let total = SCHEDULE.len() * rounds;
        // The k-th fault: round k / len, at its fraction of that round.
        let due = |k: usize| {
            let (round, (frac, fault)) = (k / SCHEDULE.len(), SCHEDULE[k % SCHEDULE.len()]);
            (
                (round as f64 + frac) / rounds as f64 * cfg.seconds as f64,
                fault,
            )
        };
        let mut next = 0;
        let mut last_print = Instant::now();
        while !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = started.elapsed().as_secs_f64();
            if next < total && t >= due(next).0 {
                let fault = due(next).1;
                let log_fault = matches!(fault, Fault::KillLogLeader | Fault::FreezeLogFollower);
                if replicated || !log_fault {
                    self.inject(fault, next % cfg.shards.max(1), t).await?;
                }
                next += 1;
                if next == total {
                    hold.store(false, Ordering::Relaxed);
                    if t > cfg.seconds as f64 {
                        println!(
                            "  t={t:.1}s last fault in; the load, held past {}s for it, ends",
                            cfg.seconds
                        );
                    }
                }
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                print_progress(&self.cluster, self.appended.load(Ordering::Relaxed), t).await;
            }
        }
        Ok(())
    }

    /// Injects one fault at `t` seconds into the run.
    async fn inject(&mut self, fault: Fault, shard: usize, t: f64) -> Result<(), DemoError> {
        let hit_shard = matches!(fault, Fault::Shard | Fault::ShardAndLeader);
        if hit_shard {
            let _ = self.delays.collect(self.cluster.shards[shard].addr()).await;
            self.cluster.shards[shard].kill().await;
        }
        let takedown = match fault {
            Fault::KillLeader | Fault::ShardAndLeader => Some(Takedown::Kill),
            Fault::StopLeader => Some(Takedown::Stop),
            Fault::Shard => None,
            Fault::KillLogLeader => return self.kill_log_leader(t).await,
            Fault::FreezeLogFollower => return self.freeze_log_follower(t).await,
        };
        if hit_shard && takedown.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if hit_shard {
            self.cluster.shards[shard].restart().await?;
            let what = format!("t={t:.1}s SIGKILL + restart shard s{shard}");
            println!("  fault: {what}");
            self.faults.push(what);
        }
        if let Some(how) = takedown {
            self.take_down_leader(how, t).await?;
        }
        Ok(())
    }

    /// SIGKILLs the log leader and times the failover: until the load's next acknowledged
    /// append (the new leader took over, and the writers' streams followed it).
    async fn kill_log_leader(&mut self, t: f64) -> Result<(), DemoError> {
        let Some(l) = self.cluster.log_leader().await else {
            println!("  fault: t={t:.1}s no log leader to kill");
            return Ok(());
        };
        let name = self.cluster.log_replicas()[l].name.clone();
        self.cluster.log_replicas()[l].kill().await;
        let killed = Instant::now();
        let before = self.appended.load(Ordering::Relaxed);
        let mut ms = None;
        while killed.elapsed() < Duration::from_secs(30) {
            if self.appended.load(Ordering::Relaxed) > before {
                ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.cluster.log_replicas()[l].restart().await?;
        let what = match ms {
            Some(ms) => {
                self.log_failovers.push(ms);
                format!(
                    "t={t:.1}s SIGKILL log leader {name}: first acknowledged append after {ms:.0} ms; restarted it as a follower"
                )
            }
            None => {
                format!("t={t:.1}s SIGKILL log leader {name}: no append acknowledged within 30 s")
            }
        };
        println!("  fault: {what}");
        self.faults.push(what);
        Ok(())
    }

    /// Freezes a log follower (SIGSTOP) past several election timeouts, then wakes it.
    async fn freeze_log_follower(&mut self, t: f64) -> Result<(), DemoError> {
        let n = self.cluster.log_replicas().len();
        let leader = self.cluster.log_leader().await.unwrap_or(0);
        let f = (leader + 1) % n;
        let name = self.cluster.log_replicas()[f].name.clone();
        self.cluster.log_replicas()[f].stop()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.cluster.log_replicas()[f].cont()?;
        let what = format!("t={t:.1}s SIGSTOP log follower {name} for 2 s, then SIGCONT");
        println!("  fault: {what}");
        self.faults.push(what);
        Ok(())
    }

    async fn take_down_leader(&mut self, how: Takedown, t: f64) -> Result<(), DemoError> {
        let f = take_down_leader(&mut self.cluster, how, Duration::from_secs(30)).await?;
        let what = format!(
            "t={t:.1}s {how} leader player-{} (epoch {}): new leader's first delivery after {:.0} ms, epoch {}",
            f.old_leader, f.old_epoch, f.millis, f.new_epoch
        );
        if how == Takedown::Stop {
            // Let it sleep past its lease, then wake it: it must be fenced.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let before = self.fencing_now().await;
            self.cluster.players[f.old_leader].cont()?;
            let woke = Instant::now();
            let woken = self.watch_woken(before).await;
            self.woken.push(woken);
            println!(
                "  fault: {what}; SIGCONT player-{} (now stale): the shards refused {} of its requests in the {:.1} s after",
                f.old_leader,
                woken.refusals,
                woke.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "  fault: {what}; restarted player-{} as standby",
                f.old_leader
            );
        }
        self.faults.push(what);
        self.failovers.push(f);
        Ok(())
    }

    /// What the shards up now have counted about fencing, summed.
    async fn fencing_now(&self) -> Fencing {
        let mut f = Fencing::default();
        for s in &self.cluster.shards {
            if let Ok(c) = ShardConn::connect(s.addr(), None).await
                && let Ok(st) = c.stats(false).await
            {
                f.refusals += st.fenced_refusals;
                f.stale_commits += st.stale_epoch_commits;
            }
        }
        f
    }

    /// Watches the shards after the frozen leader woke: until they refused it (up to
    /// [`WOKEN_WATCH`]), then a little longer for any commit it got through. Returns what
    /// they counted since `before`.
    async fn watch_woken(&self, before: Fencing) -> Fencing {
        let since = |now: Fencing| Fencing {
            refusals: now.refusals.saturating_sub(before.refusals),
            stale_commits: now.stale_commits.saturating_sub(before.stale_commits),
        };
        let woke = Instant::now();
        while woke.elapsed() < WOKEN_WATCH && since(self.fencing_now().await).refusals == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        since(self.fencing_now().await)
    }

    /// Gathers every shard's delays; returns the fencing evidence.
    async fn collect_stats(&mut self) -> Fencing {
        for s in &self.cluster.shards {
            let _ = self.delays.collect(s.addr()).await;
        }
        self.fencing_now().await
    }

    fn print_summary(
        &self,
        result: &Report,
        load: Option<&LoadReport>,
        first_epoch: u64,
        log_id: &str,
        fencing: Fencing,
    ) {
        let d = &self.delays;
        println!();
        println!("log id            {log_id}");
        println!("entries           {}", result.entries);
        if let Some(r) = load {
            println!(
                "throughput        {:.0} txn/s appended durably ({} failed appends)",
                r.rate, r.failed
            );
        }
        println!(
            "LogPlayer delay   p50 {:.3} ms  p99 {:.3} ms   (dispatch -> shard receive)",
            ms(&d.player, 0.5),
            ms(&d.player, 0.99)
        );
        println!(
            "apply delay       p50 {:.3} ms  p99 {:.3} ms   (append start -> shard receive)",
            ms(&d.apply, 0.5),
            ms(&d.apply, 0.99)
        );
        println!(
            "durable apply     p50 {:.3} ms  p99 {:.3} ms   (append start -> durable at shard)",
            ms(&d.durable, 0.5),
            ms(&d.durable, 0.99)
        );
        if !self.failovers.is_empty() {
            let mut ms: Vec<f64> = self.failovers.iter().map(|f| f.millis).collect();
            ms.sort_by(f64::total_cmp);
            let ms: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
            let epochs: Vec<String> = std::iter::once(first_epoch)
                .chain(self.failovers.iter().map(|f| f.new_epoch))
                .map(|e| e.to_string())
                .collect();
            println!(
                "failovers         {}  (takeover {} ms; epochs {})",
                self.failovers.len(),
                ms.join(", "),
                epochs.join(" -> ")
            );
        }
        let stopped = self
            .failovers
            .iter()
            .filter(|f| f.takedown == Takedown::Stop);
        for (f, woken) in stopped.zip(&self.woken) {
            println!(
                "fenced            the frozen leader player-{} (epoch {}) woke stale: the shards refused {} of its requests after it woke, and committed {} entries under a stale epoch",
                f.old_leader, f.old_epoch, woken.refusals, woken.stale_commits
            );
        }
        if !self.woken.is_empty() {
            println!(
                "                  (the shards counted {} refusals and {} stale commits at the end, since their last restart)",
                fencing.refusals, fencing.stale_commits
            );
        }
        if !self.failovers.iter().any(|f| f.takedown == Takedown::Stop) {
            println!(
                "fenced            {} stale-leader requests refused by the shards",
                fencing.refusals
            );
        }
        if !self.log_failovers.is_empty() {
            let ms: Vec<String> = self
                .log_failovers
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect();
            println!(
                "log failovers     {}  (SIGKILL of the log leader -> next acknowledged append: {} ms)",
                self.log_failovers.len(),
                ms.join(", ")
            );
        }
        println!("faults injected   {}", self.faults.len());
        for f in &self.faults {
            println!("  {f}");
        }
        print!("{result}");
    }

    async fn stop(&mut self) {
        self.cluster.stop().await;
    }
}
