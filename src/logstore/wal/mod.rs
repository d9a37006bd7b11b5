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
//! [magic: 8 bytes = b"LPWAL\0\0\x01"]
//! [record]*
//! record = [len: u32 LE][crc32c: u32 LE][payload: len bytes]
//! ```
//!
//! `crc32c` covers the 4 `len` bytes followed by the payload. A record's index
//! is implied by its position: segment first index + ordinal in the segment.
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
//! * **Torn tail** (last segment only): the final record is incomplete (its
//!   header or payload runs past the end of the file), or its checksum fails
//!   and it ends exactly at the end of the file. Such a write was never
//!   acknowledged, so the file is truncated back to the end of the last good
//!   record and fsynced; [`OpenReport::torn_bytes_truncated`] says how much
//!   was cut and a `tracing::warn!` is logged. A last segment shorter than
//!   the 8-byte magic whose bytes are a prefix of the magic (crash right after
//!   creating it) gets its header rewritten.
//! * **Corruption**: anything else — a bad checksum followed by more bytes, an
//!   impossible header, a bad record anywhere in a non-last segment, a bad
//!   magic, a missing segment — is [`WalError::Corruption`] naming the file and
//!   byte offset. Nothing is skipped or truncated in that case.
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

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The 8 bytes every segment file starts with.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LPWAL\0\0\x01";
/// Smallest accepted [`WalConfig::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Default [`WalConfig::segment_bytes`] (64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default [`WalConfig::max_record_bytes`] (64 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;

const SEGMENT_HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
const RECORD_HEADER_LEN: u64 = 8;
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// Errors of the WAL. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
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
    /// At least [`MIN_SEGMENT_BYTES`], at most `u32::MAX`.
    pub segment_bytes: u64,
    /// Largest payload accepted (and believed when reading a header).
    pub max_record_bytes: u32,
    /// `true` (default): `sync_data` after every `append_batch`. `false`
    /// trades durability for speed (records are visible once written).
    pub sync: bool,
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
        if self.segment_bytes > u64::from(u32::MAX) {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes {} is above the maximum of {} (offsets are u32)",
                self.segment_bytes,
                u32::MAX
            )));
        }
        if self.max_record_bytes == 0 {
            return Err(WalError::InvalidConfig(
                "max_record_bytes must be at least 1".into(),
            ));
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

/// One segment as seen by readers: only durable records are listed.
struct Segment {
    path: Arc<Path>,
    first_index: u64,
    /// Byte offset of each durable record in the file.
    offsets: Vec<u32>,
    /// End of the last durable record (file offset).
    end: u64,
    file: Arc<File>,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }
}

/// State shared by the writer and its readers. `segments` is never empty.
struct Shared {
    segments: Vec<Segment>,
}

impl Shared {
    fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    fn last_index(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.next_index().saturating_sub(1))
    }
}

type SharedLock = Arc<RwLock<Shared>>;

fn read_lock(shared: &SharedLock) -> RwLockReadGuard<'_, Shared> {
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock(shared: &SharedLock) -> RwLockWriteGuard<'_, Shared> {
    shared.write().unwrap_or_else(PoisonError::into_inner)
}

/// The seam through which the writer's appends touch the disk, so tests can
/// inject failures. Segment creation, recovery at open and removal use std
/// directly.
trait SegmentIo: Send {
    fn write_all_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&mut self, file: &File) -> io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

struct StdIo;

impl SegmentIo for StdIo {
    fn write_all_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn record_crc(len_bytes: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(0, len_bytes), payload)
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// The active segment, as the writer sees it (including nothing unpublished:
/// it is only updated after a batch is durable and published).
struct Active {
    path: Arc<Path>,
    first_index: u64,
    file: Arc<File>,
    len: u64,
    count: u64,
}

impl Active {
    fn next_index(&self) -> u64 {
        self.first_index + self.count
    }
}

/// A segment being written by the current batch.
struct Staged {
    path: Arc<Path>,
    first_index: u64,
    file: Arc<File>,
    /// Where `buf` goes in the file.
    base_len: u64,
    buf: Vec<u8>,
    /// Records durable before this batch.
    prior_count: u64,
    /// Offsets of the records added by this batch.
    offsets: Vec<u32>,
    is_new: bool,
}

impl Staged {
    fn len(&self) -> u64 {
        self.base_len + self.buf.len() as u64
    }

    fn count(&self) -> u64 {
        self.prior_count + self.offsets.len() as u64
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
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let names = list_segments(dir)?;
        let mut torn_bytes_truncated = 0;
        let mut segments: Vec<Segment> = Vec::with_capacity(names.len().max(1));

        if names.is_empty() {
            segments.push(create_first_segment(dir, 1)?);
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
            let file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&path)
                .map_err(io_err(&path))?;
            let scan = scan_segment(&path, &file, is_last, config.max_record_bytes)?;
            let mut end = scan.end;
            if let Some(torn) = scan.torn {
                let cut = torn.file_len - scan.end;
                if torn.rewrite_header {
                    file.set_len(0).map_err(io_err(&path))?;
                    file.write_all_at(SEGMENT_MAGIC, 0).map_err(io_err(&path))?;
                    end = SEGMENT_HEADER_LEN;
                } else {
                    file.set_len(scan.end).map_err(io_err(&path))?;
                }
                file.sync_all().map_err(io_err(&path))?;
                torn_bytes_truncated += cut;
                tracing::warn!(
                    path = %path.display(),
                    good_end = scan.end,
                    file_len = torn.file_len,
                    bytes_cut = cut,
                    reason = %torn.reason,
                    "WAL: truncated torn tail of last segment"
                );
            }
            segments.push(Segment {
                path: Arc::from(path),
                first_index,
                offsets: scan.offsets,
                end,
                file: Arc::new(file),
            });
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
        let active = Active {
            path: last.path.clone(),
            first_index: last.first_index,
            file: last.file.clone(),
            len: last.end,
            count: last.offsets.len() as u64,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            first_index,
            last_index,
            torn_bytes_truncated,
            "WAL opened"
        );
        let wal = Wal {
            config,
            shared: Arc::new(RwLock::new(shared)),
            active,
            io,
            failed: false,
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

    /// Last durable index: 0 for a fresh log, `first_index - 1` when empty.
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
        if self.failed {
            return Err(WalError::Io {
                path: self.active.path.to_path_buf(),
                source: io::Error::other(
                    "WAL is unusable after an earlier I/O error; it must be reopened",
                ),
            });
        }
        let max = self.config.max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.len() > max as usize) {
            return Err(WalError::RecordTooLarge { len: p.len(), max });
        }
        let first = self.active.next_index();
        if payloads.is_empty() {
            return Ok(first);
        }
        match self.append_inner(payloads) {
            Ok(()) => Ok(first),
            Err(err) => {
                self.failed = true;
                tracing::error!(error = %err, first_index = first, "WAL append failed; reopen required");
                Err(err)
            }
        }
    }

    fn append_inner(&mut self, payloads: &[&[u8]]) -> Result<(), WalError> {
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
        }];
        let first = self.active.next_index();
        for (next, payload) in (first..).zip(payloads) {
            let cur = staged.last_mut().expect("staged is never empty");
            if cur.len() >= self.config.segment_bytes && cur.count() > 0 {
                // Seal the full segment before its successor exists.
                self.flush(cur)?;
                self.io.sync_data(&cur.file).map_err(io_err(&cur.path))?;
                let new = self.create_segment(next)?;
                staged.push(new);
            }
            let cur = staged.last_mut().expect("staged is never empty");
            let offset = u32::try_from(cur.len()).map_err(|_| WalError::Io {
                path: cur.path.to_path_buf(),
                source: io::Error::other("segment grew beyond 4 GiB"),
            })?;
            // Checked against max_record_bytes (a u32) in append_batch.
            let len_bytes = (payload.len() as u32).to_le_bytes();
            let crc = record_crc(&len_bytes, payload);
            cur.buf.extend_from_slice(&len_bytes);
            cur.buf.extend_from_slice(&crc.to_le_bytes());
            cur.buf.extend_from_slice(payload);
            cur.offsets.push(offset);
        }

        let last = staged.last_mut().expect("staged is never empty");
        self.flush(last)?;
        if self.config.sync {
            self.io.sync_data(&last.file).map_err(io_err(&last.path))?;
            if staged.len() > 1 {
                let dir = self.config.dir.as_path();
                self.io.sync_dir(dir).map_err(io_err(dir))?;
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
            };
        }
        Ok(())
    }

    fn flush(&mut self, staged: &mut Staged) -> Result<(), WalError> {
        if !staged.buf.is_empty() {
            self.io
                .write_all_at(&staged.file, &staged.buf, staged.base_len)
                .map_err(io_err(&staged.path))?;
            staged.base_len += staged.buf.len() as u64;
            staged.buf.clear();
        }
        Ok(())
    }

    fn create_segment(&mut self, first_index: u64) -> Result<Staged, WalError> {
        let path = segment_path(&self.config.dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        tracing::debug!(path = %path.display(), first_index, "WAL: new segment");
        Ok(Staged {
            path: Arc::from(path),
            first_index,
            file: Arc::new(file),
            base_len: 0,
            buf: SEGMENT_MAGIC.to_vec(),
            prior_count: 0,
            offsets: Vec::new(),
            is_new: true,
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
            let segs = &shared.segments;
            let k = (0..segs.len() - 1)
                .take_while(|&i| segs[i + 1].first_index <= below)
                .count();
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

    /// A cheap, cloneable read handle usable from other threads.
    pub fn reader(&self) -> WalReader {
        WalReader {
            shared: self.shared.clone(),
        }
    }
}

/// Read handle on the durable part of the log. `Clone + Send + Sync`.
#[derive(Clone)]
pub struct WalReader {
    shared: SharedLock,
}

impl fmt::Debug for WalReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalReader")
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .finish()
    }
}

/// Contiguous records of one segment to read with one `read_at`.
struct Chunk {
    path: Arc<Path>,
    file: Arc<File>,
    first_index: u64,
    start: u64,
    payload_lens: Vec<u32>,
}

impl WalReader {
    /// First index held (durable bound).
    pub fn first_index(&self) -> u64 {
        read_lock(&self.shared).first_index()
    }

    /// Last durable index.
    pub fn last_index(&self) -> u64 {
        read_lock(&self.shared).last_index()
    }

    /// Reads entries `[from, to]` inclusive (clamped to the last durable
    /// index), but stops before an entry that would bring the accumulated
    /// payload bytes over `max_bytes`; the first entry is always returned
    /// even if it alone is larger. `from < first_index` gives
    /// [`WalError::Removed`]; `from > last_index` or `to < from` gives an
    /// empty vec. Each record's checksum is verified
    /// ([`WalError::Corruption`] names file and offset).
    pub fn read_range(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let chunks = {
            let shared = read_lock(&self.shared);
            let first = shared.first_index();
            if from < first {
                return Err(WalError::Removed { index: from, first });
            }
            let to = to.min(shared.last_index());
            if from > to {
                return Ok(Vec::new());
            }
            plan_read(&shared, from, to, max_bytes as u64)
        };
        // IO happens without the lock held.
        let mut out = Vec::with_capacity(chunks.iter().map(|c| c.payload_lens.len()).sum());
        for chunk in &chunks {
            read_chunk(chunk, &mut out)?;
        }
        Ok(out)
    }
}

fn plan_read(shared: &Shared, from: u64, to: u64, max_bytes: u64) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut seg_i = shared
        .segments
        .partition_point(|s| s.first_index <= from)
        .saturating_sub(1);
    let mut index = from;
    let mut total: u64 = 0;
    let mut full = false;
    while !full && index <= to && seg_i < shared.segments.len() {
        let seg = &shared.segments[seg_i];
        let mut ord = (index - seg.first_index) as usize;
        let mut chunk: Option<Chunk> = None;
        while index <= to && ord < seg.offsets.len() {
            let start = u64::from(seg.offsets[ord]);
            let end = seg.offsets.get(ord + 1).map_or(seg.end, |&o| u64::from(o));
            let len = end - start - RECORD_HEADER_LEN;
            if index > from && total + len > max_bytes {
                full = true;
                break;
            }
            chunk
                .get_or_insert_with(|| Chunk {
                    path: seg.path.clone(),
                    file: seg.file.clone(),
                    first_index: index,
                    start,
                    payload_lens: Vec::new(),
                })
                .payload_lens
                .push(len as u32);
            total += len;
            index += 1;
            ord += 1;
        }
        chunks.extend(chunk);
        seg_i += 1;
    }
    chunks
}

fn read_chunk(chunk: &Chunk, out: &mut Vec<(u64, Vec<u8>)>) -> Result<(), WalError> {
    let total: u64 = chunk
        .payload_lens
        .iter()
        .map(|&l| u64::from(l) + RECORD_HEADER_LEN)
        .sum();
    let mut buf = vec![0u8; total as usize];
    chunk
        .file
        .read_exact_at(&mut buf, chunk.start)
        .map_err(io_err(&chunk.path))?;
    let mut pos = 0usize;
    for (i, &expected) in chunk.payload_lens.iter().enumerate() {
        let offset = chunk.start + pos as u64;
        let header = &buf[pos..pos + RECORD_HEADER_LEN as usize];
        let len_bytes = &header[..4];
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes"));
        let stored_crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len != expected {
            return Err(corruption(
                &chunk.path,
                offset,
                format!("record length {len} does not match the index ({expected})"),
            ));
        }
        let body_start = pos + RECORD_HEADER_LEN as usize;
        let payload = &buf[body_start..body_start + len as usize];
        let crc = record_crc(len_bytes, payload);
        if crc != stored_crc {
            return Err(corruption(
                &chunk.path,
                offset,
                format!("checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
            ));
        }
        out.push((chunk.first_index + i as u64, payload.to_vec()));
        pos = body_start + len as usize;
    }
    Ok(())
}

/// Segment files in `dir`, sorted by first index.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
            tracing::debug!(path = %path.display(), "WAL: ignoring non-segment file");
            continue;
        }
        let first_index: u64 = stem
            .parse()
            .map_err(|_| corruption(&path, 0, "segment name is not a valid u64 index"))?;
        if first_index == 0 {
            return Err(corruption(
                &path,
                0,
                "segment first index 0 (indexes start at 1)",
            ));
        }
        out.push((first_index, path));
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

fn create_first_segment(dir: &Path, first_index: u64) -> Result<Segment, WalError> {
    let path = segment_path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all_at(SEGMENT_MAGIC, 0).map_err(io_err(&path))?;
    file.sync_data().map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(Segment {
        path: Arc::from(path),
        first_index,
        offsets: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        file: Arc::new(file),
    })
}

struct Scan {
    offsets: Vec<u32>,
    /// End of the last good record (0 when the header itself is torn).
    end: u64,
    torn: Option<Torn>,
}

struct Torn {
    file_len: u64,
    reason: String,
    rewrite_header: bool,
}

/// Verifies a whole segment. A damaged tail of the last segment is reported
/// as `torn`; any other damage is an error.
fn scan_segment(path: &Path, file: &File, is_last: bool, max: u32) -> Result<Scan, WalError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);

    if file_len < SEGMENT_HEADER_LEN {
        let mut partial = vec![0u8; file_len as usize];
        reader.read_exact(&mut partial).map_err(io_err(path))?;
        if is_last && SEGMENT_MAGIC.starts_with(&partial) {
            return Ok(Scan {
                offsets: Vec::new(),
                end: 0,
                torn: Some(Torn {
                    file_len,
                    reason: format!("incomplete segment header ({file_len} of 8 bytes)"),
                    rewrite_header: true,
                }),
            });
        }
        return Err(corruption(
            path,
            0,
            format!("segment is {file_len} bytes, shorter than its 8-byte header"),
        ));
    }
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(io_err(path))?;
    if &magic != SEGMENT_MAGIC {
        return Err(corruption(
            path,
            0,
            format!("bad segment magic \"{}\"", magic.escape_ascii()),
        ));
    }

    let mut offsets = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    let tail = |offsets: Vec<u32>, pos: u64, reason: String| {
        if is_last {
            Ok(Scan {
                offsets,
                end: pos,
                torn: Some(Torn {
                    file_len,
                    reason,
                    rewrite_header: false,
                }),
            })
        } else {
            Err(corruption(
                path,
                pos,
                format!("{reason} in a non-last segment"),
            ))
        }
    };
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < RECORD_HEADER_LEN {
            return tail(
                offsets,
                pos,
                format!("incomplete record header ({remaining} of 8 bytes)"),
            );
        }
        let mut header = [0u8; 8];
        reader.read_exact(&mut header).map_err(io_err(path))?;
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes);
        let stored_crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let end = pos + RECORD_HEADER_LEN + u64::from(len);
        if end > file_len {
            return tail(
                offsets,
                pos,
                format!("record of {len} bytes runs past the end of the file ({file_len} bytes)"),
            );
        }
        if len > max {
            return Err(corruption(
                path,
                pos,
                format!("record length {len} exceeds max_record_bytes {max}"),
            ));
        }
        let offset = u32::try_from(pos)
            .map_err(|_| corruption(path, pos, "record offset beyond 4 GiB in one segment"))?;
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err(path))?;
        let crc = record_crc(&len_bytes, &payload);
        if crc != stored_crc {
            let reason =
                format!("checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})");
            if end == file_len {
                return tail(offsets, pos, format!("{reason} in the final record"));
            }
            return Err(corruption(
                path,
                pos,
                format!("{reason}; {} more bytes follow", file_len - end),
            ));
        }
        offsets.push(offset);
        pos = end;
    }
    Ok(Scan {
        offsets,
        end: pos,
        torn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    fn small_config(dir: &Path) -> WalConfig {
        WalConfig {
            segment_bytes: MIN_SEGMENT_BYTES,
            ..WalConfig::new(dir)
        }
    }

    /// Deterministic payload for index `i`, 1..=300 bytes.
    fn payload(i: u64) -> Vec<u8> {
        let n = (i * 37 % 300) as usize + 1;
        (0..n).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    fn record_size(i: u64) -> u64 {
        RECORD_HEADER_LEN + payload(i).len() as u64
    }

    /// Appends payload(i) for i in `from..from + n`, in batches of 1..=batch.
    fn append_range(wal: &mut Wal, from: u64, n: u64, batch: usize) {
        let mut i = from;
        let end = from + n;
        let mut size = 1;
        while i < end {
            let k = (size as u64).min(end - i);
            let owned: Vec<Vec<u8>> = (i..i + k).map(payload).collect();
            let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            assert_eq!(wal.append_batch(&refs).unwrap(), i);
            i += k;
            size = size % batch + 1;
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn segment_firsts(dir: &Path) -> Vec<u64> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    fn assert_all_payloads(reader: &WalReader, first: u64, last: u64) {
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

    fn flip_byte(path: &Path, offset: u64) {
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

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn expect_corruption(result: Result<(Wal, OpenReport), WalError>) -> (PathBuf, u64, String) {
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

    /// One segment with records 1..=5; returns the segment path.
    fn five_records(dir: &Path) -> PathBuf {
        let (mut wal, _) = Wal::open(small_config(dir)).unwrap();
        append_range(&mut wal, 1, 5, 2);
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
        assert_eq!(fs::read(&files[0]).unwrap(), SEGMENT_MAGIC);
        assert_eq!(wal.append_batch(&[b"a", b""]).unwrap(), 1);
        assert_eq!(reader.read_range(1, 2, usize::MAX).unwrap()[1], (2, vec![]));
    }

    #[test]
    fn appends_then_reopen_give_dense_indexes_from_one_and_identical_payloads_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
            append_range(&mut wal, 1, 200, 9);
            assert_eq!(wal.last_index(), 200);
            assert_all_payloads(&wal.reader(), 1, 200);
        }
        let files = segment_files(dir.path());
        assert!(
            files.len() >= 4,
            "expected several segments, got {}",
            files.len()
        );
        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
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
        drop(wal);
        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(report.last_index, 220);
        assert_all_payloads(&wal.reader(), 1, 220);
    }

    #[test]
    fn a_single_record_larger_than_a_segment_is_stored_and_the_next_one_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 3 * MIN_SEGMENT_BYTES as usize];
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
        wal.append_batch(&[b"small", &big, b"after"]).unwrap();
        assert_eq!(segment_firsts(dir.path()), vec![1, 3]);
        drop(wal);
        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(report.last_index, 3);
        let got = wal.reader().read_range(1, 3, usize::MAX).unwrap();
        assert_eq!(got[1].1, big);
        assert_eq!(got[2].1, b"after");
    }

    #[test]
    fn read_range_respects_from_to_and_max_bytes_returns_removed_below_first_and_empty_past_last() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
        append_range(&mut wal, 1, 100, 5);
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
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(dir.path());
        let full = file_len(&path);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 3).unwrap();
        drop(f);

        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(report.torn_bytes_truncated, record_size(5) - 3);
        assert_eq!((report.last_index, report.entries), (4, 4));
        assert_eq!(file_len(&path), full - record_size(5));
        assert_eq!(wal.append_batch(&[&payload(5)]).unwrap(), 5);
        drop(wal);
        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.last_index, report.torn_bytes_truncated), (5, 0));
        assert_all_payloads(&wal.reader(), 1, 5);
    }

    #[test]
    fn torn_tail_of_a_partial_record_header_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(dir.path());
        let full = file_len(&path);
        append_bytes(&path, &[0x10, 0, 0, 0, 0x99]);

        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.torn_bytes_truncated, report.last_index), (5, 5));
        assert_eq!(file_len(&path), full);
        assert_eq!(wal.append_batch(&[&payload(6)]).unwrap(), 6);
        assert_all_payloads(&wal.reader(), 1, 6);
    }

    #[test]
    fn torn_tail_whose_header_claims_more_than_the_file_holds_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(dir.path());
        append_bytes(&path, &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6]);
        let (_wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.torn_bytes_truncated, report.last_index), (10, 5));
    }

    #[test]
    fn torn_tail_with_a_bad_checksum_in_the_final_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(dir.path());
        let full = file_len(&path);
        flip_byte(&path, full - 1);

        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(report.torn_bytes_truncated, record_size(5));
        assert_eq!(report.last_index, 4);
        assert_eq!(file_len(&path), full - record_size(5));
        assert_eq!(wal.append_batch(&[&payload(5)]).unwrap(), 5);
        assert_all_payloads(&wal.reader(), 1, 5);
    }

    #[test]
    fn a_zero_length_or_partial_header_last_segment_gets_its_header_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        five_records(dir.path());
        let empty = segment_path(dir.path(), 6);
        File::create(&empty).unwrap();

        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.last_index, report.segments), (5, 2));
        assert_eq!(report.torn_bytes_truncated, 0);
        assert_eq!(fs::read(&empty).unwrap(), SEGMENT_MAGIC);
        drop(wal);

        fs::write(&empty, b"LPW").unwrap();
        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.last_index, report.torn_bytes_truncated), (5, 3));
        assert_eq!(wal.append_batch(&[&payload(6)]).unwrap(), 6);
        assert_eq!(file_len(&empty), SEGMENT_HEADER_LEN + record_size(6));
        assert_all_payloads(&wal.reader(), 1, 6);
    }

    #[test]
    fn a_corrupt_middle_record_fails_open_naming_the_file_and_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(dir.path());
        let full = file_len(&path);
        let record2 = SEGMENT_HEADER_LEN + record_size(1);
        flip_byte(&path, record2 + RECORD_HEADER_LEN);

        let (err_path, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!(err_path, path);
        assert_eq!(offset, record2);
        assert!(text.contains("00000000000000000001.wal"), "{text}");
        assert!(text.contains(&format!("offset {record2}")), "{text}");
        assert_eq!(file_len(&path), full, "corruption must not truncate");
    }

    #[test]
    fn an_impossible_record_length_is_corruption() {
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
        let (err_path, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!((err_path, offset), (path, 0));
        assert!(text.contains("magic"), "{text}");
    }

    #[test]
    fn damage_in_a_non_last_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
            append_range(&mut wal, 1, 80, 3);
        }
        let files = segment_files(dir.path());
        assert!(files.len() >= 3);
        let first = &files[0];
        let len = file_len(first);

        // A bad checksum in the final record of a non-last segment.
        flip_byte(first, len - 1);
        let (err_path, _, text) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!(&err_path, first);
        assert!(text.contains("checksum"), "{text}");
        flip_byte(first, len - 1);

        // A non-last segment cut short.
        let f = OpenOptions::new().write(true).open(first).unwrap();
        f.set_len(len - 2).unwrap();
        let (err_path, _, _) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!(&err_path, first);
        assert_eq!(file_len(first), len - 2, "corruption must not truncate");
    }

    #[test]
    fn a_missing_middle_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
            append_range(&mut wal, 1, 100, 3);
        }
        let files = segment_files(dir.path());
        assert!(files.len() >= 3);
        fs::remove_file(&files[1]).unwrap();
        let (err_path, offset, text) = expect_corruption(Wal::open(small_config(dir.path())));
        assert_eq!((&err_path, offset), (&files[2], 0));
        assert!(text.contains("missing segment"), "{text}");
    }

    #[test]
    fn remove_below_removes_only_whole_segments_entirely_below_and_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
        append_range(&mut wal, 1, 200, 6);
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

        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.first_index, report.last_index), (active_first, 200));
        assert_eq!(report.entries, 201 - active_first);
        assert_eq!(wal.append_batch(&[&payload(201)]).unwrap(), 201);
        assert_all_payloads(&wal.reader(), active_first, 201);
    }

    #[test]
    fn remove_below_on_an_empty_active_segment_leaves_first_index_past_last_index() {
        let dir = tempfile::tempdir().unwrap();
        five_records(dir.path());
        File::create(segment_path(dir.path(), 6)).unwrap();
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(wal.remove_below(6).unwrap(), 1);
        assert_eq!((wal.first_index(), wal.last_index()), (6, 5));
        assert!(wal.reader().read_range(6, 10, 100).unwrap().is_empty());
        drop(wal);
        let (_, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!(
            (report.first_index, report.last_index, report.entries),
            (6, 5, 0)
        );
    }

    #[test]
    fn a_concurrent_reader_never_sees_beyond_last_index_and_every_payload_matches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
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
        let (mut wal, _) = Wal::open(small_config(dir.path())).unwrap();
        append_range(&mut wal, 1, 50, 5);
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
        config.segment_bytes = u64::from(u32::MAX) + 1;
        assert!(matches!(config.validate(), Err(WalError::InvalidConfig(_))));
        config.segment_bytes = MIN_SEGMENT_BYTES;
        config.max_record_bytes = 0;
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
        fn write_all_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.half_write.load(Ordering::SeqCst) {
                file.write_all_at(&buf[..buf.len() / 2], offset)?;
                return Err(io::Error::other("injected write failure"));
            }
            file.write_all_at(buf, offset)
        }

        fn sync_data(&mut self, file: &File) -> io::Result<()> {
            if self.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected sync_data failure"));
            }
            file.sync_data()
        }

        fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
            sync_dir(dir)
        }
    }

    #[test]
    fn a_failed_sync_hides_the_batch_from_readers_and_requires_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::default();
        let (mut wal, _) =
            Wal::open_with_io(small_config(dir.path()), Box::new(io.clone())).unwrap();
        append_range(&mut wal, 1, 3, 3);
        let reader = wal.reader();

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
        drop(wal);

        // The record was fully written (only its sync failed), so recovery
        // keeps it: it was never acknowledged, its fate is up to the disk.
        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert_eq!((report.last_index, report.torn_bytes_truncated), (4, 0));
        assert_all_payloads(&wal.reader(), 1, 4);
    }

    #[test]
    fn a_half_written_batch_is_invisible_and_cut_as_a_torn_tail_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::default();
        let (mut wal, _) =
            Wal::open_with_io(small_config(dir.path()), Box::new(io.clone())).unwrap();
        append_range(&mut wal, 1, 3, 3);
        let reader = wal.reader();

        io.half_write.store(true, Ordering::SeqCst);
        let batch = [payload(4), payload(5)];
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert!(matches!(wal.append_batch(&refs), Err(WalError::Io { .. })));
        assert_eq!(reader.last_index(), 3);
        assert_all_payloads(&reader, 1, 3);
        drop(wal);

        let written = (record_size(4) + record_size(5)) / 2;
        let (mut wal, report) = Wal::open(small_config(dir.path())).unwrap();
        let kept = if written >= record_size(4) { 4 } else { 3 };
        assert_eq!(report.last_index, kept);
        let expected_cut = written - if kept == 4 { record_size(4) } else { 0 };
        assert_eq!(report.torn_bytes_truncated, expected_cut);
        assert_eq!(wal.append_batch(&[&payload(kept + 1)]).unwrap(), kept + 1);
        assert_all_payloads(&wal.reader(), 1, kept + 1);
    }

    #[test]
    fn a_failed_sync_while_rolling_a_segment_leaves_a_log_that_reopens_contiguously() {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::default();
        let (mut wal, _) =
            Wal::open_with_io(small_config(dir.path()), Box::new(io.clone())).unwrap();
        // Fill the first segment to just below the limit.
        let mut i = 1;
        while segment_files(dir.path()).len() == 1
            && file_len(&segment_files(dir.path())[0]) + record_size(i) < MIN_SEGMENT_BYTES
        {
            wal.append_batch(&[&payload(i)]).unwrap();
            i += 1;
        }
        io.fail_sync.store(true, Ordering::SeqCst);
        let batch: Vec<Vec<u8>> = (i..i + 4).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert!(wal.append_batch(&refs).is_err());
        assert_eq!(wal.last_index(), i - 1);
        // The seal failed before the next segment was created.
        assert_eq!(segment_files(dir.path()).len(), 1);
        drop(wal);
        let (wal, report) = Wal::open(small_config(dir.path())).unwrap();
        assert!(report.last_index >= i - 1);
        assert_all_payloads(&wal.reader(), 1, report.last_index);
    }
}
