//! The membership of a replicated LogStore changed at runtime with the real CLI
//! (`logplayer logstore members`): a replica added while the log is purged is brought up by a
//! snapshot and votes; a removed one no longer counts; a wiped replica comes back by being
//! removed and added again; and wrong changes are refused by name, leaving the group as it was.

mod common;

use std::time::{Duration, Instant};

use common::bin;
use common::group::{Group, log_says, write};
use logplayer::client::Log;

/// Runs `logplayer logstore members ARGS --logstore ADDRS --json`; returns its JSON on
/// success, its stderr on failure.
async fn members(addrs: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = tokio::process::Command::new(bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["logstore", "members"])
        .args(args)
        .args(["--logstore", addrs, "--json"])
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Asserts that `status` is a refusal for `reason` whose message says `says`.
fn refused(status: &tonic::Status, reason: logplayer::grpc::Reason, says: &str) {
    assert_eq!(
        logplayer::grpc::Reason::of(status),
        Some(reason),
        "{status:?}"
    );
    assert!(status.message().contains(says), "{status:?}");
}

/// The voters' ids in a `members --json` answer.
fn voters(m: &serde_json::Value) -> Vec<u64> {
    m["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["voter"].as_bool() == Some(true))
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

/// Waits until the replica at `addr` serves entries up to `last`, then returns them from
/// `from`.
async fn served(addr: &str, from: u64, last: u64) -> Vec<logplayer::proto::Entry> {
    let log = Log::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.bounds().await.unwrap_or((0, 0)).1 < last {
        assert!(Instant::now() < deadline, "{addr} did not reach {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.read_range(from, last).await.unwrap()
}

/// A group of three (with `extra` flags) whose log holds 300 entries, 250 of them released:
/// a replica added now can only start from a snapshot, and 250 writers (`x0`..`x249`, then
/// `w` 251..300) make it several 4 KiB pieces. Returns the group, its leader and a client.
async fn released_group(extra: &[&str]) -> (Group, usize, Log) {
    let mut args = vec![
        "--segment-bytes",
        "4096",
        "--snapshot-every",
        "20",
        "--snapshot-chunk-bytes",
        "4096",
    ];
    args.extend_from_slice(extra);
    let g = Group::start(3, &args).await;
    let leader = g.leader(Duration::from_secs(20)).await;
    let log = Log::connect(&g.all()).await.unwrap();
    for i in 0..250 {
        write(&log, &format!("x{i}"), 1, 1).await;
    }
    write(&log, "w", 251, 50).await;
    log.retain(250, "").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    (g, leader, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_and_removed_at_runtime_and_the_log_goes_on() {
    let (mut g, _, log) = released_group(&[]).await;

    // 3 -> 4: replica 4 catches up as a learner (through a snapshot), then votes.
    let (id4, addr4) = g.start_another().await;
    let m = members(&g.all(), &["add", &format!("{id4}={addr4}")])
        .await
        .unwrap_or_else(|e| panic!("add: {e}\n{}", g.logs()));
    assert_eq!(voters(&m), vec![1, 2, 3, 4]);
    assert!(
        log_says(
            &g.procs[3],
            "installed a snapshot from the leader",
            Duration::from_secs(5)
        )
        .await,
        "replica 4 was not brought up by a snapshot, so this proves less than it says"
    );
    assert!(
        log_says(
            &g.procs[3],
            "received a snapshot in pieces",
            Duration::from_secs(1)
        )
        .await,
        "the snapshot came in one message: the pieces are not tested"
    );
    // The writer table came with it: replica 4 remembers every writer the leader does.
    let leader = log.describe().await.unwrap().writers;
    let replica4 = Log::connect(&addr4).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica4.describe().await.map(|b| b.writers).ok() != Some(leader) {
        assert!(
            Instant::now() < deadline,
            "replica 4's writer table: {:?}, the leader's {leader}",
            replica4.describe().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leader, 251, "x0..x249 and w");
    let last = write(&log, "w", 301, 20).await.last().unwrap().1;
    let reference = served(&g.addrs[0], 250, last).await;
    assert_eq!(served(&addr4, 250, last).await, reference, "replica 4");

    // With four voters, two down is one too many; removing one of them makes the other
    // three a group of three again, which goes on with one of them down.
    let listed = members(&g.all(), &["list"]).await.unwrap();
    assert_eq!(voters(&listed), vec![1, 2, 3, 4]);
    g.procs[1].kill().await;
    let m = members(&g.all(), &["remove", "2"])
        .await
        .unwrap_or_else(|e| panic!("remove: {e}\n{}", g.logs()));
    assert_eq!(voters(&m), vec![1, 3, 4]);
    let again = members(&g.all(), &["remove", "2"]).await.unwrap();
    assert_eq!(
        voters(&again),
        vec![1, 3, 4],
        "removing again changes nothing"
    );
    let last = write(&log, "w", 321, 20).await.last().unwrap().1;

    // A wiped replica comes back by being removed and added again: replica 1, the one that
    // seeded the group, loses its directory and restarts with its old flags. It must not
    // seed a second group.
    members(&g.all(), &["remove", "1"])
        .await
        .unwrap_or_else(|e| panic!("remove 1: {e}\n{}", g.logs()));
    g.procs[0].kill().await;
    std::fs::remove_dir_all(g.data(1)).unwrap();
    g.procs[0].restart().await.unwrap();
    assert!(
        log_says(
            &g.procs[0],
            "not seeding a new one",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        g.procs[0].log_tail(20)
    );
    // Nor when asked to (the operator seeds a new group's first replica this way, and takes
    // a group for gone from its status, which anyone may overwrite).
    let refused = logplayer::proto::log_store_client::LogStoreClient::connect(format!(
        "http://{}",
        g.addrs[0]
    ))
    .await
    .unwrap()
    .seed(logplayer::proto::SeedRequest {})
    .await
    .expect_err("a wiped replica whose peers form a group seeded a second one");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("not seeding a second one"),
        "{}",
        refused.message()
    );
    let m = members(&g.all(), &["add", &format!("1={}", g.addrs[0])])
        .await
        .unwrap_or_else(|e| panic!("re-add: {e}\n{}", g.logs()));
    assert_eq!(voters(&m), vec![1, 3, 4]);
    let last = write(&log, "w", 341, 20).await.last().unwrap().1.max(last);
    let reference = served(&g.addrs[2], 250, last).await;
    for a in [&g.addrs[0], &addr4] {
        assert_eq!(served(a, 250, last).await, reference, "{a}");
    }
    assert_eq!(reference.len() as u64, last - 249, "dense, nothing lost");
}

/// A replica of an older version has no `InstallSnapshotStream` (`--fault-no-append-stream`
/// makes one answer as it would): a snapshot larger than `--snapshot-chunk-bytes` that fits
/// one message is then sent to it in one, and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_snapshot_stream_is_sent_the_snapshot_in_one_message() {
    let (mut g, leader, log) = released_group(&["--fault-no-append-stream"]).await;
    let (id4, addr4) = g.start_another().await;
    members(&g.all(), &["add", &format!("{id4}={addr4}")])
        .await
        .unwrap_or_else(|e| panic!("add: {e}\n{}", g.logs()));
    assert!(
        log_says(
            &g.procs[leader],
            "takes no snapshot in pieces",
            Duration::from_secs(1)
        )
        .await,
        "the leader did not fall back to one message:\n{}",
        g.procs[leader].log_tail(30)
    );
    let last = write(&log, "w", 301, 5).await.last().unwrap().1;
    assert_eq!(
        served(&addr4, 250, last).await,
        served(&g.addrs[leader], 250, last).await
    );
}

/// A raw gRPC client of the group's leader (for requests the CLI would not send).
async fn leader_client(
    g: &Group,
) -> logplayer::proto::log_store_client::LogStoreClient<tonic::transport::Channel> {
    let leader = g.leader(Duration::from_secs(10)).await;
    logplayer::proto::log_store_client::LogStoreClient::connect(format!(
        "http://{}",
        g.addrs[leader]
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_membership_changes_are_refused_by_name() {
    let mut g = Group::start(3, &[]).await;
    g.leader(Duration::from_secs(20)).await;
    let all = g.all();
    let e = members(&all, &["add", &format!("4={}", g.addrs[2])])
        .await
        .unwrap_err();
    assert!(e.contains("is replica 3's address"), "{e}");
    let e = members(&all, &["add", &format!("2={}", g.addrs[2])])
        .await
        .unwrap_err();
    assert!(e.contains("is replica 3's address"), "{e}");
    let e = members(&all, &["add", "4=nohost"]).await.unwrap_err();
    assert!(e.contains("not HOST:PORT"), "{e}");
    // Replica ids start at 1: refused by the CLI, and by the server from any client.
    let e = members(&all, &["add", &format!("0={}", g.addrs[0])])
        .await
        .unwrap_err();
    assert!(e.contains("replica ids start at 1"), "{e}");
    let status = leader_client(&g)
        .await
        .add_member(logplayer::proto::AddMemberRequest {
            id: 0,
            addr: format!("127.0.0.1:{}", common::free_port()),
            catch_up_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(
        &status,
        logplayer::grpc::Reason::Invalid,
        "replica ids start at 1",
    );
    // A member at another, unused address: moving it is a remove and an add (an add would
    // leave the group pointing the old id at a process that may be someone else).
    let unused = format!("127.0.0.1:{}", common::free_port());
    let e = members(&all, &["add", &format!("2={unused}")])
        .await
        .unwrap_err();
    assert!(e.contains("remove it first"), "{e}");

    // The process that is replica 4 gets what the leader sends to a replica 5 given its
    // address: it refuses by name, the add gives up and leaves 5 a learner, and removing
    // it restores the group.
    let (id, addr) = g.start_another().await;
    let wrong = id + 1;
    let e = members(
        &all,
        &["add", &format!("{wrong}={addr}"), "--catch-up", "3s"],
    )
    .await
    .unwrap_err();
    assert!(e.contains("has not caught up"), "{e}");
    assert!(
        log_says(
            &g.procs[3],
            &format!("meant for replica {wrong}"),
            Duration::from_secs(5)
        )
        .await,
        "the wrong process did not refuse by name:\n{}",
        g.procs[3].log_tail(20)
    );
    let m = members(&all, &["list"]).await.unwrap();
    assert_eq!(voters(&m), vec![1, 2, 3], "{wrong} is a learner only");
    assert_eq!(m["members"].as_array().unwrap().len(), 4);
    // A caller's deadline (here 4 s, below the default 60 s catch-up) bounds the wait: the
    // answer is the `membership` refusal that says the replica stays a learner, not a
    // deadline that says nothing of it.
    let mut raw = leader_client(&g).await;
    let mut request = tonic::Request::new(logplayer::proto::AddMemberRequest {
        id: wrong,
        addr: addr.clone(),
        catch_up_ms: 0,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(4));
    let status = raw.add_member(request).await.unwrap_err();
    refused(
        &status,
        logplayer::grpc::Reason::Membership,
        "has not caught up",
    );
    let m = members(&all, &["remove", &wrong.to_string()])
        .await
        .unwrap();
    assert_eq!(m["members"].as_array().unwrap().len(), 3);
    let log = Log::connect(&all).await.unwrap();
    write(&log, "w", 1, 5).await;

    // The only voter of a group is not removed: the group would have none.
    let one = Group::start(1, &[]).await;
    one.leader(Duration::from_secs(20)).await;
    let e = members(&one.all(), &["remove", "1"]).await.unwrap_err();
    assert!(e.contains("only voter; a group needs one"), "{e}");
    let m = members(&one.all(), &["list"]).await.unwrap();
    assert_eq!(voters(&m), vec![1]);

    // A single-node LogStore has no members.
    let (_dir, single, _) = common::servers(0).await;
    let e = members(single.logstore.addr(), &["list"])
        .await
        .unwrap_err();
    assert!(e.contains("single-node"), "{e}");
}

/// A membership change goes to the log its caller means, or nowhere: `members` given the
/// replicas of two logs (one mistyped address) refuses before changing anything, naming
/// each log; a change that names another log's id is refused by the replica; and every
/// answer names its log. Aimed at a shard's address, it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_never_reaches_another_log() {
    let a = Group::start(3, &[]).await;
    let b = Group::start(1, &[]).await;
    a.leader(Duration::from_secs(20)).await;
    b.leader(Duration::from_secs(20)).await;
    let a_id = Log::connect(&a.all())
        .await
        .unwrap()
        .describe()
        .await
        .unwrap()
        .log_id;
    let b_id = Log::connect(&b.all())
        .await
        .unwrap()
        .describe()
        .await
        .unwrap()
        .log_id;
    assert_ne!(a_id, b_id);
    // B's address first: the leader it names is B's, whose replica 3 does not exist, or
    // (as it was) the change went to whichever log answered first.
    let mixed = format!("{},{}", b.all(), a.all());
    let e = members(&mixed, &["remove", "3"]).await.unwrap_err();
    assert!(
        e.contains("reaches more than one log")
            && e.contains(&a_id)
            && e.contains(&b_id)
            && e.contains("Nothing was changed"),
        "{e}"
    );
    let m = members(&a.all(), &["list"]).await.unwrap();
    assert_eq!(voters(&m), vec![1, 2, 3]);
    assert_eq!(m["log_id"].as_str(), Some(a_id.as_str()), "{m}");

    // Any client: a change naming B's log is refused by A's leader.
    let status = leader_client(&a)
        .await
        .remove_member(logplayer::proto::RemoveMemberRequest {
            id: 3,
            log_id: b_id.clone(),
        })
        .await
        .unwrap_err();
    refused(
        &status,
        logplayer::grpc::Reason::WrongLog,
        "membership is unchanged",
    );
    assert_eq!(
        voters(&members(&a.all(), &["list"]).await.unwrap()),
        vec![1, 2, 3]
    );

    // Adding another log's replica, a single-node LogStore or a shard as a replica of A is
    // refused by name, and A is unchanged (each was added as a learner that never caught
    // up, and the change ended at its deadline naming none of them).
    let (_dir, c, _log) = common::servers(1).await;
    let shard = c.shards[0].addr();
    for (addr, want) in [
        (
            b.addrs[0].as_str(),
            format!("it is a replica of log {b_id}"),
        ),
        (c.logstore.addr(), "it is a single-node LogStore".to_owned()),
        (shard, "does not serve the LogStore API".to_owned()),
    ] {
        let e = members(&a.all(), &["add", &format!("4={addr}")]).await;
        let e = e.unwrap_err();
        assert!(
            e.contains(&want) && e.contains("Nothing was changed"),
            "{addr}: {e}"
        );
    }
    let m = members(&a.all(), &["list"]).await.unwrap();
    assert_eq!(m["members"].as_array().unwrap().len(), 3, "{m}");
    // A replica of this log, removed but running, given to the leader under another id.
    members(&a.all(), &["remove", "3"]).await.unwrap();
    let e = members(&a.all(), &["add", &format!("4={}", a.addrs[2])])
        .await
        .unwrap_err();
    assert!(e.contains("it is replica 3 (its --id), not 4"), "{e}");
    members(&a.all(), &["add", &format!("3={}", a.addrs[2])])
        .await
        .unwrap();
    // Any client: an add naming B's log is refused by A's leader.
    let status = leader_client(&a)
        .await
        .add_member(logplayer::proto::AddMemberRequest {
            id: 4,
            addr: format!("127.0.0.1:{}", common::free_port()),
            log_id: b_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(&status, logplayer::grpc::Reason::WrongLog, "");
    assert_eq!(
        voters(&members(&a.all(), &["list"]).await.unwrap()),
        vec![1, 2, 3]
    );

    // A shard's address, alone or among the replicas'.
    let e = members(&format!("{shard},{}", a.all()), &["list"])
        .await
        .unwrap_err();
    assert!(e.contains("does not serve the LogStore API"), "{e}");
    let e = members(shard, &["list"]).await.unwrap_err();
    assert!(e.contains("does not serve this API"), "{e}");
}

/// A replica that lost its disk must not help elect a leader that lacks what it had itself
/// acknowledged. Entries are committed by the leader and one follower while the other
/// follower is frozen; the leader is killed and the follower that acknowledged them loses
/// its directory. Were the empty replica to vote, the frozen one (behind) would win once
/// woken, and the acknowledged entries would be cut from the log when the old leader came
/// back. It refuses until it caught up, so they survive on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_disk_does_not_vote_until_it_caught_up() {
    let mut g = Group::start(3, &[]).await;
    let l = g.leader(Duration::from_secs(20)).await;
    let (w, f) = ((l + 1) % 3, (l + 2) % 3);
    let log = Log::connect(&g.all()).await.unwrap();
    write(&log, "before", 1, 5).await;
    g.procs[f].stop().unwrap();
    let acked = write(&log, "w", 1, 30).await;
    let last = acked.last().unwrap().1;
    g.procs[l].kill().await;
    g.procs[w].kill().await;
    std::fs::remove_dir_all(g.data(w + 1)).unwrap();
    g.procs[w].restart().await.unwrap();
    g.procs[f].cont().unwrap();
    // Give the behind replica time to ask the empty one for its vote.
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.procs[l].restart().await.unwrap();
    let entries = served_by_all(&g, last).await;
    for (seq, index) in &acked {
        for (r, e) in entries.iter().enumerate() {
            assert_eq!(
                e[(*index - 1) as usize].mutations[0].key,
                format!("w-{seq}").into_bytes(),
                "acknowledged w-{seq} at {index} is gone from replica {}",
                r + 1
            );
        }
    }
    // It was asked, and refused.
    assert!(
        log_says(
            &g.procs[w],
            "started on an empty log",
            Duration::from_secs(10)
        )
        .await,
        "the empty replica did not refuse a vote:\n{}",
        g.logs()
    );
}

/// Every replica's entries `1..=last`, once each serves them.
async fn served_by_all(g: &Group, last: u64) -> Vec<Vec<logplayer::proto::Entry>> {
    let mut out = Vec::new();
    for a in &g.addrs {
        out.push(served(a, 1, last).await);
    }
    out
}
