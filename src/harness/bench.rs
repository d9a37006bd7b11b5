//! The load driver (`logplayer load`) and the benchmark (`logplayer bench`).
//!
//! `drive` appends transactions at a fixed rate (open loop: a slow server does not slow the
//! schedule, it builds a backlog that shows in the delays) or, with rate 0, as fast as a
//! fixed number of concurrent appenders can (closed loop: the highest sustained rate).
//! `bench` starts a LogStore, N shards and a player as child processes, drives load, and
//! reads the three delay histograms from the shards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{ClientError, Log, ShardConn};
use crate::harness::floor::{Cost, Probe};
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

impl LoadSpec {
    /// Refuses a load whose largest transaction a log with entry limit `limit` (0: not
    /// known, passes) would refuse — every append would fail `entry-too-large` — naming the
    /// flags that make it (`size_flag` sets the transaction size) and `whose` limit it is.
    pub fn fits(&self, limit: u64, whose: &str, size_flag: &str) -> Result<(), String> {
        let w = crate::harness::workload::Workload::new(
            self.keys_per_txn,
            self.key_space,
            self.txn_bytes,
            self.seed,
        );
        let size = w.largest_txn_bytes() as u64;
        if limit == 0 || size <= limit {
            return Ok(());
        }
        Err(format!(
            "{size_flag} {} with --keys {} makes entries of up to {size} bytes, above the \
             --max-entry-bytes {limit} of {whose}: lower {size_flag}",
            self.txn_bytes, self.keys_per_txn
        ))
    }
}

/// What a drive did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub appended: u64,
    /// The encoded size of the appended transactions' mutations (the payload).
    pub appended_bytes: u64,
    pub failed: u64,
    pub seconds: f64,
    pub rate: f64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
}

/// Append streams one driver keeps open (appends are pipelined on each).
pub const STREAMS: usize = 4;

/// What the response readers of one drive count, shared with the sender.
#[derive(Clone)]
struct Tally {
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    failed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    progress: Option<Arc<AtomicU64>>,
}

impl Tally {
    /// Counts an answered request (its delay, its bytes, the progress); dropping it frees its
    /// slot.
    fn answered(&self, u: Unanswered) {
        let dt = now_micros().saturating_sub(u.t0).max(1);
        if let Ok(mut h) = self.hist.lock() {
            h.saturating_record(dt);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        let bytes: usize = u
            .request
            .mutations
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request waiting for its answer: when it was sent, its permit, and the request itself
/// (sent again, with the same writer id and sequence, if its stream breaks).
struct Unanswered {
    t0: u64,
    /// Held until the answer comes: dropping it frees the request's slot.
    _permit: tokio::sync::OwnedSemaphorePermit,
    request: crate::proto::AppendRequest,
}

/// Whether a stream that ended with `status` should be opened again with every unanswered
/// request resent (a leader change, a replica down or frozen), or whether the request at its
/// head was refused for itself (the ones after it were not appended and go again).
fn resend_all(status: &tonic::Status) -> bool {
    use crate::grpc::Reason;
    match Reason::of(status) {
        Some(Reason::NotLeader | Reason::Unavailable | Reason::NotDurable) => true,
        Some(_) => false,
        None => !matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::ResourceExhausted
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists
        ),
    }
}

/// How long a stream worker tries to open a stream (through elections and restarts of the
/// replica it reaches) before it gives up.
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// Opens an append stream, trying again (a replica that was just killed or restarts
/// refuses the connection while the others elect) for up to [`OPEN_WAIT`].
#[allow(clippy::type_complexity)]
async fn open_stream(
    log: &Log,
    writer: &str,
) -> Option<(
    tokio::sync::mpsc::Sender<crate::proto::AppendRequest>,
    tonic::Streaming<crate::proto::AppendResponse>,
)> {
    let deadline = Instant::now() + OPEN_WAIT;
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT + 1);
        match log.append_stream(rx).await {
            Ok(r) => return Some((tx, r)),
            Err(e @ crate::client::ClientError::WrongLog { .. }) => {
                tracing::error!(error = %e, writer, "the log reached is not the one this load writes to; this stream stops");
                return None;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, writer, "no append stream opens yet; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, writer, "no append stream opens; giving up on this one");
                return None;
            }
        }
    }
}

/// One append stream with its own writer id: sends what the driver hands it, numbering each
/// request; when the stream breaks (a leader change of a replicated log) it opens a new one,
/// on the leader, and sends every unanswered request again with the same `(writer_id,
/// sequence)`, which the LogStore answers with the original index if it was appended. Gives
/// up (counting what is unanswered as failed) if no stream opens within [`OPEN_WAIT`].
async fn stream_worker(
    log: Log,
    writer: String,
    mut requests: tokio::sync::mpsc::Receiver<(
        u64,
        tokio::sync::OwnedSemaphorePermit,
        crate::proto::AppendRequest,
    )>,
    tally: Tally,
) {
    let mut unanswered: std::collections::VecDeque<Unanswered> = std::collections::VecDeque::new();
    let mut sequence = 0u64;
    let mut open = true; // the driver may still send
    while open || !unanswered.is_empty() {
        let Some((tx, mut responses)) = open_stream(&log, &writer).await else {
            break;
        };
        for u in &mut unanswered {
            log.stamp(&mut u.request);
            if tx.send(u.request.clone()).await.is_err() {
                break;
            }
        }
        let mut tx = Some(tx);
        if !open {
            tx = None; // nothing new will come: end the request stream after the resends
        }
        let ended = loop {
            tokio::select! {
                next = requests.recv(), if open => match next {
                    Some((t0, permit, mut request)) => {
                        sequence += 1;
                        request.writer_id = writer.clone();
                        request.sequence = sequence;
                        log.stamp(&mut request);
                        if let Some(t) = &tx {
                            let _ = t.send(request.clone()).await;
                        }
                        unanswered.push_back(Unanswered {
                            t0,
                            _permit: permit,
                            request,
                        });
                    }
                    None => {
                        open = false;
                        tx = None;
                    }
                },
                answer = responses.message() => match answer {
                    Ok(Some(a)) => {
                        if let Err(e) = log.admit("append", &log.addr(), &a.log_id) {
                            break Some(crate::grpc::Reason::WrongLog.status(e.to_string()));
                        }
                        let Some(u) = unanswered.pop_front() else { break None };
                        tally.answered(u);
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                },
            }
        };
        match ended {
            None if !open && unanswered.is_empty() => return,
            None => {}
            Some(status)
                if crate::grpc::Reason::of(&status) == Some(crate::grpc::Reason::WrongLog) =>
            {
                tracing::error!(%status, writer, "the log reached is not the one this load writes to; this stream stops");
                break;
            }
            Some(status) if resend_all(&status) => {
                tracing::info!(%status, writer, unanswered = unanswered.len(), "append stream broke; resending on a new one");
            }
            Some(status) => {
                tracing::warn!(%status, writer, "an append was refused");
                if unanswered.pop_front().is_some() {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    tally
        .failed
        .fetch_add(unanswered.len() as u64, Ordering::Relaxed);
    // Whatever the driver still sends here is refused too.
    requests.close();
    while requests.recv().await.is_some() {
        tally.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts [`STREAMS`] stream workers, each with a writer id of its own:
/// `{writer_prefix}-{run}-{i}`.
fn start_streams(
    log: &Log,
    tally: &Tally,
    workers: &mut tokio::task::JoinSet<()>,
    writer_prefix: &str,
) -> Vec<
    tokio::sync::mpsc::Sender<(
        u64,
        tokio::sync::OwnedSemaphorePermit,
        crate::proto::AppendRequest,
    )>,
> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..STREAMS)
        .map(|i| {
            let (tx, rx) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT);
            workers.spawn(stream_worker(
                log.clone(),
                format!("{writer_prefix}-{run}-{i}"),
                rx,
                tally.clone(),
            ));
            tx
        })
        .collect()
}

/// Appends per `spec` over [`STREAMS`] pipelined append streams; `progress` (if any) is
/// bumped per durable append.
pub async fn drive(log: &Log, spec: &LoadSpec, progress: Option<Arc<AtomicU64>>) -> LoadReport {
    drive_holding(log, spec, progress, &AtomicBool::new(false)).await
}

/// The writer ids' prefix of [`drive`] and [`drive_holding`] (ids `load-RUN-N`).
pub const WRITER_PREFIX: &str = "load";

/// [`drive`] with writer ids `{writer_prefix}-RUN-N` (`logplayer load --writer-prefix`).
pub async fn drive_as(log: &Log, spec: &LoadSpec, writer_prefix: &str) -> LoadReport {
    drive_inner(log, spec, None, &AtomicBool::new(false), writer_prefix).await
}

/// [`drive`], except that past `spec.duration` the load goes on for as long as `hold` is
/// set: the demo holds it until its last fault is in, so every takeover it measures has
/// entries to deliver however late a slow machine runs the schedule.
pub async fn drive_holding(
    log: &Log,
    spec: &LoadSpec,
    progress: Option<Arc<AtomicU64>>,
    hold: &AtomicBool,
) -> LoadReport {
    drive_inner(log, spec, progress, hold, WRITER_PREFIX).await
}

async fn drive_inner(
    log: &Log,
    spec: &LoadSpec,
    progress: Option<Arc<AtomicU64>>,
    hold: &AtomicBool,
    writer_prefix: &str,
) -> LoadReport {
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
        bytes: Arc::default(),
        progress,
    };
    let mut workers = tokio::task::JoinSet::new();
    let mut streams = start_streams(log, &tally, &mut workers, writer_prefix);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_stream = 0usize;
    while !streams.is_empty() {
        let elapsed = start.elapsed();
        let over = elapsed >= spec.duration && !hold.load(Ordering::Relaxed);
        if over || (spec.count > 0 && sent >= spec.count) {
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
        let request = crate::proto::AppendRequest {
            mutations: workload.next_txn(),
            append_start_micros: t0,
            ..Default::default()
        };
        if let Err(e) = streams[i].send((t0, permit, request)).await {
            // The worker gave up: count this one, stop using it.
            drop(e);
            tally.failed.fetch_add(1, Ordering::Relaxed);
            streams.swap_remove(i);
        }
    }
    drop(streams); // ends the request streams; the workers finish with the last answers
    while workers.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let h = tally
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| stats::empty());
    let appended = tally.done.load(Ordering::Relaxed);
    LoadReport {
        appended,
        appended_bytes: tally.bytes.load(Ordering::Relaxed),
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
        let s = ShardConn::connect(addr, None).await?.stats(true).await?;
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    pub shards: usize,
    /// Log replicas (1: the single-node LogStore).
    pub log_replicas: usize,
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
    /// The floor, probed in the same run (see [`crate::harness::floor`]), p50 in ms: F (10 KB
    /// append + fdatasync) and H (one loopback gRPC hop), idle and under the load.
    pub f_idle_ms: f64,
    pub f_loaded_ms: f64,
    pub h_idle_ms: f64,
    pub h_loaded_ms: f64,
    /// Each p50 delay's floor from the loaded probes, and the p50 measured ÷ that floor.
    pub append_floor_ms: f64,
    pub append_ratio: f64,
    pub player_floor_ms: f64,
    pub player_ratio: f64,
    pub apply_floor_ms: f64,
    pub apply_ratio: f64,
    pub durable_floor_ms: f64,
    pub durable_ratio: f64,
    /// CPU milliseconds per 1,000 transactions, per component (all log replicas together).
    pub logstore_cpu_ms_per_1k: f64,
    pub shards_cpu_ms_per_1k: f64,
    pub player_cpu_ms_per_1k: f64,
    /// Bytes written to disk per byte of payload, per component.
    pub logstore_write_amp: f64,
    pub shards_write_amp: f64,
    /// Context switches per transaction, per component.
    pub logstore_cs_per_txn: f64,
    pub shards_cs_per_txn: f64,
    pub player_cs_per_txn: f64,
    /// The apply delay's mean (the paper reports apply delay as average and p99).
    pub apply_mean_ms: f64,
}

/// The floor probes of one run: (F, H), idle and under load.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floors {
    pub idle: (Probe, Probe),
    pub loaded: (Probe, Probe),
}

/// What each component cost over one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Costs {
    pub logstore: Cost,
    pub shards: Cost,
    pub player: Cost,
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
        "shards,log_replicas,txn_bytes,target_rate,run,achieved_rate,transactions,player_p50_ms,player_p99_ms,apply_p50_ms,apply_p99_ms,durable_p50_ms,durable_p99_ms,append_p50_ms,append_p99_ms,player_peak_rss_mib,stall_seconds,samples,f_idle_ms,f_loaded_ms,h_idle_ms,h_loaded_ms,append_floor_ms,append_ratio,player_floor_ms,player_ratio,apply_floor_ms,apply_ratio,durable_floor_ms,durable_ratio,logstore_cpu_ms_per_1k,shards_cpu_ms_per_1k,player_cpu_ms_per_1k,logstore_write_amp,shards_write_amp,logstore_cs_per_txn,shards_cs_per_txn,player_cs_per_txn,apply_mean_ms"
    }
    pub fn csv(&self) -> String {
        let floor = [
            self.f_idle_ms,
            self.f_loaded_ms,
            self.h_idle_ms,
            self.h_loaded_ms,
            self.append_floor_ms,
            self.append_ratio,
            self.player_floor_ms,
            self.player_ratio,
            self.apply_floor_ms,
            self.apply_ratio,
            self.durable_floor_ms,
            self.durable_ratio,
            self.logstore_cpu_ms_per_1k,
            self.shards_cpu_ms_per_1k,
            self.player_cpu_ms_per_1k,
            self.logstore_write_amp,
            self.shards_write_amp,
            self.logstore_cs_per_txn,
            self.shards_cs_per_txn,
            self.player_cs_per_txn,
            self.apply_mean_ms,
        ]
        .iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(",");
        format!(
            "{},{},{},{},{},{:.0},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{},{},{floor}",
            self.shards,
            self.log_replicas,
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
        (shards, log_replicas): (usize, usize),
        spec: &LoadSpec,
        run: u32,
        load: &LoadReport,
        d: &Delays,
        player_peak_rss_mib: f64,
        stall_seconds: u64,
    ) -> BenchRow {
        BenchRow {
            shards,
            log_replicas,
            txn_bytes: spec.txn_bytes,
            target_rate: spec.rate,
            run: run.to_string(),
            achieved_rate: load.rate,
            transactions: load.appended,
            player_p50_ms: ms(&d.player, 0.5),
            player_p99_ms: ms(&d.player, 0.99),
            apply_p50_ms: ms(&d.apply, 0.5),
            apply_p99_ms: ms(&d.apply, 0.99),
            apply_mean_ms: d.apply.mean() / 1000.0,
            durable_p50_ms: ms(&d.durable, 0.5),
            durable_p99_ms: ms(&d.durable, 0.99),
            append_p50_ms: load.append_p50_us as f64 / 1000.0,
            append_p99_ms: load.append_p99_us as f64 / 1000.0,
            player_peak_rss_mib,
            stall_seconds,
            samples: d.player.len(),
            ..BenchRow::default()
        }
    }

    /// Adds the run's floor (each p50 beside its floor) and the components' costs.
    pub fn with_floor(self, floors: &Floors, costs: &Costs) -> BenchRow {
        let (f, h) = (floors.loaded.0.p50_ms, floors.loaded.1.p50_ms);
        let ratio = |measured: f64, floor: f64| {
            if floor > 0.0 { measured / floor } else { 0.0 }
        };
        // To the log and back, around one fsync; a replicated log adds the hop to a follower
        // and back (its fsync runs beside the leader's).
        let append_floor = if self.log_replicas > 1 {
            4.0 * h + f
        } else {
            2.0 * h + f
        };
        let apply_floor = append_floor + 2.0 * h;
        let durable_floor = apply_floor + f;
        BenchRow {
            f_idle_ms: floors.idle.0.p50_ms,
            f_loaded_ms: f,
            h_idle_ms: floors.idle.1.p50_ms,
            h_loaded_ms: h,
            append_floor_ms: append_floor,
            append_ratio: ratio(self.append_p50_ms, append_floor),
            player_floor_ms: h,
            player_ratio: ratio(self.player_p50_ms, h),
            apply_floor_ms: apply_floor,
            apply_ratio: ratio(self.apply_p50_ms, apply_floor),
            durable_floor_ms: durable_floor,
            durable_ratio: ratio(self.durable_p50_ms, durable_floor),
            logstore_cpu_ms_per_1k: costs.logstore.cpu_ms_per_1k,
            shards_cpu_ms_per_1k: costs.shards.cpu_ms_per_1k,
            player_cpu_ms_per_1k: costs.player.cpu_ms_per_1k,
            logstore_write_amp: costs.logstore.write_amplification,
            shards_write_amp: costs.shards.write_amplification,
            logstore_cs_per_txn: costs.logstore.context_switches_per_txn,
            shards_cs_per_txn: costs.shards.context_switches_per_txn,
            player_cs_per_txn: costs.player.context_switches_per_txn,
            ..self
        }
    }

    /// One line for people: each p50 beside its floor, and what each component cost.
    pub fn summary(&self) -> String {
        format!(
            "floor (p50, loaded): F {:.2} ms (idle {:.2}), H {:.3} ms (idle {:.3}); \
             append {:.2} ms = {:.1}x its floor {:.2}; LogPlayer delay {:.2} = {:.1}x {:.3}; \
             apply {:.2} = {:.1}x {:.2} (mean {:.2}); durable apply {:.2} = {:.1}x {:.2}; \
             CPU ms per 1,000 txn: logstore {:.0}, shards {:.0}, player {:.0}; \
             disk bytes per payload byte: logstore {:.1}, shards {:.1}",
            self.f_loaded_ms,
            self.f_idle_ms,
            self.h_loaded_ms,
            self.h_idle_ms,
            self.append_p50_ms,
            self.append_ratio,
            self.append_floor_ms,
            self.player_p50_ms,
            self.player_ratio,
            self.player_floor_ms,
            self.apply_p50_ms,
            self.apply_ratio,
            self.apply_floor_ms,
            self.apply_mean_ms,
            self.durable_p50_ms,
            self.durable_ratio,
            self.durable_floor_ms,
            self.logstore_cpu_ms_per_1k,
            self.shards_cpu_ms_per_1k,
            self.player_cpu_ms_per_1k,
            self.logstore_write_amp,
            self.shards_write_amp,
        )
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
            apply_mean_ms: m(|r| r.apply_mean_ms),
            durable_p50_ms: m(|r| r.durable_p50_ms),
            durable_p99_ms: m(|r| r.durable_p99_ms),
            append_p50_ms: m(|r| r.append_p50_ms),
            append_p99_ms: m(|r| r.append_p99_ms),
            player_peak_rss_mib: m(|r| r.player_peak_rss_mib),
            samples: m(|r| r.samples as f64) as u64,
            f_idle_ms: m(|r| r.f_idle_ms),
            f_loaded_ms: m(|r| r.f_loaded_ms),
            h_idle_ms: m(|r| r.h_idle_ms),
            h_loaded_ms: m(|r| r.h_loaded_ms),
            append_floor_ms: m(|r| r.append_floor_ms),
            append_ratio: m(|r| r.append_ratio),
            player_floor_ms: m(|r| r.player_floor_ms),
            player_ratio: m(|r| r.player_ratio),
            apply_floor_ms: m(|r| r.apply_floor_ms),
            apply_ratio: m(|r| r.apply_ratio),
            durable_floor_ms: m(|r| r.durable_floor_ms),
            durable_ratio: m(|r| r.durable_ratio),
            logstore_cpu_ms_per_1k: m(|r| r.logstore_cpu_ms_per_1k),
            shards_cpu_ms_per_1k: m(|r| r.shards_cpu_ms_per_1k),
            player_cpu_ms_per_1k: m(|r| r.player_cpu_ms_per_1k),
            logstore_write_amp: m(|r| r.logstore_write_amp),
            shards_write_amp: m(|r| r.shards_write_amp),
            logstore_cs_per_txn: m(|r| r.logstore_cs_per_txn),
            shards_cs_per_txn: m(|r| r.shards_cs_per_txn),
            player_cs_per_txn: m(|r| r.player_cs_per_txn),
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
