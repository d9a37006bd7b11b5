//! The LogStore as a Raft group of three real processes on loopback: appends through any
//! replica reach the leader, every replica serves the same dense log, and killing the leader
//! under load loses no acknowledged append and writes no retried one twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bin, free_port};
use logplayer::client::Log;
use logplayer::harness::cluster::Proc;
use logplayer::proto::{Entry, Mutation, mutation::Op};

/// Three (or `n`) replicas, each in its own directory, started with the same `--peers`.
struct Group {
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
    addrs: Vec<String>,
}

impl Group {
    async fn start(n: usize, extra: &[&str]) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let data = dir.path().join(format!("replica-{}", i + 1));
            let mut args: Vec<String> = [
                "logstore",
                "--id",
                &(i + 1).to_string(),
                "--peers",
                &peers,
                "--data",
                data.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let p = Proc::start(
                &format!("replica-{}", i + 1),
                &bin(),
                args,
                Some(addr),
                dir.path(),
            )
            .await
            .expect("a replica starts");
            procs.push(p);
        }
        Group {
            _dir: dir,
            procs,
            addrs,
        }
    }

    fn all(&self) -> String {
        self.addrs.join(",")
    }

    /// The replica that says it leads, once one does.
    async fn leader(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        loop {
            for (i, a) in self.addrs.iter().enumerate() {
                if let Ok(log) = Log::connect(a).await
                    && let Ok(d) = log.describe().await
                    && let Some(r) = d.replica
                    && r.role == "leader"
                {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {wait:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every replica's entries `1..=last` once each has applied them.
    async fn entries_of_each(&self, last: u64) -> Vec<Vec<Entry>> {
        let mut out = Vec::new();
        for a in &self.addrs {
            let log = Log::connect(a).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, l) = log.bounds().await.unwrap_or((0, 0));
                if l >= last {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {a} stuck at {l} of {last}:\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out.push(log.read_range(1, last).await.unwrap());
        }
        out
    }
}

fn add(key: String) -> Vec<Mutation> {
    vec![Mutation {
        key: key.into_bytes().into(),
        op: Some(Op::Add(1)),
    }]
}

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
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for a in &g.addrs {
            v.push(
                Log::connect(a)
                    .await
                    .unwrap()
                    .describe()
                    .await
                    .unwrap()
                    .log_id,
            );
        }
        v
    };
    assert!(
        ids.iter().all(|id| id == &ids[0] && !id.is_empty()),
        "one log id: {ids:?}"
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
    eprintln!(
        "{} appends acknowledged, {refused} refusals or failures retried",
        acked.len()
    );
    assert!(
        refused > 0,
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
