//! Unit tests of the journal store: reopening, snapshots, refusals of missing or damaged
//! files, bytes written per byte committed, and the in-place ops against the model.

use super::*;
use crate::proto::{Delete, Mutation, mutation::Op};
use proptest::prelude::*;

fn m(key: &str, op: Op) -> Mutation {
    Mutation {
        key: key.as_bytes().to_vec().into(),
        op: Some(op),
    }
}

/// A made-up fingerprint for the entry at `index`.
fn fp(index: u64) -> u64 {
    0xf1f1_0000_0000 + index
}

fn entry(index: u64, mutations: Vec<Mutation>) -> ShardEntry {
    ShardEntry {
        index,
        prev_index: index.saturating_sub(1),
        mutations,
        fingerprint: fp(index),
        ..Default::default()
    }
}

/// The journal store's state as the model's (its keys as plain vectors).
fn model_of(s: &State) -> crate::model::State {
    s.iter().map(|(k, v)| (k.to_vec(), v.clone())).collect()
}

fn dump(s: &JournalStore) -> Vec<(Vec<u8>, Value)> {
    let mut rows = Vec::new();
    s.dump(&mut |k, v| rows.push((k.to_vec(), v.clone())))
        .unwrap();
    rows
}

/// `n` commits of one entry each: an append to a list, an add to a counter.
fn commit_many(s: &mut JournalStore, from: u64, n: u64, pad: usize) {
    for i in from..from + n {
        let item = format!("{i}:{}", "~".repeat(pad)).into_bytes();
        let e = entry(
            i,
            vec![
                m("l", Op::Append(item.into())),
                m(&format!("c{}", i % 7), Op::Add(i as i64)),
            ],
        );
        s.commit(&[e], i).unwrap();
    }
}

/// Shard s0 of log-a, owning two slot ranges.
fn identity_s0() -> Identity {
    Identity {
        shard_id: Some("s0".into()),
        log_id: Some("log-a".into()),
        slots: Some("0-99,200-300".parse().unwrap()),
    }
}

#[test]
fn commits_epoch_and_identity_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let identity = identity_s0();
    {
        let mut s = JournalStore::open(dir.path()).unwrap();
        s.set_identity(&identity).unwrap();
        s.set_epoch(3).unwrap();
        let e = entry(
            7,
            vec![
                m("c", Op::Add(2)),
                m("l", Op::Append(b"x".to_vec().into())),
                m("p", Op::Put(b"v".to_vec().into())),
                m("gone", Op::Put(b"v".to_vec().into())),
            ],
        );
        s.commit(std::slice::from_ref(&e), 7).unwrap();
        let again = entry(
            8,
            vec![m("gone", Op::Delete(Delete {})), m("c", Op::Add(2))],
        );
        s.commit(&[e, again], 8).unwrap();
    }
    let s = JournalStore::open_existing(dir.path()).unwrap();
    assert_eq!(
        s.load().unwrap(),
        Durable {
            applied: 8,
            highest_epoch: 3,
            fingerprint: fp(8),
        }
    );
    assert_eq!(s.identity().unwrap(), identity);
    assert_eq!(
        dump(&s),
        vec![
            (b"c".to_vec(), Value::Counter(6)),
            (
                b"l".to_vec(),
                Value::List(vec![b"x".to_vec(), b"x".to_vec()])
            ),
            (b"p".to_vec(), Value::Bytes(b"v".to_vec())),
        ]
    );
}

#[test]
fn a_snapshot_and_the_journal_after_it_give_back_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut s = JournalStore::open(dir.path()).unwrap();
        s.snapshot_min_bytes = 4 * 1024;
        s.set_epoch(2).unwrap();
        commit_many(&mut s, 1, 200, 100);
        // Let the background write finish, then take it in.
        while s.writing.as_ref().is_some_and(|w| !w.thread.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        commit_many(&mut s, 201, 1, 100);
        assert!(s.snapshot_bytes > 0, "a snapshot was written");
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        (dump(&s), s.load().unwrap())
    };
    let s = JournalStore::open(dir.path()).unwrap();
    assert_eq!((dump(&s), s.load().unwrap()), before);
    assert_eq!(s.load().unwrap().applied, 201);
    assert_eq!(s.load().unwrap().highest_epoch, 2);
    assert_eq!(s.load().unwrap().fingerprint, fp(201));
}

/// A snapshot is taken a slice per commit while the commits go on: the one started after
/// a commit holds exactly the records up to it, whatever is committed while it is taken,
/// and the live state is left as it is.
#[test]
fn a_snapshot_taken_beside_the_commits_holds_exactly_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = JournalStore::open(dir.path()).unwrap();
    s.snapshot_min_bytes = 50 * 4096; // commits end on a page: after 50 of them
    s.snapshot_step_bytes = 1; // one key per commit
    s.step_scales = false;
    let mut committed = 0;
    while s.taking.is_none() {
        committed += 1;
        commit_many(&mut s, committed, 1, 100);
    }
    let next = s.taking.as_ref().unwrap().next_record();
    assert_eq!(next, committed + 1, "it covers every record written");
    s.snapshot_min_bytes = u64::MAX; // no second one
    let mut slices = 1;
    while s.taking.is_some() {
        commit_many(&mut s, committed + slices, 1, 100);
        slices += 1;
    }
    assert_eq!(slices, 8, "one commit per key (l, c0..c6)");
    while s.writing.as_ref().is_some_and(|w| !w.thread.is_finished()) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let last = committed + slices;
    commit_many(&mut s, last, 1, 100); // takes the written snapshot in
    assert!(s.writing.is_none());
    let (state, durable, _, next_record, _) = read_snapshot(&dir.path().join(SNAPSHOT_FILE))
        .unwrap()
        .unwrap();
    assert_eq!((next_record, durable.applied), (next, committed));
    let expected = {
        let other = tempfile::tempdir().unwrap();
        let mut o = JournalStore::open(other.path()).unwrap();
        commit_many(&mut o, 1, committed, 100);
        dump(&o)
    };
    assert_eq!(model_of(&state).into_iter().collect::<Vec<_>>(), expected);
    let live = dump(&s);
    drop(s);
    let reopened = JournalStore::open(dir.path()).unwrap();
    assert_eq!(dump(&reopened), live);
    assert_eq!(reopened.load().unwrap().applied, last);
}

/// The fingerprint of the applied entry lives in the snapshot too (its journal records are
/// removed), and `reset-log` forgets it (that entry of the new log was never delivered).
#[test]
fn the_applied_entrys_fingerprint_survives_a_snapshot_and_not_a_reset() {
    let dir = snapshotted_50();
    let (_, durable, ..) = read_snapshot(&dir.path().join(SNAPSHOT_FILE))
        .unwrap()
        .unwrap();
    assert!(durable.applied > 0);
    assert_eq!(durable.fingerprint, fp(durable.applied));
    let mut s = JournalStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap().fingerprint, fp(50));
    s.reset_log("log-b", 9).unwrap();
    assert_eq!(s.load().unwrap().fingerprint, 0);
    drop(s);
    let s = JournalStore::open(dir.path()).unwrap();
    assert_eq!(
        (s.load().unwrap().applied, s.load().unwrap().fingerprint),
        (9, 0)
    );
}

/// A snapshot carries the shard's identity: the journal records before it (the one that
/// set the identity among them) are cut once it is written, so after it the identity comes
/// from its header alone. Lost there, a reopened shard would forget its id, its log and its
/// slots, and refuse nothing of another shard's or another log's.
#[test]
fn the_identity_survives_a_snapshot_that_cut_the_record_setting_it() {
    let dir = tempfile::tempdir().unwrap();
    let identity = identity_s0();
    {
        let mut s = JournalStore::open(dir.path()).unwrap();
        s.snapshot_min_bytes = 1024;
        s.blocking_snapshots_for_test();
        s.set_identity(&identity).unwrap();
        commit_many(&mut s, 1, 50, 100);
        assert!(s.snapshot_bytes > 0, "a snapshot was written");
    }
    let s = JournalStore::open_existing(dir.path()).unwrap();
    assert_eq!(s.identity().unwrap(), identity);
}

/// A closed journal store of entries 1..=50 whose state went into a snapshot.
fn snapshotted_50() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut s = JournalStore::open(dir.path()).unwrap();
    s.snapshot_min_bytes = 1024;
    s.blocking_snapshots_for_test();
    commit_many(&mut s, 1, 50, 100);
    dir
}

#[test]
fn a_snapshot_whose_journal_records_are_gone_is_refused_by_name() {
    let dir = snapshotted_50();
    std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR)).unwrap();
    let err = JournalStore::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("records are missing"), "{err}");
    assert!(err.contains(JOURNAL_DIR), "{err}");
}

#[test]
fn a_damaged_snapshot_is_refused_with_its_path_and_offset() {
    let dir = snapshotted_50();
    let path = dir.path().join(SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = JournalStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("snapshot") && err.contains("corrupt at byte"),
        "{err}"
    );
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn a_snapshot_cut_at_a_row_or_without_its_magic_is_refused() {
    // Every frame's checksum can be right and the snapshot still wrong: cut after a whole
    // row (a short copy), it would give back a state without the rows that followed.
    let dir = snapshotted_50();
    let path = dir.path().join(SNAPSHOT_FILE);
    let whole = std::fs::read(&path).unwrap();
    let frames = Frames {
        bytes: &whole,
        at: SNAPSHOT_MAGIC.len(),
    };
    let starts: Vec<usize> = frames.map(|(at, f)| f.map(|_| at).unwrap()).collect();
    assert!(starts.len() >= 3, "a header and rows: {starts:?}");
    let last_row = *starts.last().unwrap();
    std::fs::write(&path, &whole[..last_row]).unwrap();
    let err = JournalStore::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("its header says"), "{err}");

    let mut no_magic = whole.clone();
    no_magic[0] ^= 0xff;
    std::fs::write(&path, &no_magic).unwrap();
    let err = JournalStore::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("bad magic"), "{err}");

    std::fs::write(&path, &whole).unwrap();
    assert_eq!(
        JournalStore::open(dir.path())
            .unwrap()
            .load()
            .unwrap()
            .applied,
        50
    );
}

/// A snapshot row whose key length runs past the row (its frame's checksum right, the row
/// written wrong) is no row: `None`, which opening reports as "row shorter than its key".
/// Without the check the key is split off past the end of the row and opening the
/// snapshot panics instead of refusing it.
#[test]
fn a_row_whose_key_length_runs_past_it_is_no_row() {
    assert_eq!(
        split_row(&[1, 0, 0, 0, b'k', 1, b'v']),
        Some((&b"k"[..], &[1, b'v'][..]))
    );
    assert_eq!(split_row(&[5, 0, 0, 0, b'k']), None);
    assert_eq!(split_row(&[1, 0, 0, 0]), None);
}

#[test]
fn commits_end_on_page_boundaries_and_never_rewrite_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = JournalStore::open(dir.path()).unwrap();
    let item = vec![b'x'; 1024];
    for i in 1..=1000 {
        let e = entry(i, vec![m("l", Op::Append(item.clone().into()))]);
        s.commit(&[e], i).unwrap();
        // The next commit: its group's mark on a fresh page, then its record.
        assert_eq!(s.wal.next_record_offset() % PAGE, 16, "commit {i}");
    }
    // One page per commit of 1 KB: growing the list never rewrites it.
    let on_disk: u64 = std::fs::read_dir(dir.path().join(JOURNAL_DIR))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    // And the tail mark after the last commit (written over by the next one).
    assert_eq!(on_disk, 1000 * PAGE + 16);
    drop(s);
    let s = JournalStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap().applied, 1000);
}

/// Damage to an acknowledged commit of a stopped store is refused at open, never cut as a
/// torn tail (which would take back commits the player was told are applied): a byte flipped
/// in the last commit (its tail mark vouches for it), or a length flipped so that the last
/// or a middle commit seems to run past the end of the file (the next mark vouches for it).
#[test]
fn damage_to_an_acknowledged_commit_is_refused_not_cut() {
    // Five commits of one page each: commit k (k >= 1, from 0) is its group's mark at byte
    // k * PAGE, its record's header (length, checksum), its payload; the tail mark at 5 * PAGE.
    let cases: [(&str, u64); 3] = [
        ("a payload byte of the last commit", 4 * PAGE + 16 + 8 + 2),
        ("the length of the last commit", 4 * PAGE + 16 + 3),
        ("the length of a middle commit", 2 * PAGE + 16 + 3),
    ];
    for (what, at) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut s = JournalStore::open(dir.path()).unwrap();
        commit_many(&mut s, 1, 5, 100);
        drop(s);
        let segment = std::fs::read_dir(dir.path().join(JOURNAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .max()
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        assert_eq!(
            bytes.len() as u64,
            5 * PAGE + 16,
            "five pages and a tail mark: {}",
            bytes.len()
        );
        bytes[at as usize] ^= 0x40;
        std::fs::write(&segment, &bytes).unwrap();
        let err = JournalStore::open(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{what}: opened (the damaged commit cut)"))
            .to_string();
        assert!(err.contains("synced bytes are damaged"), "{what}: {err}");
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            bytes,
            "{what}: nothing cut"
        );
    }
}

#[test]
fn padding_aligns_every_record_and_decodes_away() {
    for offset in [0u64, 8, 100, 4000, 4095, 4096, 5000] {
        for len in 0..300usize {
            let record = Record {
                applied: Some(7),
                mutations: vec![m("k", Op::Put(vec![1; len].into()))],
                ..Default::default()
            };
            let mut buf = record.encode_to_vec();
            pad_to_page(&mut buf, offset);
            let end = offset + 8 + buf.len() as u64;
            assert_eq!(end % PAGE, 0, "offset {offset} len {len}");
            assert_eq!(Record::decode(&buf[..]).unwrap(), record);
        }
    }
}

#[derive(Debug, Clone)]
enum TestOp {
    Put(u8),
    Delete,
    Add(i64),
    Append(u8),
}

fn op_strategy() -> impl Strategy<Value = (u8, TestOp)> {
    let op = prop_oneof![
        any::<u8>().prop_map(TestOp::Put),
        Just(TestOp::Delete),
        any::<i64>().prop_map(TestOp::Add),
        any::<u8>().prop_map(TestOp::Append),
    ];
    (0u8..4, op)
}

fn to_mutation((key, op): &(u8, TestOp)) -> Mutation {
    let op = match op {
        TestOp::Put(b) => Op::Put(vec![*b].into()),
        TestOp::Delete => Op::Delete(Delete {}),
        TestOp::Add(d) => Op::Add(*d),
        TestOp::Append(b) => Op::Append(vec![*b].into()),
    };
    m(&format!("k{key}"), op)
}

proptest! {
    /// The in-place fast paths give what the model's op semantics give, for any mix of
    /// kinds on the same keys.
    #[test]
    fn applying_in_place_matches_the_model(ops in proptest::collection::vec(op_strategy(), 0..60)) {
        let mutations: Vec<Mutation> = ops.iter().map(to_mutation).collect();
        let mut model = crate::model::State::new();
        crate::model::apply_all(&mut model, &mutations);
        let mut ours = State::new();
        apply_mutations(&mut ours, &mutations);
        prop_assert_eq!(model_of(&ours), model);
    }
}

fn wide_op_strategy() -> impl Strategy<Value = (u8, TestOp)> {
    (0u8..40, op_strategy().prop_map(|(_, op)| op))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// A snapshot taken a slice per commit is the state as of its record, whatever the
    /// commits change while it is taken (keys before and after the slice, deleted,
    /// created, of another kind), and the store opened again is the live state.
    #[test]
    fn a_snapshot_taken_in_slices_is_the_state_as_of_its_record(
        commits in proptest::collection::vec(proptest::collection::vec(wide_op_strategy(), 1..6), 1..60),
        step in 1usize..120,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = JournalStore::open(dir.path()).unwrap();
        s.set_fsync(false);
        s.snapshot_min_bytes = 1;
        s.inline_snapshots = true; // written once whole, on the commit thread: checked below
        s.snapshot_step_bytes = step;
        s.step_scales = false;
        let mut model = crate::model::State::new();
        let mut states = vec![crate::model::State::new()]; // [i]: the state as of record i
        let mut seen = 0;
        for (i, ops) in commits.iter().enumerate() {
            let index = i as u64 + 1;
            let mutations: Vec<Mutation> = ops.iter().map(to_mutation).collect();
            s.commit(&[entry(index, mutations.clone())], index).unwrap();
            crate::model::apply_all(&mut model, &mutations);
            states.push(model.clone());
            if let Some((state, durable, _, next, _)) =
                read_snapshot(&dir.path().join(SNAPSHOT_FILE)).unwrap()
                && next != seen
            {
                seen = next;
                prop_assert_eq!(durable.applied, next - 1);
                prop_assert_eq!(&model_of(&state), &states[next as usize - 1], "snapshot of record {}", next - 1);
            }
        }
        prop_assert_eq!(&model_of(&s.state), &model);
        drop(s);
        let reopened = JournalStore::open(dir.path()).unwrap();
        prop_assert_eq!(&model_of(&reopened.state), &model);
    }
}

/// A step encodes at least twice the commit's bytes, and more after a quiet spell: a
/// snapshot keeps ahead of large commits, and a shard that commits now and then finishes
/// it in a few commits.
#[test]
fn a_snapshot_step_grows_with_the_commit_and_the_quiet_before_it() {
    use std::time::Duration;
    let step = super::super::taking::STEP_BYTES;
    assert_eq!(step_budget(step, None), step);
    assert_eq!(step_budget(step, Some((4096, Duration::ZERO))), step);
    assert_eq!(step_budget(step, Some((1 << 20, Duration::ZERO))), 2 << 20);
    assert_eq!(
        step_budget(step, Some((4096, Duration::from_secs(1)))),
        1000 * 64 * 1024
    );
    assert_eq!(
        step_budget(usize::MAX, Some((1, Duration::MAX))),
        usize::MAX
    );
}

/// A frame longer than its `u32` length holds is refused, not written with a wrapped
/// length under a right checksum (a snapshot that never opened again, its journal removed);
/// a refused frame leaves the buffer as it was.
#[test]
fn a_snapshot_frame_past_4_gib_is_refused_not_wrapped() {
    assert_eq!(frame_len(u32::MAX as usize), Ok(u32::MAX));
    let past = u32::MAX as usize + 1;
    assert_eq!(frame_len(past), Err(FrameTooLarge(past)));
    let mut out = b"before".to_vec();
    push_frame(&mut out, b"row").unwrap();
    assert_eq!(out.len(), 6 + 8 + 3);
    assert_eq!(&out[6..10], &3u32.to_le_bytes());
}

/// The measurement behind [`Key`] (not a check; run it with `cargo test --release --lib --
/// --ignored keys_inline_versus_behind_a_pointer --nocapture`): ns per op of random appends
/// and adds on 5,000 keys of the bench's shape, with 8 MiB of other memory touched between
/// chunks of 500 ops (as the other processes of a busy machine evict the caches), for keys
/// held inline and for keys behind a pointer.
#[test]
#[ignore]
fn keys_inline_versus_behind_a_pointer() {
    use std::collections::BTreeMap;
    fn measure<K: Ord + std::borrow::Borrow<[u8]>>(
        keys: &[Vec<u8>],
        order: &[usize],
        make: impl Fn(&[u8]) -> K,
    ) -> f64 {
        let mut state: BTreeMap<K, Value> = BTreeMap::new();
        let mut other = vec![0u8; 8 << 20];
        let mut spent = std::time::Duration::ZERO;
        for chunk in order.chunks(500) {
            for i in (0..other.len()).step_by(64) {
                other[i] = other[i].wrapping_add(1);
            }
            let started = std::time::Instant::now();
            for &k in chunk {
                let op = if k % 2 == 0 {
                    Op::Add(1)
                } else {
                    Op::Append(vec![7; 100].into())
                };
                match (state.get_mut(keys[k].as_slice()), &op) {
                    (Some(Value::List(items)), Op::Append(item)) => items.push(item.to_vec()),
                    (Some(Value::Counter(n)), Op::Add(d)) => *n += d,
                    _ => {
                        let value = Value::apply(None, &op).unwrap_or(Value::Counter(0));
                        state.insert(make(&keys[k]), value);
                    }
                }
            }
            spent += started.elapsed();
        }
        spent.as_nanos() as f64 / order.len() as f64
    }
    // The bench's key names (`c-000042`, `l-000043`).
    let keys: Vec<Vec<u8>> = (0..5000)
        .map(|k| format!("{}-{k:06}", if k % 2 == 0 { 'c' } else { 'l' }).into_bytes())
        .collect();
    let mut x: u64 = 88_172_645_463_325_252;
    let order: Vec<usize> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 5000) as usize
        })
        .collect();
    for round in 1..=3 {
        let behind = measure(&keys, &order, <[u8]>::to_vec);
        let inline = measure(&keys, &order, Key::from_slice);
        println!("round {round}: behind a pointer {behind:.0} ns/op, inline {inline:.0} ns/op");
    }
}
