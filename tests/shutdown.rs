//! SIGTERM on real processes: each server stops accepting, drains what is in flight and
//! exits 0; nothing acknowledged is lost and nothing is applied twice across the restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::{assert_exactly_once, load_spec, servers, start_load};
use logplayer::client::Log;
use logplayer::harness::cluster::{Cluster, Proc};
use logplayer::proto::{Mutation, mutation::Op};

const GRACE: Duration = Duration::from_secs(10);

/// SIGTERMs the process `pick` chooses (`what` names it) and asserts that it exits 0
/// within `GRACE`.
async fn sigterm_exits_zero(c: &mut Cluster, what: &str, pick: fn(&mut Cluster) -> &mut Proc) {
    let code = pick(c).terminate(GRACE).await;
    assert_eq!(code, Some(0), "{what} exit code\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_and_shard_exit_zero_on_sigterm_and_delivery_stays_exactly_once() {
    let (_dir, mut c, log) = servers(2).await;
    c.start_player(&[]).await.unwrap();
    let load = start_load(&log, load_spec(400, 5, 7));
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm_exits_zero(&mut c, "player", |c| &mut c.players[0]).await;
    c.players[0].restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm_exits_zero(&mut c, "shard", |c| &mut c.shards[0]).await;
    c.shards[0].restart().await.unwrap();
    let report = load.await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logstore_sigterm_keeps_every_acknowledged_append() {
    let (_dir, mut c, log) = servers(1).await;
    let highest_acked = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let (log, highest, acked, stop) = (
            log.clone(),
            highest_acked.clone(),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let m = Mutation {
                    key: format!("k{w}").into_bytes().into(),
                    op: Some(Op::Add(1)),
                };
                match log.append(vec![m], None, 0).await {
                    Ok(index) => {
                        highest.fetch_max(index, Ordering::Relaxed);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    // The server is going away: refusals are fine, losses are not.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
                if i > 100_000 {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigterm_exits_zero(&mut c, "logstore", |c| &mut c.logstore).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let highest = highest_acked.load(Ordering::Relaxed);
    assert!(highest > 0, "no append was acknowledged before the SIGTERM");
    c.logstore.restart().await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let (_, last) = log.bounds().await.unwrap();
    assert!(
        last >= highest,
        "acknowledged index {highest} is gone after a graceful restart (last = {last})"
    );
    // Dense indexes and every ack above zero: at least as many entries as acks.
    assert!(last >= acked.load(Ordering::Relaxed));
}

/// A player stopped while it still waits for its LogStore (here frozen) is a clean stop:
/// exit 0, as after it started; it used to exit 1 naming an "invalid player setting".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_stopped_before_the_logstore_answers_exits_zero() {
    let (_dir, c, _log) = servers(1).await;
    c.logstore.stop().unwrap();
    let specs = [format!("s0={}", c.shards[0].addr())];
    let (mut player, _) =
        common::start_player_with(&c, "player-waiting", c.logstore.addr(), &specs, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let code = player.terminate(GRACE).await;
    c.logstore.cont().unwrap();
    assert_eq!(code, Some(0), "{}", player.log_tail(20));
}

/// A running player whose LogStore froze (it accepts connections and answers nothing)
/// still stops on SIGTERM within the grace period and exits 0: its checkpoint's `Retain`
/// is bounded, and nothing on the way out waits for the LogStore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_whose_logstore_froze_stops_on_sigterm() {
    let (_dir, mut c, log) = servers(1).await;
    let cursors = c.cursor_path().display().to_string();
    c.start_player(&[
        "--cursor-file",
        &cursors,
        "--retain-log",
        "--checkpoint-interval",
        "200ms",
    ])
    .await
    .unwrap();
    let m = vec![Mutation {
        key: b"c-000000".to_vec().into(),
        op: Some(Op::Add(1)),
    }];
    log.append(m, None, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.logstore.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let code = c.players[0].terminate(GRACE).await;
    c.logstore.cont().unwrap();
    assert_eq!(code, Some(0), "{}", c.players[0].log_tail(30));
}

/// A `Read` (here a follower at the head) and an `AppendStream` open when the LogStore stops
/// end `UNAVAILABLE`, the Read naming the index to read again from, not OK: a client of
/// another library takes an OK end of a Read without `follow` for the whole range, and of an
/// AppendStream for an answer to everything it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_by_a_sigterm_end_unavailable_not_ok() {
    use logplayer::proto::log_store_client::LogStoreClient;
    use logplayer::proto::{AppendRequest, ReadRequest};
    let (_dir, mut c, log) = servers(1).await;
    for _ in 0..3 {
        let m = Mutation {
            key: b"k".to_vec().into(),
            op: Some(Op::Add(1)),
        };
        log.append(vec![m], None, 0).await.unwrap();
    }
    let mut client = LogStoreClient::connect(format!("http://{}", c.logstore.addr()))
        .await
        .unwrap();
    let mut read = client
        .read(ReadRequest {
            from: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = read.message().await.unwrap().expect("a first response");
    assert_eq!(first.entries.len(), 3, "{first:?}");
    let (appends, to_send) = tokio::sync::mpsc::channel::<AppendRequest>(1);
    let mut answers = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(to_send))
        .await
        .unwrap()
        .into_inner();
    sigterm_exits_zero(&mut c, "logstore", |c| &mut c.logstore).await;
    let mut ended = None;
    while ended.is_none() {
        match read.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the Read stream ended OK when its LogStore stopped"),
            Err(status) => ended = Some(status),
        }
    }
    let status = ended.unwrap_or_else(|| unreachable!());
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("read again from index 4"),
        "{}",
        status.message()
    );
    let end = answers.message().await;
    assert!(
        matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable
            && s.message().contains("the LogStore is stopping")),
        "the AppendStream ended {end:?}"
    );
    drop(appends);
}

/// A `Deliver` stream open when its shard stops ends `UNAVAILABLE`, not OK, which a sender
/// would take for an end it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_stream_cut_by_a_sigterm_ends_unavailable_not_ok() {
    use logplayer::proto::log_store_client::LogStoreClient;
    use logplayer::proto::shard_client::ShardClient;
    use logplayer::proto::{BoundsRequest, DeliverRequest, Hello, deliver_request};
    let (_dir, mut c, _log) = servers(1).await;
    let mut log = LogStoreClient::connect(format!("http://{}", c.logstore.addr()))
        .await
        .unwrap();
    let log_id = log
        .bounds(BoundsRequest {})
        .await
        .unwrap()
        .into_inner()
        .log_id;
    let mut shard = ShardClient::connect(format!("http://{}", c.shards[0].addr()))
        .await
        .unwrap();
    let (to_send, rx) = tokio::sync::mpsc::channel(4);
    to_send
        .send(DeliverRequest {
            msg: Some(deliver_request::Msg::Hello(Hello {
                epoch: 1,
                player_id: "test".into(),
                log_id,
                shard_id: "s0".into(),
                max_entry_bytes: logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
                slots: logplayer::proto::SlotRange::all(),
            })),
        })
        .await
        .unwrap();
    let mut acks = shard
        .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    acks.message().await.unwrap().expect("a Welcome");
    sigterm_exits_zero(&mut c, "shard", |c| &mut c.shards[0]).await;
    let end = acks.message().await;
    assert!(
        matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable
            && s.message().contains("is stopping")),
        "the Deliver stream ended {end:?}"
    );
    drop(to_send);
}
