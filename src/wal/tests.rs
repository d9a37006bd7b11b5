//! Unit tests of the WAL: appends, reads, rolling, retention, torn tails, corruption and
//! injected IO failures.

use super::*;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

thread_local! {
    /// Set by [`plain`]: this test's logs have no marks.
    static PLAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling test works on logs without marks (the format from before them), whose byte
/// offsets it counts record by record.
pub(super) fn plain() {
    PLAIN.with(|p| p.set(true));
}

/// Small segments, with marks (the LogStore's and a log replica's format) unless the test
/// called [`plain`].
pub(super) fn small_config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_bytes: MIN_SEGMENT_BYTES,
        marks: !PLAIN.with(|p| p.get()),
        ..WalConfig::new(dir)
    }
}

/// The bytes of the tail mark an idle log leaves after its records: one mark with marks on
/// ([`segment::vouch`]), none without.
fn tail_mark_len() -> u64 {
    if PLAIN.with(|p| p.get()) { 0 } else { MARK_LEN }
}

/// Deterministic payload for index `i`, 1..=300 bytes.
pub(super) fn payload(i: u64) -> Vec<u8> {
    let n = (i * 37 % 300) as usize + 1;
    (0..n).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn record_size(i: u64) -> u64 {
    RECORD_HEADER_LEN + payload(i).len() as u64
}

/// Appends payload(i) for every i in `indexes`, as one batch.
pub(super) fn append_payloads(wal: &mut Wal, indexes: Range<u64>) -> Result<u64, WalError> {
    let owned: Vec<Vec<u8>> = indexes.map(payload).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    wal.append_batch(&refs)
}

/// Appends payload(next), checks that it got index `next` and that `first..=next` read back.
fn append_next(wal: &mut Wal, first: u64, next: u64) {
    assert_eq!(wal.append_batch(&[&payload(next)]).unwrap(), next);
    assert_all_payloads(&wal.reader(), first, next);
}

/// Appends payload(i) for i in `from..from + n`, in batches of 1..=batch.
fn append_range(wal: &mut Wal, from: u64, n: u64, batch: usize) {
    let mut i = from;
    let end = from + n;
    let mut size = 1;
    while i < end {
        let k = (size as u64).min(end - i);
        assert_eq!(append_payloads(wal, i..i + k).unwrap(), i);
        i += k;
        size = size % batch + 1;
    }
}

pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let (_, files): (Vec<u64>, _) = list_segments(dir).unwrap().into_iter().unzip();
    files
}

fn segment_firsts(dir: &Path) -> Vec<u64> {
    let (firsts, _): (_, Vec<PathBuf>) = list_segments(dir).unwrap().into_iter().unzip();
    firsts
}

pub(super) fn assert_all_payloads(reader: &WalReader, first: u64, last: u64) {
    let got = reader.read_range(first, u64::MAX, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, last + 1 - first);
    for (k, (index, data)) in got.iter().enumerate() {
        assert_eq!(*index, first + k as u64);
        assert_eq!(*data, payload(*index), "payload of {index}");
    }
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

pub(super) fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

pub(super) fn expect_corruption(
    result: Result<(Wal, OpenReport), WalError>,
) -> (PathBuf, u64, String) {
    match result {
        Err(err @ WalError::Corruption { .. }) => {
            let text = err.to_string();
            let WalError::Corruption { path, offset, .. } = err else {
                unreachable!()
            };
            (path, offset, text)
        }
        Err(other) => panic!("expected Corruption, got {other}"),
        Ok(_) => panic!("expected Corruption, open succeeded"),
    }
}

pub(super) fn open_small(dir: &Path) -> (Wal, OpenReport) {
    Wal::open(small_config(dir)).unwrap()
}

/// Opening `dir`, expected to fail with corruption.
fn open_corrupt(dir: &Path) -> (PathBuf, u64, String) {
    expect_corruption(Wal::open(small_config(dir)))
}

/// A WAL in `dir` holding records 1..=n, appended in batches of 1..=batch.
fn filled(dir: &Path, n: u64, batch: usize) -> Wal {
    let (mut wal, _) = open_small(dir);
    append_range(&mut wal, 1, n, batch);
    wal
}

/// Records 1..=n in three or more segments of a closed WAL; returns the segment paths.
fn three_or_more_segments(dir: &Path, n: u64) -> Vec<PathBuf> {
    drop(filled(dir, n, 3));
    let files = segment_files(dir);
    assert!(files.len() >= 3);
    files
}

/// Closes `wal`, reopens its `dir` and checks that it holds 1..=last intact, with no
/// torn tail cut.
fn reopen_intact(wal: Wal, dir: &Path, last: u64) {
    drop(wal);
    let (wal, report) = open_small(dir);
    assert_eq!((report.last_index, report.torn_bytes_truncated), (last, 0));
    assert_all_payloads(&wal.reader(), 1, last);
}

/// One segment with records 1..=5; returns the segment path.
fn five_records(dir: &Path) -> PathBuf {
    drop(filled(dir, 5, 2));
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[test]
fn a_fresh_log_starts_at_index_one_and_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/wal");
    let (mut wal, report) = Wal::open(small_config(&path)).unwrap();
    assert_eq!(
        report,
        OpenReport {
            entries: 0,
            first_index: 1,
            last_index: 0,
            torn_bytes_truncated: 0,
            segments: 1
        }
    );
    assert_eq!((wal.first_index(), wal.last_index()), (1, 0));
    let reader = wal.reader();
    assert!(reader.read_range(1, 10, usize::MAX).unwrap().is_empty());
    assert_eq!(wal.append_batch(&[]).unwrap(), 1);
    let files = segment_files(&path);
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("00000000000000000001.wal"));
    // Its magic only (no tail mark: no record to vouch for).
    assert_eq!(fs::read(&files[0]).unwrap(), SEGMENT_MAGIC_MARKED);
    assert_eq!(wal.append_batch(&[b"a", b""]).unwrap(), 1);
    assert_eq!(reader.read_range(1, 2, usize::MAX).unwrap()[1], (2, vec![]));
}

#[test]
fn appends_then_reopen_give_dense_indexes_from_one_and_identical_payloads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = filled(dir.path(), 200, 9);
        assert_eq!(wal.last_index(), 200);
        assert_all_payloads(&wal.reader(), 1, 200);
    }
    let files = segment_files(dir.path());
    assert!(
        files.len() >= 4,
        "expected several segments, got {}",
        files.len()
    );
    let (mut wal, report) = open_small(dir.path());
    assert_eq!(
        report,
        OpenReport {
            entries: 200,
            first_index: 1,
            last_index: 200,
            torn_bytes_truncated: 0,
            segments: files.len()
        }
    );
    assert_all_payloads(&wal.reader(), 1, 200);
    // Segments are contiguous and each one but the last is full.
    let firsts = segment_firsts(dir.path());
    assert_eq!(firsts[0], 1);
    for path in &files[..files.len() - 1] {
        assert!(file_len(path) >= MIN_SEGMENT_BYTES);
    }
    append_range(&mut wal, 201, 20, 4);
    reopen_intact(wal, dir.path(), 220);
}

#[test]
fn a_single_record_larger_than_a_segment_is_stored_and_the_next_one_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 3 * MIN_SEGMENT_BYTES as usize];
    let (mut wal, _) = open_small(dir.path());
    wal.append_batch(&[b"small", &big, b"after"]).unwrap();
    assert_eq!(segment_firsts(dir.path()), vec![1, 3]);
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!(report.last_index, 3);
    let got = wal.reader().read_range(1, 3, usize::MAX).unwrap();
    assert_eq!(got[1].1, big);
    assert_eq!(got[2].1, b"after");
}

#[test]
fn read_range_respects_from_to_and_max_bytes_returns_removed_below_first_and_empty_past_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 100, 5);
    let reader = wal.reader();

    let got = reader.read_range(3, 5, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(got[0].1, payload(3));

    // `to` beyond the end is clamped; past the end is empty.
    assert_eq!(reader.read_range(98, 1000, usize::MAX).unwrap().len(), 3);
    assert!(reader.read_range(101, 200, usize::MAX).unwrap().is_empty());
    assert!(reader.read_range(5, 4, usize::MAX).unwrap().is_empty());

    // max_bytes: at least one entry; never more than max_bytes otherwise.
    assert_eq!(reader.read_range(3, 10, 0).unwrap().len(), 1);
    let two = payload(3).len() + payload(4).len();
    assert_eq!(reader.read_range(3, 10, two).unwrap().len(), 2);
    assert_eq!(reader.read_range(3, 10, two - 1).unwrap().len(), 1);

    // A range crossing segment boundaries.
    let all = reader.read_range(1, 100, usize::MAX).unwrap();
    assert_eq!(all.len(), 100);
    let limit = 5000;
    let some = reader.read_range(1, 100, limit).unwrap();
    let bytes: usize = some.iter().map(|e| e.1.len()).sum();
    assert!(bytes <= limit);
    assert!(bytes + payload(some.len() as u64 + 1).len() > limit);

    let second = segment_firsts(dir.path())[1];
    assert_eq!(wal.remove_below(second).unwrap(), 1);
    match reader.read_range(1, 5, usize::MAX) {
        Err(WalError::Removed { index: 1, first }) => assert_eq!(first, second),
        other => panic!("expected Removed, got {other:?}"),
    }
    assert_eq!(reader.read_range(second, second, 0).unwrap()[0].0, second);
}

#[test]
fn torn_tail_cut_mid_record_is_truncated_reported_and_appending_continues() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    let full = file_len(&path);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 3).unwrap();
    drop(f);

    let (mut wal, report) = open_small(dir.path());
    assert_eq!(report.torn_bytes_truncated, record_size(5) - 3);
    assert_eq!((report.last_index, report.entries), (4, 4));
    assert_eq!(file_len(&path), full - record_size(5));
    append_next(&mut wal, 1, 5);
    reopen_intact(wal, dir.path(), 5);
}

#[test]
fn torn_tail_of_a_partial_record_header_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    let full = file_len(&path);
    append_bytes(&path, &[0x10, 0, 0, 0, 0x99]);

    // The idle log's tail mark (16 bytes), if any, goes with the torn bytes, and the open
    // writes it again.
    let mark = tail_mark_len();
    let (mut wal, report) = open_small(dir.path());
    assert_eq!(
        (report.torn_bytes_truncated, report.last_index),
        (5 + mark, 5)
    );
    assert_eq!(file_len(&path), full);
    append_next(&mut wal, 1, 6);
}

#[test]
fn torn_tail_whose_header_claims_more_than_the_file_holds_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    append_bytes(&path, &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6]);
    let (_wal, report) = open_small(dir.path());
    assert_eq!(
        (report.torn_bytes_truncated, report.last_index),
        (10 + tail_mark_len(), 5)
    );
}

#[test]
fn torn_tail_with_a_bad_checksum_in_the_final_record_is_truncated() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    let full = file_len(&path);
    flip_byte(&path, full - 1);

    let (mut wal, report) = open_small(dir.path());
    assert_eq!(report.torn_bytes_truncated, record_size(5));
    assert_eq!(report.last_index, 4);
    assert_eq!(file_len(&path), full - record_size(5));
    append_next(&mut wal, 1, 5);
}

#[test]
fn a_zero_length_or_partial_header_last_segment_gets_its_header_rewritten() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    five_records(dir.path());
    let empty = segment_path(dir.path(), 6);
    File::create(&empty).unwrap();

    let (wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.segments), (5, 2));
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_eq!(fs::read(&empty).unwrap(), SEGMENT_MAGIC);
    drop(wal);

    fs::write(&empty, b"LPW").unwrap();
    let (mut wal, report) = open_small(dir.path());
    assert_eq!((report.last_index, report.torn_bytes_truncated), (5, 3));
    append_next(&mut wal, 1, 6);
    assert_eq!(file_len(&empty), SEGMENT_HEADER_LEN + record_size(6));
}

#[test]
fn a_corrupt_middle_record_fails_open_naming_the_file_and_byte_offset() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    let full = file_len(&path);
    let record2 = SEGMENT_HEADER_LEN + record_size(1);
    flip_byte(&path, record2 + RECORD_HEADER_LEN);

    let (err_path, offset, text) = open_corrupt(dir.path());
    assert_eq!(err_path, path);
    assert_eq!(offset, record2);
    assert!(text.contains("00000000000000000001.wal"), "{text}");
    assert!(text.contains(&format!("offset {record2}")), "{text}");
    assert_eq!(file_len(&path), full, "corruption must not truncate");
}

#[test]
fn a_record_damaged_after_open_is_refused_by_the_read_naming_the_file_and_offset() {
    plain();
    // Open scans every record once; a read checks each record again, so damage that happens
    // while the log is open (bit rot, a stray write) is refused, never served.
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), 5, 2);
    let path = segment_files(dir.path())[0].clone();
    let reader = wal.reader();
    assert_all_payloads(&reader, 1, 5);
    let record2 = SEGMENT_HEADER_LEN + record_size(1);
    let record3 = record2 + record_size(2);

    flip_byte(&path, record2 + RECORD_HEADER_LEN);
    let err = reader
        .read_range(1, 5, usize::MAX)
        .expect_err("damaged payload");
    let text = err.to_string();
    let WalError::Corruption {
        path: at, offset, ..
    } = err
    else {
        panic!("expected Corruption, got {text}");
    };
    assert_eq!((at, offset), (path.clone(), record2), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    // Reads that do not touch the damaged record still work.
    assert_eq!(
        reader.read_range(1, 1, usize::MAX).unwrap(),
        vec![(1, payload(1))]
    );
    flip_byte(&path, record2 + RECORD_HEADER_LEN);

    flip_byte(&path, record3); // the length's low byte
    let err = reader
        .read_range(3, 5, usize::MAX)
        .expect_err("damaged length");
    let text = err.to_string();
    assert!(
        matches!(&err, WalError::Corruption { offset, .. } if *offset == record3),
        "{text}"
    );
    assert!(text.contains("does not match the index"), "{text}");
}

#[test]
fn an_impossible_record_length_is_corruption() {
    plain();
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    let mut config = small_config(dir.path());
    config.max_record_bytes = 100;
    let (_, offset, text) = expect_corruption(Wal::open(config));
    assert!(text.contains("max_record_bytes"), "{text}");
    let first_big = (1..=5).find(|&i| payload(i).len() > 100).unwrap();
    let expected: u64 = SEGMENT_HEADER_LEN + (1..first_big).map(record_size).sum::<u64>();
    assert_eq!(offset, expected);
    assert!(path.exists());
}

#[test]
fn a_bad_segment_magic_is_corruption_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = five_records(dir.path());
    flip_byte(&path, 0);
    let (err_path, offset, text) = open_corrupt(dir.path());
    assert_eq!((err_path, offset), (path, 0));
    assert!(text.contains("magic"), "{text}");
}

#[test]
fn damage_in_a_non_last_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_or_more_segments(dir.path(), 80);
    let first = &files[0];
    let len = file_len(first);

    // A bad checksum in the final record of a non-last segment.
    flip_byte(first, len - 1);
    let (err_path, _, text) = open_corrupt(dir.path());
    assert_eq!(&err_path, first);
    assert!(text.contains("checksum"), "{text}");
    flip_byte(first, len - 1);

    // A non-last segment cut short.
    let f = OpenOptions::new().write(true).open(first).unwrap();
    f.set_len(len - 2).unwrap();
    let (err_path, _, _) = open_corrupt(dir.path());
    assert_eq!(&err_path, first);
    assert_eq!(file_len(first), len - 2, "corruption must not truncate");
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_or_more_segments(dir.path(), 100);
    fs::remove_file(&files[1]).unwrap();
    let (err_path, offset, text) = open_corrupt(dir.path());
    assert_eq!((&err_path, offset), (&files[2], 0));
    assert!(text.contains("missing segment"), "{text}");
}

#[test]
fn remove_below_removes_only_whole_segments_entirely_below_and_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 200, 6);
    let firsts = segment_firsts(dir.path());
    assert!(firsts.len() >= 4);

    assert_eq!(wal.remove_below(1).unwrap(), 0);
    // Segment 0 holds firsts[0]..firsts[1]-1: all below firsts[1].
    assert_eq!(wal.remove_below(firsts[1]).unwrap(), 1);
    assert_eq!(wal.first_index(), firsts[1]);
    // Segment 1 still holds firsts[2]-1, which is not below itself.
    assert_eq!(wal.remove_below(firsts[2] - 1).unwrap(), 0);
    assert_eq!(segment_firsts(dir.path()), firsts[1..]);

    // Everything below: all but the active segment go.
    let active_first = *firsts.last().unwrap();
    assert_eq!(wal.remove_below(u64::MAX).unwrap(), firsts.len() - 2);
    assert_eq!(segment_firsts(dir.path()), vec![active_first]);
    assert_eq!((wal.first_index(), wal.last_index()), (active_first, 200));
    assert_all_payloads(&wal.reader(), active_first, 200);
    drop(wal);

    let (mut wal, report) = open_small(dir.path());
    assert_eq!((report.first_index, report.last_index), (active_first, 200));
    assert_eq!(report.entries, 201 - active_first);
    append_next(&mut wal, active_first, 201);
}

#[test]
fn remove_below_on_an_empty_active_segment_leaves_first_index_past_last_index() {
    let dir = tempfile::tempdir().unwrap();
    five_records(dir.path());
    File::create(segment_path(dir.path(), 6)).unwrap();
    let (mut wal, _) = open_small(dir.path());
    assert_eq!(wal.remove_below(6).unwrap(), 1);
    assert_eq!((wal.first_index(), wal.last_index()), (6, 5));
    assert!(wal.reader().read_range(6, 10, 100).unwrap().is_empty());
    drop(wal);
    let (_, report) = open_small(dir.path());
    assert_eq!(
        (report.first_index, report.last_index, report.entries),
        (6, 5, 0)
    );
}

#[test]
fn a_concurrent_reader_never_sees_beyond_last_index_and_every_payload_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(dir.path());
    let reader = wal.reader();
    const TOTAL: u64 = 400;
    thread::scope(|scope| {
        scope.spawn(move || append_range(&mut wal, 1, TOTAL, 7));
        let mut rounds = 0u64;
        loop {
            let before = reader.last_index();
            let got = reader.read_range(1, u64::MAX, usize::MAX).unwrap();
            let after = reader.last_index();
            assert!(got.len() as u64 >= before);
            assert!(got.len() as u64 <= after);
            for (k, (index, data)) in got.iter().enumerate() {
                assert_eq!(*index, k as u64 + 1);
                assert_eq!(*data, payload(*index));
            }
            // Small reads from the moving end too.
            let tail = reader.read_range(after.max(1), u64::MAX, 1).unwrap();
            assert!(
                tail.iter()
                    .all(|(i, d)| *i <= reader.last_index() && *d == payload(*i))
            );
            rounds += 1;
            if after == TOTAL {
                break;
            }
        }
        assert!(rounds > 0);
    });
}

#[test]
fn readers_racing_segment_removal_get_data_or_removed_never_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 50, 5);
    let reader = wal.reader();
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..20 {
                let from = 51 + round * 10;
                append_range(&mut wal, from, 10, 5);
                wal.remove_below(from).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            let first = reader.first_index();
            match reader.read_range(first, u64::MAX, usize::MAX) {
                Ok(got) => {
                    for (index, data) in got {
                        assert_eq!(data, payload(index));
                    }
                }
                Err(WalError::Removed { .. }) => {}
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    });
}

#[test]
fn an_invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path());
    config.segment_bytes = MIN_SEGMENT_BYTES - 1;
    assert!(matches!(
        Wal::open(config.clone()),
        Err(WalError::InvalidConfig(_))
    ));
    config.segment_bytes = MAX_SEGMENT_BYTES + 1;
    assert!(matches!(config.validate(), Err(WalError::InvalidConfig(_))));
    config.segment_bytes = MIN_SEGMENT_BYTES;
    config.max_record_bytes = 0;
    assert!(matches!(config.validate(), Err(WalError::InvalidConfig(_))));
    config.max_record_bytes = MAX_RECORD_BYTES + 1;
    assert!(matches!(config.validate(), Err(WalError::InvalidConfig(_))));
    assert!(WalConfig::new(dir.path()).validate().is_ok());
    assert!(matches!(
        WalConfig::new("").validate(),
        Err(WalError::InvalidConfig(_))
    ));
}

#[test]
fn a_record_over_max_record_bytes_is_rejected_without_writing_and_the_wal_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    config.max_record_bytes = 100;
    let (mut wal, _) = Wal::open(config).unwrap();
    let big = vec![0u8; 101];
    match wal.append_batch(&[b"ok", &big]) {
        Err(WalError::RecordTooLarge { len: 101, max: 100 }) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(wal.last_index(), 0);
    assert_eq!(wal.append_batch(&[&big[..100]]).unwrap(), 1);
}

#[test]
fn wal_is_send_and_reader_is_send_sync_clone() {
    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send::<Wal>();
    send_sync_clone::<WalReader>();
}

/// Test IO seam: injects a failing sync or a half-done write.
#[derive(Clone, Default)]
struct FaultyIo {
    fail_sync: Arc<AtomicBool>,
    half_write: Arc<AtomicBool>,
}

impl SegmentIo for FaultyIo {
    fn write_all_at(
        &mut self,
        file: &crate::disk::File,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        if self.half_write.load(Ordering::SeqCst) {
            file.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::other("injected write failure"));
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&mut self, file: &crate::disk::File) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync_data failure"));
        }
        file.sync_data()
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }
}

/// A WAL in `dir` writing through a [`FaultyIo`] that fails nothing yet.
fn faulty(dir: &Path) -> (FaultyIo, Wal) {
    let io = FaultyIo::default();
    let (wal, _) = Wal::open_with_io(small_config(dir), Box::new(io.clone())).unwrap();
    (io, wal)
}

/// [`faulty`] in a new directory, holding records 1..=3, and a reader of it.
fn faulty_with_three() -> (tempfile::TempDir, FaultyIo, Wal, WalReader) {
    let dir = tempfile::tempdir().unwrap();
    let (io, mut wal) = faulty(dir.path());
    append_range(&mut wal, 1, 3, 3);
    let reader = wal.reader();
    (dir, io, wal, reader)
}

#[test]
fn a_failed_sync_hides_the_batch_from_readers_and_requires_reopen() {
    let (dir, io, mut wal, reader) = faulty_with_three();

    io.fail_sync.store(true, Ordering::SeqCst);
    let err = wal.append_batch(&[&payload(4)]).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000001.wal"),
        "{err}"
    );
    assert_eq!(reader.last_index(), 3);
    assert!(reader.read_range(4, 4, usize::MAX).unwrap().is_empty());

    io.fail_sync.store(false, Ordering::SeqCst);
    let again = wal.append_batch(&[&payload(4)]).unwrap_err();
    assert!(again.to_string().contains("reopened"), "{again}");
    assert_eq!(reader.last_index(), 3);

    // The record was fully written (only its sync failed), so recovery
    // keeps it: it was never acknowledged, its fate is up to the disk.
    reopen_intact(wal, dir.path(), 4);
}

#[test]
fn a_half_written_batch_is_invisible_and_cut_as_a_torn_tail_on_reopen() {
    plain();
    let (dir, io, mut wal, reader) = faulty_with_three();

    io.half_write.store(true, Ordering::SeqCst);
    assert!(matches!(
        append_payloads(&mut wal, 4..6),
        Err(WalError::Io { .. })
    ));
    assert_eq!(reader.last_index(), 3);
    assert_all_payloads(&reader, 1, 3);
    drop(wal);

    let written = (record_size(4) + record_size(5)) / 2;
    let (mut wal, report) = open_small(dir.path());
    let kept = if written >= record_size(4) { 4 } else { 3 };
    assert_eq!(report.last_index, kept);
    let expected_cut = written - if kept == 4 { record_size(4) } else { 0 };
    assert_eq!(report.torn_bytes_truncated, expected_cut);
    append_next(&mut wal, 1, kept + 1);
}

#[test]
fn a_failed_sync_while_rolling_a_segment_leaves_a_log_that_reopens_contiguously() {
    let dir = tempfile::tempdir().unwrap();
    let (io, mut wal) = faulty(dir.path());
    // Fill the first segment to just below the limit.
    let mut i = 1;
    while segment_files(dir.path()).len() == 1
        && file_len(&segment_files(dir.path())[0]) + record_size(i) < MIN_SEGMENT_BYTES
    {
        wal.append_batch(&[&payload(i)]).unwrap();
        i += 1;
    }
    io.fail_sync.store(true, Ordering::SeqCst);
    assert!(append_payloads(&mut wal, i..i + 4).is_err());
    assert_eq!(wal.last_index(), i - 1);
    // The seal failed before the next segment was created.
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert!(report.last_index >= i - 1);
    assert_all_payloads(&wal.reader(), 1, report.last_index);
}

#[test]
fn a_cut_suffix_is_gone_after_reopening_and_appends_go_on_from_the_cut() {
    for cut in [1u64, 2, 57, 150, 299, 300, 301] {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = filled(dir.path(), 300, 7);
        assert!(segment_files(dir.path()).len() > 3);
        wal.truncate_from(cut).unwrap();
        let last = cut.min(301) - 1;
        assert_eq!(wal.last_index(), last, "cut at {cut}");
        if last >= 1 {
            assert_all_payloads(&wal.reader(), 1, last);
        }
        // Appends go on from the cut, and what follows it reads back, across a reopen.
        append_range(&mut wal, cut, 20, 3);
        drop(wal);
        let (wal, report) = open_small(dir.path());
        assert_eq!(report.torn_bytes_truncated, 0, "the cut left no torn tail");
        assert_eq!(wal.last_index(), cut + 19);
        assert_all_payloads(&wal.reader(), 1, cut + 19);
    }
}

#[test]
fn a_cut_below_the_first_index_held_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 300, 5);
    wal.remove_below(200).unwrap();
    let first = wal.first_index();
    assert!(first > 1);
    let e = wal.truncate_from(first - 1).unwrap_err();
    assert!(matches!(e, WalError::Removed { .. }), "{e}");
    assert_eq!(wal.last_index(), 300, "nothing was cut");
}

#[test]
fn a_restart_drops_every_record_and_goes_on_after_the_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 120, 4);
    let removed = wal.restart_at(1001).unwrap();
    assert!(removed >= 1);
    assert_eq!((wal.first_index(), wal.last_index()), (1001, 1000));
    assert_eq!(segment_firsts(dir.path()), vec![1001]);
    append_range(&mut wal, 1001, 10, 2);
    drop(wal);
    let (wal, _) = open_small(dir.path());
    assert_eq!((wal.first_index(), wal.last_index()), (1001, 1010));
    assert_all_payloads(&wal.reader(), 1001, 1010);
}

/// A follower restarted with several segments cuts a suffix that begins inside an older
/// segment (opened read-only at open) and appends after the cut.
#[test]
fn a_cut_into_an_older_segment_after_reopening_can_be_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), 300, 7);
    drop(wal);
    let (mut wal, _) = open_small(dir.path());
    let firsts = segment_firsts(dir.path());
    assert!(firsts.len() > 3);
    // Exactly at the start of the third segment, then inside the second.
    for cut in [firsts[2], firsts[1] + 2] {
        wal.truncate_from(cut).unwrap();
        append_range(&mut wal, cut, 5, 2);
        assert_all_payloads(&wal.reader(), 1, cut + 4);
    }
    let last = wal.last_index();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_eq!(wal.last_index(), last);
    assert_all_payloads(&wal.reader(), 1, last);
}

/// Counts the writer's syncs (of data, and of the directory).
#[derive(Clone, Default)]
struct CountingIo {
    syncs: Arc<std::sync::atomic::AtomicU64>,
    dirs: Arc<std::sync::atomic::AtomicU64>,
}

impl SegmentIo for CountingIo {
    fn write_all_at(
        &mut self,
        file: &crate::disk::File,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&mut self, file: &crate::disk::File) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        file.sync_data()
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.dirs.fetch_add(1, Ordering::SeqCst);
        sync_dir(dir)
    }
}

#[test]
fn an_unsynced_append_is_readable_at_once_and_synced_by_its_sync_point_or_when_it_starts_a_segment()
{
    let dir = tempfile::tempdir().unwrap();
    let io = CountingIo::default();
    let (mut wal, _) = Wal::open_with_io(small_config(dir.path()), Box::new(io.clone())).unwrap();
    let owned: Vec<Vec<u8>> = (1..4).map(payload).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    assert_eq!(wal.append_batch_unsynced(&refs).unwrap(), 1);
    // Written and readable (the Raft reader replicates it), not synced by the writer.
    assert_eq!(io.syncs.load(Ordering::SeqCst), 0);
    assert_all_payloads(&wal.reader(), 1, 3);
    let point = wal.sync_point();
    assert_eq!(point.last_index(), 3);
    point.sync().unwrap();
    // A batch that fills the segment seals it (synced) before its successor exists.
    let many: Vec<Vec<u8>> = (4..60).map(payload).collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    wal.append_batch_unsynced(&refs).unwrap();
    assert!(segment_files(dir.path()).len() > 1);
    assert!(
        io.syncs.load(Ordering::SeqCst) >= 2,
        "the sealed segment and the new one"
    );
    wal.sync_point().sync().unwrap();
    drop(wal);
    let (wal, report) = open_small(dir.path());
    assert_eq!(report.last_index, 59);
    assert_all_payloads(&wal.reader(), 1, 59);
}

/// A synced batch is one `sync_data` before it returns (what an append's acknowledgement
/// rests on), and the batch that starts a segment also syncs the directory (the new file's
/// name). Only a power loss shows a sync left out otherwise (`tests/power_loss.rs`, with the
/// simulated disk): this counts them in every `cargo test`.
#[test]
fn a_synced_batch_is_synced_before_it_returns_and_a_new_segment_syncs_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let io = CountingIo::default();
    let (mut wal, _) = Wal::open_with_io(small_config(dir.path()), Box::new(io.clone())).unwrap();
    let counts = || {
        (
            io.syncs.load(Ordering::SeqCst),
            io.dirs.load(Ordering::SeqCst),
        )
    };
    let before = counts();
    for i in 1..=3u64 {
        let p = payload(i);
        wal.append_batch(&[p.as_slice()]).unwrap();
        assert_eq!(counts().0, before.0 + i, "one sync per synced batch");
    }
    let segments = segment_files(dir.path()).len();
    let dirs = counts().1;
    let mut next = 4;
    while segment_files(dir.path()).len() == segments {
        let p = payload(next);
        wal.append_batch(&[p.as_slice()]).unwrap();
        next += 1;
    }
    assert!(
        counts().1 > dirs,
        "the batch that started a segment synced the directory"
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
    let err = Wal::open(WalConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, WalError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
    drop(wal);
    Wal::open(WalConfig::new(dir.path())).unwrap();
}
