//! A shard whose data directory is put back to an older copy (a restore from backup, or a
//! disk that lost acknowledged commits another way) is caught up from the log: every entry
//! it lost is sent again, none twice, and the player says at ERROR that the shard went back
//! below what it had acknowledged. A log put back to an older copy stops the player, which
//! would otherwise deliver nothing of what is appended next until the log passed the
//! shards again, and then skip it; so does one that has grown past the shards again by the
//! time the player starts (it holds other entries at the indexes the shards applied).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bin, eventually};
use logplayer::client::{Log, ShardConn};
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;
use logplayer::player::cursor::{CursorStore, FileCursors};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restored_from_an_older_copy_is_sent_what_it_lost_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 1).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let first = write(&log, 1, 40).await;
    applied_by(&c, 0, first).await;
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
    applied_by(&c, 0, last).await;
    // Put the copy back: the shard restarts having applied only the first 40.
    assert_eq!(
        c.shards[0].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    c.shards[0].restart().await.unwrap();
    applied_by(&c, 0, last).await;
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

/// The player's stderr once it has exited (`None` if it is still running after `wait`).
async fn player_exit(c: &mut Cluster, wait: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if c.players[0].exited().is_some() {
            return Some(std::fs::read_to_string(c.players[0].log_path()).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Appends `n` entries from `from`, each adding to a counter on every shard; the last index.
async fn write_everywhere(c: &Cluster, log: &Log, from: u64, n: u64) -> u64 {
    let every: Vec<usize> = (0..c.shards.len()).collect();
    write_on(c, log, &every, from, n).await
}

/// Appends `n` entries from `from`, each adding to a counter on each of `shards`; the last
/// index.
async fn write_on(c: &Cluster, log: &Log, shards: &[usize], from: u64, n: u64) -> u64 {
    let map = c.shard_map();
    let keys: Vec<Vec<u8>> = shards
        .iter()
        .map(|&t| {
            (0u32..)
                .map(|k| format!("c{k}").into_bytes())
                .find(|k| map.shard_of(k) == t)
                .unwrap()
        })
        .collect();
    let mut last = 0;
    for i in from..from + n {
        let m = keys
            .iter()
            .map(|k| Mutation {
                key: k.clone().into(),
                op: Some(Op::Add(i as i64)),
            })
            .collect();
        last = log.append(m, None, 0).await.unwrap();
    }
    last
}

/// Every shard has applied `last`.
async fn all_applied(c: &Cluster, last: u64) {
    for t in 0..c.shards.len() {
        applied_by(c, t, last).await;
    }
}

/// Shard `t` has applied `last`.
async fn applied_by(c: &Cluster, t: usize, last: u64) {
    let s = &c.shards[t];
    let addr = s.addr().to_owned();
    let reached = eventually(Duration::from_secs(30), || async {
        match ShardConn::connect(&addr, None).await {
            Ok(s) => s.applied().await.is_ok_and(|a| a.applied_index == last),
            Err(_) => false,
        }
    })
    .await;
    assert!(reached, "{} did not apply {last}\n{}", s.name, c.logs());
}

/// A running player and two shards that applied 40 entries, each adding to a counter on
/// every shard, from a LogStore whose directory is then put back to a copy taken at 20 (the
/// same log id) and restarted: the cluster, the copy's last index and the last applied.
async fn log_put_back(dir: &Path) -> (Cluster, u64, u64) {
    let mut c = Cluster::start(dir, &bin(), 2).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let copied_at = write_everywhere(&c, &log, 1, 20).await;
    all_applied(&c, copied_at).await;
    let data = dir.join("logstore");
    let copy = dir.join("logstore-copy");
    assert_eq!(c.logstore.terminate(Duration::from_secs(10)).await, Some(0));
    copy_dir(&data, &copy);
    c.logstore.restart().await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let last = write_everywhere(&c, &log, 21, 20).await;
    all_applied(&c, last).await;
    c.logstore.kill().await;
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    c.logstore.restart().await.unwrap();
    (c, copied_at, last)
}

/// The LogStore's directory put back to a copy taken 20 entries ago (the same log id): the
/// running player's main stream, reconnecting, finds the log ending below what it read and
/// stops naming both. Then shard s1 is started empty and the player again: it would start
/// its main stream at 1 for s1, and s0 (which applied 40) would skip what is appended at
/// 21..40 as applied; the player finds s0 ahead of the log and stops too. Then the player is
/// started while s0 is down, and s0 comes back once it delivers: the player finds s0 ahead
/// when it connects. Nothing appended after the restore is delivered as if applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_put_back_to_an_older_copy_stops_the_player_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, copied_at, last) = log_put_back(dir.path()).await;
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the player runs on over the older log:\n{}", c.logs()));
    let expect = |said: &str, who: &str| {
        assert!(
            said.lines()
                .any(|l| (l.contains("ERROR") || l.starts_with("error:"))
                    && l.contains(&format!(
                        "ends at index {copied_at}, but {who} through {last}"
                    ))),
            "the player did not say the log lost entries:\n{said}"
        );
    };
    expect(&said, "this player has read");
    assert_eq!(
        c.shards[1].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    std::fs::remove_dir_all(dir.path().join("shard-s1")).unwrap();
    c.shards[1].restart().await.unwrap();
    c.players[0].restart().await.unwrap();
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("a player starts over the older log:\n{}", c.logs()));
    expect(&said, "shard s0 has applied");
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let now = write_everywhere(&c, &log, 41, 5).await;
    // s0 down while the player starts (its applied index unknown then), back once the
    // player delivers: the player finds it ahead of the log when it connects.
    assert_eq!(
        c.shards[0].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    c.players[0].restart().await.unwrap();
    applied_by(&c, 1, now).await;
    c.shards[0].restart().await.unwrap();
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the player delivers on over the older log:\n{}", c.logs()));
    assert!(
        said.lines().any(|l| l.contains("ERROR")
            && l.contains(&format!(
                "ends at index {now}, but shard s0 has applied through {last}"
            ))),
        "the player did not say the log lost entries:\n{said}"
    );
    let shard = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    assert_eq!(shard.applied().await.unwrap().applied_index, last);
    c.stop().await;
}

/// The LogStore's directory put back to a copy taken 20 entries ago, and 30 other entries
/// appended to it at once: the log reaches past what was delivered (40) again, but holds
/// other entries at 21..40. The running player's main stream, reconnecting, finds that the
/// entry the log holds at the last index it read is not the one it read, and stops naming
/// both. Started again, it finds for each shard as it connects that the entry the log holds
/// at the shard's applied index is not the one the shard applied there, and stops again. No
/// shard applies anything of the regrown log (each would skip 21..40 as applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_put_back_and_grown_past_the_shards_stops_the_player_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, copied_at, last) = log_put_back(dir.path()).await;
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    // Other deltas than 21..40: other entries at the same indexes.
    let regrown = write_everywhere(&c, &log, 1000, 30).await;
    assert_eq!(regrown, copied_at + 30);
    let diverged = |said: &str, who: &str| {
        assert!(
            said.lines()
                .any(|l| (l.contains("ERROR") || l.starts_with("error:"))
                    && l.contains(&format!(
                        "holds another entry at index {last} than the one {who}"
                    ))),
            "the player did not say the log holds another entry than the one {who}:\n{said}"
        );
    };
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the player reads on in the regrown log:\n{}", c.logs()));
    diverged(&said, "this player read");
    // Started again, now with a cursor file of its own.
    let cursors = dir.path().join("restarted-cursors.json");
    c.players.remove(0);
    let cursor_file = cursors.to_str().unwrap();
    c.start_player(&["--cursor-file", cursor_file])
        .await
        .unwrap();
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the player delivers the regrown log over what the shards applied:\n{}",
                c.logs()
            )
        });
    diverged(&said, "shard s");
    // What the shards said they applied, which the log did not vouch for, is not saved as
    // their cursors (it would let retention drop what a shard restored to match the log
    // needs).
    let saved = FileCursors::new(&cursors).load().await.unwrap();
    assert!(
        saved.acked.values().all(|&a| a < last),
        "the stopped player saved the shards' unvouched word as cursors: {:?}",
        saved.acked
    );
    for t in 0..c.shards.len() {
        let shard = ShardConn::connect(c.shards[t].addr(), None).await.unwrap();
        assert_eq!(
            shard.applied().await.unwrap().applied_index,
            last,
            "shard {t} applied entries of the regrown log as if it had the ones before"
        );
    }
    c.stop().await;
}

/// A shard whose last applied entry is a watermark (it owns no key of the entries before it)
/// is checked against the log like one that applied a real entry: the watermark carries the
/// fingerprint of the entry it stands for. The log is put back to a copy taken before the
/// watermark and regrown past it; s0 is then emptied (so only s1 has anything to compare)
/// and the player started again: it finds that the log holds another entry at s1's applied
/// index, and stops naming s1, which applies nothing of the regrown log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_last_at_a_watermark_is_checked_against_a_regrown_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), &bin(), 2).await.unwrap();
    c.start_player(&["--watermark-every", "1"]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let copied_at = write_everywhere(&c, &log, 1, 20).await;
    all_applied(&c, copied_at).await;
    let data = dir.path().join("logstore");
    let copy = dir.path().join("logstore-copy");
    assert_eq!(c.logstore.terminate(Duration::from_secs(10)).await, Some(0));
    copy_dir(&data, &copy);
    c.logstore.restart().await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let last = write_on(&c, &log, &[0], 21, 20).await;
    applied_by(&c, 0, last).await;
    // s1 owns no key of 21..40: it moves on by watermarks alone.
    let s1 = ShardConn::connect(c.shards[1].addr(), None).await.unwrap();
    let moved = eventually(Duration::from_secs(30), || async {
        s1.applied()
            .await
            .is_ok_and(|a| a.applied_index > copied_at + 10)
    })
    .await;
    assert!(moved, "no watermark took s1 past 30\n{}", c.logs());
    c.logstore.kill().await;
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    c.logstore.restart().await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    write_everywhere(&c, &log, 1000, 30).await;
    // The running player read 40 and stops on its own (the main stream's check).
    player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the player reads on in the regrown log:\n{}", c.logs()));
    let at = s1.applied().await.unwrap().applied_index;
    assert_eq!(
        c.shards[0].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    std::fs::remove_dir_all(dir.path().join("shard-s0")).unwrap();
    c.shards[0].restart().await.unwrap();
    c.players.remove(0);
    c.start_player(&["--watermark-every", "1"]).await.unwrap();
    let said = player_exit(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the player delivers the regrown log past s1's watermark:\n{}",
                c.logs()
            )
        });
    assert!(
        said.lines().any(|l| l.contains("ERROR")
            && l.contains(&format!(
                "holds another entry at index {at} than the one shard s1 applied"
            ))),
        "the player did not say the log holds another entry than s1's watermark:\n{said}"
    );
    assert_eq!(s1.applied().await.unwrap().applied_index, at);
    c.stop().await;
}
