//! Identities checked end to end, over real processes: swapped shard addresses are refused
//! with both ids named and nothing applied; a shard that applied entries of one log refuses
//! a fresh log and keeps its data until `shard reset-log` moves it deliberately; a log
//! replaced at the same address under a running player stops the player before any shard
//! applies it; a player fenced by an epoch no lease holder was given says so and stops; a
//! shard that applied entries refuses a map that gives it more slots.

mod common;

use std::time::Duration;

use common::{bin, eventually, http_get, servers, start_player_with};
use logplayer::client::ShardConn;
use logplayer::harness::check::check;
use logplayer::harness::cluster::Proc;
use logplayer::proto::{Mutation, mutation::Op};

fn add(key: &str, n: i64) -> Vec<Mutation> {
    vec![Mutation {
        key: key.as_bytes().to_vec().into(),
        op: Some(Op::Add(n)),
    }]
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn swapped_shard_addresses_are_refused_naming_both_ids_and_nothing_is_applied() {
    let (_dir, mut c, log) = servers(2).await;
    for i in 0..50 {
        log.append(add(&format!("c-{i:06}"), 1), None, 0)
            .await
            .unwrap();
    }
    let (a0, a1) = (c.shards[0].addr().to_owned(), c.shards[1].addr().to_owned());
    let swapped = [format!("s0={a1}"), format!("s1={a0}")];
    let (mut player, metrics) =
        start_player_with(&c, "player-swapped", c.logstore.addr(), &swapped, &[]).await;

    // Both shards are refused and reported: metric, /readyz, and the log.
    let refused = |shard: &str| {
        format!("logplayer_shard_refused{{shard=\"{shard}\",reason=\"wrong-shard\"}} 1")
    };
    let reported = eventually(Duration::from_secs(20), || async {
        let (_, m) = http_get(&metrics, "/metrics").await;
        m.contains(&refused("s0")) && m.contains(&refused("s1"))
    })
    .await;
    assert!(
        reported,
        "no wrong-shard refusal reported\n{}",
        player.log_tail(40)
    );
    let (code, ready) = http_get(&metrics, "/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("shard s0: wrong-shard") && ready.contains("shard s1"),
        "{ready}"
    );
    // Let a few retries (2 s apart) happen: the ERROR is logged once per shard, not per retry.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = player.log_tail(400);
    assert_eq!(count(&text, "refuses this player"), 2, "{text}");
    // The message names both ids and the address.
    let line = text
        .lines()
        .find(|l| l.contains("refuses this player") && l.contains(&a1))
        .unwrap_or_else(|| panic!("no refusal naming {a1}:\n{text}"));
    assert!(line.contains("\"s1\"") && line.contains("\"s0\""), "{line}");

    // Nothing was applied anywhere.
    for s in &c.shards {
        let conn = ShardConn::connect(s.addr(), None).await.unwrap();
        assert_eq!(conn.applied().await.unwrap().applied_index, 0);
        assert!(conn.dump().await.unwrap().is_empty());
    }

    // With the map fixed, everything is delivered exactly once.
    player.terminate(Duration::from_secs(5)).await;
    c.start_player(&[]).await.unwrap();
    let report = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.pass, "{report}\n{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_applied_entries_refuses_a_map_giving_it_more_slots_and_applies_nothing() {
    common::slots_moved_to_a_shard_that_applied(&[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_shard_that_applied_one_log_refuses_a_fresh_log_and_keeps_its_data_until_reset() {
    let (dir, mut c, log) = servers(1).await;
    for _ in 0..30 {
        log.append(add("c-000000", 1), None, 0).await.unwrap();
    }
    c.start_player(&[]).await.unwrap();
    let report = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.pass, "{report}");
    let shard = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    let before = shard.dump().await.unwrap();
    let old = shard.applied().await.unwrap();
    assert_eq!(old.applied_index, 30);
    let old_log = old.log_id.clone();
    assert!(!old_log.is_empty());

    // A recreated LogStore (an empty data directory) behind a new address: a new log.
    for p in &mut c.players {
        p.terminate(Duration::from_secs(5)).await;
    }
    let fresh = Proc::start(
        "logstore-fresh",
        &bin(),
        vec![
            "logstore".into(),
            "--data".into(),
            dir.path().join("fresh-log").display().to_string(),
        ],
        Some("127.0.0.1:0"),
        dir.path(),
    )
    .await
    .unwrap();
    let new_log = logplayer::client::Log::connect(fresh.addr()).await.unwrap();
    for _ in 0..5 {
        new_log.append(add("c-000000", 100), None, 0).await.unwrap();
    }
    let specs = c.shard_specs();
    let (player, metrics) = start_player_with(&c, "player-fresh", fresh.addr(), &specs, &[]).await;
    let refused = eventually(Duration::from_secs(20), || async {
        let (_, m) = http_get(&metrics, "/metrics").await;
        m.contains("logplayer_shard_refused{shard=\"s0\",reason=\"wrong-log\"} 1")
    })
    .await;
    assert!(refused, "no wrong-log refusal\n{}", player.log_tail(40));
    let text = player.log_tail(100);
    assert!(
        text.contains(&old_log),
        "the refusal names the shard's log: {text}"
    );
    // The shard kept its data and its applied index: nothing of the new log was skipped
    // as "already applied" and nothing was applied twice.
    assert_eq!(shard.dump().await.unwrap(), before);
    let now = shard.applied().await.unwrap();
    assert_eq!((now.applied_index, now.log_id), (30, old_log.clone()));

    // `logplayer status` shows it and exits non-zero.
    let out = tokio::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["status", "--logstore", fresh.addr(), "--shard", &specs[0]])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("wrong log") && stderr.contains("wrong log"),
        "{stdout}{stderr}"
    );

    // The deliberate move: stop the shard, reset it to the new log, start it again.
    let (_, new_id) = bounds_of(fresh.addr()).await;
    c.shards[0].terminate(Duration::from_secs(5)).await;
    // Not to the log it is bound to at another index: the 30 entries it applied would be
    // applied a second time on the data it keeps.
    let out = tokio::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["shard", "reset-log", "--data"])
        .arg(dir.path().join("shard-s0"))
        .args(["--log-id", &old_log])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("apply entries 1..=30 a second time"),
        "{said}"
    );
    let out = tokio::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["shard", "reset-log", "--data"])
        .arg(dir.path().join("shard-s0"))
        .args(["--log-id", &new_id])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&old_log) && said.contains("30 -> 0"),
        "{said}"
    );
    c.shards[0].restart().await.unwrap();
    let delivered = eventually(Duration::from_secs(20), || async {
        let Ok(s) = ShardConn::connect(c.shards[0].addr(), None).await else {
            return false;
        };
        s.applied()
            .await
            .map(|a| a.applied_index == 5)
            .unwrap_or(false)
    })
    .await;
    assert!(delivered, "{}", player.log_tail(40));
    let shard = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    let dump = shard.dump().await.unwrap();
    assert_eq!(dump.len(), 1);
    assert!(
        dump[0].contains("530"),
        "30 from the old log + 5 x 100 from the new: {dump:?}"
    );
    let (code, _) = http_get(&metrics, "/readyz").await;
    assert_eq!(code, 200);
}

/// The LogStore is replaced by a fresh, empty one at the same address while the player
/// runs. The player's main stream reconnects and reads the new log's entries 1, 2, ...; the
/// shards, which know the player's Hello (still the old log's id), would take every entry
/// above what they applied. Only the player's check of each response's log id stands in the
/// way: it stops, naming both logs, and no shard applies anything of the new log. A new log
/// shorter than what was read is named as another log too, not as this log gone back.
///
/// A player that has read nothing yet has nothing to compare the new log with (the check
/// that the log still holds what was read passes at index 0): there the response's log id
/// is the only check, and the shard would take the new log's entries as the old one's.
#[tokio::test]
async fn a_log_replaced_under_a_running_player_is_refused_and_nothing_of_it_is_applied() {
    // Past the shard's applied index (entries 11..15 of the new log would be applied),
    // below it, and under a player that has read nothing yet.
    for (read, entries) in [(10, 15), (10, 5), (0, 5)] {
        a_log_replaced_under_a_running_player(read, entries).await;
    }
}

async fn a_log_replaced_under_a_running_player(read: u64, entries: usize) {
    let (dir, mut c, log) = servers(1).await;
    for _ in 0..read {
        log.append(add("c-000000", 1), None, 0).await.unwrap();
    }
    c.start_player(&[]).await.unwrap();
    let report = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.pass, "{report}");
    let old_id = bounds_of(c.logstore.addr()).await.1;
    assert!(
        common::group::log_says(&c.players[0], "main stream starts", Duration::from_secs(30)).await,
        "the player never started reading:\n{}",
        c.players[0].log_tail(40)
    );
    let shard = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    let before = shard.dump().await.unwrap();
    let old = shard.applied().await.unwrap();
    assert_eq!(old.applied_index, read);
    drop(log);

    let addr = c.logstore.addr().to_owned();
    c.logstore.terminate(Duration::from_secs(5)).await;
    let fresh = Proc::start(
        "logstore-same-address",
        &bin(),
        vec![
            "logstore".into(),
            "--data".into(),
            dir.path().join("fresh-log").display().to_string(),
        ],
        Some(&addr),
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(fresh.addr(), addr);
    let new_log = logplayer::client::Log::connect(fresh.addr()).await.unwrap();
    for _ in 0..entries {
        new_log.append(add("c-000000", 100), None, 0).await.unwrap();
    }
    let (_, new_id) = bounds_of(fresh.addr()).await;
    assert_ne!(new_id, old_id);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.players[0].exited().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = c.players[0].exited().is_some();
    let text = c.players[0].log_tail(60);
    assert!(
        stopped,
        "the player still runs ({entries} entries):\n{text}"
    );
    assert!(
        text.contains(&format!("serves log {new_id}")) && text.contains(&old_id),
        "the player names both logs ({entries} entries):\n{text}"
    );
    // Give a delivery that slipped through the time to land, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shard.dump().await.unwrap(), before, "{text}");
    let now = shard.applied().await.unwrap();
    assert_eq!(now.applied_index, read, "{text}");
    if read > 0 {
        assert_eq!(now.log_id, old_id, "{text}");
    } else {
        // Bound at the player's Hello, or not yet: never to the new log.
        assert_ne!(now.log_id, new_id, "{text}");
    }
}

/// `(first, log_id)` of a LogStore.
async fn bounds_of(addr: &str) -> (u64, String) {
    let ch = logplayer::grpc::connect(addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let b = logplayer::proto::log_store_client::LogStoreClient::new(ch)
        .bounds(logplayer::proto::BoundsRequest {})
        .await
        .unwrap()
        .into_inner();
    (b.first, b.log_id)
}

#[tokio::test]
async fn a_player_fenced_by_an_epoch_the_lease_never_gave_says_so_and_stops() {
    use logplayer::proto::shard_client::ShardClient;
    use logplayer::proto::{DeliverRequest, Hello, deliver_request};
    let (_dir, mut c, log) = servers(1).await;
    log.append(add("c-000000", 1), None, 0).await.unwrap();
    let (_, log_id) = bounds_of(c.logstore.addr()).await;
    // A process outside the lease says hello with epoch 1000.
    let ch = logplayer::grpc::connect(c.shards[0].addr(), &logplayer::grpc::Expected::AnyShard)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DeliverRequest {
        msg: Some(deliver_request::Msg::Hello(Hello {
            epoch: 1000,
            player_id: "rogue".into(),
            log_id,
            shard_id: "s0".into(),
            max_entry_bytes: 4 * 1024 * 1024,
            slots: logplayer::proto::SlotRange::all(),
        })),
    })
    .await
    .unwrap();
    let mut inbound = ShardClient::new(ch)
        .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().unwrap();
    drop(tx);

    c.start_replicas(1, &[]).await.unwrap();
    let stopped = eventually(Duration::from_secs(30), || {
        let exited = c.players[0].exited();
        async move { exited.is_some() }
    })
    .await;
    let text = c.players[0].log_tail(40);
    assert!(stopped, "the replica kept going:\n{text}");
    assert!(
        text.contains("epoch 1000, which no lease holder was ever given"),
        "{text}"
    );
    assert_eq!(
        count(&text, "fenced by a newer leader; resigning"),
        0,
        "it must not resign and re-acquire: {text}"
    );
}

/// The same swap with log retention on: the player's checkpoint asks the log behind its
/// address to release entries below its cursors. Those are the old log's cursors, so the
/// new log must release nothing: its `Retain` names the player's log and the new log refuses
/// it (`wrong-log`). Without that, the new log lost its first segments before the player
/// noticed the swap and stopped.
#[tokio::test]
async fn a_replaced_log_releases_nothing_for_the_old_logs_cursors() {
    let (dir, mut c, log) = servers(1).await;
    for _ in 0..400 {
        log.append(add("c-000000", 1), None, 0).await.unwrap();
    }
    let cursors = dir.path().join("cursors.json");
    c.start_player(&[
        "--cursor-file",
        &cursors.display().to_string(),
        "--retain-log",
        "--checkpoint-interval",
        "100ms",
    ])
    .await
    .unwrap();
    let report = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.pass, "{report}");
    drop(log);

    // Another log, filled beforehand in small segments: the old cursors (400) are past many.
    let other = dir.path().join("other-log");
    let data = |p: &std::path::Path| {
        vec![
            "logstore".to_string(),
            "--data".into(),
            p.display().to_string(),
            "--segment-bytes".into(),
            "4096".into(),
        ]
    };
    let mut filling = Proc::start(
        "other-log-filling",
        &bin(),
        data(&other),
        Some("127.0.0.1:0"),
        dir.path(),
    )
    .await
    .unwrap();
    let filler = logplayer::client::Log::connect(filling.addr())
        .await
        .unwrap();
    for _ in 0..1_000 {
        filler.append(add("c-000000", 100), None, 0).await.unwrap();
    }
    drop(filler);
    filling.terminate(Duration::from_secs(5)).await;

    let addr = c.logstore.addr().to_owned();
    c.logstore.terminate(Duration::from_secs(5)).await;
    // Down a while, as in a restart: the player's main stream backs off between attempts
    // while its checkpoints go on, so a checkpoint can reach the other log first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fresh = Proc::start("other-log", &bin(), data(&other), Some(&addr), dir.path())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.players[0].exited().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = c.players[0].log_tail(60);
    assert!(
        c.players[0].exited().is_some(),
        "the player still runs:\n{text}"
    );
    let (first, _) = bounds_of(fresh.addr()).await;
    assert_eq!(first, 1, "the other log released entries:\n{text}");
}

/// A LogStore given a shard's directory, or a shard a LogStore's, is refused by name
/// before it writes anything there: each used to start a new log or store beside the other.
#[tokio::test]
async fn a_log_and_a_shard_refuse_each_others_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (shard_dir, log_dir) = (dir.path().join("shard"), dir.path().join("log"));
    let start = |name: &str, args: Vec<String>| {
        let dir = dir.path().to_owned();
        let name = name.to_owned();
        async move {
            Proc::start(&name, &bin(), args, Some("127.0.0.1:0"), &dir)
                .await
                .unwrap()
        }
    };
    let path = |p: &std::path::Path| p.display().to_string();
    let shard_args = |data: &std::path::Path| {
        vec![
            "shard".into(),
            "--id".into(),
            "s0".into(),
            "--data".into(),
            path(data),
        ]
    };
    let log_args = |data: &std::path::Path| vec!["logstore".into(), "--data".into(), path(data)];
    let mut shard = start("shard", shard_args(&shard_dir)).await;
    shard.terminate(Duration::from_secs(5)).await;
    let mut log = start("log", log_args(&log_dir)).await;
    logplayer::client::Log::connect(log.addr())
        .await
        .unwrap()
        .append(add("c-1", 1), None, 0)
        .await
        .unwrap();
    log.terminate(Duration::from_secs(5)).await;
    let before: Vec<_> = std::fs::read_dir(&shard_dir).unwrap().collect();
    let files_of = |d: &std::path::Path| {
        let mut names: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        names.sort();
        names
    };
    let journal_before = files_of(&shard_dir.join("journal"));
    // (The directory is checked before the replica dials or is dialled: the address in
    // --peers is never used.)
    let replica_args = [
        log_args(&shard_dir),
        vec!["--id".into(), "1".into(), "--peers".into()],
        vec!["1=127.0.0.1:9".into()],
    ]
    .concat();
    for (args, says) in [
        (log_args(&shard_dir), "holds a shard's store"),
        (replica_args, "not a log replica's"),
        (shard_args(&log_dir), "holds a LogStore's data"),
        // One level down: the shard's journal (a segment WAL) given to either.
        (log_args(&shard_dir.join("journal")), "is a shard's journal"),
        (shard_args(&shard_dir.join("journal")), "holds WAL segments"),
    ] {
        let listen = ["--listen".to_string(), "127.0.0.1:0".into()];
        let Some((status, err)) =
            common::ends_within(&[&args[..], &listen].concat(), Duration::from_secs(10)).await
        else {
            panic!("{args:?} runs");
        };
        assert!(!status.success() && err.contains(says), "{args:?}: {err}");
    }
    let after: Vec<_> = std::fs::read_dir(&shard_dir).unwrap().collect();
    assert_eq!(
        before.len(),
        after.len(),
        "nothing was written to the shard's directory"
    );
    assert_eq!(
        journal_before,
        files_of(&shard_dir.join("journal")),
        "nothing was written to the shard's journal"
    );
}

/// `--logstore` listing the addresses of two logs is refused at start naming each (the
/// player used to run on whichever answered first).
#[tokio::test]
async fn a_player_given_the_addresses_of_two_logs_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut logs = Vec::new();
    for name in ["log-a", "log-b"] {
        let data = dir.path().join(name).display().to_string();
        let args = vec!["logstore".into(), "--data".into(), data];
        let p = Proc::start(name, &bin(), args, Some("127.0.0.1:0"), dir.path())
            .await
            .unwrap();
        logs.push(p);
    }
    let addrs = format!("{},{}", logs[0].addr(), logs[1].addr());
    let args = ["player", "--logstore", &addrs, "--shard", "s0=127.0.0.1:1"];
    let Some((status, err)) = common::ends_within(&args, Duration::from_secs(20)).await else {
        panic!("the player runs on two logs");
    };
    let (_, a) = bounds_of(logs[0].addr()).await;
    let (_, b) = bounds_of(logs[1].addr()).await;
    assert!(
        !status.success()
            && err.contains("serve different logs")
            && err.contains(&a)
            && err.contains(&b),
        "{err}"
    );
}

/// At startup the player asks every shard its applied index and starts its main stream past
/// the lowest. A shard at a map's address that answers as another shard (here a fresh one,
/// applied 0) does not count: taken at its word, it would start the main stream at 1, below
/// the log's retention point, and the player would stop for every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_answering_under_another_id_does_not_set_where_the_player_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (c, log, last) = delivered_and_retained(dir.path()).await;
    let stranger_dir = dir.path().join("stranger");
    let args = ["shard", "--id", "stranger", "--data"]
        .map(String::from)
        .to_vec();
    let args = [args, vec![stranger_dir.display().to_string()]].concat();
    let stranger = Proc::start("stranger", &bin(), args, Some("127.0.0.1:0"), dir.path())
        .await
        .unwrap();
    the_player_starts_past(&c, &log, last, stranger.addr()).await;
}

/// The same for a shard that answers under the map's id but applies another log (a map
/// pointing at another deployment's `s1`, applied 10 there). Taken at its word it would
/// start the main stream at 11, below this log's retention point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_another_log_does_not_set_where_the_player_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (c, log, last) = delivered_and_retained(dir.path()).await;
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let mut other = logplayer::harness::cluster::Cluster::start(&other_dir, &bin(), 2)
        .await
        .unwrap();
    let other_log = logplayer::client::Log::connect(other.logstore.addr())
        .await
        .unwrap();
    for i in 0..10 {
        other_log
            .append(add("c-000001", i + 1), None, 0)
            .await
            .unwrap();
    }
    // Every entry is a watermark for the shard it does not touch: s1 reaches 10 however
    // its stream and the fetcher meet.
    other
        .start_player(&["--watermark-every", "1"])
        .await
        .unwrap();
    let s1 = other.shards[1].addr().to_owned();
    let applied = eventually(Duration::from_secs(20), || async {
        applied_at(s1.clone()).await >= 10
    })
    .await;
    assert!(
        applied,
        "the other log's s1 applied nothing:\n{}",
        other.logs()
    );
    other.players[0].kill().await;
    the_player_starts_past(&c, &log, last, &s1).await;
}

/// The applied index of the shard at `addr`, 0 when it does not answer.
async fn applied_at(addr: String) -> u64 {
    match ShardConn::connect(&addr, None).await {
        Ok(s) => s.applied().await.map(|a| a.applied_index).unwrap_or(0),
        Err(_) => 0,
    }
}

/// A cluster of two shards that applied 300 entries, with the log retained up to 20 below
/// its end and its player stopped; returns it, its log and the log's last index.
async fn delivered_and_retained(
    dir: &std::path::Path,
) -> (
    logplayer::harness::cluster::Cluster,
    logplayer::client::Log,
    u64,
) {
    let mut c = logplayer::harness::cluster::Cluster::start_with(
        dir,
        &bin(),
        2,
        &["--segment-bytes", "4096"],
        &[],
    )
    .await
    .unwrap();
    let log = logplayer::client::Log::connect(c.logstore.addr())
        .await
        .unwrap();
    let report = common::start_load(&log, common::load_spec(300, 1, 9))
        .await
        .unwrap();
    assert_eq!(report.failed, 0);
    let (_, last) = log.bounds().await.unwrap();
    c.start_player(&[]).await.unwrap();
    let (a0, a1) = (c.shards[0].addr().to_owned(), c.shards[1].addr().to_owned());
    let delivered = eventually(Duration::from_secs(20), || async {
        applied_at(a0.clone()).await >= last && applied_at(a1.clone()).await >= last
    })
    .await;
    assert!(delivered, "not delivered:\n{}", c.logs());
    c.players[0].kill().await;
    let log_id = log.describe().await.unwrap().log_id;
    let first = log.retain(last - 20, &log_id).await.unwrap().first;
    assert!(first > 1, "retention removed nothing");
    (c, log, last)
}

/// Starts a player whose map names `s0` and, as `s1`, the shard at `stranger`; requires that
/// it keeps running and delivers new entries to `s0`.
async fn the_player_starts_past(
    c: &logplayer::harness::cluster::Cluster,
    log: &logplayer::client::Log,
    last: u64,
    stranger: &str,
) {
    let specs = [
        format!("s0={}", c.shards[0].addr()),
        format!("s1={stranger}"),
    ];
    let (mut player, _) =
        start_player_with(c, "player-stranger", c.logstore.addr(), &specs, &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(player.exited(), None, "{}", player.log_tail(40));
    for i in 0..10 {
        log.append(add("c-000000", i + 1), None, 0).await.unwrap();
    }
    let s0 = c.shards[0].addr().to_owned();
    let reached = eventually(Duration::from_secs(20), || async {
        applied_at(s0.clone()).await >= last + 10
    })
    .await;
    assert!(reached, "s0 got nothing new:\n{}", player.log_tail(40));
}

/// A player whose `--logstore` is a shard's address (or names one among the replicas)
/// stops at once naming it (it retried `Bounds` forever, warning "not answering yet"), and one whose shard map puts a shard at
/// the LogStore's address is refused before it starts (that shard's slots waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_given_a_shard_for_its_logstore_or_the_logstore_for_a_shard_stops_naming_it() {
    let (_dir, c, _log) = common::servers(1).await;
    let (log, shard) = (c.logstore.addr(), c.shards[0].addr());
    // A shard among the replicas' addresses too: refused whichever address the first
    // `Bounds` reached (the player started or not by chance, then flapped).
    let both = format!("{log},{shard}");
    for (logstore, s0, want) in [
        (shard, log, "does not serve the LogStore API"),
        (log, log, "which --logstore names as the LogStore's address"),
        (
            both.as_str(),
            "127.0.0.1:9",
            "does not serve the LogStore API",
        ),
        (
            both.as_str(),
            "127.0.0.1:9",
            "does not serve the LogStore API",
        ),
        (
            both.as_str(),
            "127.0.0.1:9",
            "does not serve the LogStore API",
        ),
    ] {
        let args = [
            "player".to_owned(),
            "--logstore".to_owned(),
            logstore.to_owned(),
            "--shard".to_owned(),
            format!("s0={s0}"),
        ];
        let Some((status, err)) = common::ends_within(&args, Duration::from_secs(20)).await else {
            panic!("{args:?} kept running");
        };
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A shard server of another implementation that checks nothing in a Hello: it answers
/// every sender as shard `id` (`s9` unless set) of no log, and counts the batches it is
/// sent; with `ack`, it acknowledges each batch with that applied index, whatever it was
/// sent.
struct LaxShard {
    batches: std::sync::Arc<std::sync::atomic::AtomicU64>,
    id: &'static str,
    ack: Option<u64>,
}

type Stream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl logplayer::proto::shard_server::Shard for LaxShard {
    type DeliverStream = Stream<logplayer::proto::DeliverResponse>;
    type DumpStream = Stream<logplayer::proto::DumpResponse>;

    async fn deliver(
        &self,
        request: tonic::Request<tonic::Streaming<logplayer::proto::DeliverRequest>>,
    ) -> Result<tonic::Response<Self::DeliverStream>, tonic::Status> {
        use futures::StreamExt as _;
        use logplayer::proto::{deliver_request, deliver_response};
        let mut inbound = request.into_inner();
        let (batches, id, ack) = (self.batches.clone(), self.id, self.ack);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                match m.msg {
                    Some(deliver_request::Msg::Hello(h)) => {
                        let welcome = logplayer::proto::Welcome {
                            highest_epoch: h.epoch,
                            shard_id: id.into(),
                            max_entry_bytes: h.max_entry_bytes,
                            ..Default::default()
                        };
                        let msg = Some(deliver_response::Msg::Welcome(welcome));
                        let _ = tx.send(Ok(logplayer::proto::DeliverResponse { msg })).await;
                    }
                    Some(deliver_request::Msg::Batch(_)) => {
                        batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if let Some(applied_index) = ack {
                            let a = logplayer::proto::Ack { applied_index };
                            let msg = Some(deliver_response::Msg::Ack(a));
                            let _ = tx.send(Ok(logplayer::proto::DeliverResponse { msg })).await;
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn applied(
        &self,
        _: tonic::Request<logplayer::proto::AppliedRequest>,
    ) -> Result<tonic::Response<logplayer::proto::AppliedResponse>, tonic::Status> {
        Ok(tonic::Response::new(logplayer::proto::AppliedResponse {
            shard_id: self.id.into(),
            ..Default::default()
        }))
    }

    async fn dump(
        &self,
        _: tonic::Request<logplayer::proto::DumpRequest>,
    ) -> Result<tonic::Response<Self::DumpStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not this shard"))
    }

    async fn stats(
        &self,
        _: tonic::Request<logplayer::proto::StatsRequest>,
    ) -> Result<tonic::Response<logplayer::proto::StatsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not this shard"))
    }
}

/// The player checks the shard's Welcome itself: a shard server that takes any Hello (one
/// of another implementation, not ours) at the address the map gives `s1`, but answering
/// as `s9`, is sent nothing, and the player says why; `s0` is delivered to meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_checks_no_hello_but_welcomes_as_another_is_sent_nothing() {
    let (_dir, c, log) = servers(1).await;
    let addr = format!("127.0.0.1:{}", common::free_port());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lax = LaxShard {
        batches: batches.clone(),
        id: "s9",
        ack: None,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(logplayer::proto::shard_server::ShardServer::new(lax))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let specs = [format!("s0={}", c.shards[0].addr()), format!("s1={addr}")];
    let (player, _) = start_player_with(&c, "player-lax", c.logstore.addr(), &specs, &[]).await;
    // Keys on both halves of the slot space: every entry is for both shards.
    let keys: Vec<Mutation> = (0..20).flat_map(|k| add(&format!("c-{k:06}"), 1)).collect();
    for _ in 0..20 {
        log.append(keys.clone(), None, 0).await.unwrap();
    }
    let s0 = ShardConn::connect(c.shards[0].addr(), None).await.unwrap();
    let reached = eventually(Duration::from_secs(20), || async {
        s0.applied().await.is_ok_and(|a| a.applied_index >= 20)
    })
    .await;
    assert!(reached, "s0 got nothing:\n{}", player.log_tail(40));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        batches.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the shard answering as s9 was sent batches meant for s1:\n{}",
        player.log_tail(40)
    );
    assert!(
        player.log_tail(200).contains("reports id \"s9\""),
        "{}",
        player.log_tail(40)
    );
}

/// The flags of log replica 1 listening at `me` with `peers`, its data in `dir`.
fn replica_1(me: &str, peers: &str, dir: &std::path::Path) -> Vec<String> {
    let data = dir.join("replica-1").display().to_string();
    [
        "logstore", "--id", "1", "--peers", peers, "--listen", me, "--data", &data,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A log replica whose `--peers` names a single-node LogStore stops at once naming it: taken
/// as a replica of a group, it kept the lowest id from ever seeding, and the group waited
/// for ever ("waits for the lowest id of --peers to seed the group", itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_peers_name_a_single_node_log_store_stops_naming_it() {
    let (dir, c, _log) = common::servers(1).await;
    let single = c.logstore.addr().to_owned();
    let me = format!("127.0.0.1:{}", common::free_port());
    let third = format!("127.0.0.1:{}", common::free_port());
    let args = replica_1(&me, &format!("1={me},2={single},3={third}"), dir.path());
    let Some((status, err)) = common::ends_within(&args, Duration::from_secs(20)).await else {
        panic!("{args:?} kept running");
    };
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("single-node LogStore") && err.contains(&single) && err.contains("peer 2"),
        "{err}"
    );
}

/// A new group's replica whose `--peers` reaches a replica of another group (a mistyped
/// address) stops at once naming it: that group answered as "already formed", so this one
/// never seeded its own and every replica waited for a leader for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_peers_reach_another_group_stops_naming_it() {
    let other = common::group::Group::start(1, &[]).await;
    other.leader(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let me = format!("127.0.0.1:{}", common::free_port());
    let second = format!("127.0.0.1:{}", common::free_port());
    let theirs = other.addrs[0].clone();
    let args = replica_1(&me, &format!("1={me},2={second},3={theirs}"), dir.path());
    let Some((status, err)) = common::ends_within(&args, Duration::from_secs(20)).await else {
        panic!("{args:?} kept running");
    };
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "peer 3 of --peers, at {theirs}, is replica 1 of log"
        )) && err.contains("fix --peers"),
        "{err}"
    );
}

/// A shard (of another implementation) that acknowledges more than it was sent does not
/// move its saved cursor past what the player sent it: the cursor bounds the log's
/// retention, and taken as acknowledged, entries the shard never received could be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_past_what_was_sent_does_not_move_the_saved_cursor_past_it() {
    let (dir, c, log) = servers(1).await;
    // Bound here, at a port the system picks: nothing can take it in between.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lax = LaxShard {
        batches: batches.clone(),
        id: "s1",
        ack: Some(1_000_000),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(logplayer::proto::shard_server::ShardServer::new(lax))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let cursors = dir.path().join("cursors.json");
    let cursor_file = cursors.display().to_string();
    let specs = [format!("s0={}", c.shards[0].addr()), format!("s1={addr}")];
    let extra = [
        "--cursor-file",
        &cursor_file,
        "--checkpoint-interval",
        "100ms",
    ];
    let (player, _) =
        start_player_with(&c, "player-over-ack", c.logstore.addr(), &specs, &extra).await;
    let keys: Vec<Mutation> = (0..20).flat_map(|k| add(&format!("c-{k:06}"), 1)).collect();
    for _ in 0..20 {
        log.append(keys.clone(), None, 0).await.unwrap();
    }
    let saved = |path: std::path::PathBuf| async move {
        let text = tokio::fs::read_to_string(&path).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["acked"]["s1"].as_u64()
    };
    // A cursor saved after s1 acknowledged something (above 0), whatever it is.
    let seen = eventually(Duration::from_secs(20), || async {
        batches.load(std::sync::atomic::Ordering::SeqCst) > 0
            && saved(cursors.clone()).await.is_some_and(|c| c > 0)
    })
    .await;
    assert!(seen, "no cursor saved for s1:\n{}", player.log_tail(40));
    let cursor = saved(cursors.clone()).await.unwrap_or_default();
    assert!(
        cursor <= 20,
        "s1's saved cursor is {cursor}, past the log's 20 entries:\n{}",
        player.log_tail(40)
    );
}
