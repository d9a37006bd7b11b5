//! Thin client helpers over the generated stubs, for the CLI, the demo, the bench and tests.

use tonic::transport::Channel;

use crate::grpc;
use crate::proto::log_store_client::LogStoreClient;
use crate::proto::shard_client::ShardClient;
use crate::proto::{
    AppendRequest, AppliedRequest, AppliedResponse, BoundsRequest, DumpRequest, Entry, Mutation,
    ReadRequest, StatsRequest, StatsResponse,
};

/// Errors talking to our servers.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] grpc::GrpcError),
    #[error("{what} at {addr}: {status}{}", not_served_hint(status))]
    Rpc {
        what: &'static str,
        addr: String,
        status: tonic::Status,
    },
    /// An answer came from another log than the one this client met first: its addresses
    /// (the list given, or a leader a replica named) reach more than one log.
    #[error(
        "{what} at {addr}: the answer is from log {got}, and this client writes and reads log \
         {expected} (the first it met); the addresses given, or the leader a replica named, \
         reach another log"
    )]
    WrongLog {
        what: &'static str,
        addr: String,
        expected: String,
        got: String,
    },
}

/// What to check when a server answers that it does not serve the call: the address is
/// another kind of server (a shard's given for a LogStore's, or the reverse).
fn not_served_hint(status: &tonic::Status) -> &'static str {
    if grpc::not_served(status) {
        " (the server at this address does not serve this API: is it another kind of \
         server, a shard's address where a LogStore's is wanted or the reverse?)"
    } else {
        ""
    }
}

/// Why the server that answered a LogStore call with `status` is not a LogStore, when its
/// answer says so: it does not serve the LogStore API (UNIMPLEMENTED: a shard's address),
/// or, under TLS, its certificate names another part. Retrying changes neither.
pub fn not_a_log_store(status: &tonic::Status) -> Option<String> {
    if grpc::not_served(status) {
        return Some(format!(
            "it does not serve the LogStore API (Bounds answered UNIMPLEMENTED: {})",
            status.message()
        ));
    }
    crate::tls::client::wrong_server(status).map(ToString::to_string)
}

/// Asks each of the comma-separated `addrs` at once which log it serves (`Bounds`, each
/// within 5 s): the answers, in the order given; an address that does not
/// answer in time (or cannot be dialed) is left out. For a caller given the replicas of one
/// log, to refuse a list that reaches two.
pub async fn log_ids_at(addrs: &str) -> Vec<(String, Result<String, tonic::Status>)> {
    log_ids_at_with(addrs, crate::tls::process()).await
}

/// [`log_ids_at`] with the given TLS identity (`None`: plaintext), whatever the process's
/// (the operator dials each LogPlayer's log with that LogPlayer's certificate).
pub async fn log_ids_at_with(
    addrs: &str,
    tls: Option<&std::sync::Arc<crate::tls::Tls>>,
) -> Vec<(String, Result<String, tonic::Status>)> {
    let asks = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|addr| async move {
            let channel = grpc::connect_lazy_with(addr, &grpc::Expected::Log, tls).ok()?;
            let mut client = LogStoreClient::new(channel);
            let mut request = tonic::Request::new(BoundsRequest {});
            request.set_timeout(BOUNDS_WAIT);
            let asked = tokio::time::timeout(BOUNDS_WAIT, client.bounds(request))
                .await
                .ok()?;
            Some((addr.to_owned(), asked.map(|b| b.into_inner().log_id)))
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Names the call and the address in an RPC's error.
fn rpc_err(addr: &str, what: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    let addr = addr.to_owned();
    move |status| ClientError::Rpc { what, addr, status }
}

/// Awaits one call, naming it and the address in its error.
async fn call<T>(
    addr: &str,
    what: &'static str,
    rpc: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    rpc.await
        .map(tonic::Response::into_inner)
        .map_err(rpc_err(addr, what))
}

/// Hands every message of a server stream to `f`, naming the call in an error.
async fn each_message<T>(
    addr: &str,
    what: &'static str,
    mut stream: tonic::Streaming<T>,
    mut f: impl FnMut(T),
) -> Result<(), ClientError> {
    while let Some(m) = stream.message().await.map_err(rpc_err(addr, what))? {
        f(m);
    }
    Ok(())
}

pub use crate::grpc::LEADER_KEY;

/// How long a call looks for a leader (elections, restarts) before giving up.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// With several replicas, how long one attempt waits for a replica before trying another
/// (a replica frozen with its sockets open never answers, and TCP keepalive takes far
/// longer to notice).
const ATTEMPT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long `Bounds` waits for its answer.
const BOUNDS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A LogStore client: one address, or every replica of a replicated LogStore as a
/// comma-separated list. Reads go to the replica in use; appends and `Retain` follow the
/// leader (a replica that does not lead names it), and move to another replica when the one
/// in use is down. An append is sent again only when that cannot write it twice: it was
/// refused before being proposed (`not-leader`), or it carries a `(writer_id, sequence)`,
/// which makes a retry return the original index.
///
/// A client stays with the first log it meets: the first answer that names a log id pins
/// it, every append names it (a LogStore serving another log refuses, `wrong-log`, and
/// appends nothing), and an answer from another log fails with [`ClientError::WrongLog`].
#[derive(Clone)]
pub struct Log {
    addrs: std::sync::Arc<[String]>,
    current: std::sync::Arc<std::sync::RwLock<Conn>>,
    /// The id of the first log an answer named (`BoundsResponse.log_id`).
    log_id: std::sync::Arc<std::sync::OnceLock<String>>,
    /// The TLS identity it dials with (`None`: plaintext).
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
    /// Calls sent again after the transport failed under them (see [`Log::resent`]).
    resent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
struct Conn {
    addr: String,
    client: LogStoreClient<Channel>,
}

fn log_client(channel: Channel) -> LogStoreClient<Channel> {
    let limit = crate::limits::message_limit(crate::limits::MAX_MAX_ENTRY_BYTES);
    LogStoreClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// What to do after a refused call.
enum Next {
    /// Send it to this address (the leader, named by a follower).
    To(String),
    /// Try the next address after a pause (no leader known, or the replica is down).
    Rotate,
    /// Give up: the refusal is the answer.
    Fail,
}

/// Whether `status` is the transport failing under a call, which tonic reports as UNKNOWN
/// when the request was being written to a connection the peer closed (a broken pipe, as
/// a killed replica leaves): not an answer of the server.
fn transport_failed(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.code() == tonic::Code::Unknown
        && status
            .source()
            .is_some_and(|s| s.is::<tonic::transport::Error>())
}

impl Log {
    /// How many calls (of this client and its clones) were sent again, to the same or
    /// another replica, after the transport failed under them: a replica killed, frozen or
    /// unreachable mid-call. Only calls safe to send twice are (appends with a writer id,
    /// `Retain`, reads).
    pub fn resent(&self) -> u64 {
        self.resent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects to the first reachable address of `addrs` (one, or a comma-separated list),
    /// with this process's TLS identity if it runs TLS.
    pub async fn connect(addrs: &str) -> Result<Log, ClientError> {
        Log::connect_with(addrs, crate::tls::process().cloned()).await
    }

    /// [`Log::connect`] with the given TLS identity (`None`: plaintext), as the operator
    /// dials each LogPlayer's log with that LogPlayer's admin certificate.
    pub async fn connect_with(
        addrs: &str,
        tls: Option<std::sync::Arc<crate::tls::Tls>>,
    ) -> Result<Log, ClientError> {
        let list: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let mut last_err = None;
        for a in &list {
            match grpc::connect_with(a, &grpc::Expected::Log, tls.as_ref()).await {
                Ok(channel) => {
                    return Ok(Log {
                        current: std::sync::Arc::new(std::sync::RwLock::new(Conn {
                            addr: a.clone(),
                            client: log_client(channel),
                        })),
                        addrs: list.into(),
                        log_id: std::sync::Arc::default(),
                        tls,
                        resent: std::sync::Arc::default(),
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(match last_err {
            Some(e) => ClientError::Connect(e),
            None => ClientError::Connect(grpc::GrpcError::Address {
                addr: addrs.to_owned(),
                reason: "no address given".into(),
            }),
        })
    }

    fn conn(&self) -> Conn {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The address calls go to now.
    pub fn addr(&self) -> String {
        self.conn().addr
    }

    /// The id of the log this client met first, once an answer named one.
    pub fn log_id(&self) -> Option<&str> {
        self.log_id.get().map(String::as_str)
    }

    /// Names the log this client met in `request` (see [`Log`]), for a caller that builds
    /// its own requests for [`Log::append_stream`].
    pub fn stamp(&self, request: &mut AppendRequest) {
        request.log_id = self.log_id().unwrap_or_default().to_owned();
    }

    /// Checks that an answer of `what` from `addr` is from the log this client met first,
    /// pinning `got` if it met none yet; an empty id (a log that has none yet) passes.
    pub fn admit(&self, what: &'static str, addr: &str, got: &str) -> Result<(), ClientError> {
        if got.is_empty() {
            return Ok(());
        }
        let expected = self.log_id.get_or_init(|| got.to_owned());
        if expected == got {
            return Ok(());
        }
        Err(ClientError::WrongLog {
            what,
            addr: addr.to_owned(),
            expected: expected.clone(),
            got: got.to_owned(),
        })
    }

    async fn switch(&self, addr: &str) {
        let client = match grpc::connect_lazy_with(addr, &grpc::Expected::Log, self.tls.as_ref()) {
            Ok(channel) => log_client(channel),
            Err(_) => return,
        };
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Conn {
            addr: addr.to_owned(),
            client,
        };
    }

    async fn rotate(&self, from: &str) {
        let i = self.addrs.iter().position(|a| a == from).unwrap_or(0);
        let next = self.addrs[(i + 1) % self.addrs.len()].clone();
        self.switch(&next).await;
    }

    /// What a refusal of a call means for a retry. `written_twice_ok`: sending it again
    /// cannot duplicate anything (a read, or an append with a writer id).
    fn next(&self, status: &tonic::Status, written_twice_ok: bool) -> Next {
        match grpc::Reason::of(status) {
            Some(grpc::Reason::NotLeader) => match status
                .metadata()
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) => Next::To(leader.to_owned()),
                None => Next::Rotate,
            },
            Some(grpc::Reason::Unavailable) => Next::Rotate,
            // Refused with nothing written: a replica of another log among the addresses
            // (or behind a leader hint); the others may reach this client's log.
            Some(grpc::Reason::WrongLog) if self.addrs.len() > 1 => Next::Rotate,
            Some(grpc::Reason::NotDurable) if written_twice_ok && self.addrs.len() > 1 => {
                Next::Rotate
            }
            Some(_) => Next::Fail,
            // No reason of ours: the transport (a replica down, restarting or frozen; a
            // connection that closed under the call, as a killed replica's does, ends it as
            // CANCELLED).
            None if (matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || transport_failed(status))
                && written_twice_ok =>
            {
                Next::Rotate
            }
            None => Next::Fail,
        }
    }

    /// Runs `call` against the replica in use, following the leader and moving past
    /// replicas that are down, for up to [`LEADER_WAIT`].
    async fn with_leader<T, F, Fut>(
        &self,
        what: &'static str,
        written_twice_ok: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(LogStoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.with_leader_for(what, written_twice_ok, ATTEMPT_WAIT, call)
            .await
    }

    /// [`with_leader`](Self::with_leader) with attempts of up to `attempt_wait` (a call the
    /// server itself may take long to answer).
    async fn with_leader_for<T, F, Fut>(
        &self,
        what: &'static str,
        written_twice_ok: bool,
        attempt_wait: std::time::Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(LogStoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        // A refusal by a replica of another log, said at the end if nothing better came.
        let mut wrong_log = None;
        loop {
            let conn = self.conn();
            let attempt = call(conn.client.clone());
            let answer = if self.addrs.len() > 1 {
                tokio::time::timeout(attempt_wait, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded(format!(
                            "no answer within {attempt_wait:?}"
                        )))
                    })
            } else {
                attempt.await
            };
            let status = match answer {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => status,
            };
            let next = self.next(&status, written_twice_ok);
            if matches!(next, Next::Fail) {
                return Err(rpc_err(&conn.addr, what)(status));
            }
            if tokio::time::Instant::now() >= deadline {
                // Out of time passing over replicas that were down or of another log: the
                // other log's refusal (nothing written) says more than the last one down.
                return Err(wrong_log.unwrap_or_else(|| rpc_err(&conn.addr, what)(status)));
            }
            match grpc::Reason::of(&status) {
                Some(grpc::Reason::WrongLog) => wrong_log = Some(rpc_err(&conn.addr, what)(status)),
                // The transport failed under a call safe to send again: it may have reached
                // the replica, whose log then decides by its `(writer_id, sequence)`.
                None => {
                    self.resent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(_) => {}
            }
            match next {
                Next::To(leader) if leader != conn.addr => self.switch(&leader).await,
                _ => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    self.rotate(&conn.addr).await;
                }
            }
        }
    }

    pub async fn append(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(&str, u64)>,
        start_micros: u64,
    ) -> Result<u64, ClientError> {
        let (writer_id, sequence) = writer.map(|(w, s)| (w.to_owned(), s)).unwrap_or_default();
        let request = AppendRequest {
            mutations,
            writer_id,
            sequence,
            append_start_micros: start_micros,
            log_id: String::new(),
        };
        let idempotent = writer.is_some();
        let r = self
            .with_leader("append", idempotent, |mut c| {
                let mut request = request.clone();
                self.stamp(&mut request);
                async move { c.append(request).await }
            })
            .await?;
        // A LogStore from before `AppendRequest.log_id` ignores it: then this is where
        // another log is noticed, after the entry was written there.
        self.admit("append", &self.addr(), &r.log_id)?;
        Ok(r.index)
    }

    /// Opens a pipelined append stream on the leader: requests go in through `requests`;
    /// one response comes back per request, in order, once it is durable (committed). The
    /// stream ends at the first refusal, a leader change included.
    pub async fn append_stream(
        &self,
        requests: tokio::sync::mpsc::Receiver<AppendRequest>,
    ) -> Result<tonic::Streaming<crate::proto::AppendResponse>, ClientError> {
        // Find the leader first (a cheap call that a follower refuses naming it).
        self.retain_probe().await;
        if self.log_id().is_none() {
            // Learn the log, so that the caller's requests name it (see `stamp`).
            self.describe().await?;
        }
        let conn = self.conn();
        let r = conn
            .client
            .clone()
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .map_err(rpc_err(&conn.addr, "append stream"))?;
        Ok(r.into_inner())
    }

    /// Moves to the leader if the replica in use knows another one (no call if it leads).
    async fn retain_probe(&self) {
        if self.addrs.len() < 2 {
            return;
        }
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        while tokio::time::Instant::now() < deadline {
            let conn = self.conn();
            let mut client = conn.client.clone();
            let bounds = client.bounds(BoundsRequest {});
            if let Ok(Ok(b)) = tokio::time::timeout(ATTEMPT_WAIT, bounds).await {
                match b.into_inner().replica {
                    Some(r) if r.role == "leader" => return,
                    Some(r) if !r.leader_addr.is_empty() && r.leader_addr != conn.addr => {
                        self.switch(&r.leader_addr).await;
                        continue;
                    }
                    None => return,
                    Some(_) => {}
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.rotate(&conn.addr).await;
        }
    }

    /// Releases entries below `below` (on the leader), if the log is `log_id` (empty: the
    /// one this client met, if it met one; else any).
    pub async fn retain(
        &self,
        below: u64,
        log_id: &str,
    ) -> Result<crate::proto::RetainResponse, ClientError> {
        let log_id = match log_id {
            "" => self.log_id().unwrap_or_default(),
            named => named,
        };
        self.with_leader("retain", true, |mut c| async move {
            c.retain(crate::proto::RetainRequest {
                below,
                log_id: log_id.to_owned(),
            })
            .await
        })
        .await
    }

    /// The group's membership, as the leader knows it (a replica that does not lead
    /// answers when no leader is known).
    pub async fn members(&self) -> Result<crate::proto::MembersResponse, ClientError> {
        self.retain_probe().await;
        let conn = self.conn();
        let mut client = conn.client.clone();
        let members = call(
            &conn.addr,
            "members",
            client.members(crate::proto::MembersRequest {}),
        );
        tokio::time::timeout(BOUNDS_WAIT, members)
            .await
            .unwrap_or_else(|_| {
                Err(rpc_err(&conn.addr, "members")(
                    tonic::Status::deadline_exceeded(format!("no answer within {BOUNDS_WAIT:?}")),
                ))
            })
    }

    /// The log this client changes: the one it met first, asking now if it met none yet
    /// (empty: a group that has no log id yet). Membership changes name it, so that a
    /// replica of another log refuses them instead of changing its own group.
    /// Every address is asked: one may be a replica that has no log yet (wiped, to be
    /// added again), which cannot say.
    async fn log_to_change(&self) -> Result<String, ClientError> {
        if self.log_id().is_none() {
            let answers = log_ids_at_with(&self.addrs.join(","), self.tls.as_ref()).await;
            if let Some((addr, Ok(id))) = answers
                .iter()
                .find(|(_, id)| id.as_ref().is_ok_and(|id| !id.is_empty()))
            {
                self.admit("bounds", addr, id)?;
            }
        }
        Ok(self.log_id().unwrap_or_default().to_owned())
    }

    /// Adds replica `id` at `addr` (on the leader), waiting up to `catch_up` for it to catch
    /// up. Safe to send again: adding a voter again changes nothing.
    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
        catch_up: std::time::Duration,
    ) -> Result<crate::proto::MembersResponse, ClientError> {
        let request = crate::proto::AddMemberRequest {
            log_id: self.log_to_change().await?,
            id,
            addr: addr.to_owned(),
            catch_up_ms: catch_up
                .min(crate::logstore::raft::members::MAX_CATCH_UP)
                .as_millis()
                .max(1) as u32,
        };
        let wait = catch_up
            .min(crate::logstore::raft::members::MAX_CATCH_UP)
            .saturating_add(std::time::Duration::from_secs(10));
        self.with_leader_for("add member", true, wait, |mut c| {
            let request = request.clone();
            async move { c.add_member(request).await }
        })
        .await
    }

    /// Seeds a new group of the replica at this client's (first) address alone; changes
    /// nothing on a replica already in a group.
    pub async fn seed(&self) -> Result<crate::proto::MembersResponse, ClientError> {
        let conn = self.conn();
        let mut client = conn.client.clone();
        let seed = call(
            &conn.addr,
            "seed",
            client.seed(crate::proto::SeedRequest {}),
        );
        tokio::time::timeout(BOUNDS_WAIT, seed)
            .await
            .unwrap_or_else(|_| {
                Err(rpc_err(&conn.addr, "seed")(
                    tonic::Status::deadline_exceeded(format!("no answer within {BOUNDS_WAIT:?}")),
                ))
            })
    }

    /// Removes replica `id` (on the leader). Safe to send again.
    pub async fn remove_member(
        &self,
        id: u64,
    ) -> Result<crate::proto::MembersResponse, ClientError> {
        let wait = std::time::Duration::from_secs(30);
        let log_id = self.log_to_change().await?;
        self.with_leader_for("remove member", true, wait, |mut c| {
            let log_id = log_id.clone();
            async move {
                c.remove_member(crate::proto::RemoveMemberRequest { id, log_id })
                    .await
            }
        })
        .await
    }

    /// `(first, last)`.
    pub async fn bounds(&self) -> Result<(u64, u64), ClientError> {
        let b = self.describe().await?;
        Ok((b.first, b.last))
    }

    /// Everything `Bounds` says: first and last index, the log id, the entry limit and, on
    /// a replica, where it stands in its group.
    pub async fn describe(&self) -> Result<crate::proto::BoundsResponse, ClientError> {
        let conn = self.conn();
        let mut client = conn.client.clone();
        let bounds = call(&conn.addr, "bounds", client.bounds(BoundsRequest {}));
        let b = tokio::time::timeout(BOUNDS_WAIT, bounds)
            .await
            .unwrap_or_else(|_| {
                Err(rpc_err(&conn.addr, "bounds")(
                    tonic::Status::deadline_exceeded(format!("no answer within {BOUNDS_WAIT:?}")),
                ))
            })?;
        self.admit("bounds", &conn.addr, &b.log_id)?;
        Ok(b)
    }

    /// Every entry in `[from, to]`.
    pub async fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        let request = ReadRequest {
            from,
            to,
            max_batch_bytes: 0,
            follow: false,
        };
        let conn = self.conn();
        let mut stream = call(&conn.addr, "read", conn.client.clone().read(request)).await?;
        while let Some(r) = stream
            .message()
            .await
            .map_err(rpc_err(&conn.addr, "read"))?
        {
            self.admit("read", &conn.addr, &r.log_id)?;
            out.extend(r.entries);
        }
        Ok(out)
    }
}

/// A shard client (not the delivery stream: that is the player's).
#[derive(Clone)]
pub struct ShardConn {
    addr: String,
    client: ShardClient<Channel>,
}

impl ShardConn {
    /// Connects to the shard `id` at `addr` (`None`: whichever shard serves there), with
    /// this process's TLS identity if it runs TLS.
    pub async fn connect(addr: &str, id: Option<&str>) -> Result<ShardConn, ClientError> {
        ShardConn::connect_with(addr, id, crate::tls::process()).await
    }

    /// [`ShardConn::connect`] with the given TLS identity (`None`: plaintext).
    pub async fn connect_with(
        addr: &str,
        id: Option<&str>,
        tls: Option<&std::sync::Arc<crate::tls::Tls>>,
    ) -> Result<ShardConn, ClientError> {
        let expected = id.map_or(grpc::Expected::AnyShard, |id| {
            grpc::Expected::Shard(id.to_owned())
        });
        let channel = grpc::connect_with(addr, &expected, tls).await?;
        Ok(ShardConn {
            addr: addr.to_owned(),
            client: ShardClient::new(channel).max_decoding_message_size(
                crate::limits::message_limit(crate::limits::MAX_MAX_ENTRY_BYTES),
            ),
        })
    }

    pub async fn applied(&self) -> Result<AppliedResponse, ClientError> {
        call(
            &self.addr,
            "applied",
            self.client.clone().applied(AppliedRequest {}),
        )
        .await
    }

    /// The shard's state as JSON lines.
    pub async fn dump(&self) -> Result<Vec<String>, ClientError> {
        let mut client = self.client.clone();
        let stream = call(&self.addr, "dump", client.dump(DumpRequest {})).await?;
        let mut out = Vec::new();
        each_message(&self.addr, "dump", stream, |r| out.push(r.json)).await?;
        Ok(out)
    }

    pub async fn stats(&self, reset: bool) -> Result<StatsResponse, ClientError> {
        let request = StatsRequest { reset };
        call(&self.addr, "stats", self.client.clone().stats(request)).await
    }
}

#[cfg(test)]
mod tests {
    //! The rule that keeps a retry from writing twice: an append without a writer id is sent
    //! again only when it was refused before being proposed.

    use super::*;
    use crate::grpc::Reason;

    fn log_of(replicas: usize) -> Log {
        let addrs: Vec<String> = (1..=replicas).map(|i| format!("127.0.0.1:{i}")).collect();
        let channel = grpc::connect_lazy_with(&addrs[0], &grpc::Expected::Log, None).unwrap();
        Log {
            current: std::sync::Arc::new(std::sync::RwLock::new(Conn {
                addr: addrs[0].clone(),
                client: log_client(channel),
            })),
            addrs: addrs.into(),
            log_id: std::sync::Arc::default(),
            tls: None,
            resent: std::sync::Arc::default(),
        }
    }

    fn kind(next: Next) -> String {
        match next {
            Next::To(addr) => format!("to {addr}"),
            Next::Rotate => "rotate".into(),
            Next::Fail => "fail".into(),
        }
    }

    #[tokio::test]
    async fn an_append_without_a_writer_id_is_sent_again_only_if_it_was_never_proposed() {
        let mut named = Reason::NotLeader.status("not the leader");
        named
            .metadata_mut()
            .insert(LEADER_KEY, "127.0.0.1:2".parse().unwrap());
        // (what came back, anonymous append, append with a writer id or a read)
        let cases = [
            (named, "to 127.0.0.1:2", "to 127.0.0.1:2"),
            (Reason::NotLeader.status("no leader"), "rotate", "rotate"),
            // Refused before it was proposed (a stream's order, no term).
            (Reason::Unavailable.status("refused"), "rotate", "rotate"),
            // Proposed, outcome unknown (leadership moved while it was replicated).
            (Reason::NotDurable.status("unknown"), "fail", "rotate"),
            // The transport: the replica died or froze with the append in hand.
            (tonic::Status::unavailable("reset"), "fail", "rotate"),
            (tonic::Status::deadline_exceeded("late"), "fail", "rotate"),
            // A killed replica's connection closing under the call.
            (
                tonic::Status::cancelled("connection closed"),
                "fail",
                "rotate",
            ),
            (Reason::Invalid.status("bad"), "fail", "fail"),
            // A replica of another log among the addresses: nothing was written.
            (Reason::WrongLog.status("another log"), "rotate", "rotate"),
        ];
        let log = log_of(3);
        for (status, anonymous, idempotent) in cases {
            assert_eq!(kind(log.next(&status, false)), anonymous, "{status:?}");
            assert_eq!(kind(log.next(&status, true)), idempotent, "{status:?}");
        }
        // One address: nowhere else to go for an unknown outcome.
        let one = log_of(1);
        let unknown = Reason::NotDurable.status("unknown");
        assert_eq!(kind(one.next(&unknown, true)), "fail");
        let other = Reason::WrongLog.status("another log");
        assert_eq!(kind(one.next(&other, true)), "fail");
    }

    /// The first answer naming a log pins it for every clone of the client; an answer from
    /// another log is refused naming both ids, and an answer naming none passes.
    #[tokio::test]
    async fn a_client_stays_with_the_first_log_it_meets() {
        let log = log_of(2);
        let clone = log.clone();
        assert_eq!(log.log_id(), None);
        log.admit("bounds", "a", "").unwrap();
        assert_eq!(log.log_id(), None, "an empty id pins nothing");
        log.admit("bounds", "a", "log-a").unwrap();
        clone.admit("append", "a", "log-a").unwrap();
        let mut request = AppendRequest::default();
        clone.stamp(&mut request);
        assert_eq!(request.log_id, "log-a");
        match clone.admit("append", "b", "log-b") {
            Err(ClientError::WrongLog {
                expected,
                got,
                addr,
                ..
            }) => {
                assert_eq!(
                    (expected.as_str(), got.as_str(), addr.as_str()),
                    ("log-a", "log-b", "b")
                );
            }
            other => panic!("expected WrongLog, got {other:?}"),
        }
        assert_eq!(log.log_id(), Some("log-a"), "still the first");
    }
}
