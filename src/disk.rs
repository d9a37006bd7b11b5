//! The file system the stores keep their data on: the LogStore's WAL segments and log id, the
//! shard's redb file. Normally the machine's (`std::fs`). With the cargo feature `sim-disk`,
//! turmoil's simulated disk instead, for the deterministic simulation (`tests/sim.rs`): there
//! a host crash loses what was written but not synced, and writes can tear at block
//! boundaries. That disk exists only inside a simulation (outside one its calls panic), so
//! the feature is for building that test alone, never a server.
//!
//! A compile-time switch rather than a trait object: the stores call these few functions on
//! every write, and the simulated disk has to look like `std::fs` to redb and the WAL alike.

use std::io;
use std::path::Path;

#[cfg(not(feature = "sim-disk"))]
pub use std::fs::{
    File, OpenOptions, create_dir_all, read, read_dir, read_to_string, remove_file, rename,
};
#[cfg(feature = "sim-disk")]
pub use turmoil::fs::shim::std::fs::{
    File, OpenOptions, create_dir_all, read, read_dir, read_to_string, remove_file, rename,
};

/// What a LogStore (single node or replica) keeps in its data directory and a shard never
/// does, and the reverse: a server refuses a directory holding the other kind's by name.
/// A LogStore started on a shard's data (or the reverse) used to start a new log or store
/// beside it. The names are the owners' (`logstore::log_id`, `logstore::raft`,
/// `shard::journal`, `shard::store`), written here because neither may import the other; a
/// test keeps them equal.
pub const LOG_MARKERS: [&str; 3] = ["log-id", "raft-state", "raft-replica-id"];
/// See [`LOG_MARKERS`].
pub const SHARD_MARKERS: [&str; 3] = ["journal", "snapshot", "shard.redb"];

/// How old a temporary file [`remove_stale_temps`] removes must be: one lives for one
/// write, so one older than this was left by a process killed in the middle of it.
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the files of `dir` named `prefix...` last changed over [`STALE_TEMP_AGE`] ago: the
/// temporary files a process writes beside a file and renames (or links) into place, left
/// behind when it was killed between the two (each SIGKILL at that moment left one, for
/// good). Younger ones may be another live process's, on its way. Best effort, on the
/// machine's file system (the lease and cursor files, not a store's); returns how many went.
pub fn remove_stale_temps(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let stale = |e: &std::fs::DirEntry| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_TEMP_AGE))
    };
    entries
        .flatten()
        .filter(stale)
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// The first of `markers` that `dir` holds.
pub fn holds_any(dir: &Path, markers: &[&'static str]) -> Option<&'static str> {
    markers
        .iter()
        .copied()
        .find(|m| exists(&dir.join(m)).unwrap_or(false))
}

/// Refuses a data directory that is something else (a file): opening or creating it
/// would otherwise fail with "File exists" or "Not a directory". (On the simulated disk
/// data directories are never files: not checked.)
pub fn data_dir_not_a_file(dir: &Path) -> Result<(), String> {
    #[cfg(not(feature = "sim-disk"))]
    let is_file = std::fs::metadata(dir).is_ok_and(|m| !m.is_dir());
    #[cfg(feature = "sim-disk")]
    let is_file = false;
    if is_file {
        return Err(format!(
            "the data directory {} is a file, not a directory",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> io::Result<bool> {
    #[cfg(not(feature = "sim-disk"))]
    {
        std::fs::exists(path)
    }
    #[cfg(feature = "sim-disk")]
    {
        Ok(turmoil::fs::shim::std::fs::exists(path))
    }
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(not(feature = "sim-disk"))]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(feature = "sim-disk")]
    {
        turmoil::fs::shim::std::fs::sync_dir(dir)
    }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either the old or the new
/// file whole: written to `path.tmp`, fsynced, renamed over `path`, the directory fsynced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durably_parts(path, &[bytes])
}

/// [`write_durably`] of `parts` one after the other (not copied into one buffer first).
pub fn write_durably_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut at = 0;
    for part in parts {
        file.write_all_at(part, at)?;
        at += part.len() as u64;
    }
    file.sync_all()?;
    drop(file);
    rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
    }
}

/// [`write_durably`] without its syncs: the `log-skips-fsync` mutation's vote file.
pub fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all_at(bytes, 0)
}

/// The file whose lock says a directory is in use ([`lock_dir`]).
pub const LOCK_FILE: &str = "LOCK";

/// Locks `dir` for this process: an exclusive `flock` on `dir/LOCK`, held while the returned
/// file stays open and released by the kernel when the process ends, however it ends. A
/// second locker (another process, or another open in this one) gets
/// [`io::ErrorKind::WouldBlock`]. Two servers on one data directory would both append to
/// the same segments (and cut each other's records as torn tails at open). On the simulated
/// disk there are no processes to exclude: `None`.
pub fn lock_dir(dir: &Path) -> io::Result<Option<std::fs::File>> {
    #[cfg(not(feature = "sim-disk"))]
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
    #[cfg(feature = "sim-disk")]
    {
        let _ = dir;
        Ok(None)
    }
}

/// Opens (creating if needed) the redb database at `path` on this disk.
pub fn open_redb(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    #[cfg(not(feature = "sim-disk"))]
    {
        redb::Database::create(path)
    }
    #[cfg(feature = "sim-disk")]
    {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        redb::Builder::new().create_with_backend(sim::RedbFile(file))
    }
}

#[cfg(feature = "sim-disk")]
pub use sim::power_cut;

#[cfg(feature = "sim-disk")]
mod sim {
    //! redb's storage backend over a file of the simulated disk (redb's own `FileBackend`
    //! takes a `std::fs::File`), and the power cut that keeps a crashed host's destructors
    //! off the disk.

    use redb::StorageBackend;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    static POWER_CUT: AtomicBool = AtomicBool::new(false);

    /// While `true`, every redb call on the simulated disk fails without touching it. A
    /// simulation sets it while it crashes a host (tearing down a host's software runs its
    /// destructors, and redb's closes the file cleanly, writing and syncing what a crashed
    /// process never would) and before it drops the simulation (outside one, the disk
    /// cannot be reached).
    pub fn power_cut(on: bool) {
        POWER_CUT.store(on, Ordering::SeqCst);
    }

    fn powered() -> io::Result<()> {
        if POWER_CUT.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated power cut"));
        }
        Ok(())
    }

    #[derive(Debug)]
    pub(super) struct RedbFile(pub(super) super::File);

    impl StorageBackend for RedbFile {
        fn len(&self) -> io::Result<u64> {
            powered()?;
            Ok(self.0.metadata()?.len())
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            powered()?;
            self.0.read_exact_at(out, offset)
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            powered()?;
            self.0.set_len(len)
        }

        fn sync_data(&self) -> io::Result<()> {
            powered()?;
            self.0.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            powered()?;
            self.0.write_all_at(data, offset)
        }
    }
}

/// Reads a shared file from the start, by position (std's `&File` reads, the simulated
/// disk's does not; both read at an offset).
pub struct ReadFrom<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> ReadFrom<'a> {
    pub fn start(file: &'a File) -> Self {
        ReadFrom { file, offset: 0 }
    }
}

impl io::Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod marker_tests {
    #[test]
    fn the_markers_are_the_names_their_owners_write() {
        assert_eq!(
            super::LOG_MARKERS,
            [
                crate::logstore::log_id::LOG_ID_FILE,
                crate::logstore::raft::storage::STATE_FILE,
                crate::logstore::raft::dir::REPLICA_ID_FILE,
            ]
        );
        assert_eq!(
            super::SHARD_MARKERS,
            [
                crate::shard::journal::JOURNAL_DIR,
                crate::shard::journal::SNAPSHOT_FILE,
                crate::shard::store::DB_FILE,
            ]
        );
    }
}
