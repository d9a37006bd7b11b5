//! Bad input on the wire: a malformed protobuf, an oversized message and an invalid append
//! each get a clear status, and the server keeps serving afterwards. Bad input on disk: a
//! data directory in use, a damaged last entry, refused by name.

mod common;

use std::time::Duration;

use logplayer::client::Log;
use logplayer::grpc::Reason;
use logplayer::harness::cluster::Cluster;
use logplayer::proto::{Mutation, mutation::Op};
use tonic::codegen::http::uri::PathAndQuery;

async fn raw_append(addr: &str, body: Vec<u8>) -> tonic::Status {
    let channel = logplayer::grpc::connect(addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static("/logplayer.v1.LogStore/Append"),
        common::Raw,
    )
    .await
    .unwrap_err()
}

/// An append of one mutation: `op` on `key`.
fn one(key: &str, op: Option<Op>) -> Vec<Mutation> {
    vec![Mutation {
        key: key.as_bytes().to_vec().into(),
        op,
    }]
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_a_clear_status_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"));
    let mut c = Cluster::start(dir.path(), &bin, 1).await.unwrap();
    let addr = c.logstore.addr().to_owned();

    // Not a protobuf at all (field 15, wire type 7 does not exist).
    let status = raw_append(&addr, vec![0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    assert_eq!(Reason::of(&status), Some(Reason::Invalid));

    // Far over the message limit (4 MiB entries by default): refused before it is read,
    // with the size code, not OUT_OF_RANGE (which means "below retention").
    // It names the entry limit a flag sets, not the message limit tonic counts (4456448).
    let status = raw_append(&addr, vec![0u8; 17 * 1024 * 1024]).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("too large for the --max-entry-bytes 4194304"),
        "{status:?}"
    );
    assert_eq!(Reason::of(&status), Some(Reason::EntryTooLarge));

    // Well-formed but invalid: a mutation without an op.
    let log = Log::connect(&addr).await.unwrap();
    let err = log
        .append(one("k", None), None, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("mutation 0") && err.contains("no op"), "{err}");

    // Still serving, and nothing was written by the bad requests.
    let add = one("k", Some(Op::Add(1)));
    assert_eq!(log.append(add, None, 0).await.unwrap(), 1);
    assert_eq!(log.bounds().await.unwrap(), (1, 1));

    // The shard next to it is unaffected.
    let shard = logplayer::client::ShardConn::connect(c.shards[0].addr(), None)
        .await
        .unwrap();
    assert_eq!(shard.applied().await.unwrap().applied_index, 0);
    c.logstore.terminate(Duration::from_secs(5)).await;
}

/// A second server started on a data directory a running one holds is refused with the
/// reason, before it reads or cuts anything: for the LogStore, a shard on the journal, and
/// the offline `shard dump` of a running shard.
#[tokio::test]
async fn a_second_server_on_a_data_directory_in_use_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let mut c = Cluster::start(dir.path(), &bin, 1).await.unwrap();
    let data = |s: &str| dir.path().join(s).display().to_string();
    let attempts: [Vec<String>; 3] = [
        [
            "logstore",
            "--data",
            &data("logstore"),
            "--listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
        [
            "shard",
            "--id",
            "s0",
            "--data",
            &data("shard-s0"),
            "--listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
        ["shard", "dump", "--data", &data("shard-s0")]
            .map(String::from)
            .to_vec(),
    ];
    for args in attempts {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&bin)
                .env("LOGPLAYER_INSECURE", "true")
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the second server exits")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("is in use by another process"),
            "{args:?}: {stderr}"
        );
    }
    c.stop().await;
}

/// One gRPC call sent as raw HTTP/2 (`body` framed by the caller, however wrongly); the
/// status it ends with, from its headers or trailers.
async fn raw_call(
    channel: &tonic::transport::Channel,
    addr: &str,
    path: &str,
    body: Vec<u8>,
) -> tonic::Status {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(
            http_body_util::Full::new(bytes::Bytes::from(body)).map_err(|e| match e {}),
        ))
        .unwrap();
    let response = channel.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    if let Some(trailers) = body.collect().await.unwrap().trailers() {
        headers.extend(trailers.clone());
    }
    tonic::Status::from_header_map(&headers).expect("a grpc-status")
}

/// gRPC framing a client got wrong (a frame shorter than its length prefix, a compressed
/// flag without an encoding, a unary call without its message) is the client's mistake:
/// `INVALID_ARGUMENT` / `invalid` naming it, not tonic's `INTERNAL`, the code of a server
/// fault. Sent as raw HTTP/2 requests, as a hand-made client would.
#[tokio::test]
async fn broken_grpc_framing_is_invalid_not_internal() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"));
    let c = Cluster::start(dir.path(), &bin, 0).await.unwrap();
    let addr = c.logstore.addr().to_owned();
    let channel = logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let truncated = [&[0u8, 0, 0, 0, 100][..], &[1, 2, 3]].concat();
    let flagged = [&[1u8, 0, 0, 0, 2][..], &[8, 1]].concat();
    for (what, path, body) in [
        (
            "a truncated frame",
            "/logplayer.v1.LogStore/Append",
            truncated.clone(),
        ),
        (
            "a compressed flag",
            "/logplayer.v1.LogStore/Append",
            flagged,
        ),
        ("no message", "/logplayer.v1.LogStore/Bounds", Vec::new()),
        (
            "a truncated frame on a stream",
            "/logplayer.v1.LogStore/AppendStream",
            truncated,
        ),
    ] {
        let status = raw_call(&channel, &addr, path, body).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert_eq!(
            Reason::of(&status),
            Some(Reason::Invalid),
            "{what}: {status:?}"
        );
    }
}

/// A call that takes one message, sent two (raw HTTP/2: our clients and the usual ones
/// cannot): refused `invalid`, and neither is appended. tonic used to append the first,
/// answer it, and drop the second unread.
#[tokio::test]
async fn a_second_message_on_a_call_that_takes_one_is_refused_and_nothing_is_appended() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"));
    let c = Cluster::start(dir.path(), &bin, 0).await.unwrap();
    let addr = c.logstore.addr().to_owned();
    let channel = logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::Log)
        .await
        .unwrap();
    let framed = |m: &logplayer::proto::AppendRequest| {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    };
    let append = |key: &str| logplayer::proto::AppendRequest {
        mutations: vec![logplayer::proto::Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(logplayer::proto::mutation::Op::Add(1)),
        }],
        ..Default::default()
    };
    let two = [framed(&append("c-1")), framed(&append("c-2"))].concat();
    let append_path = "/logplayer.v1.LogStore/Append";
    let status = raw_call(&channel, &addr, append_path, two).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(Reason::of(&status), Some(Reason::Invalid), "{status:?}");
    let log = logplayer::client::Log::connect(&addr).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().1, 0, "nothing was appended");
    // One message still works.
    let one = framed(&append("c-3"));
    let status = raw_call(&channel, &addr, append_path, one).await;
    assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
    assert_eq!(log.bounds().await.unwrap().1, 1);
}

/// A byte flipped in the last acknowledged entry of a stopped LogStore (bit rot, a stray
/// write): refused at start, naming the file, the offset and the tail mark that vouches for
/// it. Before tail marks it read as a torn tail and was cut: an acknowledged entry lost, and
/// its index given to the next append.
#[tokio::test]
async fn a_flipped_byte_in_the_last_acknowledged_entry_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let mut c = Cluster::start(dir.path(), &bin, 1).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        let key = format!("k{i}");
        last = log
            .append(one(&key, Some(Op::Add(i))), None, 0)
            .await
            .unwrap();
    }
    drop(log);
    assert_eq!(c.logstore.terminate(Duration::from_secs(10)).await, Some(0));
    c.stop().await;
    let data = dir.path().join("logstore");
    let segment = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a segment");
    let bytes = flip_a_byte_of_the_last_record(&segment);

    let what = format!("entry {last}");
    refused_naming_the_mark(&bin, &["logstore"], &data, &segment, &bytes, &what).await;
}

/// Flips a byte of the last record of a WAL `segment`, just before the tail mark that
/// vouches for it; the segment's bytes after.
fn flip_a_byte_of_the_last_record(segment: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(segment).unwrap();
    // The records, then the tail mark (16 bytes: its tag 0x80000008, a checksum, the byte it
    // starts at), then the preallocated zeros.
    let tag = 0x8000_0008u32.to_le_bytes();
    let mark = (0..bytes.len() - 16)
        .rev()
        .find(|&i| bytes[i..i + 4] == tag && bytes[i + 8..i + 16] == (i as u64).to_le_bytes())
        .expect("a tail mark after the last record");
    bytes[mark - 3] ^= 0x5a;
    std::fs::write(segment, &bytes).unwrap();
    bytes
}

/// Starts `bin command --data data` and requires it to refuse, exit 1, naming `segment` and
/// the mark that vouches for its damaged bytes, with the segment left as `bytes` (nothing
/// cut); `what` was damaged.
async fn refused_naming_the_mark(
    bin: &std::path::Path,
    command: &[&str],
    data: &std::path::Path,
    segment: &std::path::Path,
    bytes: &[u8],
    what: &str,
) {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(bin)
            .env("LOGPLAYER_INSECURE", "true")
            .args(command)
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{command:?} should refuse to start; it serves (the damaged {what} cut as a torn tail)"
        )
    })
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        stderr.contains("WAL corruption") && stderr.contains("synced bytes are damaged"),
        "{stderr}"
    );
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(segment).unwrap(), bytes, "nothing cut");
}

/// The same for a shard: a byte flipped in the last commit of a stopped shard's journal, a
/// commit it had acknowledged to the player, is refused at start, naming the file and the
/// tail mark that vouches for it. Before the journal had marks it read as a torn tail and was
/// cut: the shard started with an applied index below what it had acknowledged (and the
/// player's cursor, so retention may already have dropped what it then needed again).
#[tokio::test]
async fn a_flipped_byte_in_a_shards_last_acknowledged_commit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let mut c = Cluster::start(dir.path(), &bin, 1).await.unwrap();
    c.start_player(&[]).await.unwrap();
    let log = Log::connect(c.logstore.addr()).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = log
            .append(one(&format!("k{i}"), Some(Op::Add(i))), None, 0)
            .await
            .unwrap();
    }
    let shard = logplayer::client::ShardConn::connect(c.shards[0].addr(), None)
        .await
        .unwrap();
    let applied = common::eventually(Duration::from_secs(20), || async {
        shard.applied().await.is_ok_and(|a| a.applied_index == last)
    })
    .await;
    assert!(applied, "the shard did not apply {last}\n{}", c.logs());
    drop(shard);
    c.stop().await;
    let data = dir.path().join("shard-s0");
    let mut segments: Vec<_> = std::fs::read_dir(data.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let segment = segments.pop().expect("a journal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    // The commits, each a group's mark and one record ending on a page, then the tail mark
    // (16 bytes: its tag 0x80000008, a checksum, the byte it starts at).
    let tag = 0x8000_0008u32.to_le_bytes();
    let tail = bytes.len() - 16;
    assert!(
        bytes[tail..tail + 4] == tag && bytes[tail + 8..] == (tail as u64).to_le_bytes(),
        "no tail mark after the last commit"
    );
    // The last commit's record: its header right after its group's mark, a page back.
    assert_eq!(
        bytes[tail - 4096..tail - 4092],
        tag,
        "the last commit is not one page"
    );
    let record = tail - 4096 + 16;
    bytes[record + 8 + 1] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();

    let command = ["shard", "--id", "s0"];
    refused_naming_the_mark(&bin, &command, &data, &segment, &bytes, "commit").await;
}

/// The wrong peer for a writer: a client given two addresses that reach two different
/// logs stays with the log it met first (see `common::writer_beside_another_log`).
#[tokio::test]
async fn a_writer_does_not_go_on_in_another_log_listed_beside_its_own() {
    common::writer_beside_another_log(&[]).await.unwrap();
}

/// The same for a log replica (one of a Raft group: here a group of one): its WAL holds the
/// Raft log, with tail marks too. Without them a damaged last entry, one the replica had
/// acknowledged to its leader, would be cut as a torn tail at restart, and a committed
/// append that sat on exactly a majority could be lost.
#[tokio::test]
async fn a_flipped_byte_in_a_log_replicas_last_acknowledged_entry_is_refused_at_start() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("replica-1");
    let bin = common::bin();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let peers = format!("1={addr}");
    let command = ["logstore", "--id", "1", "--peers", peers.as_str()];
    let mut replica = tokio::process::Command::new(&bin)
        .env("LOGPLAYER_INSECURE", "true")
        .args(command)
        .arg("--data")
        .arg(&data)
        .args(["--listen", addr.as_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(replica.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("listening on ") {
            break;
        }
    }
    let log = Log::connect(&addr).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        let key = format!("k{i}");
        let appended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match log.append(one(&key, Some(Op::Add(i))), None, 0).await {
                    Ok(index) => return index,
                    // Until the group of one has elected itself.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        last = appended.await.expect("the replica appends");
    }
    drop(log);
    let pid = nix::unistd::Pid::from_raw(replica.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), replica.wait()).await;
    assert!(matches!(stopped, Ok(Ok(s)) if s.success()), "{stopped:?}");
    let segment = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .expect("a segment");
    let bytes = flip_a_byte_of_the_last_record(&segment);

    let what = format!("the Raft entry holding entry {last}");
    refused_naming_the_mark(&bin, &command, &data, &segment, &bytes, &what).await;
}
