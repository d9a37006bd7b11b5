//! The LogStore's gRPC edge: `Append`, `AppendStream`, `Read` (bounded, or tailing with
//! `follow`), `Bounds`, `Retain`, the membership calls of a replica (`Members`,
//! `AddMember`, `RemoveMember`), plus health and reflection. Errors become statuses (one
//! code and `logplayer-error` reason each, see [`grpc::Reason`]) here and nowhere else.

use std::pin::Pin;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::LogStoreError;
use super::raft::members::Members;
use super::raft::node::{Replica, StreamOrder};
use super::served::ServedLog;
use crate::grpc::{self, GrpcError, Reason};
use crate::proto::log_store_server::{LogStore as LogStoreRpc, LogStoreServer};
use crate::proto::{
    AddMemberRequest, AppendRequest, AppendResponse, BoundsRequest, BoundsResponse, EncodedEntry,
    Member, MembersRequest, MembersResponse, ReadRequest, ReadResponse, RemoveMemberRequest,
    RetainRequest, RetainResponse, SeedRequest,
};
use crate::wal::WalError;

/// Appends of one `AppendStream` submitted but not yet answered.
const APPEND_PIPELINE: usize = 1024;
/// Default size of one `ReadResponse` (clamped to the entry limit, see
/// [`crate::limits::batch_budget`]).
const DEFAULT_READ_BATCH_BYTES: usize = 1024 * 1024;

pub(crate) fn to_status(e: LogStoreError) -> Status {
    let reason = match &e {
        LogStoreError::Invalid(_) | LogStoreError::InvalidMember(_) | LogStoreError::Config(_) => {
            Reason::Invalid
        }
        LogStoreError::TooLarge { .. } => Reason::EntryTooLarge,
        LogStoreError::SequenceReused { .. } => Reason::SequenceReused,
        LogStoreError::StaleSequence { .. } => Reason::StaleSequence,
        LogStoreError::Wal(WalError::Removed { .. }) => Reason::BelowRetention,
        LogStoreError::Stopped | LogStoreError::NotDurable(_) => Reason::NotDurable,
        LogStoreError::Wal(WalError::Corruption { .. }) | LogStoreError::Decode { .. } => {
            Reason::Corrupt
        }
        // Any other WAL failure (IO on read, a record over the WAL's own limit) or id
        // problem on a running log: the log cannot serve this now.
        LogStoreError::Wal(_) | LogStoreError::LogId(_) | LogStoreError::Released(_) => {
            Reason::NotDurable
        }
        LogStoreError::Unknown(_) => Reason::NotDurable,
        LogStoreError::Unavailable(_) | LogStoreError::Gap { .. } => Reason::Unavailable,
        LogStoreError::Membership(_) => Reason::Membership,
        LogStoreError::TooManyWriters { .. } => Reason::Busy,
        LogStoreError::NotLeader { leader } => {
            let mut status = Reason::NotLeader.status(e.to_string());
            if let Some(addr) = leader
                && let Ok(v) = addr.parse()
            {
                status.metadata_mut().insert(crate::grpc::LEADER_KEY, v);
            }
            return status;
        }
    };
    reason.status(e.to_string())
}

/// One append stream as the server sees it: its place in a replicated log's order, and the
/// last sequence each of its writers sent on it (what the next one `follows`).
#[derive(Default)]
struct StreamState {
    order: std::sync::Arc<StreamOrder>,
    sent: std::collections::HashMap<String, u64>,
}

/// Refuses a call that names a log (`meant`, from the caller's `log_id` field) other than
/// the one this LogStore serves (`ours`); an empty `meant` is not checked.
fn check_log(call: &str, meant: &str, ours: &str) -> Result<(), Status> {
    if meant.is_empty() || meant == ours {
        return Ok(());
    }
    if call == "append" && crate::mutations::on(crate::mutations::Mutation::LogIgnoresAppendLogId) {
        return Ok(());
    }
    let effect = match call {
        "retain" => "nothing was released",
        "append" => "nothing was appended",
        _ => "the membership is unchanged",
    };
    Err(Reason::WrongLog.status(format!(
        "{call}: the caller means log {meant}, and this LogStore serves log {ours}; {effect}"
    )))
}

/// Submits one append of a stream, once the caller may write as its writer id and it
/// names no other log than `log_id` (this LogStore's).
async fn submit(
    log: &ServedLog,
    peer: Option<&crate::tls::identity::Peer>,
    r: AppendRequest,
    log_id: &str,
    stream: &mut StreamState,
) -> Result<tokio::task::JoinHandle<AppendAnswer>, Status> {
    crate::tls::authz::check_writer(peer, &r.writer_id)?;
    let follows = if r.writer_id.is_empty() {
        0
    } else {
        match stream.sent.get_mut(&r.writer_id) {
            // Going back on one stream: refused on receipt, so nothing after it on the
            // stream is written either (a later sequence following one refused as stale
            // was otherwise written, and a resend found its own earlier one refused).
            Some(last) if r.sequence < *last => {
                return Err(Reason::Invalid.status(format!(
                    "writer {:?} sent sequence {} after {} on this stream: a writer's sequences on one stream must not go back; resend unanswered appends on a new stream",
                    r.writer_id, r.sequence, *last
                )));
            }
            Some(last) => std::mem::replace(last, r.sequence),
            None => {
                // Kept for the stream's first few writer ids (a client that cycles through
                // ids on one stream gets no gap check past that, never a wrong one).
                if stream.sent.len() < MAX_WRITERS_PER_STREAM {
                    stream.sent.insert(r.writer_id.clone(), r.sequence);
                }
                0
            }
        }
    };
    check_log("append", &r.log_id, log_id)?;
    let room = room_for(log, &r.mutations).await;
    let writer = (!r.writer_id.is_empty()).then_some((r.writer_id, r.sequence));
    let on = super::served::OnStream {
        order: &stream.order,
        follows,
    };
    let pending = log
        .submit(r.mutations, writer, r.append_start_micros, Some(on))
        .await
        .map_err(to_status)?;
    // The room goes once the append is answered by the log, not once its answer is taken
    // off the stream's queue: answers waiting for a writer that does not read them held it,
    // and with it every other caller's appends, until --read-stall-timeout ended the stream.
    Ok(tokio::spawn(async move {
        let answer = pending.await;
        drop(room);
        answer
    }))
}

/// Waits for room to hold an append of `mutations` until the log answers it (see
/// [`crate::serving::append_room`]).
async fn room_for(log: &ServedLog, mutations: &[crate::proto::Mutation]) -> Room {
    let bytes = crate::limits::entry_bytes(mutations);
    crate::serving::append_room(bytes, log.max_entry_bytes()).await
}

/// An append's room among those the LogStore holds, released when the log answers it.
type Room = tokio::sync::OwnedSemaphorePermit;

/// What the log answers an append submitted on a stream (see [`submit`]).
type AppendAnswer =
    Result<Result<super::Appended, LogStoreError>, tokio::sync::oneshot::error::RecvError>;

/// A `grpc-timeout` header's duration (gRPC over HTTP/2: up to 8 digits and a unit, `H`,
/// `M`, `S`, `m`, `u` or `n`).
fn grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let unit = v.chars().last()?;
    let n: u64 = v.get(..v.len() - 1)?.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writer ids of one append stream whose order the server keeps (see [`StreamState`]).
const MAX_WRITERS_PER_STREAM: usize = 64;

/// `entries`, unless one is above the LogStore's `--max-entry-bytes` now: written under a
/// larger limit, it is still on disk, but no message within this limit carries it (tonic
/// would end the stream `OUT_OF_RANGE`, "encoded message length too large", which in our
/// protocol means a position outside the log), and shards held to this limit might refuse
/// it. Refused by name (`entry-too-large`: the player reports its main stream stalled at
/// that index) so that the limit is raised again.
fn within_limit(entries: Vec<EncodedEntry>, limit: usize) -> Result<Vec<EncodedEntry>, Status> {
    for e in &entries {
        // An entry's mutations are part of its encoding: a short encoding is within.
        if e.bytes.len() <= limit {
            continue;
        }
        let size = e
            .decode()
            .map_or(e.bytes.len(), |d| crate::limits::entry_bytes(&d.mutations));
        if size > limit {
            return Err(Reason::EntryTooLarge.status(format!(
                "entry {} is {size} bytes, above this LogStore's --max-entry-bytes {limit} \
                 (it was written under a larger limit): run the LogStore with \
                 --max-entry-bytes {size} or more while the log holds it",
                e.index
            )));
        }
    }
    Ok(entries)
}

/// How a `Read` stream ends when its LogStore stops before the stream is complete: not with
/// OK, which a reader of a bounded range (or of everything, without `follow`) takes for its
/// end, but `unavailable`, naming the next index to read from.
fn stopping(next: u64) -> Status {
    Reason::Unavailable.status(format!(
        "the LogStore is stopping: this Read stream ends before index {next}; read again from \
         index {next} (at another replica, or here once it is back)"
    ))
}

/// Queues one response of a `Read` stream (its first entry is `first`); `false` once the
/// stream is over: its reader is gone, or it took nothing for `--read-stall-timeout` (then
/// the stream ends with `busy`, naming where to read from again: every earlier entry is
/// queued before the refusal). The queue never fills its last slot with a response, so that
/// refusal always fits.
async fn send_read(
    tx: &mpsc::Sender<Result<ReadResponse, Status>>,
    response: ReadResponse,
    first: u64,
) -> bool {
    crate::serving::send_or_end(tx, Ok(response), |stall| {
        tracing::info!(
            stall = ?stall,
            next = first,
            "a Read stream's reader took nothing for --read-stall-timeout: ending it"
        );
        Reason::Busy.status(format!(
            "this Read stream's reader took nothing for {} (--read-stall-timeout): ended to \
             free its slot; read again from index {}",
            humantime::format_duration(stall),
            first
        ))
    })
    .await
}

/// Queues one answer of an `AppendStream`; false when the stream is over: the writer went
/// away, or took no answer for `--read-stall-timeout` while answers waited for it (then the
/// stream is ended `busy`, after the answers it holds, and its appends' answers are
/// dropped: the appends still are, or are not, written, and a resend with the same
/// `(writer_id, sequence)` tells which). As for `Read`, the last slot of the queue is kept
/// for that refusal. Without this, a writer that appends and never reads held the stream's
/// two tasks and its pending appends' answers for as long as its connection stayed open (the
/// answers already queued stay with the response until the writer reads them or the
/// connection closes).
async fn send_answer(
    tx: &mpsc::Sender<Result<AppendResponse, Status>>,
    answer: Result<AppendResponse, Status>,
) -> bool {
    crate::serving::send_or_end(tx, answer, |stall| {
        tracing::info!(
            stall = ?stall,
            "an AppendStream's writer took no answer for --read-stall-timeout: ending it"
        );
        Reason::Busy.status(format!(
            "this AppendStream's writer took no answer for {} (--read-stall-timeout): \
             ended; resend the unanswered appends with their (writer_id, sequence) on a \
             new stream",
            humantime::format_duration(stall)
        ))
    })
    .await
}

/// Checks a read request against the log's bounds: `from` at least 1 and not below
/// retention, `to` not below `from`, and (without `follow`) `from` at most `last + 1`.
fn check_read(r: &ReadRequest, first: u64, last: u64) -> Result<(), Status> {
    if r.from == 0 {
        return Err(Reason::Invalid.status("read: `from` must be at least 1"));
    }
    if r.to != 0 && r.to < r.from {
        return Err(Reason::Invalid.status(format!(
            "read: `to` ({}) is below `from` ({})",
            r.to, r.from
        )));
    }
    if r.from < first {
        return Err(Reason::BelowRetention.status(format!(
            "read: entries below {first} were removed by retention; asked from {}",
            r.from
        )));
    }
    if !r.follow && r.from > last + 1 {
        return Err(Reason::PastHead.status(format!(
            "read: from {} is past the last index {last} (set follow to wait for it)",
            r.from
        )));
    }
    Ok(())
}

#[derive(Clone)]
struct Service {
    log: ServedLog,
    shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Service {
    /// [`check_log`] for a call naming log `meant` (empty: not checked, and this LogStore
    /// is not asked for its id, which a new replica does not have yet).
    fn check_meant(&self, call: &str, meant: &str) -> Result<(), Status> {
        if meant.is_empty() {
            return Ok(());
        }
        check_log(call, meant, &self.log.log_id().map_err(to_status)?)
    }

    /// The replica served, for the membership calls (a single node has no membership).
    fn replica(&self) -> Result<&Replica, Status> {
        match &self.log {
            ServedLog::Replica(r) => Ok(r),
            ServedLog::Single(_) => Err(Reason::Membership.status(
                "this is a single-node LogStore: it has no members to list or change \
                 (a replicated LogStore runs each replica with --id and --peers)",
            )),
        }
    }
}

fn members_response(m: Members) -> Response<MembersResponse> {
    Response::new(MembersResponse {
        members: m
            .members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                addr: m.addr,
                voter: m.voter,
                matched: m.matched.unwrap_or(0),
            })
            .collect(),
        leader: m.leader.unwrap_or(0),
        joint: m.joint,
        last_log: m.last_log.unwrap_or(0),
        raft_term: m.raft_term,
        applied: m.applied.unwrap_or(0),
        log_id: m.log_id.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl LogStoreRpc for Service {
    type ReadStream = BoxStream<ReadResponse>;
    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let peer = crate::tls::authz::peer_of(&request);
        let mut inbound = request.into_inner();
        // Submitted appends awaiting durability, in request order.
        let (pending_tx, mut pending_rx) = mpsc::channel(APPEND_PIPELINE);
        let (tx, rx) = mpsc::channel(APPEND_PIPELINE);
        let log = self.log.clone();
        let log_id: std::sync::Arc<str> = self.log.log_id().map_err(to_status)?.into();
        let shutdown = self.shutdown.clone();
        let mut stream = StreamState::default();
        let idle = crate::serving::limits().idle_stream_timeout;
        let ours = log_id.clone();
        // Set when the LogStore stopping ended the reading of the stream.
        let cut_by_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = cut_by_stop.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = tokio::time::timeout(idle, inbound.message()) => m,
                    _ = shutdown.cancelled() => {
                        // Said after the answers to what was taken (below).
                        cut_by_stop.store(true, std::sync::atomic::Ordering::Release);
                        return;
                    }
                };
                let submitted = match msg {
                    Ok(Ok(Some(r))) => submit(&log, peer.as_deref(), r, &ours, &mut stream).await,
                    Ok(Ok(None)) => return,
                    Ok(Err(status)) => Err(grpc::request_refusal(status)),
                    // Answered after every earlier append of the stream (the replies go out
                    // in order), so the writer has nothing left to resend.
                    Err(_) => Err(grpc::Reason::Unavailable.status(format!(
                        "no append on this stream for {idle:?} (--idle-stream-timeout): \
                         open a new stream for the next one"
                    ))),
                };
                let refused = submitted.is_err();
                if pending_tx.send(submitted).await.is_err() || refused {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(submitted) = pending_rx.recv().await {
                let out = match submitted {
                    Ok(reply) => match reply.await {
                        Ok(Ok(r)) => r.map_err(to_status),
                        Ok(Err(_)) | Err(_) => Err(to_status(LogStoreError::Stopped)),
                    },
                    Err(status) => Err(status),
                };
                let refused = out.is_err();
                let msg = out.map(|a| AppendResponse {
                    index: a.index,
                    duplicate: a.duplicate,
                    log_id: log_id.to_string(),
                });
                if !send_answer(&tx, msg).await || refused {
                    return;
                }
            }
            // Not OK, which would say every append sent was answered.
            if cut.load(std::sync::atomic::Ordering::Acquire) {
                let stopping = Reason::Unavailable.status(
                    "the LogStore is stopping: appends after the last one answered on this \
                     stream were not taken; send them again (with their (writer_id, \
                     sequence)) to another replica or once it is back",
                );
                send_answer(&tx, Err(stopping)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let peer = crate::tls::authz::peer_of(&request);
        let r = request.into_inner();
        crate::tls::authz::check_writer(peer.as_deref(), &r.writer_id)?;
        self.check_meant("append", &r.log_id)?;
        let _room = room_for(&self.log, &r.mutations).await;
        let writer = (!r.writer_id.is_empty()).then_some((r.writer_id, r.sequence));
        let out = self
            .log
            .append(r.mutations, writer, r.append_start_micros)
            .await
            .map_err(to_status)?;
        Ok(Response::new(AppendResponse {
            index: out.index,
            duplicate: out.duplicate,
            log_id: self.log.log_id().map_err(to_status)?,
        }))
    }

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = request.into_inner();
        let (first, last) = self.log.bounds();
        check_read(&r, first, last)?;
        let Some(slot) = crate::serving::read_slot() else {
            let max = crate::serving::limits().max_read_streams;
            return Err(Reason::Busy.status(format!(
                "{max} Read streams are open (--max-read-streams); try again later"
            )));
        };
        let log_id = self.log.log_id().map_err(to_status)?;
        let max = crate::limits::batch_budget(
            r.max_batch_bytes as usize,
            DEFAULT_READ_BATCH_BYTES,
            self.log.max_entry_bytes(),
        );
        // One slot more than the responses it queues: room for the refusal that ends a
        // stalled stream (`send_read`).
        let (tx, rx) = mpsc::channel(crate::serving::READ_STREAM_BUFFER + 1);
        let log = self.log.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = log.head();
            let mut pos = r.from;
            loop {
                if r.to != 0 && pos > r.to {
                    return; // the range is complete: end the stream with OK
                }
                let available = *head.borrow_and_update();
                if pos > available {
                    if !r.follow {
                        return; // all the log holds was sent: end the stream with OK
                    }
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() {
                            crate::serving::end_with(&tx, stopping(pos)).await;
                            return;
                        },
                        _ = shutdown.cancelled() => {
                            crate::serving::end_with(&tx, stopping(pos)).await;
                            return;
                        }
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                let to = if r.to == 0 {
                    available
                } else {
                    r.to.min(available)
                };
                let entries = match log
                    .read(pos, to, max)
                    .map_err(to_status)
                    .and_then(|e| within_limit(e, log.max_entry_bytes()))
                {
                    Ok(e) => e,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let Some(last) = entries.last().map(|e| e.index) else {
                    return;
                };
                let first = pos;
                pos = last + 1;
                let response = ReadResponse {
                    encoded: entries.into_iter().map(|e| e.bytes).collect(),
                    log_id: log_id.clone(),
                    ..Default::default()
                };
                tokio::select! {
                    sent = send_read(&tx, response, first) => if !sent { return },
                    _ = shutdown.cancelled() => {
                        crate::serving::end_with(&tx, stopping(first)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn bounds(&self, _r: Request<BoundsRequest>) -> Result<Response<BoundsResponse>, Status> {
        let (first, last) = self.log.bounds();
        let replica = match &self.log {
            ServedLog::Replica(r) => {
                let s = r.status();
                Some(crate::proto::ReplicaStatus {
                    id: s.id,
                    role: s.role,
                    raft_term: s.raft_term,
                    leader: s.leader.unwrap_or(0),
                    leader_addr: r.leader_addr().unwrap_or_default(),
                    last_log: s.last_log.unwrap_or(0),
                    applied: s.applied.unwrap_or(0),
                    applied_term: s.applied_term.unwrap_or(0),
                    leads_a_majority: s.leads_a_majority,
                })
            }
            ServedLog::Single(_) => None,
        };
        Ok(Response::new(BoundsResponse {
            first,
            last,
            log_id: self.log.log_id().map_err(to_status)?,
            max_entry_bytes: self.log.max_entry_bytes() as u64,
            replica,
            writers: self.log.writers() as u64,
            max_writers: crate::serving::limits().max_writers as u64,
        }))
    }

    async fn members(
        &self,
        _r: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(members_response(self.replica()?.members()))
    }

    async fn add_member(
        &self,
        r: Request<AddMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let replica = self.replica()?;
        let deadline = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let r = r.into_inner();
        self.check_meant("add member", &r.log_id)?;
        let mut catch_up = match r.catch_up_ms {
            0 => super::raft::members::DEFAULT_CATCH_UP,
            ms => {
                std::time::Duration::from_millis(ms.into()).min(super::raft::members::MAX_CATCH_UP)
            }
        };
        // Within the caller's deadline, with a second to answer: a call cut short by its
        // deadline would leave the replica a learner without the `membership` refusal
        // that says so.
        if let Some(d) = deadline {
            catch_up = catch_up.min(d.saturating_sub(std::time::Duration::from_secs(1)));
        }
        replica
            .add_member(r.id, r.addr, catch_up)
            .await
            .map(members_response)
            .map_err(to_status)
    }

    async fn remove_member(
        &self,
        r: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let replica = self.replica()?;
        let r = r.into_inner();
        self.check_meant("remove member", &r.log_id)?;
        replica
            .remove_member(r.id)
            .await
            .map(members_response)
            .map_err(to_status)
    }

    async fn seed(&self, _r: Request<SeedRequest>) -> Result<Response<MembersResponse>, Status> {
        self.replica()?
            .seed()
            .await
            .map(members_response)
            .map_err(to_status)
    }

    async fn retain(&self, r: Request<RetainRequest>) -> Result<Response<RetainResponse>, Status> {
        let RetainRequest { below, log_id } = r.into_inner();
        self.check_meant("retain", &log_id)?;
        let (_, last) = self.log.bounds();
        if below > last + 1 {
            return Err(Reason::Invalid.status(format!(
                "retain: below {below} is past the last index {last} + 1; entries nobody has read cannot be released"
            )));
        }
        let (first, removed) = self.log.retain(below).await.map_err(to_status)?;
        Ok(Response::new(RetainResponse {
            first,
            segments_removed: removed as u32,
        }))
    }
}

/// Serves the LogStore until `shutdown` is cancelled; then stops accepting, ends the read
/// streams, lets in-flight appends finish (within [`grpc::DRAIN_DEADLINE`]), and returns.
pub async fn serve(
    log: impl Into<ServedLog>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let what = match listener.local_addr() {
        Ok(addr) => format!("logstore on {addr}"),
        Err(_) => "logstore".to_owned(),
    };
    match crate::tls::process() {
        Some(tls) => {
            let incoming = crate::tls::server::incoming(listener, tls.clone());
            serve_incoming(log, incoming, shutdown, &what).await
        }
        None => serve_incoming(log, grpc::incoming(listener), shutdown, &what).await,
    }
}

/// [`serve`] over any stream of accepted connections (see [`grpc::serve_incoming`]).
///
/// Stops, with [`ServeError::WalFailed`], once a WAL write fails: appends are refused from
/// then on and only a restart recovers, so the process should exit and its supervisor
/// (Kubernetes) restart it rather than stay up refusing.
pub async fn serve_incoming<I, IO, IE>(
    log: impl Into<ServedLog>,
    incoming: I,
    shutdown: CancellationToken,
    what: &str,
) -> Result<(), ServeError>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: grpc::AcceptedIo,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let log: ServedLog = log.into();
    let limit = crate::limits::message_limit(log.max_entry_bytes());
    let wal_failed = log.failed();
    let replication = match &log {
        ServedLog::Replica(r) => Some(
            crate::proto::replication_server::ReplicationServer::new(
                crate::logstore::raft::network::ReplicationService::new(
                    r.sender(),
                    r.raft().clone(),
                    r.machine().clone(),
                    r.catching_up(),
                )
                .serving_append_stream(r.serves_append_stream()),
            )
            .max_decoding_message_size(crate::logstore::raft::network::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::logstore::raft::network::MAX_MESSAGE_BYTES),
        ),
        ServedLog::Single(_) => None,
    };
    let stop = shutdown.child_token();
    let svc = LogStoreServer::new(Service {
        log,
        shutdown: stop.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let router = grpc::router("logplayer.v1.LogStore")
        .await?
        .add_service(svc)
        .add_optional_service(replication);
    let serve = grpc::serve_incoming(router, incoming, stop.clone(), what);
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => Ok(served?),
        reason = wal_failed => {
            tracing::error!(%reason, "the WAL failed: stopping, so that a restart recovers from what is on disk");
            stop.cancel();
            serve.await?;
            Err(ServeError::WalFailed { reason })
        }
    }
}

/// Why a LogStore server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error(
        "the WAL failed ({reason}); restart the LogStore: opening it recovers from what is on disk"
    )]
    WalFailed { reason: String },
}

#[cfg(test)]
mod tests {

    #[test]
    fn grpc_timeout_headers_are_read_in_every_unit() {
        use std::time::Duration;
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("10S", Some(Duration::from_secs(10))),
            ("59999m", Some(Duration::from_millis(59_999))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("10", None),
            ("S", None),
            ("x1S", None),
            ("", None),
        ] {
            assert_eq!(super::grpc_timeout(v), want, "{v:?}");
        }
    }
    use super::*;
    use crate::logstore::{LogStore, LogStoreConfig};
    use crate::proto::{Mutation, mutation::Op};
    use std::time::Duration;

    /// The server tells the log which sequence each append of a stream follows (the last one
    /// its writer sent on the stream): an append after one of its stream that was sent but
    /// never written (lost with a leader change) is refused with nothing written, so the
    /// writer's resend of the lost one is not refused as stale. Here the stream's state
    /// says sequence 3 was sent, but only 1 and 2 reached the log; on both kinds of log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_stream_says_what_each_append_follows() {
        let single_dir = tempfile::tempdir().unwrap();
        let (single, _) =
            LogStore::open(LogStoreConfig::new(single_dir.path().to_path_buf())).unwrap();
        let replica_dir = tempfile::tempdir().unwrap();
        let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
        let replica = crate::logstore::raft::node::Replica::start(
            crate::logstore::raft::node::ReplicaConfig::new(1, peers, replica_dir.path().into()),
        )
        .await
        .unwrap();
        for _ in 0..250 {
            if replica.is_leader() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (kind, log) in [
            ("single", ServedLog::from(single)),
            ("replica", replica.into()),
        ] {
            let request = |writer: &str, sequence| AppendRequest {
                mutations: vec![Mutation {
                    key: b"k".to_vec().into(),
                    op: Some(Op::Add(1)),
                }],
                writer_id: writer.into(),
                sequence,
                append_start_micros: 0,
                log_id: String::new(),
            };
            let mut stream = StreamState::default();
            let send = async |stream: &mut StreamState, writer: &str, sequence| {
                let pending = submit(&log, None, request(writer, sequence), "", stream).await;
                pending.unwrap().await.unwrap().unwrap()
            };
            for s in 1..=2 {
                assert_eq!(send(&mut stream, "w", s).await.unwrap().index, s, "{kind}");
            }
            let written = log.bounds().1;
            stream.sent.insert("w".into(), 3);
            let after_lost = send(&mut stream, "w", 4).await;
            assert!(
                matches!(after_lost, Err(LogStoreError::Gap { follows: 3, .. })),
                "{kind}: {after_lost:?}"
            );
            assert_eq!(log.bounds().1, written, "{kind}: nothing was written");
            // Another writer's first append on the same stream follows nothing of its own.
            let other = send(&mut stream, "v", 7).await.unwrap();
            assert_eq!(
                (other.index, other.duplicate),
                (written + 1, false),
                "{kind}"
            );
        }
    }

    /// A LogStore whose WAL failed stops serving, with the reason, so that its process exits
    /// and a restart recovers from the disk; it used to stay up refusing every append while
    /// its health still said SERVING.
    #[tokio::test]
    async fn a_wal_failure_stops_the_server_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogStoreConfig::new(dir.path().to_path_buf());
        config.segment_bytes = Some(crate::wal::MIN_SEGMENT_BYTES);
        let (log, _) = LogStore::open(config).unwrap();
        // Whatever index the next segment starts at, its file cannot be created: a
        // directory holds its name, so the roll fails as a disk error would.
        for index in 2..2_000u64 {
            std::fs::create_dir(dir.path().join(format!("{index:020}.wal"))).unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve(log, listener, CancellationToken::new()));
        let client = crate::client::Log::connect(&addr).await.unwrap();
        let entry = || {
            vec![Mutation {
                key: b"k".to_vec().into(),
                op: Some(Op::Put(vec![7; 1024].into())),
            }]
        };
        let mut refused = None;
        for _ in 0..100 {
            if let Err(e) = client.append(entry(), None, 0).await {
                refused = Some(e);
                break;
            }
        }
        assert!(refused.is_some(), "the WAL never failed");
        drop(client);
        let stopped = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops by itself")
            .expect("no panic");
        match stopped {
            Err(ServeError::WalFailed { reason }) => assert!(!reason.is_empty()),
            other => panic!("expected WalFailed, got {other:?}"),
        }
    }
}
