//! Unit tests of the replication network: the catching-up gate and the checks on
//! messages (another log, another replica).

use std::time::Duration;

use super::*;
use crate::logstore::raft::node::{Replica, ReplicaConfig};
use crate::proto::{Mutation, mutation::Op};

/// A replica started empty waits to hear a leader, then to apply what that leader had
/// committed, and from then on votes again (for good: a later leader's commit index
/// does not hold it back).
#[test]
fn a_replica_started_empty_votes_again_once_it_applied_what_the_leader_had_committed() {
    let gate = CatchingUp::empty();
    assert_eq!(gate.missing(0), Some(None), "no leader heard yet");
    gate.heard(Some(5));
    assert_eq!(gate.missing(3), Some(Some(5)));
    gate.heard(Some(9));
    assert_eq!(
        gate.missing(4),
        Some(Some(5)),
        "the first leader's commit counts"
    );
    assert_eq!(gate.missing(5), None, "caught up");
    gate.heard(Some(20));
    assert_eq!(gate.missing(6), None, "and stays so");
    assert_eq!(CatchingUp::default().missing(0), None, "never empty");
}

/// A one-replica group that leads and has its log id.
async fn established(dir: &std::path::Path) -> Replica {
    let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
    let r = Replica::start(ReplicaConfig::new(1, peers, dir.into()))
        .await
        .unwrap();
    for _ in 0..250 {
        if r.is_leader() && r.machine().log_id().is_some() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no established leader: {:?}", r.status());
}

/// Five appends to `r`, retention through 4, and the snapshot `r` then takes, whole.
async fn snapshot_after_five(r: &Replica) -> FullSnapshot {
    for _ in 0..5 {
        let m = vec![Mutation {
            key: b"k".to_vec().into(),
            op: Some(Op::Add(1)),
        }];
        r.submit(m, None, 0, None)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    r.retain(4).await.unwrap();
    r.raft().trigger().snapshot().await.unwrap();
    let snapshot = loop {
        if let Some(s) = r.raft().get_snapshot().await.unwrap() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let vote = r.raft().with_raft_state(|s| *s.vote_ref()).await.unwrap();
    FullSnapshot {
        vote,
        meta: snapshot.meta,
        data: snapshot.snapshot.into_inner(),
    }
}

/// Replica `id` at the default entry limit and heartbeat, as a new process.
fn sender(id: NodeId) -> Sender {
    Sender {
        id,
        max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
        heartbeat_millis: 50,
        incarnation: Incarnation::draw(),
    }
}

/// `r`'s replication service as `me`.
fn service_of(r: &Replica, me: Sender) -> ReplicationService {
    ReplicationService::new(me, r.raft().clone(), r.machine().clone(), r.catching_up())
}

/// `r`'s replication service as `me`, behind a real server, and a client of it.
async fn served(r: &Replica, me: Sender) -> ReplicationClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = service_of(r, me);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                crate::proto::replication_server::ReplicationServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ReplicationClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A snapshot from a replica of another log (two groups wired together by mistake) is
/// refused before Raft sees it, naming both logs, and so is one addressed to another
/// replica id, or from a replica with another entry limit: installed, it would replace
/// this replica's log by the other's. Whole, in pieces on a real connection, and the same
/// envelope on AppendEntries, Vote and PreVote (a vote counted from a replica of another
/// log, or from one replica reached under two ids, could elect a leader without a
/// majority of its own group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_another_log_or_for_another_replica_is_refused() {
    let (mine_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mine = established(mine_dir.path()).await;
    let other = established(other_dir.path()).await;
    let full = snapshot_after_five(&other).await;
    let limit = crate::limits::DEFAULT_MAX_ENTRY_BYTES as u64;
    let me = sender(1);
    let service = service_of(&mine, me.clone());
    // The same service behind a real server, for the streamed snapshot.
    let mut client = served(&mine, me).await;
    let (my_log, their_log) = (mine.machine().log_id(), other.machine().log_id());
    let bounds = mine.machine().bounds();
    for (to, limit, heartbeat, want) in [
        (1, limit, 50, "they belong to different logs"),
        (2, limit, 50, "meant for replica 2"),
        (
            1,
            limit * 2,
            50,
            "replica 1 has --max-entry-bytes 4194304 and replica 1 8388608",
        ),
        (
            1,
            limit,
            3_600_000,
            "replica 1 has --heartbeat 50ms and replica 1 3600000ms",
        ),
    ] {
        let from = Sender {
            id: 1,
            max_entry_bytes: limit,
            heartbeat_millis: heartbeat,
            incarnation: Incarnation::draw(),
        };
        let m = envelope(&full, other.machine(), &from, to).unwrap();
        let refused = service
            .install_snapshot(Request::new(m.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("a snapshot of another log to replica {to} was taken"));
        assert!(refused.message().contains(want), "{}", refused.message());
        // In one piece of a streamed snapshot.
        let mut piece = m.clone();
        piece.snapshot_bytes = piece.payload.len() as u64;
        let refused = client
            .install_snapshot_stream(tokio_stream::iter(vec![piece]))
            .await
            .err()
            .unwrap_or_else(|| panic!("a streamed snapshot to replica {to} was taken"));
        assert!(refused.message().contains(want), "{}", refused.message());
        // And the same envelope on AppendEntries: refused before its payload is read.
        let refused = service
            .append_entries(Request::new(m))
            .await
            .err()
            .unwrap_or_else(|| panic!("AppendEntries to replica {to} was taken"));
        assert!(refused.message().contains(want), "{}", refused.message());
        // A vote and a pre-vote: counted, a replica of another log (or one reached under
        // another id) would help elect a leader of a group it is not in.
        let ask = VoteRequest::<TypeConfig>::new(full.vote, None);
        let ballot = envelope(&ask, other.machine(), &from, to).unwrap();
        for (call, refused) in [
            (
                "Vote",
                service.vote(Request::new(ballot.clone())).await.err(),
            ),
            (
                "PreVote",
                service.pre_vote(Request::new(ballot)).await.err(),
            ),
        ] {
            let refused = refused.unwrap_or_else(|| panic!("{call} to replica {to} was answered"));
            assert!(
                refused.message().contains(want),
                "{call}: {}",
                refused.message()
            );
        }
    }
    assert_eq!(mine.machine().log_id(), my_log, "{their_log:?}");
    assert_eq!(mine.machine().bounds(), bounds);
}

/// A message naming replica 0 as its sender or its receiver is refused as invalid, first:
/// replica ids start at 1, and 0 is what a message that never said who sent it decodes as.
/// Without the check a vote "from replica 0" to this replica (same log, same limits, an id
/// nobody spoke as yet) passes every other check and reaches Raft, which answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_or_to_replica_0_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mine = established(dir.path()).await;
    let service = service_of(&mine, sender(1));
    let vote = mine
        .raft()
        .with_raft_state(|s| *s.vote_ref())
        .await
        .unwrap();
    let ask = VoteRequest::<TypeConfig>::new(vote, None);
    for (from, to) in [(0, 1), (1, 0)] {
        let ballot = envelope(&ask, mine.machine(), &sender(from), to).unwrap();
        let refused = service
            .vote(Request::new(ballot))
            .await
            .err()
            .unwrap_or_else(|| panic!("a vote from replica {from} to replica {to} was answered"));
        assert!(
            refused.message().contains("replica ids start at 1"),
            "{}",
            refused.message()
        );
    }
}

/// The checks on a snapshot sent in pieces, each of which would otherwise install a
/// snapshot no replica sent, or hold more memory than any snapshot needs: a stated size
/// above the largest a replica takes, pieces from two replicas (two leaders' snapshots
/// interleaved would make one of neither), pieces that carry more than the stated size, and
/// a stream without a piece are each refused by name, and nothing is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_pieces_that_do_not_add_up_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mine = established(dir.path()).await;
    let full = snapshot_after_five(&mine).await;
    let me = sender(1);
    let mut client = served(&mine, me.clone()).await;
    let whole = envelope(&full, mine.machine(), &me, 1).unwrap();
    let total = whole.payload.len();
    let piece = |from: NodeId, range: std::ops::Range<usize>, stated: u64| {
        let mut m = whole.clone();
        m.from = from;
        m.payload = whole.payload.slice(range);
        m.snapshot_bytes = stated;
        m
    };
    let half = total / 2;
    let stated = total as u64;
    let applied = mine.status().applied;
    for (pieces, want) in [
        (
            vec![piece(1, 0..total, MAX_SNAPSHOT_BYTES as u64 + 1)],
            "above the",
        ),
        (
            vec![piece(1, 0..half, stated), piece(2, half..total, stated)],
            "pieces of one snapshot from replicas 1 and 2",
        ),
        (
            vec![piece(1, 0..total, stated), piece(1, 0..1, stated)],
            "carry more",
        ),
        (Vec::new(), "without a piece"),
    ] {
        let refused = client
            .install_snapshot_stream(tokio_stream::iter(pieces))
            .await
            .err()
            .unwrap_or_else(|| panic!("a snapshot that should say {want:?} was installed"));
        assert!(refused.message().contains(want), "{}", refused.message());
    }
    assert_eq!(mine.status().applied, applied, "nothing was installed");
}

/// Two incarnations of one id heard within the window contest the id: every message from
/// it is refused (both processes') until one has spoken alone for the window. Another id
/// is not affected, an older sender (no incarnation) is never refused, and a restart after
/// a silence longer than the window is not contested.
#[test]
fn two_processes_speaking_as_one_id_are_both_refused_until_one_stops() {
    let window = Duration::from_millis(600);
    let t0 = std::time::Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut s = Speakers::default();
    assert!(s.spoke(1, 10, at(0), window));
    assert!(s.spoke(1, 10, at(100), window));
    assert!(s.spoke(2, 20, at(100), window));
    assert!(
        !s.spoke(1, 11, at(200), window),
        "a second process as replica 1"
    );
    assert!(!s.spoke(1, 10, at(300), window), "the first is refused too");
    assert!(
        s.spoke(2, 20, at(300), window),
        "another id is not affected"
    );
    assert!(s.spoke(1, 0, at(300), window), "an older version says none");
    assert!(!s.spoke(1, 11, at(800), window), "both speak on");
    // The second stops at 800; the first, last contested at 1000, speaks alone from then.
    assert!(!s.spoke(1, 10, at(1000), window));
    assert!(!s.spoke(1, 10, at(1500), window));
    assert!(s.spoke(1, 10, at(1600), window));
    // A restart after a longer silence than the window.
    assert!(s.spoke(1, 12, at(2300), window));
}

/// An append stream waits on its oldest unanswered request only: 1 s and its bytes' carry
/// time from when it was sent or the answer before it came. A request sent behind a large
/// one is not overdue when that one's answer comes late; a batch sent long after an idle
/// stream opened is not overdue at once.
#[test]
fn an_append_stream_waits_on_its_oldest_request_for_its_own_time() {
    let mut u = Unanswered::default();
    assert_eq!(u.due(), None);
    std::thread::sleep(Duration::from_millis(20));
    let before = Instant::now();
    u.sent(32 << 20);
    u.sent(100);
    let due = u.due().unwrap();
    // 1 s, and 1 s for 32 MiB at 32 MiB/s: the small one behind it adds nothing.
    assert!(due >= before + Duration::from_secs(2), "{:?}", due - before);
    assert!(due <= Instant::now() + Duration::from_secs(2));
    assert_eq!(u.overdue(), None);
    std::thread::sleep(Duration::from_millis(20));
    let answered = Instant::now();
    u.answered();
    let due = u.due().unwrap();
    assert!(due >= answered + STREAM_STALL, "{:?}", due - answered);
    // Not the large one's carry time (1 s), whatever pause the machine takes.
    assert!(due < answered + STREAM_STALL + Duration::from_millis(500));
    u.answered();
    assert_eq!((u.due(), u.overdue()), (None, None));
    let mut late = Unanswered {
        sent: [(Instant::now() - Duration::from_secs(2), 100)].into(),
        last_answer: Instant::now() - Duration::from_secs(3),
    };
    assert!(late.overdue().is_some_and(|d| d >= Duration::from_secs(2)));
    late.answered();
    assert_eq!(late.overdue(), None);
}

/// A snapshot's buffer grows with its pieces, never past the size its sender claims: the
/// first byte of a claimed 16 GiB reserves two bytes, not 16 GiB; pieces that add up to the
/// claim end with exactly that reserved.
#[test]
fn a_snapshot_claimed_large_reserves_only_what_arrived() {
    let claimed = 16usize << 30;
    assert_eq!(snapshot_room(0, 0, 1, claimed), 2);
    let (mut len, mut capacity) = (0usize, 0usize);
    for piece in [4usize, 4, 4, 4, 1] {
        // `reserve_exact(room)` leaves room for `room` more than the length.
        capacity = capacity.max(len + snapshot_room(len, capacity, piece, 17));
        len += piece;
        assert!(capacity >= len && capacity <= 17, "{len} in {capacity}");
    }
    assert_eq!((len, capacity), (17, 17));
}

/// A replica started on an empty log refuses both a Vote and a PreVote from a candidate
/// whose log has entries, until it caught up: Raft does not promise a PreVote comes before
/// a Vote, so each is checked on its own (with only one of them checked, the membership
/// test of a wiped replica still passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_refuses_a_vote_and_a_pre_vote_each() {
    let dir = tempfile::tempdir().unwrap();
    let mine = established(dir.path()).await;
    let vote = mine
        .raft()
        .with_raft_state(|s| *s.vote_ref())
        .await
        .unwrap();
    let last = {
        use openraft::async_runtime::WatchReceiver as _;
        mine.raft().metrics().borrow_watched().last_applied
    };
    assert!(last.is_some_and(|l| l.index > 0), "{last:?}");
    let ask = VoteRequest::<TypeConfig>::new(vote, last);
    let ballot = envelope(&ask, mine.machine(), &sender(2), 1).unwrap();
    let empty = ReplicationService::new(
        sender(1),
        mine.raft().clone(),
        mine.machine().clone(),
        std::sync::Arc::new(CatchingUp::empty()),
    );
    for (call, refused) in [
        ("Vote", empty.vote(Request::new(ballot.clone())).await.err()),
        (
            "PreVote",
            empty.pre_vote(Request::new(ballot.clone())).await.err(),
        ),
    ] {
        let refused = refused.unwrap_or_else(|| panic!("{call} was answered by an empty replica"));
        assert!(
            refused.message().contains("does not vote until then"),
            "{call}: {}",
            refused.message()
        );
    }
    // A replica that did not start empty answers both.
    let full = service_of(&mine, sender(1));
    assert!(full.vote(Request::new(ballot.clone())).await.is_ok());
    assert!(full.pre_vote(Request::new(ballot)).await.is_ok());
}
