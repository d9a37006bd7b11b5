//! No caller can grow a server's memory without bound: 600 tailing `Read` streams that are
//! never read, from ten connections, leave the LogStore within the bound `serving`
//! documents for its `--max-read-streams` (64 by default; the rest are refused
//! `RESOURCE_EXHAUSTED` / `busy`), and once they go, reads are served again.

mod common;

use std::time::Duration;

use logplayer::grpc::Reason;
use logplayer::proto::ReadRequest;
use logplayer::proto::log_store_client::LogStoreClient;
use logplayer::serving::ServerLimits;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// Whether the LogStore at `addr` serves a one-entry `Read` on a new connection within
/// `wait`.
async fn serves_a_read(addr: &str, wait: Duration) -> bool {
    common::eventually(wait, || async {
        let mut client = LogStoreClient::new(
            logplayer::grpc::connect(addr, &logplayer::grpc::Expected::Log)
                .await
                .unwrap(),
        );
        let once = ReadRequest {
            from: 1,
            to: 1,
            ..Default::default()
        };
        match client.read(once).await {
            Ok(s) => s.into_inner().message().await.is_ok_and(|m| m.is_some()),
            Err(_) => false,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_unread_tailing_reads_stay_within_the_documented_bound() {
    let (_dir, c, log) = common::servers(0).await;
    // 20 MB in the log, so that every stream has more to send than its reader takes.
    let mut spec = common::load_spec(2_000, 1, 1);
    spec.txn_bytes = 10_000;
    let report = common::start_load(&log, spec).await.unwrap();
    assert_eq!(report.failed, 0);
    let pid = c.logstore.os_pid().unwrap();
    let before = rss_bytes(pid);

    let mut held = Vec::new();
    let mut clients = Vec::new();
    let mut busy = 0;
    for _ in 0..10 {
        let mut client = LogStoreClient::new(
            logplayer::grpc::connect(c.logstore.addr(), &logplayer::grpc::Expected::Log)
                .await
                .unwrap(),
        );
        for _ in 0..60 {
            let read = ReadRequest {
                from: 1,
                follow: true,
                ..Default::default()
            };
            match client.read(read).await {
                Ok(stream) => held.push(stream.into_inner()),
                Err(s) => {
                    assert_eq!(Reason::of(&s), Some(Reason::Busy), "{s:?}");
                    busy += 1;
                }
            }
        }
        clients.push(client);
    }
    let limits = ServerLimits::default();
    assert_eq!(
        busy,
        600 - limits.max_read_streams,
        "Read streams past the limit"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_bytes(pid).saturating_sub(before) as usize;
    // Responses of the default 1 MiB batches (the entries are 10 KB).
    let bound = limits.read_memory_bound(1024 * 1024);
    eprintln!(
        "LogStore RSS grew {} MiB with 600 unread Read streams (bound {} MiB)",
        grown >> 20,
        bound >> 20
    );
    assert!(grown <= bound, "grew {grown} bytes, bound {bound}");

    // Once the unread streams go, a reader is served again.
    drop(held);
    drop(clients);
    let served = serves_a_read(c.logstore.addr(), Duration::from_secs(10)).await;
    assert!(
        served,
        "reads are refused after the unread streams went away"
    );
}

/// `--max-connections`: a connection past the limit is closed at once, and one is accepted
/// again when another goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_max_connections_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--max-connections", "2"],
        &[],
    )
    .await
    .unwrap();
    let addr = c.logstore.addr().to_owned();
    let bounds = |ch: tonic::transport::Channel| async move {
        LogStoreClient::new(ch)
            .bounds(logplayer::proto::BoundsRequest {})
            .await
    };
    let first = logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let second = logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    assert!(bounds(first.clone()).await.is_ok());
    assert!(bounds(second.clone()).await.is_ok());
    let third = match logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log).await {
        Ok(ch) => bounds(ch).await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !third,
        "a third connection was served with --max-connections 2"
    );
    drop(first);
    let served = common::eventually(Duration::from_secs(10), || async {
        match logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log).await {
            Ok(ch) => bounds(ch).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(served, "no connection accepted after one went away");
    drop(second);
}

/// `--max-streams-per-connection`: past it, a call on the same connection waits (HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`) until a stream ends; without the setting one caller
/// could open streams without limit on a single connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_max_streams_per_connection_waits_for_a_stream_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--max-streams-per-connection", "2"],
        &[],
    )
    .await
    .unwrap();
    let ch = logplayer::grpc::connect(c.logstore.addr(), &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let tail = ReadRequest {
        from: 1,
        follow: true,
        ..Default::default()
    };
    let mut client = LogStoreClient::new(ch.clone());
    let first = client.read(tail).await.unwrap();
    let second = client.read(tail).await.unwrap();
    let third = tokio::time::timeout(
        Duration::from_secs(1),
        client.bounds(logplayer::proto::BoundsRequest {}),
    )
    .await;
    assert!(
        third.is_err(),
        "a third stream on one connection was served with --max-streams-per-connection 2"
    );
    drop(first);
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        client.bounds(logplayer::proto::BoundsRequest {}),
    )
    .await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "no call served after a stream ended: {served:?}"
    );
    drop(second);
}

/// `--read-stall-timeout`: a `Read` stream whose reader takes nothing while responses wait is
/// ended with `busy`, naming the index to read again from, and its slot serves another
/// reader; without it, unread streams would hold every slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_read_stream_is_ended_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--max-read-streams", "2", "--read-stall-timeout", "2s"],
        &[],
    )
    .await
    .unwrap();
    let log = logplayer::client::Log::connect(c.logstore.addr())
        .await
        .unwrap();
    // ~48 MB: more than a stream's HTTP/2 window (8 MiB) and queues hold.
    let mut spec = common::load_spec(2_000, 4, 1);
    spec.txn_bytes = 10_000;
    let report = common::start_load(&log, spec).await.unwrap();
    assert_eq!(report.failed, 0);
    let mut client = LogStoreClient::new(
        logplayer::grpc::connect(c.logstore.addr(), &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    );
    let tail = || ReadRequest {
        from: 1,
        follow: true,
        ..Default::default()
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(client.read(tail()).await.unwrap().into_inner());
    }
    let refused = client.read(tail()).await.unwrap_err();
    assert_eq!(Reason::of(&refused), Some(Reason::Busy), "{refused:?}");
    // Past the stall timeout, the slots are free again.
    let served = serves_a_read(c.logstore.addr(), Duration::from_secs(15)).await;
    assert!(
        served,
        "the stalled streams still hold every slot ({report:?})\n{}",
        c.logs()
    );
    // The two streams stall at about the same moment, but not at the same one: the first
    // slot can be free a little before the other stream's timeout fires, and reading that
    // stream then would un-stall it (it would tail the log forever). Let its timeout pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A stalled stream delivers what was queued, then the refusal: dense up to where it says
    // to read again from.
    let mut stream = held.remove(0);
    let mut next = 1;
    let read_to_the_end = async {
        loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    for e in r.entries {
                        assert_eq!(e.index, next, "dense");
                        next += 1;
                    }
                }
                Ok(None) => panic!("a stalled tailing stream ended without saying why"),
                Err(s) => break s,
            }
        }
    };
    let end = tokio::time::timeout(Duration::from_secs(30), read_to_the_end)
        .await
        .expect("a stalled stream was not ended: it still tails the log after 30 s");
    assert_eq!(Reason::of(&end), Some(Reason::Busy), "{end:?}");
    assert!(
        end.message()
            .contains(&format!("read again from index {next}")),
        "{} (next is {next})",
        end.message()
    );
}

/// `--idle-connection-timeout`: a connection with no call open is closed once the timeout
/// passes, while one with a quiet call open (a tailing `Read` with nothing new) is kept and
/// still delivers what is appended later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_quiet_call_keeps_one_open() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--idle-connection-timeout", "1s"],
        &[],
    )
    .await
    .unwrap();
    let addr = c.logstore.addr().to_owned();
    // A connection that never makes a call: the server's HTTP/2 settings, then the end.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 1024];
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an idle connection was still open after 6 s"
    );
    // A tailing read, quiet for three timeouts, then an append: delivered on the same call.
    let mut client = LogStoreClient::new(
        logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    );
    let mut tail = client
        .read(ReadRequest {
            from: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = logplayer::client::Log::connect(&addr).await.unwrap();
    let report = common::start_load(&log, common::load_spec(10, 1, 1))
        .await
        .unwrap();
    assert_eq!(report.failed, 0);
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tail.message().await {
                Ok(Some(r)) if r.entries.is_empty() => continue,
                Ok(Some(r)) => return Ok(r.entries[0].index),
                Ok(None) => return Err("ended".to_owned()),
                Err(s) => return Err(format!("{s:?}")),
            }
        }
    })
    .await
    .expect("the tailing read delivered nothing");
    assert_eq!(
        first,
        Ok(1),
        "the tailing read's connection was closed as idle"
    );
}

/// `--idle-stream-timeout`: an `AppendStream` with no append for that long is ended
/// `unavailable` after the answer to its last append (nothing left to resend), while one that
/// keeps appending is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stream_with_no_append_is_ended_after_the_idle_stream_timeout() {
    use logplayer::proto::mutation::Op;
    use logplayer::proto::{AppendRequest, Mutation};
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--idle-stream-timeout", "1s"],
        &[],
    )
    .await
    .unwrap();
    let mut client = LogStoreClient::new(
        logplayer::grpc::connect(c.logstore.addr(), &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    );
    let add = |n| AppendRequest {
        mutations: vec![Mutation {
            key: b"c-1".to_vec().into(),
            op: Some(Op::Add(n)),
        }],
        ..Default::default()
    };
    // Busy: an append every 300 ms for 3 s, every one answered on the same stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<AppendRequest>(2);
    let mut busy = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 1..=10u64 {
        tx.send(add(1)).await.unwrap();
        let r = busy.message().await.unwrap().expect("an answer");
        assert_eq!(r.index, i, "append {i} on a busy stream");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle: nothing sent after the last answer; the stream ends within a few seconds.
    let ended = tokio::time::timeout(Duration::from_secs(5), busy.message())
        .await
        .expect("an idle append stream was still open after 5 s");
    let status = ended.expect_err("ended with a status");
    assert_eq!(Reason::of(&status), Some(Reason::Unavailable), "{status:?}");
    assert!(
        status.message().contains("--idle-stream-timeout"),
        "{status:?}"
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_table_forgets_only_released_writers_and_refuses_a_new_one_otherwise() {
    use logplayer::proto::mutation::Op;
    use logplayer::proto::{AppendRequest, BoundsRequest, Mutation, RetainRequest};
    let dir = tempfile::tempdir().unwrap();
    // One segment holds the whole log: retention removes no file, yet what `Retain`
    // released counts as released for the writer table.
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--max-writers", "3"],
        &[],
    )
    .await
    .unwrap();
    let mut client = LogStoreClient::new(
        logplayer::grpc::connect(c.logstore.addr(), &logplayer::grpc::Expected::Log)
            .await
            .unwrap(),
    );
    let append = |writer: &str| AppendRequest {
        mutations: vec![Mutation {
            key: format!("l-{writer}").into_bytes().into(),
            op: Some(Op::Append(vec![b'x'; 100].into())),
        }],
        writer_id: writer.to_string(),
        sequence: 1,
        ..Default::default()
    };
    for (i, w) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let r = client.append(append(w)).await.unwrap().into_inner();
        assert_eq!(r.index, i as u64 + 1, "{w}");
    }
    let refused = |status: tonic::Status, what: &str| {
        assert_eq!(
            Reason::of(&status),
            Some(Reason::Busy),
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains("--max-writers"),
            "{what}: {status:?}"
        );
    };
    let e = client.append(append("w4")).await.unwrap_err();
    refused(e, "a fourth writer while the three have retained appends");
    // Retention releases w1's append: the fourth writer is taken, w1 forgotten.
    let log_id = client
        .bounds(BoundsRequest {})
        .await
        .unwrap()
        .into_inner()
        .log_id;
    client
        .retain(RetainRequest { below: 2, log_id })
        .await
        .unwrap();
    let r = client.append(append("w4")).await.unwrap().into_inner();
    assert_eq!(r.index, 4, "w4 once w1's append was released");
    // w2, w3 and w4 have retained appends: none of them is forgotten for a fifth.
    let e = client.append(append("w5")).await.unwrap_err();
    refused(e, "a fifth writer");
    let retry = client.append(append("w3")).await.unwrap().into_inner();
    assert_eq!(retry.index, 3, "w3's retry is still recognized");
    let bounds = client.bounds(BoundsRequest {}).await.unwrap().into_inner();
    assert_eq!(bounds.last, 4, "nothing refused was written");
    assert_eq!(
        (bounds.writers, bounds.max_writers),
        (3, 3),
        "Bounds says how full"
    );
}

/// A writer that appends on an `AppendStream` and never reads the answers: once the answers
/// waiting for it have waited `--read-stall-timeout`, the stream is ended `busy` after them
/// (it used to hold its two tasks and its queued answers for as long as the connection
/// stayed open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stream_whose_writer_reads_no_answer_is_ended_after_the_stall_timeout() {
    use logplayer::proto::mutation::Op;
    use logplayer::proto::{AppendRequest, Mutation};
    let dir = tempfile::tempdir().unwrap();
    let c = logplayer::harness::cluster::Cluster::start_with(
        dir.path(),
        &common::bin(),
        0,
        &["--read-stall-timeout", "1s"],
        &[],
    )
    .await
    .unwrap();
    // A small window on the client, so that unread answers soon stop the server's sends.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.logstore.addr()))
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = LogStoreClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<AppendRequest>(20_000);
    for _ in 0..20_000 {
        tx.send(AppendRequest {
            mutations: vec![Mutation {
                key: b"c-1".to_vec().into(),
                op: Some(Op::Add(1)),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut answers = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut answered = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match answers.message().await {
                Ok(Some(r)) => {
                    answered += 1;
                    assert_eq!(r.index, answered, "answers in order");
                }
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream of a writer that read no answer was still open after 20 s");
    let status = ended.expect("ended with a status");
    assert_eq!(Reason::of(&status), Some(Reason::Busy), "{status:?}");
    assert!(
        status.message().contains("--read-stall-timeout"),
        "{status:?}"
    );
    assert!(
        answered > 0 && answered < 20_000,
        "{answered} answers before the end"
    );
    drop(tx);
}
