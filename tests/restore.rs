//! A shard whose data directory is put back to an older copy (a restore from backup, or a
//! disk that lost acknowledged commits another way) is caught up from the log: every entry
//! it lost is sent again, none twice, and the player says at ERROR that the shard went back
//! below what it had acknowledged.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bin, eventually};
use logplayer::client::{Log, ShardConn};
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;
use logplayer::proto::{Mutation, mutation::Op};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Appends `n` non-idempotent entries (an add to a counter and an append to a list, so a
/// duplicate or a gap changes the state) and returns the last index.
async fn write(log: &Log, from: u64, n: u64) -> u64 {
    let mut last = 0;
    for i in from..from + n {
        let m = vec![
            Mutation {
                key: format!("c{}", i % 5).into_bytes().into(),
                op: Some(Op::Add(i as i64)),
            },
            Mutation {
                key: b"list".to_vec().into(),
                op: Some(Op::Append(format!("{i}").into_bytes().into())),
            },
        ];
        last = log.append(m, None, 0).await.unwrap();
    }
    last
}

async fn applied_reaches(c: &Cluster, last: u64) {
    let addr = c.shards[0].addr().to_owned();
    let reached = eventually(Duration::from_secs(30), || async {
        match ShardConn::connect(&addr, None).await {
            Ok(s) => s.applied().await.is_ok_and(|a| a.applied_index == last),
            Err(_) => false,
        }
    })
    .await;
    assert!(reached, "the shard did not apply {last}\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restored_from_an_older_copy_is_sent_what_it_lost_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 1).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let first = write(&log, 1, 40).await;
    applied_reaches(&c, first).await;
    // A copy of the stopped shard's data, then 40 more entries applied after it.
    let data = dir.path().join("shard-s0");
    let copy = dir.path().join("shard-s0-copy");
    assert_eq!(
        c.shards[0].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    copy_dir(&data, &copy);
    c.shards[0].restart().await.unwrap();
    let last = write(&log, 41, 40).await;
    applied_reaches(&c, last).await;
    // Put the copy back: the shard restarts having applied only the first 40.
    assert_eq!(
        c.shards[0].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    c.shards[0].restart().await.unwrap();
    applied_reaches(&c, last).await;
    let report = check(&log, &c.shard_map(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        report.pass,
        "exactly-once violated:\n{report}\n{}",
        c.logs()
    );
    assert_eq!(report.entries, last);
    let said = std::fs::read_to_string(c.players[0].log_path()).unwrap_or_default();
    assert!(
        said.lines().any(|l| l.contains("ERROR")
            && l.contains("went back below what it had acknowledged")
            && l.contains(&format!("applied={first}"))
            && l.contains("acknowledged=")),
        "the player did not say the shard went back:\n{}",
        c.players[0].log_tail(30)
    );
    c.stop().await;
}
