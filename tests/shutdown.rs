//! SIGTERM on real processes: each server stops accepting, drains what is in flight and
//! exits 0; nothing acknowledged is lost and nothing is applied twice across the restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use logplayer::client::Log;
use logplayer::harness::bench::{LoadSpec, drive};
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;
use logplayer::proto::{Mutation, mutation::Op};

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"))
}

const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_and_shard_exit_zero_on_sigterm_and_delivery_stays_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 2).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let spec = LoadSpec {
        rate: 400,
        duration: Duration::from_secs(5),
        count: 0,
        concurrency: 32,
        keys_per_txn: 5,
        key_space: 200,
        txn_bytes: 200,
        seed: 7,
    };
    let load = {
        let (log, spec) = (log.clone(), spec.clone());
        tokio::spawn(async move { drive(&log, &spec, None).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.players[0].terminate(GRACE).await,
        Some(0),
        "player exit code\n{}",
        c.logs()
    );
    c.players[0].restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.shards[0].terminate(GRACE).await,
        Some(0),
        "shard exit code\n{}",
        c.logs()
    );
    c.shards[0].restart().await.unwrap();
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0);
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
async fn logstore_sigterm_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 1).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
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
    assert_eq!(
        c.logstore.terminate(GRACE).await,
        Some(0),
        "logstore exit code\n{}",
        c.logs()
    );
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
