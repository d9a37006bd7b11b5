//! Changing the log other than by appending, for a replica of a Raft group: cutting a
//! suffix (a follower's entries that conflict with the leader's) and starting anew after a
//! point (a replica brought up by a snapshot beyond its last entry).
//!
//! Both keep the recovery rules of the module docs true at every step a crash can fall on:
//! later segments are unlinked newest first (what remains is contiguous), a cut segment is
//! truncated and fsynced before anything is appended to it, and a restart unlinks oldest
//! first before creating the new first segment (an empty directory opens as a new log; the
//! caller, which knows the point, restarts it again).

use super::segment::{
    Active, SyncedEnd, create_first_segment, forget_syncs_in_flight, lock_synced, read_lock,
    sync_dir, vouch, write_lock,
};
use super::{SEGMENT_HEADER_LEN, Wal, WalError, io_err};
use crate::disk as fs;
use std::io;

impl Wal {
    pub(super) fn refuse_if_failed(&self) -> Result<(), WalError> {
        if self.failed {
            return Err(WalError::Io {
                path: self.active.path.to_path_buf(),
                source: io::Error::other(
                    "WAL is unusable after an earlier I/O error; it must be reopened",
                ),
            });
        }
        Ok(())
    }

    /// After a cut (synced, like everything before it): the synced end is the active
    /// segment's new end, under a new generation, so that no sync planned before the cut
    /// moves it past bytes written after it.
    /// What is kept is synced, so a tail mark may vouch for it (see `segment::vouch`).
    fn restart_synced(&self) {
        let at = {
            let mut s = lock_synced(&self.synced);
            s.synced = SyncedEnd {
                generation: s.synced.generation + 1,
                segment: self.active.first_index,
                end: if self.config.sync {
                    self.active.len
                } else {
                    SEGMENT_HEADER_LEN
                },
            };
            s.written = (self.config.marks && self.active.marked)
                .then_some((self.active.first_index, self.active.len));
            s.synced
        };
        if self.config.sync {
            vouch(
                &self.synced,
                &self.active.file,
                at,
                &self.prealloc.past_end(),
            );
        }
    }

    /// Removes every record with index `>= from` (nothing if `from` is past the end). `from`
    /// must not be below the first index held.
    pub fn truncate_from(&mut self, from: u64) -> Result<(), WalError> {
        self.refuse_if_failed()?;
        if from > self.last_index() {
            return Ok(());
        }
        if from < self.first_index() {
            return Err(WalError::Removed {
                index: from,
                first: self.first_index(),
            });
        }
        let result = self.truncate_inner(from);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn truncate_inner(&mut self, from: u64) -> Result<(), WalError> {
        forget_syncs_in_flight(&self.synced);
        // Nothing is zero-filled while files are removed and cut; the active segment is filled
        // again from its new end.
        self.prealloc.paused(|| ());
        let dir = self.config.dir.clone();
        let mut unlinked = false;
        loop {
            let doomed = {
                let shared = read_lock(&self.shared);
                let n = shared.segments.len();
                let last = &shared.segments[n - 1];
                (n > 1 && last.first_index >= from).then(|| last.path.clone())
            };
            let Some(path) = doomed else { break };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            write_lock(&self.shared).segments.pop();
            unlinked = true;
        }
        if unlinked {
            sync_dir(&dir).map_err(io_err(&dir))?;
        }
        let mut shared = write_lock(&self.shared);
        let seg = shared
            .segments
            .last_mut()
            .ok_or_else(|| WalError::InvalidConfig("no segment left".into()))?;
        // Segments that were not the last at open were opened read-only: this one is written
        // to from now on.
        let writable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        seg.file = std::sync::Arc::new(writable);
        if from < seg.next_index() {
            let keep = (from - seg.first_index) as usize;
            let cut_at = seg.cut_offset(keep);
            seg.file.set_len(cut_at).map_err(io_err(&seg.path))?;
            seg.file.sync_all().map_err(io_err(&seg.path))?;
            seg.offsets.truncate(keep);
            seg.end = cut_at;
        }
        self.active = Active {
            path: seg.path.clone(),
            first_index: seg.first_index,
            file: seg.file.clone(),
            len: seg.end,
            count: seg.offsets.len() as u64,
            marked: seg.marked,
        };
        drop(shared);
        self.restart_synced();
        self.prealloc
            .fill_from(&self.active.file, &self.active.path, self.active.len);
        tracing::info!(from, last_index = from - 1, "WAL: cut a suffix");
        Ok(())
    }

    /// Drops every record and goes on with `next` as the next index. Returns how many
    /// segments were removed.
    pub fn restart_at(&mut self, next: u64) -> Result<usize, WalError> {
        self.refuse_if_failed()?;
        if next == 0 {
            return Err(WalError::InvalidConfig("indexes start at 1".into()));
        }
        forget_syncs_in_flight(&self.synced);
        self.prealloc.paused(|| ());
        let dir = self.config.dir.clone();
        let mut shared = write_lock(&self.shared);
        let removed = shared.segments.len();
        for seg in &shared.segments {
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.failed = true;
                    return Err(io_err(&seg.path)(e));
                }
            }
        }
        let seg = match create_first_segment(&dir, next, self.config.marks) {
            Ok(seg) => seg,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        self.active = Active {
            path: seg.path.clone(),
            first_index: seg.first_index,
            file: seg.file.clone(),
            len: seg.end,
            count: 0,
            marked: seg.marked,
        };
        shared.segments = vec![seg];
        drop(shared);
        self.restart_synced();
        self.prealloc
            .fill_from(&self.active.file, &self.active.path, self.active.len);
        tracing::info!(next, removed, "WAL: restarted after a snapshot");
        Ok(removed)
    }
}
