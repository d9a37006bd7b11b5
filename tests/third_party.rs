//! A client we did not write, over mutual TLS: grpcurl (grpc-go, built from its Go module by
//! `scripts/install-grpcurl.sh`) against a real LogStore and shard. It checks the server's
//! name the standard way (the certificate must name `127.0.0.1`, the address it dials; ours
//! check `logplayer://` names instead), finds the services by reflection, and speaks the
//! proto's JSON mapping: what a transaction manager in Go, Java or Python would do.
//!
//! Through it: an append is durable and delivered exactly once (a player applies it to the
//! shard), a retry with the same `(writer_id, sequence)` is answered with the first index and
//! adds nothing, the same pair with other mutations is `AlreadyExists`, a writer appending as
//! another writer's id and a player appending at all are `PermissionDenied`, and a client
//! without a certificate gets no call. After an `AppendStream` ends at a refusal decided as
//! the entry was written, resending what followed it appends nothing twice. Against a
//! replicated LogStore, a follower refuses an append naming the leader in the
//! `logplayer-leader` trailer, which is all a client needs to find it.
//!
//! grpcurl is `$LOGPLAYER_GRPCURL`, else `~/.cache/logplayer/bin/grpcurl` (or under
//! `$XDG_CACHE_HOME` / `$LOGPLAYER_BIN_DIR`); without it the test is skipped with a notice,
//! unless `LOGPLAYER_REQUIRE_GRPCURL=1` (as in CI), which makes it fail.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use logplayer::harness::cluster::Cluster;
use logplayer::tls::identity::Role;
use logplayer::tls::issue::{Ca, DEMO_VALIDITY, issue_local};

/// grpcurl, or `None` after printing why the test is skipped.
fn grpcurl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOGPLAYER_GRPCURL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LOGPLAYER_GRPCURL={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let found = [
        env("LOGPLAYER_BIN_DIR"),
        env("XDG_CACHE_HOME").map(|c| c.join("logplayer/bin")),
        env("HOME").map(|h| h.join(".cache/logplayer/bin")),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.join("grpcurl"))
    .find(|p| p.is_file());
    if found.is_none() {
        let why = "grpcurl not found (neither $LOGPLAYER_GRPCURL nor ~/.cache/logplayer/bin/grpcurl); \
                   run scripts/install-grpcurl.sh";
        if std::env::var("LOGPLAYER_REQUIRE_GRPCURL").as_deref() == Ok("1") {
            panic!("{why} (LOGPLAYER_REQUIRE_GRPCURL=1 makes this a failure)");
        }
        // Past libtest's capture (as `tests/chart.rs` does): a skip must be seen.
        let _ = writeln!(std::io::stderr(), "third_party: skipped: {why}");
    }
    found
}

/// The certificates of this test binary, issued once (the harness takes one set per
/// process): the local set, shard `s0`'s, and `tm1`, a writer of the id `tm-1` only. This
/// process dials with the local set's client certificate.
fn certs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("logplayer-grpcurl-test-")
            .tempdir()
            .unwrap()
            .keep();
        let certs = issue_local(&dir).unwrap();
        certs.shard("s0").unwrap();
        let ca = Ca::from_pem(certs.ca.pem.clone()).unwrap();
        ca.write_leaf(&dir, "tm1", &[(Role::Writer, "tm-1")], DEMO_VALIDITY)
            .unwrap();
        // This process (the harness finding the log's leader) dials as the client.
        let client = logplayer::tls::Tls::load(certs.client.clone()).unwrap();
        logplayer::tls::install(logplayer::tls::Security::Tls(client));
        logplayer::harness::cluster::use_tls(certs);
        dir
    })
}

/// What one grpcurl call printed.
struct Answer {
    ok: bool,
    out: String,
    err: String,
}

/// grpcurl with the identity `who` (a certificate in `dir`, or none) calling `method` on
/// `addr` with `data` (JSON) as the request.
fn call(bin: &Path, dir: &Path, who: Option<&str>, addr: &str, method: &str, data: &str) -> Answer {
    call_with(bin, dir, who, &[], addr, method, data)
}

/// [`call`] with more flags (`-v` prints the response's trailers).
fn call_with(
    bin: &Path,
    dir: &Path,
    who: Option<&str>,
    flags: &[&str],
    addr: &str,
    method: &str,
    data: &str,
) -> Answer {
    let mut c = Command::new(bin);
    c.args(flags);
    c.arg("-cacert").arg(dir.join("ca.crt"));
    if let Some(who) = who {
        c.arg("-cert").arg(dir.join(format!("{who}.crt")));
        c.arg("-key").arg(dir.join(format!("{who}.key")));
    }
    c.args(["-max-time", "10"]);
    if !data.is_empty() {
        c.args(["-d", data]);
    }
    c.arg(addr);
    if !method.is_empty() {
        c.arg(method);
    }
    let o = c.output().expect("grpcurl runs");
    Answer {
        ok: o.status.success(),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn json(a: &Answer) -> serde_json::Value {
    assert!(a.ok, "grpcurl failed: {}{}", a.err, a.out);
    serde_json::from_str(&a.out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.out))
}

/// The key every append of this test adds to, and its base64 (bytes in the proto's JSON).
const KEY: &str = "c-3p";
const KEY_BASE64: &str = "Yy0zcA==";

/// An append of `add` `n` to [`KEY`] as writer `writer`, number `seq`, in the proto's JSON.
fn append(writer: &str, seq: u64, n: i64) -> String {
    serde_json::json!({
        "writerId": writer,
        "sequence": seq.to_string(),
        "mutations": [{"key": KEY_BASE64, "add": n.to_string()}],
    })
    .to_string()
}

/// The keys of a `Shard/Dump` as grpcurl printed it (one JSON object per response, each
/// holding one key's JSON line).
fn dumped(out: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<serde_json::Value>()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
            let line = r["json"].as_str().unwrap_or_default().to_owned();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_appends_exactly_once_and_is_held_to_its_identity() {
    let Some(bin) = grpcurl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs_dir();
    let mut c = Cluster::start(tmp.path(), &common::bin(), 1).await.unwrap();
    let (log, shard) = (c.logstore.addr().to_owned(), c.shards[0].addr().to_owned());
    let run = |who: Option<&str>, addr: &str, method: &str, data: &str| {
        call(&bin, dir, who, addr, method, data)
    };

    // Reflection: each server lists its own service (and health), as a stranger would find it.
    let listed = run(Some("tm1"), &log, "list", "");
    assert!(listed.ok, "{}{}", listed.err, listed.out);
    assert!(
        listed.out.contains("logplayer.v1.LogStore"),
        "{}",
        listed.out
    );
    assert!(
        listed.out.contains("grpc.health.v1.Health"),
        "{}",
        listed.out
    );
    let listed = run(Some("client"), &shard, "list", "");
    assert!(listed.out.contains("logplayer.v1.Shard"), "{}", listed.out);
    assert!(
        !listed.out.contains("logplayer.v1.LogStore"),
        "{}",
        listed.out
    );

    // An append, its retry (the first index, no new entry), and a reuse of the pair.
    let first = json(&run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("tm-1", 1, 5),
    ));
    assert_eq!(first["index"], "1", "{first}");
    let again = json(&run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("tm-1", 1, 5),
    ));
    assert_eq!(again["index"], "1", "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let reused = run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("tm-1", 1, 7),
    );
    assert!(
        !reused.ok && reused.err.contains("AlreadyExists"),
        "{}{}",
        reused.err,
        reused.out
    );
    let second = json(&run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("tm-1", 2, 11),
    ));
    assert_eq!(second["index"], "2", "{second}");

    // Held to its identity: another writer's id, a player appending, no certificate at all.
    let as_other = run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("tm-2", 1, 1),
    );
    assert!(
        !as_other.ok && as_other.err.contains("PermissionDenied") && as_other.err.contains("tm-2"),
        "{}{}",
        as_other.err,
        as_other.out
    );
    let as_player = run(
        Some("player"),
        &log,
        "logplayer.v1.LogStore/Append",
        &append("", 0, 1),
    );
    assert!(
        !as_player.ok
            && as_player.err.contains("PermissionDenied")
            && as_player.err.contains("writer"),
        "{}{}",
        as_player.err,
        as_player.out
    );
    let anonymous = run(None, &log, "logplayer.v1.LogStore/Bounds", "{}");
    assert!(
        !anonymous.ok && anonymous.err.contains("certificate required"),
        "a client without a certificate was not refused at the handshake: {}{}",
        anonymous.err,
        anonymous.out
    );
    let bounds = json(&run(
        Some("tm1"),
        &log,
        "logplayer.v1.LogStore/Bounds",
        "{}",
    ));
    assert_eq!(
        bounds["last"], "2",
        "nothing refused was appended: {bounds}"
    );

    // Delivered exactly once: the shard holds 5 + 11, whatever grpcurl retried.
    c.start_player(&[]).await.unwrap();
    let applied = common::eventually(Duration::from_secs(30), || async {
        let a = run(Some("client"), &shard, "logplayer.v1.Shard/Applied", "{}");
        a.ok && json(&a)["appliedIndex"] == "2"
    })
    .await;
    assert!(
        applied,
        "the shard did not apply both entries:\n{}",
        c.players[0].log_tail(20)
    );
    let dump = run(Some("client"), &shard, "logplayer.v1.Shard/Dump", "{}");
    assert!(dump.ok, "{}{}", dump.err, dump.out);
    let keys = dumped(&dump.out);
    let counter = keys.iter().find(|k| k["key"] == KEY).map(|k| &k["counter"]);
    assert_eq!(
        counter,
        Some(&serde_json::json!(16)),
        "not 5 + 11: {}",
        dump.out
    );
    c.stop().await;
}

/// Leader discovery as the README documents it for any client: a follower answers an append
/// `UNAVAILABLE` with the leader's address in the `logplayer-leader` trailer, the append
/// sent there is acknowledged, and its retry there is answered with the same index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_finds_the_log_leader_from_a_followers_answer() {
    let Some(bin) = grpcurl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs_dir();
    let mut c = Cluster::start_replicated(tmp.path(), &common::bin(), (0, &[]), 3, &[])
        .await
        .unwrap();
    let mut leader = None;
    for _ in 0..100 {
        leader = c.log_leader().await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    leader.expect("the group elects a leader");
    let addrs: Vec<String> = c
        .log_replicas()
        .iter()
        .map(|p| p.addr().to_owned())
        .collect();
    // A follower's answer, with its trailer naming the replica that leads. Asked again when
    // the leadership moved in between (the follower appended, or knew no leader yet, or
    // named another): on two loaded cores an election can come at any time.
    let mut named = None;
    for attempt in 0..20 {
        let Some(leader) = c.log_leader().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let follower = &addrs[(leader + 1) % addrs.len()];
        let refused = call_with(
            &bin,
            dir,
            Some("tm1"),
            &["-v"],
            follower,
            "logplayer.v1.LogStore/Append",
            &append("tm-1", 100 + attempt, 5),
        );
        let said = format!("{}{}", refused.out, refused.err);
        let trailer = said
            .lines()
            .find_map(|l| l.strip_prefix("logplayer-leader: "))
            .map(|a| a.trim().to_owned());
        if !refused.ok && said.contains("Unavailable") && trailer.as_ref() == Some(&addrs[leader]) {
            named = trailer;
            break;
        }
        eprintln!("attempt {attempt}: replica {leader} led; the follower said: {said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let named = named.expect("a follower names the leader in its logplayer-leader trailer");
    let run = |addr: &str, seq: u64| {
        call(
            &bin,
            dir,
            Some("tm1"),
            addr,
            "logplayer.v1.LogStore/Append",
            &append("tm-1", seq, 5),
        )
    };
    let appended = json(&run(&named, 1000));
    let index = appended["index"].clone();
    assert_ne!(index, serde_json::Value::Null, "{appended}");
    let retried = json(&run(&named, 1000));
    assert_eq!(retried["index"], index, "{retried}");
    assert_eq!(retried["duplicate"], true, "{retried}");
    c.stop().await;
}

/// The `AppendStream` contract for a refusal decided as the entry is written (a stale
/// sequence): what was sent after it may have been appended, and resending it with its
/// `(writer_id, sequence)` tells, without appending anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_append_on_a_stream_resends_append_nothing_twice() {
    let Some(bin) = grpcurl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs_dir();
    let mut c = Cluster::start(tmp.path(), &common::bin(), 0).await.unwrap();
    let log = c.logstore.addr().to_owned();
    let run = |method: &str, data: &str| call(&bin, dir, Some("tm1"), &log, method, data);
    let first = json(&run("logplayer.v1.LogStore/Append", &append("tm-1", 2, 1)));
    assert_eq!(first["index"], "1", "{first}");
    // Sequence 1 is below the writer's last (2) and not among its appends: stale. The two
    // after it are pipelined behind it.
    let stream = [
        append("tm-1", 1, 10),
        append("tm-1", 3, 30),
        append("tm-1", 4, 40),
    ]
    .join(" ");
    let refused = run("logplayer.v1.LogStore/AppendStream", &stream);
    assert!(
        !refused.ok && refused.err.contains("FailedPrecondition"),
        "{}{}",
        refused.err,
        refused.out
    );
    // Resent, each is appended once: new, or answered with the index the stream gave it.
    let mut indexes = Vec::new();
    for (seq, n) in [(3, 30), (4, 40)] {
        let r = json(&run(
            "logplayer.v1.LogStore/Append",
            &append("tm-1", seq, n),
        ));
        indexes.push(r["index"].clone());
    }
    assert_eq!(indexes, ["2", "3"], "{indexes:?}");
    let bounds = json(&run("logplayer.v1.LogStore/Bounds", "{}"));
    assert_eq!(
        bounds["last"], "3",
        "something was appended twice or lost: {bounds}"
    );
    c.stop().await;
}
