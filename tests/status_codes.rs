//! Status codes mean one thing: each refusal a client can provoke over a real socket comes
//! with its one code and `logplayer-error` reason (the table in `proto/logplayer.proto`
//! and the README, which this test also checks for completeness). Also: retried appends,
//! reads that end, and servers that stop within a second with idle streams open.

mod common;

use std::time::{Duration, Instant};

use common::servers;
use logplayer::grpc::Reason;
use logplayer::harness::cluster::Proc;
use logplayer::proto::log_store_client::LogStoreClient;
use logplayer::proto::shard_client::ShardClient;
use logplayer::proto::{
    AppendRequest, Batch, BoundsRequest, DeliverRequest, DeliverResponse, Hello, Mutation,
    ReadRequest, RetainRequest, ShardEntry, deliver_request, mutation::Op,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LOG_A: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const LOG_B: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

fn add(key: &str, n: i64) -> Vec<Mutation> {
    vec![Mutation {
        key: key.as_bytes().to_vec().into(),
        op: Some(Op::Add(n)),
    }]
}

fn expect(status: &tonic::Status, reason: Reason) {
    assert_eq!(
        (status.code(), Reason::of(status)),
        (reason.code(), Some(reason)),
        "{status:?}"
    );
}

async fn log_client(addr: &str) -> LogStoreClient<tonic::transport::Channel> {
    LogStoreClient::new(
        logplayer::grpc::connect(addr, &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    )
}

/// The entry limit a `Hello` names (every Hello must name one).
const DEFAULT_MAX: u64 = logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64;

fn hello(epoch: u64, log_id: &str, shard_id: &str, max: u64) -> DeliverRequest {
    DeliverRequest {
        msg: Some(deliver_request::Msg::Hello(Hello {
            epoch,
            player_id: "test".into(),
            log_id: log_id.into(),
            shard_id: shard_id.into(),
            max_entry_bytes: max,
            slots: logplayer::proto::SlotRange::all(),
        })),
    }
}

/// Opens a Deliver stream with `first`; returns the sender (kept open) and the response
/// stream, or the refusal.
async fn deliver(
    addr: &str,
    first: DeliverRequest,
) -> Result<
    (
        mpsc::Sender<DeliverRequest>,
        tonic::Streaming<DeliverResponse>,
    ),
    tonic::Status,
> {
    let mut client = ShardClient::new(
        logplayer::grpc::connect(addr, &logplayer::grpc::Expected::AnyShard)
            .await
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let mut inbound = client.deliver(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?;
    Ok((tx, inbound))
}

/// The status a Deliver stream ends with, past its acks; fails if it goes on for 5 s.
async fn refusal(mut inbound: tonic::Streaming<DeliverResponse>) -> tonic::Status {
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(s) => break s,
            }
        }
    });
    refused
        .await
        .expect("the stream goes on: nothing was refused")
}

async fn append(
    log: &mut LogStoreClient<tonic::transport::Channel>,
    mutations: Vec<Mutation>,
    writer: &str,
    sequence: u64,
) -> Result<logplayer::proto::AppendResponse, tonic::Status> {
    log.append(AppendRequest {
        mutations,
        writer_id: writer.into(),
        sequence,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn every_logstore_refusal_has_its_one_code_and_reason() {
    let (_dir, c, _) = servers(0).await;
    let mut log = log_client(c.logstore.addr()).await;

    // invalid
    let s = append(&mut log, vec![], "", 0).await.unwrap_err();
    expect(&s, Reason::Invalid);
    // entry-too-large (a well-formed append one byte over, checked by the LogStore itself)
    let big = vec![Mutation {
        key: b"l-000001".to_vec().into(),
        op: Some(Op::Append(vec![0; 5 * 1024 * 1024].into())),
    }];
    expect(
        &append(&mut log, big, "", 0).await.unwrap_err(),
        Reason::EntryTooLarge,
    );

    // A retry with the same content returns the original index; different content fails.
    let first = append(&mut log, add("c-1", 1), "tm", 1).await.unwrap();
    let again = append(&mut log, add("c-1", 1), "tm", 1).await.unwrap();
    assert_eq!((again.index, again.duplicate), (first.index, true));
    assert!(!first.log_id.is_empty() && again.log_id == first.log_id);
    let s = append(&mut log, add("c-1", 2), "tm", 1).await.unwrap_err();
    expect(&s, Reason::SequenceReused);
    assert!(
        s.message().contains("\"tm\"") && s.message().contains("sequence 1"),
        "{s:?}"
    );
    assert!(
        s.message().contains(&format!("index {}", first.index)),
        "{s:?}"
    );
    // stale-sequence: below the writer's last and not one of its recent appends
    append(&mut log, add("c-1", 1), "tm", 3).await.unwrap();
    expect(
        &append(&mut log, add("c-1", 1), "tm", 2).await.unwrap_err(),
        Reason::StaleSequence,
    );
    // invalid: a writer id with sequence 0 (sequences start at 1), nothing appended
    let s = append(&mut log, add("c-1", 1), "tm0", 0).await.unwrap_err();
    expect(&s, Reason::Invalid);
    assert!(s.message().contains("sequence 0"), "{s:?}");

    let b = log.bounds(BoundsRequest {}).await.unwrap().into_inner();
    assert_eq!((b.first, b.last), (1, 2));
    assert_eq!(b.log_id, first.log_id);
    assert_eq!(
        b.max_entry_bytes,
        logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64
    );

    // invalid read; past-head without follow; a bounded read reaching past the head ends.
    let read = |from, to, follow| ReadRequest {
        from,
        to,
        max_batch_bytes: 0,
        follow,
    };
    let s = log.read(read(0, 0, false)).await.unwrap_err();
    expect(&s, Reason::Invalid);
    let s = log.read(read(4, 0, false)).await.unwrap_err();
    expect(&s, Reason::PastHead);
    let mut stream = log.read(read(1, 100, false)).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        let mut got = Vec::new();
        while let Some(r) = stream.message().await.unwrap() {
            assert_eq!(r.log_id, b.log_id);
            got.extend(r.entries.into_iter().map(|e| e.index));
        }
        got
    })
    .await
    .expect("a bounded read past the head ends");
    assert_eq!(ended, vec![1, 2]);
    // The same read with follow waits for more.
    let mut stream = log.read(read(1, 100, true)).await.unwrap().into_inner();
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while stream.message().await.unwrap().is_some() {}
    })
    .await;
    assert!(waited.is_err(), "a follow read keeps waiting for entries");

    // membership: a single-node LogStore has no members to change.
    let s = log
        .add_member(logplayer::proto::AddMemberRequest {
            id: 2,
            addr: "127.0.0.1:1".into(),
            catch_up_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    expect(&s, Reason::Membership);
}

/// A retain past the log's end is `invalid`, one naming another log `wrong-log` (nothing
/// released); a read below what retention removed is `below-retention`, not out of range;
/// and a read whose `to` is below its `from` is `invalid` (without the check it reads as
/// nothing).
#[tokio::test]
async fn below_retention_is_the_only_out_of_range_of_an_existing_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--segment-bytes", "4096"],
        &[],
    )
    .await
    .unwrap();
    let mut log = log_client(c.logstore.addr()).await;
    for i in 0..200 {
        append(&mut log, add(&format!("c-{i}"), 1), "", 0)
            .await
            .unwrap();
    }
    let s = log
        .retain(RetainRequest {
            below: 202,
            log_id: String::new(),
        })
        .await
        .unwrap_err();
    expect(&s, Reason::Invalid);
    // Cursors of another log release nothing here (a player whose address now reaches
    // another log): refused by name, the first index unchanged.
    let s = log
        .retain(RetainRequest {
            below: 200,
            log_id: "another-log".into(),
        })
        .await
        .unwrap_err();
    expect(&s, Reason::WrongLog);
    assert!(s.message().contains("another-log"), "{}", s.message());
    let bounds = log.bounds(BoundsRequest {}).await.unwrap().into_inner();
    assert_eq!(bounds.first, 1);
    let r = log
        .retain(RetainRequest {
            below: 200,
            log_id: bounds.log_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.first > 1 && r.segments_removed > 0, "{r:?}");
    let s = log
        .read(ReadRequest {
            from: 1,
            to: 0,
            max_batch_bytes: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    expect(&s, Reason::BelowRetention);
    // A range that ends before it starts (it would read as nothing).
    let s = log
        .read(ReadRequest {
            from: r.first + 2,
            to: r.first + 1,
            max_batch_bytes: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    expect(&s, Reason::Invalid);
    assert!(s.message().contains("is below `from`"), "{}", s.message());
}

#[tokio::test]
async fn every_shard_refusal_has_its_one_code_and_reason() {
    let (_dir, c, _) = servers(1).await;
    let addr = c.shards[0].addr().to_owned();
    // wrong-shard, invalid (no log id), entry-limit: refused before anything is bound.
    expect(
        &deliver(&addr, hello(1, LOG_A, "s9", DEFAULT_MAX))
            .await
            .unwrap_err(),
        Reason::WrongShard,
    );
    expect(
        &deliver(&addr, hello(1, "", "s0", DEFAULT_MAX))
            .await
            .unwrap_err(),
        Reason::Invalid,
    );
    let over = logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64 + 1;
    expect(
        &deliver(&addr, hello(1, LOG_A, "s0", over))
            .await
            .unwrap_err(),
        Reason::EntryLimit,
    );
    // The first accepted Hello binds the shard to LOG_A; a batch then applies.
    let (tx, mut inbound) = deliver(&addr, hello(5, LOG_A, "s0", DEFAULT_MAX))
        .await
        .unwrap();
    let entry = |index, prev| ShardEntry {
        index,
        prev_index: prev,
        mutations: add("c-1", 1),
        ..Default::default()
    };
    let batch = |entries| DeliverRequest {
        msg: Some(deliver_request::Msg::Batch(Batch { entries })),
    };
    tx.send(batch(vec![entry(1, 0)])).await.unwrap();
    inbound.message().await.unwrap().unwrap();
    // invalid: a stream that does not open with a Hello, and a second Hello on a bound
    // stream (a stream keeps its first Hello's epoch, log and slots); neither applies.
    expect(
        &deliver(&addr, batch(vec![entry(2, 1)])).await.unwrap_err(),
        Reason::Invalid,
    );
    {
        let (tx, inbound) = deliver(&addr, hello(5, LOG_A, "s0", DEFAULT_MAX))
            .await
            .unwrap();
        tx.send(hello(6, LOG_A, "s0", DEFAULT_MAX)).await.unwrap();
        tx.send(batch(vec![entry(2, 1)])).await.unwrap();
        let s = refusal(inbound).await;
        expect(&s, Reason::Invalid);
        assert!(s.message().contains("a second Hello"), "{s:?}");
    }
    // gap: entry 5 says 4 touched this shard, but the shard applied only 1.
    tx.send(batch(vec![entry(5, 4)])).await.unwrap();
    let s = refusal(inbound).await;
    expect(&s, Reason::Gap);
    // wrong-log, fenced (with the highest epoch in the metadata), an oversized message.
    expect(
        &deliver(&addr, hello(6, LOG_B, "s0", DEFAULT_MAX))
            .await
            .unwrap_err(),
        Reason::WrongLog,
    );
    let s = deliver(&addr, hello(3, LOG_A, "s0", DEFAULT_MAX))
        .await
        .unwrap_err();
    expect(&s, Reason::Fenced);
    assert_eq!(
        s.metadata()
            .get(logplayer::grpc::EPOCH_KEY)
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
    let (tx, mut inbound) = deliver(&addr, hello(5, LOG_A, "s0", DEFAULT_MAX))
        .await
        .unwrap();
    let huge = ShardEntry {
        index: 2,
        prev_index: 1,
        mutations: vec![Mutation {
            key: b"l-1".to_vec().into(),
            op: Some(Op::Append(vec![0; 5 * 1024 * 1024].into())),
        }],
        ..Default::default()
    };
    tx.send(batch(vec![huge])).await.unwrap();
    let s = inbound.message().await.unwrap_err();
    expect(&s, Reason::EntryTooLarge);
    // Nothing of the refused requests was applied.
    let shard = logplayer::client::ShardConn::connect(&addr, None)
        .await
        .unwrap();
    let a = shard.applied().await.unwrap();
    assert_eq!((a.applied_index, a.log_id.as_str()), (1, LOG_A));
}

#[test]
fn the_table_in_the_proto_and_the_readme_lists_every_reason_with_its_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["proto/logplayer.proto", "README.md"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for r in Reason::ALL {
            let code = format!("{:?}", r.code());
            // `FailedPrecondition` -> `FAILED_PRECONDITION`
            let mut upper = String::new();
            for (i, ch) in code.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    upper.push('_');
                }
                upper.push(ch.to_ascii_uppercase());
            }
            let listed = text
                .lines()
                .any(|l| l.contains(&upper) && l.contains(&format!(" {} ", r.as_str())));
            assert!(listed, "{file} does not list {upper} {}", r.as_str());
        }
    }
}

/// Sends SIGTERM and returns how long the process took to exit.
async fn stop_time(p: &mut Proc) -> Duration {
    let start = Instant::now();
    let code = p.terminate(Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert!(code.is_some(), "{} did not exit within 10 s", p.name);
    took
}

#[tokio::test]
async fn sigterm_stops_a_shard_and_a_logstore_within_a_second_with_idle_streams_open() {
    let (_dir, mut c, _) = servers(1).await;
    let b = log_client(c.logstore.addr())
        .await
        .bounds(BoundsRequest {})
        .await
        .unwrap()
        .into_inner();
    // An idle delivery stream on the shard (its request side stays open)...
    let (_tx, _inbound) = deliver(c.shards[0].addr(), hello(1, &b.log_id, "s0", DEFAULT_MAX))
        .await
        .unwrap();
    // ...one that never even sent its Hello...
    let addr = c.shards[0].addr().to_owned();
    let (_silent_tx, silent_rx) = mpsc::channel::<DeliverRequest>(1);
    let silent = tokio::spawn(async move {
        let mut client = ShardClient::new(
            logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::AnyShard)
                .await
                .unwrap(),
        );
        let _ = client.deliver(ReceiverStream::new(silent_rx)).await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and an idle tailing read and an idle append stream on the LogStore.
    let mut log = log_client(c.logstore.addr()).await;
    let _read = log
        .read(ReadRequest {
            from: 1,
            to: 0,
            max_batch_bytes: 0,
            follow: true,
        })
        .await
        .unwrap();
    let (_atx, arx) = mpsc::channel::<AppendRequest>(1);
    let _appends = log.append_stream(ReceiverStream::new(arx)).await.unwrap();

    let shard = stop_time(&mut c.shards[0]).await;
    let logstore = stop_time(&mut c.logstore).await;
    assert!(shard < Duration::from_secs(1), "the shard took {shard:?}");
    assert!(
        logstore < Duration::from_secs(1),
        "the LogStore took {logstore:?}"
    );
    silent.abort();
}

#[tokio::test]
async fn an_oversized_append_on_a_stream_is_resource_exhausted_too() {
    let (_dir, c, _) = servers(0).await;
    let mut log = log_client(c.logstore.addr()).await;
    let (tx, rx) = mpsc::channel::<AppendRequest>(2);
    let mut responses = log
        .append_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(AppendRequest {
        mutations: add("c-1", 1),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().index, 1);
    tx.send(AppendRequest {
        mutations: vec![Mutation {
            key: b"l-1".to_vec().into(),
            op: Some(Op::Append(vec![0; 9 * 1024 * 1024].into())),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let s = responses.message().await.unwrap_err();
    expect(&s, Reason::EntryTooLarge);
}

/// A stream stops at an append refused on receipt: what was pipelined behind it is not
/// appended, so a writer without writer ids that resends it appends it once (the contract
/// in the proto). Were the stream to go on reading, the third append below would be in the
/// log while the writer saw only the refusal.
#[tokio::test]
async fn an_append_stream_stops_at_an_append_refused_on_receipt() {
    let appends = [add("c-1", 1), Vec::new(), add("c-1", 2)].map(|mutations| AppendRequest {
        mutations,
        ..Default::default()
    });
    stream_stopping_at_the_second(appends, Reason::Invalid).await;
}

/// An append naming another log than the LogStore's (`AppendRequest.log_id`: a writer that
/// a leader hint or a reused address brought to another log) is refused as `wrong-log`
/// and appends nothing, alone or on a stream (where nothing after it is written either);
/// naming the LogStore's own log, or none, appends.
#[tokio::test]
async fn an_append_naming_another_log_is_refused_and_appends_nothing() {
    let (_dir, c, _) = servers(0).await;
    let mut log = log_client(c.logstore.addr()).await;
    let named = |log_id: &str, n| AppendRequest {
        mutations: add("c-1", n),
        log_id: log_id.into(),
        ..Default::default()
    };
    let ours = log
        .bounds(BoundsRequest {})
        .await
        .unwrap()
        .into_inner()
        .log_id;
    let first = log.append(named(&ours, 1)).await.unwrap().into_inner();
    assert_eq!((first.index, first.log_id.as_str()), (1, ours.as_str()));
    let s = log.append(named(LOG_B, 2)).await.unwrap_err();
    expect(&s, Reason::WrongLog);
    for part in [LOG_B, ours.as_str(), "nothing was appended"] {
        assert!(s.message().contains(part), "{part:?} in {s:?}");
    }
    let b = log.bounds(BoundsRequest {}).await.unwrap().into_inner();
    assert_eq!(b.last, 1, "the refused append was not written");
    assert_eq!(
        log.append(named("", 3)).await.unwrap().into_inner().index,
        2
    );

    let appends = [("", 1), (LOG_B, 2), ("", 3)].map(|(log_id, n)| named(log_id, n));
    let s = stream_stopping_at_the_second(appends, Reason::WrongLog).await;
    assert!(s.message().contains(LOG_B), "{s:?}");
}

/// Sends `appends` (three) on one `AppendStream` to a new log: the first is written at
/// index 1, the second refused with `reason`, and nothing after it is written. The refusal.
async fn stream_stopping_at_the_second(
    appends: [AppendRequest; 3],
    reason: Reason,
) -> tonic::Status {
    let (_dir, c, _) = servers(0).await;
    let mut log = log_client(c.logstore.addr()).await;
    let (tx, rx) = mpsc::channel::<AppendRequest>(4);
    for a in appends {
        tx.send(a).await.unwrap();
    }
    let mut responses = log
        .append_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(responses.message().await.unwrap().unwrap().index, 1);
    let s = responses.message().await.unwrap_err();
    expect(&s, reason);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bounds = log
        .bounds(BoundsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bounds.last, 1,
        "nothing after the refused append was appended"
    );
    s
}

/// A `Deliver` stream's entries must increase over the whole stream, and each mutation
/// needs a key and an op, as every entry of the log has. Refused on arrival as `invalid`,
/// with nothing of the batch applied: an entry sent after a later one used to be skipped as
/// a resend once that one was committed (its mutations lost, the stream going on), and a
/// mutation without a key was applied.
#[tokio::test]
async fn a_deliver_stream_refuses_an_entry_after_a_later_one_and_mutations_the_log_refuses() {
    const LOG: &str = "00000000-0000-4000-8000-00000000000c";
    let (_dir, c, _) = servers(1).await;
    let addr = c.shards[0].addr().to_owned();
    let entry = |index, prev, mutations| ShardEntry {
        index,
        prev_index: prev,
        mutations,
        ..Default::default()
    };
    let batch = |entries| DeliverRequest {
        msg: Some(deliver_request::Msg::Batch(Batch { entries })),
    };
    let (tx, mut inbound) = deliver(&addr, hello(1, LOG, "s0", DEFAULT_MAX))
        .await
        .unwrap();
    tx.send(batch(vec![entry(2, 0, add("c-1", 1))]))
        .await
        .unwrap();
    let ack = inbound.message().await.unwrap().unwrap();
    assert!(format!("{ack:?}").contains("applied_index: 2"), "{ack:?}");
    // Committed on its own (no batch to coalesce with), then an earlier index.
    tx.send(batch(vec![entry(1, 0, add("c-1", 10))]))
        .await
        .unwrap();
    let s = refusal(inbound).await;
    expect(&s, Reason::Invalid);
    assert!(
        s.message().contains("entry 1 comes after entry 2"),
        "{}",
        s.message()
    );
    for (what, bad) in [
        (
            "an empty key",
            Mutation {
                key: Vec::new().into(),
                op: Some(Op::Add(1)),
            },
        ),
        (
            "no op",
            Mutation {
                key: b"c-1".to_vec().into(),
                op: None,
            },
        ),
    ] {
        let (tx, inbound) = deliver(&addr, hello(1, LOG, "s0", DEFAULT_MAX))
            .await
            .unwrap();
        tx.send(batch(vec![entry(3, 2, vec![bad])])).await.unwrap();
        let s = refusal(inbound).await;
        expect(&s, Reason::Invalid);
        assert!(s.message().contains(what), "{what}: {}", s.message());
    }
    let shard = logplayer::client::ShardConn::connect(&addr, None)
        .await
        .unwrap();
    assert_eq!(shard.applied().await.unwrap().applied_index, 2);
    let dump = format!("{:?}", shard.dump().await.unwrap());
    assert!(dump.contains("c-1") && !dump.contains("11"), "{dump}");
}

/// A writer's sequence going back on one `AppendStream` (5, then 4, then 6) is refused on
/// receipt, so nothing after it on the stream is written: 4 used to be refused as stale
/// when written while 6, pipelined behind it and following it, was written anyway.
#[tokio::test]
async fn a_sequence_going_back_on_an_append_stream_is_refused_and_nothing_after_it_is_written() {
    let appends = [(5, 1), (4, 2), (6, 3)].map(|(sequence, n)| AppendRequest {
        mutations: add("c-1", n),
        writer_id: "w".into(),
        sequence,
        ..Default::default()
    });
    let s = stream_stopping_at_the_second(appends, Reason::Invalid).await;
    assert!(
        s.message().contains("sequence 4 after 5"),
        "{}",
        s.message()
    );
}

/// Each delivery stream is checked against the slots its own Hello gave: a second stream
/// whose Hello gives the shard every slot does not widen the first's (half of them), whose
/// entry changing a key of the other half is refused `invalid`.
#[tokio::test]
async fn each_deliver_stream_keeps_the_slots_of_its_own_hello() {
    const LOG: &str = "00000000-0000-4000-8000-00000000000d";
    let (_dir, c, _) = servers(1).await;
    let addr = c.shards[0].addr().to_owned();
    let mut half = hello(1, LOG, "s0", DEFAULT_MAX);
    if let Some(deliver_request::Msg::Hello(h)) = &mut half.msg {
        h.slots = vec![logplayer::proto::SlotRange {
            start: 0,
            end: 8191,
        }];
    }
    let (narrow, inbound) = deliver(&addr, half).await.unwrap();
    let (_wide, _wide_in) = deliver(&addr, hello(1, LOG, "s0", DEFAULT_MAX))
        .await
        .unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| logplayer::routing::slot(k.as_bytes()) > 8191)
        .unwrap_or_default();
    narrow
        .send(DeliverRequest {
            msg: Some(deliver_request::Msg::Batch(Batch {
                entries: vec![ShardEntry {
                    index: 1,
                    prev_index: 0,
                    mutations: add(&key, 1),
                    ..Default::default()
                }],
            })),
        })
        .await
        .unwrap();
    let s = refusal(inbound).await;
    expect(&s, Reason::Invalid);
    assert!(
        s.message().contains("does not give this shard"),
        "{}",
        s.message()
    );
}
