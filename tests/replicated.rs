//! The LogStore as a Raft group of three real processes on loopback: appends through any
//! replica reach the leader, every replica serves the same dense log, and killing the leader
//! under load loses no acknowledged append and writes no retried one twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::group::{Group, add, log_says, stray_replica, twin_replica, write};
use common::{bin, free_port};
use logplayer::client::Log;
use logplayer::harness::cluster::Proc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_one_dense_log_from_every_address() {
    let g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    // Through a follower's address too: the client follows the leader.
    let log = Log::connect(&g.all()).await.unwrap();
    let mut indexes = Vec::new();
    for i in 0..300u64 {
        let index = log
            .append(add(format!("k{i}")), Some(("w", i + 1)), 0)
            .await
            .unwrap_or_else(|e| panic!("append {i}: {e}\n{}", g.logs()));
        indexes.push(index);
    }
    assert_eq!(indexes, (1..=300).collect::<Vec<_>>(), "dense, in order");
    // A retry of the last append is answered with its index, not written again.
    let again = log
        .append(add("k299".into()), Some(("w", 300)), 0)
        .await
        .unwrap();
    assert_eq!(again, 300);
    let each = g.entries_of_each(300).await;
    for (i, entries) in each.iter().enumerate() {
        assert_eq!(entries.len(), 300, "replica {}", i + 1);
        assert_eq!(entries, &each[0], "replica {} serves another log", i + 1);
    }
    let mut ids = Vec::new();
    for a in &g.addrs {
        let d = Log::connect(a).await.unwrap().describe().await.unwrap();
        // Every replica applied the same appends: one writer in its table.
        assert_eq!((d.writers, d.max_writers), (1, 100_000), "replica at {a}");
        // The leader has applied an entry of its own term (what the player takes as its
        // knowing where the log ends); the replicas agree on the term.
        let r = d.replica.expect("a replica says where it stands");
        if r.role == "leader" {
            assert_eq!(r.applied_term, r.raft_term, "{r:?}");
        }
        if r.role != "leader" {
            assert!(!r.leads_a_majority, "{r:?}");
        }
        assert!(r.applied_term > 0 && r.applied_term <= r.raft_term, "{r:?}");
        ids.push(d.log_id);
    }
    assert!(
        ids.iter().all(|id| id == &ids[0] && !id.is_empty()),
        "one log id: {ids:?}"
    );
}

/// The replicated log checks an append as the single-node one does, before proposing it:
/// one byte over the entry limit, an empty transaction, an empty key, a mutation without an
/// op and an overlong writer id are each refused with their reason, and nothing reaches the
/// Raft log (the next valid append gets index 1 on every replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_log_refuses_invalid_and_oversized_appends_and_writes_nothing() {
    use logplayer::grpc::Reason;
    use logplayer::limits::{DEFAULT_MAX_ENTRY_BYTES, entry_bytes};
    use logplayer::proto::{Mutation, mutation::Op};

    let g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    let over = {
        let with = |n: usize| {
            vec![Mutation {
                key: b"l".to_vec().into(),
                op: Some(Op::Append(vec![b'x'; n].into())),
            }]
        };
        let mut n = DEFAULT_MAX_ENTRY_BYTES;
        while entry_bytes(&with(n)) > DEFAULT_MAX_ENTRY_BYTES + 1 {
            n -= 1;
        }
        with(n)
    };
    assert!(entry_bytes(&over) > DEFAULT_MAX_ENTRY_BYTES);
    let no_op = vec![Mutation {
        key: b"k".to_vec().into(),
        op: None,
    }];
    let empty_key = vec![Mutation {
        key: Vec::new().into(),
        op: Some(Op::Add(1)),
    }];
    let long_writer = "w".repeat(logplayer::logstore::MAX_WRITER_ID_BYTES + 1);
    // (what, the append, its writer, the reason expected, words of the message)
    type Case<'a> = (
        &'a str,
        Vec<Mutation>,
        Option<(&'a str, u64)>,
        Reason,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("one byte over", over, None, Reason::EntryTooLarge, "bytes"),
        (
            "empty",
            vec![],
            None,
            Reason::Invalid,
            "at least one mutation",
        ),
        ("no op", no_op, None, Reason::Invalid, "has no op"),
        ("empty key", empty_key, None, Reason::Invalid, "empty key"),
        (
            "long writer id",
            add("k".into()),
            Some((long_writer.as_str(), 1)),
            Reason::Invalid,
            "writer id",
        ),
    ];
    for (what, mutations, writer, reason, says) in cases {
        let err = log.append(mutations, writer, 0).await.unwrap_err();
        let logplayer::client::ClientError::Rpc { status, .. } = &err else {
            panic!("{what}: {err}")
        };
        assert_eq!(Reason::of(status), Some(reason), "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {status:?}");
    }
    assert_eq!(log.append(add("k".into()), None, 0).await.unwrap(), 1);
    let each = g.entries_of_each(1).await;
    for (i, entries) in each.iter().enumerate() {
        assert_eq!(entries.len(), 1, "replica {}: {entries:?}", i + 1);
    }
}

/// Replicas that answer the leader's `AppendStream` UNIMPLEMENTED (as a version without it
/// would, during a rolling upgrade) are sent single `AppendEntries` calls instead: the
/// leader says so, and every replica ends with the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_sends_single_calls_to_replicas_without_the_append_stream() {
    let g = Group::start(3, &["--fault-no-append-stream"]).await;
    let leader = g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    write(&log, "w", 1, 100).await;
    let each = g.entries_of_each(100).await;
    for (i, entries) in each.iter().enumerate() {
        assert_eq!(entries, &each[0], "replica {} serves another log", i + 1);
    }
    assert!(
        log_says(
            &g.procs[leader],
            "sending it one AppendEntries at a time",
            Duration::from_secs(5)
        )
        .await,
        "the leader did not fall back to single calls:\n{}",
        g.logs()
    );
}

/// A follower that is down (connections refused) is dialed at openraft's backoff pace, and
/// said once: the leader once dialed it ~13,000 times a second, two WARN lines each, and
/// openraft's heartbeat warned 20 times a second besides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_is_down_is_retried_at_the_backoff_pace_and_said_once() {
    let mut g = Group::start(3, &[]).await;
    let leader = g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    write(&log, "w", 1, 10).await;
    let lines = |g: &Group| -> Vec<String> {
        std::fs::read_to_string(g.procs[leader].log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let before = lines(&g).len();
    let follower = (leader + 1) % 3;
    g.procs[follower].kill().await;
    // Three seconds of appends, each committed by the leader and the other follower.
    let started = Instant::now();
    let mut seq = 11;
    while started.elapsed() < Duration::from_secs(3) {
        write(&log, "w", seq, 10).await;
        seq += 10;
    }
    let since: Vec<String> = lines(&g).split_off(before);
    let count = |what: &str| since.iter().filter(|l| l.contains(what)).count();
    assert!(
        count("WARN") < 100,
        "{} WARN lines in 3 s with a follower down:\n{}",
        count("WARN"),
        g.procs[leader].log_tail(20)
    );
    // Said at most once in the 3 s (the leader may have said it within the last 10 s already,
    // about the same replica starting later than itself), and said at all.
    let said = |lines: &[String]| {
        let peer = format!("peer={}", follower + 1);
        lines
            .iter()
            .filter(|l| l.contains("a peer is unreachable") && l.contains(&peer))
            .count()
    };
    assert!(
        said(&since) <= 1 && said(&lines(&g)) >= 1,
        "the leader should say once that the follower is unreachable:\n{}",
        since.join("\n")
    );
}

/// A writer appends sequences 1..N, each retried with the same `(writer_id, sequence)` until
/// acknowledged, while the leader is SIGKILLed and restarted again and again. Every sequence
/// must be in the log exactly once, at the index it was acknowledged with, on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_append_and_writes_no_retry_twice() {
    let mut g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let log = log.clone();
        let stop = stop.clone();
        async move {
            let mut acked = BTreeMap::new();
            let mut refused = 0u64;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || seq < 300 {
                seq += 1;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match log
                        .append(add(format!("s{seq}")), Some(("w", seq)), 0)
                        .await
                    {
                        Ok(index) => {
                            acked.insert(seq, index);
                            break;
                        }
                        Err(e) => {
                            refused += 1;
                            assert!(
                                Instant::now() < deadline,
                                "append {seq} never acknowledged: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            (acked, refused)
        }
    });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let l = g.leader(Duration::from_secs(20)).await;
        g.procs[l].kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        g.procs[l].restart().await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, refused) = writer.await.unwrap();
    // The client sends a call the transport cut again by itself (to the next replica).
    let resent = log.resent();
    eprintln!(
        "{} appends acknowledged, {refused} refusals or failures retried by the test, {resent} \
         sent again by the client",
        acked.len()
    );
    assert!(
        refused + resent > 0,
        "the kills never interrupted an append: the test proves nothing"
    );
    let last = *acked.values().max().unwrap();
    let each = g.entries_of_each(last).await;
    for (r, entries) in each.iter().enumerate() {
        assert_eq!(entries, &each[0], "replica {} serves another log", r + 1);
        let mut seen = BTreeMap::new();
        for e in entries {
            let key = String::from_utf8_lossy(&e.mutations[0].key).to_string();
            assert!(
                seen.insert(key.clone(), e.index).is_none(),
                "{key} written twice (replica {})",
                r + 1
            );
        }
        for (seq, index) in &acked {
            assert_eq!(
                seen.get(&format!("s{seq}")),
                Some(index),
                "sequence {seq} acknowledged at {index}"
            );
        }
        assert_eq!(
            entries.len(),
            acked.len(),
            "only the writer's sequences are in the log"
        );
    }
}

/// The whole system on a replicated log: a player delivering to three shards while writers
/// append (each retrying with its `(writer_id, sequence)` until acknowledged), the log's
/// leader SIGKILLed 20 times, a follower frozen and another SIGKILLed. Every shard must end equal to
/// what the log implies, and the log must hold each acknowledged append exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_end_exactly_once_while_the_log_leader_is_killed() {
    use logplayer::harness::check::check;
    use logplayer::harness::cluster::Cluster;
    use logplayer::harness::workload::Workload;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_replicated(dir.path(), &bin(), (3, &[]), 3, &[])
        .await
        .unwrap();
    let log = Log::connect(&c.logstore_addrs()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.log_leader().await.is_none() {
        assert!(Instant::now() < deadline, "no log leader:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_player(&[]).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let log = log.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut workload = Workload::new(6, 300, 300, 100 + w);
            let id = format!("tm-{w}");
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seq += 1;
                let txn = workload.next_txn();
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Err(e) = log.append(txn.clone(), Some((&id, seq)), 0).await {
                    assert!(
                        Instant::now() < deadline,
                        "{id} {seq} never acknowledged: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seq
        }));
    }
    // 20 leader kills, with a follower frozen past several election timeouts after the 5th
    // and a follower SIGKILLed after the 10th.
    let mut kills = 0;
    let mut rounds = 0;
    while kills < 20 {
        rounds += 1;
        assert!(
            rounds < 80,
            "only {kills} leader kills in {rounds} rounds:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(l) = c.log_leader().await else {
            continue;
        };
        let f = (l + 1) % 3;
        if rounds == 6 {
            c.log_replicas()[f].stop().unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.log_replicas()[f].cont().unwrap();
            continue;
        }
        if rounds == 12 {
            c.log_replicas()[f].kill().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.log_replicas()[f].restart().await.unwrap();
            continue;
        }
        c.log_replicas()[l].kill().await;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.log_replicas()[l].restart().await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = 0;
    for w in writers {
        acked += w.await.unwrap();
    }
    let result = check(&log, &c.shard_map(), Duration::from_secs(60))
        .await
        .expect("the checker reads the log and every shard");
    let (_, last) = log.bounds().await.unwrap();
    if !result.pass {
        // Which replica disagrees, and where.
        let mut views = Vec::new();
        for p in c.log_replicas() {
            let l = Log::connect(p.addr()).await.unwrap();
            views.push(l.read_range(1, last).await.unwrap());
        }
        for (r, v) in views.iter().enumerate().skip(1) {
            if let Some(i) = (0..v.len().min(views[0].len())).find(|&i| v[i] != views[0][i]) {
                eprintln!(
                    "replica {} differs from replica 1 first at index {}",
                    r + 1,
                    i + 1
                );
            }
        }
        panic!("exactly-once violated:\n{result}\n{}", c.logs());
    }
    assert_eq!(
        last, acked,
        "the log holds each acknowledged append once, and nothing else"
    );
    // No index holds two different entries on any two replicas.
    let mut views = Vec::new();
    for p in c.log_replicas() {
        let one = Log::connect(p.addr()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while one.bounds().await.unwrap_or((0, 0)).1 < last {
            assert!(Instant::now() < deadline, "{} stuck behind {last}", p.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        views.push(one.read_range(1, last).await.unwrap());
    }
    for (r, v) in views.iter().enumerate().skip(1) {
        assert!(v == &views[0], "replica {} serves another log", r + 1);
    }
    eprintln!(
        "{acked} appends through {kills} leader kills, a frozen and a killed follower; {result}"
    );
}

/// Each acknowledged `(sequence, index)` of writer `id` is in every replica's log at that
/// index, and the replicas agree on every entry.
async fn assert_acked_everywhere(g: &Group, acked: &[(&str, Vec<(u64, u64)>)]) {
    let last = acked
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, i)| *i))
        .max()
        .unwrap_or(0);
    let each = g.entries_of_each(last).await;
    for (r, entries) in each.iter().enumerate() {
        assert_eq!(entries, &each[0], "replica {} serves another log", r + 1);
        for (id, v) in acked {
            for (seq, index) in v {
                let e = &entries[(*index - 1) as usize];
                assert_eq!(
                    e.mutations[0].key,
                    format!("{id}-{seq}").into_bytes(),
                    "{id} {seq} was acknowledged at {index} (replica {})",
                    r + 1
                );
            }
        }
    }
}

/// A leader frozen (SIGSTOP) past the election timeout while a client waits on it, then
/// woken: the others elect a new leader and go on; whatever the old leader answers after
/// waking must be true of the final log (it must not acknowledge what it cannot commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_term_acknowledges_nothing_it_did_not_commit() {
    let g = Group::start(3, &[]).await;
    let l = g.leader(Duration::from_secs(20)).await;
    let all = Log::connect(&g.all()).await.unwrap();
    let mut acked = vec![("before", write(&all, "before", 1, 50).await)];
    // A client bound to the old leader alone, appending while it is frozen.
    let stuck = Log::connect(&g.addrs[l]).await.unwrap();
    g.procs[l].stop().unwrap();
    let pending = tokio::spawn(async move {
        let mut answered = Vec::new();
        for seq in 1..=5u64 {
            if let Ok(index) = stuck
                .append(add(format!("frozen-{seq}")), Some(("frozen", seq)), 0)
                .await
            {
                answered.push((seq, index));
            }
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The other two elected a leader among themselves and accept appends.
    acked.push(("during", write(&all, "during", 1, 50).await));
    g.procs[l].cont().unwrap();
    acked.push(("frozen", pending.await.unwrap()));
    acked.push(("after", write(&all, "after", 1, 20).await));
    assert_acked_everywhere(&g, &acked).await;
    let new = g.leader(Duration::from_secs(10)).await;
    eprintln!(
        "old leader {} woke up; leader now {}; the frozen client got {} answers",
        l + 1,
        new + 1,
        acked[2].1.len()
    );
}

/// All three replicas SIGKILLed at once and restarted: every acknowledged append is still
/// there, on every replica, and appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_killed_at_once_lose_no_acknowledged_append() {
    let mut g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    let writer = tokio::spawn({
        let log = log.clone();
        async move { write(&log, "w", 1, 400).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    for p in &mut g.procs {
        p.kill().await;
    }
    for p in &mut g.procs {
        p.restart().await.unwrap();
    }
    let mut acked = vec![("w", writer.await.unwrap())];
    g.leader(Duration::from_secs(20)).await;
    acked.push(("again", write(&log, "again", 1, 20).await));
    assert_acked_everywhere(&g, &acked).await;
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Retention goes through the log: every replica drops the same released prefix (whole
/// segments below it), and a replica that was down while that happened is brought up by a
/// snapshot taken *at the retention point*, so it still holds every retained entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_every_replica_and_a_replica_behind_it_still_serves_what_is_retained() {
    let mut g = Group::start(3, &["--segment-bytes", "4096", "--snapshot-every", "20"]).await;
    g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    write(&log, "w", 1, 50).await;
    // Replica 3 goes down; the others go on, then release most of the log.
    let down = 2;
    if g.leader(Duration::from_secs(5)).await == down {
        g.procs[down].kill().await;
        g.leader(Duration::from_secs(20)).await;
    } else {
        g.procs[down].kill().await;
    }
    let acked = write(&log, "w", 51, 650).await;
    let last = acked.last().unwrap().1;
    let dir = |i: usize| g._dir.path().join(format!("replica-{}", i + 1));
    let up = |i: &usize| *i != down;
    let before: Vec<usize> = (0..3).filter(up).map(|i| segments(&dir(i))).collect();
    assert!(
        before.iter().all(|&n| n > 3),
        "several segments: {before:?}"
    );
    let r = log.retain(600, "").await.unwrap();
    assert_eq!(r.first, 600);
    // A Retain that releases nothing (the players retain at every checkpoint, moved or not)
    // answers the point and writes no Raft entry: each would be synced by every replica and
    // replayed at every restart, and an idle log could never purge them.
    let raft_last = || async {
        let d = log.describe().await.unwrap();
        d.replica.map(|r| (r.last_log, r.id))
    };
    // (Asked of one replica: a follower may still be receiving the Retain above.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_noop = raft_last().await;
    for below in [600, 10, 1] {
        assert_eq!(log.retain(below, "").await.unwrap().first, 600);
    }
    assert_eq!(
        raft_last().await,
        before_noop,
        "a Retain that released nothing wrote an entry"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now: Vec<usize> = (0..3).filter(up).map(|i| segments(&dir(i))).collect();
        if now.iter().zip(&before).all(|(n, b)| n < b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segments not purged: {now:?} (before: {before:?})\n{}",
            g.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replica that was down comes back behind the purge point.
    g.procs[down].restart().await.unwrap();
    let lagging = Log::connect(&g.addrs[down]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (first, l) = lagging.bounds().await.unwrap_or((0, 0));
        if l >= last {
            assert!(
                first <= 600,
                "replica {} lost retained entries: it starts at {first}",
                down + 1
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} stuck at {l} of {last}\n{}",
            down + 1,
            g.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let its_log = std::fs::read_to_string(g.procs[down].log_path()).unwrap_or_default();
    assert!(
        its_log.contains("installed a snapshot from the leader"),
        "the replica was not brought up by a snapshot, so this proves nothing"
    );
    let from_lagging = lagging.read_range(600, last).await.unwrap();
    let from_leader = log.read_range(600, last).await.unwrap();
    assert_eq!(from_lagging.len() as u64, last - 599);
    assert_eq!(from_lagging, from_leader, "the same retained entries");
    let e = lagging.read_range(10, 20).await.unwrap_err();
    assert!(
        e.to_string().contains("below"),
        "released entries are refused: {e}"
    );
}

/// Starts replicas 1–3 on fresh addresses; replica `wrong` gets a `--peers` list with the
/// addresses of its two peers swapped. Returns the addresses and the processes.
async fn start_with_swapped_peers(dir: &std::path::Path, wrong: usize) -> (Vec<String>, Vec<Proc>) {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = |order: [usize; 3]| {
        order
            .iter()
            .enumerate()
            .map(|(id, &a)| format!("{}={}", id + 1, addrs[a]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let list = match (i == wrong, i) {
            (true, 0) => peers([0, 2, 1]),
            (true, 1) => peers([2, 1, 0]),
            (true, _) => peers([1, 0, 2]),
            (false, _) => peers([0, 1, 2]),
        };
        let data = dir.join(format!("r{i}"));
        let args = [
            "logstore",
            "--id",
            &(i + 1).to_string(),
            "--peers",
            &list,
            "--data",
            data.to_str().unwrap(),
        ];
        procs.push(
            Proc::start(
                &format!("replica-{}", i + 1),
                &bin(),
                args.iter().map(|s| s.to_string()).collect(),
                Some(addr),
                dir,
            )
            .await
            .unwrap(),
        );
    }
    (addrs, procs)
}

/// Replica 1 starts a new group with a `--peers` list that maps ids 2 and 3 to each other's
/// address: they refuse its messages by name instead of letting Raft mix them up, and no
/// group forms around the wrong membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_started_with_swapped_peers_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (addrs, procs) = start_with_swapped_peers(dir.path(), 0).await;
    for (p, meant) in [(&procs[2], 2), (&procs[1], 3)] {
        assert!(
            log_says(
                p,
                &format!("meant for replica {meant}"),
                Duration::from_secs(20)
            )
            .await,
            "replica 1's message to {meant} was not refused by name:\n{}",
            p.log_tail(30)
        );
    }
    let log = Log::connect(&addrs.join(",")).await.unwrap();
    let e = log
        .append(add("never".into()), Some(("w", 1)), 0)
        .await
        .expect_err("no group formed, yet an append was acknowledged");
    assert!(e.to_string().contains("no leader"), "{e}");
}

/// A replica whose `--peers` swaps its peers' addresses joins a group another replica
/// started: it follows the group's membership (the addresses replicas dial), warns about
/// its flag, and every address serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_swapped_peers_follows_the_membership_and_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let (addrs, procs) = start_with_swapped_peers(dir.path(), 2).await;
    let log = Log::connect(&addrs.join(",")).await.unwrap();
    write(&log, "w", 1, 10).await;
    assert!(
        log_says(
            &procs[2],
            "--peers differ from the group's membership",
            Duration::from_secs(10)
        )
        .await,
        "replica 3 did not warn about its --peers:\n{}",
        procs[2].log_tail(30)
    );
    // Replica 3 alone, asked for the leader, names the right address.
    let only3 = Log::connect(&addrs[2]).await.unwrap();
    write(&only3, "w3", 1, 3).await;
}

/// A replica of another log (its directory holds log B) started among log A's replicas is
/// refused by both sides, naming both logs, and log A goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_log_is_refused_by_name() {
    stray_replica(&[]).await.unwrap();
}

/// A copy of a follower's directory started beside it under its id is refused by the
/// leader, which says so, as the copy is told; the log goes on and stays one log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_speaking_as_a_replica_is_refused_by_name() {
    twin_replica(&[]).await.unwrap();
}

/// The load driver (`load`, `bench`, `demo`) keeps pipelined append streams: when the log
/// leader is killed, each stream opens again on the new leader and resends what was not
/// answered with the same `(writer_id, sequence)`. Every transaction must end in the log
/// exactly once and none may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_driver_resends_across_leader_kills_and_appends_each_transaction_once() {
    use logplayer::harness::bench::{LoadSpec, drive};
    let _ = tracing_subscriber::fmt()
        .with_env_filter("logplayer=info")
        .with_test_writer()
        .try_init();
    let mut g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    let spec = LoadSpec {
        rate: 800,
        duration: Duration::from_secs(6),
        count: 0,
        concurrency: 32,
        keys_per_txn: 4,
        key_space: 200,
        txn_bytes: 200,
        seed: 3,
    };
    let load = tokio::spawn({
        let log = log.clone();
        async move { drive(&log, &spec, None).await }
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let l = g.leader(Duration::from_secs(20)).await;
        g.procs[l].kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        g.procs[l].restart().await.unwrap();
    }
    let report = load.await.unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.failed, 0, "appends failed:\n{}", g.logs());
    assert!(report.appended > 2000, "the load ran: {report:?}");
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last < report.appended && Instant::now() < deadline {
        last = log.bounds().await.map(|b| b.1).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, report.appended, "each transaction once in the log");
}

/// A single-node LogStore's directory and a log replica's are not interchangeable: each is
/// refused by the other mode, naming the flags that fit, and nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_and_replica_directories_are_refused_by_the_other_mode() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    let mut p = Proc::start(
        "single",
        &bin(),
        vec![
            "logstore".into(),
            "--data".into(),
            single.display().to_string(),
        ],
        Some("127.0.0.1:0"),
        dir.path(),
    )
    .await
    .unwrap();
    let log = Log::connect(p.addr()).await.unwrap();
    log.append(add("k".into()), None, 0).await.unwrap();
    p.kill().await;
    let port = free_port();
    let out = std::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args([
            "logstore",
            "--id",
            "1",
            "--peers",
            &format!("1=127.0.0.1:{port}"),
        ])
        .args([
            "--data",
            single.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("single-node log"),
        "{err}"
    );
    let g = Group::start(1, &[]).await;
    let mut procs = g.procs;
    for p in &mut procs {
        p.kill().await;
    }
    let replica = g._dir.path().join("replica-1");
    let out = std::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args([
            "logstore",
            "--data",
            replica.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--id and --peers"),
        "{err}"
    );
}

/// Two replicas restarted on each other's directories (or one with another `--id`) would
/// run on another replica's vote and log, and nothing else notices: the messages they get
/// are addressed to the ids they now claim. A directory is bound to its replica's id at
/// first start, and another id on it is refused, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_on_another_replicas_directory_is_refused_naming_both() {
    let g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let peers: Vec<String> = g
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let addrs = g.addrs.clone();
    // Killed and reaped, so that the port below is free again (a drop only signals).
    let mut procs = g.procs;
    for p in &mut procs {
        p.kill().await;
    }
    let replica2 = g._dir.path().join("replica-2");
    let (peers, data) = (peers.join(","), replica2.display().to_string());
    let args = ["logstore", "--id", "3", "--peers", &peers, "--data", &data];
    let args = [&args[..], &["--listen", &addrs[2]]].concat();
    let Some((status, err)) = common::ends_within(&args, Duration::from_secs(10)).await else {
        panic!("replica 3 runs on replica 2's directory");
    };
    assert!(
        !status.success() && err.contains("of replica 2") && err.contains("--id 3"),
        "{err}"
    );
}

/// A replica that is not the lowest id of `--peers`, whose seeding replica never comes,
/// says what it waits for (it used to log that it started, then nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_leader_says_what_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let data = dir.path().join("replica-3").display().to_string();
    let args = vec![
        "logstore".into(),
        "--id".into(),
        "3".into(),
        "--peers".into(),
        peers.join(","),
        "--data".into(),
        data,
    ];
    let addr = format!("127.0.0.1:{}", ports[2]);
    let p = Proc::start("replica-3", &bin(), args, Some(&addr), dir.path())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let text = p.log_tail(40);
        if text.contains("no leader known")
            && text.contains(&format!("replica 1 at 127.0.0.1:{}", ports[0]))
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing said:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A leader cut off from its majority (both followers frozen) keeps its role until it hears
/// of a higher term, but stops saying it leads a majority within an election timeout: the
/// player counts only such a leader's `last` as where the log ends (the others may have
/// elected a leader that committed more). Woken, the group has such a leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_majority_does_not_say_it_leads_one() {
    let g = Group::start(3, &[]).await;
    let l = g.leader(Duration::from_secs(20)).await;
    let all = Log::connect(&g.all()).await.unwrap();
    write(&all, "before", 1, 10).await;
    let says = |a: String| async move {
        let d = Log::connect(&a).await.unwrap().describe().await.unwrap();
        let r = d.replica.expect("a replica says where it stands");
        (r.role, r.leads_a_majority)
    };
    for (i, a) in g.addrs.iter().enumerate().filter(|&(i, _)| i != l) {
        let (role, leads) = says(a.clone()).await;
        assert!(!leads, "replica {} ({role})", i + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !says(g.addrs[l].clone()).await.1 {
        assert!(
            Instant::now() < deadline,
            "the leader does not say it leads a majority"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    for &f in &followers {
        g.procs[f].stop().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (role, leads) = says(g.addrs[l].clone()).await;
    for &f in &followers {
        g.procs[f].cont().unwrap();
    }
    assert!(
        !leads,
        "a {role} cut off from its majority says it leads one"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = g.leader(Duration::from_secs(20)).await;
        if says(g.addrs[l].clone()).await.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader says it leads a majority again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restarted leader stands for election instead of resuming its term (openraft's
/// `enable_leader_restore` is off): its entries reach the followers before its own fsync
/// ends, so it may come back without some of its term's entries, and going on in that term
/// would write different entries under the same Raft ids. A group of one shows it: the
/// replica can only lead again, and must do so in a new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_stands_for_election_instead_of_resuming_its_term() {
    let mut g = Group::start(1, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let term = |g: &Group| {
        let addr = g.addrs[0].clone();
        async move {
            let log = Log::connect(&addr).await.unwrap();
            log.describe().await.unwrap().replica.unwrap().raft_term
        }
    };
    let log = Log::connect(&g.all()).await.unwrap();
    write(&log, "w", 1, 3).await;
    let before = term(&g).await;
    g.procs[0].kill().await;
    g.procs[0].restart().await.unwrap();
    g.leader(Duration::from_secs(20)).await;
    let after = term(&g).await;
    assert!(
        after > before,
        "the restarted leader leads in term {after}, the one it had before ({before}):\n{}",
        g.logs()
    );
    write(&log, "w", 4, 1).await;
}
