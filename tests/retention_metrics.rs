//! The leader's ack cursors drive log retention (never past what every shard acknowledged),
//! and the player's metrics and health endpoints answer over HTTP.

use std::time::Duration;

mod common;

use common::{bin, free_port, load_spec, start_load};
use logplayer::client::{Log, ShardConn};
use logplayer::harness::cluster::Cluster;
use logplayer::harness::failover::wait_for_leader;
use logplayer::player::cursor::{CursorStore, FileCursors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over plain HTTP/1.0; returns (status code, body).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_bound_retention_and_metrics_report_the_leader() {
    // Small segments so that retention has whole segments to remove.
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with(dir.path(), &bin(), 2, &["--segment-bytes", "65536"], &[])
        .await
        .unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    c.start_replicas(
        1,
        &[
            "--retain-log",
            "--checkpoint-interval",
            "200ms",
            "--metrics-listen",
            &metrics_addr,
        ],
    )
    .await
    .unwrap();
    wait_for_leader(&c, Duration::from_secs(20)).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let spec = load_spec(1000, 3, 5);
    // Freeze shard s1 for most of the load, so that its cursor lags far behind the others:
    // retention must stop at it.
    let load = start_load(&log, spec);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shards[1].stop().unwrap();
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0);
    // A few checkpoints while s1 is still frozen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (first, last) = log.bounds().await.unwrap();
    let cursors = FileCursors::new(c.cursor_path()).load().await.unwrap();
    let ids: Vec<String> = (0..2).map(|i| format!("s{i}")).collect();
    let log_id = log.describe().await.unwrap().log_id;
    let lowest = cursors
        .lowest(&ids, &log_id)
        .expect("a cursor for every shard, in this log");
    assert!(
        lowest + 1000 < last,
        "s1's cursor {lowest} should lag the log's end {last}"
    );
    assert!(
        first > 1,
        "retention removed nothing (first {first}, last {last})"
    );
    assert!(
        first <= lowest + 1,
        "retention removed entry {} above the lowest cursor {lowest}",
        first - 1
    );
    // The frozen shard wakes and catches up from what the log kept.
    c.shards[1].cont().unwrap();
    let conn = ShardConn::connect(c.shards[1].addr(), None).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let applied = conn.applied().await.unwrap().applied_index;
        if applied + 1000 >= last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "s1 stuck at {applied} of {last}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, text) = get(&metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        "logplayer_player_leader 1",
        "logplayer_shard_acked_index{shard=\"s0\"}",
        "logplayer_delivery_delay_seconds_bucket",
        "logplayer_player_failovers_total 1",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    assert_eq!(get(&metrics_addr, "/healthz").await.0, 200);
    assert_eq!(get(&metrics_addr, "/readyz").await.0, 200);
}

/// Waits up to `wait` for player `n` to exit; returns its exit code and its log.
async fn player_exit(c: &mut Cluster, n: usize, wait: Duration) -> Option<(Option<i32>, String)> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Some(code) = c.players[n].exited() {
            return Some((code, c.players[n].log_tail(40)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A shard whose next entry retention already released cannot be caught up from the log:
/// the player stops with an error naming the index and the shard, on its main stream and on
/// a recovery stream alike, instead of retrying a read that can never succeed while it
/// reports itself ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_behind_the_retention_point_stops_the_player_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with(dir.path(), &bin(), 1, &["--segment-bytes", "4096"], &[])
        .await
        .unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let report = start_load(&log, load_spec(300, 1, 7)).await.unwrap();
    assert_eq!(report.failed, 0);
    let (_, last) = log.bounds().await.unwrap();
    let log_id = log.describe().await.unwrap().log_id;
    let first = log.retain(last - 20, &log_id).await.unwrap().first;
    assert!(first > 1, "retention removed nothing (first {first})");
    // At start: the shard applied nothing and the log starts past 1.
    let n = c.start_player(&[]).await.unwrap();
    let Some((code, out)) = player_exit(&mut c, n, Duration::from_secs(20)).await else {
        panic!("the player runs on:\n{}", c.logs());
    };
    assert!(
        code != Some(0)
            && out.contains(&format!(
                "no longer holds index 1 (first is {first}); shard s0 cannot be caught up"
            )),
        "{code:?}: {out}"
    );
    // Recovery: the shard is down when the player starts (so it starts at the log's head),
    // then comes back needing entry 1.
    c.shards[0].kill().await;
    let n = c.start_player(&[]).await.unwrap();
    let started = common::eventually(Duration::from_secs(20), || async {
        c.players[n].log_tail(40).contains("main stream starts")
    })
    .await;
    assert!(started, "{}", c.players[n].log_tail(40));
    c.shards[0].restart().await.unwrap();
    let Some((code, out)) = player_exit(&mut c, n, Duration::from_secs(30)).await else {
        panic!("the player runs on:\n{}", c.logs());
    };
    assert!(
        code != Some(0) && out.contains("shard s0 cannot be caught up"),
        "{code:?}: {out}"
    );
}
