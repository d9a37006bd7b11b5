//! Replica-to-replica RPCs of the Raft group, over tonic: the `Replication` service each
//! replica serves beside `LogStore`, and the client openraft uses to reach its peers.
//!
//! Each message carries one openraft request or response (postcard), the sender's log id
//! and both replica ids. A replica refuses a message addressed to another id (a `--peers`
//! list that maps an id to the wrong address), one from a replica of another log (two
//! groups wired together by mistake), and those from an id two processes speak as (see
//! `speakers`): each would otherwise let Raft mix two logs.
//!
//! The leader's AppendEntries to a follower go on one gRPC stream per replication session
//! (`AppendStream`): each is sent as soon as openraft has it, while the follower still writes
//! the ones before (openraft's `stream_append`, pipelined on both sides), instead of one call
//! waiting for the answer to the previous. Votes are single calls; a snapshot is one call, or
//! a stream of pieces when it is larger than `--snapshot-chunk-bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::BoxStream;
use openraft::async_runtime::WatchReceiver as _;
use openraft::base::BoxFuture;
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::{AnyError, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::machine::Machine;
use super::{Node, NodeId, Raft, SnapshotData, TypeConfig, Vote};
use crate::grpc::Reason;
use crate::proto::RaftMessage;
use crate::proto::replication_client::ReplicationClient;
use crate::proto::replication_server::Replication;

mod speakers;
mod unanswered;

pub use speakers::Incarnation;
use speakers::Speakers;
use unanswered::{STREAM_STALL, Unanswered, carry_time};

/// Largest replication message (a batch of entries or a snapshot chunk).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Default `--snapshot-chunk-bytes`: a snapshot larger than this goes in pieces of it.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024 * 1024;
/// Bounds of `--snapshot-chunk-bytes`: 4 KiB, and a message's limit less room for its
/// envelope.
pub const SNAPSHOT_CHUNK_BYTES_RANGE: std::ops::RangeInclusive<usize> =
    4096..=MAX_MESSAGE_BYTES - 1024 * 1024;
/// The largest snapshot a replica takes in pieces (the writer table is bounded by
/// `--max-writers`, each with at most 4,096 remembered appends of ~17 bytes).
pub const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024 * 1024;
/// How fast a snapshot is assumed to travel (and be installed) at the least, for its
/// deadline: 512 s more per GiB.
const SNAPSHOT_BYTES_PER_SEC: usize = 2 * 1024 * 1024;

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, Status> {
    postcard::to_allocvec(v)
        .map(bytes::Bytes::from)
        .map_err(|e| Status::internal(format!("encoding a replication message: {e}")))
}

/// One openraft message from replica `from` to replica `to`, with the sender's log id.
fn envelope<T: Serialize>(
    v: &T,
    machine: &Machine,
    from: &Sender,
    to: NodeId,
) -> Result<RaftMessage, Status> {
    Ok(envelope_bytes(encode(v)?, machine, from, to))
}

/// A message from replica `from` to replica `to` carrying `payload` (encoded already, or a
/// piece of an encoded snapshot).
fn envelope_bytes(
    payload: bytes::Bytes,
    machine: &Machine,
    from: &Sender,
    to: NodeId,
) -> RaftMessage {
    RaftMessage {
        payload,
        log_id: machine.log_id().unwrap_or_default(),
        from: from.id,
        to,
        max_entry_bytes: from.max_entry_bytes,
        heartbeat_millis: from.heartbeat_millis,
        snapshot_bytes: 0,
        incarnation: from.incarnation.mine,
    }
}

/// Who sends a replication message: this replica's id, its `--max-entry-bytes` and its
/// `--heartbeat` (ms), which every replica of the log must share, and this process's
/// [`Incarnation`].
#[derive(Clone, Debug)]
pub struct Sender {
    pub id: NodeId,
    pub max_entry_bytes: u64,
    pub heartbeat_millis: u64,
    pub incarnation: Incarnation,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(b)
        .map_err(|e| Reason::Invalid.status(format!("replication message does not decode: {e}")))
}

/// Whether a replica that started on an empty directory still catches up. Until it holds
/// what the leader had committed when it first heard from one, it refuses to vote for a
/// candidate of a group that has entries: were it a replica that lost its disk, it could
/// otherwise vote a second time in a term it already voted in, or help elect a leader that
/// lacks entries it had itself acknowledged before the loss. (Raft assumes a voter's log
/// and vote survive; this is the rule for when they did not.) A new group's first election,
/// whose candidate holds only the membership, is not held back.
#[derive(Default)]
pub struct CatchingUp {
    /// `None`: caught up (or never empty). `Some(None)`: empty, no leader heard yet.
    /// `Some(Some(i))`: must apply Raft index `i` first.
    state: std::sync::Mutex<Option<Option<u64>>>,
}

impl CatchingUp {
    /// For a replica that starts on an empty directory.
    pub fn empty() -> Self {
        CatchingUp {
            state: std::sync::Mutex::new(Some(None)),
        }
    }

    /// A leader's AppendEntries with its commit index was received.
    fn heard(&self, leader_commit: Option<u64>) {
        let mut st = lock(&self.state);
        if let Some(None) = *st {
            *st = Some(Some(leader_commit.unwrap_or(0)));
        }
    }

    /// What is still missing, given what the replica applied; `None` once caught up.
    fn missing(&self, applied: u64) -> Option<Option<u64>> {
        let mut st = lock(&self.state);
        if let Some(Some(need)) = *st
            && applied >= need
        {
            *st = None;
        }
        *st
    }
}

/// What a replica checks on every message it receives: that it is addressed to this replica
/// and comes from a replica of the same log. Cloned into each append stream.
#[derive(Clone)]
struct Gate {
    me: NodeId,
    /// This replica's `--max-entry-bytes`.
    max_entry_bytes: u64,
    /// This replica's `--heartbeat` (ms).
    heartbeat_millis: u64,
    /// This process's incarnation, and who spoke as each id lately.
    incarnation: Incarnation,
    machine: Machine,
    /// When a refusal was last logged (refusals repeat at the heartbeat rate).
    last_warned: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Gate {
    fn check(&self, m: &RaftMessage) -> Result<(), Status> {
        let refusal = self.refusal(m);
        if let Err(status) = &refusal {
            self.note_refusal(m.from, status);
        }
        refusal
    }

    /// Logs a refusal, at most once every 10 s (refusals repeat at the heartbeat rate).
    fn note_refusal(&self, from: NodeId, status: &Status) {
        if due(&self.last_warned, SAY_AGAIN_EVERY) {
            tracing::warn!(
                from,
                message = status.message(),
                "refused a replication message"
            );
        }
    }

    fn refusal(&self, m: &RaftMessage) -> Result<(), Status> {
        if m.from == 0 || m.to == 0 {
            return Err(Reason::Invalid.status(format!(
                "a replication message names replica {} as its sender and {} as its receiver: replica ids start at 1",
                m.from, m.to
            )));
        }
        if m.to != self.me {
            return Err(Reason::WrongPeer.status(format!(
                "replica {} got a message from replica {} meant for replica {}: the sender's --peers maps {} to this replica's address",
                self.me, m.from, m.to, m.to
            )));
        }
        if m.max_entry_bytes != 0 && m.max_entry_bytes != self.max_entry_bytes {
            return Err(Reason::EntryLimit.status(format!(
                "replica {} has --max-entry-bytes {} and replica {} {}: every replica of a log \
                 must have the same limit (an entry one accepts, a player reading another \
                 could not take); restart them with one value",
                self.me, self.max_entry_bytes, m.from, m.max_entry_bytes
            )));
        }
        if m.heartbeat_millis != 0 && m.heartbeat_millis != self.heartbeat_millis {
            return Err(Reason::WrongPeer.status(format!(
                "replica {} has --heartbeat {}ms and replica {} {}ms: every replica of a log \
                 must have the same (a replica with a longer one keeps a longer leader lease and \
                 refuses votes long after the leader is gone); restart them with one value",
                self.me, self.heartbeat_millis, m.from, m.heartbeat_millis
            )));
        }
        let ignore = crate::mutations::on(crate::mutations::Mutation::ReplicaIgnoresLogId);
        if let Some(mine) = self.machine.log_id()
            && !ignore
            && !m.log_id.is_empty()
            && m.log_id != mine
        {
            return Err(Reason::WrongLog.status(format!(
                "replica {} of log {mine} refused replica {} of log {}: they belong to different logs",
                self.me, m.from, m.log_id
            )));
        }
        let ignore = crate::mutations::on(crate::mutations::Mutation::ReplicaIgnoresIncarnations);
        if !self.incarnation.heard(m, self.heartbeat_millis) && !ignore {
            let window = humantime::format_duration(Speakers::window(self.heartbeat_millis));
            return Err(Reason::WrongPeer.status(format!(
                "replica {} hears two processes speak as replica {} within {window}: two \
                 replicas started with --id {}, a copy of replica {}'s directory started beside \
                 it, or the replica restarted just now (then this passes within {window}); Raft \
                 counts votes by id and could elect both, so requests from either are refused \
                 until one of them has been silent for {window}",
                self.me, m.from, m.from, m.from,
            )));
        }
        Ok(())
    }

    /// An answer to replica `to`.
    fn message<T: Serialize>(&self, to: NodeId, v: &T) -> Result<RaftMessage, Status> {
        let me = Sender {
            id: self.me,
            max_entry_bytes: self.max_entry_bytes,
            heartbeat_millis: self.heartbeat_millis,
            incarnation: self.incarnation.clone(),
        };
        envelope(v, &self.machine, &me, to)
    }
}

/// The server half: hands each checked message to the local Raft.
pub struct ReplicationService {
    gate: Gate,
    raft: Raft,
    catching_up: std::sync::Arc<CatchingUp>,
    /// False: `AppendStream` and `InstallSnapshotStream` are answered UNIMPLEMENTED, as by
    /// an older version.
    append_stream: bool,
}

impl ReplicationService {
    pub fn new(
        me: Sender,
        raft: Raft,
        machine: Machine,
        catching_up: std::sync::Arc<CatchingUp>,
    ) -> Self {
        ReplicationService {
            gate: Gate {
                me: me.id,
                max_entry_bytes: me.max_entry_bytes,
                heartbeat_millis: me.heartbeat_millis,
                incarnation: me.incarnation,
                machine,
                last_warned: Default::default(),
            },
            raft,
            catching_up,
            append_stream: true,
        }
    }

    /// Answers `AppendStream` and `InstallSnapshotStream` UNIMPLEMENTED when `serve` is
    /// false (a test of the leader's fallback to single calls, for a peer of a version
    /// without the streams).
    pub fn serving_append_stream(mut self, serve: bool) -> Self {
        self.append_stream = serve;
        self
    }

    fn applied(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Refuses a vote while this replica catches up after starting empty (see
    /// [`CatchingUp`]).
    fn may_vote(&self, req: &VoteRequest<TypeConfig>) -> Result<(), Status> {
        let Some(missing) = self.catching_up.missing(self.applied()) else {
            return Ok(());
        };
        if req.last_log_id.is_none_or(|l| l.index == 0) {
            return Ok(());
        }
        let what = match missing {
            Some(need) => format!(
                "has not yet applied Raft index {need}, which the leader had committed when it first heard from one"
            ),
            None => "has not heard from a leader yet".to_owned(),
        };
        let status = Reason::Unavailable.status(format!(
            "replica {} started on an empty log and {what}: it does not vote until then",
            self.gate.me
        ));
        self.gate.note_refusal(req.vote.leader_id.node_id, &status);
        Err(status)
    }

    fn reply<T: Serialize>(&self, from: NodeId, v: &T) -> Result<Response<RaftMessage>, Status> {
        self.gate.message(from, v).map(Response::new)
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.gate.check(&m)?;
        let req: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
        self.catching_up.heard(req.leader_commit.map(|l| l.index));
        let res = self.raft.append_entries(req).await;
        self.reply(m.from, &res)
    }

    type AppendStreamStream = BoxStream<'static, Result<RaftMessage, Status>>;

    /// The leader's AppendEntries to this replica, pipelined: each message is checked and
    /// handed to Raft as it arrives, and the answers go back in order. A refused or broken
    /// message ends the stream, after the answers to those before it, with its status.
    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        if !self.append_stream {
            return Err(Status::unimplemented(
                "AppendStream is not served by this replica (--fault-no-append-stream)",
            ));
        }
        let (gate, catching_up) = (self.gate.clone(), self.catching_up.clone());
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None::<Status>));
        let leader = std::sync::Arc::new(AtomicU64::new(0));
        let requests = {
            let (gate, ended, leader) = (gate.clone(), ended.clone(), leader.clone());
            request.into_inner().scan((), move |_, m| {
                let req = m.and_then(|m| {
                    gate.check(&m)?;
                    leader.store(m.from, Ordering::Relaxed);
                    decode::<AppendEntriesRequest<TypeConfig>>(&m.payload)
                });
                futures::future::ready(match req {
                    Ok(req) => {
                        catching_up.heard(req.leader_commit.map(|l| l.index));
                        Some(req)
                    }
                    Err(status) => {
                        *lock(&ended) = Some(status);
                        None
                    }
                })
            })
        };
        let answers = self.raft.stream_append(requests).map(move |res| {
            let res = res.map_err(RaftError::<TypeConfig>::Fatal);
            gate.message(leader.load(Ordering::Relaxed), &res)
        });
        let why = futures::stream::once(async move { lock(&ended).take().map(Err) });
        Ok(Response::new(Box::pin(
            answers.chain(why.filter_map(futures::future::ready)),
        )))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.gate.check(&m)?;
        let req: VoteRequest<TypeConfig> = decode(&m.payload)?;
        self.may_vote(&req)?;
        let res = self.raft.vote(req).await;
        self.reply(m.from, &res)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.gate.check(&m)?;
        let req: VoteRequest<TypeConfig> = decode(&m.payload)?;
        self.may_vote(&req)?;
        let res = self.raft.pre_vote(req).await;
        self.reply(m.from, &res)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.gate.check(&m)?;
        self.install(m.from, decode(&m.payload)?).await
    }

    /// Gathers the pieces (each message checked as a single one is) and installs the
    /// snapshot they make once the stream ends.
    async fn install_snapshot_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        if !self.append_stream {
            return Err(Status::unimplemented(
                "InstallSnapshotStream is not served by this replica (--fault-no-append-stream)",
            ));
        }
        let mut pieces = request.into_inner();
        let (mut data, mut from, mut count) = (Vec::new(), None, 0usize);
        while let Some(m) = pieces.message().await? {
            self.gate.check(&m)?;
            let total = usize::try_from(m.snapshot_bytes).unwrap_or(usize::MAX);
            if total > MAX_SNAPSHOT_BYTES {
                return Err(Reason::Invalid.status(format!(
                    "a snapshot of {total} bytes, above the {MAX_SNAPSHOT_BYTES} a replica takes"
                )));
            }
            if *from.get_or_insert(m.from) != m.from {
                return Err(Reason::Invalid.status(format!(
                    "pieces of one snapshot from replicas {} and {}",
                    from.unwrap_or_default(),
                    m.from
                )));
            }
            if data.len() + m.payload.len() > total {
                return Err(Reason::Invalid
                    .status(format!("pieces of a snapshot of {total} bytes carry more")));
            }
            data.reserve_exact(snapshot_room(
                data.len(),
                data.capacity(),
                m.payload.len(),
                total,
            ));
            data.extend_from_slice(&m.payload);
            count += 1;
        }
        let Some(from) = from else {
            return Err(Reason::Invalid.status("a snapshot stream without a piece"));
        };
        tracing::info!(
            from,
            pieces = count,
            bytes = data.len(),
            "received a snapshot in pieces"
        );
        let req = decode(&data)?;
        drop(data);
        self.install(from, req).await
    }
}

/// How much more to reserve for a snapshot's pieces holding `len` bytes (in `capacity`)
/// before one of `piece` bytes, of a snapshot whose sender says it has `total`: doubled as
/// the pieces come, never past `total` (the snapshot is held twice at most, here and
/// decoded). It used to reserve `total` at the first piece: a peer's claim alone (one byte
/// said to be the first of 16 GiB) could make the replica allocate that much.
fn snapshot_room(len: usize, capacity: usize, piece: usize, total: usize) -> usize {
    let need = len + piece;
    if need <= capacity {
        return 0;
    }
    need.saturating_mul(2).min(total).max(need) - len
}

impl ReplicationService {
    /// Hands a snapshot from replica `from` to Raft and answers with its verdict.
    async fn install(
        &self,
        from: NodeId,
        req: FullSnapshot,
    ) -> Result<Response<RaftMessage>, Status> {
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta: req.meta,
            snapshot: std::io::Cursor::new(req.data),
        };
        let res = self
            .raft
            .install_full_snapshot(req.vote, snapshot)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        self.reply(from, &res)
    }
}

/// A whole snapshot in one message (a [`super::machine::Base`]: indexes and the writer
/// table, never entries, so it stays small).
#[derive(Serialize, Deserialize)]
struct FullSnapshot {
    vote: Vote,
    meta: SnapshotMetaOf<TypeConfig>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The client half: one [`Peer`] per target, connected lazily.
pub struct Network {
    me: Sender,
    machine: Machine,
    /// A snapshot larger than this goes in pieces of this size (`--snapshot-chunk-bytes`).
    snapshot_chunk: usize,
    /// When each target was last logged as unreachable, shared by every [`Peer`] openraft
    /// makes for it (its heartbeat and each replication session have their own).
    unreachable: std::collections::HashMap<NodeId, Arc<Mutex<Option<std::time::Instant>>>>,
}

impl Network {
    pub fn new(me: Sender, machine: Machine, snapshot_chunk: usize) -> Self {
        Network {
            me,
            machine,
            snapshot_chunk,
            unreachable: Default::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            me: self.me.clone(),
            target,
            addr: node.addr.clone(),
            machine: self.machine.clone(),
            snapshot_chunk: self.snapshot_chunk,
            no_snapshot_stream: false,
            client: None,
            unary_only: false,
            last_unreachable: self.unreachable.entry(target).or_default().clone(),
        }
    }
}

/// A connection to one peer.
pub struct Peer {
    me: Sender,
    target: NodeId,
    addr: String,
    machine: Machine,
    snapshot_chunk: usize,
    /// The peer answered a snapshot in pieces as a version without them would.
    no_snapshot_stream: bool,
    client: Option<ReplicationClient<Channel>>,
    /// The peer has no `AppendStream` (an older version, during a rolling upgrade): each
    /// AppendEntries goes as its own call, one at a time.
    unary_only: bool,
    /// When this target was last logged as unreachable (see [`Peer::failed`]).
    last_unreachable: Arc<Mutex<Option<std::time::Instant>>>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
}

impl Peer {
    fn client(&mut self) -> Result<ReplicationClient<Channel>, Unreachable<TypeConfig>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let c = ReplicationClient::new(crate::grpc::lazy(endpoint, &crate::grpc::Expected::Log))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Notes who answered (see [`Speakers`]): a follower speaks only in answers, and a
    /// second process speaking as it is told apart only against them. Answers are taken
    /// either way: they come from the address the membership names.
    fn answered(&self, m: &RaftMessage) {
        if m.from == self.target {
            self.me.incarnation.heard(m, self.me.heartbeat_millis);
        }
    }

    /// Sends one message; the peer's answer is the result of its Raft's handler, whose only
    /// error is that its Raft stopped (counted as an unreachable peer).
    async fn call<Req, Resp>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut client = self.client()?;
        let m = envelope(req, &self.machine, &self.me, self.target)
            .map_err(|s| NetworkError::new(&s))?;
        // An AppendEntries also gets the time its bytes take (a large entry alone).
        let carry = match rpc {
            Rpc::Append => carry_time(m.payload.len()),
            Rpc::Vote | Rpc::PreVote => Duration::ZERO,
        };
        let mut request = Request::new(m);
        request.set_timeout(timeout + carry);
        let out = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::PreVote => client.pre_vote(request).await,
        };
        let m = match out {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.failed(status)),
        };
        self.answered(&m);
        let res: Result<Resp, RaftError<TypeConfig>> =
            decode(&m.payload).map_err(|s| NetworkError::new(&s))?;
        res.map_err(|e| Unreachable::new(&e).into())
    }

    /// Sends an encoded snapshot: in one message (as a replica of an older version takes it)
    /// when it fits in `snapshot_chunk`, else as a stream of pieces of that size, which no
    /// longer caps a snapshot at one message's limit (a writer table grows with the appends
    /// retention has not released yet, and a replica that needed a larger snapshot could
    /// never catch up).
    async fn send_snapshot(
        &mut self,
        encoded: bytes::Bytes,
        timeout: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client()?;
        // One message fits what the replication limit allows (less room for its envelope).
        let fits_one = encoded.len() <= *SNAPSHOT_CHUNK_BYTES_RANGE.end();
        let mut out = None;
        if encoded.len() > self.snapshot_chunk && !(fits_one && self.no_snapshot_stream) {
            let total = encoded.len() as u64;
            let pieces: Vec<RaftMessage> = (0..encoded.len())
                .step_by(self.snapshot_chunk.max(1))
                .map(|at| {
                    let end = (at + self.snapshot_chunk).min(encoded.len());
                    let piece = encoded.slice(at..end);
                    let mut m = envelope_bytes(piece, &self.machine, &self.me, self.target);
                    m.snapshot_bytes = total;
                    m
                })
                .collect();
            tracing::info!(
                peer = self.target,
                bytes = encoded.len(),
                pieces = pieces.len(),
                "sending a snapshot in pieces"
            );
            let mut request = Request::new(futures::stream::iter(pieces));
            request.set_timeout(timeout);
            match client.install_snapshot_stream(request).await {
                // A replica of an older version has no stream (plaintext: UNIMPLEMENTED; over
                // TLS its authorization refuses a method it does not know): a snapshot that
                // fits one message goes as one, to this peer from now on.
                Err(s)
                    if fits_one
                        && (s.code() == tonic::Code::Unimplemented
                            || Reason::of(&s) == Some(Reason::Forbidden)) =>
                {
                    tracing::info!(peer = self.target, addr = %self.addr, "the peer takes no snapshot in pieces (an older version): sending it in one message");
                    self.no_snapshot_stream = true;
                }
                other => out = Some(other),
            }
        }
        let out = match out {
            Some(out) => out,
            None => {
                let m = envelope_bytes(encoded, &self.machine, &self.me, self.target);
                let mut request = Request::new(m);
                request.set_timeout(timeout);
                client.install_snapshot(request).await
            }
        };
        let m = match out {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.failed(status)),
        };
        self.answered(&m);
        let res: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
            decode(&m.payload).map_err(|s| NetworkError::new(&s))?;
        res.map_err(|e| Unreachable::new(&e).into())
    }

    /// What a failed call or stream means to openraft.
    fn failed(&mut self, status: Status) -> RPCError<TypeConfig> {
        // A refusal by the peer itself (wrong peer, wrong log) is worth a warning; a peer
        // that is down is routine while it restarts.
        if Reason::of(&status).is_some() {
            tracing::warn!(peer = self.target, addr = %self.addr, %status, "a peer refused replication");
        } else if crate::grpc::not_served(&status) && due(&self.last_unreachable, SAY_AGAIN_EVERY) {
            // Not a log replica at all (a shard, a single-node LogStore): nothing else says
            // so but openraft's own warning, which names neither the address nor the cause.
            tracing::warn!(peer = self.target, addr = %self.addr, %status, "the server at this peer's address serves no log replication (a shard, or a single-node LogStore?): fix --peers (said again every 10 s)");
        } else if status.code() == tonic::Code::Unavailable
            && due(&self.last_unreachable, SAY_AGAIN_EVERY)
        {
            // openraft's own warning, at every heartbeat (~20/s), is filtered out by default
            // in `cli`.
            tracing::warn!(peer = self.target, addr = %self.addr, %status, "a peer is unreachable (said again every 10 s while it stays so)");
        }
        // An answer later than the RPC's deadline comes from a peer that is up but slow, e.g.
        // in an fsync: retried at once, not backed off. Anything else (refused, reset, no
        // route) makes openraft back off (`Config::backoff`).
        if matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ) {
            return NetworkError::new(&status).into();
        }
        self.client = None;
        Unreachable::new(&status).into()
    }

    /// What a failed append stream means; a peer without one is sent single calls from then
    /// on.
    fn stream_failed(&mut self, status: Status) -> RPCError<TypeConfig> {
        if status.code() != tonic::Code::Unimplemented {
            return self.failed(status);
        }
        tracing::info!(peer = self.target, addr = %self.addr, "the peer has no append stream (an older version): sending it one AppendEntries at a time");
        self.unary_only = true;
        NetworkError::new(&status).into()
    }

    /// Opens an append stream to the peer: every request `input` yields is sent at once,
    /// without waiting for the answers to those before it (which the peer's Raft returns in
    /// order). A stream with a request unanswered for [`STREAM_STALL`] (and its bytes'
    /// [`carry_time`]) is given up (a peer
    /// that went silent without a reset); openraft then opens another.
    async fn open_stream<S>(&mut self, input: S) -> Result<AppendStream<'_>, RPCError<TypeConfig>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static,
    {
        let mut client = self.client()?;
        let unanswered = std::sync::Arc::new(Mutex::new(Unanswered::default()));
        let (me, to, machine, sent) = (
            self.me.clone(),
            self.target,
            self.machine.clone(),
            unanswered.clone(),
        );
        let outbound = input.scan((), move |_, req| {
            let m = envelope(&req, &machine, &me, to);
            futures::future::ready(match m {
                Ok(m) => {
                    lock(&sent).sent(m.payload.len());
                    Some(m)
                }
                Err(status) => {
                    // Ends the stream; openraft resends from what the peer acknowledged.
                    tracing::error!(peer = to, %status, "an AppendEntries does not encode");
                    None
                }
            })
        });
        let opened = tokio::time::timeout(STREAM_STALL, client.append_stream(outbound)).await;
        let answers = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(self.stream_failed(status)),
            Err(_) => {
                let e = NetworkError::new(&AnyError::error(format!(
                    "the peer did not open an append stream within {STREAM_STALL:?}"
                )));
                return Err(e.into());
            }
        };
        Ok(AppendStream {
            peer: self,
            answers,
            unanswered,
        })
    }
}

/// How often a condition that persists (a refused peer, an unreachable one) is logged again.
const SAY_AGAIN_EVERY: Duration = Duration::from_secs(10);

/// Whether something last said at `*last` is to be said again now (then records now).
fn due(last: &Mutex<Option<std::time::Instant>>, every: Duration) -> bool {
    let mut last = lock(last);
    if last.is_some_and(|t| t.elapsed() <= every) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// Answers to a stream of AppendEntries, as openraft takes them.
type Answers<'a> =
    openraft::base::BoxStream<'a, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// The answering half of an open append stream.
struct AppendStream<'a> {
    peer: &'a mut Peer,
    answers: Streaming<RaftMessage>,
    /// The requests sent and not yet answered.
    unanswered: std::sync::Arc<Mutex<Unanswered>>,
}

impl<'a> AppendStream<'a> {
    /// The next answer, in the order of the requests; `None` once the stream ended.
    async fn next(
        &mut self,
    ) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        loop {
            // Nothing asked, nothing owed: an idle stream waits on (and looks again).
            let due = lock(&self.unanswered)
                .due()
                .unwrap_or_else(|| Instant::now() + STREAM_STALL);
            let m = match tokio::time::timeout_at(due.into(), self.answers.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => return Some(Err(self.peer.stream_failed(status))),
                Err(_) => match lock(&self.unanswered).overdue() {
                    None => continue,
                    Some(waited) => {
                        let e = NetworkError::new(&AnyError::error(format!(
                            "replica {} left an AppendEntries unanswered for {waited:?}",
                            self.peer.target
                        )));
                        return Some(Err(e.into()));
                    }
                },
            };
            lock(&self.unanswered).answered();
            self.peer.answered(&m);
            let res: Result<StreamAppendResult<TypeConfig>, RaftError<TypeConfig>> =
                match decode(&m.payload) {
                    Ok(r) => r,
                    Err(s) => return Some(Err(NetworkError::new(&s).into())),
                };
            return Some(res.map_err(|e| Unreachable::new(&e).into()));
        }
    }

    /// As openraft wants it: ends after the first error or refused append.
    fn into_stream(self) -> Answers<'a> {
        Box::pin(futures::stream::unfold(Some(self), |st| async move {
            let mut st = st?;
            let answer = st.next().await?;
            let go_on = matches!(answer, Ok(Ok(_)));
            Some((answer, go_on.then_some(st)))
        }))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    /// AppendEntries pipelined on one gRPC stream per session (see `Peer::open_stream`);
    /// one call at a time to a peer without it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<Answers<'s>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        if self.unary_only {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // The first request is taken before dialing: openraft waits out its backoff
            // (after errors from this peer) while it produces a request, so a peer refusing
            // connections is dialed at the backoff's pace. Dialing first made a retry loop of
            // ~13,000 attempts (and two WARN lines each) per second while a follower was down.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as Answers<'s>);
            };
            let input = futures::stream::once(futures::future::ready(first)).chain(input);
            Ok(self.open_stream(input).await?.into_stream())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let encoded = encode(&req).map_err(|s| NetworkError::new(&s))?;
        drop(req);
        let timeout = option.hard_ttl().max(Duration::from_secs(10))
            + Duration::from_secs((encoded.len() / SNAPSHOT_BYTES_PER_SEC) as u64);
        let (bytes, started) = (encoded.len(), std::time::Instant::now());
        let sent = tokio::select! {
            closed = cancel => return Err(closed.into()),
            r = self.send_snapshot(encoded, timeout) => r,
        };
        if let Err(e) = &sent {
            // openraft tries again from the first byte; a snapshot that keeps failing (one
            // too large for the peer, a link too slow for its deadline) must not do so
            // without a word.
            tracing::warn!(peer = self.target, bytes, elapsed = ?started.elapsed(), ?timeout, error = %e, "sending a snapshot failed; it is sent again");
        }
        sent.map_err(StreamingError::from)
    }
}

#[cfg(test)]
mod tests;
