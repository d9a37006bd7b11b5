//! One entry-size limit, end to end, over real processes: an entry of exactly
//! `--max-entry-bytes`, and ten in a row, reach every shard exactly once; one byte over is
//! refused with `RESOURCE_EXHAUSTED` naming the size and the limit; and components started
//! with different limits refuse each other by name instead of stalling.

mod common;

use std::time::Duration;

use common::{eventually, http_get, servers, start_player_with};
use logplayer::grpc::Reason;
use logplayer::harness::check::check;
use logplayer::limits::{DEFAULT_MAX_ENTRY_BYTES, entry_bytes};
use logplayer::proto::{Mutation, mutation::Op};

/// One append to list `key` whose entry is exactly `size` bytes.
fn exactly(key: &str, size: usize, fill: u8) -> Vec<Mutation> {
    let with = |n: usize| {
        vec![Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(Op::Append(vec![fill; n].into())),
        }]
    };
    // Varint lengths make the size a step function of the payload: search downwards.
    let mut n = size;
    while entry_bytes(&with(n)) > size {
        n -= 1;
    }
    let m = with(n);
    assert_eq!(entry_bytes(&m), size, "cannot hit {size} exactly");
    m
}

#[tokio::test]
async fn entries_of_exactly_the_limit_are_delivered_and_one_byte_over_is_refused() {
    let (_dir, mut c, log) = servers(2).await;
    c.start_player(&[]).await.unwrap();
    let limit = DEFAULT_MAX_ENTRY_BYTES;
    // One at the limit, then ten in a row, over keys of both shards, with small ones around.
    log.append(exactly("l-000001", limit, b'a'), None, 0)
        .await
        .unwrap();
    for i in 0..10u8 {
        let small = vec![Mutation {
            key: format!("c-{:06}", i % 4).into_bytes().into(),
            op: Some(Op::Add(1)),
        }];
        log.append(small, None, 0).await.unwrap();
        log.append(
            exactly(&format!("l-{:06}", 2 * (i % 4) + 1), limit, b'b' + i),
            None,
            0,
        )
        .await
        .unwrap();
    }
    // One byte over: refused, naming both numbers, and nothing written.
    let (_, before) = log.bounds().await.unwrap();
    let err = log
        .append(exactly("l-000001", limit + 1, b'z'), None, 0)
        .await
        .unwrap_err();
    let logplayer::client::ClientError::Rpc { status, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(Reason::of(status), Some(Reason::EntryTooLarge));
    let msg = status.message();
    assert!(
        msg.contains(&(limit + 1).to_string()) && msg.contains(&limit.to_string()),
        "{msg}"
    );
    assert_eq!(log.bounds().await.unwrap().1, before);

    let report = check(&log, &c.shard_map(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(report.pass, "{report}\n{}", c.logs());
    assert_eq!(report.entries, 21);
}

#[tokio::test]
async fn a_shard_with_a_smaller_limit_is_refused_by_name_and_the_others_go_on() {
    let (_dir, c, log) = servers(2).await;
    // Replace shard s1 by one with a smaller limit, at a new address.
    let dir = c.dir.clone();
    let small = logplayer::harness::cluster::Proc::start(
        "shard-small",
        &c.bin,
        vec![
            "shard".into(),
            "--id".into(),
            "s1".into(),
            "--data".into(),
            dir.join("shard-small").display().to_string(),
            "--max-entry-bytes".into(),
            "65536".into(),
        ],
        Some("127.0.0.1:0"),
        &dir,
    )
    .await
    .unwrap();
    let specs = [
        format!("s0={}", c.shards[0].addr()),
        format!("s1={}", small.addr()),
    ];
    let (player, metrics) =
        start_player_with(&c, "player-limits", c.logstore.addr(), &specs, &[]).await;
    for i in 0..20 {
        let m = vec![Mutation {
            key: format!("c-{i:06}").into_bytes().into(),
            op: Some(Op::Add(1)),
        }];
        log.append(m, None, 0).await.unwrap();
    }
    let refused = eventually(Duration::from_secs(20), || async {
        let (_, m) = http_get(&metrics, "/metrics").await;
        m.contains("logplayer_shard_refused{shard=\"s1\",reason=\"entry-limit\"} 1")
    })
    .await;
    assert!(refused, "{}", player.log_tail(40));
    let text = player.log_tail(100);
    assert!(
        text.contains("65536") && text.contains(&DEFAULT_MAX_ENTRY_BYTES.to_string()),
        "{text}"
    );
    // s0 still gets its entries.
    let s0 = logplayer::client::ShardConn::connect(c.shards[0].addr(), None)
        .await
        .unwrap();
    let going = eventually(Duration::from_secs(20), || async {
        s0.applied()
            .await
            .map(|a| a.applied_index > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(going, "{}", player.log_tail(40));
}

/// An entry written under a larger `--max-entry-bytes` than the LogStore now runs with is
/// refused on read by name (`entry-too-large`, its index and both sizes), and the player
/// reports its main stream stalled at it, instead of reads ended `OUT_OF_RANGE` ("encoded
/// message length too large", a position outside the log in our protocol).
#[tokio::test]
async fn an_entry_above_a_lowered_log_limit_is_refused_on_read_by_name() {
    let (_dir, mut c, log) = servers(1).await;
    let size = 2 * 1024 * 1024;
    log.append(exactly("l-000001", size, b'a'), None, 0)
        .await
        .unwrap();
    c.logstore.add_args(&["--max-entry-bytes", "1048576"]);
    c.logstore.restart().await.unwrap();
    let err = log.read_range(1, 1).await.unwrap_err();
    let logplayer::client::ClientError::Rpc { status, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        Reason::of(status),
        Some(Reason::EntryTooLarge),
        "{status:?}"
    );
    let msg = status.message();
    assert!(
        msg.contains("entry 1 ") && msg.contains(&size.to_string()) && msg.contains("1048576"),
        "{msg}"
    );
    let specs = [format!("s0={}", c.shards[0].addr())];
    let (player, metrics) =
        start_player_with(&c, "player-lowered", c.logstore.addr(), &specs, &[]).await;
    let stalled = eventually(Duration::from_secs(20), || async {
        let (_, m) = http_get(&metrics, "/metrics").await;
        m.lines().any(|l| l == "logplayer_player_read_stalled 1")
    })
    .await;
    assert!(stalled, "{}", player.log_tail(40));
    assert!(player.log_tail(100).contains("cannot read entry 1"));
}

#[tokio::test]
async fn a_player_with_a_smaller_limit_than_the_log_refuses_to_start() {
    let (_dir, c, _log) = servers(1).await;
    let out = tokio::process::Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["player", "--logstore", c.logstore.addr(), "--shard"])
        .arg(format!("s0={}", c.shards[0].addr()))
        .args(["--max-entry-bytes", "65536"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("65536") && last.contains("4194304"),
        "{stderr}"
    );
}

/// A player with a larger limit than the log (allowed: it reads whatever the log holds)
/// keeps its batches within the log's limit, which is all the shards promise to take: with
/// a shard frozen while entries of 3 MiB pile up, the batches that catch it up used to be
/// sized by the player's 16 MiB and refused by the shard as `entry-too-large`.
#[tokio::test]
async fn a_player_with_a_larger_limit_batches_within_the_logs() {
    let (_dir, mut c, log) = servers(1).await;
    let big = (16 * 1024 * 1024).to_string();
    let batch = (8 * 1024 * 1024).to_string();
    c.start_player(&[
        "--max-entry-bytes",
        &big,
        "--batch-bytes",
        &batch,
        "--window",
        "1",
    ])
    .await
    .unwrap();
    log.append(exactly("l-000001", 1024, b'a'), None, 0)
        .await
        .unwrap();
    let shard = logplayer::client::ShardConn::connect(c.shards[0].addr(), None)
        .await
        .unwrap();
    let applied = |n: u64| {
        let shard = shard.clone();
        async move {
            shard
                .applied()
                .await
                .map(|a| a.applied_index >= n)
                .unwrap_or(false)
        }
    };
    assert!(eventually(Duration::from_secs(20), || applied(1)).await);
    c.shards[0].stop().unwrap();
    for i in 0..4u8 {
        log.append(exactly("l-000001", 3 * 1024 * 1024, b'b' + i), None, 0)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shards[0].cont().unwrap();
    let caught_up = eventually(Duration::from_secs(30), || applied(5)).await;
    let text = c.players[0].log_tail(200);
    assert!(caught_up, "{text}");
    assert!(!text.contains("entry-too-large"), "{text}");
    let verdict = check(&log, &c.shard_map(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(verdict.pass, "{verdict}");
}

/// `logplayer load` whose transactions the LogStore would refuse stops before its first
/// append, naming both sizes and the flags, instead of counting every append failed.
#[tokio::test]
async fn a_load_larger_than_the_log_limit_is_refused_before_appending() {
    let (_dir, c, log) = servers(1).await;
    let out = tokio::process::Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["load", "--logstore", c.logstore.addr(), "--seconds", "1"])
        .args(["--txn-bytes", &(2 * DEFAULT_MAX_ENTRY_BYTES).to_string()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("--txn-bytes")
            && last.contains(&DEFAULT_MAX_ENTRY_BYTES.to_string()),
        "{stderr}"
    );
    assert_eq!(log.bounds().await.unwrap().1, 0, "something was appended");
}
