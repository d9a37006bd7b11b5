//! Unit tests of the marks ([`WalConfig::marks`]): a power loss that kept later unsynced
//! writes and lost earlier ones opens cut at the loss, damage to bytes a later mark says were
//! synced is corruption, and no sync planned before a cut vouches for what follows it.

use super::tests::{
    append_payloads, assert_all_payloads, expect_corruption, file_len, flip_byte, open_small,
    payload, plain, segment_files, small_config,
};
use super::*;
use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Appends payload(i) for every i in `indexes` as one group, without syncing it.
fn append_unsynced(wal: &mut Wal, indexes: Range<u64>) {
    let owned: Vec<Vec<u8>> = indexes.clone().map(payload).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    assert_eq!(wal.append_batch_unsynced(&refs).unwrap(), indexes.start);
}

/// Where record `index` (in the first segment) starts and how many bytes it takes.
fn record_at(wal: &Wal, index: u64) -> (u64, u64) {
    let shared = read_lock(&wal.shared);
    let (start, len) = shared.segments[0].record((index - 1) as usize);
    (start, RECORD_HEADER_LEN + len)
}

/// Overwrites `len` bytes at `offset` with zeros: a page that never reached the disk.
fn zero(path: &Path, offset: u64, len: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len as usize], offset).unwrap();
}

/// A log in `dir` with records 1..=3 synced and 4..=6 written after them, not synced.
fn synced_then_written(dir: &Path) -> Wal {
    let (mut wal, _) = open_small(dir);
    append_payloads(&mut wal, 1..4).unwrap();
    append_unsynced(&mut wal, 4..7);
    wal
}

/// Records 1..=3 synced, then 4..=6 and 7..=9 written as two groups that were never
/// synced, and record 5 lost by a power loss that kept the later ones. Returns the segment
/// and where record 5 started.
fn lose_record_5(dir: &Path) -> (std::path::PathBuf, u64) {
    let mut wal = synced_then_written(dir);
    append_unsynced(&mut wal, 7..10);
    let (start, len) = record_at(&wal, 5);
    drop(wal);
    let path = segment_files(dir)[0].clone();
    assert_eq!(segment_files(dir).len(), 1, "one segment");
    zero(&path, start, len);
    (path, start)
}

#[test]
fn a_power_loss_that_kept_later_groups_and_lost_an_earlier_page_opens_cut_at_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (path, start5) = lose_record_5(dir.path());
    let before = file_len(&path);

    let (mut wal, report) = open_small(dir.path());
    assert_eq!(
        report.last_index, 4,
        "records 1..=4 kept, the rest was never acknowledged"
    );
    assert_eq!(report.torn_bytes_truncated, before - start5);
    // Cut there, and the open's tail mark after what it kept.
    assert_eq!(file_len(&path), start5 + MARK_LEN);
    assert_all_payloads(&wal.reader(), 1, 4);
    // Appends go on from the cut, and everything reads back after a reopen.
    append_payloads(&mut wal, 5..12).unwrap();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (11, 0));
    assert_all_payloads(&wal.reader(), 1, 11);
}

#[test]
fn without_marks_the_same_power_loss_reads_as_corruption() {
    // What the marks are for: a log without them (the format from before them) cannot tell the
    // lost page from damage to a record it had synced, and refuses to open.
    plain();
    let dir = tempfile::tempdir().unwrap();
    let (_, start5) = lose_record_5(dir.path());
    let (_, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
    assert_eq!(offset, start5, "{text}");
}

#[test]
fn damage_to_bytes_a_later_mark_says_were_synced_is_corruption_naming_the_mark() {
    for pipelined in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_small(dir.path());
        append_payloads(&mut wal, 1..4).unwrap();
        if pipelined {
            // The LogStore's and a replica's way: written, synced by a point taken after it
            // (on another thread there), then the next group written.
            append_unsynced(&mut wal, 4..7);
            wal.sync_point().sync().unwrap();
            append_unsynced(&mut wal, 7..10);
        } else {
            append_payloads(&mut wal, 4..7).unwrap();
            append_payloads(&mut wal, 7..10).unwrap();
        }
        let (start5, _) = record_at(&wal, 5);
        let (start7, _) = record_at(&wal, 7);
        drop(wal);
        let path = segment_files(dir.path())[0].clone();
        let before = file_len(&path);
        flip_byte(&path, start5 + RECORD_HEADER_LEN);

        let (at, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!((at, offset), (path.clone(), start5), "{text}");
        let mark = start7 - MARK_LEN;
        assert!(
            text.contains(&format!("group mark at byte {mark}")),
            "pipelined {pipelined}: {text}"
        );
        assert!(text.contains("synced bytes are damaged"), "{text}");
        assert_eq!(file_len(&path), before, "corruption must not truncate");
    }
}

#[test]
fn a_group_whose_records_never_reached_the_disk_leaves_its_mark_to_be_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let wal = synced_then_written(dir.path());
    let (start4, _) = record_at(&wal, 4);
    drop(wal);
    let path = segment_files(dir.path())[0].clone();
    let len = file_len(&path);
    // Its mark on disk, its records zeros (as a preallocated tail reads).
    zero(&path, start4, len - start4);
    let (mut wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (3, 0));
    append_payloads(&mut wal, 4..8).unwrap();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (7, 0));
    assert_all_payloads(&wal.reader(), 1, 7);
    drop(wal);

    // Its mark the last bytes of the file: one saying the segment was synced up to itself
    // (all before it was) is left for the writer like a tail mark; one saying less is cut.
    let (mut wal, _) = open_small(dir.path());
    append_unsynced(&mut wal, 8..10);
    let (start8, _) = record_at(&wal, 8);
    append_unsynced(&mut wal, 10..12);
    let (start10, _) = record_at(&wal, 10);
    drop(wal);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(start10).unwrap();
    f.write_all_at(
        &vec![0; (start10 - start8 + MARK_LEN) as usize],
        start8 - MARK_LEN,
    )
    .unwrap();
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (7, 0));
    assert_all_payloads(&wal.reader(), 1, 7);
    drop(wal);
    let (mut wal, _) = open_small(dir.path());
    append_unsynced(&mut wal, 8..9);
    append_unsynced(&mut wal, 9..11);
    let (start9, _) = record_at(&wal, 9);
    drop(wal);
    f.set_len(start9).unwrap();
    let (wal, report) = open_small(dir.path());
    assert_eq!(
        (report.last_index, report.torn_bytes_truncated),
        (8, MARK_LEN)
    );
    // Cut with the dangling mark; the open's tail mark takes its place.
    assert_eq!(file_len(&path), start9);
    assert_eq!(
        bytes_at(&path, start9 - MARK_LEN, MARK_LEN),
        mark(start9 - MARK_LEN)
    );
    assert_all_payloads(&wal.reader(), 1, 8);
}

#[test]
fn a_sync_planned_before_a_cut_says_nothing_of_what_is_written_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = synced_then_written(dir.path());
    let planned = wal.sync_point();
    // A follower's conflicting suffix is cut (synced), and the leader's entries written.
    wal.truncate_from(5).unwrap();
    let (start5, _) = record_at(&wal, 4);
    let after_cut = lock_synced(&wal.synced).synced.end;
    assert_eq!(
        after_cut,
        start5 + RECORD_HEADER_LEN + payload(4).len() as u64
    );
    append_unsynced(&mut wal, 5..8);
    planned.sync().unwrap();
    assert_eq!(
        lock_synced(&wal.synced).synced.end,
        after_cut,
        "a sync planned before the cut must not vouch for the bytes written after it"
    );
    // A sync planned now does.
    let now = wal.sync_point();
    now.sync().unwrap();
    let (start7, len7) = record_at(&wal, 7);
    assert_eq!(lock_synced(&wal.synced).synced.end, start7 + len7);
}

#[test]
fn reads_of_every_range_skip_the_marks_between_groups_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(dir.path());
    let mut next = 1;
    for size in (1..=7).cycle().take(60) {
        if size % 2 == 0 {
            append_unsynced(&mut wal, next..next + size);
        } else {
            append_payloads(&mut wal, next..next + size).unwrap();
        }
        next += size;
    }
    assert!(segment_files(dir.path()).len() > 3);
    let last = next - 1;
    let check = |reader: &WalReader| {
        for from in (1..=last).step_by(7) {
            for max in [1, 300, 1000, usize::MAX] {
                let got = reader.read_range(from, last, max).unwrap();
                for (k, (index, data)) in got.iter().enumerate() {
                    assert_eq!(*index, from + k as u64);
                    assert_eq!(*data, payload(*index));
                }
            }
        }
    };
    check(&wal.reader());
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (last, 0));
    check(&wal.reader());
}

#[test]
fn a_log_from_before_marks_reads_on_and_gets_them_from_its_next_segment() {
    // Written by a build without marks (a segment with the old magic).
    let dir = tempfile::tempdir().unwrap();
    plain();
    let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
    append_payloads(&mut wal, 1..4).unwrap();
    drop(wal);
    let old = segment_files(dir.path())[0].clone();
    let (start2, _) = {
        let (wal, _) = Wal::open(small_config(dir.path())).unwrap();
        record_at(&wal, 2)
    };
    let marked = || WalConfig {
        marks: true,
        ..small_config(dir.path())
    };

    // Opened by this one: the records read back; its old segment gets no marks (a build from
    // before them would read the first one as a torn tail and cut what follows), the next
    // segment is created with them.
    let (mut wal, report) = Wal::open(marked()).unwrap();
    assert_eq!((report.last_index, report.torn_bytes_truncated), (3, 0));
    append_payloads(&mut wal, 4..7).unwrap();
    assert_eq!(read_lock(&wal.shared).segments[0].offsets[3] & MARKED, 0);
    drop(wal);
    // Its old segment, still the last, keeps the strict rule: damage with bytes after it is
    // corruption.
    flip_byte(&old, start2 + RECORD_HEADER_LEN);
    let (_, offset, text) = expect_corruption(Wal::open(marked()));
    assert_eq!(offset, start2, "{text}");
    flip_byte(&old, start2 + RECORD_HEADER_LEN);
    let (mut wal, _) = Wal::open(marked()).unwrap();
    let mut next = 7;
    while segment_files(dir.path()).len() < 2 {
        append_payloads(&mut wal, next..next + 3).unwrap();
        next += 3;
    }
    append_unsynced(&mut wal, next..next + 3);
    let last = next + 2;
    let new = segment_files(dir.path())[1].clone();
    let (seg_first, start) = {
        let shared = read_lock(&wal.shared);
        let seg = &shared.segments[1];
        assert_ne!(
            seg.offsets[0] & MARKED,
            0,
            "the new segment's first group has a mark"
        );
        let ord = (next + 1 - seg.first_index) as usize;
        (seg.first_index, seg.record(ord).0)
    };
    drop(wal);
    assert_eq!(
        &fs_read(&old)[..8],
        SEGMENT_MAGIC,
        "the old segment keeps its magic"
    );
    assert_eq!(&fs_read(&new)[..8], SEGMENT_MAGIC_MARKED);
    // Both segments read back (opened as a copy: an open syncs what it keeps, and the power
    // loss below must come before any).
    let copy = tempfile::tempdir().unwrap();
    for f in segment_files(dir.path()) {
        std::fs::copy(&f, copy.path().join(f.file_name().unwrap())).unwrap();
    }
    let (wal, report) = Wal::open(WalConfig {
        marks: true,
        ..small_config(copy.path())
    })
    .unwrap();
    assert_eq!((report.last_index, report.torn_bytes_truncated), (last, 0));
    assert_all_payloads(&wal.reader(), 1, last);
    drop(wal);

    // In the new segment, a power loss (before any open synced what was written) is told
    // from corruption.
    zero(&new, start, 4);
    let (wal, report) = Wal::open(marked()).unwrap();
    assert_eq!(report.last_index, next);
    assert!(seg_first <= next && next < last);
    assert_all_payloads(&wal.reader(), 1, next);
}

#[test]
fn a_last_segment_of_zeros_whose_header_never_landed_gets_its_header_written() {
    // The filler zero-fills a new segment ahead of the writer and may sync that before the
    // writer's first group (with the magic) is synced: a power loss then leaves zeros only.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(dir.path());
    append_payloads(&mut wal, 1..4).unwrap();
    drop(wal);
    let next = segment_path(dir.path(), 4);
    std::fs::write(&next, vec![0u8; 8192]).unwrap();
    let (mut wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.segments), (3, 2));
    assert_eq!(report.torn_bytes_truncated, 8192);
    append_payloads(&mut wal, 4..6).unwrap();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (5, 0));
    assert_all_payloads(&wal.reader(), 1, 5);
    drop(wal);
    // Zeros in a segment that is not the last stay corruption.
    std::fs::write(segment_path(dir.path(), 6), vec![0u8; 8192]).unwrap();
    std::fs::write(segment_path(dir.path(), 7), vec![0u8; 8192]).unwrap();
    let (at, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
    assert_eq!((at, offset), (segment_path(dir.path(), 6), 0), "{text}");
}

fn fs_read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The bytes of `path` from `at`, `len` of them (zeros past its end).
fn bytes_at(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = fs_read(path).into_iter().skip(at as usize).collect();
    bytes.resize(len as usize, 0);
    bytes
}

#[test]
fn damage_to_an_idle_logs_last_synced_group_is_refused_naming_its_tail_mark() {
    // Nothing comes after the last group to vouch for it but the tail mark an idle log
    // leaves: without it, a flipped byte in the last acknowledged record read as a torn
    // tail and was cut, acknowledged entries with it.
    for (pipelined, preallocate) in [(false, false), (true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = || WalConfig {
            preallocate,
            ..small_config(dir.path())
        };
        let (mut wal, _) = Wal::open(config()).unwrap();
        append_payloads(&mut wal, 1..4).unwrap();
        if pipelined {
            append_unsynced(&mut wal, 4..7);
            wal.sync_point().sync().unwrap();
        } else {
            append_payloads(&mut wal, 4..7).unwrap();
        }
        let (start6, len6) = record_at(&wal, 6);
        let end = start6 + len6;
        drop(wal);
        let path = segment_files(dir.path())[0].clone();
        assert_eq!(bytes_at(&path, end, MARK_LEN), mark(end), "the tail mark");

        // Intact, it opens as it was, and the next group is written over it.
        let (mut wal, report) = Wal::open(config()).unwrap();
        assert_eq!((report.last_index, report.torn_bytes_truncated), (6, 0));
        append_payloads(&mut wal, 7..8).unwrap();
        assert_eq!(record_at(&wal, 7).0, end + MARK_LEN);
        wal.truncate_from(7).unwrap();
        drop(wal);

        flip_byte(&path, start6 + RECORD_HEADER_LEN);
        let before = file_len(&path);
        let (at, offset, text) = expect_corruption(Wal::open(config()));
        assert_eq!((at, offset), (path.clone(), start6), "{text}");
        assert!(
            text.contains(&format!("group mark at byte {end}")),
            "pipelined {pipelined}, preallocate {preallocate}: {text}"
        );
        assert_eq!(file_len(&path), before, "corruption must not truncate");
    }
}

#[test]
fn an_open_leaves_a_tail_mark_after_what_it_kept() {
    // A crash under load: the last group written, never synced, no tail mark after it.
    let dir = tempfile::tempdir().unwrap();
    let wal = synced_then_written(dir.path());
    let (start6, len6) = record_at(&wal, 6);
    let end = start6 + len6;
    drop(wal);
    let path = segment_files(dir.path())[0].clone();
    assert_ne!(bytes_at(&path, end, MARK_LEN), mark(end));
    // The open syncs what it kept, and says so after it.
    let (wal, report) = open_small(dir.path());
    assert_eq!(report.last_index, 6);
    assert_eq!(bytes_at(&path, end, MARK_LEN), mark(end));
    drop(wal);
    flip_byte(&path, start6 + RECORD_HEADER_LEN);
    let (_, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
    assert_eq!(offset, start6, "{text}");
}

#[test]
fn a_sync_planned_before_the_next_group_leaves_no_tail_mark_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(dir.path());
    append_unsynced(&mut wal, 1..4);
    let planned = wal.sync_point();
    append_unsynced(&mut wal, 4..7);
    let (start4, _) = record_at(&wal, 4);
    let path = segment_files(dir.path())[0].clone();
    let group = bytes_at(&path, start4 - MARK_LEN, MARK_LEN);
    planned.sync().unwrap();
    assert_eq!(
        bytes_at(&path, start4 - MARK_LEN, MARK_LEN),
        group,
        "the next group's mark is left as written"
    );
    wal.sync_point().sync().unwrap();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (6, 0));
    assert_all_payloads(&wal.reader(), 1, 6);
}

#[test]
fn a_log_without_marks_leaves_no_tail_mark() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(dir.path());
    append_payloads(&mut wal, 1..4).unwrap();
    let (start3, len3) = record_at(&wal, 3);
    drop(wal);
    let path = segment_files(dir.path())[0].clone();
    assert_eq!(file_len(&path), start3 + len3);
}

#[test]
fn a_sync_in_flight_when_a_cut_begins_leaves_no_tail_mark() {
    // A replica's sync runs off the writer's lock; a cut may begin while it is under way and
    // move the end back. Its tail mark would then land past the cut, vouching for whatever
    // is written there next.
    let dir = tempfile::tempdir().unwrap();
    let wal = synced_then_written(dir.path());
    let planned = wal.sync_point();
    let (start6, len6) = record_at(&wal, 6);
    let end = start6 + len6;
    // What a cut does first (truncate_from, restart_at), before it removes anything.
    forget_syncs_in_flight(&wal.synced);
    planned.sync().unwrap();
    let path = segment_files(dir.path())[0].clone();
    assert_ne!(bytes_at(&path, end, MARK_LEN), mark(end));
}
