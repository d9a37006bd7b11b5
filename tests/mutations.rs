//! Real-process checks that can fail, shown: with each safety check deliberately broken
//! (`src/mutations.rs`, the `mutations` feature, `LOGPLAYER_MUTATION` on every child
//! process), a real-process fault scenario must find a violation; the same scenarios pass
//! with no switch on. Run with
//!
//! ```sh
//! cargo test --features mutations --test mutations -- --test-threads 1
//! ```
//!
//! `.ci/run` does. Each scenario returns `Err(what it saw)` instead of panicking, so that a
//! test can require a failure.
#![cfg(feature = "mutations")]

mod common;

use std::time::Duration;

use common::{bin, load_spec, start_load};
use logplayer::client::{Log, ShardConn};
use logplayer::harness::bench::LoadSpec;
use logplayer::harness::check::check;
use logplayer::harness::cluster::Cluster;
use logplayer::harness::failover::{Takedown, take_down_leader, wait_for_leader};
use logplayer::mutations::{ENV, Mutation};

fn env(m: Option<Mutation>) -> Vec<(String, String)> {
    m.map(|m| vec![(ENV.to_owned(), m.name().to_owned())])
        .unwrap_or_default()
}

async fn cluster(
    dir: &std::path::Path,
    m: Option<Mutation>,
    shards: usize,
    logstore: &[&str],
) -> Cluster {
    cluster_of(dir, m, shards, logstore, &[]).await
}

async fn cluster_of(
    dir: &std::path::Path,
    m: Option<Mutation>,
    shards: usize,
    logstore: &[&str],
    shard: &[&str],
) -> Cluster {
    Cluster::start_with_env(dir, &bin(), shards, logstore, shard, &env(m))
        .await
        .expect("the cluster starts")
}

/// The exactly-once check as a result.
async fn verdict(c: &Cluster, log: &Log) -> Result<(), String> {
    match check(log, &c.shard_map(), Duration::from_secs(20)).await {
        Ok(r) if r.pass => Ok(()),
        Ok(r) => Err(format!("exactly-once violated:\n{r}")),
        Err(e) => Err(format!("the check could not complete: {e}")),
    }
}

/// Restarts every shard whose process exited by itself (a crash point of a mutation).
async fn revive(c: &mut Cluster) {
    for s in &mut c.shards {
        if s.exited().is_some() {
            let _ = s.restart().await;
        }
    }
}

/// Shards and/or the player SIGKILLed under load (as `tests/faults.rs`), crashed shards
/// restarted, then the exactly-once check.
async fn kills(m: Option<Mutation>, shards: bool, player: bool) -> Result<(), String> {
    kills_on(m, shards, player, &[]).await
}

/// [`kills`] with shards started with `shard` (`--store redb`).
async fn kills_on(
    m: Option<Mutation>,
    shards: bool,
    player: bool,
    shard: &[&str],
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster_of(dir.path(), m, 3, &[], shard).await;
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let load = start_load(&log, load_spec(500, 8, 7));
    for k in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        revive(&mut c).await;
        let s = k % c.shards.len();
        if shards {
            c.shards[s].kill().await;
        }
        if player {
            c.players[0].kill().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if shards {
            let _ = c.shards[s].restart().await;
        }
        if player {
            let _ = c.players[0].restart().await;
        }
    }
    let _ = load.await;
    for _ in 0..20 {
        revive(&mut c).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    verdict(&c, &log).await
}

/// A leader frozen past its lease wakes and keeps sending (as `tests/failover.rs`): the
/// shards must refuse it and hold no commit under its stale epoch.
async fn frozen_leader(m: Option<Mutation>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), m, 2, &[]).await;
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let lease = [
        "--lease-duration",
        "1s",
        "--renew-deadline",
        "700ms",
        "--retry-period",
        "100ms",
        "--fault-keep-leading",
    ];
    c.start_replicas(2, &lease).await.unwrap();
    wait_for_leader(&c, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let load = start_load(&log, load_spec(500, 6, 3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let f = take_down_leader(&mut c, Takedown::Stop, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = c.players[f.old_leader].cont();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut refusals = 0;
    for s in &c.shards {
        let st = ShardConn::connect(s.addr(), None)
            .await
            .map_err(|e| e.to_string())?
            .stats(false)
            .await
            .map_err(|e| e.to_string())?;
        if st.stale_epoch_commits > 0 {
            return Err(format!(
                "{} commits under a stale epoch",
                st.stale_epoch_commits
            ));
        }
        refusals += st.fenced_refusals;
    }
    if refusals == 0 {
        return Err("no shard refused the stale leader".into());
    }
    let _ = load.await;
    verdict(&c, &log).await
}

/// One shard down while retention runs (as `tests/retention_metrics.rs`): the log must keep
/// what it still needs, and it must catch up when it returns.
async fn retention(m: Option<Mutation>) -> Result<(), String> {
    retention_on(m, 1).await
}

/// [`retention`] over a log of `replicas` (1: the single-node LogStore, whose retention
/// removes whole 64 KiB segments; 3: a Raft group, which releases exactly below the index
/// asked, so that releasing one entry too many strands the shard that was down).
async fn retention_on(m: Option<Mutation>, replicas: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = match replicas {
        1 => cluster(dir.path(), m, 2, &["--segment-bytes", "65536"]).await,
        n => Cluster::start_replicated(dir.path(), &bin(), (2, &[]), n, &env(m))
            .await
            .expect("the cluster starts"),
    };
    let log = Log::connect(&c.logstore_addrs()).await.unwrap();
    // A small queue, so that the frozen shard's entries must come back from the log.
    let args = [
        "--retain-log",
        "--checkpoint-interval",
        "200ms",
        "--queue-bytes",
        "65536",
    ];
    c.start_replicas(1, &args).await.unwrap();
    wait_for_leader(&c, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let load = start_load(&log, load_spec(1000, 3, 5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down (not frozen): the player suspends its queue and reads nothing for it from the
    // log until it returns, so what it then needs must still be in the log.
    c.shards[1].kill().await;
    let _ = load.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Retention keeps everything after the down shard's cursor (the lowest): whether the
    // shard needs the entry just after it depends on whether an ack was in flight when it
    // was killed, so this is checked against the cursor itself.
    let saved = std::fs::read_to_string(c.cursor_path()).map_err(|e| e.to_string())?;
    let saved: serde_json::Value = serde_json::from_str(&saved).map_err(|e| e.to_string())?;
    let cursor = saved
        .pointer("/acked/s1")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("no cursor for the down shard in {saved}"))?;
    let (first, _) = log.bounds().await.map_err(|e| e.to_string())?;
    if first == 1 {
        return Err("retention released nothing while the shard was down".into());
    }
    if first > cursor + 1 {
        return Err(format!(
            "the log starts at {first}, but the down shard acknowledged only through {cursor}"
        ));
    }
    c.shards[1].restart().await.map_err(|e| e.to_string())?;
    // The log no longer starts at 1, so the full state cannot be rebuilt: the frozen shard
    // must catch up to the end instead.
    let (_, last) = log.bounds().await.map_err(|e| e.to_string())?;
    let shard = ShardConn::connect(c.shards[1].addr(), None)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let applied = shard
            .applied()
            .await
            .map_err(|e| e.to_string())?
            .applied_index;
        if applied + 1000 >= last {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the frozen shard is stuck at {applied} of {last}: the log released entries it needed"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The log's leader SIGKILLed under load (a three-replica log, a player delivering to two
/// shards): the load's append streams reopen on the new leader and resend what was not
/// answered, some of it already committed, which the LogStore must answer with the original
/// index. The exactly-once check reads the log for a transaction written twice (the shards
/// would apply it twice too, and agree with the log).
async fn log_leader_kills(m: Option<Mutation>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_replicated(dir.path(), &bin(), (2, &[]), 3, &env(m))
        .await
        .expect("the cluster starts");
    let log = Log::connect(&c.logstore_addrs()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.log_leader().await.is_none() {
        if std::time::Instant::now() > deadline {
            return Err(format!("no log leader:\n{}", c.logs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_player(&[]).await.unwrap();
    let load = start_load(&log, load_spec(800, 6, 13));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let Some(l) = c.log_leader().await else {
            continue;
        };
        c.log_replicas()[l].kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.log_replicas()[l]
            .restart()
            .await
            .map_err(|e| e.to_string())?;
    }
    let report = load.await.map_err(|e| e.to_string())?;
    if report.failed > 0 {
        return Err(format!("{} appends failed: {report:?}", report.failed));
    }
    verdict(&c, &log).await
}

/// A recovery reader that outlives its queue's term (the scenario the paper's TLA+ model
/// found): shard s0 comes back behind while the LogStore is down, so a recovery reader starts
/// and its read hangs; the shard bounces, so its queue takes a new term and a new reader;
/// then the LogStore resumes and both readers read. The old reader's pushes must
/// be dropped: the shard must get each entry once, in order — no duplicate skipped, no gap
/// refused. (The shards' own checks may mask the damage from the exactly-once check, so this
/// also asks the shard what it was sent.)
///
/// What makes it deterministic: s0's share of the log (~6 MB) is larger than its catch-up
/// queue (4 MiB), and s0 is paused while both readers read. The current reader fills the
/// queue and waits for room, so it cannot finish its range (which would end the recovery
/// state and drop late pushes for another reason); a stale reader is never made to wait, so
/// everything it reads is pushed while the current term is still fetching.
async fn stale_reader(m: Option<Mutation>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), m, 2, &[]).await;
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    c.start_player(&[]).await.unwrap();
    c.shards[0].kill().await;
    let spec = LoadSpec {
        txn_bytes: 3000,
        ..load_spec(1000, 4, 11)
    };
    let _ = start_load(&log, spec).await;
    // Reads stall (the process is stopped, its sockets stay open).
    c.logstore.stop().map_err(|e| e.to_string())?;
    // The player reconnects within its 2 s backoff each time.
    let bounce = async {
        c.shards[0].restart().await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.shards[0].restart().await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        // The shard pauses while both readers read, so no ack lets the queue drop what
        // the other reader already pushed: whatever a stale reader pushes reaches the
        // shard.
        c.shards[0].stop()?;
        c.logstore.cont()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.shards[0].cont()
    };
    bounce.await.map_err(|e| e.to_string())?;
    verdict(&c, &log).await?;
    let player_log = std::fs::read_to_string(c.players[0].log_path()).unwrap_or_default();
    let recoveries = player_log
        .lines()
        .filter(|l| l.contains("recovery started") && l.contains("s0"))
        .count();
    if recoveries < 2 {
        panic!(
            "the scenario did not run: {recoveries} recoveries of s0 started, 2 needed\n{}",
            c.logs()
        );
    }
    let shard = ShardConn::connect(c.shards[0].addr(), None)
        .await
        .map_err(|e| e.to_string())?;
    let stats = shard.stats(false).await.map_err(|e| e.to_string())?;
    if stats.duplicates_skipped + stats.gaps_refused > 0 {
        return Err(format!(
            "the player sent shard s0 {} entries it had applied and {} out of order: a stale recovery reader pushed into a later term",
            stats.duplicates_skipped, stats.gaps_refused
        ));
    }
    Ok(())
}

/// A sender that skips an entry (a gap) on a real shard process: the shard must refuse it.
async fn gap(m: Option<Mutation>) -> Result<(), String> {
    raw_sender(m, false).await
}

/// A sender that resends entries the shard applied (a retry after a lost ack) on a real
/// shard process: the shard must apply each once.
async fn resend(m: Option<Mutation>) -> Result<(), String> {
    raw_sender(m, true).await
}

/// A raw sender on a real shard: `resend` sends 1, 2, then 1, 2, 3 on a new stream (the
/// counter must end at 3); otherwise 1 then 3 naming 2 as its previous (the shard must
/// refuse 3).
async fn raw_sender(m: Option<Mutation>, resend: bool) -> Result<(), String> {
    use logplayer::proto::shard_client::ShardClient;
    use logplayer::proto::{
        Batch, DeliverRequest, Hello, Mutation as M, ShardEntry, deliver_request, mutation::Op,
    };
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), m, 1, &[]).await;
    let client = ShardClient::new(
        logplayer::grpc::connect(c.shards[0].addr(), &logplayer::grpc::Expected::AnyShard)
            .await
            .unwrap(),
    );
    let hello = Hello {
        epoch: 1,
        player_id: "gap".into(),
        log_id: "00000000-0000-4000-8000-0000000000aa".into(),
        shard_id: "s0".into(),
        max_entry_bytes: 4 * 1024 * 1024,
        slots: logplayer::proto::SlotRange::all(),
    };
    // A Deliver stream, its Hello sent and the Welcome read.
    let open = || {
        let hello = hello.clone();
        let mut client = client.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(DeliverRequest {
                msg: Some(deliver_request::Msg::Hello(hello)),
            })
            .await
            .unwrap();
            let mut inbound = client
                .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            inbound.message().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((tx, inbound))
        }
    };
    let entry = |index, prev| ShardEntry {
        index,
        prev_index: prev,
        mutations: vec![M {
            key: b"c-1".to_vec().into(),
            op: Some(Op::Add(1)),
        }],
        ..Default::default()
    };
    let batch = |entries| DeliverRequest {
        msg: Some(deliver_request::Msg::Batch(Batch { entries })),
    };
    if resend {
        // As a player resends: on a new stream, after the first one's acks.
        let (tx, mut inbound) = open().await?;
        tx.send(batch(vec![entry(1, 0), entry(2, 1)]))
            .await
            .unwrap();
        inbound.message().await.map_err(|e| e.to_string())?;
        drop((tx, inbound));
        let (tx, mut inbound) = open().await?;
        tx.send(batch(vec![entry(1, 0), entry(2, 1), entry(3, 2)]))
            .await
            .unwrap();
        drop(tx);
        while let Ok(Some(_)) = inbound.message().await {}
        let dump = ShardConn::connect(c.shards[0].addr(), None)
            .await
            .map_err(|e| e.to_string())?
            .dump()
            .await
            .map_err(|e| e.to_string())?;
        return if dump.iter().any(|l| l.contains("\"counter\":3")) {
            Ok(())
        } else {
            Err(format!("three adds, applied as {dump:?}"))
        };
    }
    let (tx, mut inbound) = open().await?;
    tx.send(batch(vec![entry(1, 0), entry(3, 2)]))
        .await
        .unwrap();
    let mut applied = 0;
    loop {
        match inbound.message().await {
            Ok(Some(r)) => {
                if let Some(logplayer::proto::deliver_response::Msg::Ack(a)) = r.msg {
                    applied = a.applied_index;
                }
            }
            _ => break,
        }
        if applied >= 3 {
            break;
        }
    }
    if applied >= 3 {
        Err(format!(
            "the shard applied entry 3 without entry 2 (applied {applied})"
        ))
    } else {
        Ok(())
    }
}

/// Runs `scenario` with `m` on and requires it to find a violation.
async fn caught<F, Fut>(m: Mutation, scenario: F)
where
    F: Fn(Option<Mutation>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    match scenario(Some(m)).await {
        Err(what) => eprintln!(
            "[mutations] {} caught: {}",
            m.name(),
            what.lines().take(6).collect::<Vec<_>>().join(" | ")
        ),
        Ok(()) => panic!("with {} on, the scenario found nothing wrong", m.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_switch_on_every_scenario_passes() {
    kills(None, true, true).await.unwrap();
    kills_on(None, true, false, &["--store", "redb"])
        .await
        .unwrap();
    frozen_leader(None).await.unwrap();
    retention(None).await.unwrap();
    retention_on(None, 3).await.unwrap();
    gap(None).await.unwrap();
    resend(None).await.unwrap();
    stale_reader(None).await.unwrap();
    common::group::stray_replica(&[]).await.unwrap();
    common::group::twin_replica(&[]).await.unwrap();
    common::writer_beside_another_log(&[]).await.unwrap();
    common::slots_moved_to_a_shard_that_applied(&[])
        .await
        .unwrap();
    log_leader_kills(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_ignoring_their_slots_are_caught_by_slots_moved_to_a_shard_that_applied() {
    // Caught by s0 applying entries of the slots it gained, not by a timeout.
    caught(Mutation::ShardIgnoresSlots, |m| async move {
        match common::slots_moved_to_a_shard_that_applied(&env(m)).await {
            Err(what) if !what.contains("s0 applied entries") => {
                panic!("the scenario failed for another reason: {what}")
            }
            other => other,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_writing_a_retry_again_is_caught_by_log_leader_kills() {
    // Caught by the checker's reading of the log, not by anything else going wrong.
    caught(Mutation::LogForgetsRetries, |m| async move {
        match log_leader_kills(m).await {
            Err(what) if !what.contains("written twice") => {
                panic!("the scenario failed for another reason: {what}")
            }
            other => other,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_ignoring_an_appends_log_id_is_caught_by_a_writer_beside_another_log() {
    caught(Mutation::LogIgnoresAppendLogId, |m| async move {
        common::writer_beside_another_log(&env(m)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ignoring_the_log_id_are_caught_by_a_replica_of_another_log() {
    caught(Mutation::ReplicaIgnoresLogId, |m| async move {
        common::group::stray_replica(&env(m)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ignoring_incarnations_are_caught_by_a_copy_beside_a_replica() {
    caught(Mutation::ReplicaIgnoresIncarnations, |m| async move {
        common::group::twin_replica(&env(m)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_ignoring_epochs_are_caught_by_the_frozen_leader() {
    caught(Mutation::ShardIgnoresEpochs, frozen_leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_accepting_gaps_are_caught_by_a_gapped_sender() {
    caught(Mutation::ShardAcceptsGaps, gap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_reapplying_are_caught_by_a_resending_sender() {
    // Player kills alone do not catch it: a restarted player resumes each shard from its
    // Welcome and drops what it acknowledged, so it never resends an applied entry; the
    // shard's dedup is the second line, shown with a sender that does resend.
    caught(Mutation::ShardReapplies, resend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_commit_is_caught_by_its_crash_point() {
    caught(Mutation::ShardSplitCommit, |m| kills(m, true, false)).await;
}

/// The same with the redb store, whose split commit is its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_redb_commit_is_caught_by_its_crash_point() {
    caught(Mutation::ShardSplitCommit, |m| {
        kills_on(m, true, false, &["--store", "redb"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ignoring_a_cursor_is_caught_by_a_shard_that_was_down() {
    caught(Mutation::RetentionIgnoresCursor, retention).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_ignoring_terms_are_caught_by_a_stale_recovery_reader() {
    caught(Mutation::QueueIgnoresTerms, stale_reader).await;
}
