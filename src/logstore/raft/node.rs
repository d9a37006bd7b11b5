//! One replica of the replicated LogStore, as its server runs it: the Raft instance over the
//! WAL-backed [`LogStorage`] and the [`Machine`], the proposer that turns waiting appends into
//! Raft entries, and the leader's duties (establishing a new log's id, snapshots for purging).
//!
//! The proposer groups every append waiting at that moment into one entry (group commit:
//! one fsync per group on each replica), with at most `IN_FLIGHT` groups between proposal
//! and apply. An append is answered only once its entry is committed and applied, with the
//! verdict applying decided. A replica that is not the leader refuses appends *before*
//! proposing them ([`LogStoreError::NotLeader`], naming the leader): nothing was written, a
//! client can send the same append to the leader. If leadership is lost after proposing,
//! the outcome is unknown ([`LogStoreError::Unknown`]); a retry with the same
//! `(writer_id, sequence)` then gets the original index if the first one did commit. An
//! append of a stream is written only if the one its stream sent before it was (decided when
//! applied, see `dedupe`), so a client's resend from its first unanswered append never finds
//! a later one already written; [`StreamOrder`] refuses the rest of a broken stream early.

use crate::limits::{DEFAULT_HEARTBEAT, ELECTION_MIN_HEARTBEATS, carry_time};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver as _;
use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, ServerState};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::machine::Machine;
use super::network::Network;
use super::storage::LogStorage;
use super::{Command, NodeId, Raft, Reply, TypeConfig, Verdict};
use crate::logstore::{Appended, LogStoreError};
use crate::proto::{AppendGroup, Entry, Mutation, StoredEntry};
use crate::wal::WalConfig;

/// Groups proposed but not yet applied. openraft replicates a group while the leader's own
/// fsync runs, and the next groups are written meanwhile.
const IN_FLIGHT: usize = 4;
/// Most appends in one group.
const MAX_GROUP: usize = 4096;
/// Most payload bytes in one group (one Raft entry: followers must receive and fsync it
/// within a heartbeat; a single larger append still goes alone).
const MAX_GROUP_BYTES: usize = 1024 * 1024;
/// Appends waiting for the proposer before appenders wait.
const QUEUE: usize = 16 * 1024;

/// How to run one replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id (a key of `peers`).
    pub id: NodeId,
    /// Every replica of the group (this one included): id → address peers and clients dial.
    pub peers: BTreeMap<NodeId, String>,
    pub dir: PathBuf,
    pub segment_bytes: Option<u64>,
    pub max_entry_bytes: usize,
    /// Keep the WAL's active segment zero-filled ahead of the writer (see
    /// [`crate::wal::WalConfig::preallocate`]).
    pub preallocate: bool,
    /// Raft entries of released log after which a new base (snapshot) is taken and the log
    /// purged up to it.
    pub rebase_every: u64,
    /// Heartbeat interval; a follower asks for votes (pre-vote first) after 3..6 heartbeats
    /// without one, and grants none before 6 (the leader lease).
    pub heartbeat: Duration,
    /// Never seed a new group from `peers`: wait to be added, or seeded by `Seed`.
    pub join: bool,
    /// Serve the leader's `AppendStream` and `InstallSnapshotStream` (false only to test the
    /// fallback to single calls that a peer of an older version needs).
    pub serve_append_stream: bool,
    /// A snapshot larger than this goes to a replica in pieces of this size.
    pub snapshot_chunk_bytes: usize,
}

impl ReplicaConfig {
    pub fn new(id: NodeId, peers: BTreeMap<NodeId, String>, dir: PathBuf) -> Self {
        ReplicaConfig {
            id,
            peers,
            dir,
            segment_bytes: None,
            max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES,
            preallocate: true,
            rebase_every: 10_000,
            heartbeat: DEFAULT_HEARTBEAT,
            join: false,
            serve_append_stream: true,
            snapshot_chunk_bytes: super::network::DEFAULT_SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// Whether a peer of `--peers` already serves a group's log. The lowest id asks before it
/// seeds a new group: were its directory lost, it would otherwise start a second group of
/// its own beside the first. A peer that is down, or up but not yet in a group (the group's
/// first start), does not count. A peer that is a single-node LogStore is refused, naming
/// it: taken as a group's replica, it kept the lowest id from ever seeding, and the group
/// waited for ever; so is a peer that says it is another replica than `--peers` maps there
/// (a mistyped address reaching another group's replica).
pub(super) async fn joined_elsewhere(
    me: NodeId,
    peers: &BTreeMap<NodeId, String>,
) -> Result<bool, LogStoreError> {
    use crate::proto::BoundsRequest;
    use crate::proto::log_store_client::LogStoreClient;
    for (id, addr) in peers.iter().filter(|(id, _)| **id != me) {
        let ask = async {
            let channel = crate::grpc::connect(addr, &crate::grpc::Expected::Log)
                .await
                .ok()?;
            let b = LogStoreClient::new(channel)
                .bounds(BoundsRequest {})
                .await
                .ok()?;
            Some(b.into_inner())
        };
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
            let log_id = b.log_id;
            if b.replica.is_none() {
                return Err(LogStoreError::Config(format!(
                    "peer {id} of --peers, at {addr}, is a single-node LogStore (log {log_id}), \
                     not a log replica: fix --peers"
                )));
            }
            // It is another replica than --peers says (of another group, as a --peers
            // address mistyped to reach another log's replica): taken as this group's, it
            // kept this one from ever seeding.
            if let Some(r) = b.replica.as_ref().filter(|r| r.id != *id) {
                return Err(LogStoreError::Config(format!(
                    "peer {id} of --peers, at {addr}, is replica {} of log {log_id}: --peers \
                     maps {id} to another replica's address (of another group, or of this \
                     one): fix --peers",
                    r.id
                )));
            }
            tracing::warn!(
                replica = me,
                peer = id,
                %addr,
                %log_id,
                "this replica's directory holds no log, but its peers already form a group: \
                 not seeding a new one. Add it to the group with `logstore members add` \
                 (after removing its old self with `logstore members remove`)"
            );
            return Ok(true);
        }
    }
    Ok(false)
}

/// An append waiting for its entry to be applied: its writer, and where its answer goes.
type Waiting = (
    Option<(String, u64)>,
    oneshot::Sender<Result<Appended, LogStoreError>>,
);

struct Pending {
    /// When it was queued (for the debug log).
    queued: std::time::Instant,
    stored: StoredEntry,
    writer: Option<(String, u64)>,
    reply: oneshot::Sender<Result<Appended, LogStoreError>>,
    /// The append stream it came on (none for a unary append).
    stream: Option<Arc<StreamOrder>>,
}

/// One append stream's place in the log's order: what the proposer can see of it.
///
/// A stream's appends are proposed in the order sent. Once one of them is refused before it
/// is proposed (this replica is not, or no longer, the leader), or the stream's term is over,
/// the rest of it is refused here too, before anything is written; the client opens a new
/// one and resends. This is only the early part: Raft itself can still refuse one group and
/// take the next (a leader whose lease ran out), which the proposer cannot see in time; the
/// rule that holds whatever Raft does is applied with the entry (`follows`, see `dedupe`).
#[derive(Debug, Default)]
pub struct StreamOrder {
    /// The term its appends are proposed in (0: none yet; a leader's term is at least 1).
    term: AtomicU64,
    broken: AtomicBool,
}

impl StreamOrder {
    /// Whether an append of this stream may be proposed by this replica leading `term`
    /// (`None`: not the leader). Once it may not, it never may again.
    pub fn admit(&self, term: Option<u64>) -> bool {
        if self.broken.load(Ordering::Acquire) {
            return false;
        }
        let ok = term.is_some_and(|t| {
            match self
                .term
                .compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => true,
                Err(pinned) => pinned == t,
            }
        });
        if !ok {
            self.broken.store(true, Ordering::Release);
        }
        ok
    }
}

/// A running replica (cheap to clone).
#[derive(Clone)]
pub struct Replica {
    raft: Raft,
    machine: Machine,
    jobs: mpsc::Sender<Pending>,
    id: NodeId,
    peers: Arc<BTreeMap<NodeId, String>>,
    max_entry_bytes: usize,
    /// `--heartbeat`, in ms (what replication messages carry).
    heartbeat_millis: u64,
    /// This process's incarnation (what replication messages carry), shared with the
    /// client half (see `network::Speakers`).
    incarnation: super::network::Incarnation,
    failed: watch::Receiver<Option<String>>,
    catching_up: Arc<super::network::CatchingUp>,
    serve_append_stream: bool,
    /// This replica's address in `--peers`, if listed there.
    own_addr: Option<String>,
}

/// Where the replica stands, for `status` and the metrics (`applied_term`: the Raft term of
/// the last applied entry; `leads_a_majority`: the leader, acknowledged by a majority within
/// the leader lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub role: String,
    pub raft_term: u64,
    pub leader: Option<NodeId>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub applied_term: Option<u64>,
    pub leads_a_majority: bool,
}

/// The longest election timeout, in heartbeats: the leader lease (the shortest,
/// `ELECTION_MIN_HEARTBEATS`, is in `limits.rs`, beside the heartbeat an entry limit needs).
pub(super) const ELECTION_MAX_HEARTBEATS: u64 = 6;

/// The shortest `--heartbeat`.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// The longest `--heartbeat`.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

/// The heartbeat openraft runs with, in ms (it counts whole milliseconds).
fn heartbeat_millis(c: &ReplicaConfig) -> u64 {
    u64::try_from(c.heartbeat.as_millis()).unwrap_or(u64::MAX)
}

fn raft_config(c: &ReplicaConfig) -> Result<openraft::Config, LogStoreError> {
    let hb = heartbeat_millis(c);
    openraft::Config {
        cluster_name: "logplayer".into(),
        heartbeat_interval: hb,
        // A follower stands once it heard nothing for the leader lease (election_timeout_max)
        // and then an election timeout: 9..12 heartbeats (450-600 ms at 50 ms); a replica
        // grants no vote within the lease of hearing from its leader.
        election_timeout_min: hb * u64::from(ELECTION_MIN_HEARTBEATS),
        election_timeout_max: hb * ELECTION_MAX_HEARTBEATS,
        // A candidate first asks whether a majority would vote for it, without raising the
        // term: one whose log is behind, or that was frozen or cut off, cannot disturb the
        // group, and does not hold up the election of one that can win.
        enable_pre_vote: Some(true),
        // A restarted leader does not resume its term: it stands for election like any
        // replica. Its entries go to the followers before its own fsync ends, so it may come
        // back without entries of its term that a follower holds; were it to go on in that
        // term, it would write different entries under the same Raft ids.
        enable_leader_restore: Some(false),
        // An unreachable peer is retried after 20 ms, doubling up to 500 ms (a peer that is
        // only restarting rejoins the majority quickly).
        backoff: "20ms 40ms ...500ms".into(),
        // Snapshots are taken only at the retention point (see `machine`), and the log is
        // purged up to each one at once: retention is driven by the players' cursors only.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        // With the byte limit of `storage`, keeps each AppendEntries small.
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| LogStoreError::Config(format!("raft config: {e}")))
}

/// The largest entry a replicated log takes: the largest replication message less its
/// envelope and what may travel beside the entry in one AppendEntries. A group of appends
/// (one Raft entry) is closed once it holds `MAX_GROUP_BYTES`, so it holds less than
/// that beside its last append; an AppendEntries is closed once it holds
/// `REPLICATION_BATCH_BYTES`, so it holds less than that beside its last Raft entry.
/// 266,076,160 bytes; the LogPlayer CRD's `maxEntryBytes` is bounded by it.
pub const MAX_REPLICABLE_ENTRY_BYTES: usize = super::network::MAX_MESSAGE_BYTES
    - crate::limits::ENVELOPE_BYTES
    - super::storage::REPLICATION_BATCH_BYTES
    - MAX_GROUP_BYTES;

/// How long an entry at the limit takes to reach a follower, if that is longer than the
/// shortest election timeout: followers hear no heartbeat while they receive it (the
/// heartbeats travel behind it), so they may stand for election. Allowed (entries that
/// large are rare, and each is sent again until it gets through), but said at start.
fn slower_than_an_election(config: &ReplicaConfig) -> Option<Duration> {
    let carry = carry_time(config.max_entry_bytes);
    (carry > config.heartbeat * ELECTION_MIN_HEARTBEATS).then_some(carry)
}

/// Refuses a replica's settings it cannot start with, naming the flag; warns of an entry
/// limit that works badly ([`slower_than_an_election`]).
fn check_config(config: &ReplicaConfig) -> Result<(), LogStoreError> {
    if let Some(carry) = slower_than_an_election(config) {
        tracing::warn!(
            max_entry_bytes = config.max_entry_bytes,
            heartbeat = ?config.heartbeat,
            "an entry at --max-entry-bytes takes about {carry:?} to reach the followers, \
             longer than their shortest election timeout ({:?}, {ELECTION_MIN_HEARTBEATS} \
             heartbeats): while one replicates they may elect another leader and it is sent \
             again; a lower --max-entry-bytes or a longer --heartbeat avoids that",
            config.heartbeat * ELECTION_MIN_HEARTBEATS
        );
    }
    crate::limits::validate(config.max_entry_bytes).map_err(LogStoreError::Config)?;
    // An entry that cannot fit in a replication message would be accepted, never
    // replicated, and hold up every later one.
    let replicable = MAX_REPLICABLE_ENTRY_BYTES;
    if config.max_entry_bytes > replicable {
        return Err(LogStoreError::Config(format!(
            "--max-entry-bytes {} is more than a replicated log can carry in one \
             replication message ({replicable} bytes); lower it, or run a single-node \
             LogStore (no --peers)",
            config.max_entry_bytes
        )));
    }
    if config.id == 0 {
        return Err(LogStoreError::Config(
            "--id 0: replica ids start at 1".into(),
        ));
    }
    if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&config.heartbeat) {
        return Err(LogStoreError::Config(format!(
            "--heartbeat {} is outside {} to {}: a follower stands for election 9-12 heartbeats \
             after the last it heard, so a longer one leaves the log without a leader for \
             that long after a crash (openraft counts \
             whole milliseconds, and below {} a busy machine misses them)",
            humantime::format_duration(config.heartbeat),
            humantime::format_duration(MIN_HEARTBEAT),
            humantime::format_duration(MAX_HEARTBEAT),
            humantime::format_duration(MIN_HEARTBEAT),
        )));
    }
    if !config.peers.contains_key(&config.id) && !config.join {
        return Err(LogStoreError::Config(format!(
            "--id {} is not in --peers ({}): list it with its address, or pass --join to \
             wait to be added to a group",
            config.id,
            config
                .peers
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    Ok(())
}

impl Replica {
    /// Opens the replica's log in `config.dir` and starts Raft. On a new group, the replica
    /// with the lowest id of `config.peers` proposes their membership; the others wait for it.
    pub async fn start(config: ReplicaConfig) -> Result<Replica, LogStoreError> {
        check_config(&config)?;
        if !config.peers.contains_key(&config.id) {
            // A replica that joins an existing group (a StatefulSet scaled up): it seeds
            // nothing and serves once the leader adds it.
            tracing::info!(
                replica = config.id,
                peers = ?config.peers.keys().collect::<Vec<_>>(),
                "this replica is not in --peers: it waits to be added to the group \
                 (`logstore members add`)"
            );
        }
        if let Some(m) = crate::disk::holds_any(&config.dir, &crate::disk::SHARD_MARKERS) {
            return Err(LogStoreError::Config(format!(
                "{} holds a shard's store ({m}), not a log replica's; give the replica its own directory",
                config.dir.display()
            )));
        }
        let mut wal = WalConfig::new(config.dir.clone());
        if let Some(b) = config.segment_bytes {
            wal.segment_bytes = b;
        }
        // A record is a group of appends: room for a full group of the largest entries.
        wal.max_record_bytes = crate::wal::MAX_RECORD_BYTES;
        wal.marks = true;
        wal.preallocate = config.preallocate;
        let bound = super::dir::replica_id_of(&config.dir, config.id)?;
        let mut storage =
            LogStorage::open(wal).map_err(|e| LogStoreError::Config(e.to_string()))?;
        if bound.is_none() {
            super::dir::bind_replica_id(&config.dir, config.id)?;
        }
        let failed = storage.failed();
        let machine = Machine::open(&config.dir, storage.wal_reader(), config.rebase_every)?;
        storage.set_saved_base(machine.saved_base());
        let heartbeat = heartbeat_millis(&config);
        let incarnation = super::network::Incarnation::draw();
        let network = Network::new(
            super::network::Sender {
                id: config.id,
                max_entry_bytes: config.max_entry_bytes as u64,
                heartbeat_millis: heartbeat,
                incarnation: incarnation.clone(),
            },
            machine.clone(),
            config.snapshot_chunk_bytes,
        );
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            network,
            storage,
            machine.clone(),
        )
        .await
        .map_err(|e| LogStoreError::Config(format!("raft: {e}")))?;
        // Only the lowest id of `--peers` starts a new group: were every replica to, one with
        // a wrong `--peers` would hold a membership of its own at index 0 and disrupt the
        // others' elections. The others learn the membership (and addresses) from the leader.
        let bootstraps = !config.join && config.peers.keys().next() == Some(&config.id);
        let initialized = raft.is_initialized().await.unwrap_or(true);
        let seeds =
            !initialized && bootstraps && !joined_elsewhere(config.id, &config.peers).await?;
        if seeds {
            let members: BTreeMap<NodeId, BasicNode> = config
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "the group was already initialized");
            }
        }
        let (jobs, rx) = mpsc::channel(QUEUE);
        let replica = Replica {
            raft,
            machine,
            jobs,
            id: config.id,
            own_addr: config.peers.get(&config.id).cloned(),
            peers: Arc::new(config.peers),
            max_entry_bytes: config.max_entry_bytes,
            heartbeat_millis: heartbeat,
            incarnation,
            failed,
            catching_up: Arc::new(if initialized || seeds {
                super::network::CatchingUp::default()
            } else {
                super::network::CatchingUp::empty()
            }),
            serve_append_stream: config.serve_append_stream,
        };
        tokio::spawn(replica.clone().propose(rx));
        tokio::spawn(replica.clone().leader_duties());
        tokio::spawn(replica.clone().snapshots());
        tokio::spawn(replica.clone().say_while_leaderless());
        Ok(replica)
    }

    /// `--peers`, as given.
    pub fn peers(&self) -> &BTreeMap<NodeId, String> {
        &self.peers
    }

    /// This replica's address in `--peers`, if listed there.
    pub fn own_addr(&self) -> Option<String> {
        self.own_addr.clone()
    }

    /// Whether this replica, started empty, still catches up (for the replication service).
    pub fn catching_up(&self) -> Arc<super::network::CatchingUp> {
        self.catching_up.clone()
    }

    /// Whether the leader's `AppendStream` is served (see [`ReplicaConfig`]).
    pub fn serves_append_stream(&self) -> bool {
        self.serve_append_stream
    }

    /// The Raft instance (for the replication service).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// Who this replica is on replication messages (see [`super::network::Sender`]).
    pub fn sender(&self) -> super::network::Sender {
        super::network::Sender {
            id: self.id,
            max_entry_bytes: self.max_entry_bytes as u64,
            heartbeat_millis: self.heartbeat_millis,
            incarnation: self.incarnation.clone(),
        }
    }

    /// The leader's address, if one is known (from the group's membership, which is what
    /// the replicas dial; `--peers` only seeds a new group).
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Warns when this replica's `--peers` disagree with the membership it follows (once per
    /// membership): the membership wins, but a wrong flag is worth knowing about.
    fn check_peers(&self, warned: &mut Option<super::LogId>) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let stored = &m.membership_config;
        let Some(at) = *stored.log_id() else {
            return;
        };
        if warned.is_some_and(|w| w == at) {
            return;
        }
        *warned = Some(at);
        let members: BTreeMap<NodeId, String> = stored
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let differ = self
            .peers
            .iter()
            .filter(|(id, addr)| members.get(id).is_some_and(|a| a != *addr))
            .map(|(id, addr)| format!("{id}={addr} (membership: {})", members[id]))
            .collect::<Vec<_>>();
        if !differ.is_empty() {
            tracing::warn!(
                replica = self.id,
                differ = differ.join(", "),
                "--peers differ from the group's membership, which this replica follows \
                 (--peers only seeds a new group; change members with `logstore members`)"
            );
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// The term this replica leads, if it is the leader.
    fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id))
            .then_some(m.current_term)
    }

    pub fn status(&self) -> ReplicaStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        ReplicaStatus {
            id: self.id,
            role: format!("{:?}", m.state).to_lowercase(),
            raft_term: m.current_term,
            leader: m.current_leader,
            last_log: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            applied_term: m.last_applied.map(|l| l.leader_id.term),
            leads_a_majority: self.leads_a_majority(&m),
        }
    }

    /// Whether this replica is the leader and a majority of the voters acknowledged it
    /// within the leader lease (the longest election timeout; a sole voter always): a
    /// replica grants no vote within the lease of hearing from its leader, so no other
    /// replica can have been elected and committed entries this one does not have. A leader
    /// cut off from its majority keeps its role until it hears of a higher term; this says
    /// false for it.
    fn leads_a_majority(&self, m: &openraft::RaftMetrics<TypeConfig>) -> bool {
        use openraft::Instant as _;
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return false;
        }
        let lease = Duration::from_millis(
            self.heartbeat_millis
                .saturating_mul(ELECTION_MAX_HEARTBEATS),
        );
        m.membership_config.membership().voter_ids().eq([self.id])
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|acked| acked.elapsed() < lease)
    }

    fn not_leader(&self) -> LogStoreError {
        LogStoreError::NotLeader {
            leader: self.leader_addr(),
        }
    }

    /// The log's id, once established by the group's first leader.
    pub fn log_id(&self) -> Result<String, LogStoreError> {
        self.machine.log_id().ok_or_else(|| {
            LogStoreError::Unavailable(
                "the log has no id yet: it is new and waits for its first leader".into(),
            )
        })
    }

    /// Queues one append; the receiver gets its verdict once its entry is applied. An
    /// append of a stream (`stream`) is proposed only in the stream's term and not after
    /// another of the stream was refused (see [`StreamOrder`]).
    pub async fn submit(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        start_micros: u64,
        stream: Option<crate::logstore::served::OnStream<'_>>,
    ) -> Result<oneshot::Receiver<Result<Appended, LogStoreError>>, LogStoreError> {
        crate::logstore::validate(&mutations, writer.as_ref(), self.max_entry_bytes)?;
        if !self.is_leader() {
            if let Some(s) = stream {
                s.order.admit(None);
            }
            return Err(self.not_leader());
        }
        let (reply, rx) = oneshot::channel();
        let (writer_id, sequence) = writer.clone().unwrap_or_default();
        let stored = StoredEntry {
            entry: Some(Entry {
                index: 0,
                mutations,
                append_start_micros: start_micros,
            }),
            writer_id,
            sequence,
            follows: stream.map_or(0, |s| s.follows),
        };
        self.jobs
            .send(Pending {
                queued: std::time::Instant::now(),
                stored,
                writer,
                reply,
                stream: stream.map(|s| s.order.clone()),
            })
            .await
            .map_err(|_| LogStoreError::Stopped)?;
        Ok(rx)
    }

    /// Releases client entries below `below` (through the log, so every replica does).
    pub async fn retain(&self, below: u64) -> Result<u64, LogStoreError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        // Nothing to release (the players retain at every checkpoint, each second, moved or
        // not): no Raft entry, which every replica would write, sync and replay at each
        // restart, and an idle log could never purge. What this replica applied is a prefix
        // of what is committed, and the point only rises.
        let first = self.machine().retained_first();
        if below <= first {
            return Ok(first);
        }
        match self.raft.client_write(Command::Retain { below }).await {
            Ok(r) => match r.data {
                Reply::Retained { first } => Ok(first),
                other => Err(LogStoreError::Invalid(format!(
                    "unexpected reply {other:?}"
                ))),
            },
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> LogStoreError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LogStoreError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            other => LogStoreError::Unknown(other.to_string()),
        }
    }

    /// Resolves with the reason once the replica's log has failed (the server then stops).
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut metrics = self.raft.metrics();
        let wal = crate::logstore::failure(self.failed.clone());
        // Raft's core stopped (a storage error it cannot go on from).
        let core = async move {
            while metrics.changed().await.is_ok() {}
            "the Raft core stopped".to_string()
        };
        async move {
            tokio::select! {
                r = wal => r,
                r = core => r,
            }
        }
    }

    /// The proposer: one Raft entry per group of waiting appends.
    async fn propose(self, mut rx: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let mut bytes = first.stored.encoded_len();
            let mut group = vec![first];
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.stored.encoded_len();
                        group.push(p);
                    }
                    Err(_) => break,
                }
            }
            // Timings for the debug log: how long the first append waited for the proposer,
            // the group for a slot in flight, and the group to commit.
            let taken = std::time::Instant::now();
            let queued_micros = group
                .first()
                .map_or(0, |p| (taken - p.queued).as_micros() as u64);
            let group_len = group.len();
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let term = self.leader_term();
            let mut appends = Vec::with_capacity(group.len());
            let mut waiting = Vec::with_capacity(group.len());
            for p in group {
                let admitted = match &p.stream {
                    Some(s) => s.admit(term),
                    None => term.is_some(),
                };
                if admitted {
                    appends.push(p.stored);
                    waiting.push((p.writer, p.reply));
                } else if term.is_none() {
                    let _ = p.reply.send(Err(self.not_leader()));
                } else {
                    let _ = p.reply.send(Err(LogStoreError::Unavailable(
                        "an earlier append of this stream was refused or its leadership lost; \
                         nothing after it is written on this stream: open a new one and resend \
                         from the first unanswered append"
                            .into(),
                    )));
                }
            }
            if appends.is_empty() {
                continue;
            }
            let max_writers = crate::serving::limits().max_writers as u64;
            let group = AppendGroup {
                appends,
                max_writers,
            };
            let cmd = Command::Appends(group.encode_to_vec().into());
            // Handed to Raft here, in order (a stream's appends must stay in the order they
            // were sent); only the wait for the outcome runs apart.
            let proposed = std::time::Instant::now();
            let (responder, answer) = ProgressResponder::complete_only();
            if let Err(fatal) = self.raft.client_write_ff(cmd, Some(responder)).await {
                self.answer(waiting, Err(RaftError::Fatal(fatal)));
                continue;
            }
            let replica = self.clone();
            tokio::spawn(async move {
                let out = match answer.await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(RaftError::APIError(e)),
                    Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
                };
                drop(permit);
                tracing::debug!(
                    appends = group_len,
                    bytes,
                    queued_micros,
                    waited_micros = (proposed - taken).as_micros() as u64,
                    commit_micros = proposed.elapsed().as_micros() as u64,
                    "group committed"
                );
                replica.answer(waiting, out);
            });
        }
    }

    fn answer(
        &self,
        waiting: Vec<Waiting>,
        out: Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >,
    ) {
        let verdicts = match out {
            Ok(r) => match r.data {
                Reply::Appends(v) if v.len() == waiting.len() => v,
                other => {
                    let e = format!("unexpected reply {other:?}");
                    for (_, reply) in waiting {
                        let _ = reply.send(Err(LogStoreError::Invalid(e.clone())));
                    }
                    return;
                }
            },
            Err(e) => return refuse_proposed(waiting, self.write_error(e)),
        };
        for ((writer, reply), v) in waiting.into_iter().zip(verdicts) {
            let (id, sequence) = writer.unwrap_or_default();
            let r = match v {
                Verdict::New(index) => Ok(Appended {
                    index,
                    duplicate: false,
                }),
                Verdict::Duplicate(index) => Ok(Appended {
                    index,
                    duplicate: true,
                }),
                Verdict::Reused { index } => Err(LogStoreError::SequenceReused {
                    writer: id,
                    sequence,
                    index,
                }),
                Verdict::Stale { last, index } => Err(LogStoreError::StaleSequence {
                    writer: id,
                    sequence,
                    last,
                    index,
                }),
                Verdict::TooManyWriters { max } => Err(LogStoreError::TooManyWriters {
                    writer: id,
                    max: usize::try_from(max).unwrap_or(usize::MAX),
                }),
                Verdict::Gap { follows } => {
                    tracing::info!(
                        writer = %id,
                        sequence,
                        follows,
                        "an append of a stream follows one that was not written: refused, \
                         the client resends from its first unanswered append"
                    );
                    Err(LogStoreError::Gap {
                        writer: id,
                        sequence,
                        follows,
                    })
                }
            };
            let _ = reply.send(r);
        }
    }

    /// A new leader of a new log establishes its id; every replica checks its `--peers`
    /// against each membership it learns.
    async fn leader_duties(self) {
        let mut metrics = self.raft.metrics();
        let mut checked = None;
        loop {
            self.check_peers(&mut checked);
            if self.is_leader() && self.machine.log_id().is_none() {
                let id = uuid::Uuid::new_v4().to_string();
                match self
                    .raft
                    .client_write(Command::Establish { log_id: id })
                    .await
                {
                    Ok(r) => {
                        if let Reply::Established { log_id } = r.data {
                            tracing::info!(%log_id, "the log's id is established");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "establishing the log id; will retry"),
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Takes a snapshot (a new base, and a purge up to it) whenever enough is released.
    async fn snapshots(self) {
        let mut wanted = self.machine.rebase_wanted();
        while wanted.changed().await.is_ok() {
            if let Err(e) = self.raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "could not ask for a snapshot");
                return;
            }
        }
    }
}

/// Raft refused a group it had taken (leadership moved, Raft stopped): it may still commit,
/// so each outcome is unknown. Never `NotLeader`: that tells a client the append was not
/// proposed and may be sent again (one without a writer id would be written twice).
fn refuse_proposed(waiting: Vec<Waiting>, e: LogStoreError) {
    let why = match e {
        LogStoreError::NotLeader { .. } => {
            "leadership moved while the append was being replicated".to_string()
        }
        other => other.to_string(),
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(LogStoreError::Unknown(why.clone())));
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
