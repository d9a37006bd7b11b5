//! Unit tests of preallocation: the zero-filled tail kept ahead of the writer, recovery
//! reading it as the end of the log, a sealed segment cut to its records, and the filler
//! never writing over a record.

use super::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

fn config(dir: &Path, segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        preallocate: true,
        ..WalConfig::new(dir)
    }
}

fn payload(i: u64) -> Vec<u8> {
    let n = (i * 53 % 400) as usize + 1;
    (0..n).map(|j| (i as usize * 7 + j + 1) as u8).collect()
}

/// Appends payload(i) for `from..to`, in batches of 1..=7.
fn append(wal: &mut Wal, from: u64, to: u64) {
    let mut i = from;
    let mut size = 1;
    while i < to {
        let k = size.min(to - i);
        let owned: Vec<Vec<u8>> = (i..i + k).map(payload).collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        assert_eq!(wal.append_batch(&refs).unwrap(), i);
        i += k;
        size = size % 7 + 1;
    }
}

fn assert_payloads(wal: &Wal, first: u64, last: u64) {
    assert_eq!((wal.first_index(), wal.last_index()), (first, last));
    let got = wal.reader().read_range(first, last, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, last + 1 - first);
    for (index, bytes) in got {
        assert_eq!(bytes, payload(index), "payload of index {index}");
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    list_segments(dir).unwrap().pop().unwrap().1
}

/// Where the records of a log end in its last segment (reopened to learn it).
fn logical_end(wal: &Wal) -> u64 {
    wal.active.len
}

#[test]
fn no_record_has_an_all_zero_header() {
    // The rule recovery's zero-filled tail rests on: the checksum of a length is never 0.
    assert_ne!(record_crc(&0u32.to_le_bytes(), &[]), 0);
}

#[test]
fn the_active_segment_is_zero_filled_ahead_and_reopens_at_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap().0;
    append(&mut wal, 1, 301);
    wal.prealloc.settle();
    let end = logical_end(&wal);
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        len,
        end + prealloc::AHEAD,
        "zero-filled to AHEAD past the records"
    );
    drop(wal);

    let (mut wal, report) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_eq!(logical_end(&wal), end);
    assert_payloads(&wal, 1, 300);
    append(&mut wal, 301, 401);
    drop(wal);
    let (wal, report) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_payloads(&wal, 1, 400);
}

#[test]
fn without_preallocation_nothing_is_written_past_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(WalConfig::new(dir.path())).unwrap().0;
    append(&mut wal, 1, 51);
    let len = std::fs::metadata(last_segment(dir.path())).unwrap().len();
    assert_eq!(len, logical_end(&wal));
}

#[test]
fn a_record_torn_over_the_zero_filled_tail_is_cut_and_appending_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap().0;
    append(&mut wal, 1, 101);
    wal.prealloc.settle();
    let end = logical_end(&wal);
    drop(wal);
    // A crash in the middle of writing record 101: its header and part of its payload reached
    // the disk, the zeros after them are the preallocated tail.
    let file = OpenOptions::new()
        .write(true)
        .open(last_segment(dir.path()))
        .unwrap();
    let mut torn = 300u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[7u8; 120]);
    file.write_all_at(&torn, end).unwrap();
    drop(file);

    let (mut wal, report) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert!(report.torn_bytes_truncated > 0, "{report:?}");
    assert_payloads(&wal, 1, 100);
    append(&mut wal, 101, 121);
    drop(wal);
    let (wal, _) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert_payloads(&wal, 1, 120);
}

#[test]
fn an_all_zero_header_with_bytes_after_it_is_corruption_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap().0;
    append(&mut wal, 1, 101);
    wal.prealloc.settle();
    let end = logical_end(&wal);
    drop(wal);
    let path = last_segment(dir.path());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[1], end + 5000).unwrap();
    drop(file);

    match Wal::open(config(dir.path(), 64 * 1024 * 1024)) {
        Err(WalError::Corruption {
            path: p,
            offset,
            reason,
        }) => {
            assert_eq!((p, offset), (path, end));
            assert!(reason.contains("all-zero record header"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn sealed_segments_are_cut_to_their_records_and_zeros_after_one_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    // Filled for 1 MiB segments, then run with 64 KiB ones: the first segment is sealed at
    // 64 KiB with zeros past that, which sealing cuts.
    let mut wal = Wal::open(config(dir.path(), 1024 * 1024)).unwrap().0;
    append(&mut wal, 1, 11);
    wal.prealloc.settle();
    drop(wal);
    let mut wal = Wal::open(config(dir.path(), 64 * 1024)).unwrap().0;
    append(&mut wal, 11, 2001);
    wal.prealloc.settle();
    drop(wal);
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let (wal, report) = Wal::open(config(dir.path(), 64 * 1024)).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_payloads(&wal, 1, 2000);
    drop(wal);

    // A sealed segment never keeps a zero-filled tail: one there is damage.
    let sealed = &segments[1].1;
    let len = std::fs::metadata(sealed).unwrap().len();
    let file = OpenOptions::new().write(true).open(sealed).unwrap();
    file.write_all_at(&[0; 4096], len).unwrap();
    drop(file);
    match Wal::open(config(dir.path(), 64 * 1024)) {
        Err(WalError::Corruption { path, reason, .. }) => {
            assert_eq!(&path, sealed);
            assert!(reason.contains("non-last segment"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn the_filler_never_writes_over_a_record_while_the_writer_races_it() {
    // Unsynced appends outrun the filler again and again, so writes past the zero-filled end
    // (under the filler's lock) and writes below it (without) both happen many times.
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        sync: false,
        ..config(dir.path(), 8 * 1024 * 1024)
    };
    let mut wal = Wal::open(cfg.clone()).unwrap().0;
    append(&mut wal, 1, 60_001);
    wal.prealloc.settle();
    assert_payloads(&wal, 1, 60_000);
    drop(wal);
    let (wal, report) = Wal::open(cfg).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_payloads(&wal, 1, 60_000);
}

#[test]
fn a_cut_and_a_restart_refill_from_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap().0;
    append(&mut wal, 1, 201);
    wal.prealloc.settle();
    wal.truncate_from(150).unwrap();
    append(&mut wal, 150, 171);
    wal.prealloc.settle();
    let end = logical_end(&wal);
    let len = std::fs::metadata(last_segment(dir.path())).unwrap().len();
    assert_eq!(len, end + prealloc::AHEAD);
    drop(wal);
    let (mut wal, _) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert_payloads(&wal, 1, 170);

    wal.restart_at(1000).unwrap();
    append(&mut wal, 1000, 1050);
    wal.prealloc.settle();
    drop(wal);
    let (wal, report) = Wal::open(config(dir.path(), 64 * 1024 * 1024)).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_payloads(&wal, 1000, 1049);
}

#[test]
fn the_filler_never_writes_zeros_over_a_tail_mark() {
    // A group that outruns the filler moves `zeroed` to its end; the tail mark after it
    // must move it past itself, or the filler zero-fills from the group's end, the mark too.
    let dir = tempfile::tempdir().unwrap();
    let marked = WalConfig {
        marks: true,
        ..config(dir.path(), 64 * 1024 * 1024)
    };
    let mut wal = Wal::open(marked.clone()).unwrap().0;
    let big = vec![7u8; (prealloc::AHEAD + prealloc::CHUNK) as usize];
    assert_eq!(wal.append_batch(&[&big]).unwrap(), 1);
    let end = logical_end(&wal);
    wal.prealloc.settle();
    let path = last_segment(dir.path());
    let f = OpenOptions::new().read(true).open(&path).unwrap();
    let mut tail = [0u8; MARK_LEN as usize];
    f.read_exact_at(&mut tail, end).unwrap();
    assert_eq!(
        tail,
        segment::mark(end),
        "the tail mark survives the filler"
    );
    drop(wal);
    let (wal, report) = Wal::open(marked).unwrap();
    assert_eq!((report.last_index, report.torn_bytes_truncated), (1, 0));
    drop(wal);
}
