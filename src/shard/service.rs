//! The shard's gRPC edge: the `Deliver` stream, `Applied`, `Dump` and `Stats`, plus health
//! and reflection. It turns [`ShardError`]s into statuses and does nothing else of its own:
//! the rules live in [`ShardCore`].
//!
//! Status codes a sender can rely on (the whole table is in `proto/logplayer.proto`):
//! - `FAILED_PRECONDITION` with metadata `logplayer-error: fenced` — the epoch is below the
//!   highest this shard has seen (sent as `logplayer-highest-epoch`); the sender must step
//!   down.
//! - `FAILED_PRECONDITION` with `wrong-shard`, `wrong-log` or `entry-limit` — the sender is
//!   misconfigured for this shard; nothing was applied.
//! - `ABORTED` with `logplayer-error: gap` — an entry's previous index is above what the
//!   shard applied; the sender must reconnect and recover from the applied index.
//! - `RESOURCE_EXHAUSTED` with `entry-too-large` — a message above this shard's limit.
//! - `INVALID_ARGUMENT` with `invalid` — a malformed stream (no hello first, bad indexes).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::gather::{End, Gatherer, Group, Inbound};
use super::stats::Stats;
use super::{HelloInfo, ShardCore, ShardError, ShardStore};
use crate::grpc::{self, GrpcError, Reason};
use crate::model::{json_line, now_micros};
use crate::proto::shard_server::{Shard, ShardServer};
use crate::proto::{
    Ack, AppliedRequest, AppliedResponse, DeliverRequest, DeliverResponse, DumpRequest,
    DumpResponse, StatsRequest, StatsResponse, Welcome, deliver_request, deliver_response,
};
use crate::routing::{SlotRange, SlotSet};

/// Responses queued per stream before the shard stops reading (acks are tiny and one per
/// commit, so a handful is plenty).
const ACK_CHANNEL: usize = 16;
/// Batches read ahead of the committer (the sender's window bounds this in practice).
const INBOUND_CHANNEL: usize = 64;

/// The gRPC service of one shard.
pub struct ShardService<S: ShardStore> {
    id: String,
    max_entry_bytes: u64,
    log_id: Arc<Mutex<String>>,
    core: Arc<Mutex<ShardCore<S>>>,
    applied: Arc<AtomicU64>,
    highest_epoch: Arc<AtomicU64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Why the store failed, once it has (see [`ShardService::store_failed`]).
    failed: Arc<Mutex<Option<String>>>,
    /// How long a commit may wait for more batches (see [`super::gather`]).
    commit_delay: Duration,
    /// The last refusal of a sender, said in `Applied` (see [`Refused`]).
    refused: Arc<Refused>,
}

/// How long a refusal is said after it was made: a player refused for real is refused
/// again at each retry (every `--backoff-max` at most, 2 s by default), so an older one
/// belongs to a sender that went away.
const REFUSAL_SAID_FOR: Duration = Duration::from_secs(60);

/// The last refusal of a sender, so that `Applied` (the operator's probe, `logplayer
/// status`) can say that this shard answers but refuses its players.
///
/// Only what the player itself takes as a refusal is kept: `wrong-shard`, `wrong-log`,
/// `entry-limit`, `entry-too-large` and `invalid`. Not a fencing (a stale sender is
/// refused by design), a `gap` (the player reconnects and is taken back), a store failure
/// (the shard stops), nor a stream cut off mid-message (a killed sender leaves one).
///
/// A refusal at a Hello is said while no accepted delivery stream is open (a stray client
/// refused beside a delivering player says nothing about it), until a Hello is accepted. A
/// refusal on an accepted stream is the player's own, and is said until an entry is
/// applied, even while the player's next stream is open (which is refused again). Any
/// refusal is forgotten once an entry is applied, and no longer said after
/// [`REFUSAL_SAID_FOR`].
#[derive(Default)]
struct Refused {
    last: Mutex<Option<Refusal>>,
    /// Accepted delivery streams open now.
    open: AtomicUsize,
}

struct Refusal {
    reason: Reason,
    message: String,
    at: std::time::Instant,
    /// Made on an accepted stream (not at a Hello).
    on_stream: bool,
}

/// One accepted delivery stream, open while this lives.
struct Open(Arc<Refused>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Refused {
    /// Keeps `status` as the last refusal, if it is one the player takes as such (see
    /// [`Refused`]); `on_stream`: made on an accepted stream.
    fn note(&self, status: &Status, on_stream: bool) {
        let kept = [
            Reason::WrongShard,
            Reason::WrongLog,
            Reason::EntryLimit,
            Reason::EntryTooLarge,
            Reason::Invalid,
        ];
        let Some(reason) = Reason::of(status).filter(|r| kept.contains(r)) else {
            return;
        };
        // A sender killed mid-message leaves a truncated frame: a broken stream, not a
        // refusal of the player (see `grpc::request_refusal`).
        if status.message().contains("Unexpected EOF decoding stream") {
            return;
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Refusal {
                reason,
                message: status.message().to_owned(),
                at: std::time::Instant::now(),
                on_stream,
            });
        }
    }

    /// An entry was applied: whatever was refused before is past.
    fn applied(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    /// A sender was accepted: a refusal at a Hello is past (one on a stream is not: the
    /// player's next stream is refused the same way), and its stream is open until the
    /// returned guard is dropped.
    fn accepted(self: &Arc<Self>) -> Open {
        if let Ok(mut last) = self.last.lock()
            && last.as_ref().is_some_and(|r| !r.on_stream)
        {
            *last = None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// The reason's name and the message, or two empty strings.
    fn said(&self) -> (String, String) {
        self.said_at(std::time::Instant::now())
    }

    fn said_at(&self, now: std::time::Instant) -> (String, String) {
        let open = self.open.load(Ordering::Acquire) > 0;
        let last = self.last.lock().ok();
        match last.as_ref().and_then(|l| l.as_ref()) {
            Some(r)
                if (r.on_stream || !open)
                    && now.saturating_duration_since(r.at) < REFUSAL_SAID_FOR =>
            {
                (r.reason.as_str().to_owned(), r.message.clone())
            }
            _ => (String::new(), String::new()),
        }
    }
}

impl<S: ShardStore> Clone for ShardService<S> {
    fn clone(&self) -> Self {
        ShardService {
            id: self.id.clone(),
            max_entry_bytes: self.max_entry_bytes,
            log_id: self.log_id.clone(),
            core: self.core.clone(),
            applied: self.applied.clone(),
            highest_epoch: self.highest_epoch.clone(),
            stats: self.stats.clone(),
            shutdown: self.shutdown.clone(),
            failed: self.failed.clone(),
            commit_delay: self.commit_delay,
            refused: self.refused.clone(),
        }
    }
}

/// A slot range as the wire gives it (a number past `i32` stays out of bounds, and is
/// refused as such).
fn slot_range(r: &crate::proto::SlotRange) -> SlotRange {
    let slot = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    SlotRange::new(slot(r.start), slot(r.end))
}

/// The status a sender sees for a refusal.
pub fn to_status(e: &ShardError) -> Status {
    let reason = match e {
        ShardError::Fenced { .. } => Reason::Fenced,
        ShardError::WrongShard { .. }
        | ShardError::SlotsGrew { .. }
        | ShardError::NotThisShard { .. } => Reason::WrongShard,
        ShardError::WrongLog { .. } => Reason::WrongLog,
        ShardError::EntryLimit { .. } => Reason::EntryLimit,
        ShardError::Gap { .. } => Reason::Gap,
        ShardError::Malformed(_) => Reason::Invalid,
        ShardError::TooLarge { .. } => Reason::EntryTooLarge,
        ShardError::Store(_) => Reason::Store,
    };
    let mut status = reason.status(e.to_string());
    if let ShardError::Fenced { highest, .. } = e
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(highest.to_string())
    {
        status.metadata_mut().insert(grpc::EPOCH_KEY, v);
    }
    status
}

impl<S: ShardStore> ShardService<S> {
    pub fn new(core: ShardCore<S>, shutdown: CancellationToken) -> Self {
        let d = core.durable();
        ShardService {
            id: core.me().id.clone(),
            max_entry_bytes: core.me().max_entry_bytes,
            log_id: Arc::new(Mutex::new(
                core.identity().log_id.clone().unwrap_or_default(),
            )),
            core: Arc::new(Mutex::new(core)),
            applied: Arc::new(AtomicU64::new(d.applied)),
            highest_epoch: Arc::new(AtomicU64::new(d.highest_epoch)),
            stats: Arc::new(Stats::default()),
            shutdown,
            failed: Arc::new(Mutex::new(None)),
            commit_delay: super::gather::DEFAULT_COMMIT_DELAY,
            refused: Arc::default(),
        }
    }

    /// Sets the commit delay (see [`super::gather`]); zero commits whatever has arrived.
    pub fn with_commit_delay(mut self, delay: Duration) -> Self {
        self.commit_delay = delay;
        self
    }

    /// After a store error, the store's state is in doubt (redb refuses every transaction
    /// until it is reopened, which repairs it): stop serving, so that the process exits and
    /// its supervisor restarts it, rather than stay up refusing every batch.
    fn store_failed(&self, e: &ShardError) {
        if !matches!(e, ShardError::Store(_)) {
            return;
        }
        if let Ok(mut failed) = self.failed.lock()
            && failed.is_none()
        {
            *failed = Some(e.to_string());
            tracing::error!(shard = %self.id, error = %e, "the store failed: stopping, so that a restart reopens it");
        }
        self.shutdown.cancel();
    }

    /// Why the store failed, if it has: the server has stopped (or is stopping) because of it.
    pub fn store_failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Runs `f` on the core on a blocking thread (commits fsync; see [`crate::blocking`]).
    async fn with_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ShardCore<S>) -> Result<T, ShardError> + Send + 'static,
    ) -> Result<T, ShardError> {
        let core = self.core.clone();
        let applied = self.applied.clone();
        let highest = self.highest_epoch.clone();
        let joined = crate::blocking::run(move || {
            // Poisoned: a call into the store panicked while it held the core, so the store's
            // state is in doubt, as after any other store failure.
            let mut core = core.lock().map_err(|_| {
                store_panicked("an earlier call into the store panicked; its state is in doubt")
            })?;
            let out = f(&mut core);
            let d = core.durable();
            applied.store(d.applied, Ordering::Release);
            highest.store(d.highest_epoch, Ordering::Release);
            out
        })
        .await;
        let out = joined.unwrap_or_else(|e| {
            Err(store_panicked(&if e.is_panic() {
                format!("a call into the store panicked: {e}")
            } else {
                format!("a call into the store was cancelled (the shard is stopping): {e}")
            }))
        });
        // Here, not at each caller: a store that failed under `Dump` stops the shard too.
        if let Err(e) = &out {
            self.store_failed(e);
        }
        out
    }

    /// Reads the stream on its own task, so a message's receive time is when it arrived and
    /// not when the previous commit finished; hands batches to the committer in order.
    fn spawn_reader(&self, mut inbound: Streaming<DeliverRequest>) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(INBOUND_CHANNEL);
        let shutdown = self.shutdown.clone();
        let id = self.id.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let mut last_index = 0;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                };
                let item = match msg {
                    Ok(Some(DeliverRequest {
                        msg: Some(deliver_request::Msg::Batch(b)),
                    })) => match super::check_arriving(&b.entries, &mut last_index) {
                        Ok(()) => Inbound::Batch(b.entries, now_micros(), Instant::now()),
                        Err(e) => {
                            tracing::warn!(shard = %id, error = %e, "malformed batch");
                            stats.malformed();
                            Inbound::Refused(Reason::Invalid.status(e.to_string()))
                        }
                    },
                    Ok(Some(DeliverRequest {
                        msg: Some(deliver_request::Msg::Hello(_)),
                    })) => Inbound::NotABatch("a second Hello"),
                    Ok(Some(_)) => Inbound::NotABatch("a message with neither a Hello nor a Batch"),
                    Ok(None) => Inbound::Closed,
                    Err(status) => {
                        let status = grpc::request_refusal(status);
                        if Reason::of(&status) == Some(Reason::Invalid) {
                            tracing::warn!(shard = %id, %status, "refused a malformed message");
                            Inbound::Refused(status)
                        } else if Reason::of(&status) == Some(Reason::EntryTooLarge) {
                            tracing::error!(shard = %id, %status, "refused a batch above this shard's message limit");
                            Inbound::Refused(status)
                        } else {
                            tracing::debug!(shard = %id, %status, "delivery stream broke");
                            Inbound::Closed
                        }
                    }
                };
                let last = !matches!(item, Inbound::Batch(..));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        rx
    }

    /// Counts and logs why a batch was refused, at the level it deserves: an expected
    /// fencing is INFO, a failed commit is ERROR.
    fn note_refusal(&self, e: &ShardError) {
        match e {
            ShardError::Gap { .. } => {
                self.stats.gap();
                tracing::warn!(shard = %self.id, error = %e, "refused a gap");
            }
            ShardError::Fenced { .. } => {
                self.stats.fenced();
                tracing::info!(shard = %self.id, error = %e, "fenced a stale sender")
            }
            ShardError::Store(_) => {
                tracing::error!(shard = %self.id, error = %e, "commit failed");
                self.store_failed(e);
            }
            ShardError::Malformed(_) => {
                self.stats.malformed();
                tracing::warn!(shard = %self.id, error = %e, "malformed batch")
            }
            ShardError::TooLarge { .. } => {
                tracing::warn!(shard = %self.id, error = %e, "malformed batch")
            }
            ShardError::WrongShard { .. }
            | ShardError::SlotsGrew { .. }
            | ShardError::WrongLog { .. }
            | ShardError::EntryLimit { .. }
            | ShardError::NotThisShard { .. } => {
                tracing::error!(shard = %self.id, error = %e, "refused a misconfigured sender")
            }
        }
    }

    /// Ends a delivery stream because the shard stops: not with OK, which a sender would take
    /// for an end it asked for.
    async fn end_stopping(&self, tx: &mpsc::Sender<Result<DeliverResponse, Status>>) {
        let stopping = Reason::Unavailable.status(format!(
            "shard {} is stopping: deliver again from its applied index once it is back",
            self.id
        ));
        crate::serving::end_with(tx, stopping).await;
    }

    /// Queues an ack; false when the stream is over: the sender went away, or took no ack
    /// for the stall timeout (60 s: a shard takes no `--read-stall-timeout`; then the stream
    /// ends `busy`). Without the timeout a sender
    /// that never reads its acks stopped the commits of its stream for good while its reader
    /// went on taking batches ([`INBOUND_CHANNEL`] of them, each up to the message limit).
    async fn send_ack(
        &self,
        tx: &mpsc::Sender<Result<DeliverResponse, Status>>,
        ack: DeliverResponse,
    ) -> bool {
        crate::serving::send_or_end(tx, Ok(ack), |stall| {
            tracing::info!(shard = %self.id, stall = ?stall, "a delivery stream's sender took no ack for that long: ending it");
            Reason::Busy.status(format!(
                "this Deliver stream's sender took no ack for {}: ended; deliver again from \
                 the shard's applied index",
                humantime::format_duration(stall)
            ))
        })
        .await
    }

    /// Commits what the reader hands over, grouped by [`Gatherer`] (whatever has already
    /// arrived, and more within the commit delay when that fills the commit's pages), and
    /// acks cumulatively. Ends on end of stream, refusal or shutdown.
    async fn stream_loop(
        self,
        inbound: Streaming<DeliverRequest>,
        tx: mpsc::Sender<Result<DeliverResponse, Status>>,
        epoch: u64,
        slots: Arc<SlotSet>,
    ) {
        let mut groups = Gatherer::new(self.spawn_reader(inbound), self.commit_delay);
        loop {
            let Some(group) = groups.next(&self.shutdown).await else {
                self.end_stopping(&tx).await;
                return;
            };
            let Group {
                entries,
                received,
                end,
            } = group;
            if let End::Stop(status) = end {
                self.refused.note(&status, true);
                crate::serving::end_with(&tx, status).await;
                return;
            }
            if !entries.is_empty() {
                let before = self.applied.load(Ordering::Acquire);
                let result = self
                    .with_core({
                        let slots = slots.clone();
                        move |core| {
                            let out = core.apply_for(epoch, &slots, &entries);
                            out.map(|a| (a, entries))
                        }
                    })
                    .await;
                match result {
                    Ok((applied, batch)) => {
                        let durable = now_micros();
                        let fresh = batch
                            .iter()
                            .zip(received.iter().copied())
                            .filter(|(e, _)| e.index > before && e.index <= applied.applied);
                        self.stats.record(fresh, durable, applied.skipped);
                        if applied.applied > before {
                            self.stats.committed_under(epoch, durable);
                            self.refused.applied();
                        }
                        let ack = DeliverResponse {
                            msg: Some(deliver_response::Msg::Ack(Ack {
                                applied_index: applied.applied,
                            })),
                        };
                        if !self.send_ack(&tx, ack).await {
                            return;
                        }
                    }
                    Err(e) => {
                        self.note_refusal(&e);
                        // Whatever was valid before the refusal is durable: tell the sender.
                        let ack = DeliverResponse {
                            msg: Some(deliver_response::Msg::Ack(Ack {
                                applied_index: self.applied.load(Ordering::Acquire),
                            })),
                        };
                        let status = to_status(&e);
                        self.refused.note(&status, true);
                        if self.send_ack(&tx, ack).await {
                            crate::serving::end_with(&tx, status).await;
                        }
                        return;
                    }
                }
            }
            if matches!(end, End::Closed) {
                // The reader also ends (its stream seen as closed) when the shard stops.
                if self.shutdown.is_cancelled() {
                    self.end_stopping(&tx).await;
                }
                return;
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: ShardStore> Shard for ShardService<S> {
    type DeliverStream = BoxStream<DeliverResponse>;
    type DumpStream = BoxStream<DumpResponse>;

    async fn deliver(
        &self,
        request: Request<Streaming<DeliverRequest>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await.map_err(grpc::request_refusal)? {
            Some(DeliverRequest {
                msg: Some(deliver_request::Msg::Hello(h)),
            }) => h,
            Some(_) => {
                return Err(
                    Reason::Invalid.status("the first message of a Deliver stream must be a Hello")
                );
            }
            None => return Err(Reason::Invalid.status("stream closed before its Hello")),
        };
        let epoch = hello.epoch;
        let info = HelloInfo {
            epoch,
            log_id: hello.log_id.clone(),
            shard_id: hello.shard_id.clone(),
            max_entry_bytes: hello.max_entry_bytes,
            slots: hello.slots.iter().map(slot_range).collect(),
        };
        let (durable, bound_log, slots) = self
            .with_core(move |core| {
                let d = core.hello(&info)?;
                // The slots this stream's entries are checked against (another stream's
                // Hello may give others meanwhile).
                let slots = core.offered().cloned().unwrap_or_default();
                Ok((d, core.identity().log_id.clone().unwrap_or_default(), slots))
            })
            .await
            .map_err(|e| {
                match e {
                    ShardError::Fenced { .. } => {
                        self.stats.fenced();
                        tracing::info!(shard = %self.id, player = %hello.player_id, error = %e, "rejected hello");
                    }
                    _ => {
                        tracing::warn!(shard = %self.id, player = %hello.player_id, error = %e, "rejected hello");
                        self.store_failed(&e);
                    }
                }
                let status = to_status(&e);
                self.refused.note(&status, false);
                status
            })?;
        let open = self.refused.accepted();
        if let Ok(mut id) = self.log_id.lock() {
            bound_log.clone_into(&mut id);
        }
        tracing::info!(shard = %self.id, player = %hello.player_id, epoch, applied = durable.applied, "sender connected");
        let (tx, rx) = mpsc::channel(ACK_CHANNEL);
        let welcome = DeliverResponse {
            msg: Some(deliver_response::Msg::Welcome(Welcome {
                applied_index: durable.applied,
                highest_epoch: durable.highest_epoch,
                shard_id: self.id.clone(),
                log_id: bound_log,
                max_entry_bytes: self.max_entry_bytes,
                applied_fingerprint: durable.fingerprint,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("sender went away"))?;
        let service = self.clone();
        tokio::spawn(async move {
            service
                .stream_loop(inbound, tx, epoch, Arc::new(slots))
                .await;
            drop(open);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn applied(
        &self,
        _request: Request<AppliedRequest>,
    ) -> Result<Response<AppliedResponse>, Status> {
        let (refused_reason, refused_message) = self.refused.said();
        Ok(Response::new(AppliedResponse {
            applied_index: self.applied.load(Ordering::Acquire),
            highest_epoch: self.highest_epoch.load(Ordering::Acquire),
            shard_id: self.id.clone(),
            log_id: self.log_id.lock().map(|id| id.clone()).unwrap_or_default(),
            max_entry_bytes: self.max_entry_bytes,
            refused_reason,
            refused_message,
        }))
    }

    async fn dump(
        &self,
        _request: Request<DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let lines = self
            .with_core(|core| {
                let mut lines = Vec::new();
                core.store().dump(&mut |k, v| lines.push(json_line(k, v)))?;
                Ok(lines)
            })
            .await
            .map_err(|e| to_status(&e))?;
        let stream = tokio_stream::iter(lines.into_iter().map(|json| Ok(DumpResponse { json })));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(self.stats.snapshot(request.get_ref().reset)))
    }
}

/// Serves a shard on `listener` until `shutdown` is cancelled; then stops accepting, lets
/// each stream finish its current commit (within [`grpc::DRAIN_DEADLINE`]), and returns.
pub async fn serve<S: ShardStore>(
    core: ShardCore<S>,
    listener: TcpListener,
    shutdown: CancellationToken,
    commit_delay: Duration,
) -> Result<(), ServeError> {
    let what = match listener.local_addr() {
        Ok(addr) => format!("shard on {addr}"),
        Err(_) => "shard".to_owned(),
    };
    match crate::tls::process() {
        Some(tls) => {
            let incoming = crate::tls::server::incoming(listener, tls.clone());
            serve_incoming(core, incoming, shutdown, commit_delay, &what).await
        }
        None => {
            let incoming = grpc::incoming(listener);
            serve_incoming(core, incoming, shutdown, commit_delay, &what).await
        }
    }
}

/// [`serve`] over any stream of accepted connections (see [`grpc::serve_incoming`]).
pub async fn serve_incoming<S: ShardStore, I, IO, IE>(
    core: ShardCore<S>,
    incoming: I,
    shutdown: CancellationToken,
    commit_delay: Duration,
    what: &str,
) -> Result<(), ServeError>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: grpc::AcceptedIo,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = crate::limits::message_limit(core.me().max_entry_bytes as usize);
    // Cancelled by the caller, or by the service itself when the store fails.
    let stop = shutdown.child_token();
    let service = ShardService::new(core, stop.clone()).with_commit_delay(commit_delay);
    let watch = service.clone();
    // Decoding is bounded by the entry limit; encoding is not: a `Dump` message carries one
    // key's whole value, and a list can grow past any one entry.
    let shard = ShardServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(crate::limits::message_limit(
            crate::limits::MAX_MAX_ENTRY_BYTES,
        ));
    let router = grpc::router("logplayer.v1.Shard").await?.add_service(shard);
    grpc::serve_incoming(router, incoming, stop, what).await?;
    match watch.store_failure() {
        Some(reason) => Err(ServeError::StoreFailed { reason }),
        None => Ok(()),
    }
}

/// A store failure for a call into the store that panicked (a store of the user's own, or a
/// bug of ours): answered `store` and stopping the shard ([`ShardService::store_failed`]), as
/// any store failure does. It was answered as a malformed entry, and the shard stayed up
/// refusing every batch and Hello as `invalid`.
fn store_panicked(what: &str) -> ShardError {
    ShardError::Store(super::StoreError::Backend(what.into()))
}

/// Why a shard server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("the shard store failed ({reason}); restart the shard: opening the store recovers it")]
    StoreFailed { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::proto::shard_client::ShardClient;
    use crate::proto::{DeliverRequest, Hello, ShardEntry, deliver_request};
    use crate::shard::{Durable, Identity, MemStore, ShardSelf, StoreError};

    /// A store whose epoch writes fail, as on a disk error (`Err`), or panic, as a store of
    /// the user's own with a bug (`Panic`).
    enum FailingEpochs {
        Err(MemStore),
        Panic(MemStore),
    }

    impl FailingEpochs {
        fn inner(&self) -> &MemStore {
            match self {
                FailingEpochs::Err(s) | FailingEpochs::Panic(s) => s,
            }
        }
        fn inner_mut(&mut self) -> &mut MemStore {
            match self {
                FailingEpochs::Err(s) | FailingEpochs::Panic(s) => s,
            }
        }
    }

    impl ShardStore for FailingEpochs {
        fn load(&self) -> Result<Durable, StoreError> {
            self.inner().load()
        }
        fn identity(&self) -> Result<Identity, StoreError> {
            self.inner().identity()
        }
        fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
            self.inner_mut().set_identity(identity)
        }
        fn set_epoch(&mut self, _: u64) -> Result<(), StoreError> {
            match self {
                FailingEpochs::Err(_) => Err(StoreError::Backend("simulated disk error".into())),
                FailingEpochs::Panic(_) => panic!("a store's bug"),
            }
        }
        fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
            self.inner_mut().commit(entries, applied)
        }
        fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError> {
            self.inner().dump(visit)
        }
    }

    /// A store call that panicked is a store failure: refused `store` (not `invalid`, as a
    /// malformed entry), and the shard stops with the reason, so its supervisor restarts it.
    #[tokio::test]
    async fn a_panic_in_the_store_stops_the_server_as_a_store_failure() {
        let (server, mut client) = start(FailingEpochs::Panic(MemStore::default())).await;
        let Err(refused) = open(&mut client, hello("s0", 1)).await else {
            panic!("the hello was welcomed");
        };
        assert_eq!(
            grpc::Reason::of(&refused),
            Some(grpc::Reason::Store),
            "{refused:?}"
        );
        drop(client);
        let reason = store_failed(server).await;
        assert!(reason.contains("panic"), "{reason}");
    }

    /// A shard whose store failed stops serving, with the reason, so that its process exits
    /// and a restart reopens the store (redb refuses every transaction after an I/O error
    /// until then); it used to stay up refusing every sender.
    #[tokio::test]
    async fn a_store_failure_stops_the_server_with_the_reason() {
        let (server, mut client) = start(FailingEpochs::Err(MemStore::default())).await;
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello("s0", 1)).await.unwrap();
        let refused = match client.deliver(ReceiverStream::new(rx)).await {
            Err(status) => Some(status),
            Ok(stream) => stream.into_inner().message().await.err(),
        };
        assert!(refused.is_some(), "the hello was not refused");
        drop((tx, client));
        let reason = store_failed(server).await;
        assert!(reason.contains("simulated disk error"), "{reason}");
    }

    type Server = tokio::task::JoinHandle<Result<(), ServeError>>;

    /// Waits for `server` to stop by itself with `StoreFailed`; its reason.
    async fn store_failed(server: Server) -> String {
        let stopped = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops by itself")
            .expect("no panic");
        match stopped {
            Err(ServeError::StoreFailed { reason }) => reason,
            other => panic!("expected StoreFailed, got {other:?}"),
        }
    }

    /// Serves shard `s0` on `store` at a loopback port: the server's task and a client of it.
    async fn start<S: ShardStore>(store: S) -> (Server, ShardClient<tonic::transport::Channel>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = ShardSelf {
            id: "s0".into(),
            addr: addr.clone(),
            max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
        };
        let core = ShardCore::open(store, me).unwrap();
        let server = tokio::spawn(serve(
            core,
            listener,
            CancellationToken::new(),
            Duration::ZERO,
        ));
        let client = ShardClient::new(
            grpc::connect(&addr, &grpc::Expected::AnyShard)
                .await
                .unwrap(),
        );
        (server, client)
    }

    /// A Hello from player `p` of log `…aa` for `shard` under `epoch`, giving every slot.
    fn hello(shard: &str, epoch: u64) -> DeliverRequest {
        DeliverRequest {
            msg: Some(deliver_request::Msg::Hello(Hello {
                epoch,
                player_id: "p".into(),
                log_id: "00000000-0000-4000-8000-0000000000aa".into(),
                shard_id: shard.into(),
                max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
                slots: crate::proto::SlotRange::all(),
            })),
        }
    }

    type Opened = (
        mpsc::Sender<DeliverRequest>,
        Streaming<crate::proto::DeliverResponse>,
    );

    /// Opens a Deliver stream with `hello`: the stream once welcomed, or the refusal.
    async fn open(
        client: &mut ShardClient<tonic::transport::Channel>,
        hello: DeliverRequest,
    ) -> Result<Opened, Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(hello).await.unwrap();
        let mut stream = client.deliver(ReceiverStream::new(rx)).await?.into_inner();
        match stream.message().await? {
            Some(_) => Ok((tx, stream)),
            None => Err(Status::aborted("closed without a Welcome")),
        }
    }

    /// `Applied`'s refusal fields.
    async fn said(client: &mut ShardClient<tonic::transport::Channel>) -> (String, String) {
        let a = client
            .applied(AppliedRequest {})
            .await
            .unwrap()
            .into_inner();
        (a.refused_reason, a.refused_message)
    }

    /// A batch of `entries` on a Deliver stream.
    fn batch(entries: Vec<ShardEntry>) -> DeliverRequest {
        DeliverRequest {
            msg: Some(deliver_request::Msg::Batch(crate::proto::Batch { entries })),
        }
    }

    /// `Applied` says the shard's last refusal of a sender: one at a Hello until a Hello is
    /// accepted, one on an accepted stream until an entry is applied; never a fencing or a
    /// gap, and not a stray's while a player's stream is open. The operator's probe read a
    /// shard refusing its players as `Serving`.
    #[tokio::test]
    async fn applied_says_the_last_refusal_of_a_sender() {
        let (_server, mut client) = start(MemStore::default()).await;
        assert_eq!(said(&mut client).await, (String::new(), String::new()));
        // Refused at its Hello: another shard's sender.
        let refused = open(&mut client, hello("s1", 1)).await.err().unwrap();
        let (reason, message) = said(&mut client).await;
        assert_eq!(reason, "wrong-shard");
        assert_eq!(message, refused.message());
        // Accepted: the refusal is past.
        let (tx, mut stream) = open(&mut client, hello("s0", 2)).await.unwrap();
        assert_eq!(said(&mut client).await.0, "");
        // Refused on the stream: a mutation without a key.
        let bad = ShardEntry {
            index: 1,
            mutations: vec![crate::proto::Mutation::default()],
            ..Default::default()
        };
        tx.send(batch(vec![bad])).await.unwrap();
        while stream.message().await.is_ok_and(|m| m.is_some()) {}
        assert_eq!(said(&mut client).await.0, "invalid");
        // A fencing is not kept: a stale sender is refused by design.
        assert!(open(&mut client, hello("s0", 1)).await.is_err());
        assert_eq!(said(&mut client).await.0, "invalid");
        // The player's next stream is accepted, and the refusal on its stream still said.
        let (tx, mut stream) = open(&mut client, hello("s0", 2)).await.unwrap();
        assert_eq!(said(&mut client).await.0, "invalid");
        // An entry applied (a watermark) makes it past.
        let mark = |index, prev_index| ShardEntry {
            index,
            prev_index,
            ..Default::default()
        };
        tx.send(batch(vec![mark(1, 0)])).await.unwrap();
        assert!(stream.message().await.unwrap().is_some(), "acked");
        assert_eq!(said(&mut client).await.0, "");
        // A gap is not kept: the player reconnects and is taken back.
        tx.send(batch(vec![mark(5, 3)])).await.unwrap();
        while stream.message().await.is_ok_and(|m| m.is_some()) {}
        assert_eq!(said(&mut client).await.0, "");
        // A stray refused at its Hello beside an open stream is not said while it is open...
        let (tx, stream) = open(&mut client, hello("s0", 2)).await.unwrap();
        let _ = open(&mut client, hello("s1", 2)).await.err().unwrap();
        assert_eq!(said(&mut client).await.0, "");
        // ...and is once it has closed (the shard ends a stream just after its sender sees
        // the end).
        drop((tx, stream));
        let mut reason = String::new();
        for _ in 0..250 {
            reason = said(&mut client).await.0;
            if !reason.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reason, "wrong-shard");
    }

    /// A refusal is no longer said once it is older than [`REFUSAL_SAID_FOR`] (its sender
    /// went away), and an entry applied forgets a stray's refusal made beside an open stream.
    #[test]
    fn a_refusal_is_said_for_a_while_and_forgotten_when_an_entry_is_applied() {
        let refused = Arc::new(Refused::default());
        refused.note(&Reason::WrongLog.status("another log"), false);
        let now = std::time::Instant::now();
        assert_eq!(refused.said_at(now).0, "wrong-log");
        assert_eq!(refused.said_at(now + REFUSAL_SAID_FOR).0, "");
        let open = refused.accepted();
        assert_eq!(refused.said().0, "");
        refused.note(&Reason::WrongLog.status("a stray"), false);
        assert_eq!(refused.said().0, "", "a stray beside an open stream");
        refused.applied();
        drop(open);
        assert_eq!(refused.said().0, "", "forgotten when an entry was applied");
        // A truncated frame is a broken stream, not a refusal.
        let cut = Reason::Invalid.status("malformed request: Unexpected EOF decoding stream.");
        refused.note(&cut, true);
        assert_eq!(refused.said().0, "");
    }
}
