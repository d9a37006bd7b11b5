//! The file lease: versioned JSON files on one filesystem, compare-and-set by `link(2)`
//! without locks, so a frozen replica never blocks the others (single-machine use).

use super::{
    Decision, LeaseBackend, LeaseError, LeaseState, checked_identity, decide, whole_units,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the lease file holds (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// `None` when free (never acquired, or released).
    pub(crate) holder: Option<String>,
    /// The fencing epoch: 0 until the first acquisition.
    pub(crate) epoch: u64,
    /// Wall clock of the last write by the holder, microseconds since the Unix epoch.
    pub(crate) renew_time_micros: u64,
    /// How long the holder's lease lasts after `renew_time_micros`.
    pub(crate) lease_duration_ms: u64,
    /// Number of changes of holder, as Kubernetes' `leaseTransitions`. Always equal to
    /// `epoch` in files this module writes; a mismatch is reported as corruption.
    pub(crate) transitions: u64,
}

impl FileRecord {
    fn free() -> Self {
        Self {
            holder: None,
            epoch: 0,
            renew_time_micros: 0,
            lease_duration_ms: 0,
            transitions: 0,
        }
    }

    fn expired(&self, now_micros: u64) -> bool {
        let until = self
            .renew_time_micros
            .saturating_add(self.lease_duration_ms.saturating_mul(1000));
        now_micros > until
    }
}

/// A lease in JSON files on one filesystem, for replicas on one machine (`demo`, tests).
///
/// Every write is a new *version*: the record goes to a temporary file (fsynced), which is
/// then hard-linked as `<path>.v<seq>` with `seq` one above the version it was decided on.
/// `link(2)` fails if that name exists, so of two writers that read the same version exactly
/// one wins: a compare-and-set with no lock. Readers take the highest version. A writer
/// whose link succeeded still checks that its version is the highest (a writer that slept
/// between reading and linking can land below versions already collected); if not, it lost.
/// (That check is conservative: a version superseded by a faster contender before its writer
/// confirmed it is also reported lost, so that epoch goes unused; epochs stay unique and
/// increasing, never shared.)
/// Versions more than two below a new one are deleted.
///
/// Locks are what this design avoids: a process frozen (SIGSTOP, a VM pause) while holding a
/// `flock` would block every other replica for as long as it stays frozen; here a frozen
/// writer blocks nobody, and when it wakes its write lands below the live version or fails.
/// No version at all is a free lease at epoch 0; a highest version that does not parse is
/// [`LeaseError::Corrupt`] naming that file, never reset.
#[derive(Clone, Debug)]
pub struct FileLease {
    pub(crate) inner: Arc<FileInner>,
    /// Runs this instance's operations one at a time, each to its end: the guard moves into
    /// the blocking task, so a call whose future was dropped (the elector timed it out or
    /// shut down) still finishes before the next one starts. Without it such an orphaned
    /// attempt could decide on a version read before a later `release` and re-acquire.
    serial: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
pub(crate) struct FileInner {
    path: PathBuf,
    dir: PathBuf,
    /// File-name prefix of the versions: `<file name of path>.v`.
    prefix: String,
    identity: String,
    lease_duration_ms: u64,
    /// The epoch this instance won and holds; 0 when it holds none. Kept while a later
    /// process with this identity holds the lease (see `decide`).
    held_epoch: AtomicU64,
    /// The epoch such a process was last said to hold (see `stand_by`).
    twin_said: AtomicU64,
}

/// Digits of a version number in a file name (zero-padded, so names sort as numbers).
const VERSION_DIGITS: usize = 20;
/// Versions kept below the newest.
const VERSIONS_KEPT: u64 = 2;

pub(crate) fn now_micros() -> u64 {
    // A clock before 1970 reads as 0: every lease looks live, so nothing is taken over.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl FileLease {
    /// A lease in the files `<path>.v<seq>`, held as `identity` for `lease_duration`
    /// (rounded up to whole milliseconds) after each renewal.
    pub fn new(
        path: impl Into<PathBuf>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Result<Self, LeaseError> {
        let path = path.into();
        let identity = checked_identity(identity.into())?;
        let ms = Duration::from_millis(1);
        // Bounded by u64::MAX / 1000, so the cast and the micros below cannot overflow.
        let lease_duration_ms =
            whole_units(lease_duration, ms, u128::from(u64::MAX / 1000))? as u64;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Not created here: every player of a log must name the same lease file, and a
        // directory that is not there is more likely a mistyped path (a player that leads
        // alone on its own lease) than one to make.
        if !dir.is_dir() {
            return Err(LeaseError::InvalidArgument {
                what: "--lease-file",
                reason: format!(
                    "the directory {} does not exist: every player of a log names the same \
                     lease file, on a file system they share; create the directory first",
                    dir.display()
                ),
            });
        }
        let prefix = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) => format!("{name}.v"),
            None => {
                return Err(LeaseError::InvalidArgument {
                    what: "path",
                    reason: format!("{} has no UTF-8 file name", path.display()),
                });
            }
        };
        let removed = crate::disk::remove_stale_temps(&dir, &format!("{prefix}tmp-"));
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed lease temporary files a killed player left");
        }
        Ok(Self {
            inner: Arc::new(FileInner {
                dir,
                prefix,
                path,
                identity,
                lease_duration_ms,
                held_epoch: AtomicU64::new(0),
                twin_said: AtomicU64::new(0),
            }),
            serial: Arc::default(),
        })
    }

    /// The lease's base path (versions are `<path>.v<seq>`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The holder (if any) and epoch of the file lease at `path`, as its newest version says.
    pub fn current(path: &Path) -> Result<(Option<String>, u64), LeaseError> {
        let lease = FileLease::new(path, "reader", Duration::from_secs(1))?;
        let (_, rec) = lease.inner.latest()?;
        Ok((rec.holder, rec.epoch))
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileInner) -> Result<T, LeaseError> + Send + 'static,
    ) -> Result<T, LeaseError> {
        let turn = Arc::clone(&self.serial).lock_owned().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            f(&inner)
        })
        .await
        .map_err(|e| LeaseError::Io {
            path: self.inner.path.clone(),
            source: io::Error::other(format!("lease task failed: {e}")),
        })?
    }
}

impl FileInner {
    fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LeaseError + '_ {
        move |source| LeaseError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn corrupt(&self, path: &Path, reason: impl Into<String>) -> LeaseError {
        LeaseError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn version_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!(
            "{}{seq:0width$}",
            self.prefix,
            width = VERSION_DIGITS
        ))
    }

    /// Every version number present, ascending.
    pub(crate) fn versions(&self) -> Result<Vec<u64>, LeaseError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Self::io_err(&self.dir))? {
            let entry = entry.map_err(Self::io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(&self.prefix)) else {
                continue;
            };
            if digits.len() == VERSION_DIGITS
                && digits.bytes().all(|b| b.is_ascii_digit())
                && let Ok(seq) = digits.parse()
            {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn parse(&self, path: &Path, bytes: &[u8]) -> Result<FileRecord, LeaseError> {
        let mut rec: FileRecord = serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(path, format!("not a lease record: {e}")))?;
        if rec.transitions != rec.epoch {
            return Err(self.corrupt(
                path,
                format!(
                    "transitions {} differs from epoch {}",
                    rec.transitions, rec.epoch
                ),
            ));
        }
        if rec.holder.as_deref() == Some("") {
            rec.holder = None;
        }
        if rec.holder.is_some() && rec.epoch == 0 {
            return Err(self.corrupt(path, "a holder at epoch 0"));
        }
        Ok(rec)
    }

    /// The newest version and its record; `(0, free)` when there is none.
    pub(crate) fn latest(&self) -> Result<(u64, FileRecord), LeaseError> {
        // A version can be collected between listing and reading; list again.
        for _ in 0..16 {
            let Some(&seq) = self.versions()?.last() else {
                return Ok((0, FileRecord::free()));
            };
            let path = self.version_path(seq);
            match fs::read(&path) {
                Ok(bytes) => return Ok((seq, self.parse(&path, &bytes)?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io_err(&path)(e)),
            }
        }
        Err(LeaseError::Io {
            path: self.path.clone(),
            source: io::Error::other("lease versions kept disappearing while being read"),
        })
    }

    /// Writes `rec` as version `seq`; `false` when another writer got there first.
    pub(crate) fn write(&self, seq: u64, rec: &FileRecord) -> Result<bool, LeaseError> {
        static TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let json = serde_json::to_vec_pretty(rec).map_err(|e| LeaseError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let tmp_path = self.dir.join(format!(
            "{}tmp-{}-{}",
            self.prefix,
            std::process::id(),
            TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written = File::create(&tmp_path).and_then(|mut tmp| {
            tmp.write_all(&json)?;
            tmp.write_all(b"\n")?;
            tmp.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp_path);
            return Err(Self::io_err(&tmp_path)(e));
        }
        let target = self.version_path(seq);
        let linked = fs::hard_link(&tmp_path, &target);
        let _ = fs::remove_file(&tmp_path);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Self::io_err(&target)(e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io_err(&self.dir))?;
        let versions = self.versions()?;
        for &old in versions
            .iter()
            .take_while(|&&v| v.saturating_add(VERSIONS_KEPT) < seq)
        {
            let _ = fs::remove_file(self.version_path(old));
        }
        // Landed below a newer version (we slept between reading and linking): lost.
        Ok(versions.last() == Some(&seq))
    }

    pub(crate) fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        let (seq, rec) = self.latest()?;
        let now = now_micros();
        let epoch = match decide(
            &self.identity,
            rec.holder.as_deref(),
            rec.epoch,
            rec.expired(now),
            self.held_epoch.load(Ordering::Acquire),
        ) {
            Decision::Other { holder, epoch } => {
                let mine = (&self.held_epoch, &self.twin_said);
                super::stand_by(&self.identity, mine, &holder, epoch);
                return Ok(LeaseState::Other { holder, epoch });
            }
            Decision::Renew { epoch } => epoch,
            Decision::Acquire { prev_epoch } => {
                // Forgotten before the write: one that lands unseen (an error after the
                // link, an attempt timed out) then reads as an earlier incarnation's, taken
                // again at once, not as a later process's, stood by for a lease duration.
                self.held_epoch.store(0, Ordering::Release);
                prev_epoch
                    .checked_add(1)
                    .ok_or_else(|| self.corrupt(&self.version_path(seq), "epoch at u64::MAX"))?
            }
        };
        let next = seq
            .checked_add(1)
            .ok_or_else(|| self.corrupt(&self.version_path(seq), "version at u64::MAX"))?;
        let won = self.write(
            next,
            &FileRecord {
                holder: Some(self.identity.clone()),
                epoch,
                renew_time_micros: now,
                lease_duration_ms: self.lease_duration_ms,
                transitions: epoch,
            },
        )?;
        if !won {
            self.held_epoch.store(0, Ordering::Release);
            let (_, now_rec) = self.latest()?;
            return Ok(LeaseState::Other {
                holder: now_rec.holder.unwrap_or_default(),
                epoch: now_rec.epoch,
            });
        }
        if epoch != rec.epoch {
            tracing::debug!(path = %self.path.display(), identity = %self.identity, epoch, "acquired file lease");
        }
        self.held_epoch.store(epoch, Ordering::Release);
        Ok(LeaseState::Held { epoch })
    }

    fn release(&self) -> Result<(), LeaseError> {
        let held = self.held_epoch.swap(0, Ordering::AcqRel);
        let (seq, rec) = self.latest()?;
        // Only the epoch this process won: a later process with the same identity holds
        // its own, which this one's shutdown must not free.
        if rec.holder.as_deref() != Some(self.identity.as_str()) || rec.epoch != held {
            return Ok(());
        }
        let next = seq
            .checked_add(1)
            .ok_or_else(|| self.corrupt(&self.version_path(seq), "version at u64::MAX"))?;
        // Losing the race means someone else changed the lease: nothing left to release.
        self.write(
            next,
            &FileRecord {
                holder: None,
                renew_time_micros: now_micros(),
                ..rec
            },
        )
        .map(|_| ())
    }
}

#[async_trait]
impl LeaseBackend for FileLease {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        self.run_blocking(FileInner::try_acquire_or_renew).await
    }

    async fn release(&self) -> Result<(), LeaseError> {
        self.run_blocking(FileInner::release).await
    }

    fn identity(&self) -> &str {
        &self.inner.identity
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_millis(self.inner.lease_duration_ms)
    }
}
