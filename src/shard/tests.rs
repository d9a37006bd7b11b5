//! Unit tests of the shard protocol rules (`ShardCore`) over an in-memory store.

use super::*;
use crate::proto::{Mutation, mutation::Op};

fn add(index: u64, prev: u64, key: &str, n: i64) -> ShardEntry {
    ShardEntry {
        index,
        prev_index: prev,
        mutations: vec![Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(Op::Add(n)),
        }],
        ..Default::default()
    }
}

const LOG: &str = "11111111-1111-4111-8111-111111111111";

fn me(id: &str) -> ShardSelf {
    ShardSelf {
        id: id.into(),
        addr: "127.0.0.1:1".into(),
        max_entry_bytes: 4096,
    }
}

fn mem() -> ShardCore<MemStore> {
    ShardCore::open(MemStore::default(), me("s0")).unwrap()
}

fn hi(epoch: u64) -> HelloInfo {
    HelloInfo {
        epoch,
        log_id: LOG.into(),
        shard_id: "s0".into(),
        max_entry_bytes: 4096,
        slots: vec![SlotRange::new(0, 16383)],
    }
}

/// A Hello of `epoch` giving the shard `slots`.
fn with_slots(slots: &[(i32, i32)], epoch: u64) -> HelloInfo {
    HelloInfo {
        slots: slots.iter().map(|&(a, b)| SlotRange::new(a, b)).collect(),
        ..hi(epoch)
    }
}

fn slots_of(core: &ShardCore<MemStore>) -> Option<String> {
    core.identity().slots.as_ref().map(ToString::to_string)
}

/// A key whose slot is in `lo..=hi`.
fn key_in(lo: u16, hi: u16) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| (lo..=hi).contains(&crate::routing::slot(k.as_bytes())))
        .unwrap()
}

#[test]
fn once_it_applied_an_entry_a_shard_refuses_slots_it_does_not_own_and_records_fewer() {
    let mut core = mem();
    // Before any entry, any slots are taken: everything is still to come. They are
    // recorded with the first entry applied.
    core.hello(&with_slots(&[(0, 99)], 1)).unwrap();
    core.hello(&with_slots(&[(0, 8191)], 1)).unwrap();
    assert_eq!(slots_of(&core), None);
    core.apply(1, &[add(1, 0, &key_in(0, 4095), 1)]).unwrap();
    assert_eq!(slots_of(&core).as_deref(), Some("0-8191"));

    // More slots: refused, naming what it owns and what it would gain; nothing changes.
    let err = core.hello(&with_slots(&[(0, 9000)], 2)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ShardError::SlotsGrew { applied: 1, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("slots 0-8191") && msg.contains("slots 8192-9000"),
        "{msg}"
    );
    assert_eq!(
        core.durable().highest_epoch,
        1,
        "a refused hello changes nothing"
    );

    // The same slots in other ranges are welcome. Fewer are taken, and a map given by
    // mistake can be put back while nothing was applied under it...
    core.hello(&with_slots(&[(4000, 8191), (0, 3999)], 2))
        .unwrap();
    core.hello(&with_slots(&[(0, 4095)], 3)).unwrap();
    core.hello(&with_slots(&[(0, 8191)], 3)).unwrap();
    assert_eq!(slots_of(&core).as_deref(), Some("0-8191"));
    // ...but once an entry was applied under fewer, the freed ones (another shard's
    // from then on) cannot come back, across a reopen too.
    core.hello(&with_slots(&[(0, 4095)], 3)).unwrap();
    core.apply(3, &[add(2, 1, &key_in(0, 4095), 1)]).unwrap();
    assert_eq!(slots_of(&core).as_deref(), Some("0-4095"));
    let mut core = ShardCore::open(core.into_store(), me("s0")).unwrap();
    let err = core.hello(&with_slots(&[(0, 4096)], 4)).unwrap_err();
    assert!(err.to_string().contains("slots 4096-4096"), "{err}");
    core.hello(&with_slots(&[(0, 4095)], 4)).unwrap();
}

/// A Hello taken while nothing was applied may give more slots than another sender
/// then applied entries under: its first entry is checked again, and refused.
#[test]
fn a_sender_taken_before_anything_was_applied_is_checked_again_when_it_applies() {
    let mut core = mem();
    let set = |hi| SlotSet::from_ranges([SlotRange::new(0, hi)]).unwrap();
    core.hello(&with_slots(&[(0, 16383)], 1)).unwrap();
    core.hello(&with_slots(&[(0, 8191)], 1)).unwrap();
    core.apply_for(1, &set(8191), &[add(1, 0, &key_in(0, 8191), 1)])
        .unwrap();
    let err = core
        .apply_for(1, &set(16383), &[add(2, 1, &key_in(8192, 16383), 1)])
        .unwrap_err();
    assert!(matches!(err, ShardError::SlotsGrew { .. }), "{err}");
    assert_eq!(core.durable().applied, 1);
    assert_eq!(slots_of(&core).as_deref(), Some("0-8191"));
}

#[test]
fn an_entry_changing_a_key_of_a_slot_the_hello_did_not_give_is_refused() {
    let mut core = mem();
    core.hello(&with_slots(&[(0, 8191)], 1)).unwrap();
    let (ours, theirs) = (key_in(0, 8191), key_in(8192, 16383));
    core.apply(1, &[add(1, 0, &ours, 1)]).unwrap();
    let refused = core.apply(1, &[add(2, 1, &ours, 1), add(3, 2, &theirs, 1)]);
    match refused {
        Err(ShardError::Malformed(m)) => {
            assert!(m.contains("entry 3") && m.contains(&theirs), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // The entry before it was applied; the other key was not.
    assert_eq!(core.durable().applied, 2);
    assert_eq!(counter(&core, &ours), Some(2));
    assert_eq!(counter(&core, &theirs), None);
}

#[test]
fn a_sender_expecting_another_shard_is_refused_naming_both_ids_and_the_address() {
    let mut core = mem();
    let err = core
        .hello(&HelloInfo {
            shard_id: "s1".into(),
            ..hi(1)
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ShardError::WrongShard { .. }), "{msg}");
    assert!(
        msg.contains("\"s0\"") && msg.contains("\"s1\"") && msg.contains("127.0.0.1:1"),
        "{msg}"
    );
    assert_eq!(
        core.durable().highest_epoch,
        0,
        "a refused hello changes nothing"
    );
    assert_eq!(core.identity().log_id, None);
}

#[test]
fn the_first_log_binds_the_shard_and_another_log_is_refused() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    core.apply(1, &[add(1, 0, "k", 1)]).unwrap();
    assert_eq!(core.identity().log_id.as_deref(), Some(LOG));
    let other = HelloInfo {
        log_id: "22222222-2222-4222-8222-222222222222".into(),
        ..hi(2)
    };
    let err = core.hello(&other).unwrap_err();
    assert!(
        matches!(err, ShardError::WrongLog { applied: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(LOG) && err.to_string().contains("2222"),
        "{err}"
    );
    // A hello without a log id, a shard id, an entry limit or slots is malformed: each
    // would skip its check.
    for (what, unsaid) in [
        (
            "no log id",
            HelloInfo {
                log_id: String::new(),
                ..hi(2)
            },
        ),
        (
            "no shard id",
            HelloInfo {
                shard_id: String::new(),
                ..hi(2)
            },
        ),
        (
            "no entry limit",
            HelloInfo {
                max_entry_bytes: 0,
                ..hi(2)
            },
        ),
        ("no slots", with_slots(&[], 2)),
        ("out of bounds", with_slots(&[(0, 16384)], 2)),
        ("starts after it ends", with_slots(&[(9, 3)], 2)),
    ] {
        let refused = core.hello(&unsaid);
        assert!(
            matches!(&refused, Err(ShardError::Malformed(m)) if m.contains(what)),
            "{refused:?}"
        );
    }
    // The same log is welcome.
    core.hello(&hi(2)).unwrap();
}

#[test]
fn a_store_of_another_shard_does_not_open_and_a_larger_log_limit_is_refused() {
    let mut core = mem();
    let store = std::mem::take(&mut core.store);
    let err = ShardCore::open(store, me("s1")).err().unwrap();
    assert!(matches!(err, ShardError::NotThisShard { .. }), "{err}");
    let mut core = mem();
    let big = HelloInfo {
        max_entry_bytes: 4097,
        ..hi(1)
    };
    assert!(matches!(
        core.hello(&big),
        Err(ShardError::EntryLimit { .. })
    ));
}

fn counter(core: &ShardCore<MemStore>, key: &str) -> Option<i64> {
    match core.store().state.get(key.as_bytes()) {
        Some(Value::Counter(n)) => Some(*n),
        _ => None,
    }
}

#[test]
fn an_epoch_below_the_highest_seen_is_rejected() {
    let mut core = mem();
    assert_eq!(core.hello(&hi(5)).unwrap().highest_epoch, 5);
    assert!(matches!(
        core.hello(&hi(4)),
        Err(ShardError::Fenced {
            epoch: 4,
            highest: 5
        })
    ));
    // An equal epoch is the same leader reconnecting.
    core.hello(&hi(5)).unwrap();
    // A batch from an old stream is fenced once a newer leader said hello.
    core.hello(&hi(7)).unwrap();
    let err = core.apply(5, &[add(1, 0, "k", 1)]).unwrap_err();
    assert!(err.to_string().starts_with("fenced"), "{err}");
    assert_eq!(counter(&core, "k"), None);
}

/// What a Hello taught the shard (the highest epoch, the log it applies) is in its store
/// before the Hello is answered: a shard restarted right after still fences the old
/// leader and refuses another log. Kept in memory only, both would be forgotten.
#[test]
fn the_epoch_and_the_log_survive_a_restart() {
    let mut core = mem();
    core.hello(&hi(5)).unwrap();
    let mut core = ShardCore::open(core.into_store(), me("s0")).unwrap();
    assert!(
        matches!(
            core.hello(&hi(3)),
            Err(ShardError::Fenced {
                epoch: 3,
                highest: 5
            })
        ),
        "the old leader is fenced after a restart"
    );
    let other = HelloInfo {
        log_id: "22222222-2222-4222-8222-222222222222".into(),
        ..hi(6)
    };
    assert!(
        matches!(core.hello(&other), Err(ShardError::WrongLog { .. })),
        "another log is refused after a restart"
    );
}

#[test]
fn a_duplicate_index_is_skipped_and_not_applied_twice() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    core.apply(1, &[add(1, 0, "k", 1), add(3, 1, "k", 10)])
        .unwrap();
    let out = core
        .apply(
            1,
            &[add(1, 0, "k", 1), add(3, 1, "k", 10), add(4, 3, "k", 100)],
        )
        .unwrap();
    assert_eq!(
        out,
        Applied {
            applied: 4,
            new: 1,
            skipped: 2
        }
    );
    assert_eq!(counter(&core, "k"), Some(111));
}

#[test]
fn a_gap_is_refused_after_committing_the_valid_prefix() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    // Entry 5 says entry 4 touched this shard too, but 4 never came.
    let err = core
        .apply(1, &[add(1, 0, "k", 1), add(5, 4, "k", 10)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::Gap {
                index: 5,
                prev: 4,
                applied: 1
            }
        ),
        "{err}"
    );
    assert_eq!(core.durable().applied, 1);
    assert_eq!(counter(&core, "k"), Some(1));
}

#[test]
fn a_watermark_advances_the_applied_index_without_data() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    let mut wm = add(50, 0, "k", 0);
    wm.mutations.clear();
    core.apply(1, &[wm]).unwrap();
    assert_eq!(core.durable().applied, 50);
    // The next real entry names 0 as its previous: fine, 0 <= 50.
    core.apply(1, &[add(51, 0, "k", 2)]).unwrap();
    assert_eq!(counter(&core, "k"), Some(2));
}

#[test]
fn a_malformed_previous_index_is_refused() {
    let mut core = mem();
    let err = core.apply(0, &[add(3, 3, "k", 1)]).unwrap_err();
    assert!(matches!(err, ShardError::Malformed(_)), "{err}");
    let err = core.apply(0, &[add(0, 0, "k", 1)]).unwrap_err();
    assert!(matches!(err, ShardError::Malformed(_)), "{err}");
}

/// An entry the one before it passed over (5 naming 3 as its previous, then 4) is a
/// sender's mistake: refused, not skipped as already applied (its mutations would be
/// lost without a word). A resend of what was applied is still skipped.
#[test]
fn an_entry_passed_over_by_the_one_before_it_is_refused_after_the_valid_prefix() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    let err = core
        .apply(
            1,
            &[add(1, 0, "k", 1), add(3, 1, "k", 3), add(2, 1, "k", 2)],
        )
        .unwrap_err();
    assert!(matches!(err, ShardError::Malformed(_)), "{err}");
    assert!(
        err.to_string()
            .contains("indexes of one shard's entries must increase"),
        "{err}"
    );
    assert_eq!(core.durable().applied, 3, "the prefix before it is applied");
    assert_eq!(counter(&core, "k"), Some(4));
    // A resend within what one call holds (two batches of one stream, gathered) is not
    // that: what this call applied is skipped.
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    let resent = [
        add(1, 0, "k", 1),
        add(2, 1, "k", 1),
        add(1, 0, "k", 1),
        add(2, 1, "k", 1),
        add(3, 2, "k", 1),
    ];
    core.apply(1, &resent).unwrap();
    assert_eq!(counter(&core, "k"), Some(3));
}

/// An entry above the shard's limit is refused as too large, whatever the Hello said:
/// the log accepts no such entry, so its sender is not delivering the log.
#[test]
fn an_entry_above_the_shards_limit_is_refused() {
    let mut core = mem();
    core.hello(&hi(1)).unwrap();
    let mut big = add(1, 0, "k", 0);
    big.mutations[0].op = Some(Op::Put(vec![b'v'; 5000].into()));
    let err = core.apply(1, &[big]).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::TooLarge {
                index: 1,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(core.durable().applied, 0);
}
