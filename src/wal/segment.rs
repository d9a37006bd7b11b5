//! Segment files and the state the writer shares with readers: the durable records of
//! each segment (offsets and end), the disk seam ([`SegmentIo`]) tests fault through, the
//! record checksum and segment naming.

use super::{
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_NAME_DIGITS, SEGMENT_SUFFIX, WalError, corruption,
    io_err,
};
use crate::disk::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One segment as seen by readers: only durable records are listed.
pub(super) struct Segment {
    pub(super) path: Arc<Path>,
    pub(super) first_index: u64,
    /// Byte offset of each durable record in the file.
    pub(super) offsets: Vec<u32>,
    /// End of the last durable record (file offset).
    pub(super) end: u64,
    pub(super) file: Arc<File>,
}

impl Segment {
    pub(super) fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }
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

pub(super) fn create_first_segment(dir: &Path, first_index: u64) -> Result<Segment, WalError> {
    let (path, file) = new_segment_file(dir, first_index)?;
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
