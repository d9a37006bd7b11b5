//! `logplayer demo`: the whole system on one machine. Starts a LogStore, shards and a
//! player as child processes, drives multi-shard `add`/`append` transactions, SIGKILLs and
//! restarts a shard, the player, and both at once mid-run, then checks every shard against
//! the state the log implies and prints a summary ending in `exactly-once: PASS` or `FAIL`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{Delays, LoadSpec, drive, ms};
use crate::check::check;
use crate::client::{ClientError, Log, ShardConn};
use crate::cluster::{Cluster, ClusterError};

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
    Check(#[from] crate::check::CheckError),
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
    let bin = crate::cluster::binary();
    let mut cluster = Cluster::start(&dir, &bin, cfg.shards).await?;
    cluster.start_player(&[]).await?;
    println!(
        "started LogStore at {}, {} shards, 1 player; {} s of {} txn/s, {} keys x {} B each",
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
    let total = cfg.seconds as f64;
    // Fault schedule: fractions of the run.
    let schedule = [
        (0.2, "shard"),
        (0.4, "player"),
        (0.6, "both"),
        (0.8, "shard"),
    ];
    let mut next = 0;
    let mut last_print = Instant::now();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = started.elapsed().as_secs_f64();
        if next < schedule.len() && t >= schedule[next].0 * total {
            let kind = schedule[next].1;
            let shard = next % cfg.shards;
            if kind == "shard" || kind == "both" {
                let _ = delays.collect(cluster.shards[shard].addr()).await;
                cluster.shards[shard].kill().await;
            }
            if kind == "player" || kind == "both" {
                cluster.players[0].kill().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if kind == "shard" || kind == "both" {
                cluster.shards[shard].restart().await?;
                faults.push(format!("t={t:.1}s SIGKILL + restart shard s{shard}"));
            }
            if kind == "player" || kind == "both" {
                cluster.players[0].restart().await?;
                faults.push(format!("t={t:.1}s SIGKILL + restart player"));
            }
            println!(
                "  fault: {}",
                faults.last().map(String::as_str).unwrap_or("")
            );
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
            println!(
                "  t={:>4.1}s appended {:>7}  shard applied [{}]",
                t,
                appended.load(Ordering::Relaxed),
                applied.join(", ")
            );
        }
    }
    let report = load.await.unwrap_or(crate::bench::LoadReport {
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
    println!(
        "exactly-once: {}",
        if result.pass { "PASS" } else { "FAIL" }
    );
    Ok(result.pass)
}
