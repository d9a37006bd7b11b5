//! Exactly-once under crashes, on real processes over loopback: a LogStore, shards and a
//! player started from the `logplayer` binary, load appended through gRPC, and processes
//! SIGKILLed and restarted while the load runs. After each run the checker compares every
//! shard's state with what the log implies (counters exact, append lists in log order).

mod common;

use std::time::Duration;

use common::{assert_exactly_once, load_spec, servers_with, start_load};

#[derive(Clone, Copy, PartialEq)]
enum Victim {
    Shard,
    Player,
    Both,
}

async fn run(victim: Victim, kills: usize) {
    run_on(victim, kills, "auto").await;
}

/// [`run`] with the shards on `store` (`--store`).
async fn run_on(victim: Victim, kills: usize, store: &str) {
    let (_dir, mut c, log) = servers_with(3, &["--store", store]).await;
    c.start_player(&[]).await.unwrap();
    let load = start_load(&log, load_spec(500, kills as u64 + 2, kills as u64));
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
    assert!(
        report.appended > 500,
        "too little load: {}",
        report.appended
    );
    assert_exactly_once(&c, &log, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_killed_ten_times_under_load_end_with_the_state_the_log_implies() {
    run(Victim::Shard, 10).await;
}

/// The same on the redb store, which no other crash test runs since the journal became the
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_on_redb_killed_ten_times_under_load_end_with_the_state_the_log_implies() {
    run_on(Victim::Shard, 10, "redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_killed_ten_times_under_load_delivers_everything_exactly_once() {
    run(Victim::Player, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_and_player_killed_together_ten_times_still_deliver_exactly_once() {
    run(Victim::Both, 10).await;
}
