//! Segment files and the state the writer shares with readers: the durable records of
//! each segment (offsets and end), the disk seam ([`SegmentIo`]) tests fault through, the
//! record checksum and segment naming.

use super::prealloc::PastEnd;
use super::{
    MARK_LEN, MARK_TAG, MARKED, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_NAME_DIGITS,
    SEGMENT_SUFFIX, WalError, corruption, io_err,
};
use crate::disk::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One segment as seen by readers: only durable records are listed.
pub(super) struct Segment {
    pub(super) path: Arc<Path>,
    pub(super) first_index: u64,
    /// Byte offset of each durable record in the file, with [`MARKED`] set when a mark
    /// comes right before it (see [`record_start`]).
    pub(super) offsets: Vec<u32>,
    /// End of the last durable record (file offset).
    pub(super) end: u64,
    pub(super) file: Arc<File>,
    /// Created with marks (its magic): the writer marks its groups. A segment from before
    /// marks gets none (a build from before them would read the first as a torn tail).
    pub(super) marked: bool,
}

impl Segment {
    pub(super) fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    /// Where the record at ordinal `ord` starts and how long its payload is.
    pub(super) fn record(&self, ord: usize) -> (u64, u64) {
        let start = record_start(self.offsets[ord]);
        let end = self
            .offsets
            .get(ord + 1)
            .map_or(self.end, |&o| group_start(o));
        (start, end - start - RECORD_HEADER_LEN)
    }

    /// Where cutting the records from ordinal `ord` on leaves the file: before the mark of
    /// the record's group, when it is its first (no mark is left without a record after it).
    pub(super) fn cut_offset(&self, ord: usize) -> u64 {
        self.offsets.get(ord).map_or(self.end, |&o| group_start(o))
    }
}

/// Where a record starts, from its entry in [`Segment::offsets`].
pub(super) fn record_start(offset: u32) -> u64 {
    u64::from(offset & !MARKED)
}

/// Where a record starts, its mark included when it has one.
fn group_start(offset: u32) -> u64 {
    if offset & MARKED != 0 {
        record_start(offset) - MARK_LEN
    } else {
        record_start(offset)
    }
}

/// How far the writer knows the active segment is synced (see `WalConfig::marks`): its first
/// index and a byte offset, under a generation that a cut bumps (a sync planned before a cut
/// must not say anything of the bytes written after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SyncedEnd {
    pub(super) generation: u64,
    pub(super) segment: u64,
    pub(super) end: u64,
}

/// What the writer knows of the active segment, behind one lock: how far it is synced, and
/// how far written.
#[derive(Debug)]
pub(super) struct SyncState {
    pub(super) synced: SyncedEnd,
    /// Where the writer's bytes end (segment, byte); `None` while it writes a group, or
    /// without marks. A sync leaves a tail mark ([`vouch`]) only where nothing was written
    /// since it was planned.
    pub(super) written: Option<(u64, u64)>,
}

pub(super) type SyncedLock = Arc<Mutex<SyncState>>;

pub(super) fn lock_synced(synced: &SyncedLock) -> MutexGuard<'_, SyncState> {
    synced.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `segment` synced up to `end`, under the current generation (a sync planned now).
pub(super) fn synced_now(synced: &SyncedLock, segment: u64, end: u64) -> SyncedEnd {
    SyncedEnd {
        generation: lock_synced(synced).synced.generation,
        segment,
        end,
    }
}

/// Records a finished sync, unless a later one (or a cut) got there first.
pub(super) fn advance(synced: &SyncedLock, at: SyncedEnd) {
    let mut s = lock_synced(synced);
    let now = s.synced;
    if at.generation == now.generation && (at.segment, at.end) > (now.segment, now.end) {
        s.synced = at;
    }
}

/// The synced end of segment `first_index` (only its header when the writer knows nothing
/// synced in it).
pub(super) fn synced_in(synced: &SyncedLock, first_index: u64) -> u64 {
    let s = lock_synced(synced).synced;
    if s.segment == first_index {
        s.end
    } else {
        SEGMENT_HEADER_LEN
    }
}

/// Where the writer's bytes end, once a group is written (`None` before it writes one:
/// until then no tail mark may be written where the group goes).
pub(super) fn set_written(synced: &SyncedLock, written: Option<(u64, u64)>) {
    lock_synced(synced).written = written;
}

/// After a sync through `at`, if the writer has written nothing since it was planned (the
/// log is idle): a tail mark right after the records, saying the segment is synced through
/// them, and not synced itself. Marks in later groups vouch for the groups before them;
/// nothing would vouch for the last ones, and damage to them (bit rot, a byte flipped while
/// the log was stopped) would read as a torn tail and be cut, acknowledged entries with it.
/// With a tail mark, recovery refuses instead. The next group starts at the same byte with
/// its own mark, written over this one (under this lock, so never at the same time). Best
/// effort: a tail mark lost or not written leaves the tail as unvouched as without it.
pub(super) fn vouch(synced: &SyncedLock, file: &File, at: SyncedEnd, past_end: &PastEnd) {
    let s = lock_synced(synced);
    // (A segment with no record yet has nothing to vouch for.)
    if at.end > SEGMENT_HEADER_LEN
        && s.synced.generation == at.generation
        && s.written == Some((at.segment, at.end))
        && let Err(error) = past_end.write(file, &mark(at.end), at.end)
    {
        tracing::debug!(%error, end = at.end, "WAL: no tail mark");
    }
}

/// Before a cut changes the active segment: no sync planned until now leaves a tail mark
/// (it could land past the cut, vouching for bytes written there later).
pub(super) fn forget_syncs_in_flight(synced: &SyncedLock) {
    let mut s = lock_synced(synced);
    s.synced.generation += 1;
    s.written = None;
}

/// A mark saying the segment is synced up to byte `end`.
pub(super) fn mark(end: u64) -> [u8; MARK_LEN as usize] {
    let tag = MARK_TAG.to_le_bytes();
    let value = end.to_le_bytes();
    let mut out = [0u8; MARK_LEN as usize];
    out[..4].copy_from_slice(&tag);
    out[4..8].copy_from_slice(&record_crc(&tag, &value).to_le_bytes());
    out[8..].copy_from_slice(&value);
    out
}

/// The synced end a mark at the start of `bytes` holds, if they are one (tag and checksum).
pub(super) fn read_mark(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; MARK_LEN as usize] = bytes.get(..MARK_LEN as usize)?.try_into().ok()?;
    let (tag, rest) = bytes.split_at(4);
    let (crc, value) = rest.split_at(4);
    (tag == MARK_TAG.to_le_bytes() && crc == record_crc(tag, value).to_le_bytes())
        .then(|| u64::from_le_bytes(value.try_into().unwrap_or_default()))
}

/// State shared by the writer and its readers. `segments` is never empty.
pub(super) struct Shared {
    pub(super) segments: Vec<Segment>,
}

impl Shared {
    pub(super) fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    pub(super) fn last_index(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.next_index().saturating_sub(1))
    }
}

pub(super) type SharedLock = Arc<RwLock<Shared>>;

pub(super) fn read_lock(shared: &SharedLock) -> RwLockReadGuard<'_, Shared> {
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write_lock(shared: &SharedLock) -> RwLockWriteGuard<'_, Shared> {
    shared.write().unwrap_or_else(PoisonError::into_inner)
}

/// The seam through which the writer's appends touch the disk, so tests can
/// inject failures. Segment creation, recovery at open and removal use
/// [`crate::disk`] directly.
pub(super) trait SegmentIo: Send {
    fn write_all_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&mut self, file: &File) -> io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

pub(super) struct StdIo;

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

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    disk::sync_dir(dir)
}

pub(super) fn record_crc(len_bytes: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(0, len_bytes), payload)
}

pub(super) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// The active segment, as the writer sees it (including nothing unpublished:
/// it is only updated after a batch is durable and published).
pub(super) struct Active {
    pub(super) path: Arc<Path>,
    pub(super) first_index: u64,
    pub(super) file: Arc<File>,
    pub(super) len: u64,
    pub(super) count: u64,
    /// See [`Segment::marked`].
    pub(super) marked: bool,
}

impl Active {
    pub(super) fn next_index(&self) -> u64 {
        self.first_index + self.count
    }
}

/// A segment being written by the current batch.
pub(super) struct Staged {
    pub(super) path: Arc<Path>,
    pub(super) first_index: u64,
    pub(super) file: Arc<File>,
    /// Where `buf` goes in the file.
    pub(super) base_len: u64,
    pub(super) buf: Vec<u8>,
    /// Records durable before this batch.
    pub(super) prior_count: u64,
    /// Offsets of the records added by this batch.
    pub(super) offsets: Vec<u32>,
    pub(super) is_new: bool,
    /// See [`Segment::marked`].
    pub(super) marked: bool,
}

impl Staged {
    pub(super) fn len(&self) -> u64 {
        self.base_len + self.buf.len() as u64
    }

    pub(super) fn count(&self) -> u64 {
        self.prior_count + self.offsets.len() as u64
    }
}
/// Segment files in `dir`, sorted by first index.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in disk::read_dir(dir).map_err(io_err(dir))? {
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

/// Creates the file of a new segment starting at `first_index` (it must not exist).
pub(super) fn new_segment_file(dir: &Path, first_index: u64) -> Result<(PathBuf, File), WalError> {
    let path = segment_path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    Ok((path, file))
}

pub(super) fn create_first_segment(
    dir: &Path,
    first_index: u64,
    marks: bool,
) -> Result<Segment, WalError> {
    let (path, file) = new_segment_file(dir, first_index)?;
    file.write_all_at(super::magic(marks), 0)
        .map_err(io_err(&path))?;
    file.sync_data().map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(Segment {
        path: Arc::from(path),
        first_index,
        offsets: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        file: Arc::new(file),
        marked: marks,
    })
}
