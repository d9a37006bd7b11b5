//! Our servers as child processes: start, SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restart on the
//! same address. Used by `demo`, `bench` and the integration tests, so every claim about
//! the system is made against real processes over real sockets.
//!
//! A server prints `listening on ADDR` on stdout once bound; the harness waits for that
//! line. Each process's stderr (its logs) goes to `<dir>/<name>.log`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited before it was listening; see {log}")]
    NoListen { name: String, log: String },
    #[error("signalling {name}: {source}")]
    Signal { name: String, source: nix::Error },
    #[error("the replicated log at {addrs} did not elect its first leader within 30 s: {last}")]
    NoLogLeader { addrs: String, last: String },
}

/// A loopback port free right now (for a server whose address must be known before it
/// starts, such as a replica its peers dial), and never one this process was given before.
///
/// The kernel may hand the same ephemeral port to two binds in a row once the first
/// listener is closed (CI run 123 got one port for two replicas of a group). So the ports
/// given out are remembered, and a port given before is asked for again, a few times. A
/// server another process starts on port 0 may still take a port given here before its
/// owner binds it: the tests start a group again on new ports when a bind says "in use".
pub fn free_port() -> std::io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // A poisoned lock only means another thread panicked while inserting a port;
        // the set is still usable.
        let mut set = given.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "64 loopback ports in a row had already been given out in this process",
    ))
}

/// Waits until a new replicated log answers `Bounds`: its first leader is elected and has
/// established the log's id (clients are refused with `unavailable` until then).
async fn wait_for_log_id(addrs: &str) -> Result<(), ClusterError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match crate::client::Log::connect(addrs).await {
            Ok(log) => match log.describe().await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() > deadline {
            return Err(ClusterError::NoLogLeader {
                addrs: addrs.to_owned(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `--peers` value for log replicas at `addrs` (ids 1, 2, ... in that order).
pub fn peers_flag(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `logplayer` binary to run: `$LOGPLAYER_BIN`, else this executable.
pub fn binary() -> PathBuf {
    std::env::var_os("LOGPLAYER_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("logplayer"))
}

/// One child process.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    /// `--listen` value for restarts (the address first bound), if it is a server.
    pub addr: Option<String>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
    /// Environment variables set on the child (on top of this process's).
    env: Vec<(String, String)>,
}

impl Proc {
    /// Starts `bin args...`; for a server, `listen` is passed as `--listen` and the bound
    /// address is read back.
    pub async fn start(
        name: &str,
        bin: &Path,
        args: Vec<String>,
        listen: Option<&str>,
        log_dir: &Path,
    ) -> Result<Proc, ClusterError> {
        Self::start_with_env(name, bin, args, listen, log_dir, &[]).await
    }

    /// [`Proc::start`] with extra environment variables for the child (and its restarts).
    pub async fn start_with_env(
        name: &str,
        bin: &Path,
        args: Vec<String>,
        listen: Option<&str>,
        log_dir: &Path,
        env: &[(String, String)],
    ) -> Result<Proc, ClusterError> {
        let mut p = Proc {
            name: name.to_owned(),
            bin: bin.to_owned(),
            args,
            addr: listen.map(str::to_owned),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
            env: env.to_vec(),
        };
        p.spawn().await?;
        Ok(p)
    }

    /// The TLS flags for this process (see [`use_tls`]), or `LOGPLAYER_INSECURE` in its
    /// environment, unless its arguments already choose.
    fn security(&self, cmd: &mut Command) {
        if self
            .args
            .iter()
            .any(|a| a == "--insecure" || a == "--tls-cert")
        {
            return;
        }
        let Some(certs) = CERTS.get() else {
            cmd.env("LOGPLAYER_INSECURE", "true");
            return;
        };
        let arg = |i: usize| self.args.get(i).map(String::as_str);
        let id = self
            .args
            .iter()
            .position(|a| a == "--id")
            .and_then(|i| arg(i + 1));
        let shard;
        let files = match (arg(0), arg(1), id) {
            (Some("logstore"), next, _) if next != Some("members") => &certs.logstore,
            (Some("shard"), next, Some(id)) if next.is_none_or(|n| n.starts_with("--")) => {
                match certs.shard(id) {
                    Ok(f) => {
                        shard = f;
                        &shard
                    }
                    // It starts without TLS files and says why: no TLS configured.
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "cannot issue the shard's certificate");
                        return;
                    }
                }
            }
            (Some("player"), ..) => &certs.player,
            _ => &certs.client,
        };
        cmd.args(files.flags());
    }

    async fn spawn(&mut self) -> Result<(), ClusterError> {
        let spawn_err = |source| ClusterError::Spawn {
            name: self.name.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_err)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.security(&mut cmd);
        if let Some(a) = &self.addr {
            cmd.args(["--listen", a]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(spawn_err)?;
        self.starts += 1;
        if self.addr.is_some() {
            let stdout = child.stdout.take();
            let mut lines = stdout.map(|s| BufReader::new(s).lines());
            let mut bound = None;
            if let Some(lines) = lines.as_mut() {
                let read = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(a) = line.strip_prefix("listening on ") {
                            return Some(a.trim().to_owned());
                        }
                    }
                    None
                });
                bound = read.await.ok().flatten();
            }
            match bound {
                Some(a) => self.addr = Some(a),
                None => {
                    let _ = child.start_kill();
                    return Err(ClusterError::NoListen {
                        name: self.name.clone(),
                        log: self.log.display().to_string(),
                    });
                }
            }
            // Keep draining stdout so the child never blocks on a full pipe.
            if let Some(mut lines) = lines {
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// The running process's id (for reading its usage from `/proc`).
    pub fn os_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .map(|id| Pid::from_raw(id as i32))
    }

    fn signal(&self, sig: Signal) -> Result<(), ClusterError> {
        if let Some(pid) = self.pid() {
            kill(pid, sig).map_err(|source| ClusterError::Signal {
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns the exit code if it exited.
    pub async fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let _ = self.signal(Signal::SIGTERM);
        let mut c = self.child.take()?;
        match tokio::time::timeout(grace, c.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = c.start_kill();
                let _ = c.wait().await;
                None
            }
        }
    }

    /// Peak resident memory of the running child in MiB (Linux `VmHWM`), if readable.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid()?.as_raw())).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    pub fn stop(&self) -> Result<(), ClusterError> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn cont(&self) -> Result<(), ClusterError> {
        self.signal(Signal::SIGCONT)
    }

    /// Adds arguments for the next start (and those after it).
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|a| (*a).to_owned()));
    }

    /// Starts again with the same arguments (and address).
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill().await;
        self.spawn().await
    }

    /// Whether the process has exited (and its code).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let c = self.child.as_mut()?;
        c.try_wait().ok().flatten().map(|s| s.code())
    }

    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the process's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

static CERTS: std::sync::OnceLock<crate::tls::issue::LocalCerts> = std::sync::OnceLock::new();

/// Runs every process this process starts from now on over mutual TLS with `certs` (the
/// LogStore with its replica certificate, each shard with its own, players with the player's,
/// anything else with the client's); without it they run `--insecure`. Set once; `false`
/// if already set.
pub fn use_tls(certs: crate::tls::issue::LocalCerts) -> bool {
    CERTS.set(certs).is_ok()
}

/// A LogStore, shards and a player on this machine.
pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// Environment variables set on every process the cluster starts.
    pub env: Vec<(String, String)>,
    /// The LogStore (replica 1 of a replicated one).
    pub logstore: Proc,
    /// The other replicas of a replicated LogStore (ids 2, 3, ...); empty for a single node.
    pub log_peers: Vec<Proc>,
    pub shards: Vec<Proc>,
    pub players: Vec<Proc>,
}

impl Cluster {
    /// Starts a LogStore and `n` shards (the player separately: see [`Cluster::start_player`]).
    pub async fn start(dir: &Path, bin: &Path, n: usize) -> Result<Cluster, ClusterError> {
        Self::start_with(dir, bin, n, &[], &[]).await
    }

    /// Like [`Cluster::start`], passing `logstore_extra` to the LogStore and `shard_extra`
    /// to every shard.
    pub async fn start_with(
        dir: &Path,
        bin: &Path,
        n: usize,
        logstore_extra: &[&str],
        shard_extra: &[&str],
    ) -> Result<Cluster, ClusterError> {
        Self::start_with_env(dir, bin, n, logstore_extra, shard_extra, &[]).await
    }

    /// [`Cluster::start_with`], every process (players started later included) with the
    /// environment variables `env`.
    pub async fn start_with_env(
        dir: &Path,
        bin: &Path,
        n: usize,
        logstore_extra: &[&str],
        shard_extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Cluster, ClusterError> {
        let d = |s: &str| dir.join(s).display().to_string();
        let logstore = Proc::start_with_env(
            "logstore",
            bin,
            ["logstore".into(), "--data".into(), d("logstore")]
                .into_iter()
                .chain(logstore_extra.iter().map(|s| s.to_string()))
                .collect(),
            Some("127.0.0.1:0"),
            dir,
            env,
        )
        .await?;
        let shards = Self::start_shards(dir, bin, n, shard_extra, env).await?;
        Ok(Cluster {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            env: env.to_vec(),
            logstore,
            log_peers: Vec::new(),
            shards,
            players: Vec::new(),
        })
    }

    /// A LogStore replicated by a Raft group of `replicas` processes (ids 1..=replicas, each
    /// on a loopback port picked now and kept across restarts) and `n` shards.
    pub async fn start_replicated(
        dir: &Path,
        bin: &Path,
        (n, shard_extra): (usize, &[&str]),
        replicas: usize,
        env: &[(String, String)],
    ) -> Result<Cluster, ClusterError> {
        // A port found free can be taken before its replica binds it (by another test's
        // server, or as some connection's local port): then the group starts again on new
        // ports, since every replica's --peers names them all.
        // Only a group this call creates is started again: the directories of one already
        // there (a `--data` reused) are never removed.
        let fresh = (1..=replicas.max(1)).all(|i| !dir.join(format!("logstore-{i}")).exists());
        let mut attempt = 0;
        let (addrs, mut procs) = loop {
            attempt += 1;
            match Self::start_log_group(dir, bin, replicas, env).await {
                Ok(started) => break started,
                Err((e, mut started)) => {
                    for p in &mut started {
                        p.kill().await;
                    }
                    // Only the bind of a port this attempt picked (not, say, a data
                    // directory another run holds, whose refusal says "in use" too).
                    let taken = matches!(&e, ClusterError::NoListen { log, .. }
                    if std::fs::read_to_string(log).is_ok_and(|l| l.lines().any(|l| {
                        l.contains("binding 127.0.0.1:") && l.contains("in use")
                    })));
                    if !taken || !fresh || attempt >= 3 {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "a log replica's port was taken; starting the group again");
                    // The attempt's directories and logs (appended to on each start) go, so
                    // the next attempt starts a new group and its failures read alone.
                    for i in 1..=replicas.max(1) {
                        let _ = std::fs::remove_dir_all(dir.join(format!("logstore-{i}")));
                        let _ = std::fs::remove_file(dir.join(format!("logstore-{i}.log")));
                    }
                }
            }
        };
        wait_for_log_id(&addrs.join(",")).await?;
        let logstore = procs.remove(0);
        let shards = Self::start_shards(dir, bin, n, shard_extra, env).await?;
        Ok(Cluster {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            env: env.to_vec(),
            logstore,
            log_peers: procs,
            shards,
            players: Vec::new(),
        })
    }

    /// Starts `replicas` log replicas on ports free right now; on failure, the error and
    /// the replicas already started.
    async fn start_log_group(
        dir: &Path,
        bin: &Path,
        replicas: usize,
        env: &[(String, String)],
    ) -> Result<(Vec<String>, Vec<Proc>), (ClusterError, Vec<Proc>)> {
        let addrs: Vec<String> = (0..replicas.max(1))
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()
            .map_err(|source| {
                let name = "logstore".into();
                (ClusterError::Spawn { name, source }, Vec::new())
            })?;
        let peers = peers_flag(&addrs);
        let mut procs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let data = dir.join(format!("logstore-{id}")).display().to_string();
            let args = ["logstore", "--id", &id, "--peers", &peers, "--data", &data];
            let started = Proc::start_with_env(
                &format!("logstore-{id}"),
                bin,
                args.iter().map(|s| s.to_string()).collect(),
                Some(addr),
                dir,
                env,
            )
            .await;
            match started {
                Ok(p) => procs.push(p),
                Err(e) => return Err((e, procs)),
            }
        }
        Ok((addrs, procs))
    }

    /// SIGTERMs every process: players first, then shards, then the log (5 s each to exit).
    pub async fn stop(&mut self) {
        for p in self.players.iter_mut().chain(self.shards.iter_mut()) {
            p.terminate(Duration::from_secs(5)).await;
        }
        for r in self.log_replicas() {
            r.terminate(Duration::from_secs(5)).await;
        }
    }

    /// Every LogStore replica (one for a single node).
    pub fn log_replicas(&mut self) -> Vec<&mut Proc> {
        std::iter::once(&mut self.logstore)
            .chain(self.log_peers.iter_mut())
            .collect()
    }

    /// The process ids of the LogStore replicas, the shards and the players.
    pub fn component_pids(&self) -> [Vec<u32>; 3] {
        let ids = |ps: &mut dyn Iterator<Item = &Proc>| ps.filter_map(Proc::os_pid).collect();
        [
            ids(&mut std::iter::once(&self.logstore).chain(&self.log_peers)),
            ids(&mut self.shards.iter()),
            ids(&mut self.players.iter()),
        ]
    }

    /// The address clients use: every replica's, comma-separated.
    pub fn logstore_addrs(&self) -> String {
        std::iter::once(&self.logstore)
            .chain(&self.log_peers)
            .map(|p| p.addr().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The LogStore replica that says it leads (as an index of [`Cluster::log_replicas`]).
    pub async fn log_leader(&self) -> Option<usize> {
        for (i, p) in std::iter::once(&self.logstore)
            .chain(&self.log_peers)
            .enumerate()
        {
            if let Ok(log) = crate::client::Log::connect(p.addr()).await
                && let Ok(d) = log.describe().await
                && d.replica.is_some_and(|r| r.role == "leader")
            {
                return Some(i);
            }
        }
        None
    }

    async fn start_shards(
        dir: &Path,
        bin: &Path,
        n: usize,
        shard_extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Vec<Proc>, ClusterError> {
        let d = |s: &str| dir.join(s).display().to_string();
        let mut shards = Vec::new();
        for i in 0..n {
            let id = format!("s{i}");
            shards.push(
                Proc::start_with_env(
                    &format!("shard-{id}"),
                    bin,
                    [
                        "shard".into(),
                        "--id".into(),
                        id.clone(),
                        "--data".into(),
                        d(&format!("shard-{id}")),
                    ]
                    .into_iter()
                    .chain(shard_extra.iter().map(|s| s.to_string()))
                    .collect(),
                    Some("127.0.0.1:0"),
                    dir,
                    env,
                )
                .await?,
            );
        }
        Ok(shards)
    }

    /// `ID=ADDR` specs of the shards (even slot split).
    pub fn shard_specs(&self) -> Vec<String> {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, s)| format!("s{i}={}", s.addr()))
            .collect()
    }

    pub fn shard_map(&self) -> crate::routing::ShardMap {
        crate::routing::ShardMap::from_specs(&self.shard_specs())
            .unwrap_or_else(|e| unreachable!("the harness builds valid maps: {e}"))
    }

    /// Starts a player with extra arguments.
    pub async fn start_player(&mut self, extra: &[&str]) -> Result<usize, ClusterError> {
        let mut args = vec![
            "player".to_string(),
            "--logstore".into(),
            self.logstore_addrs(),
        ];
        for s in self.shard_specs() {
            args.push("--shard".into());
            args.push(s);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let n = self.players.len();
        let p = Proc::start_with_env(
            &format!("player-{n}"),
            &self.bin,
            args,
            None,
            &self.dir,
            &self.env,
        )
        .await?;
        self.players.push(p);
        Ok(n)
    }

    /// Where replicas started by [`Cluster::start_replicas`] keep their lease and cursors.
    pub fn lease_path(&self) -> PathBuf {
        self.dir.join("player.lease")
    }

    pub fn cursor_path(&self) -> PathBuf {
        self.dir.join("cursors.json")
    }

    /// Starts `n` player replicas sharing a file lease and a cursor file; replica `i` has
    /// identity `player-i`. Short lease settings can be passed in `extra`.
    pub async fn start_replicas(&mut self, n: usize, extra: &[&str]) -> Result<(), ClusterError> {
        for _ in 0..n {
            let i = self.players.len();
            let (lease, cursors) = (
                self.lease_path().display().to_string(),
                self.cursor_path().display().to_string(),
            );
            let identity = format!("player-{i}");
            let mut args: Vec<&str> = vec![
                "--lease-file",
                &lease,
                "--cursor-file",
                &cursors,
                "--identity",
                &identity,
            ];
            args.extend_from_slice(extra);
            self.start_player(&args).await?;
        }
        Ok(())
    }

    /// The current holder of the file lease (as a player index) and its epoch, if the lease
    /// file is readable and names one of our replicas.
    pub fn leader(&self) -> Option<(usize, u64)> {
        let (holder, epoch) = crate::lease::FileLease::current(&self.lease_path()).ok()?;
        let i: usize = holder?.strip_prefix("player-")?.parse().ok()?;
        (i < self.players.len()).then_some((i, epoch))
    }

    /// Log tails of every process, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.logstore)
            .chain(&self.log_peers)
            .chain(&self.shards)
            .chain(&self.players)
        {
            out.push_str(&format!(
                "--- {} ({})\n{}\n",
                p.name,
                p.log_path().display(),
                p.log_tail(15)
            ));
        }
        out
    }
}
