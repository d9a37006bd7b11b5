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
    env: Vec<(String, String)>,
}

/// Starts replica `id` on `addr` with `--peers peers` and `extra` flags, its data in
/// `dir/replica-ID`; its failure comes with the replica's log.
async fn try_spawn(
    dir: &std::path::Path,
    (id, addr): (usize, &str),
    peers: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Result<Proc, String> {
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
    Proc::start_with_env(&format!("replica-{id}"), &bin(), args, Some(addr), dir, env)
        .await
        .map_err(|e| {
            let log = std::fs::read_to_string(dir.join(format!("replica-{id}.log")));
            format!("{e}: {}", log.unwrap_or_default())
        })
}

impl Group {
    pub async fn start(n: usize, extra: &[&str]) -> Group {
        Self::start_with_env(n, extra, &[]).await
    }

    /// [`Group::start`] with environment variables for every replica (and its restarts).
    pub async fn start_with_env(n: usize, extra: &[&str], env: &[(String, String)]) -> Group {
        // A port found free can be taken before the replica binds it (by another test's
        // server, or as some connection's local port): then the whole group starts again on
        // new ports, since every replica's --peers names them all.
        let mut attempt = 0;
        let (dir, addrs, procs) = loop {
            attempt += 1;
            let dir = tempfile::tempdir().unwrap();
            let addrs: Vec<String> = (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect();
            let peers = logplayer::harness::cluster::peers_flag(&addrs);
            let mut procs = Vec::new();
            let mut failed = None;
            for (i, addr) in addrs.iter().enumerate() {
                match try_spawn(dir.path(), (i + 1, addr), &peers, extra, env).await {
                    Ok(p) => procs.push(p),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => break (dir, addrs, procs),
                Some(e) if attempt < 3 && e.contains("in use") => {
                    eprintln!("a replica's port was taken ({e}); starting the group again");
                    for p in &mut procs {
                        p.kill().await;
                    }
                }
                Some(e) => panic!("a replica starts: {e}"),
            }
        };
        Group {
            _dir: dir,
            procs,
            addrs,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
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
        self.procs.push(
            try_spawn(self._dir.path(), (id, &addr), &peers, &extra, &self.env)
                .await
                .unwrap_or_else(|e| panic!("a replica starts: {e}")),
        );
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
    try_write(log, id, from, n)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`write`], saying which append was still refused after 30 s instead of panicking.
pub async fn try_write(log: &Log, id: &str, from: u64, n: u64) -> Result<Vec<(u64, u64)>, String> {
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
                Err(e) if Instant::now() >= deadline => return Err(format!("{id} {seq}: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    Ok(out)
}

/// A replica of another log (its directory holds log B's five entries) started among log
/// A's replicas, in place of A's replica 3, with `env` on every replica. It must be refused
/// by name, log A must go on, and nothing of log A may be written over log B's replica.
/// Returns what went wrong, if anything (`tests/replicated.rs` requires nothing; with the
/// log-id check broken, `tests/mutations.rs` requires something).
pub async fn stray_replica(env: &[(String, String)]) -> Result<(), String> {
    let mut a = Group::start_with_env(3, &[], env).await;
    let mut b = Group::start_with_env(3, &[], env).await;
    let log_a = Log::connect(&a.all()).await.unwrap();
    let log_b = Log::connect(&b.all()).await.unwrap();
    try_write(&log_a, "a", 1, 5).await?;
    try_write(&log_b, "b", 1, 5).await?;
    // Once B's replica 3 has applied log B's entries (so it knows its log's id), it is
    // stopped and its directory copied over A's replica 3's.
    b.entries_of_each(5).await;
    b.procs[2].kill().await;
    a.procs[2].kill().await;
    let (b3, a3) = (b.data(3), a.data(3));
    std::fs::remove_dir_all(&a3).unwrap();
    std::fs::create_dir_all(&a3).unwrap();
    for f in std::fs::read_dir(&b3).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), a3.join(f.file_name())).unwrap();
    }
    a.procs[2].restart().await.unwrap();
    let told = log_says(
        &a.procs[2],
        "belong to different logs",
        Duration::from_secs(20),
    )
    .await;
    try_write(&log_a, "a", 6, 5)
        .await
        .map_err(|e| format!("log A stopped taking appends with log B's replica among it: {e}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id_b = Log::connect(&b.addrs[0])
        .await
        .unwrap()
        .describe()
        .await
        .unwrap()
        .log_id;
    let stray = Log::connect(&a.addrs[2]).await.unwrap();
    let id = stray.describe().await.map(|d| d.log_id).unwrap_or_default();
    let (_, last) = stray.bounds().await.unwrap_or((0, 0));
    if id != id_b || last > 5 {
        return Err(format!(
            "log A was written over log B's replica: it says log {id:?} (B is {id_b:?}) and holds entries up to {last} (B has 5)"
        ));
    }
    if !told {
        return Err(format!("the replica of log B was not told:\n{}", a.logs()));
    }
    Ok(())
}

/// A copy of a follower's directory started beside it under the same `--id` (with `env`
/// on every replica): the leader, which hears the follower in its answers, must refuse the
/// copy's vote requests naming the id, the copy must be told, the log must go on, and every
/// replica must hold one same log. Returns what went wrong, if anything
/// (`tests/replicated.rs` requires nothing; with the incarnation check broken,
/// `tests/mutations.rs` requires something).
pub async fn twin_replica(env: &[(String, String)]) -> Result<(), String> {
    let mut g = Group::start_with_env(3, &[], env).await;
    let log = Log::connect(&g.all()).await.unwrap();
    try_write(&log, "a", 1, 5).await?;
    g.entries_of_each(5).await;
    let leader = g.leader(Duration::from_secs(20)).await;
    let f = (leader + 1) % 3;
    let id = f + 1;
    // The follower stopped, its directory copied, and both started.
    g.procs[f].kill().await;
    let twin_dir = g._dir.path().join(format!("twin-of-{id}"));
    std::fs::create_dir_all(&twin_dir).unwrap();
    for file in std::fs::read_dir(g.data(id)).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), twin_dir.join(file.file_name())).unwrap();
    }
    g.procs[f].restart().await.map_err(|e| e.to_string())?;
    // The follower's restart within 600 ms of its last answer may be said too, for up to
    // 600 ms from the new process's first answer: only what the leader says once that has
    // passed counts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader_log = g.procs[leader].log_path();
    let before = std::fs::read_to_string(leader_log).map_or(0, |l| l.len());
    let twin_addr = format!("127.0.0.1:{}", free_port());
    let mut addrs = g.addrs.clone();
    addrs[f] = twin_addr.clone();
    let args: Vec<String> = [
        "logstore",
        "--id",
        &id.to_string(),
        "--peers",
        &logplayer::harness::cluster::peers_flag(&addrs),
        "--data",
        twin_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut twin = Proc::start_with_env(
        "twin",
        &bin(),
        args,
        Some(twin_addr.as_str()),
        g._dir.path(),
        env,
    )
    .await
    .map_err(|e| format!("the copy starts: {e}"))?;
    let said = format!("two processes speak as replica {id}");
    let wait = Duration::from_secs(20);
    let deadline = Instant::now() + wait;
    let mut leader_told = false;
    while !leader_told && Instant::now() < deadline {
        let log = std::fs::read_to_string(leader_log).unwrap_or_default();
        leader_told = log.get(before..).is_some_and(|l| l.contains(&said));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twin_told = log_says(&twin, &said, wait).await;
    let went_on = try_write(&log, "a", 6, 20).await;
    let twin_log = twin.log_tail(20);
    twin.kill().await;
    went_on.map_err(|e| {
        format!("the log stopped taking appends with a copy of replica {id} beside it: {e}")
    })?;
    try_write(&log, "a", 26, 5).await?;
    let each = g.entries_of_each(30).await;
    if each.iter().any(|e| *e != each[0]) {
        return Err(format!(
            "the replicas hold different logs after a copy of replica {id} ran beside it"
        ));
    }
    if !leader_told || !twin_told {
        return Err(format!(
            "a copy of replica {id} ran beside it and nobody said so (leader told: {leader_told}, copy told: {twin_told}):\n{}\n--- twin ---\n{twin_log}",
            g.logs()
        ));
    }
    Ok(())
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
