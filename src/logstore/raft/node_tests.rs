//! Unit tests of the replicated LogStore a server runs (`node.rs`): refusals after a group
//! was proposed, a stream pinned to one term, the gap rule, and the limits a replica refuses.

use std::sync::Arc;
use std::time::Duration;

use super::{Replica, ReplicaConfig, StreamOrder};

/// A group Raft refused after taking it (leadership moved) is answered `not-durable`
/// (only an append with a writer id is sent again), never `not-leader`.
#[tokio::test]
async fn appends_refused_after_being_proposed_are_unknown_never_not_leader() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (named, unnamed) = tokio::sync::oneshot::channel();
    let waiting = vec![(None, tx), (Some(("w".to_string(), 1)), named)];
    let leader = Some("127.0.0.1:2".to_string());
    super::refuse_proposed(waiting, LogStoreError::NotLeader { leader });
    for reply in [rx, unnamed] {
        let e = reply.await.unwrap().unwrap_err();
        assert!(matches!(e, LogStoreError::Unknown(_)), "{e:?}");
        let status = crate::logstore::service::to_status(e);
        assert_eq!(
            crate::grpc::Reason::of(&status),
            Some(crate::grpc::Reason::NotDurable)
        );
    }
}
use crate::logstore::LogStoreError;
use crate::logstore::served::OnStream;
use crate::proto::{Mutation, mutation::Op};

fn add() -> Vec<Mutation> {
    vec![Mutation {
        key: b"k".to_vec().into(),
        op: Some(Op::Add(1)),
    }]
}

async fn leading(r: &Replica) -> u64 {
    for _ in 0..200 {
        if let Some(t) = r.leader_term() {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader: {:?}", r.status());
}

/// A stream's appends are never written in another term than its first: a stream whose
/// appends were proposed under another leadership (here pinned to another term, as after
/// a leader change and a re-election) has its next append refused with nothing written,
/// and a new stream appends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stream_is_not_written_in_a_later_term_than_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
    let r = Replica::start(ReplicaConfig::new(1, peers, dir.path().into()))
        .await
        .unwrap();
    let t = leading(&r).await;
    let w = |s| Some(("w".to_string(), s));
    let same = Arc::new(StreamOrder::default());
    let on = |order, follows| Some(OnStream { order, follows });
    let first = r.submit(add(), w(1), 0, on(&same, 0)).await.unwrap();
    let first = first.await.unwrap().unwrap();
    let earlier = Arc::new(StreamOrder::default());
    assert!(earlier.admit(Some(t + 1)));
    let refused = r.submit(add(), w(2), 0, on(&earlier, 1)).await.unwrap();
    let refused = refused.await.unwrap();
    assert!(
        matches!(refused, Err(LogStoreError::Unavailable(_))),
        "{refused:?}"
    );
    let again = r.submit(add(), w(2), 0, on(&same, 1)).await.unwrap();
    let again = again.await.unwrap().unwrap();
    assert!(!again.duplicate, "the refused append was not written");
    assert_eq!(again.index, first.index + 1, "nothing was written between");
}

/// However Raft takes a stream's groups (here the one holding sequence 3 never reached
/// it, as when the leader refuses a group while its lease is out and takes the next),
/// an append is written only if the one its stream sent before it was: sequence 4 after
/// a missing 3 is refused and nothing is written, so the client's resend from 3 is not stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_one_of_its_stream_that_was_not_written_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
    let r = Replica::start(ReplicaConfig::new(1, peers, dir.path().into()))
        .await
        .unwrap();
    leading(&r).await;
    let w = |s| Some(("w".to_string(), s));
    let order = Arc::new(StreamOrder::default());
    let on = |follows| {
        Some(OnStream {
            order: &order,
            follows,
        })
    };
    for s in 1..=2 {
        let a = r.submit(add(), w(s), 0, on(s - 1)).await.unwrap();
        a.await.unwrap().unwrap();
    }
    let after_lost = r.submit(add(), w(4), 0, on(3)).await.unwrap();
    let after_lost = after_lost.await.unwrap();
    assert!(
        matches!(after_lost, Err(LogStoreError::Gap { follows: 3, .. })),
        "{after_lost:?}"
    );
    assert_eq!(r.machine().bounds().1, 2, "nothing was written");
    let resend = Arc::new(StreamOrder::default());
    for s in 3..=4 {
        let a = r
            .submit(
                add(),
                w(s),
                0,
                Some(OnStream {
                    order: &resend,
                    follows: if s == 3 { 0 } else { 3 },
                }),
            )
            .await
            .unwrap();
        let a = a.await.unwrap().unwrap();
        assert_eq!((a.index, a.duplicate), (s, false), "the resend is written");
    }
}

/// Settings a replica cannot run with are refused at start, naming the flag: an entry
/// limit larger than one replication message carries (such an entry would be accepted
/// and never replicated, holding up every later one) and replica id 0.
#[test]
fn a_replica_refuses_a_limit_it_cannot_replicate_and_id_0() {
    let peers = |ids: &[u64]| ids.iter().map(|&i| (i, format!("127.0.0.1:{i}"))).collect();
    let config = |id, max_entry_bytes| {
        let mut c = ReplicaConfig::new(id, peers(&[1, 2, 3]), "/nonexistent".into());
        c.max_entry_bytes = max_entry_bytes;
        c
    };
    let big = crate::limits::MAX_MAX_ENTRY_BYTES;
    let e = super::check_config(&config(1, big))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid LogStore setting: --max-entry-bytes 1073741824 is more than a replicated log can carry"),
        "{e}"
    );
    // The largest that fits beside a full group and a full batch in one message (the
    // number `--max-entry-bytes`'s help gives).
    let most = super::MAX_REPLICABLE_ENTRY_BYTES;
    assert_eq!(most, 266_076_160);
    assert!(super::check_config(&config(1, most)).is_ok());
    let e = super::check_config(&config(1, most + 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(266076160 bytes)"), "{e}");
    // The default limit reaches followers well within an election timeout; 64 MiB at the
    // default heartbeat does not (it is warned of), nor 16 MiB at the shortest heartbeat.
    let slow = |bytes, heartbeat_ms| {
        let mut c = config(1, bytes);
        c.heartbeat = Duration::from_millis(heartbeat_ms);
        super::slower_than_an_election(&c)
    };
    assert_eq!(slow(crate::limits::DEFAULT_MAX_ENTRY_BYTES, 50), None);
    assert_eq!(slow(64 << 20, 50), Some(Duration::from_millis(250)));
    assert_eq!(slow(64 << 20, 100), None);
    assert!(slow(16 << 20, 10).is_some());
    // The heartbeat the operator gives a limit is the shortest that is not warned of.
    assert_eq!(
        crate::limits::heartbeat_for(4 << 20),
        crate::limits::DEFAULT_HEARTBEAT
    );
    assert_eq!(
        crate::limits::heartbeat_for(64 << 20),
        Duration::from_millis(84)
    );
    for bytes in [
        4 << 20,
        38 << 20,
        39 << 20,
        64 << 20,
        super::MAX_REPLICABLE_ENTRY_BYTES,
    ] {
        let hb = crate::limits::heartbeat_for(bytes);
        let ms = u64::try_from(hb.as_millis()).unwrap_or(u64::MAX);
        assert_eq!(slow(bytes, ms), None, "{bytes}");
        if hb > crate::limits::DEFAULT_HEARTBEAT {
            assert!(
                slow(bytes, ms - 1).is_some(),
                "{bytes}: {hb:?} is the shortest"
            );
        }
    }
    let mut zero = config(0, crate::limits::DEFAULT_MAX_ENTRY_BYTES);
    zero.join = true;
    let e = super::check_config(&zero).unwrap_err().to_string();
    assert!(e.contains("--id 0: replica ids start at 1"), "{e}");
}

#[test]
fn a_stream_is_pinned_to_the_term_of_its_first_proposal() {
    let s = StreamOrder::default();
    assert!(s.admit(Some(3)));
    assert!(s.admit(Some(3)));
    assert!(!s.admit(Some(5)), "a later term of the same leader");
    assert!(!s.admit(Some(3)), "broken for good");
}

#[test]
fn a_refusal_refuses_the_rest_of_the_stream() {
    let s = StreamOrder::default();
    assert!(s.admit(Some(2)));
    assert!(!s.admit(None), "not the leader");
    assert!(!s.admit(Some(2)), "leader of the same term again");
    let s = StreamOrder::default();
    assert!(!s.admit(None));
    assert!(!s.admit(Some(4)), "refused before the first proposal");
}
