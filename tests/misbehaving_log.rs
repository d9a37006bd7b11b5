//! A LogStore that answers wrongly, and a player that must not believe it. A proxy in this
//! test stands in front of a real LogStore process (the player, the shards and the LogStore
//! are real processes; only the proxy is in-process) and damages what it forwards, once:
//! - it drops one response of the player's main stream, so the next one skips indexes;
//! - it ends recovery reads (`follow: false`) three entries short of the range asked for,
//!   as a replica of a replicated log that is behind its leader does;
//! - it leaves an entry out of the middle of a recovery read, and answers another with
//!   another log's id.
//!
//! The player must refuse the skipping response and read the range again, and must not
//! close a short recovery read with a watermark at its end (which would advance the shard
//! past entries it never got, with no gap the shard could see). Either way every shard ends
//! with exactly what the log implies.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{assert_exactly_once, free_port, load_spec, servers, start_load, start_player_with};
use futures::{Stream, StreamExt as _};
use logplayer::proto::log_store_client::LogStoreClient;
use logplayer::proto::log_store_server::{LogStore, LogStoreServer};
use logplayer::proto::{
    AddMemberRequest, AppendRequest, AppendResponse, BoundsRequest, BoundsResponse, MembersRequest,
    MembersResponse, ReadRequest, ReadResponse, RemoveMemberRequest, RetainRequest, RetainResponse,
    SeedRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How much damage is left to do.
#[derive(Default)]
struct Damage {
    /// Main-stream responses to drop (one each, after a few went through).
    drop_main: AtomicU32,
    /// Recovery reads still to end short.
    cut_recovery: AtomicU32,
    /// Recovery reads still to leave an entry out of (from a response of 3 or more).
    skip_recovery: AtomicU32,
    /// Recovery reads still to answer under another log's id.
    foreign_recovery: AtomicU32,
    /// Recovery reads seen, damaged or not.
    recovery_reads: AtomicU32,
    /// Answer `Bounds` without the entry limit, as a LogStore too old to say it.
    no_limit: std::sync::atomic::AtomicBool,
}

/// The id the proxy gives a recovery read it answers as another log.
const FOREIGN_LOG: &str = "ffffffff-ffff-4fff-8fff-ffffffffffff";

struct Proxy {
    up: LogStoreClient<Channel>,
    damage: Arc<Damage>,
}

/// Takes one unit of `counter` if any is left.
fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[tonic::async_trait]
impl LogStore for Proxy {
    type AppendStreamStream = BoxStream<AppendResponse>;
    type ReadStream = BoxStream<ReadResponse>;

    async fn append(&self, r: Request<AppendRequest>) -> Result<Response<AppendResponse>, Status> {
        self.up.clone().append(r.into_inner()).await
    }

    async fn append_stream(
        &self,
        r: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let requests = r
            .into_inner()
            .filter_map(|m| futures::future::ready(m.ok()));
        let answers = self.up.clone().append_stream(requests).await?.into_inner();
        Ok(Response::new(Box::pin(answers)))
    }

    async fn read(&self, r: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let req = r.into_inner();
        let mut up = self.up.clone().read(req).await?.into_inner();
        if req.follow {
            let damage = self.damage.clone();
            let stream = up.enumerate().filter_map(move |(i, item)| {
                futures::future::ready(match item {
                    Ok(r) if i >= 3 && !r.entries.is_empty() && take(&damage.drop_main) => None,
                    other => Some(other),
                })
            });
            return Ok(Response::new(Box::pin(stream)));
        }
        if req.from == req.to {
            // The player reading back one entry to compare its fingerprint (a shard's last
            // applied one): not a recovery read, left alone.
            return Ok(Response::new(Box::pin(up)));
        }
        self.damage.recovery_reads.fetch_add(1, Ordering::SeqCst);
        // A bounded read: gather it, and maybe end it short.
        let mut all = Vec::new();
        while let Some(resp) = up.message().await? {
            all.push(resp);
        }
        let entries: usize = all.iter().map(|r| r.entries.len()).sum();
        if entries > 3 && take(&self.damage.cut_recovery) {
            let mut cut = 3;
            while cut > 0 {
                let Some(last) = all.last_mut() else { break };
                let n = last.entries.len().min(cut);
                last.entries.truncate(last.entries.len() - n);
                cut -= n;
                if last.entries.is_empty() {
                    all.pop();
                }
            }
        }
        if let Some(i) = all.iter().position(|r| r.entries.len() >= 3)
            && take(&self.damage.skip_recovery)
        {
            all[i].entries.remove(1);
        } else if !all.is_empty() && take(&self.damage.foreign_recovery) {
            for r in &mut all {
                r.log_id = FOREIGN_LOG.into();
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            all.into_iter().map(Ok),
        ))))
    }

    async fn bounds(&self, r: Request<BoundsRequest>) -> Result<Response<BoundsResponse>, Status> {
        let mut b = self.up.clone().bounds(r.into_inner()).await?;
        if self.damage.no_limit.load(Ordering::SeqCst) {
            b.get_mut().max_entry_bytes = 0;
        }
        Ok(b)
    }

    async fn retain(&self, r: Request<RetainRequest>) -> Result<Response<RetainResponse>, Status> {
        self.up.clone().retain(r.into_inner()).await
    }

    async fn members(
        &self,
        r: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.up.clone().members(r.into_inner()).await
    }

    async fn add_member(
        &self,
        r: Request<AddMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.up.clone().add_member(r.into_inner()).await
    }

    async fn remove_member(
        &self,
        r: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.up.clone().remove_member(r.into_inner()).await
    }

    async fn seed(&self, r: Request<SeedRequest>) -> Result<Response<MembersResponse>, Status> {
        self.up.clone().seed(r.into_inner()).await
    }
}

/// Starts the proxy in front of `upstream`; returns its address.
async fn proxy(upstream: &str, damage: Arc<Damage>) -> String {
    let up = LogStoreClient::new(
        logplayer::grpc::connect(upstream, &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogStoreServer::new(Proxy { up, damage }))
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_skips_or_cuts_a_read_short_is_not_believed_and_delivery_stays_exactly_once() {
    let (_dir, mut c, log) = servers(2).await;
    let damage = Arc::new(Damage::default());
    let addr = proxy(c.logstore.addr(), damage.clone()).await;
    let specs = c.shard_specs();
    // A small catch-up queue: a shard that was down gets its entries from recovery reads.
    let (player, _metrics) =
        start_player_with(&c, "player", &addr, &specs, &["--queue-bytes", "65536"]).await;

    // The main stream loses one response.
    damage.drop_main.store(1, Ordering::SeqCst);
    let report = start_load(&log, load_spec(300, 3, 1)).await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
    assert_eq!(
        damage.drop_main.load(Ordering::SeqCst),
        0,
        "the proxy dropped nothing: the scenario did not run"
    );
    let text = std::fs::read_to_string(player.log_path()).unwrap_or_default();
    assert!(
        text.contains("was next"),
        "the player did not say it refused a response:\n{}",
        player.log_tail(40)
    );

    // The next recovery read ends short.
    damage.cut_recovery.store(1, Ordering::SeqCst);
    c.shards[0].kill().await;
    let report = start_load(&log, load_spec(300, 3, 2)).await.unwrap();
    c.shards[0].restart().await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
    assert!(
        damage.recovery_reads.load(Ordering::SeqCst) >= 2
            && damage.cut_recovery.load(Ordering::SeqCst) == 0,
        "no recovery read was cut short ({} reads): the scenario did not run\n{}",
        damage.recovery_reads.load(Ordering::SeqCst),
        player.log_tail(40)
    );
    let text = std::fs::read_to_string(player.log_path()).unwrap_or_default();
    assert!(
        text.contains("served the range only up to"),
        "the player did not say it read a short range again:\n{}",
        player.log_tail(40)
    );

    // A recovery read leaves out an entry in its middle (its mutations would be lost with
    // no gap a shard could see: the player sets each entry's previous index), and the next
    // one is another log's.
    let was_next = text.matches("was next").count();
    damage.skip_recovery.store(1, Ordering::SeqCst);
    damage.foreign_recovery.store(1, Ordering::SeqCst);
    c.shards[1].kill().await;
    let report = start_load(&log, load_spec(300, 3, 3)).await.unwrap();
    c.shards[1].restart().await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
    assert_eq!(
        (
            damage.skip_recovery.load(Ordering::SeqCst),
            damage.foreign_recovery.load(Ordering::SeqCst)
        ),
        (0, 0),
        "the proxy did not damage two recovery reads: the scenario did not run\n{}",
        player.log_tail(40)
    );
    let text = std::fs::read_to_string(player.log_path()).unwrap_or_default();
    assert!(
        text.matches("was next").count() > was_next,
        "the player did not refuse a recovery read that left an entry out:\n{}",
        player.log_tail(40)
    );
    assert!(
        text.contains(&format!("serves log {FOREIGN_LOG}")),
        "the player did not refuse a recovery read from another log:\n{}",
        player.log_tail(40)
    );
    drop(player);
}

/// A LogStore too old to say its entry limit (0 in `Bounds`): the player tells the shards
/// its own limit, and delivers (its Hello said 0, which every shard refused as malformed,
/// so nothing was ever delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_does_not_say_its_entry_limit_is_still_delivered() {
    let (_dir, c, log) = servers(2).await;
    let damage = Arc::new(Damage::default());
    damage.no_limit.store(true, Ordering::SeqCst);
    let addr = proxy(c.logstore.addr(), damage.clone()).await;
    let specs = c.shard_specs();
    let (player, _metrics) = start_player_with(&c, "player", &addr, &specs, &[]).await;
    let report = start_load(&log, load_spec(200, 3, 4)).await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
    drop(player);
}
