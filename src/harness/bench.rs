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
use crate::harness::workload::Workload;
use crate::model::now_micros;
use crate::shard::stats;

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

/// Append streams one driver keeps open (appends are pipelined on each).
pub const STREAMS: usize = 4;

/// What each stream's response reader needs to account for one request.
type InFlight = (u64, tokio::sync::OwnedSemaphorePermit);

/// What the response readers of one drive count, shared with the sender.
#[derive(Clone)]
struct Tally {
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    failed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    progress: Option<Arc<AtomicU64>>,
}

/// One open append stream: where requests go, and the FIFO its reader matches answers to.
type Stream = (
    tokio::sync::mpsc::Sender<crate::proto::AppendRequest>,
    tokio::sync::mpsc::UnboundedSender<InFlight>,
);

/// Reads one stream's answers in order, timing each against its FIFO entry; whatever is
/// still in flight when the stream breaks was not acknowledged and counts as failed.
async fn read_answers(
    mut responses: tonic::Streaming<crate::proto::AppendResponse>,
    mut fifo: tokio::sync::mpsc::UnboundedReceiver<InFlight>,
    tally: Tally,
) {
    loop {
        match responses.message().await {
            Ok(Some(_)) => {
                let Some((t0, permit)) = fifo.recv().await else {
                    return;
                };
                let dt = now_micros().saturating_sub(t0).max(1);
                if let Ok(mut h) = tally.hist.lock() {
                    h.saturating_record(dt);
                }
                tally.done.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &tally.progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            }
            Ok(None) => break,
            Err(status) => {
                tracing::warn!(%status, "append stream failed");
                break;
            }
        }
    }
    fifo.close();
    while let Some(_unanswered) = fifo.recv().await {
        tally.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens up to [`STREAMS`] append streams, each with its reader in `readers`.
async fn open_streams(
    log: &Log,
    limit: usize,
    tally: &Tally,
    readers: &mut tokio::task::JoinSet<()>,
) -> Vec<Stream> {
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(limit);
        let (fifo_tx, fifo_rx) = tokio::sync::mpsc::unbounded_channel::<InFlight>();
        match log.append_stream(req_rx).await {
            Ok(responses) => {
                streams.push((req_tx, fifo_tx));
                readers.spawn(read_answers(responses, fifo_rx, tally.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "could not open an append stream"),
        }
    }
    streams
}

/// Appends per `spec` over [`STREAMS`] pipelined append streams; `progress` (if any) is
/// bumped per durable append.
pub async fn drive(log: &Log, spec: &LoadSpec, progress: Option<Arc<AtomicU64>>) -> LoadReport {
    let mut workload = Workload::new(spec.keys_per_txn, spec.key_space, spec.txn_bytes, spec.seed);
    let limit = if spec.rate == 0 {
        spec.concurrency.max(1)
    } else {
        MAX_IN_FLIGHT
    };
    let sem = Arc::new(Semaphore::new(limit));
    let tally = Tally {
        hist: Arc::new(std::sync::Mutex::new(stats::empty())),
        failed: Arc::default(),
        done: Arc::default(),
        progress,
    };
    let mut readers = tokio::task::JoinSet::new();
    let mut streams = open_streams(log, limit, &tally, &mut readers).await;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_stream = 0usize;
    while !streams.is_empty() {
        let elapsed = start.elapsed();
        if elapsed >= spec.duration || (spec.count > 0 && sent >= spec.count) {
            break;
        }
        if spec.rate > 0 {
            let due = (elapsed.as_secs_f64() * spec.rate as f64) as u64;
            if sent >= due {
                let ahead = (sent + 1) as f64 / spec.rate as f64 - elapsed.as_secs_f64();
                tokio::time::sleep(Duration::from_secs_f64(ahead.clamp(0.0001, 0.01))).await;
                continue;
            }
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        sent += 1;
        let i = next_stream % streams.len();
        next_stream += 1;
        let t0 = now_micros();
        let (req_tx, fifo_tx) = &streams[i];
        let request = crate::proto::AppendRequest {
            mutations: workload.next_txn(),
            append_start_micros: t0,
            ..Default::default()
        };
        // The FIFO entry goes first so the reader always finds it. If the stream broke, the
        // reader counts what it never answered (this one included) as failed.
        if fifo_tx.send((t0, permit)).is_err() {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            streams.swap_remove(i);
        } else if req_tx.send(request).await.is_err() {
            streams.swap_remove(i);
        }
    }
    drop(streams); // ends the request streams; the readers finish with the last responses
    while readers.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let h = tally
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| stats::empty());
    let appended = tally.done.load(Ordering::Relaxed);
    LoadReport {
        appended,
        failed: tally.failed.load(Ordering::Relaxed),
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
    /// Run number from 1, or "median" for the median of the runs of one configuration.
    pub run: String,
    pub achieved_rate: f64,
    pub transactions: u64,
    pub player_p50_ms: f64,
    pub player_p99_ms: f64,
    pub apply_p50_ms: f64,
    pub apply_p99_ms: f64,
    pub durable_p50_ms: f64,
    pub durable_p99_ms: f64,
    /// Durable append latency seen by the load generator.
    pub append_p50_ms: f64,
    pub append_p99_ms: f64,
    /// The player's peak resident memory (Linux VmHWM).
    pub player_peak_rss_mib: f64,
    /// Seconds shard s0 was frozen during the run.
    pub stall_seconds: u64,
    pub samples: u64,
}

/// Median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

impl BenchRow {
    pub fn csv_header() -> &'static str {
        "shards,txn_bytes,target_rate,run,achieved_rate,transactions,player_p50_ms,player_p99_ms,apply_p50_ms,apply_p99_ms,durable_p50_ms,durable_p99_ms,append_p50_ms,append_p99_ms,player_peak_rss_mib,stall_seconds,samples"
    }
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{:.0},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{},{}",
            self.shards,
            self.txn_bytes,
            self.target_rate,
            self.run,
            self.achieved_rate,
            self.transactions,
            self.player_p50_ms,
            self.player_p99_ms,
            self.apply_p50_ms,
            self.apply_p99_ms,
            self.durable_p50_ms,
            self.durable_p99_ms,
            self.append_p50_ms,
            self.append_p99_ms,
            self.player_peak_rss_mib,
            self.stall_seconds,
            self.samples
        )
    }
    #[allow(clippy::too_many_arguments)]
    pub fn from(
        shards: usize,
        spec: &LoadSpec,
        run: u32,
        load: &LoadReport,
        d: &Delays,
        player_peak_rss_mib: f64,
        stall_seconds: u64,
    ) -> BenchRow {
        BenchRow {
            shards,
            txn_bytes: spec.txn_bytes,
            target_rate: spec.rate,
            run: run.to_string(),
            achieved_rate: load.rate,
            transactions: load.appended,
            player_p50_ms: ms(&d.player, 0.5),
            player_p99_ms: ms(&d.player, 0.99),
            apply_p50_ms: ms(&d.apply, 0.5),
            apply_p99_ms: ms(&d.apply, 0.99),
            durable_p50_ms: ms(&d.durable, 0.5),
            durable_p99_ms: ms(&d.durable, 0.99),
            append_p50_ms: load.append_p50_us as f64 / 1000.0,
            append_p99_ms: load.append_p99_us as f64 / 1000.0,
            player_peak_rss_mib,
            stall_seconds,
            samples: d.player.len(),
        }
    }

    /// The per-column median of several runs of one configuration.
    pub fn median_of(runs: &[BenchRow]) -> Option<BenchRow> {
        let first = runs.first()?;
        let m = |f: fn(&BenchRow) -> f64| median(runs.iter().map(f).collect());
        Some(BenchRow {
            run: "median".into(),
            achieved_rate: m(|r| r.achieved_rate),
            transactions: m(|r| r.transactions as f64) as u64,
            player_p50_ms: m(|r| r.player_p50_ms),
            player_p99_ms: m(|r| r.player_p99_ms),
            apply_p50_ms: m(|r| r.apply_p50_ms),
            apply_p99_ms: m(|r| r.apply_p99_ms),
            durable_p50_ms: m(|r| r.durable_p50_ms),
            durable_p99_ms: m(|r| r.durable_p99_ms),
            append_p50_ms: m(|r| r.append_p50_ms),
            append_p99_ms: m(|r| r.append_p99_ms),
            player_peak_rss_mib: m(|r| r.player_peak_rss_mib),
            samples: m(|r| r.samples as f64) as u64,
            ..first.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
