//! `logplayer demo`: the whole system on one machine. Starts a LogStore, shards and three
//! player replicas behind a file lease as child processes, drives multi-shard `add`/`append`
//! transactions, and mid-run SIGKILLs and restarts shards, SIGKILLs the leader, freezes the
//! next leader (SIGSTOP past its lease, then SIGCONT so it wakes stale and is fenced), and
//! kills a shard and the leader at once. It prints each failover's duration and epochs,
//! checks every shard against the state the log implies, and ends with
//! `exactly-once: PASS` or `FAIL`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientError, Log, ShardConn};
use crate::harness::bench::{Delays, LoadSpec, drive, ms};
use crate::harness::check::check;
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
}

/// Runs the demo; returns whether exactly-once held.
pub async fn run(cfg: DemoConfig) -> Result<bool, DemoError> {
    let tmp;
    let dir = match &cfg.data {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(DemoError::Dir)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("logplayer-demo-")
                .tempdir()
                .map_err(DemoError::Dir)?;
            tmp.path().to_owned()
        }
    };
    println!("LogPlayer demo: data and logs in {}", dir.display());
    let bin = crate::harness::cluster::binary();
    let mut cluster = Cluster::start(&dir, &bin, cfg.shards).await?;
    cluster.start_replicas(REPLICAS, &[]).await?;
    let (first_leader, first_epoch) = wait_for_leader(&cluster, Duration::from_secs(30)).await?;
    println!(
        "started LogStore at {}, {} shards, {REPLICAS} player replicas (player-{first_leader} leads, epoch {first_epoch}); {} s of {} txn/s, {} keys x {} B each",
        cluster.logstore.addr(),
        cfg.shards,
        cfg.seconds,
        cfg.rate,
        cfg.keys_per_txn,
        cfg.txn_bytes / cfg.keys_per_txn.max(1)
    );
    let log = Log::connect(cluster.logstore.addr()).await?;
    let spec = LoadSpec {
        rate: cfg.rate,
        duration: Duration::from_secs(cfg.seconds),
        count: 0,
        concurrency: 64,
        keys_per_txn: cfg.keys_per_txn,
        key_space: 2000,
        txn_bytes: cfg.txn_bytes,
        seed: 42,
    };
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let load = {
        let (log, spec, appended) = (log.clone(), spec.clone(), appended.clone());
        tokio::spawn(async move { drive(&log, &spec, Some(appended)).await })
    };
    let mut delays = Delays::default();
    let mut faults: Vec<String> = Vec::new();
    let mut failovers: Vec<Failover> = Vec::new();
    let total = cfg.seconds as f64;
    // Fault schedule: fractions of the run.
    let schedule = [
        (0.15, Fault::Shard),
        (0.3, Fault::KillLeader),
        (0.5, Fault::StopLeader),
        (0.7, Fault::ShardAndLeader),
        (0.85, Fault::Shard),
    ];
    let mut next = 0;
    let mut last_print = Instant::now();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = started.elapsed().as_secs_f64();
        if next < schedule.len() && t >= schedule[next].0 * total {
            let fault = schedule[next].1;
            let shard = next % cfg.shards;
            let hit_shard = matches!(fault, Fault::Shard | Fault::ShardAndLeader);
            if hit_shard {
                let _ = delays.collect(cluster.shards[shard].addr()).await;
                cluster.shards[shard].kill().await;
            }
            let takedown = match fault {
                Fault::KillLeader | Fault::ShardAndLeader => Some(Takedown::Kill),
                Fault::StopLeader => Some(Takedown::Stop),
                Fault::Shard => None,
            };
            if hit_shard && takedown.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if hit_shard {
                cluster.shards[shard].restart().await?;
                faults.push(format!("t={t:.1}s SIGKILL + restart shard s{shard}"));
                println!("  fault: {}", faults[faults.len() - 1]);
            }
            if let Some(how) = takedown {
                let f = take_down_leader(&mut cluster, how, Duration::from_secs(30)).await?;
                let what = format!(
                    "t={t:.1}s {how} leader player-{} (epoch {}): new leader's first delivery after {:.0} ms, epoch {}",
                    f.old_leader, f.old_epoch, f.millis, f.new_epoch
                );
                if how == Takedown::Stop {
                    // Let it sleep past its lease, then wake it: it must be fenced.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    cluster.players[f.old_leader].cont()?;
                    println!(
                        "  fault: {what}; SIGCONT player-{} (now stale)",
                        f.old_leader
                    );
                } else {
                    println!(
                        "  fault: {what}; restarted player-{} as standby",
                        f.old_leader
                    );
                }
                faults.push(what);
                failovers.push(f);
            }
            next += 1;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let mut applied = Vec::new();
            for s in &cluster.shards {
                let a = match ShardConn::connect(s.addr()).await {
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
                "  t={:>4.1}s appended {:>7}  leader {leader}  shard applied [{}]",
                t,
                appended.load(Ordering::Relaxed),
                applied.join(", ")
            );
        }
    }
    let report = load.await.unwrap_or(crate::harness::bench::LoadReport {
        appended: 0,
        failed: 0,
        seconds: 0.0,
        rate: 0.0,
        append_p50_us: 0,
        append_p99_us: 0,
    });
    println!("load done; waiting for every shard to catch up and checking...");
    let result = check(&log, &cluster.shard_map(), Duration::from_secs(60)).await?;
    for s in &cluster.shards {
        let _ = delays.collect(s.addr()).await;
    }
    println!();
    println!("entries           {}", result.entries);
    println!(
        "throughput        {:.0} txn/s appended durably ({} failed appends)",
        report.rate, report.failed
    );
    println!(
        "LogPlayer delay   p50 {:.3} ms  p99 {:.3} ms   (dispatch -> shard receive)",
        ms(&delays.player, 0.5),
        ms(&delays.player, 0.99)
    );
    println!(
        "apply delay       p50 {:.3} ms  p99 {:.3} ms   (append start -> shard receive)",
        ms(&delays.apply, 0.5),
        ms(&delays.apply, 0.99)
    );
    println!(
        "durable apply     p50 {:.3} ms  p99 {:.3} ms   (append start -> durable at shard)",
        ms(&delays.durable, 0.5),
        ms(&delays.durable, 0.99)
    );
    let epochs_increase = failovers.iter().all(|f| f.new_epoch > f.old_epoch);
    if !failovers.is_empty() {
        let mut ms: Vec<f64> = failovers.iter().map(|f| f.millis).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "failovers         {}  (takeover {} ms; epochs {})",
            failovers.len(),
            ms.iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            std::iter::once(first_epoch)
                .chain(failovers.iter().map(|f| f.new_epoch))
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
    println!("faults injected   {}", faults.len());
    for f in &faults {
        println!("  {f}");
    }
    print!("{result}");
    for p in cluster.players.iter_mut() {
        p.terminate(Duration::from_secs(5)).await;
    }
    for s in cluster.shards.iter_mut() {
        s.terminate(Duration::from_secs(5)).await;
    }
    cluster.logstore.terminate(Duration::from_secs(5)).await;
    let pass = result.pass && epochs_increase;
    if !epochs_increase {
        println!("an epoch did not increase across a failover");
    }
    println!("exactly-once: {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}
