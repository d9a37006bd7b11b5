//! A replicated LogStore's replicas as real processes, for the tests of the Raft group
//! (`replicated.rs`, `membership.rs`), and the writes and waits those tests share.

use std::time::{Duration, Instant};

use logplayer::client::Log;
use logplayer::harness::cluster::Proc;
use logplayer::proto::{Entry, Mutation, mutation::Op};

use super::{bin, free_port};

/// Three (or `n`) replicas, each in its own directory, started with the same `--peers`.
pub struct Group {
    pub _dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
    pub addrs: Vec<String>,
    extra: Vec<String>,
}

/// Starts replica `id` on `addr` with `--peers peers` and `extra` flags, its data in
/// `dir/replica-ID`.
async fn spawn(dir: &std::path::Path, id: usize, addr: &str, peers: &str, extra: &[&str]) -> Proc {
    let data = dir.join(format!("replica-{id}"));
    let mut args: Vec<String> = [
        "logstore",
        "--id",
        &id.to_string(),
        "--peers",
        peers,
        "--data",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::start(&format!("replica-{id}"), &bin(), args, Some(addr), dir)
        .await
        .expect("a replica starts")
}

impl Group {
    pub async fn start(n: usize, extra: &[&str]) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = logplayer::harness::cluster::peers_flag(&addrs);
        let mut procs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            procs.push(spawn(dir.path(), i + 1, addr, &peers, extra).await);
        }
        Group {
            _dir: dir,
            procs,
            addrs,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts one more replica (id = the next one) on a fresh address, with `--peers` =
    /// the group's replicas and itself. It is not a member until added.
    pub async fn start_another(&mut self) -> (u64, String) {
        let id = self.procs.len() + 1;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut all = self.addrs.clone();
        all.push(addr.clone());
        let peers = logplayer::harness::cluster::peers_flag(&all);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.procs
            .push(spawn(self._dir.path(), id, &addr, &peers, &extra).await);
        self.addrs.push(addr.clone());
        (id as u64, addr)
    }

    /// Replica `id`'s data directory.
    pub fn data(&self, id: usize) -> std::path::PathBuf {
        self._dir.path().join(format!("replica-{id}"))
    }

    pub fn all(&self) -> String {
        self.addrs.join(",")
    }

    /// The replica that says it leads, once one does.
    pub async fn leader(&self, wait: Duration) -> usize {
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

    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every replica's entries `1..=last` once each has applied them.
    pub async fn entries_of_each(&self, last: u64) -> Vec<Vec<Entry>> {
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

/// One append that adds 1 to `key`.
pub fn add(key: String) -> Vec<Mutation> {
    vec![Mutation {
        key: key.into_bytes().into(),
        op: Some(Op::Add(1)),
    }]
}

/// Appends `n` entries as writer `id` (sequences from `from`), each retried until
/// acknowledged; returns `(sequence, index)` of each.
pub async fn write(log: &Log, id: &str, from: u64, n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for seq in from..from + n {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match log
                .append(add(format!("{id}-{seq}")), Some((id, seq)), 0)
                .await
            {
                Ok(index) => {
                    out.push((seq, index));
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "{id} {seq}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    out
}

/// Waits until `p`'s log contains `text`.
pub async fn log_says(p: &Proc, text: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if std::fs::read_to_string(p.log_path()).is_ok_and(|l| l.contains(text)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
