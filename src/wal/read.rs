//! Reads: a [`WalReader`] plans a range over the durable segments and reads each record
//! back, checking its checksum.

use super::{
    MARK_LEN, RECORD_HEADER_LEN, Shared, SharedLock, WalError, corruption, io_err, read_lock,
    read_mark, record_crc,
};
use crate::disk::File;
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Read handle on the durable part of the log. `Clone + Send + Sync`.
#[derive(Clone)]
pub struct WalReader {
    pub(super) shared: SharedLock,
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
pub(super) struct Chunk {
    pub(super) path: Arc<Path>,
    pub(super) file: Arc<File>,
    pub(super) first_index: u64,
    pub(super) start: u64,
    /// End of the last record (marks between the records are read and skipped).
    pub(super) end: u64,
    pub(super) payload_lens: Vec<u32>,
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
            let (start, len) = seg.record(ord);
            if index > from && total + len > max_bytes {
                full = true;
                break;
            }
            let c = chunk.get_or_insert_with(|| Chunk {
                path: seg.path.clone(),
                file: seg.file.clone(),
                first_index: index,
                start,
                end: start,
                payload_lens: Vec::new(),
            });
            c.payload_lens.push(len as u32);
            c.end = start + RECORD_HEADER_LEN + len;
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
    let mut buf = vec![0u8; (chunk.end - chunk.start) as usize];
    chunk
        .file
        .read_exact_at(&mut buf, chunk.start)
        .map_err(io_err(&chunk.path))?;
    let mut pos = 0usize;
    for (i, &expected) in chunk.payload_lens.iter().enumerate() {
        if i > 0 && read_mark(&buf[pos..]).is_some() {
            pos += MARK_LEN as usize;
        }
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
