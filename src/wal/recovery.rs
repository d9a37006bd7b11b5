//! Recovery at open: scanning a segment record by record, checking each checksum, and
//! telling a torn tail (cut back) from corruption anywhere else (an error naming the file
//! and byte offset).

use crate::disk::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::{Segment, read_mark};
use super::{
    MARK_LEN, MARK_TAG, MARKED, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    SEGMENT_MAGIC_MARKED, WalError, corruption, io_err, record_crc,
};

pub(super) struct Scan {
    /// Created with marks (its magic).
    pub(super) marked: bool,
    pub(super) offsets: Vec<u32>,
    /// End of the last good record (0 when the header itself is torn).
    pub(super) end: u64,
    pub(super) torn: Option<Torn>,
}

pub(super) struct Torn {
    pub(super) file_len: u64,
    pub(super) reason: String,
    pub(super) rewrite_header: bool,
}

/// A last segment with no record and its header to write again.
fn header_to_rewrite(file_len: u64, reason: String) -> Scan {
    Scan {
        marked: false,
        offsets: Vec::new(),
        end: 0,
        torn: Some(Torn {
            file_len,
            reason,
            rewrite_header: true,
        }),
    }
}

/// Checks the segment's 8-byte magic: `Ok(Err(marked))` says whether it was created with
/// marks. A last segment whose header was cut short, or that holds zeros only (its magic
/// never synced), is a torn tail (`Ok(Ok(scan))`, to be rewritten); any other bad header is
/// corruption.
fn check_header(
    path: &Path,
    reader: &mut impl Read,
    file_len: u64,
    is_last: bool,
) -> Result<Result<Scan, bool>, WalError> {
    if file_len < SEGMENT_HEADER_LEN {
        let mut partial = vec![0u8; file_len as usize];
        reader.read_exact(&mut partial).map_err(io_err(path))?;
        if is_last
            && (SEGMENT_MAGIC.starts_with(&partial) || SEGMENT_MAGIC_MARKED.starts_with(&partial))
        {
            return Ok(Ok(header_to_rewrite(
                file_len,
                format!("incomplete segment header ({file_len} of 8 bytes)"),
            )));
        }
        return Err(corruption(
            path,
            0,
            format!("segment is {file_len} bytes, shorter than its 8-byte header"),
        ));
    }
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(io_err(path))?;
    if &magic == SEGMENT_MAGIC_MARKED {
        return Ok(Err(true));
    }
    if is_last && magic == [0; 8] && zeros_to_end(path, reader, file_len - SEGMENT_HEADER_LEN)? {
        // Created, zero-filled ahead of the writer and synced, its magic not yet: a power
        // loss right after a segment was started. Nothing in it was ever written.
        return Ok(Ok(header_to_rewrite(
            file_len,
            "a segment of zeros, its header never written".into(),
        )));
    }
    if &magic != SEGMENT_MAGIC {
        return Err(corruption(
            path,
            0,
            format!("bad segment magic \"{}\"", magic.escape_ascii()),
        ));
    }
    Ok(Err(false))
}

/// Verifies a whole segment. A damaged tail of the last segment is reported
/// as `torn`; any other damage is an error.
pub(super) fn scan_segment(
    path: &Path,
    file: &File,
    is_last: bool,
    max: u32,
) -> Result<Scan, WalError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, crate::disk::ReadFrom::start(file));

    let marked_magic = match check_header(path, &mut reader, file_len, is_last)? {
        Ok(torn_header) => return Ok(torn_header),
        Err(marked) => marked,
    };
    let mut scan = Scanning::new(path, file, file_len, is_last, marked_magic);
    let mut pos = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < RECORD_HEADER_LEN {
            return scan.tail(format!("incomplete record header ({remaining} of 8 bytes)"));
        }
        let mut header = [0u8; 8];
        reader.read_exact(&mut header).map_err(io_err(path))?;
        if header == [0; 8] {
            // No record has an all-zero header (the checksum of a length is never 0): this is
            // where the records end and the zeros written ahead of them begin.
            let after = pos + RECORD_HEADER_LEN;
            if !zeros_to_end(path, &mut reader, file_len - after)? {
                return scan.damaged(
                    pos,
                    "an all-zero record header with non-zero bytes after it",
                );
            }
            return scan.zero_tail(pos);
        }
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes);
        if len == MARK_TAG {
            match scan.read_mark(&mut reader, header, pos)? {
                MarkRead::Good => {
                    pos += MARK_LEN;
                    continue;
                }
                MarkRead::Torn(reason) => return scan.tail(reason),
                MarkRead::Damaged(reason) => return scan.damaged(pos, reason),
            }
        }
        let stored_crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let end = pos + RECORD_HEADER_LEN + u64::from(len);
        if end > file_len {
            return scan.tail(format!(
                "record of {len} bytes runs past the end of the file ({file_len} bytes)"
            ));
        }
        if len > max {
            return scan.damaged(
                pos,
                format!("record length {len} exceeds max_record_bytes {max}"),
            );
        }
        let offset = u32::try_from(pos)
            .ok()
            .filter(|o| o & MARKED == 0)
            .ok_or_else(|| corruption(path, pos, "record offset beyond 2 GiB in one segment"))?;
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err(path))?;
        let crc = record_crc(&len_bytes, &payload);
        if crc != stored_crc {
            let reason =
                format!("checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})");
            return match torn_final(path, &mut reader, end, file_len)? {
                Some(after) => scan.tail(format!("{reason} in the final record{after}")),
                None => scan.damaged(
                    pos,
                    format!("{reason}; {} more bytes follow", file_len - end),
                ),
            };
        }
        scan.offsets.push(if scan.after_mark {
            offset | MARKED
        } else {
            offset
        });
        scan.after_mark = false;
        scan.records_end = end;
        pos = end;
    }
    scan.finish()
}

/// What a mark's header began: a good mark, one cut short, or a damaged one.
enum MarkRead {
    Good,
    Torn(String),
    Damaged(String),
}

/// A segment being scanned: the records found so far, and what the marks said.
struct Scanning<'a> {
    path: &'a Path,
    file: &'a File,
    file_len: u64,
    is_last: bool,
    offsets: Vec<u32>,
    /// End of the last good record (or of the header): where a cut leaves the file, a mark
    /// after it going with the records it announced.
    records_end: u64,
    /// A mark was just read: the next record is its group's first.
    after_mark: bool,
    /// That mark says the segment is synced through itself: a tail mark (`vouch`), which an
    /// idle log leaves after its last group.
    tail_mark: bool,
    /// Created with marks (its magic): damage in it is judged by them.
    marked: bool,
}

impl<'a> Scanning<'a> {
    /// Nothing read yet past the segment's header.
    fn new(path: &'a Path, file: &'a File, file_len: u64, is_last: bool, marked: bool) -> Self {
        Scanning {
            path,
            file,
            file_len,
            is_last,
            offsets: Vec::new(),
            records_end: SEGMENT_HEADER_LEN,
            after_mark: false,
            tail_mark: false,
            marked,
        }
    }

    /// Reads the rest of a mark whose header is at `pos`.
    fn read_mark(
        &mut self,
        reader: &mut impl Read,
        header: [u8; 8],
        pos: u64,
    ) -> Result<MarkRead, WalError> {
        if !self.marked {
            return Ok(MarkRead::Damaged(
                "a group mark in a segment created without marks".into(),
            ));
        }
        let remaining = self.file_len - pos;
        if remaining < MARK_LEN {
            return Ok(MarkRead::Torn(format!(
                "incomplete group mark ({remaining} of 16 bytes)"
            )));
        }
        let mut mark = [0u8; MARK_LEN as usize];
        mark[..8].copy_from_slice(&header);
        reader
            .read_exact(&mut mark[8..])
            .map_err(io_err(self.path))?;
        Ok(match read_mark(&mark) {
            Some(end) if end <= pos && !self.after_mark => {
                self.after_mark = true;
                self.tail_mark = end == pos;
                MarkRead::Good
            }
            Some(end) if end > pos => {
                MarkRead::Damaged(format!("a group mark saying byte {end}, past itself"))
            }
            Some(_) => MarkRead::Damaged("two group marks in a row".into()),
            None => MarkRead::Damaged("a group mark whose checksum fails".into()),
        })
    }

    /// The end of the file reached: every record read (a mark left last goes, cut, unless it
    /// is a tail mark).
    fn finish(self) -> Result<Scan, WalError> {
        if self.after_mark && !self.tail_mark {
            return self.tail("a group mark with no record after it".into());
        }
        // Every record read, maybe a tail mark after them (in the last segment, left for the
        // writer to write over like the zeros of a preallocated tail). The writer never leaves
        // one in a sealed segment (sealing cuts the file to its last record); should one be
        // found there, a record lost before it still shows as the next segment not starting
        // where this one ends.
        Ok(Scan {
            marked: self.marked,
            end: self.records_end,
            offsets: self.offsets,
            torn: None,
        })
    }

    /// The records end here, the rest of the last segment is to be cut (a torn tail) —
    /// unless a mark in what would be cut says the segment was synced past its start (a
    /// damaged length can make a synced record look like one running past the end).
    fn tail(self, reason: String) -> Result<Scan, WalError> {
        if !self.is_last {
            return Err(corruption(
                self.path,
                self.records_end,
                format!("{reason} in a non-last segment"),
            ));
        }
        self.refuse_if_synced(self.records_end, &reason)?;
        Ok(self.cut(reason))
    }

    /// The scan so far, with the rest of the file to be cut.
    fn cut(self, reason: String) -> Scan {
        Scan {
            marked: self.marked,
            offsets: self.offsets,
            end: self.records_end,
            torn: Some(Torn {
                file_len: self.file_len,
                reason,
                rewrite_header: false,
            }),
        }
    }

    /// Corruption if a valid mark after `pos` says the segment was synced past it (in a
    /// segment written with marks: in one without, a payload could forge one).
    fn refuse_if_synced(&self, pos: u64, reason: &str) -> Result<(), WalError> {
        if !self.marked {
            return Ok(());
        }
        match synced_past(self.path, self.file, pos, self.file_len)? {
            Some((at, synced)) => Err(corruption(
                self.path,
                pos,
                format!(
                    "{reason}, and the group mark at byte {at} says the segment was synced \
                     through byte {synced}: synced bytes are damaged"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Damage at `pos` with more bytes after it. In the last segment, created with marks, it
    /// is a power loss's (cut) unless a valid mark further on says the segment was synced past
    /// it; anywhere else it is corruption.
    fn damaged(self, pos: u64, reason: impl Into<String>) -> Result<Scan, WalError> {
        let reason = reason.into();
        if !self.is_last || !self.marked {
            // A sealed segment (synced whole), or one written without marks (a log or a
            // journal from before them): nothing tells a power loss from damage.
            return Err(corruption(self.path, pos, reason));
        }
        self.refuse_if_synced(pos, &reason)?;
        Ok(self.cut(format!(
            "{reason}; no later group mark says it was synced (writes in flight at a power \
             loss)"
        )))
    }

    /// An all-zero header at `pos` with only zeros after it: the end of the records of the
    /// last segment (its preallocated tail, kept for the writer). In a sealed segment (one is
    /// cut to its last record before its successor exists) it is corruption.
    fn zero_tail(self, pos: u64) -> Result<Scan, WalError> {
        if !self.is_last {
            return Err(corruption(
                self.path,
                pos,
                format!(
                    "{} zero bytes after the last record of a non-last segment",
                    self.file_len - pos
                ),
            ));
        }
        // A mark whose group's records never reached the disk is left for the writer to
        // write over, like the zeros.
        Ok(Scan {
            marked: self.marked,
            offsets: self.offsets,
            end: self.records_end,
            torn: None,
        })
    }
}

/// The first valid mark in `file` after byte `pos` that says the file was synced past
/// `pos`, as (where it is, what it says). A damaged record's length cannot be trusted, so
/// every byte offset is tried: a mark is its tag and a checksum over it and its value (a
/// payload forging one can only make an open refuse, never cut).
fn synced_past(
    path: &Path,
    file: &File,
    pos: u64,
    file_len: u64,
) -> Result<Option<(u64, u64)>, WalError> {
    const BLOCK: u64 = 1 << 20;
    let tag = MARK_TAG.to_le_bytes();
    let mut buf = vec![0u8; (BLOCK + MARK_LEN) as usize];
    let mut base = pos + 1;
    while base < file_len {
        let n = (file_len - base).min(BLOCK + MARK_LEN) as usize;
        file.read_exact_at(&mut buf[..n], base)
            .map_err(io_err(path))?;
        let starts = n.saturating_sub(MARK_LEN as usize - 1);
        for i in 0..starts.min(BLOCK as usize) {
            if buf[i..i + 4] == tag
                && let Some(synced) = read_mark(&buf[i..n])
                && synced > pos
                && synced <= base + i as u64
            {
                return Ok(Some((base + i as u64, synced)));
            }
        }
        base += BLOCK;
    }
    Ok(None)
}

/// Whether a record that fails its checksum and ends at `end` is the final one, torn: it ends
/// the file, or only zeros (a preallocated tail the write did not reach) follow it. `Some`
/// says which, for the warning.
fn torn_final(
    path: &Path,
    reader: &mut impl Read,
    end: u64,
    file_len: u64,
) -> Result<Option<&'static str>, WalError> {
    if end == file_len {
        return Ok(Some(""));
    }
    Ok(zeros_to_end(path, reader, file_len - end)?.then_some(", zeros after it"))
}

/// Whether the next `n` bytes of `reader` are all zero.
fn zeros_to_end(path: &Path, reader: &mut impl Read, n: u64) -> Result<bool, WalError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..k]).map_err(io_err(path))?;
        if buf[..k].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        left -= k as u64;
    }
    Ok(true)
}

/// Opens one segment found at open (writable when it is the last), scans it, and cuts a
/// torn tail back; returns the segment and the bytes cut.
pub(super) fn open_segment(
    path: PathBuf,
    first_index: u64,
    is_last: bool,
    max_record_bytes: u32,
    marks: bool,
) -> Result<(Segment, u64), WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(&path)
        .map_err(io_err(&path))?;
    let scan = scan_segment(&path, &file, is_last, max_record_bytes)?;
    let mut end = scan.end;
    let mut marked = scan.marked;
    let mut cut = 0;
    if let Some(torn) = scan.torn {
        cut = torn.file_len - scan.end;
        if torn.rewrite_header {
            file.set_len(0).map_err(io_err(&path))?;
            file.write_all_at(super::magic(marks), 0)
                .map_err(io_err(&path))?;
            end = SEGMENT_HEADER_LEN;
            marked = marks;
        } else {
            file.set_len(scan.end).map_err(io_err(&path))?;
        }
        file.sync_all().map_err(io_err(&path))?;
        tracing::warn!(
            path = %path.display(),
            good_end = scan.end,
            file_len = torn.file_len,
            bytes_cut = cut,
            reason = %torn.reason,
            "WAL: truncated torn tail of last segment"
        );
    }
    let segment = Segment {
        path: Arc::from(path),
        first_index,
        offsets: scan.offsets,
        end,
        file: Arc::new(file),
        marked,
    };
    Ok((segment, cut))
}
