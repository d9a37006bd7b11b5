//! Durable, append-only write-ahead log (WAL) made of segment files.
//!
//! # What this module owns
//!
//! Durable storage of opaque records (`&[u8]` payloads) under dense indexes
//! starting at 1: appending them with group commit (one `fdatasync` per
//! batch), recovering them after a crash (cutting a torn tail, refusing real
//! corruption), reading them back by index range, and removing old whole
//! segments.
//!
//! # What it must not do
//!
//! It knows nothing of gRPC, of how entries are encoded (payloads are opaque
//! bytes the caller encodes), nor of group-commit *scheduling*: the caller
//! decides which payloads go into one [`Wal::append_batch`] call and runs the
//! writer on a dedicated thread. Everything here is synchronous and std only.
//!
//! # On-disk format
//!
//! The log is a directory of segment files named `{first_index:020}.wal`, the
//! zero padded index of the segment's first record, e.g.
//! `00000000000000000001.wal`. Other file names in the directory are ignored.
//!
//! Each segment is:
//!
//! ```text
//! [magic: 8 bytes = b"LPWAL\0\0\x01", or b"LPWAL\0\0\x02" when created with marks]
//! [[mark] record+]*   (a mark starts each group, in a segment created with marks)
//! [zero bytes]*        (the last segment only, when preallocated)
//! record = [len: u32 LE][crc32c: u32 LE][payload: len bytes]
//! mark   = [0x8000_0008: u32 LE][crc32c: u32 LE][synced end: u64 LE]
//! ```
//!
//! `crc32c` covers the 4 `len` bytes followed by the payload. A record's index
//! is implied by its position: segment first index + ordinal in the segment.
//! A payload is shorter than 2 GiB, so a length with its top bit set is never a record's.
//!
//! With [`WalConfig::marks`] (the LogStore's, a log replica's and a shard journal's), segments are created with
//! the second magic, and each group an append writes starts, in each such segment it touches,
//! with a **mark**: the byte offset in that segment up to which the writer knew the file was
//! synced when it wrote the group. Marks take no index; they are what tells a power loss from
//! corruption at open (below). A segment created without marks never gets one (a build from
//! before them would read it as a torn tail); a log from before marks gets them from its next
//! segment on.
//!
//! A new segment is started once the current one has reached
//! [`WalConfig::segment_bytes`] (a single record may exceed it). A payload is
//! at most [`WalConfig::max_record_bytes`] long.
//!
//! Segments are contiguous: segment N+1's first index is segment N's last
//! index + 1. Only the last segment (the active one) is ever written to.
//!
//! # Recovery rules ([`Wal::open`])
//!
//! Every record of every segment is checksummed at open.
//!
//! * **Zero-filled tail** (last segment only; [`WalConfig::preallocate`]): an all-zero
//!   record header followed only by zeros to the end of the file is where the records end.
//!   The zeros are kept for the writer. No record has an all-zero header (the checksum of a
//!   length is never 0).
//! * **Torn tail** (last segment only): the final record is incomplete (its
//!   header or payload runs past the end of the file), or its checksum fails
//!   and it ends exactly at the end of the file or only zeros follow it. Such a write was never
//!   acknowledged, so the file is truncated back to the end of the last good
//!   record and fsynced; [`OpenReport::torn_bytes_truncated`] says how much
//!   was cut and a `tracing::warn!` is logged. A last segment shorter than
//!   the 8-byte magic whose bytes are a prefix of the magic (crash right after
//!   creating it) gets its header rewritten. A torn tail with a valid mark in it that says
//!   the segment was synced past its start (a synced length damaged into one that runs past
//!   the end) is corruption instead.
//! * **Writes in flight at a power loss** (last segment, created with marks): a damaged
//!   record with more bytes after it. A power loss can keep a later page of unsynced writes
//!   and lose an earlier one (the LogStore writes groups ahead of their sync; a disk cache
//!   reorders the pages of one write). If no valid mark after the damage says the file was synced
//!   past it, nothing from the damage on was ever acknowledged (an append is answered only
//!   after its sync): it is cut like a torn tail. If one does, synced bytes were damaged:
//!   corruption, naming the mark.
//!   A mark says what was synced when its group was *written*, so a sync that finds nothing
//!   written since it was planned (an idle log) leaves a *tail mark* after the records,
//!   saying they are synced (as does an open, once it synced what it kept): damage to the
//!   last groups is then refused too. The next group
//!   starts at the same byte, its own mark written over it. A group whose sync ended while
//!   later groups were in flight, with no tail mark after it yet, is not vouched for, and
//!   damage to it is cut.
//! * **A segment of zeros** (last segment only): created and zero-filled ahead of the
//!   writer, its magic never synced; its header is written again.
//! * **Corruption**: anything else — in a segment without marks, a bad checksum followed by
//!   more bytes, an impossible header, an all-zero header with non-zero bytes after it; zeros
//!   after the last record of a non-last segment, a bad record anywhere in a non-last segment,
//!   a bad magic, a missing segment — is [`WalError::Corruption`] naming the file and byte
//!   offset. Nothing is skipped or truncated in that case.
//!
//! # Durability and visibility
//!
//! [`Wal::append_batch`] writes all records of a batch, then calls
//! `sync_data` once (plus a directory fsync when a segment was created), and
//! only then publishes the new bounds to readers: readers never see records
//! that are not durable. When a batch crosses a segment boundary, the full
//! segment is written and `sync_data`-ed *before* the next segment file is
//! created (always, even with `sync = false`), so a segment file never exists
//! unless its predecessor is complete; recovery can therefore treat any
//! damage in a non-last segment as corruption.
//!
//! [`Wal::append_batch_unsynced`] (the Raft log's) publishes before the sync, which the
//! caller runs through [`Wal::sync_point`] off the writer's lock and reports on its own.
//!
//! After any IO error from `append_batch` the state on disk is unknown (the
//! records of the failed batch may or may not be there after a restart; they
//! were never acknowledged). The [`Wal`] then refuses further appends: the
//! only way forward is to drop it and [`Wal::open`] again.
//!
//! # Memory and resources
//!
//! The in-memory index costs 4 bytes per entry (a `u32` offset per record)
//! plus a small fixed cost per segment, and one open file descriptor per
//! segment. Readers ([`WalReader`]) share the segment list with the writer
//! through `Arc<RwLock<..>>` and use positional reads (`read_at`) on their own
//! `Arc<File>`, so they never disturb the writer's position, and a segment
//! removed while a read is in flight stays readable through the open file
//! (unlinking an open file is fine on Unix).

use crate::disk as fs;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

mod cut;
mod prealloc;
use prealloc::Prealloc;
mod segment;
use segment::*;
mod read;
pub use read::WalReader;
mod recovery;
use recovery::*;
#[cfg(test)]
mod marks_tests;
#[cfg(test)]
mod prealloc_tests;
#[cfg(test)]
mod tests;

/// The 8 bytes a segment file without marks starts with.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LPWAL\0\0\x01";
/// The 8 bytes a segment file written with marks ([`WalConfig::marks`]) starts with.
pub const SEGMENT_MAGIC_MARKED: &[u8; 8] = b"LPWAL\0\0\x02";
/// Smallest accepted [`WalConfig::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Default [`WalConfig::segment_bytes`] (64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default [`WalConfig::max_record_bytes`] (64 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
/// Largest accepted [`WalConfig::max_record_bytes`] (2 GiB - 1): a length with its top bit set
/// is a mark's.
pub const MAX_RECORD_BYTES: u32 = (1 << 31) - 1;
/// Largest accepted [`WalConfig::segment_bytes`] (1 GiB): a record's offset in its segment
/// keeps its top bit for "a mark comes before it".
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

const SEGMENT_HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
const RECORD_HEADER_LEN: u64 = 8;
/// A mark's header `len`: top bit set, then the length of its payload (the synced end).
const MARK_TAG: u32 = (1 << 31) | 8;
/// A mark's size on disk: header and payload.
const MARK_LEN: u64 = 16;
/// In a segment's offsets: a mark comes right before this record.
const MARKED: u32 = 1 << 31;
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// The magic of a segment created with (or without) marks.
fn magic(marks: bool) -> &'static [u8; 8] {
    if marks {
        SEGMENT_MAGIC_MARKED
    } else {
        SEGMENT_MAGIC
    }
}

/// Whether `dir` holds segment files (a WAL is there, or was), without opening it.
pub fn holds_segments(dir: &Path) -> bool {
    list_segments(dir).is_ok_and(|s| !s.is_empty())
}

/// Errors of the WAL. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Another process (or another open in this one) has the directory.
    #[error(
        "{} is in use by another process (is a second server running on the same data directory?): each data directory belongs to one server at a time",
        .dir.display()
    )]
    InUse { dir: PathBuf },
    /// An operating-system IO error on `path`.
    #[error("WAL I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The segment `path` holds data that cannot be a valid (or torn) log.
    #[error("WAL corruption in {} at byte offset {offset}: {reason}", .path.display())]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The requested index lies below the first index still held.
    #[error("WAL entry {index} has been removed (first index held is {first})")]
    Removed { index: u64, first: u64 },
    /// The [`WalConfig`] is not usable.
    #[error("invalid WAL config: {0}")]
    InvalidConfig(String),
    /// A payload is longer than [`WalConfig::max_record_bytes`].
    #[error("WAL record of {len} bytes exceeds max_record_bytes ({max})")]
    RecordTooLarge { len: usize, max: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corruption(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corruption {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Configuration of a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// A new segment is started once the active one is at least this long.
    /// At least [`MIN_SEGMENT_BYTES`], at most [`MAX_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Largest payload accepted (and believed when reading a header); at most
    /// [`MAX_RECORD_BYTES`].
    pub max_record_bytes: u32,
    /// `true` (default): `sync_data` after every `append_batch`. `false`
    /// trades durability for speed (records are visible once written).
    pub sync: bool,
    /// Keep the active segment zero-filled ahead of its end, on a thread of its own, so that
    /// a sync flushes data and no size change (see `prealloc.rs`). Off by default: the zeros
    /// are written in addition to the records (the LogStore turns it on; a shard's journal,
    /// whose bytes written per byte received are a goal of their own, does not).
    pub preallocate: bool,
    /// Create segments with marks and start each group in them with a mark holding the
    /// synced end (see the module docs), so that a power loss that kept later unsynced writes
    /// and lost earlier ones opens as a cut tail, not as corruption. Off by default (a WAL
    /// from before marks, and the tests of that format).
    pub marks: bool,
}

impl WalConfig {
    /// A config for `dir` with the defaults: 64 MiB segments, 64 MiB max
    /// record, `sync = true`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            sync: true,
            preallocate: false,
            marks: false,
        }
    }

    /// Checks the limits documented on each field.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.dir.as_os_str().is_empty() {
            return Err(WalError::InvalidConfig("dir is empty".into()));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes {} is below the minimum of {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes {} is above the maximum of {MAX_SEGMENT_BYTES} (1 GiB)",
                self.segment_bytes,
            )));
        }
        if self.max_record_bytes == 0 {
            return Err(WalError::InvalidConfig(
                "max_record_bytes must be at least 1".into(),
            ));
        }
        if self.max_record_bytes > MAX_RECORD_BYTES {
            return Err(WalError::InvalidConfig(format!(
                "max_record_bytes {} is above the maximum of {MAX_RECORD_BYTES} (2 GiB - 1)",
                self.max_record_bytes
            )));
        }
        Ok(())
    }
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Number of entries held (`last_index - first_index + 1`, or 0).
    pub entries: u64,
    /// First index held (1 for a fresh log).
    pub first_index: u64,
    /// Last index held (`first_index - 1` when empty).
    pub last_index: u64,
    /// Bytes cut from the end of the last segment as a torn write.
    pub torn_bytes_truncated: u64,
    /// Number of segment files.
    pub segments: usize,
}

/// A sync of the records written up to [`SyncPoint::last_index`] (see [`Wal::sync_point`]).
pub struct SyncPoint {
    file: Arc<fs::File>,
    path: Arc<Path>,
    last_index: u64,
    sync: bool,
    /// Where the synced end goes once this sync is done, and what it becomes.
    synced: SyncedLock,
    at: SyncedEnd,
    /// Where a tail mark is written from here.
    past_end: prealloc::PastEnd,
}

impl SyncPoint {
    /// The last index this sync makes durable.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Runs the sync.
    pub fn sync(&self) -> Result<(), WalError> {
        if self.sync {
            self.file.sync_data().map_err(io_err(&self.path))?;
            advance(&self.synced, self.at);
            vouch(&self.synced, &self.file, self.at, &self.past_end);
        }
        Ok(())
    }
}

/// The single writer of the log. Not `Sync`; `Send` so it can live on a
/// dedicated thread.
pub struct Wal {
    config: WalConfig,
    shared: SharedLock,
    active: Active,
    io: Box<dyn SegmentIo>,
    /// Set after an IO error in `append_batch`: the WAL must be reopened.
    failed: bool,
    /// Zero-fills the active segment ahead of the writer (dropped, its thread joined, before
    /// the directory's lock is released).
    prealloc: Prealloc,
    /// How far the active segment is known synced: what the next group's mark says.
    synced: SyncedLock,
    /// The directory's lock, held for as long as this `Wal` lives (`None` on the simulated
    /// disk).
    _lock: Option<std::fs::File>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.config.dir)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (or creates) the log in `config.dir`, verifying every record and
    /// cutting a torn tail of the last segment (see the module docs).
    pub fn open(config: WalConfig) -> Result<(Wal, OpenReport), WalError> {
        Self::open_with_io(config, Box::new(StdIo))
    }

    fn open_with_io(
        config: WalConfig,
        io: Box<dyn SegmentIo>,
    ) -> Result<(Wal, OpenReport), WalError> {
        config.validate()?;
        let dir = config.dir.as_path();
        fs::data_dir_not_a_file(dir).map_err(WalError::InvalidConfig)?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Before anything is read or cut: a torn tail may be another writer's record.
        let lock = crate::disk::lock_dir(dir).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => WalError::InUse {
                dir: dir.to_owned(),
            },
            _ => io_err(&dir.join(crate::disk::LOCK_FILE))(e),
        })?;
        let names = list_segments(dir)?;
        let mut torn_bytes_truncated = 0;
        let mut segments: Vec<Segment> = Vec::with_capacity(names.len().max(1));

        if names.is_empty() {
            segments.push(create_first_segment(dir, 1, config.marks)?);
        }
        let count = names.len();
        for (i, (first_index, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            if let Some(prev) = segments.last() {
                let expected = prev.next_index();
                if first_index != expected {
                    return Err(corruption(
                        &path,
                        0,
                        format!(
                            "segment starts at index {first_index} but the previous segment {} \
                             ends at index {} (missing segment)",
                            prev.path.display(),
                            expected - 1
                        ),
                    ));
                }
            }
            let (segment, cut) = open_segment(
                path,
                first_index,
                is_last,
                config.max_record_bytes,
                config.marks,
            )?;
            torn_bytes_truncated += cut;
            segments.push(segment);
        }

        let shared = Shared { segments };
        let first_index = shared.first_index();
        let last_index = shared.last_index();
        let report = OpenReport {
            entries: last_index + 1 - first_index,
            first_index,
            last_index,
            torn_bytes_truncated,
            segments: shared.segments.len(),
        };
        let last = shared.segments.last().expect("segment list is never empty");
        let synced = synced_at_open(&config, last)?;
        let active = Active {
            path: last.path.clone(),
            first_index: last.first_index,
            file: last.file.clone(),
            len: last.end,
            count: last.offsets.len() as u64,
            marked: last.marked,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            first_index,
            last_index,
            torn_bytes_truncated,
            "WAL opened"
        );
        let prealloc = Prealloc::start(config.preallocate, config.segment_bytes);
        prealloc.fill_from(&active.file, &active.path, active.len);
        let wal = Wal {
            config,
            shared: Arc::new(RwLock::new(shared)),
            active,
            io,
            failed: false,
            prealloc,
            synced,
            _lock: lock,
        };
        Ok((wal, report))
    }

    /// The configuration this log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// First index held: 1 for a fresh log, higher after [`Wal::remove_below`].
    pub fn first_index(&self) -> u64 {
        read_lock(&self.shared).first_index()
    }

    /// Last index written (durable, unless written by [`Wal::append_batch_unsynced`] and not
    /// yet synced): 0 for a fresh log, `first_index - 1` when empty.
    pub fn last_index(&self) -> u64 {
        read_lock(&self.shared).last_index()
    }

    /// Appends all payloads as consecutive records, then makes them durable
    /// with ONE `sync_data` call (group commit; a batch crossing into a new
    /// segment also syncs the full segment and the directory). Returns the
    /// index of the first one (for an empty batch: the index the next record
    /// will get, without touching the disk).
    ///
    /// Readers see the records only once they are durable. On an IO error
    /// nothing of the batch becomes visible and the error is returned; the
    /// `Wal` is then unusable ("must reopen"): every later append fails.
    /// A payload over `max_record_bytes` is rejected up front with
    /// [`WalError::RecordTooLarge`] and leaves the `Wal` usable.
    pub fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<u64, WalError> {
        self.append_checked(payloads, true)
    }

    /// Appends like [`Wal::append_batch`], but leaves the final `sync_data` to the caller,
    /// through [`Wal::sync_point`]: the records are visible to readers *before* they are
    /// durable. For the Raft log, whose library reads entries back as soon as they are
    /// written and learns separately when they are flushed (so that the leader's fsync runs
    /// while the entries are already on their way to the followers). A batch that starts a
    /// new segment is still synced here (a segment never exists before its predecessor is
    /// durable).
    pub fn append_batch_unsynced(&mut self, payloads: &[&[u8]]) -> Result<u64, WalError> {
        self.append_checked(payloads, false)
    }

    /// The checks both appends share, then the append; any IO error marks the `Wal` failed.
    fn append_checked(&mut self, payloads: &[&[u8]], sync_last: bool) -> Result<u64, WalError> {
        self.refuse_if_failed()?;
        let max = self.config.max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.len() > max as usize) {
            return Err(WalError::RecordTooLarge { len: p.len(), max });
        }
        let first = self.active.next_index();
        if payloads.is_empty() {
            return Ok(first);
        }
        match self.append_inner(payloads, sync_last) {
            Ok(()) => Ok(first),
            Err(err) => {
                self.failed = true;
                tracing::error!(error = %err, first_index = first, "WAL append failed; reopen required");
                Err(err)
            }
        }
    }

    /// What makes every record written so far durable: a sync of the active segment (each
    /// earlier segment was synced when it was sealed). Taken under the writer's lock, run
    /// outside it, so that the next batch is written while this one syncs.
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            file: self.active.file.clone(),
            path: self.active.path.clone(),
            last_index: self.last_index(),
            sync: self.config.sync,
            synced: self.synced.clone(),
            at: synced_now(&self.synced, self.active.first_index, self.active.len),
            past_end: self.prealloc.past_end(),
        }
    }

    fn append_inner(&mut self, payloads: &[&[u8]], sync_last: bool) -> Result<(), WalError> {
        if self.config.marks {
            // No tail mark where this group goes, from now on.
            set_written(&self.synced, None);
        }
        let estimate: usize = payloads
            .iter()
            .map(|p| p.len() + RECORD_HEADER_LEN as usize)
            .sum();
        let mut staged = vec![Staged {
            path: self.active.path.clone(),
            first_index: self.active.first_index,
            file: self.active.file.clone(),
            base_len: self.active.len,
            buf: Vec::with_capacity(estimate.min(self.config.segment_bytes as usize)),
            prior_count: self.active.count,
            offsets: Vec::new(),
            is_new: false,
            marked: self.active.marked,
        }];
        let first = self.active.next_index();
        for (next, payload) in (first..).zip(payloads) {
            let cur = staged.last_mut().expect("staged is never empty");
            if cur.len() >= self.config.segment_bytes && cur.count() > 0 {
                // Seal the full segment before its successor exists.
                self.flush(cur)?;
                let end = cur.len();
                self.prealloc
                    .seal(&cur.file, end)
                    .map_err(io_err(&cur.path))?;
                self.io.sync_data(&cur.file).map_err(io_err(&cur.path))?;
                let new = self.create_segment(next)?;
                self.prealloc.fill_from(&new.file, &new.path, 0);
                staged.push(new);
            }
            let cur = staged.last_mut().expect("staged is never empty");
            stage_record(cur, payload, &self.synced)?;
        }

        let new_segment = staged.len() > 1;
        let last = staged.last_mut().expect("staged is never empty");
        self.flush(last)?;
        if self.config.marks {
            // A tail mark only in a segment created with marks (in an older one it would be
            // damage).
            let written = last.marked.then_some((last.first_index, last.len()));
            set_written(&self.synced, written);
        }
        let sync = self.config.sync && (sync_last || new_segment);
        if sync {
            self.io.sync_data(&last.file).map_err(io_err(&last.path))?;
            if new_segment {
                let dir = self.config.dir.as_path();
                self.io.sync_dir(dir).map_err(io_err(dir))?;
            }
            if self.config.marks {
                let at = synced_now(&self.synced, last.first_index, last.len());
                advance(&self.synced, at);
                if sync_last {
                    vouch(&self.synced, &last.file, at, &self.prealloc.past_end());
                }
            }
        }

        // Durable: publish to readers.
        let mut shared = write_lock(&self.shared);
        for s in staged {
            let end = s.len();
            let count = s.count();
            if s.is_new {
                shared.segments.push(Segment {
                    path: s.path.clone(),
                    first_index: s.first_index,
                    offsets: s.offsets,
                    end,
                    file: s.file.clone(),
                    marked: s.marked,
                });
            } else {
                let seg = shared
                    .segments
                    .last_mut()
                    .expect("segment list is never empty");
                seg.offsets.extend_from_slice(&s.offsets);
                seg.end = end;
            }
            self.active = Active {
                path: s.path,
                first_index: s.first_index,
                file: s.file,
                len: end,
                count,
                marked: s.marked,
            };
        }
        Ok(())
    }

    fn flush(&mut self, staged: &mut Staged) -> Result<(), WalError> {
        if !staged.buf.is_empty() {
            self.prealloc
                .write(&mut *self.io, &staged.file, &staged.buf, staged.base_len)
                .map_err(io_err(&staged.path))?;
            staged.base_len += staged.buf.len() as u64;
            staged.buf.clear();
        }
        Ok(())
    }

    fn create_segment(&mut self, first_index: u64) -> Result<Staged, WalError> {
        let (path, file) = new_segment_file(&self.config.dir, first_index)?;
        tracing::debug!(path = %path.display(), first_index, "WAL: new segment");
        Ok(Staged {
            path: Arc::from(path),
            first_index,
            file: Arc::new(file),
            base_len: 0,
            buf: magic(self.config.marks).to_vec(),
            prior_count: 0,
            offsets: Vec::new(),
            is_new: true,
            marked: self.config.marks,
        })
    }

    /// Removes whole segments all of whose entries are `< below`, oldest
    /// first. Never removes the last (active) segment. Returns how many were
    /// removed. Readers in the middle of reading a removed segment still
    /// finish (they hold the open file); later reads get
    /// [`WalError::Removed`]. If unlinking fails, the error is returned and
    /// the segments not unlinked come back at the next open (still
    /// contiguous, since removal goes oldest first).
    pub fn remove_below(&mut self, below: u64) -> Result<usize, WalError> {
        let removed: Vec<Segment> = {
            let mut shared = write_lock(&self.shared);
            let k = removable(&shared.segments, below);
            shared.segments.drain(..k).collect()
        };
        if removed.is_empty() {
            return Ok(0);
        }
        for seg in &removed {
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&seg.path)(e)),
            }
        }
        if self.config.sync {
            let dir = self.config.dir.as_path();
            sync_dir(dir).map_err(io_err(dir))?;
        }
        tracing::info!(
            removed = removed.len(),
            below,
            first_index = self.first_index(),
            "WAL: removed old segments"
        );
        Ok(removed.len())
    }

    /// The first index [`Wal::remove_below`]`(below)` would leave (the current first index
    /// when it would remove nothing): for a caller that must save what it derived from the
    /// records before they go.
    pub fn first_after_removing_below(&self, below: u64) -> u64 {
        let shared = read_lock(&self.shared);
        let k = removable(&shared.segments, below);
        match shared.segments.get(k) {
            Some(seg) if k > 0 => seg.first_index,
            _ => shared.first_index(),
        }
    }

    /// The directory of its segments.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Where in its segment file the next record's header will start (a new segment's, past
    /// the magic, when the active one is full): for a caller that pads its records to end on
    /// a page boundary, so that the next sync does not rewrite a page already written.
    pub fn next_record_offset(&self) -> u64 {
        let (start, marked) =
            if self.active.len >= self.config.segment_bytes && self.active.count > 0 {
                (SEGMENT_HEADER_LEN, self.config.marks)
            } else {
                (self.active.len, self.active.marked)
            };
        // A group's first record comes after its mark.
        if marked { start + MARK_LEN } else { start }
    }

    /// A cheap, cloneable read handle usable from other threads.
    pub fn reader(&self) -> WalReader {
        WalReader {
            shared: self.shared.clone(),
        }
    }
}

/// Adds `payload`'s record to `cur`, after a mark when it is the group's first in a segment
/// created with marks: how far the segment was synced (nothing of a new one).
fn stage_record(cur: &mut Staged, payload: &[u8], synced: &SyncedLock) -> Result<(), WalError> {
    let marked = cur.marked && cur.offsets.is_empty();
    if marked {
        let end = if cur.is_new {
            SEGMENT_HEADER_LEN
        } else {
            synced_in(synced, cur.first_index)
        };
        cur.buf.extend_from_slice(&mark(end));
    }
    let offset = u32::try_from(cur.len())
        .ok()
        .filter(|o| o & MARKED == 0)
        .ok_or_else(|| WalError::Io {
            path: cur.path.to_path_buf(),
            source: io::Error::other("segment grew beyond 2 GiB"),
        })?;
    // Checked against max_record_bytes (a u32) in append_batch.
    let len_bytes = (payload.len() as u32).to_le_bytes();
    let crc = record_crc(&len_bytes, payload);
    cur.buf.extend_from_slice(&len_bytes);
    cur.buf.extend_from_slice(&crc.to_le_bytes());
    cur.buf.extend_from_slice(payload);
    cur.offsets
        .push(if marked { offset | MARKED } else { offset });
    Ok(())
}

/// The synced end at open: what recovery kept may still be only in the page cache (a process
/// crash), so with marks it is synced here, and the first group's mark may say so; so may a
/// tail mark (the last groups before a crash may have none).
fn synced_at_open(config: &WalConfig, last: &Segment) -> Result<SyncedLock, WalError> {
    let end = if config.marks && config.sync {
        last.file.sync_data().map_err(io_err(&last.path))?;
        last.end
    } else {
        SEGMENT_HEADER_LEN
    };
    let at = SyncedEnd {
        generation: 0,
        segment: last.first_index,
        end,
    };
    let synced = Arc::new(Mutex::new(SyncState {
        synced: at,
        written: (config.marks && last.marked).then_some((last.first_index, last.end)),
    }));
    if config.marks && config.sync {
        // Before the filler starts (it then fills from past the end of the file).
        vouch(&synced, &last.file, at, &prealloc::PastEnd::default());
    }
    Ok(synced)
}

/// How many of `segments` (oldest first) hold only indexes below `below`: all but the last
/// (the active one) whose successor starts at or below it.
fn removable(segments: &[Segment], below: u64) -> usize {
    (0..segments.len().saturating_sub(1))
        .take_while(|&i| segments[i + 1].first_index <= below)
        .count()
}
