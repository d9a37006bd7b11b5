//! Exactly-once under crashes, on real processes over loopback: a LogStore, shards and a
//! player started from the `logplayer` binary, load appended through gRPC, and processes
//! SIGKILLed and restarted while the load runs. After each run the checker compares every
//! shard's state with what the log implies (counters exact, append lists in log order).

use std::time::Duration;

use logplayer::client::Log;
use logplayer::harness::bench::{LoadSpec, drive};
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"))
}

#[derive(Clone, Copy, PartialEq)]
enum Victim {
    Shard,
    Player,
    Both,
}

async fn run(victim: Victim, kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 3).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let spec = LoadSpec {
        rate: 500,
        duration: Duration::from_secs(kills as u64 + 2),
        count: 0,
        concurrency: 32,
        keys_per_txn: 6,
        key_space: 300,
        txn_bytes: 300,
        seed: kills as u64,
    };
    let load = {
        let (log, spec) = (log.clone(), spec.clone());
        tokio::spawn(async move { drive(&log, &spec, None).await })
    };
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = k % c.shards.len();
        if victim != Victim::Player {
            c.shards[s].kill().await;
        }
        if victim != Victim::Shard {
            c.players[0].kill().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if victim != Victim::Player {
            c.shards[s].restart().await.unwrap();
        }
        if victim != Victim::Shard {
            c.players[0].restart().await.unwrap();
        }
    }
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0, "appends failed");
    assert!(
        report.appended > 500,
        "too little load: {}",
        report.appended
    );
    let result = check(&log, &c.shard_map(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        result.pass,
        "exactly-once violated:\n{result}\n{}",
        c.logs()
    );
    assert!(result.entries >= report.appended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_killed_ten_times_under_load_end_with_the_state_the_log_implies() {
    run(Victim::Shard, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_killed_ten_times_under_load_delivers_everything_exactly_once() {
    run(Victim::Player, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_and_player_killed_together_ten_times_still_deliver_exactly_once() {
    run(Victim::Both, 10).await;
}
