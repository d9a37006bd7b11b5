//! What the integration tests share: the binary under test, a cluster of our servers as
//! real processes on loopback, the standard load (the harness's witness workload), a free
//! port, and the exactly-once assertion every run ends with. Each test binary uses a part
//! of it, hence `dead_code` is allowed here only.
#![allow(dead_code)]

pub mod group;

use std::path::PathBuf;
use std::time::Duration;

use logplayer::client::Log;
use logplayer::harness::bench::{LoadReport, LoadSpec, drive};
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;

/// The `logplayer` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logplayer"))
}

/// A LogStore and `shards` shards (no player yet), in a temporary directory kept alive by
/// the returned guard, and a client of the LogStore.
pub async fn servers(shards: usize) -> (tempfile::TempDir, Cluster, Log) {
    servers_with(shards, &[]).await
}

/// [`servers`] with extra arguments for every shard (e.g. `--store redb`).
pub async fn servers_with(
    shards: usize,
    shard_extra: &[&str],
) -> (tempfile::TempDir, Cluster, Log) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let c = Cluster::start_with(dir.path(), &bin(), shards, &[], shard_extra)
        .await
        .expect("LogStore and shards start");
    let log = Log::connect(c.logstore.addr())
        .await
        .expect("the LogStore answers");
    (dir, c, log)
}

/// The standard test load: `rate` transactions/s for `seconds`, 6 keys of ~50 bytes each
/// over 300 keys, non-idempotent ops only (see `harness::workload`).
pub fn load_spec(rate: u64, seconds: u64, seed: u64) -> LoadSpec {
    LoadSpec {
        rate,
        duration: Duration::from_secs(seconds),
        count: 0,
        concurrency: 32,
        keys_per_txn: 6,
        key_space: 300,
        txn_bytes: 300,
        seed,
    }
}

/// Drives `spec` in the background.
pub fn start_load(log: &Log, spec: LoadSpec) -> tokio::task::JoinHandle<LoadReport> {
    let log = log.clone();
    tokio::spawn(async move { drive(&log, &spec, None).await })
}

/// No append failed, and every shard holds exactly what the log implies (counters exact,
/// every token once, lists in log order); on failure, prints the checker's findings and
/// every process's log tail.
pub async fn assert_exactly_once(c: &Cluster, log: &Log, report: &LoadReport) {
    assert_eq!(report.failed, 0, "appends failed\n{}", c.logs());
    let result = check(log, &c.shard_map(), Duration::from_secs(60))
        .await
        .expect("the checker reads the log and every shard");
    assert!(
        result.pass,
        "exactly-once violated:\n{result}\n{}",
        c.logs()
    );
    assert!(result.entries >= report.appended);
}

/// Runs the binary plaintext with `args` and waits up to `within` for it to end (it is
/// killed past that): its exit status and stderr, or `None` if it still ran. For a command
/// that must refuse to start, whose test would otherwise hang when it does not.
pub async fn ends_within<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    within: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let run = tokio::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(args)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(within, run).await.ok()?.ok()?;
    Some((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A port nobody listens on right now, never one this test process was given before.
pub fn free_port() -> u16 {
    logplayer::harness::cluster::free_port().expect("a free loopback port")
}

/// `GET path` over plain HTTP/1.0: the status code and the body ((0, "") when nothing
/// answers). Enough for `/metrics` and `/readyz` without an HTTP client dependency.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw).await;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_owned())
}

/// Polls `cond` every 100 ms until it holds or `wait` passes; true when it held.
pub async fn eventually<F, Fut>(wait: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A player process with explicit shard specs (e.g. deliberately wrong ones) and a metrics
/// endpoint; returns the process and the metrics address.
pub async fn start_player_with(
    c: &Cluster,
    name: &str,
    logstore: &str,
    specs: &[String],
    extra: &[&str],
) -> (logplayer::harness::cluster::Proc, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "player".to_string(),
        "--logstore".into(),
        logstore.to_owned(),
        "--metrics-listen".into(),
        metrics.clone(),
    ];
    for s in specs {
        args.push("--shard".into());
        args.push(s.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = logplayer::harness::cluster::Proc::start(name, &c.bin, args, None, &c.dir)
        .await
        .expect("the player starts");
    (p, metrics)
}

/// A codec that sends raw bytes, to put arbitrary garbage in a gRPC frame.
#[derive(Clone, Default)]
pub struct Raw;

pub struct RawEnc;
pub struct RawDec;

impl tonic::codec::Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

/// A writer given two addresses that reach two different logs (a stale replica list, a
/// leader hint naming a reused address), with `env` on both LogStores: it stays with the
/// log it met first. When that log goes away, its appends, one at a time and a load's
/// streams, must be refused by the other log (`wrong-log`) with nothing written there;
/// before, they went on in the other log, splitting one writer's transactions over two
/// logs. Returns what went wrong, if anything (`tests/bad_input.rs` requires nothing; with
/// the LogStore's check broken, `tests/mutations.rs` requires something).
pub async fn writer_beside_another_log(env: &[(String, String)]) -> Result<(), String> {
    use logplayer::grpc::Reason;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bin = bin();
    let mut a = Cluster::start_with_env(a_dir.path(), &bin, 0, &[], &[], env)
        .await
        .expect("log A starts");
    let b = Cluster::start_with_env(b_dir.path(), &bin, 0, &[], &[], env)
        .await
        .expect("log B starts");
    let log = Log::connect(&format!("{},{}", a.logstore.addr(), b.logstore.addr()))
        .await
        .unwrap();
    let add = || group::add("k".into());
    assert_eq!(log.append(add(), Some(("w", 1)), 0).await.unwrap(), 1);
    let met = log.log_id().expect("the answer named its log").to_owned();
    let b_log = Log::connect(b.logstore.addr()).await.unwrap();
    let b_id = b_log.describe().await.unwrap().log_id;
    assert_ne!(met, b_id);

    a.logstore.kill().await;
    let refused = match log.append(add(), Some(("w", 2)), 0).await {
        Ok(index) => return Err(format!("log B took the append at index {index}")),
        Err(e) => e,
    };
    let msg = refused.to_string();
    assert!(msg.contains(&met) && msg.contains(&b_id), "{msg}");
    let spec = load_spec(200, 1, 7);
    let load = tokio::time::timeout(Duration::from_secs(60), drive(&log, &spec, None));
    let report = load
        .await
        .expect("the load gives up instead of waiting for its log");
    assert_eq!(report.appended, 0, "{report:?}");
    assert!(report.failed > 0, "{report:?}");
    match b_log.bounds().await.unwrap() {
        (1, 0) => {}
        (_, last) => return Err(format!("log B holds {last} entries of the writer of log A")),
    }
    match refused {
        logplayer::client::ClientError::Rpc { status, .. }
            if Reason::of(&status) == Some(Reason::WrongLog) =>
        {
            Ok(())
        }
        other => Err(format!("log B did not refuse the append itself: {other}")),
    }
}

/// The applied index of the shard at `addr`, or why it did not answer.
async fn applied_index(addr: &str) -> Result<u64, String> {
    applied(addr).await.map(|a| a.applied_index)
}

/// The shard at `addr`'s answer to `Applied`.
async fn applied(addr: &str) -> Result<logplayer::proto::AppliedResponse, String> {
    let conn = logplayer::client::ShardConn::connect(addr, None)
        .await
        .map_err(|e| format!("shard at {addr}: {e}"))?;
    conn.applied()
        .await
        .map_err(|e| format!("shard at {addr}: {e}"))
}

/// Slots moved to a shard that has applied entries: two shards applied 200 entries under
/// the even map (s0 0-8191, s1 8192-16383), then a player starts with a map that gives
/// s0 slots 8192-12287 of s1's. It resumes s0 from its applied index, so s0 would get
/// those slots' new entries without their earlier ones: s0 must refuse the player
/// (`wrong-shard`, naming the slots) and apply nothing more, while s1, which gives the
/// slots up, goes on. With `env` on the shards. Returns what went wrong, if anything
/// (`tests/identity.rs` requires nothing; with the shard's check broken,
/// `tests/mutations.rs` requires something).
pub async fn slots_moved_to_a_shard_that_applied(env: &[(String, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with_env(dir.path(), &bin(), 2, &[], &[], env)
        .await
        .expect("LogStore and shards start");
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let add = |i: u32| group::add(format!("k-{i:04}"));
    for i in 0..200 {
        log.append(add(i), None, 0).await.unwrap();
    }
    c.start_player(&[]).await.unwrap();
    let report = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.pass, "{report}\n{}", c.logs());
    c.players[0].terminate(Duration::from_secs(5)).await;
    let (a0, a1) = (c.shards[0].addr().to_owned(), c.shards[1].addr().to_owned());
    let before = applied_index(&a0).await?;
    let before1 = applied_index(&a1).await?;

    let grown = [format!("s0={a0}@0-12287"), format!("s1={a1}@12288-16383")];
    let (mut player, metrics) =
        start_player_with(&c, "player-grown", c.logstore.addr(), &grown, &[]).await;
    for i in 200..400 {
        log.append(add(i), None, 0).await.unwrap();
    }
    let refused = "logplayer_shard_refused{shard=\"s0\",reason=\"wrong-shard\"} 1";
    // s0 is refused, or applies what it is sent; s1 goes on either way.
    let settled = eventually(Duration::from_secs(30), || async {
        let (_, m) = http_get(&metrics, "/metrics").await;
        (m.contains(refused) || applied_index(&a0).await.is_ok_and(|a| a > before))
            && applied_index(&a1).await.is_ok_and(|a| a > before1)
    })
    .await;
    let after = applied_index(&a0).await?;
    // What the operator's probe and `logplayer status` read: s0 says it refuses its player.
    let said = applied(&a0).await?;
    let text = player.log_tail(200);
    player.terminate(Duration::from_secs(5)).await;
    if after != before {
        return Err(format!(
            "s0 applied entries {}..={after} under a map that gave it slots 8192-12287, whose \
             earlier entries it never received",
            before + 1
        ));
    }
    if !settled {
        return Err(format!(
            "s0 was not reported refused, or s1 applied nothing new\n{text}"
        ));
    }
    if said.refused_reason != "wrong-shard" || !said.refused_message.contains("8192-12287") {
        return Err(format!(
            "s0's Applied does not say it refuses its player: {:?} {:?}",
            said.refused_reason, said.refused_message
        ));
    }
    match text.lines().find(|l| l.contains("refuses this player")) {
        Some(l) if l.contains("slots 8192-12287") && l.contains("slots 0-8191") => Ok(()),
        other => Err(format!("the refusal does not name the slots: {other:?}")),
    }
}
