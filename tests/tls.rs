//! Mutual TLS and roles over real sockets: every process of these tests runs with
//! certificates from one CA issued for this test binary (the harness passes each its own),
//! and hostile callers — no certificate, one from another CA, one without the role, a
//! writer with another writer's id — are refused every call and change nothing. Clients
//! check servers too: a server from the CA that is not the log or the shard expected at an
//! address gets no call, and a server refuses to start with a certificate that does not name
//! what it serves. A certificate rotated on disk is used for new connections while delivery
//! goes on (and one that does not name the server is not used).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use logplayer::grpc::{Expected, Reason};
use logplayer::proto::log_store_client::LogStoreClient;
use logplayer::proto::replication_client::ReplicationClient;
use logplayer::proto::shard_client::ShardClient;
use logplayer::proto::{
    AddMemberRequest, AppendRequest, AppliedRequest, BoundsRequest, DeliverRequest, DumpRequest,
    Hello, MembersRequest, Mutation, RaftMessage, ReadRequest, RemoveMemberRequest, RetainRequest,
    SeedRequest, StatsRequest, deliver_request, mutation::Op,
};
use logplayer::tls::identity::Role;
use logplayer::tls::issue::{Ca, DEMO_VALIDITY, issue_local};
use logplayer::tls::{Security, Tls, TlsFiles};
use tonic::transport::Channel;

/// The directory of this binary's certificates (kept for the process's life).
fn certs_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("logplayer-tls-test-")
            .tempdir()
            .unwrap()
            .keep();
        let certs = issue_local(&dir).unwrap();
        certs.shard("s0").unwrap();
        std::fs::write(dir.join("ca.key"), &certs.ca.pem.key).unwrap();
        let ca = Ca::from_pem(certs.ca.pem.clone()).unwrap();
        ca.write_leaf(&dir, "tm1", &[(Role::Writer, "tm-1")], DEMO_VALIDITY)
            .unwrap();
        ca.write_leaf(&dir, "norole", &[], DEMO_VALIDITY).unwrap();
        let other = dir.join("other");
        let stranger = Ca::new("another CA", DEMO_VALIDITY).unwrap();
        let all = Role::ALL.map(|r| (r, "*"));
        stranger
            .write_leaf(&other, "stranger", &all, DEMO_VALIDITY)
            .unwrap();
        // The stranger trusts our CA as well as its own: it accepts our servers, so only
        // the servers' check of its certificate can keep it out.
        let theirs = std::fs::read_to_string(other.join("ca.crt")).unwrap();
        std::fs::write(
            other.join("ca.crt"),
            format!("{theirs}{}", certs.ca.pem.cert),
        )
        .unwrap();
        let client = Tls::load(certs.client.clone()).unwrap();
        logplayer::tls::install(Security::Tls(client));
        logplayer::harness::cluster::use_tls(certs);
        dir
    })
}

fn identity(name: &str) -> Arc<Tls> {
    Tls::load(TlsFiles::in_dir(certs_dir(), name)).unwrap()
}

fn stranger() -> Arc<Tls> {
    Tls::load(TlsFiles::in_dir(&certs_dir().join("other"), "stranger")).unwrap()
}

async fn channel(addr: &str, server: Expected, tls: Option<&Arc<Tls>>) -> Result<Channel, String> {
    logplayer::grpc::connect_with(addr, &server, tls)
        .await
        .map_err(|e| e.to_string())
}

fn add(key: &str, n: i64) -> Vec<Mutation> {
    vec![Mutation {
        key: key.as_bytes().to_vec().into(),
        op: Some(Op::Add(n)),
    }]
}

fn append_req(writer: &str, sequence: u64) -> AppendRequest {
    AppendRequest {
        mutations: add("k", 1_000_000),
        writer_id: writer.into(),
        sequence,
        append_start_micros: 0,
        ..Default::default()
    }
}

fn hello(epoch: u64, log_id: &str) -> DeliverRequest {
    DeliverRequest {
        msg: Some(deliver_request::Msg::Hello(Hello {
            epoch,
            player_id: "hostile".into(),
            log_id: log_id.into(),
            shard_id: "s0".into(),
            max_entry_bytes: 4 * 1024 * 1024,
            slots: logplayer::proto::SlotRange::all(),
        })),
    }
}

fn forbidden(r: Result<impl std::fmt::Debug, tonic::Status>, call: &str) {
    match r {
        Err(s) => assert_eq!(
            (s.code(), Reason::of(&s)),
            (tonic::Code::PermissionDenied, Some(Reason::Forbidden)),
            "{call}: {s:?}"
        ),
        Ok(v) => panic!("{call} was allowed: {v:?}"),
    }
}

/// Every call of both services, as `who` on `log`/`shard`, each expected refused.
async fn every_call_is_forbidden(log: Channel, shard: Channel, log_id: &str, can_write: bool) {
    // The replicas' own service (refused by the role check before any routing, so a
    // single-node LogStore, which does not serve it, tests the rule as well).
    let mut r = ReplicationClient::new(log.clone());
    let msg = RaftMessage::default();
    forbidden(
        r.append_entries(msg.clone()).await,
        "Replication/AppendEntries",
    );
    match r.append_stream(tokio_stream::iter(vec![msg.clone()])).await {
        Ok(s) => forbidden(s.into_inner().message().await, "Replication/AppendStream"),
        Err(e) => forbidden(Err::<(), _>(e), "Replication/AppendStream"),
    }
    forbidden(r.vote(msg.clone()).await, "Replication/Vote");
    forbidden(r.pre_vote(msg.clone()).await, "Replication/PreVote");
    forbidden(r.install_snapshot(msg).await, "Replication/InstallSnapshot");
    let mut l = LogStoreClient::new(log);
    let mut s = ShardClient::new(shard);
    if !can_write {
        forbidden(l.append(append_req("", 0)).await, "Append");
        let one = tokio_stream::iter(vec![append_req("", 0)]);
        match l.append_stream(one).await {
            Ok(r) => forbidden(r.into_inner().message().await, "AppendStream"),
            Err(e) => forbidden(Err::<(), _>(e), "AppendStream"),
        }
        forbidden(l.bounds(BoundsRequest {}).await, "Bounds");
    }
    let read = ReadRequest {
        from: 1,
        ..Default::default()
    };
    match l.read(read).await {
        Ok(r) => forbidden(r.into_inner().message().await, "Read"),
        Err(e) => forbidden(Err::<(), _>(e), "Read"),
    }
    forbidden(
        l.retain(RetainRequest {
            below: 1_000,
            log_id: String::new(),
        })
        .await,
        "Retain",
    );
    forbidden(l.members(MembersRequest {}).await, "Members");
    let add = AddMemberRequest {
        id: 9,
        addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    forbidden(l.add_member(add).await, "AddMember");
    forbidden(
        l.remove_member(RemoveMemberRequest {
            id: 1,
            ..Default::default()
        })
        .await,
        "RemoveMember",
    );
    forbidden(l.seed(SeedRequest {}).await, "Seed");
    let stream = tokio_stream::iter(vec![hello(1_000_000, log_id)]);
    match s.deliver(stream).await {
        Ok(r) => forbidden(r.into_inner().message().await, "Deliver"),
        Err(e) => forbidden(Err::<(), _>(e), "Deliver"),
    }
    forbidden(s.applied(AppliedRequest {}).await, "Applied");
    forbidden(s.stats(StatsRequest::default()).await, "Stats");
    match s.dump(DumpRequest {}).await {
        Ok(r) => forbidden(r.into_inner().message().await, "Dump"),
        Err(e) => forbidden(Err::<(), _>(e), "Dump"),
    }
}

/// Callers without a certificate from the CA do not get a connection; callers with one but
/// without the role are refused every call with `PERMISSION_DENIED`, and nothing changes:
/// a writer's `Deliver` with a huge epoch leaves the shard's epoch, a writer's `Retain`
/// deletes nothing, and a writer cannot append under another writer's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_roles_are_refused_every_call_and_change_nothing() {
    certs_dir();
    let (_dir, mut c, log) = common::servers(1).await;
    c.start_player(&[]).await.unwrap();
    let report = common::start_load(&log, common::load_spec(200, 2, 1))
        .await
        .unwrap();
    common::assert_exactly_once(&c, &log, &report).await;
    let log_addr = c.logstore.addr().to_owned();
    let shard_addr = c.shards[0].addr().to_owned();
    let log_id = log.describe().await.unwrap().log_id;
    let admin = identity("client");
    let mut admin_shard = ShardClient::new(
        channel(&shard_addr, Expected::AnyShard, Some(&admin))
            .await
            .unwrap(),
    );
    let before = admin_shard
        .applied(AppliedRequest {})
        .await
        .unwrap()
        .into_inner();
    let bounds = log.bounds().await.unwrap();

    // No certificate, or one from another CA (whose holder trusts our servers): no
    // connection, so no call at all.
    for (who, tls) in [("no certificate", None), ("another CA", Some(stranger()))] {
        match channel(&log_addr, Expected::Log, tls.as_ref()).await {
            Err(_) => {}
            Ok(ch) => {
                let r = LogStoreClient::new(ch).bounds(BoundsRequest {}).await;
                assert!(r.is_err(), "{who}: Bounds answered {r:?}");
            }
        }
    }
    // A certificate from the CA without a role: every call refused.
    let norole = identity("norole");
    every_call_is_forbidden(
        channel(&log_addr, Expected::Log, Some(&norole))
            .await
            .unwrap(),
        channel(&shard_addr, Expected::AnyShard, Some(&norole))
            .await
            .unwrap(),
        &log_id,
        false,
    )
    .await;
    // A writer: it may append (as its own id) and ask for the bounds, nothing else.
    let tm1 = identity("tm1");
    every_call_is_forbidden(
        channel(&log_addr, Expected::Log, Some(&tm1)).await.unwrap(),
        channel(&shard_addr, Expected::AnyShard, Some(&tm1))
            .await
            .unwrap(),
        &log_id,
        true,
    )
    .await;
    let mut writer =
        LogStoreClient::new(channel(&log_addr, Expected::Log, Some(&tm1)).await.unwrap());
    forbidden(
        writer.append(append_req("load-someone-else", 1)).await,
        "Append as another writer",
    );
    let as_another = tokio_stream::iter(vec![append_req("load-someone-else", 1)]);
    match writer.append_stream(as_another).await {
        Ok(s) => forbidden(
            s.into_inner().message().await,
            "AppendStream as another writer",
        ),
        Err(e) => forbidden(Err::<(), _>(e), "AppendStream as another writer"),
    }
    let own = writer.append(append_req("tm-1", 1)).await.unwrap();
    assert_eq!(own.into_inner().index, bounds.1 + 1);

    let after = admin_shard
        .applied(AppliedRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after.highest_epoch, before.highest_epoch,
        "the shard's epoch moved"
    );
    assert_eq!(
        log.bounds().await.unwrap().0,
        bounds.0,
        "a writer's Retain deleted entries"
    );
    // The player goes on delivering (its epoch was not fenced by anyone else's Hello).
    let report = common::start_load(&log, common::load_spec(200, 1, 2))
        .await
        .unwrap();
    common::assert_exactly_once(&c, &log, &report).await;
}

/// A server from our CA that is not the one a client expects at an address gets no call:
/// a shard server presenting a writer's certificate (this process's) behind the address the
/// player's map gives for `s0` is reported as refused (`wrong-shard`, naming what the
/// certificate grants) and is delivered nothing, though it answers as shard `s0` on the
/// right log; as a LogStore it is refused too, and the real LogStore is no shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_is_not_the_expected_one_gets_no_call() {
    certs_dir();
    let (_dir, c, log) = common::servers(1).await;
    for i in 0..20 {
        log.append(add(&format!("k-{i}"), 1), None, 0)
            .await
            .unwrap();
    }
    // The impostor: a real shard server in this process, which serves with this process's
    // certificate (writer and admin, no shard name).
    let data = tempfile::tempdir().unwrap();
    let store = logplayer::shard::any::AnyStore::open(data.path(), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let me = logplayer::shard::ShardSelf {
        id: "s0".into(),
        addr: addr.clone(),
        max_entry_bytes: 4 * 1024 * 1024,
    };
    let core = logplayer::shard::ShardCore::open(store, me).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(logplayer::shard::service::serve(
        core,
        listener,
        stop.clone(),
        Duration::ZERO,
    ));

    let (mut player, metrics) = common::start_player_with(
        &c,
        "player-impostor",
        c.logstore.addr(),
        &[format!("s0={addr}")],
        &[],
    )
    .await;
    let refused = "logplayer_shard_refused{shard=\"s0\",reason=\"wrong-shard\"} 1";
    let reported = common::eventually(Duration::from_secs(20), || async {
        common::http_get(&metrics, "/metrics")
            .await
            .1
            .contains(refused)
    })
    .await;
    assert!(reported, "not reported\n{}", player.log_tail(40));
    let (code, ready) = common::http_get(&metrics, "/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("shard s0: wrong-shard") && ready.contains("logplayer://writer/load-*"),
        "{ready}"
    );
    // Clients of the log refuse it too, and a shard's client refuses the log.
    let e = logplayer::client::Log::connect(&addr).await.err().unwrap();
    let text = e.to_string();
    assert!(
        text.contains(&format!("refused the server at {addr}"))
            && text.contains("not logplayer://replica/* (a log replica)"),
        "{text}"
    );
    let e = logplayer::client::ShardConn::connect(c.logstore.addr(), Some("s0"))
        .await
        .err()
        .unwrap();
    let wrong = logplayer::tls::client::wrong_server(&e).expect("a WrongServer cause");
    assert!(
        wrong.reason.contains("logplayer://replica/logstore"),
        "{wrong}"
    );
    player.kill().await;
    stop.cancel();
    served.await.unwrap().unwrap();
    let store = logplayer::shard::any::AnyStore::open(data.path(), Default::default()).unwrap();
    let applied = logplayer::shard::ShardStore::load(&store).unwrap().applied;
    assert_eq!(applied, 0, "the impostor was delivered entries");
}

/// Over TLS too, a player whose `--logstore` names a shard (alone or among the replicas)
/// stops at once naming the certificate it was answered with: it retried `Bounds` for
/// ever, saying the LogStore was "not answering yet" (plaintext stops on UNIMPLEMENTED,
/// `identity.rs`; under TLS the handshake's check refuses the shard before any call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_given_a_shard_for_its_logstore_stops_naming_its_certificate() {
    certs_dir();
    let (_dir, c, _log) = common::servers(1).await;
    let (log, shard) = (c.logstore.addr(), c.shards[0].addr());
    let files = TlsFiles::in_dir(certs_dir(), "player").flags();
    for logstore in [shard.to_owned(), format!("{log},{shard}")] {
        let mut args: Vec<&str> = vec!["player", "--logstore", &logstore, "--shard"];
        args.push("s0=127.0.0.1:9");
        args.extend(files.iter().map(String::as_str));
        let ran = tokio::time::timeout(Duration::from_secs(30), run_secure(&args)).await;
        let (ok, _, err) = ran.unwrap_or_else(|_| panic!("{args:?} kept running"));
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(&format!("refused the server at {shard}"))
                && err.contains("is it a shard's address?"),
            "{args:?}: {err}"
        );
    }
    // So does a membership change given it among the replicas, changing nothing.
    let admin = TlsFiles::in_dir(certs_dir(), "client").flags();
    let list = format!("{shard},{log}");
    let mut args = vec!["logstore", "members", "remove", "2", "--logstore", &list];
    args.extend(admin.iter().map(String::as_str));
    let ran = tokio::time::timeout(Duration::from_secs(30), run_secure(&args)).await;
    let (ok, _, err) = ran.unwrap_or_else(|_| panic!("{args:?} kept running"));
    assert!(
        !ok && err.contains("is it a shard's address? Nothing was changed"),
        "{args:?}: {err}"
    );
}

/// A process refuses to start with a certificate its peers would refuse, naming the file
/// and what is wrong: a shard with another shard's, a LogStore with a shard's, a player
/// without the player role, `load` without a writer name for its ids, an expired certificate, a CA file that did not issue it (a
/// leaf given as the CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_refuses_to_start_with_a_certificate_its_peers_would_refuse() {
    let dir = certs_dir();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().display().to_string();
    let ca = Ca::from_pem(logplayer::tls::issue::Pem {
        cert: std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        key: std::fs::read_to_string(dir.join("ca.key")).unwrap(),
    })
    .unwrap();
    let own = tempfile::tempdir().unwrap();
    let expired = ca
        .write_leaf(
            own.path(),
            "expired",
            &[(Role::Shard, "s0")],
            Duration::from_secs(1),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut leaf_as_ca = TlsFiles::in_dir(dir, "shard-s0");
    leaf_as_ca.ca = dir.join("player.crt");
    let files = |name: &str| TlsFiles::in_dir(dir, name);
    let shard = |id: &'static str| {
        vec![
            "shard",
            "--id",
            id,
            "--data",
            d.as_str(),
            "--listen",
            "127.0.0.1:0",
        ]
    };
    let logstore = vec!["logstore", "--data", &d, "--listen", "127.0.0.1:0"];
    let player = vec![
        "player",
        "--logstore",
        "127.0.0.1:1",
        "--shard",
        "s0=127.0.0.1:2",
    ];
    for (args, tls, says) in [
        (
            shard("s1"),
            files("shard-s0"),
            vec![
                "cannot serve as logplayer://shard/s1 (shard s1)",
                "grants logplayer://shard/s0",
            ],
        ),
        (
            logstore.clone(),
            files("shard-s0"),
            vec![
                "cannot serve as logplayer://replica/* (a log replica)",
                "shard-s0.crt",
            ],
        ),
        (
            player,
            files("client"),
            vec![
                "cannot act as a player (logplayer://player/NAME)",
                "client.crt",
            ],
        ),
        (
            vec!["load", "--logstore", "127.0.0.1:1"],
            files("tm1"),
            vec![
                "cannot append as writer ids load-... (logplayer://writer/load-*)",
                "tm1.crt",
            ],
        ),
        (
            shard("s0"),
            expired,
            vec!["expired.crt", "certificate expired"],
        ),
        (
            shard("s0"),
            leaf_as_ca,
            vec!["not issued by a CA in the CA file", "player.crt"],
        ),
    ] {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(tls.flags());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, _, stderr) = run_secure(&all).await;
        assert!(!ok, "{all:?} started");
        for s in says {
            assert!(stderr.contains(s), "{all:?}: no {s:?} in\n{stderr}");
        }
    }
}

/// `load` appends as the writer ids its certificate grants when told their prefix: a
/// transaction manager's certificate (`app-*`) serves `load --writer-prefix app`, and
/// without the flag `load` stops at start naming what it would need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_appends_as_the_writer_ids_its_certificate_grants() {
    let dir = certs_dir();
    let ca = Ca::from_pem(logplayer::tls::issue::Pem {
        cert: std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        key: std::fs::read_to_string(dir.join("ca.key")).unwrap(),
    })
    .unwrap();
    let own = tempfile::tempdir().unwrap();
    let app = ca
        .write_leaf(own.path(), "app", &[(Role::Writer, "app-*")], DEMO_VALIDITY)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start(data.path(), &common::bin(), 0)
        .await
        .unwrap();
    let load = |prefix: Option<&str>| {
        let mut args: Vec<String> = ["load", "--logstore", c.logstore.addr()]
            .into_iter()
            .chain(["--rate", "50", "--seconds", "1", "--concurrency", "4"])
            .map(str::to_owned)
            .collect();
        if let Some(p) = prefix {
            args.extend(["--writer-prefix".to_owned(), p.to_owned()]);
        }
        args.extend(app.flags());
        args
    };
    let args = load(None);
    let (ok, _, stderr) = run_secure(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!ok, "load started as load-... with an app-* certificate");
    assert!(stderr.contains("logplayer://writer/load-*"), "{stderr}");
    let args = load(Some("app"));
    let (ok, stdout, stderr) =
        run_secure(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(report["appended"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
}

/// A TLS client dialing a server that speaks plaintext is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dialing_a_plaintext_server_is_told_so() {
    certs_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            // What an HTTP/2 server sends first: a SETTINGS frame, not a TLS record.
            let _ = tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let e = logplayer::client::Log::connect(&addr).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("does not speak TLS (does it run --insecure?)"),
        "{e}"
    );
}

/// A plaintext client (`--insecure`) dialing a LogStore that runs TLS is told that the
/// server speaks TLS and which flags it lacks, instead of "connection closed". Only when the
/// server's TLS alert reaches the client before the reset that follows it (the server closes
/// with our request unread): a race, so each check is given ten connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_dialing_a_tls_server_is_told_so() {
    certs_dir();
    let (_dir, c, _log) = common::servers(1).await;
    let addr = c.logstore.addr().to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let ch = channel(&addr, Expected::Log, None).await.unwrap();
        let e = LogStoreClient::new(ch)
            .bounds(BoundsRequest {})
            .await
            .err()
            .unwrap();
        seen.push(logplayer::grpc::one_line(&e));
        if seen.iter().any(|t| {
            t.contains(&format!("the server at {addr} speaks TLS")) && t.contains("--tls-cert")
        }) {
            break;
        }
    }
    assert!(seen.iter().any(|t| t.contains("speaks TLS")), "{seen:#?}");
    let mut outputs = Vec::new();
    for _ in 0..10 {
        let out = tokio::process::Command::new(common::bin())
            .args(["--insecure", "status", "--logstore", &addr])
            .args(["--shard", &format!("s0={}", c.shards[0].addr())])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let told = stdout.contains("speaks TLS");
        outputs.push(stdout);
        if told {
            break;
        }
    }
    assert!(
        outputs.iter().any(|o| o.contains("speaks TLS")),
        "{outputs:#?}"
    );
}

/// The server certificate each new connection to `server` at `addr` is shown.
async fn served_cert(addr: &str, server: Expected) -> Vec<u8> {
    let client = identity("client");
    let io = logplayer::tls::client::dial(&client, addr, &server)
        .await
        .unwrap();
    let (_, conn) = io.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

/// The LogStore's and a shard's certificates are replaced on disk under load: new
/// connections are shown the new ones within the reload period, the player's established
/// streams go on, and every shard ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_on_disk_is_used_for_new_connections_while_delivery_continues() {
    let dir = certs_dir();
    // The servers of this test read copies, so rotating them leaves the other test alone.
    let own = tempfile::tempdir().unwrap();
    for f in [
        "logstore.crt",
        "logstore.key",
        "shard-s0.crt",
        "shard-s0.key",
        "ca.crt",
    ] {
        std::fs::copy(dir.join(f), own.path().join(f)).unwrap();
    }
    let flags = |name: &str| TlsFiles::in_dir(own.path(), name).flags();
    let data = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let mut c = logplayer::harness::cluster::Cluster::start_with(
        data.path(),
        &bin,
        1,
        &flags("logstore")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &flags("shard-s0")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let log = logplayer::client::Log::connect(c.logstore.addr())
        .await
        .unwrap();
    c.start_player(&[]).await.unwrap();
    let load = common::start_load(&log, common::load_spec(300, 6, 3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_log = served_cert(c.logstore.addr(), Expected::Log).await;
    let old_shard = served_cert(c.shards[0].addr(), Expected::AnyShard).await;
    let certs = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    let ca = Ca::from_pem(logplayer::tls::issue::Pem { cert: certs, key }).unwrap();
    ca.write_leaf(
        own.path(),
        "logstore",
        &[(Role::Replica, "logstore")],
        DEMO_VALIDITY,
    )
    .unwrap();
    ca.write_leaf(
        own.path(),
        "shard-s0",
        &[(Role::Shard, "s0")],
        DEMO_VALIDITY,
    )
    .unwrap();
    let renewed = common::eventually(Duration::from_secs(10), || async {
        served_cert(c.logstore.addr(), Expected::Log).await != old_log
            && served_cert(c.shards[0].addr(), Expected::AnyShard).await != old_shard
    })
    .await;
    assert!(
        renewed,
        "the rotated certificates were not used for new connections"
    );
    // A rotation to a certificate that does not name the shard (a writer's) is not used:
    // its clients would refuse every new connection.
    let current = served_cert(c.shards[0].addr(), Expected::AnyShard).await;
    ca.write_leaf(
        own.path(),
        "shard-s0",
        &[(Role::Writer, "s0")],
        DEMO_VALIDITY,
    )
    .unwrap();
    tokio::time::sleep(logplayer::tls::RELOAD_EVERY * 2).await;
    assert_eq!(
        served_cert(c.shards[0].addr(), Expected::Shard("s0".into())).await,
        current,
        "the shard serves a certificate that does not name it"
    );
    assert!(
        c.shards[0]
            .log_tail(50)
            .contains("cannot serve as logplayer://shard/s0"),
        "{}",
        c.shards[0].log_tail(50)
    );
    let report = load.await.unwrap();
    common::assert_exactly_once(&c, &log, &report).await;
}

/// Runs the binary with `args` and without `LOGPLAYER_INSECURE`: whether it succeeded, its
/// stdout and its stderr.
async fn run_secure(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(common::bin())
        .args(args)
        .env_remove("LOGPLAYER_INSECURE")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `demo` runs the whole system over mutual TLS with certificates it issues, faults and
/// all, and ends exactly once. Its load is shorter than its faults take (three takeovers
/// each wait out a lease), so this also checks that the load goes on until the last fault
/// is in: a leader killed after the load ended would have nothing to deliver. It also reads
/// the frozen leader's fencing when it wakes (a later fault restarts shards, whose counters
/// start again: read at the end, the refusals once came to 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_over_mutual_tls_and_passes() {
    let (ok, stdout, stderr) = run_secure(&["demo", "--rate", "500", "--seconds", "6"]).await;
    assert!(
        ok && stdout.contains("exactly-once: PASS"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("last fault in; the load, held past 6s"),
        "{stdout}"
    );
    assert!(
        stderr.contains("mutual TLS with certificates issued"),
        "{stderr}"
    );
}

/// `failover-bench --log-replicas 3` runs over mutual TLS with the certificates it issues:
/// its probe writer appends under an id the run's client certificate names (it was refused
/// once, and the bench waited out 30 s of refusals before saying so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_failover_bench_runs_over_mutual_tls_and_passes() {
    let args = [
        "failover-bench",
        "--log-replicas",
        "3",
        "--takedowns",
        "2",
        "--rate",
        "200",
    ];
    let (ok, stdout, stderr) = run_secure(&args).await;
    assert!(
        ok && stdout.contains("2 log leader kills") && stdout.contains("exactly-once: PASS"),
        "{stdout}\n{stderr}"
    );
}

/// A server's probes under TLS. The kubelet's gRPC probe cannot speak TLS, and a TCP
/// connect passes on a frozen process (the kernel accepts for it): a SIGSTOPped log replica
/// stayed Ready that way. `--health-listen` serves `/healthz` and `/readyz` from the process
/// itself, so a frozen server answers neither while its gRPC port still accepts, and
/// answers again once it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_its_probes_while_its_port_still_accepts() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::io::AsyncBufReadExt;
    let dir = certs_dir();
    for (args, files) in [
        (vec!["logstore"], TlsFiles::in_dir(dir, "logstore")),
        (
            vec!["shard", "--id", "s0"],
            TlsFiles::in_dir(dir, "shard-s0"),
        ),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(common::bin())
            .args(&args)
            .args(["--data", &data.path().display().to_string()])
            .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
            .args(files.flags())
            .env_remove("LOGPLAYER_INSECURE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc, mut health) = (None, None);
        while grpc.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap_or_else(|| panic!("{args:?} ended before it listened"));
            if let Some(a) = line.strip_prefix("health listening on ") {
                health = Some(a.trim().to_owned());
            } else if let Some(a) = line.strip_prefix("listening on ") {
                grpc = Some(a.trim().to_owned());
            }
        }
        let (grpc, health) = (
            grpc.unwrap(),
            health.expect("the health address, said first"),
        );
        assert_eq!(
            common::http_get(&health, "/healthz").await.0,
            200,
            "{args:?}"
        );
        assert_eq!(
            common::http_get(&health, "/readyz").await.0,
            200,
            "{args:?}"
        );
        let pid = Pid::from_raw(child.id().unwrap() as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        // A stop lands on each thread as it next runs: on a busy machine a request sent
        // at once could still be answered.
        assert!(
            common::eventually(Duration::from_secs(5), || async {
                all_threads_stopped(child.id().unwrap())
            })
            .await,
            "{args:?}: not stopped"
        );
        let wait = Duration::from_secs(2);
        let connect = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&grpc)).await;
        assert!(
            matches!(connect, Ok(Ok(_))),
            "{args:?}: a TCP probe would have passed on the frozen process"
        );
        for path in ["/healthz", "/readyz"] {
            let probe = tokio::time::timeout(wait, common::http_get(&health, path)).await;
            assert!(
                probe.is_err(),
                "{args:?}: {path} answered while frozen: {probe:?}"
            );
        }
        kill(pid, Signal::SIGCONT).unwrap();
        assert!(
            common::eventually(Duration::from_secs(10), || async {
                common::http_get(&health, "/readyz").await.0 == 200
            })
            .await,
            "{args:?}: not ready again after SIGCONT"
        );
        child.kill().await.unwrap();
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // `PID (COMM) STATE ...`: the state follows the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}
