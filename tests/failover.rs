//! Player replicas behind the file lease, on real processes over loopback: the leader is
//! SIGKILLed 20 times under load; a frozen leader wakes after a standby took over and is
//! fenced; a shard restarts in the middle of a failover. After each run every shard's state
//! must equal what the log implies, and every new epoch must exceed the one before.

mod common;

use std::time::Duration;

use common::{assert_exactly_once, load_spec, servers, start_load};
use logplayer::client::{Log, ShardConn};
use logplayer::harness::bench::LoadReport;
use logplayer::harness::cluster::Cluster;
use logplayer::harness::failover::{Takedown, take_down_leader, wait_for_leader};

/// Shorter than the defaults so 20 failovers fit in a test; the bench measures the defaults.
const FAST_LEASE: &[&str] = &[
    "--lease-duration",
    "1s",
    "--renew-deadline",
    "700ms",
    "--retry-period",
    "100ms",
];

const TAKEOVER: Duration = Duration::from_secs(20);

async fn cluster(shards: usize) -> (tempfile::TempDir, Cluster, Log) {
    cluster_with(shards, FAST_LEASE).await
}

async fn cluster_with(shards: usize, args: &[&str]) -> (tempfile::TempDir, Cluster, Log) {
    let (dir, mut c, log) = servers(shards).await;
    c.start_replicas(3, args).await.unwrap();
    wait_for_leader(&c, TAKEOVER).await.unwrap();
    (dir, c, log)
}

fn load(log: &Log, seconds: u64, seed: u64) -> tokio::task::JoinHandle<LoadReport> {
    start_load(log, load_spec(400, seconds, seed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_twenty_times_under_load_hands_over_with_rising_epochs() {
    let (_dir, mut c, log) = cluster(3).await;
    let running = load(&log, 600, 1);
    let mut epochs = vec![c.leader().unwrap().1];
    for _ in 0..20 {
        let f = take_down_leader(&mut c, Takedown::Kill, TAKEOVER)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        assert_eq!(f.old_epoch, *epochs.last().unwrap());
        assert!(
            f.new_epoch > f.old_epoch,
            "epoch went {} -> {}",
            f.old_epoch,
            f.new_epoch
        );
        epochs.push(f.new_epoch);
        // Let the new leader deliver under load for a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    running.abort();
    let tail = load(&log, 1, 2).await.unwrap();
    assert_exactly_once(&c, &log, &tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_wakes_stale_and_is_fenced_without_applying_anything() {
    // The replicas keep delivering after losing the lease (fault injection), as a leader
    // paused between its lease check and its send would: only the shards' epoch fencing
    // can stop the stale one. Without it this test fails (no refusal, stale commits).
    let args = [FAST_LEASE, &["--fault-keep-leading"]].concat();
    let (_dir, mut c, log) = cluster_with(2, &args).await;
    let running = load(&log, 8, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let f = take_down_leader(&mut c, Takedown::Stop, TAKEOVER)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(f.new_epoch > f.old_epoch);
    // The stale leader wakes while the new one delivers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.players[f.old_leader].cont().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Nothing was committed under the old epoch after the takeover: each shard's highest
    // epoch with commits is the new one (or higher), never the stale one. And the stale
    // leader did try: a shard refused it, so the check above is not vacuous.
    let mut refusals = 0;
    for s in &c.shards {
        let st = ShardConn::connect(s.addr(), None)
            .await
            .unwrap()
            .stats(false)
            .await
            .unwrap();
        assert!(
            st.epoch >= f.new_epoch,
            "shard's newest epoch is {}",
            st.epoch
        );
        assert_eq!(st.stale_epoch_commits, 0, "a stale leader committed");
        refusals += st.fenced_refusals;
    }
    assert!(
        refusals > 0,
        "no shard refused the stale leader: fencing was not exercised\n{}",
        c.logs()
    );
    // The stale replica is alive and stood down: it did not crash, and the lease moved on.
    assert!(
        c.players[f.old_leader].exited().is_none(),
        "stale replica exited"
    );
    let (leader, epoch) = c.leader().unwrap();
    assert!(epoch >= f.new_epoch);
    assert_ne!((leader, epoch), (f.old_leader, f.old_epoch));
    let report = running.await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restart_during_a_failover_still_ends_exactly_once() {
    let (_dir, mut c, log) = cluster(3).await;
    let running = load(&log, 8, 4);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let s = round % c.shards.len();
        c.shards[s].kill().await;
        let f = take_down_leader(&mut c, Takedown::Kill, TAKEOVER)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        assert!(f.new_epoch > f.old_epoch);
        c.shards[s].restart().await.unwrap();
    }
    let report = running.await.unwrap();
    assert_exactly_once(&c, &log, &report).await;
}

/// A leader that can no longer renew its lease stops delivering by itself once its renew
/// deadline passes, before anyone else could hold the lease: nobody else can here (the lease
/// file is damaged, which the file lease refuses to reset), so only the leader's own check
/// stops it. With `--fault-keep-leading`, which removes that check, delivery goes on and
/// this test fails; the shards' fencing cannot see it (no newer epoch exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_delivering_by_its_renew_deadline() {
    let (_dir, mut c, log) = servers(1).await;
    c.start_replicas(1, FAST_LEASE).await.unwrap();
    wait_for_leader(&c, TAKEOVER).await.unwrap();
    let running = load(&log, 6, 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shard = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    let delivering = shard.applied().await.unwrap().applied_index;
    assert!(
        delivering > 0,
        "nothing was delivered before the lease broke"
    );
    // The newest version of the lease file (see `lease::file`) does not parse.
    let newest = format!("{}.v{:020}", c.lease_path().display(), u64::MAX / 2);
    std::fs::write(newest, b"not a lease").unwrap();
    // The renew deadline is 700 ms; leave room for the last batches in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = shard.applied().await.unwrap().applied_index;
    let log_then = log.bounds().await.unwrap().1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = shard.applied().await.unwrap().applied_index;
    assert!(
        log.bounds().await.unwrap().1 > log_then,
        "the load stopped: nothing to deliver, so the check above says nothing"
    );
    assert_eq!(
        later,
        stopped,
        "the leader kept delivering without a lease\n{}",
        c.logs()
    );
    let text = std::fs::read_to_string(c.players[0].log_path()).unwrap_or_default();
    assert!(
        text.contains("stepped down"),
        "the player did not say it stepped down:\n{}",
        c.players[0].log_tail(20)
    );
    running.abort();
}
