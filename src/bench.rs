//! The load driver (`logplayer load`) and the benchmark (`logplayer bench`).
//!
//! `drive` appends transactions at a fixed rate (open loop: a slow server does not slow the
//! schedule, it builds a backlog that shows in the delays) or, with rate 0, as fast as a
//! fixed number of concurrent appenders can (closed loop: the highest sustained rate).
//! `bench` starts a LogStore, N shards and a player as child processes, drives load, and
//! reads the three delay histograms from the shards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{ClientError, Log, ShardConn};
use crate::model::now_micros;
use crate::shard::stats;
use crate::workload::Workload;

/// Most appends in flight from one driver (bounds memory when the server falls behind).
pub const MAX_IN_FLIGHT: usize = 4096;

/// How to drive load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Transactions per second; 0 = as fast as `concurrency` appenders can go.
    pub rate: u64,
    pub duration: Duration,
    /// Stop after this many transactions (0 = no limit).
    pub count: u64,
    pub concurrency: usize,
    pub keys_per_txn: usize,
    pub key_space: usize,
    pub txn_bytes: usize,
    pub seed: u64,
}

/// What a drive did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub appended: u64,
    pub failed: u64,
    pub seconds: f64,
    pub rate: f64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
}

/// Appends per `spec`; `progress` (if any) is bumped per durable append.
pub async fn drive(log: &Log, spec: &LoadSpec, progress: Option<Arc<AtomicU64>>) -> LoadReport {
    let mut workload = Workload::new(spec.keys_per_txn, spec.key_space, spec.txn_bytes, spec.seed);
    let limit = if spec.rate == 0 {
        spec.concurrency.max(1)
    } else {
        MAX_IN_FLIGHT
    };
    let sem = Arc::new(Semaphore::new(limit));
    let hist = Arc::new(std::sync::Mutex::new(stats::empty()));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= spec.duration || (spec.count > 0 && sent >= spec.count) {
            break;
        }
        if spec.rate > 0 {
            let due = (elapsed.as_secs_f64() * spec.rate as f64) as u64;
            if sent >= due {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let txn = workload.next_txn();
        sent += 1;
        let (log, hist, failed, done, progress) = (
            log.clone(),
            hist.clone(),
            failed.clone(),
            done.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let t0 = now_micros();
            match log.append(txn, None, t0).await {
                Ok(_) => {
                    let dt = now_micros().saturating_sub(t0).max(1);
                    if let Ok(mut h) = hist.lock() {
                        h.saturating_record(dt);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = progress {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "append failed");
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| stats::empty());
    let appended = done.load(Ordering::Relaxed);
    LoadReport {
        appended,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        rate: appended as f64 / seconds.max(1e-9),
        append_p50_us: h.value_at_quantile(0.5),
        append_p99_us: h.value_at_quantile(0.99),
    }
}

/// The three delay histograms merged over shards.
#[derive(Clone)]
pub struct Delays {
    pub player: Histogram<u64>,
    pub apply: Histogram<u64>,
    pub durable: Histogram<u64>,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            player: stats::empty(),
            apply: stats::empty(),
            durable: stats::empty(),
        }
    }
}

impl Delays {
    /// Reads (and resets) a shard's histograms into these.
    pub async fn collect(&mut self, addr: &str) -> Result<(), ClientError> {
        let s = ShardConn::connect(addr).await?.stats(true).await?;
        stats::merge(&mut self.player, &stats::decode_histogram(&s.player_delay));
        stats::merge(&mut self.apply, &stats::decode_histogram(&s.apply_delay));
        stats::merge(
            &mut self.durable,
            &stats::decode_histogram(&s.durable_apply_delay),
        );
        Ok(())
    }
}

/// Milliseconds of a microsecond quantile.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One row of bench output.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub shards: usize,
    pub txn_bytes: usize,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub transactions: u64,
    pub player_p50_ms: f64,
    pub player_p99_ms: f64,
    pub apply_p50_ms: f64,
    pub apply_p99_ms: f64,
    pub durable_p50_ms: f64,
    pub durable_p99_ms: f64,
    pub samples: u64,
}

impl BenchRow {
    pub fn csv_header() -> &'static str {
        "shards,txn_bytes,target_rate,achieved_rate,transactions,player_p50_ms,player_p99_ms,apply_p50_ms,apply_p99_ms,durable_p50_ms,durable_p99_ms,samples"
    }
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{:.0},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            self.shards,
            self.txn_bytes,
            self.target_rate,
            self.achieved_rate,
            self.transactions,
            self.player_p50_ms,
            self.player_p99_ms,
            self.apply_p50_ms,
            self.apply_p99_ms,
            self.durable_p50_ms,
            self.durable_p99_ms,
            self.samples
        )
    }
    pub fn from(shards: usize, spec: &LoadSpec, load: &LoadReport, d: &Delays) -> BenchRow {
        BenchRow {
            shards,
            txn_bytes: spec.txn_bytes,
            target_rate: spec.rate,
            achieved_rate: load.rate,
            transactions: load.appended,
            player_p50_ms: ms(&d.player, 0.5),
            player_p99_ms: ms(&d.player, 0.99),
            apply_p50_ms: ms(&d.apply, 0.5),
            apply_p99_ms: ms(&d.apply, 0.99),
            durable_p50_ms: ms(&d.durable, 0.5),
            durable_p99_ms: ms(&d.durable, 0.99),
            samples: d.player.len(),
        }
    }
}
