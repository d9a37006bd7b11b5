//! Replica-to-replica RPCs of the Raft group, over tonic: the `Replication` service each
//! replica serves beside `LogStore`, and the client openraft uses to reach its peers.
//!
//! Each message carries one openraft request or response (postcard), the sender's log id
//! and both replica ids. A replica refuses a message addressed to another id (a `--peers`
//! list that maps an id to the wrong address) and one from a replica of another log (two
//! groups wired together by mistake): both would otherwise let Raft mix two logs.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::machine::Machine;
use super::{Node, NodeId, Raft, TypeConfig};
use crate::grpc::Reason;
use crate::proto::RaftMessage;
use crate::proto::replication_client::ReplicationClient;
use crate::proto::replication_server::Replication;

/// Largest replication message (a batch of entries or a snapshot chunk).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, Status> {
    postcard::to_allocvec(v)
        .map(bytes::Bytes::from)
        .map_err(|e| Status::internal(format!("encoding a replication message: {e}")))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(b)
        .map_err(|e| Reason::Invalid.status(format!("replication message does not decode: {e}")))
}

/// The server half: hands each checked message to the local Raft.
pub struct ReplicationService {
    pub me: NodeId,
    pub raft: Raft,
    pub machine: Machine,
    /// When a refusal was last logged (refusals repeat at the heartbeat rate).
    pub last_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ReplicationService {
    pub fn new(me: NodeId, raft: Raft, machine: Machine) -> Self {
        ReplicationService {
            me,
            raft,
            machine,
            last_warned: std::sync::Mutex::new(None),
        }
    }

    fn check(&self, m: &RaftMessage) -> Result<(), Status> {
        let refusal = self.refusal(m);
        if let Err(status) = &refusal {
            let mut last = self
                .last_warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    from = m.from,
                    message = status.message(),
                    "refused a replication message"
                );
            }
        }
        refusal
    }

    fn refusal(&self, m: &RaftMessage) -> Result<(), Status> {
        if m.to != self.me {
            return Err(Reason::WrongPeer.status(format!(
                "replica {} got a message from replica {} meant for replica {}: the sender's --peers maps {} to this replica's address",
                self.me, m.from, m.to, m.to
            )));
        }
        if let Some(mine) = self.machine.log_id()
            && !m.log_id.is_empty()
            && m.log_id != mine
        {
            return Err(Reason::WrongLog.status(format!(
                "replica {} of log {mine} refused replica {} of log {}: they belong to different logs",
                self.me, m.from, m.log_id
            )));
        }
        Ok(())
    }

    fn reply<T: Serialize>(&self, from: NodeId, v: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage {
            payload: encode(v)?,
            log_id: self.machine.log_id().unwrap_or_default(),
            from: self.me,
            to: from,
        }))
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.check(&m)?;
        let req: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
        let res = self.raft.append_entries(req).await;
        self.reply(m.from, &res)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.check(&m)?;
        let req: VoteRequest<NodeId> = decode(&m.payload)?;
        let res = self.raft.vote(req).await;
        self.reply(m.from, &res)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        self.check(&m)?;
        let req: InstallSnapshotRequest<TypeConfig> = decode(&m.payload)?;
        let res = self.raft.install_snapshot(req).await;
        self.reply(m.from, &res)
    }
}

/// The client half: one [`Peer`] per target, connected lazily.
pub struct Network {
    pub me: NodeId,
    pub machine: Machine,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            me: self.me,
            target,
            addr: node.addr.clone(),
            machine: self.machine.clone(),
            client: None,
        }
    }
}

/// A connection to one peer.
pub struct Peer {
    me: NodeId,
    target: NodeId,
    addr: String,
    machine: Machine,
    client: Option<ReplicationClient<Channel>>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Peer {
    fn client(&mut self) -> Result<ReplicationClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let c = ReplicationClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.client()?;
        let payload = encode(req).map_err(|s| NetworkError::new(&s))?;
        let mut request = Request::new(RaftMessage {
            payload,
            log_id: self.machine.log_id().unwrap_or_default(),
            from: self.me,
            to: self.target,
        });
        request.set_timeout(option.hard_ttl());
        let out = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let m = match out {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // A refusal by the peer itself (wrong peer, wrong log) is worth a warning; a
                // peer that is down is routine while it restarts.
                if Reason::of(&status).is_some() {
                    tracing::warn!(peer = self.target, addr = %self.addr, %status, "a peer refused replication");
                }
                // An answer later than the RPC's deadline (openraft gives an AppendEntries one
                // heartbeat) comes from a peer that is up but slow, e.g. in an fsync: retried
                // at the next heartbeat, not backed off. Anything else (refused, reset, no
                // route) makes openraft back off per [`Peer::backoff`].
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) {
                    return Err(NetworkError::new(&status).into());
                }
                self.client = None;
                return Err(Unreachable::new(&status).into());
            }
        };
        let res: Result<Resp, E> = decode(&m.payload).map_err(|s| NetworkError::new(&s))?;
        res.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    /// How long replication to an unreachable peer pauses before each retry: from 20 ms,
    /// doubling up to 500 ms (openraft's default is 500 ms from the first failure, which
    /// holds a peer that was only restarting out of the majority for half a second).
    fn backoff(&self) -> openraft::network::Backoff {
        use backon::BackoffBuilder as _;
        openraft::network::Backoff::new(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500))
                .with_factor(2.0)
                .without_max_times()
                .build(),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
