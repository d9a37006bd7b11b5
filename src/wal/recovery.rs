//! Recovery at open: scanning a segment record by record, checking each checksum, and
//! telling a torn tail (cut back) from corruption anywhere else (an error naming the file
//! and byte offset).

use crate::disk::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::Segment;
use super::{
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, WalError, corruption, io_err, record_crc,
};

pub(super) struct Scan {
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

/// Checks the segment's 8-byte magic. A last segment whose header was cut short is a torn
/// tail (`Some`, to be rewritten); any other bad header is corruption.
fn check_header(
    path: &Path,
    reader: &mut impl Read,
    file_len: u64,
    is_last: bool,
) -> Result<Option<Scan>, WalError> {
    if file_len < SEGMENT_HEADER_LEN {
        let mut partial = vec![0u8; file_len as usize];
        reader.read_exact(&mut partial).map_err(io_err(path))?;
        if is_last && SEGMENT_MAGIC.starts_with(&partial) {
            return Ok(Some(Scan {
                offsets: Vec::new(),
                end: 0,
                torn: Some(Torn {
                    file_len,
                    reason: format!("incomplete segment header ({file_len} of 8 bytes)"),
                    rewrite_header: true,
                }),
            }));
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

    Ok(None)
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

    if let Some(torn_header) = check_header(path, &mut reader, file_len, is_last)? {
        return Ok(torn_header);
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
        if header == [0; 8] {
            // No record has an all-zero header (the checksum of a length is never 0): this is
            // where the records end and the zeros written ahead of them begin.
            return zero_tail(path, &mut reader, offsets, pos, file_len, is_last);
        }
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
            return match torn_final(path, &mut reader, end, file_len)? {
                Some(after) => tail(offsets, pos, format!("{reason} in the final record{after}")),
                None => Err(corruption(
                    path,
                    pos,
                    format!("{reason}; {} more bytes follow", file_len - end),
                )),
            };
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

/// An all-zero record header at `pos`: the end of the records when zeros follow it to the end
/// of the last segment (its preallocated tail, kept for the writer). Anything else is
/// corruption: a record zeroed with others after it, or a zero-filled tail in a sealed segment
/// (one is cut to its last record before its successor exists).
fn zero_tail(
    path: &Path,
    reader: &mut impl Read,
    offsets: Vec<u32>,
    pos: u64,
    file_len: u64,
    is_last: bool,
) -> Result<Scan, WalError> {
    let after = pos + RECORD_HEADER_LEN;
    if !zeros_to_end(path, reader, file_len - after)? {
        return Err(corruption(
            path,
            pos,
            "an all-zero record header with non-zero bytes after it",
        ));
    }
    if !is_last {
        return Err(corruption(
            path,
            pos,
            format!(
                "{} zero bytes after the last record of a non-last segment",
                file_len - pos
            ),
        ));
    }
    Ok(Scan {
        offsets,
        end: pos,
        torn: None,
    })
}

/// Opens one segment found at open (writable when it is the last), scans it, and cuts a
/// torn tail back; returns the segment and the bytes cut.
pub(super) fn open_segment(
    path: PathBuf,
    first_index: u64,
    is_last: bool,
    max_record_bytes: u32,
) -> Result<(Segment, u64), WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(&path)
        .map_err(io_err(&path))?;
    let scan = scan_segment(&path, &file, is_last, max_record_bytes)?;
    let mut end = scan.end;
    let mut cut = 0;
    if let Some(torn) = scan.torn {
        cut = torn.file_len - scan.end;
        if torn.rewrite_header {
            file.set_len(0).map_err(io_err(&path))?;
            file.write_all_at(SEGMENT_MAGIC, 0).map_err(io_err(&path))?;
            end = SEGMENT_HEADER_LEN;
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
    };
    Ok((segment, cut))
}
