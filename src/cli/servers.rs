//! `logplayer logstore` and `logplayer shard` (and `shard dump`, `shard reset-log`; the
//! `logstore members` admin command lives in `members`): the servers of the data plane, each bound, announced (`listening on ADDR`) and run until
//! SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::{Args, Subcommand};

use super::on_signal;
use crate::{client, grpc, logstore, shard};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LogstoreArgs {
    #[command(subcommand)]
    action: Option<LogstoreAction>,
    /// Directory of the WAL segments.
    #[arg(long, env = "LOGPLAYER_DATA", required = true)]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Segment size in bytes before a new segment file is started (4 KiB to 1 GiB).
    #[arg(long, env = "LOGPLAYER_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
    /// Keep the active segment zero-filled 4 MiB ahead of the writer, so that an append's
    /// fdatasync flushes data and no change of the file's size (about half the sync time on
    /// ext4, for twice the bytes written). `false` on a copy-on-write file system (btrfs,
    /// ZFS), where writing over zeros saves nothing.
    #[arg(long, env = "LOGPLAYER_PREALLOCATE", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    preallocate: bool,
    #[command(flatten)]
    limit: EntryLimit,
    #[command(flatten)]
    callers: CallerLimits,
    #[command(flatten)]
    health: HealthListen,
    #[command(flatten)]
    streams: StreamLimits,
    /// This replica's id, a key of --peers (or, with --join, any id: the replica waits to be
    /// added). Without --id and --peers the LogStore runs as a single node.
    #[arg(long, env = "LOGPLAYER_REPLICA_ID", requires = "peers")]
    id: Option<u64>,
    /// Every replica of the group, this one included, as ID=HOST:PORT,... — the same list on
    /// every replica. It seeds a new group: the replica with the lowest id proposes it as the
    /// group's membership, which the others learn from it (so that replica must be up on the
    /// group's first start). From then on the membership, changed with `logstore members`,
    /// says where replicas are; a list that disagrees with it is warned about.
    #[arg(long, env = "LOGPLAYER_PEERS", value_parser = parse_peers)]
    peers: Option<Peers>,
    /// (Replicated) Never seed a new group from --peers, even as its lowest id: wait to be
    /// added to a group (`logstore members add`), or seeded through the `Seed` call. The
    /// operator runs every log replica so and seeds the first itself, once.
    #[arg(long, env = "LOGPLAYER_JOIN", requires = "peers")]
    join: bool,
    /// (Replicated, as a StatefulSet pod) Without --id, the replica's id is the ordinal at
    /// the end of this pod name plus one: pod `x-logstore-0` is replica 1.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// (Replicated) Raft entries released by retention before the replica takes a snapshot
    /// at the retention point and drops the log's segments below it.
    #[arg(
        long,
        env = "LOGPLAYER_SNAPSHOT_EVERY",
        default_value_t = 10_000,
        value_parser = super::at_least_one,
        requires = "peers"
    )]
    snapshot_every: u64,
    /// (Replicated) A snapshot larger than this goes to a replica that needs one (it lags
    /// behind the retention point, or was added) as a stream of pieces this large, so a
    /// snapshot's size is not bound by one message's (256 MiB). 4096 to 255 MiB; the
    /// receiver takes a snapshot of at most 16 GiB (holding it about twice in memory while it
    /// installs it).
    #[arg(
        long,
        env = "LOGPLAYER_SNAPSHOT_CHUNK_BYTES",
        default_value_t = logstore::raft::network::DEFAULT_SNAPSHOT_CHUNK_BYTES,
        value_parser = parse_snapshot_chunk,
        requires = "peers"
    )]
    snapshot_chunk_bytes: usize,
    /// (Replicated) How often the log leader sends heartbeats; a replica votes for nobody
    /// within 6 heartbeats of hearing from its leader (the leader lease), and a follower asks
    /// for votes (pre-vote first) after 9-12 heartbeats without one (the lease, then a
    /// random election timeout of 3-6). 10ms to 10s; the
    /// same value on every replica (a replica refuses messages from one with another).
    #[arg(long, env = "LOGPLAYER_HEARTBEAT", default_value = "50ms", value_parser = humantime::parse_duration, requires = "peers")]
    heartbeat: std::time::Duration,
    /// FAULT INJECTION, for tests only: answer the leader's `AppendStream` and
    /// `InstallSnapshotStream` with UNIMPLEMENTED, as a replica of a version without them
    /// would during a rolling upgrade. The leader must fall back to single calls.
    #[arg(long, hide = true, requires = "peers")]
    fault_no_append_stream: bool,
}

#[derive(Subcommand)]
pub enum LogstoreAction {
    /// List, add or remove the replicas of a replicated LogStore (changes go to its leader,
    /// through Raft's joint consensus).
    Members(super::members::MembersArgs),
}

/// `--snapshot-chunk-bytes`, within its bounds.
fn parse_snapshot_chunk(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let range = logstore::raft::network::SNAPSHOT_CHUNK_BYTES_RANGE;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is outside {}..={} bytes",
            range.start(),
            range.end()
        ))
    }
}

/// The `--peers` list: replica id → address.
#[derive(Clone, Debug)]
pub struct Peers(pub std::collections::BTreeMap<u64, String>);

/// Parses `1=HOST:PORT,2=HOST:PORT,...`, naming the first bad item.
pub fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut out = std::collections::BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = logstore::raft::members::parse_member(item)?;
        if out.insert(id, addr).is_some() {
            return Err(format!("replica id {id} appears twice"));
        }
    }
    if out.is_empty() {
        return Err("no replicas listed".into());
    }
    // Compared as sockets (`localhost:7000` is `127.0.0.1:07000`): two ids at one address
    // make a group in which a replica is two voters and refuses its own messages.
    let mut seen = std::collections::BTreeMap::new();
    for (id, addr) in &out {
        if let Some((first, first_addr)) = seen.insert(crate::routing::addr_key(addr), (id, addr)) {
            return Err(format!(
                "replicas {first} ({first_addr}) and {id} ({addr}) are given one address"
            ));
        }
    }
    Ok(Peers(out))
}

/// The one entry-size limit, the same flag on the LogStore, the player and the shards.
#[derive(Args, Clone, Copy, Debug)]
pub struct EntryLimit {
    /// Largest transaction accepted, in bytes (the encoded size of one append's mutations).
    /// Use the same value on the LogStore, the player and every shard: each checks the
    /// others' at connection time. A replicated LogStore (--peers) takes at most
    /// 266076160 (253.75 MiB: one replication message less room for what travels beside
    /// the entry).
    #[arg(long, env = "LOGPLAYER_MAX_ENTRY_BYTES", default_value_t = crate::limits::DEFAULT_MAX_ENTRY_BYTES, value_parser = crate::limits::parse_flag)]
    pub max_entry_bytes: usize,
}

/// Where either server answers its probes (see [`crate::metrics::Serving`]).
#[derive(Args, Clone, Debug)]
pub struct HealthListen {
    /// Also serve plaintext HTTP probes at this address: `/healthz` (the process is up, from
    /// its start) and `/readyz` (gRPC is served: the data is open). Nothing else is served
    /// there. For the kubelet: its gRPC probe cannot speak TLS, and a TCP connect succeeds
    /// on a frozen process.
    #[arg(long, env = "LOGPLAYER_HEALTH_LISTEN")]
    health_listen: Option<String>,
}

impl HealthListen {
    /// Binds and serves the probes (nothing without the flag) until the returned guard is
    /// dropped, when the server stops; the returned [`crate::metrics::Serving`] is told
    /// when gRPC is served. `opening` says what the server opens meanwhile. The probes do
    /// not wait for SIGTERM: caught during a long open, it would hold the process up until
    /// the open ends (uncaught, it stops the process at once, as before the probes).
    async fn start(
        &self,
        opening: String,
    ) -> anyhow::Result<(
        std::sync::Arc<crate::metrics::Serving>,
        tokio_util::sync::DropGuard,
    )> {
        let serving = crate::metrics::Serving::opening(opening);
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(addr) = &self.health_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the --health-listen address {addr}"))?;
            println!("health listening on {}", listener.local_addr()?);
            let (probes, stop) = (serving.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve_probes(probes, listener, stop).await {
                    tracing::error!(error = %e, "the health server failed");
                }
            });
        }
        Ok((serving, stop.drop_guard()))
    }
}

/// What bounds the callers of either server (see `serving`).
#[derive(Args, Clone, Copy, Debug)]
pub struct CallerLimits {
    /// Connections open at once; one more is closed as soon as it is accepted (1 to
    /// 1048576).
    #[arg(long, env = "LOGPLAYER_MAX_CONNECTIONS", default_value_t = crate::serving::ServerLimits::default().max_connections)]
    max_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection; a client waits for a slot (1
    /// to 65536).
    #[arg(long, env = "LOGPLAYER_MAX_STREAMS_PER_CONNECTION", default_value_t = crate::serving::ServerLimits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
    /// A connection with no call open for this long is closed (a client reconnects on its
    /// next call). 1s to 1 day.
    #[arg(long, env = "LOGPLAYER_IDLE_CONNECTION_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_connection_timeout: std::time::Duration,
}

/// What bounds the LogStore's streams (a shard has neither: `shard` does not take these).
#[derive(Args, Clone, Copy, Debug)]
pub struct StreamLimits {
    /// `Read` streams open at once over every caller (1 to 65536); one more is refused
    /// (RESOURCE_EXHAUSTED, busy). Each holds at most 2 responses ahead of its reader. A
    /// player holds one for its main stream and one per shard catching up.
    #[arg(long, env = "LOGPLAYER_MAX_READ_STREAMS", default_value_t = crate::serving::ServerLimits::default().max_read_streams)]
    max_read_streams: usize,
    /// A `Read` stream whose reader took nothing for this long while responses wait for it
    /// is ended (RESOURCE_EXHAUSTED, busy), freeing its slot; a tailing reader with nothing
    /// new to read is not stalled. The same for an `AppendStream` whose writer took no
    /// answer for this long while answers wait for it. 1s to 1 day.
    #[arg(long, env = "LOGPLAYER_READ_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    read_stall_timeout: std::time::Duration,
    /// An `AppendStream` with no append for this long is ended (UNAVAILABLE, unavailable)
    /// after the answers to all its earlier appends; the writer opens a new one for its
    /// next append. 1s to 1 day.
    #[arg(long, env = "LOGPLAYER_IDLE_STREAM_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    idle_stream_timeout: std::time::Duration,
    /// Writer ids the log remembers (to recognize their retries). When it holds this many,
    /// a new writer id makes it forget the writers whose appends were all released by
    /// retention longest ago, or is refused (RESOURCE_EXHAUSTED, busy) if none was. A
    /// replicated log's leader decides with its own value. 1 to 139501 (as many as the
    /// largest snapshot a replica takes holds at worst).
    #[arg(long, env = "LOGPLAYER_MAX_WRITERS", default_value_t = crate::serving::ServerLimits::default().max_writers)]
    max_writers: usize,
}

impl CallerLimits {
    /// Installs the limits of a server; `streams` only for the LogStore (a shard serves no
    /// `Read` or `AppendStream`, and keeps their defaults: of those, only the stall timeout is
    /// used, for a `Deliver` sender that takes no acks).
    fn install(self, streams: Option<StreamLimits>) -> anyhow::Result<()> {
        let defaults = crate::serving::ServerLimits::default();
        let mut limits = crate::serving::ServerLimits {
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            idle_connection_timeout: self.idle_connection_timeout,
            ..defaults
        };
        if let Some(s) = streams {
            limits.max_read_streams = s.max_read_streams;
            limits.read_stall_timeout = s.read_stall_timeout;
            limits.idle_stream_timeout = s.idle_stream_timeout;
            limits.max_writers = s.max_writers;
        }
        limits.validate().map_err(anyhow::Error::msg)?;
        crate::serving::install(limits);
        Ok(())
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShardArgs {
    #[command(subcommand)]
    action: Option<ShardAction>,
    /// Shard id (as in the player's shard map: [A-Za-z0-9._-]). Over TLS the certificate
    /// must name it (logplayer://shard/ID).
    #[arg(long, env = "LOGPLAYER_SHARD_ID", required = true)]
    id: Option<String>,
    /// Directory of the shard's database.
    #[arg(long, env = "LOGPLAYER_DATA", required = true)]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: String,
    /// UNSAFE, for benchmarks: commit without fsync. Still atomic and exactly-once, but a
    /// crash can roll the applied index back (the player then redelivers from the log).
    #[arg(long)]
    no_fsync: bool,
    /// The store: `journal` (commits appended to a journal, the state in memory, snapshots
    /// now and then), `redb` (a B-tree file, for data larger than memory), or `auto`
    /// (whichever the data directory holds; the journal for a new one).
    #[arg(long, env = "LOGPLAYER_SHARD_STORE", value_enum, default_value_t = shard::any::StoreKind::Auto)]
    store: shard::any::StoreKind,
    /// How long a commit may wait for more batches, counted from its first batch's arrival:
    /// only on a busy stream, and only while the pages it would write are less than three
    /// quarters full (each commit's fsync writes whole pages). Trades up to this much
    /// delay for fewer bytes written to disk; 0 commits whatever has arrived; at most 100ms.
    #[arg(long, env = "LOGPLAYER_COMMIT_DELAY", default_value = "2ms", value_parser = parse_commit_delay)]
    commit_delay: std::time::Duration,
    #[command(flatten)]
    limit: EntryLimit,
    #[command(flatten)]
    callers: CallerLimits,
    #[command(flatten)]
    health: HealthListen,
}

fn parse_commit_delay(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > shard::gather::MAX_COMMIT_DELAY {
        return Err(format!(
            "{s} is above the most a commit may wait ({})",
            humantime::format_duration(shard::gather::MAX_COMMIT_DELAY)
        ));
    }
    Ok(d)
}

impl ShardArgs {
    /// Whether this command talks gRPC (serving, or `dump --addr`), not only to a directory.
    pub fn dials(&self) -> bool {
        match &self.action {
            None => true,
            Some(ShardAction::Dump { addr, .. }) => addr.is_some(),
            Some(_) => false,
        }
    }
}

#[derive(Subcommand)]
pub enum ShardAction {
    /// Print a shard's state as JSON lines: offline from --data, or online from --addr.
    Dump {
        /// A stopped shard's data directory.
        #[arg(long, conflicts_with = "addr", required_unless_present = "addr")]
        data: Option<PathBuf>,
        /// A running shard's address.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Move a stopped shard to another log, deliberately: bind its data directory to
    /// --log-id and set its applied index to --applied (0 for a new log: every entry of the
    /// new log will be applied on top of the data the shard holds). The data and the
    /// highest epoch are kept. Prints what it changed. Refused for the log the shard is
    /// already bound to at another index: its entries would be applied twice, or skipped.
    ResetLog {
        /// The stopped shard's data directory.
        #[arg(long)]
        data: PathBuf,
        /// The new log's id (`logplayer status` or the LogStore's startup line shows it).
        #[arg(long)]
        log_id: String,
        /// The index in the new log that the shard's data already includes.
        #[arg(long, default_value_t = 0)]
        applied: u64,
    },
}

/// A StatefulSet pod's replica id: the ordinal its name ends with, plus one.
fn replica_id_of_pod(pod: &str) -> anyhow::Result<u64> {
    let ordinal = pod
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| {
            format!(
                "pod name {pod:?} does not end with a StatefulSet ordinal (-0, -1, ...); give --id"
            )
        })?;
    Ok(ordinal + 1)
}

/// Refuses to serve as `expected` over TLS with a certificate that does not name it
/// (every client would refuse the server).
fn serve_as(expected: crate::grpc::Expected) -> anyhow::Result<()> {
    super::require(crate::tls::identity::Fit::Serve(expected))
}

/// Runs the LogStore: a single node, or one replica of a Raft group with --id and --peers.
pub async fn run_logstore(a: LogstoreArgs) -> anyhow::Result<()> {
    if let Some(LogstoreAction::Members(m)) = a.action {
        return super::members::run(m).await;
    }
    a.callers.install(Some(a.streams))?;
    if a.peers.is_some() {
        super::require(crate::tls::identity::Fit::Replica)?;
    } else {
        serve_as(crate::grpc::Expected::Log)?;
    }
    let data = a.data.clone().context("logstore needs --data")?;
    if let Some(peers) = a.peers.clone() {
        let id = match (a.id, &a.pod_name) {
            (Some(id), _) => id,
            (None, Some(pod)) => replica_id_of_pod(pod)?,
            (None, None) => bail!(
                "--peers needs this replica's --id (or, in a StatefulSet pod, its name in --pod-name / POD_NAME)"
            ),
        };
        return run_replica(a, data, id, peers).await;
    }
    // Bound first: a taken or mistyped --listen must not leave a new log (and its id) behind.
    let (listener, addr) = grpc::bind(&a.listen).await?;
    let opening = format!("opening the log in {}", data.display());
    let (health, _probes) = a.health.start(opening).await?;
    let config = logstore::LogStoreConfig {
        dir: data.clone(),
        segment_bytes: Some(a.segment_bytes),
        max_entry_bytes: a.limit.max_entry_bytes,
        preallocate: a.preallocate,
    };
    let (log, summary) = logstore::LogStore::open(config)
        .with_context(|| format!("opening the log in {}", data.display()))?;
    tracing::info!(
        log_id = %summary.log_id,
        created = summary.log_id_created,
        first = summary.first,
        last = summary.last,
        torn_bytes = summary.torn_bytes_truncated,
        writers = summary.writers,
        max_entry_bytes = a.limit.max_entry_bytes,
        "log opened"
    );
    health.set_ready();
    println!("listening on {addr}");
    logstore::service::serve(log, listener, on_signal()).await?;
    Ok(())
}

async fn run_replica(a: LogstoreArgs, data: PathBuf, id: u64, peers: Peers) -> anyhow::Result<()> {
    // Listening on another replica's address: every message the others send that replica
    // would come here, refused one by one as meant for another id, while this one starts.
    let listen = crate::routing::addr_key(&a.listen);
    if let Some((other, addr)) = peers
        .0
        .iter()
        .find(|(p, addr)| **p != id && crate::routing::addr_key(addr) == listen)
    {
        bail!(
            "--listen {} is replica {other}'s address in --peers ({addr}), and this is replica \
             {id}: give it the --id that --peers maps to its address, or fix --peers",
            a.listen
        );
    }
    if let Some(own) = peers.0.get(&id) {
        check_own_addr(id, own, &a.listen);
    }
    let mut config = logstore::raft::node::ReplicaConfig::new(id, peers.0, data.clone());
    config.segment_bytes = Some(a.segment_bytes);
    config.max_entry_bytes = a.limit.max_entry_bytes;
    config.preallocate = a.preallocate;
    config.rebase_every = a.snapshot_every;
    config.snapshot_chunk_bytes = a.snapshot_chunk_bytes;
    config.heartbeat = a.heartbeat;
    config.join = a.join;
    config.serve_append_stream = !a.fault_no_append_stream;
    // Bound first, so that peers can reach this replica as soon as Raft starts.
    let (listener, addr) = grpc::bind(&a.listen).await?;
    let opening = format!("starting replica {id} in {}", data.display());
    let (health, _probes) = a.health.start(opening).await?;
    let replica = logstore::raft::node::Replica::start(config)
        .await
        .with_context(|| format!("starting replica {id} in {}", data.display()))?;
    let (first, last) = replica.machine().bounds();
    tracing::info!(
        replica = id,
        first,
        last,
        max_entry_bytes = a.limit.max_entry_bytes,
        "replica started"
    );
    health.set_ready();
    println!("listening on {addr}");
    logstore::service::serve(replica, listener, on_signal()).await?;
    Ok(())
}

/// Runs a shard server, or prints a shard's state.
pub async fn run_shard(a: ShardArgs) -> anyhow::Result<()> {
    match a.action {
        Some(ShardAction::Dump {
            data: Some(dir), ..
        }) => {
            let store = shard::any::AnyStore::open_existing(&dir)?;
            let mut out = std::io::stdout().lock();
            let mut err = None;
            shard::ShardStore::dump(&store, &mut |k, v| {
                if err.is_none() {
                    err = std::io::Write::write_all(
                        &mut out,
                        format!("{}\n", crate::model::json_line(k, v)).as_bytes(),
                    )
                    .err();
                }
            })?;
            if let Some(e) = err {
                return Err(e.into());
            }
        }
        Some(ShardAction::Dump { addr, .. }) => {
            let addr = addr.context("give --data DIR or --addr ADDR")?;
            for line in client::ShardConn::connect(&addr, None)
                .await?
                .dump()
                .await?
            {
                println!("{line}");
            }
        }
        Some(ShardAction::ResetLog {
            data,
            log_id,
            applied,
        }) => reset_log(&data, &log_id, applied)?,
        None => {
            let (Some(id), Some(data)) = (a.id, a.data) else {
                bail!("shard needs --id and --data");
            };
            crate::routing::check_id(&id).context("--id")?;
            a.callers.install(None)?;
            serve_as(crate::grpc::Expected::Shard(id.clone()))?;
            // Bound first: a taken or mistyped --listen must not leave a new store behind.
            let (listener, addr) = grpc::bind(&a.listen).await?;
            let opening = format!("opening shard {id:?} in {}", data.display());
            let (health, _probes) = a.health.start(opening).await?;
            let mut store = shard::any::AnyStore::open(&data, a.store)
                .with_context(|| format!("opening shard store in {}", data.display()))?;
            if a.no_fsync {
                tracing::warn!("--no-fsync: commits are not durable until a later sync");
                store.set_fsync(false);
            }
            let me = shard::ShardSelf {
                id: id.clone(),
                addr: addr.to_string(),
                max_entry_bytes: a.limit.max_entry_bytes as u64,
            };
            let core = shard::ShardCore::open(store, me)
                .with_context(|| format!("opening shard {id:?} in {}", data.display()))?;
            let d = core.durable();
            let log_id = core.identity().log_id.clone().unwrap_or_default();
            let store = shard::any::name(core.store().kind());
            tracing::info!(shard = %id, applied = d.applied, highest_epoch = d.highest_epoch, %log_id, store, "shard opened");
            health.set_ready();
            println!("listening on {addr}");
            shard::service::serve(core, listener, on_signal(), a.commit_delay).await?;
        }
    }
    Ok(())
}

/// Warns about a replica whose own `--peers` address is on this machine's loopback (or is
/// the very host it listens on) at another port than `--listen`: unless a forwarder
/// listens there (a proxy in front of it, for fault injection), the others send it
/// messages, and every client it names as the leader dials, where nothing listens, while
/// the group looks whole. Not refused, for that forwarder; another host (a container's
/// published port, a NAT) may map a port, so it is not judged.
fn check_own_addr(id: u64, own: &str, listen: &str) {
    use std::net::IpAddr;
    let split = |a: &str| {
        let k = crate::routing::addr_key(a);
        k.rsplit_once(':')
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_owned(), p.to_owned()))
    };
    let (Some((own_host, own_port)), Some((host, port))) = (split(own), split(listen)) else {
        return;
    };
    let ip = |h: &str| h.parse::<IpAddr>().ok();
    let own_local = ip(&own_host).is_some_and(|i| i.is_loopback());
    let listens_locally = ip(&host).is_some_and(|i| i.is_loopback() || i.is_unspecified());
    let this_host = host == own_host || (own_local && listens_locally);
    if port != "0" && own_port != port && this_host {
        tracing::warn!(
            replica = id,
            peers_addr = own,
            listen,
            "--peers gives this replica another port of this host than --listen: the other \
             replicas, and every client it names as the log's leader, dial the --peers address; \
             unless something forwards it here, make the two agree"
        );
    }
}

/// `shard reset-log`: rebinds a stopped shard's data to another log, saying what changes.
fn reset_log(data: &std::path::Path, log_id: &str, applied: u64) -> anyhow::Result<()> {
    use shard::ShardStore as _;
    let Some(log_id) = logstore::log_id::parse(log_id) else {
        bail!("--log-id {log_id:?} is not a log id (a UUID, as `logplayer status` shows it)");
    };
    let mut store = shard::any::AnyStore::open_existing(data).with_context(|| {
        format!(
            "opening the shard store in {} (is the shard stopped?)",
            data.display()
        )
    })?;
    let before = store.identity()?;
    let durable = store.load()?;
    let keys = store.key_count()?;
    if before.log_id.as_deref() == Some(log_id.as_str()) {
        // The same log at another index rewinds (every entry after it applied a second time
        // on the kept data) or skips: never a move. At the same index there is nothing to do.
        ensure!(
            applied == durable.applied,
            "shard {} in {} is already bound to log {log_id} and has applied it up to index {}: \
             --applied {applied} would {} on the data it keeps; nothing changed (reset-log moves a \
             shard to another log; to go back in the same log, restore the shard's data from a \
             copy taken at that index)",
            before.shard_id.as_deref().unwrap_or("(not yet recorded)"),
            data.display(),
            durable.applied,
            if applied < durable.applied {
                format!(
                    "apply entries {}..={} a second time",
                    applied + 1,
                    durable.applied
                )
            } else {
                format!("skip entries {}..={applied}", durable.applied + 1)
            }
        );
        println!(
            "shard at {} is already bound to log {log_id} at applied index {applied}: nothing changed",
            data.display()
        );
        return Ok(());
    }
    store.reset_log(&log_id, applied)?;
    let shard = before.shard_id.as_deref().unwrap_or("(not yet recorded)");
    let old = before.log_id.as_deref().unwrap_or("(none)");
    println!("shard {shard} at {}:", data.display());
    println!("  log id         {old} -> {log_id}");
    println!("  applied index  {} -> {applied}", durable.applied);
    println!("  highest epoch  {} (kept)", durable.highest_epoch);
    println!("  data           {keys} keys (kept)");
    println!(
        "the shard will now accept deliveries from log {log_id} only, applying entries above {applied}"
    );
    Ok(())
}
