//! Keeping the active segment zero-filled ahead of its end, so that the writer's
//! `fdatasync` flushes data only.
//!
//! An append that extends a file changes its size, and ext4 then commits its journal on
//! every `fdatasync` (the new size is metadata needed to read the data back). Writing over
//! bytes that already exist does not: on this machine a 10 KB write + `fdatasync` takes p50
//! 0.36 ms into a zero-filled file against 0.55-0.69 ms when it extends the file (and
//! `fallocate` does not help: its unwritten extents are converted, a journal commit again, at
//! the first sync after a write). So a thread of its own writes zeros, in chunks of
//! [`CHUNK`], up to [`AHEAD`] past the writer's end (never past the segment's size, where the
//! writer rolls to a new segment), and syncs them: PostgreSQL's zero-filled WAL segments, done
//! ahead rather than all at once so that a new segment costs no pause and a short-lived log
//! writes few zeros.
//!
//! Zeros never overwrite a record: the filler writes only at or past `zeroed` (the end of what
//! is zero-filled or written), under [`Filler::target`]'s lock, and a writer that writes past
//! `zeroed` takes the same lock and moves `zeroed` past its write. A write that ends at or
//! below `zeroed` needs no lock: it cannot meet the filler, which is further on. The writer's
//! thread resets `zeroed` (a new segment, a cut) with the filler paused.
//!
//! Recovery ([`super::recovery`]) reads an all-zero record header followed by zeros to the
//! end of the file as the end of the log; a sealed segment is cut to its last record before
//! its successor exists, so only the last segment ever has a zero-filled tail.
//!
//! This is an optimisation only: when the filler fails (a full disk), it says so and stops
//! until the next segment, and the writer extends the file as it would without it. Under a deterministic
//! simulation ([`crate::blocking::inline`]) there is no filler: it would be a thread outside
//! the simulation.

use crate::disk::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::segment::SegmentIo;

/// Zeros written per step of the filler.
pub(super) const CHUNK: u64 = 1024 * 1024;
/// How far past the writer's end the filler keeps the file zero-filled.
pub(super) const AHEAD: u64 = 4 * 1024 * 1024;
/// Zeros written per `write` call. A page, not the whole chunk at once: Linux (ext4 since
/// 6.16) caches a file in folios as large as the writes that created them, and a later small
/// write into a large folio dirties all of it — `/proc/PID/io` then counts (measured here:
/// 103 bytes per byte for 1 MiB zero writes, 2.4 for 16 KiB, 1.2 for 4 KiB, as many as a file
/// that grows as written) and the page cache tracks the whole folio.
const ZERO_WRITE: u64 = 4096;

/// The file being filled (`None`: paused).
struct Target {
    file: Option<Arc<File>>,
    path: Option<Arc<Path>>,
}

struct Filler {
    target: Mutex<Target>,
    /// Everything below is written: zeros or records.
    zeroed: AtomicU64,
    /// Where the filler should have reached.
    wanted: AtomicU64,
    wake: Condvar,
    stop: AtomicBool,
}

impl Filler {
    fn lock(&self) -> MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle for writing a few bytes past the writer's end from another thread (a tail mark,
/// `segment::vouch`), keeping clear of the filler like [`Prealloc::write`]: under its lock,
/// and moving `zeroed` past the write, so that no zeros are written over it.
#[derive(Clone, Default)]
pub(super) struct PastEnd(Option<Arc<Filler>>);

impl PastEnd {
    pub(super) fn write(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let Some(filler) = self
            .0
            .as_ref()
            .filter(|f| end > f.zeroed.load(Ordering::Acquire))
        else {
            // No filler, or one already past the write (it only writes at or past `zeroed`):
            // no need to wait for it.
            return file.write_all_at(buf, offset);
        };
        let _target = filler.lock();
        file.write_all_at(buf, offset)?;
        filler.zeroed.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }
}

/// The writer's handle on the filler (none when preallocation is off).
pub(super) struct Prealloc {
    filler: Option<Arc<Filler>>,
    thread: Option<JoinHandle<()>>,
    segment_bytes: u64,
}

impl Prealloc {
    /// A filler thread when `on` and not under a simulation; otherwise a pass-through.
    pub(super) fn start(on: bool, segment_bytes: u64) -> Prealloc {
        let mut prealloc = Prealloc {
            filler: None,
            thread: None,
            segment_bytes,
        };
        if !on || crate::blocking::inline() {
            return prealloc;
        }
        let filler = Arc::new(Filler {
            target: Mutex::new(Target {
                file: None,
                path: None,
            }),
            zeroed: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let f = filler.clone();
        match std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || fill(&f))
        {
            Ok(thread) => {
                prealloc.filler = Some(filler);
                prealloc.thread = Some(thread);
            }
            Err(error) => {
                tracing::warn!(%error, "WAL: no preallocation thread; segments grow as written");
            }
        }
        prealloc
    }

    /// Writes `buf` at `offset` of the active segment `file` through `io`, keeping clear of
    /// the filler (see the module docs), and asks it to fill on past the write.
    pub(super) fn write(
        &self,
        io: &mut dyn SegmentIo,
        file: &File,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        let Some(filler) = &self.filler else {
            return io.write_all_at(file, buf, offset);
        };
        let end = offset + buf.len() as u64;
        if end <= filler.zeroed.load(Ordering::Acquire) {
            io.write_all_at(file, buf, offset)?;
        } else {
            let _target = filler.lock();
            io.write_all_at(file, buf, offset)?;
            filler.zeroed.fetch_max(end, Ordering::AcqRel);
        }
        self.want(filler, end);
        Ok(())
    }

    /// A handle for writes past the end from other threads.
    pub(super) fn past_end(&self) -> PastEnd {
        PastEnd(self.filler.clone())
    }

    fn want(&self, filler: &Filler, end: u64) {
        let wanted = (end + AHEAD).min(self.segment_bytes);
        filler.wanted.store(wanted, Ordering::Release);
        // Woken once a whole chunk is missing (or the segment's last one), not after every
        // group: each wake-up ends in a sync of its own.
        let zeroed = filler.zeroed.load(Ordering::Acquire);
        if wanted >= zeroed + CHUNK || (wanted == self.segment_bytes && wanted > zeroed) {
            filler.wake.notify_one();
        }
    }

    /// Stops filling (until [`Prealloc::fill_from`]) and runs `f` on the paused filler: for
    /// changing the active file's length.
    pub(super) fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(filler) = &self.filler else {
            return f();
        };
        let mut target = filler.lock();
        target.file = None;
        target.path = None;
        f()
    }

    /// Seals a full segment: it stops being filled, and a zero-filled tail past its last
    /// record (`end`) is cut, so that only the last segment ever has one.
    pub(super) fn seal(&self, file: &File, end: u64) -> io::Result<()> {
        self.paused(|| {
            if file.metadata()?.len() > end {
                file.set_len(end)?;
            }
            Ok(())
        })
    }

    /// From now on fills `file` (the active segment; its records end at `end`).
    pub(super) fn fill_from(&self, file: &Arc<File>, path: &Arc<Path>, end: u64) {
        let Some(filler) = &self.filler else {
            return;
        };
        let len = file.metadata().map_or(end, |m| m.len()).max(end);
        {
            let mut target = filler.lock();
            target.file = Some(file.clone());
            target.path = Some(path.clone());
            filler.zeroed.store(len, Ordering::Release);
        }
        self.want(filler, end);
    }

    /// Waits until the filler has done what was asked of it (tests).
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let Some(filler) = &self.filler else { return };
        for _ in 0..2000 {
            let paused = filler.lock().file.is_none();
            // Less than a chunk missing does not wake the filler on its own.
            filler.wake.notify_one();
            if paused
                || filler.zeroed.load(Ordering::Acquire) >= filler.wanted.load(Ordering::Acquire)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the WAL's preallocation did not settle in 10 s");
    }
}

impl Drop for Prealloc {
    fn drop(&mut self) {
        if let Some(filler) = &self.filler {
            // Under the lock, so that the filler cannot miss the wake-up between its check
            // and its wait.
            let _target = filler.lock();
            filler.stop.store(true, Ordering::Release);
            filler.wake.notify_all();
        }
        // Joined, so that no zeros are written once the log may be opened again.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `len` zeros at `at`, a page per call (see [`ZERO_WRITE`]).
fn zero(file: &File, at: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; ZERO_WRITE as usize] = [0; ZERO_WRITE as usize];
    let mut done = 0;
    while done < len {
        // Up to the next page boundary first, so that every later write is page-aligned.
        let pos = at + done;
        let k = (ZERO_WRITE - pos % ZERO_WRITE).min(len - done);
        file.write_all_at(&ZEROS[..k as usize], pos)?;
        done += k;
    }
    Ok(())
}

/// The filler's thread: waits for work, fills one chunk at a time, stops on a failure.
fn fill(filler: &Filler) {
    loop {
        let mut target = filler.lock();
        while !filler.stop.load(Ordering::Acquire)
            && (target.file.is_none()
                || filler.zeroed.load(Ordering::Acquire) >= filler.wanted.load(Ordering::Acquire))
        {
            target = filler
                .wake
                .wait(target)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if filler.stop.load(Ordering::Acquire) {
            return;
        }
        let (Some(file), Some(path)) = (target.file.clone(), target.path.clone()) else {
            continue;
        };
        let at = filler.zeroed.load(Ordering::Acquire);
        // `wanted` may have moved back since the check (a cut), never below zero.
        let len = CHUNK.min(filler.wanted.load(Ordering::Acquire).saturating_sub(at));
        if len == 0 {
            continue;
        }
        let written = zero(&file, at, len);
        if written.is_ok() {
            filler.zeroed.store(at + len, Ordering::Release);
        }
        drop(target);
        // Outside the lock: a writer waiting to write past `zeroed` need not wait for this.
        if let Err(error) = written.and_then(|()| file.sync_data()) {
            tracing::warn!(path = %path.display(), %error, "WAL: preallocating the active segment failed; it grows as written from now on");
            let mut target = filler.lock();
            target.file = None;
            target.path = None;
            filler.wanted.store(0, Ordering::Release);
            // Stays paused until the writer points it at another segment.
        }
    }
}
