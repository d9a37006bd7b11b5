//! Leader leases with a fencing epoch, for player replicas.
//!
//! This module owns who may act as the one leading player, and the *epoch* that proves it:
//!
//! - [`LeaseBackend`]: one compare-and-set lease abstraction, with two backends:
//!   [`FileLease`] (versioned JSON files on one filesystem, compare-and-set by `link(2)`,
//!   no locks) and [`KubeLease`] (a `coordination.k8s.io/v1` `Lease`, serialised by the API
//!   server's `resourceVersion` optimistic concurrency).
//! - [`run_elector`] / [`run_elector_with_resign`]: the loop that drives a backend and
//!   publishes this replica's [`Role`] on a `tokio::sync::watch` channel.
//! - [`LeaseConfig`]: the timing (lease duration, renew deadline, retry period) and its
//!   validation.
//!
//! # The epoch
//! Every change of holder — acquiring a free, expired or released lease, including the same
//! identity re-acquiring after its own lease expired or was released — increments the epoch by
//! exactly one under the backend's compare-and-set; a renewal by the current holder keeps it.
//! So each epoch is won by exactly one identity, every acquisition returns an epoch strictly
//! greater than any earlier one, and the first acquisition ever returns epoch 1. Leases
//! expire, so holding a lease is never proof on its own that nobody else acts: the player
//! stamps its epoch on everything it sends and the receivers refuse any epoch lower than the
//! highest they have seen. That is the fencing; the lease only keeps the overlap rare.
//!
//! # Clocks
//! Expiry is decided on wall clocks: a lease is expired when `now > renew_time +
//! lease_duration`, with `now` read by whoever is looking. The leader stops acting once it
//! has not renewed for `renew_deadline`, measured on its own monotonic clock from *before* the
//! renew it last completed, and `lease_duration - renew_deadline` is the margin that absorbs
//! clock skew between replicas and scheduling delays. Fencing covers whatever that margin
//! does not.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong with a lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Reading, writing, locking or syncing a lease file (or its lock/temp file/directory).
    #[error("lease file {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The lease file exists but does not hold a valid lease. It is never reset silently:
    /// restarting at epoch 0 would hand out epochs that were already used, defeating fencing.
    #[error("lease file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The lease file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kubernetes API call failed (other than the conflicts the backend handles itself).
    #[error("kubernetes lease {lease}: {source}")]
    Kube {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The Kubernetes Lease object holds something this backend cannot use safely.
    #[error("kubernetes lease {lease} is invalid: {reason}")]
    InvalidKubeLease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The timing does not satisfy `0 < retry_period < renew_deadline < lease_duration`.
    #[error(
        "invalid lease timing: {reason} (retry_period {retry_period:?}, renew_deadline \
         {renew_deadline:?}, lease_duration {lease_duration:?}); need 0 < retry_period < \
         renew_deadline < lease_duration"
    )]
    Config {
        /// Which rule is broken.
        reason: &'static str,
        /// The lease duration in question.
        lease_duration: Duration,
        /// The renew deadline in question.
        renew_deadline: Duration,
        /// The retry period in question.
        retry_period: Duration,
    },
    /// A constructor argument is unusable (empty identity, zero or huge lease duration).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The abstraction
// ---------------------------------------------------------------------------------------------

/// What a lease attempt observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold the lease for this epoch (just acquired, or renewed).
    Held {
        /// The fencing epoch of our term.
        epoch: u64,
    },
    /// We do not hold the lease.
    Other {
        /// The holder we last saw. Empty when that is unknown: the lease was free when we read
        /// it and somebody else won the race to write it.
        holder: String,
        /// The epoch we last saw.
        epoch: u64,
    },
}

/// A lease store with compare-and-set semantics. Object safe: use it as
/// `Arc<dyn LeaseBackend>`.
///
/// The elector drops calls that overrun their deadline, and on shutdown. An implementation
/// must make sure that such an orphaned call cannot take effect *after* a later call on the
/// same instance — above all after [`release`](Self::release). [`FileLease`] runs its calls
/// one at a time, each to its end; [`KubeLease`] writes only with the `resourceVersion` it
/// read, so a late write is refused.
#[async_trait]
pub trait LeaseBackend: Send + Sync {
    /// Acquire if free or expired, renew if already ours. Never lets two holders win the same
    /// term: each epoch is won by exactly one identity (see the module docs).
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError>;
    /// Give the lease up (graceful shutdown) so a standby can take it at once: clears the
    /// holder and keeps the epoch. Does nothing when somebody else holds the lease.
    async fn release(&self) -> Result<(), LeaseError>;
    /// Who we are in the lease.
    fn identity(&self) -> &str;
    /// How long a lease written by this backend stays valid without a renewal, as others
    /// will judge it (after any rounding the store imposes). [`run_elector`] checks that its
    /// `renew_deadline` is shorter.
    fn lease_duration(&self) -> Duration;
}

/// What to do with a lease given what it holds now. Shared by both backends so they agree.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Ours and live: write a fresh renew time, keep the epoch.
    Renew { epoch: u64 },
    /// Free, released or expired (or ours but expired): take it with `epoch + 1`.
    Acquire { prev_epoch: u64 },
    /// Somebody else's and live.
    Other { holder: String, epoch: u64 },
}

/// `holder` is `None` for a free lease; `expired` is judged by the caller's clock; `ours` is
/// the epoch this backend instance holds (0 when none).
///
/// Only the instance that won a term renews it. A lease that names our identity but not our
/// term was held by an earlier incarnation of this replica (a restarted process, a pod whose
/// container the kubelet restarted with the same name); taking it over is a new term with a
/// new epoch, so the shards can tell the new process from the old one.
fn decide(me: &str, holder: Option<&str>, epoch: u64, expired: bool, ours: u64) -> Decision {
    match holder {
        // epoch 0 is never a term, so a holder at epoch 0 (only a foreign writer could leave
        // that) is taken over through an acquisition to epoch 1.
        Some(h) if h == me && !expired && epoch > 0 && epoch == ours => Decision::Renew { epoch },
        Some(h) if h != me && !expired => Decision::Other {
            holder: h.to_owned(),
            epoch,
        },
        _ => Decision::Acquire { prev_epoch: epoch },
    }
}

fn check_identity(identity: &str) -> Result<(), LeaseError> {
    if identity.is_empty() {
        return Err(LeaseError::InvalidArgument {
            what: "identity",
            reason: "must not be empty (an empty holder means a free lease)".into(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Timing of leader election.
///
/// Defaults (`lease_duration` 2 s, `renew_deadline` 1.5 s, `retry_period` 250 ms) are chosen
/// for fast failover: a crashed leader is replaced within about `lease_duration +
/// retry_period` (a graceful one within about `retry_period`, as it releases the lease). The
/// leader renews every `retry_period`, so it gets several tries before `renew_deadline`;
/// when it could not renew within `renew_deadline` it stops sending. That is 0.5 s before
/// its lease can expire for anybody else (`lease_duration`), a margin for clock skew between
/// replicas and for scheduling delays, so the old leader has normally stopped before a new
/// one starts. The epoch fences whatever slips through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease stays valid after a renewal. Default 2 s.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal. Default 1.5 s.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew. Default 250 ms.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(250),
        }
    }
}

impl LeaseConfig {
    /// Checks `0 < retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let reason = if self.retry_period.is_zero() {
            "retry_period must be positive"
        } else if self.retry_period >= self.renew_deadline {
            "retry_period must be shorter than renew_deadline"
        } else if self.renew_deadline >= self.lease_duration {
            "renew_deadline must be shorter than lease_duration"
        } else {
            return Ok(());
        };
        Err(self.config_error(reason))
    }

    fn config_error(&self, reason: &'static str) -> LeaseError {
        LeaseError::Config {
            reason,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File backend
// ---------------------------------------------------------------------------------------------

/// What the lease file holds (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    /// `None` when free (never acquired, or released).
    holder: Option<String>,
    /// The fencing epoch: 0 until the first acquisition.
    epoch: u64,
    /// Wall clock of the last write by the holder, microseconds since the Unix epoch.
    renew_time_micros: u64,
    /// How long the holder's lease lasts after `renew_time_micros`.
    lease_duration_ms: u64,
    /// Number of changes of holder, as Kubernetes' `leaseTransitions`. Always equal to
    /// `epoch` in files this module writes; a mismatch is reported as corruption.
    transitions: u64,
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
    inner: Arc<FileInner>,
    /// Runs this instance's operations one at a time, each to its end: the guard moves into
    /// the blocking task, so a call whose future was dropped (the elector timed it out or
    /// shut down) still finishes before the next one starts. Without it such an orphaned
    /// attempt could decide on a version read before a later `release` and re-acquire.
    serial: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct FileInner {
    path: PathBuf,
    dir: PathBuf,
    /// File-name prefix of the versions: `<file name of path>.v`.
    prefix: String,
    identity: String,
    lease_duration_ms: u64,
    /// The epoch of the term this instance holds; 0 when it holds none.
    term: AtomicU64,
}

/// Digits of a version number in a file name (zero-padded, so names sort as numbers).
const VERSION_DIGITS: usize = 20;
/// Versions kept below the newest.
const VERSIONS_KEPT: u64 = 2;

fn now_micros() -> u64 {
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
        let identity = identity.into();
        check_identity(&identity)?;
        let ms = lease_duration.as_micros().div_ceil(1000);
        let lease_duration_ms = u64::try_from(ms)
            .ok()
            .filter(|ms| (1..=u64::MAX / 1000).contains(ms))
            .ok_or_else(|| LeaseError::InvalidArgument {
                what: "lease_duration",
                reason: format!("{lease_duration:?} is zero or too large"),
            })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let prefix = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) => format!("{name}.v"),
            None => {
                return Err(LeaseError::InvalidArgument {
                    what: "path",
                    reason: format!("{} has no UTF-8 file name", path.display()),
                });
            }
        };
        Ok(Self {
            inner: Arc::new(FileInner {
                dir,
                prefix,
                path,
                identity,
                lease_duration_ms,
                term: AtomicU64::new(0),
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

    fn version_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!(
            "{}{seq:0width$}",
            self.prefix,
            width = VERSION_DIGITS
        ))
    }

    /// Every version number present, ascending.
    fn versions(&self) -> Result<Vec<u64>, LeaseError> {
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
    fn latest(&self) -> Result<(u64, FileRecord), LeaseError> {
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
    fn write(&self, seq: u64, rec: &FileRecord) -> Result<bool, LeaseError> {
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

    fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        let (seq, rec) = self.latest()?;
        let now = now_micros();
        let epoch = match decide(
            &self.identity,
            rec.holder.as_deref(),
            rec.epoch,
            rec.expired(now),
            self.term.load(Ordering::Acquire),
        ) {
            Decision::Other { holder, epoch } => {
                self.term.store(0, Ordering::Release);
                return Ok(LeaseState::Other { holder, epoch });
            }
            Decision::Renew { epoch } => epoch,
            Decision::Acquire { prev_epoch } => prev_epoch
                .checked_add(1)
                .ok_or_else(|| self.corrupt(&self.version_path(seq), "epoch at u64::MAX"))?,
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
            self.term.store(0, Ordering::Release);
            let (_, now_rec) = self.latest()?;
            return Ok(LeaseState::Other {
                holder: now_rec.holder.unwrap_or_default(),
                epoch: now_rec.epoch,
            });
        }
        if epoch != rec.epoch {
            tracing::debug!(path = %self.path.display(), identity = %self.identity, epoch, "acquired file lease");
        }
        self.term.store(epoch, Ordering::Release);
        Ok(LeaseState::Held { epoch })
    }

    fn release(&self) -> Result<(), LeaseError> {
        self.term.store(0, Ordering::Release);
        let (seq, rec) = self.latest()?;
        if rec.holder.as_deref() != Some(self.identity.as_str()) {
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

// ---------------------------------------------------------------------------------------------
// Kubernetes backend
// ---------------------------------------------------------------------------------------------

/// How many read-decide-write rounds one call makes before reporting the race as lost.
const KUBE_ATTEMPTS: usize = 2;

/// A `coordination.k8s.io/v1` `Lease`, compare-and-set through the API server.
///
/// Each round GETs the Lease (creating it, as ours at `leaseTransitions` 1, when it does not
/// exist), decides like [`FileLease`], and REPLACEs it carrying the `resourceVersion` it read,
/// so a concurrent writer makes the API server answer 409 Conflict and the round is lost,
/// never won twice. The epoch is `spec.leaseTransitions`, incremented on every change of
/// holder; `acquireTime` is set on acquisition, `renewTime` (MicroTime) on every write,
/// `leaseDurationSeconds` is the duration rounded up to whole seconds. Release clears
/// `holderIdentity` and keeps `leaseTransitions`. The rules match client-go's Lease lock
/// (an empty holder is free), except that the first acquisition is transition 1, not 0, so
/// that no term has epoch 0, and that re-acquiring our own expired lease is a transition.
///
/// Hand-written because the crates on crates.io do not fit these rules:
/// `kube-leader-election` (0.44, on kube 4) writes with merge patches that carry no
/// `resourceVersion`, so two contenders can both "acquire" an expired lease, and it neither
/// fences nor returns the transitions count; `kube-lease-manager` (0.13) uses server-side
/// apply with whole-second durations and reports only a held/not-held boolean, no epoch;
/// kube-runtime has no leader election.
#[derive(Clone)]
pub struct KubeLease {
    api: Api<Lease>,
    lease: String,
    name: String,
    identity: String,
    duration_secs: i32,
    /// The epoch of the term this instance holds; 0 when it holds none.
    term: Arc<AtomicU64>,
}

impl fmt::Debug for KubeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeLease")
            .field("lease", &self.lease)
            .field("identity", &self.identity)
            .field("duration_secs", &self.duration_secs)
            .finish()
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl KubeLease {
    /// The Lease `namespace/name`, held as `identity` for `lease_duration` (rounded up to
    /// whole seconds) after each renewal.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Result<Self, LeaseError> {
        let namespace = namespace.into();
        let name = name.into();
        let identity = identity.into();
        check_identity(&identity)?;
        let secs = lease_duration.as_nanos().div_ceil(1_000_000_000);
        let duration_secs = i32::try_from(secs)
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| LeaseError::InvalidArgument {
                what: "lease_duration",
                reason: format!("{lease_duration:?} is zero or too large"),
            })?;
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            lease: format!("{namespace}/{name}"),
            name,
            identity,
            duration_secs,
            term: Arc::default(),
        })
    }

    fn kube_err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Kube {
            lease: self.lease.clone(),
            source,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> LeaseError {
        LeaseError::InvalidKubeLease {
            lease: self.lease.clone(),
            reason: reason.into(),
        }
    }

    /// `None` when the Lease does not exist.
    async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        match self.api.get(&self.name).await {
            Ok(l) => Ok(Some(l)),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => Ok(None),
            Err(e) => Err(self.kube_err(e)),
        }
    }

    /// (holder, epoch) of a Lease we read; an empty holder is no holder.
    fn view(&self, lease: &Lease) -> Result<(Option<String>, u64), LeaseError> {
        if lease.metadata.resource_version.is_none() {
            // Without it a replace would be unconditional: no compare-and-set.
            return Err(self.invalid("no metadata.resourceVersion"));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let epoch = u64::try_from(transitions)
            .map_err(|_| self.invalid(format!("negative leaseTransitions {transitions}")))?;
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        Ok((holder, epoch))
    }

    fn expired(spec: Option<&LeaseSpec>, now: Timestamp) -> bool {
        let Some(spec) = spec else { return true };
        match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) if secs > 0 => renewed
                .checked_add(SignedDuration::from_secs(i64::from(secs)))
                .map(|until| now > until)
                // Past the end of time: cannot expire.
                .unwrap_or(false),
            // Without a renew time or duration nobody can claim it is live.
            _ => true,
        }
    }

    fn new_lease(&self, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(self.duration_secs),
                lease_transitions: Some(1),
                ..LeaseSpec::default()
            }),
        }
    }
}

#[async_trait]
impl LeaseBackend for KubeLease {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        let mut lost = LeaseState::Other {
            holder: String::new(),
            epoch: 0,
        };
        for _ in 0..KUBE_ATTEMPTS {
            let now = Timestamp::now();
            let Some(mut lease) = self.get().await? else {
                match self
                    .api
                    .create(&PostParams::default(), &self.new_lease(now))
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(lease = %self.lease, identity = %self.identity, epoch = 1, "created kubernetes lease");
                        self.term.store(1, Ordering::Release);
                        return Ok(LeaseState::Held { epoch: 1 });
                    }
                    // AlreadyExists: somebody else created it first; read it and decide again.
                    Err(e) if is_status(&e, 409) => continue,
                    Err(e) => return Err(self.kube_err(e)),
                }
            };
            let (holder, seen_epoch) = self.view(&lease)?;
            let expired = Self::expired(lease.spec.as_ref(), now);
            let mut spec = lease.spec.take().unwrap_or_default();
            let ours = self.term.load(Ordering::Acquire);
            let epoch = match decide(&self.identity, holder.as_deref(), seen_epoch, expired, ours) {
                Decision::Other { holder, epoch } => {
                    self.term.store(0, Ordering::Release);
                    return Ok(LeaseState::Other { holder, epoch });
                }
                Decision::Renew { epoch } => epoch,
                Decision::Acquire { prev_epoch } => {
                    let epoch = prev_epoch + 1;
                    let transitions = i32::try_from(epoch)
                        .map_err(|_| self.invalid("leaseTransitions would overflow"))?;
                    spec.holder_identity = Some(self.identity.clone());
                    spec.lease_transitions = Some(transitions);
                    spec.acquire_time = Some(MicroTime(now));
                    epoch
                }
            };
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(self.duration_secs);
            lease.spec = Some(spec);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    if epoch != seen_epoch {
                        tracing::debug!(lease = %self.lease, identity = %self.identity, epoch, "acquired kubernetes lease");
                    }
                    self.term.store(epoch, Ordering::Release);
                    return Ok(LeaseState::Held { epoch });
                }
                // Conflict: somebody wrote since our read; this round is theirs.
                Err(e) if is_status(&e, 409) => {
                    lost = LeaseState::Other {
                        holder: holder.unwrap_or_default(),
                        epoch: seen_epoch,
                    };
                }
                Err(e) => return Err(self.kube_err(e)),
            }
        }
        Ok(lost)
    }

    async fn release(&self) -> Result<(), LeaseError> {
        self.term.store(0, Ordering::Release);
        let mut last_conflict = None;
        for _ in 0..KUBE_ATTEMPTS {
            let Some(mut lease) = self.get().await? else {
                return Ok(());
            };
            let (holder, _) = self.view(&lease)?;
            if holder.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            let mut spec = lease.spec.take().unwrap_or_default();
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            lease.spec = Some(spec);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => last_conflict = Some(e),
                Err(e) => return Err(self.kube_err(e)),
            }
        }
        match last_conflict {
            Some(e) => Err(self.kube_err(e)),
            None => Ok(()),
        }
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.duration_secs.unsigned_abs()))
    }
}

// ---------------------------------------------------------------------------------------------
// Elector
// ---------------------------------------------------------------------------------------------

/// This replica's role, as published by the elector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Not leading: do not send.
    #[default]
    Standby,
    /// Leading: send, stamping everything with `epoch`.
    Leader {
        /// The fencing epoch of this term.
        epoch: u64,
    },
}

/// [`run_elector_with_resign`] without a way to resign.
pub async fn run_elector(
    backend: Arc<dyn LeaseBackend>,
    cfg: LeaseConfig,
    role_tx: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<(), LeaseError> {
    run_elector_with_resign(backend, cfg, role_tx, shutdown, Arc::new(Notify::new())).await
}

fn set_role(role_tx: &watch::Sender<Role>, role: Role) -> bool {
    role_tx.send_if_modified(|r| {
        let changed = *r != role;
        *r = role;
        changed
    })
}

/// Drives `backend` until `shutdown`, publishing this replica's [`Role`] on `role_tx`.
///
/// Every `retry_period` it calls [`LeaseBackend::try_acquire_or_renew`]:
/// - `Held { epoch }`: [`Role::Leader`] with that epoch (a new epoch after a lapse is a new
///   term and is published as such).
/// - `Other`: step down at once.
/// - an error or an attempt that hangs: keep leading only until `renew_deadline` has passed
///   since the start of the last successful renewal, then step down. The deadline is
///   enforced even while an attempt is in flight, so a stuck store cannot keep us leading.
///
/// `resign.notify_one()` asks it to give up (e.g. the player was fenced by a higher epoch):
/// it steps down, releases the lease if it holds it, and sits out one `lease_duration`
/// before contending again, so a standby takes over. Requests made while it is busy are kept
/// (one permit) and handled next.
///
/// On `shutdown` it steps down first, then releases the lease if it was leading (best
/// effort, bounded by `renew_deadline`, errors logged) and returns `Ok(())`. It returns an
/// error only, at once, if `cfg` is invalid or `renew_deadline` is not shorter than the
/// backend's [`LeaseBackend::lease_duration`].
pub async fn run_elector_with_resign(
    backend: Arc<dyn LeaseBackend>,
    cfg: LeaseConfig,
    role_tx: watch::Sender<Role>,
    shutdown: CancellationToken,
    resign: Arc<Notify>,
) -> Result<(), LeaseError> {
    cfg.validate()?;
    if cfg.renew_deadline >= backend.lease_duration() {
        return Err(LeaseError::Config {
            reason: "renew_deadline must be shorter than the backend's lease duration",
            lease_duration: backend.lease_duration(),
            renew_deadline: cfg.renew_deadline,
            retry_period: cfg.retry_period,
        });
    }
    let id = backend.identity().to_owned();
    set_role(&role_tx, Role::Standby);

    let mut leader_epoch: Option<u64> = None;
    // While leading: when we must stop, unless a renewal succeeds first.
    let mut deadline = Instant::now();
    let mut observed: Option<(String, u64)> = None;
    let mut ticker = tokio::time::interval(cfg.retry_period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let step_down = |leader_epoch: &mut Option<u64>, why: &str| {
        if let Some(epoch) = leader_epoch.take() {
            set_role(&role_tx, Role::Standby);
            tracing::warn!(identity = %id, epoch, reason = why, "stepped down from leader");
        }
    };

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = resign.notified() => {
                let was = leader_epoch;
                step_down(&mut leader_epoch, "resign requested");
                release_bounded(backend.as_ref(), cfg.renew_deadline).await;
                tracing::info!(identity = %id, was_leader_epoch = ?was, backoff = ?cfg.lease_duration, "resigned; sitting out one lease duration");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(cfg.lease_duration) => {}
                }
                ticker.reset_immediately();
                continue;
            }
            () = tokio::time::sleep_until(deadline), if leader_epoch.is_some() => {
                step_down(&mut leader_epoch, "no renewal within renew_deadline");
                continue;
            }
            _ = ticker.tick() => {}
        }

        let started = Instant::now();
        let budget = match leader_epoch {
            Some(_) => deadline.saturating_duration_since(started),
            None => cfg.renew_deadline,
        };
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(budget, backend.try_acquire_or_renew()) => r,
        };
        match outcome {
            Ok(Ok(LeaseState::Held { epoch })) => {
                deadline = started + cfg.renew_deadline;
                if leader_epoch != Some(epoch) {
                    leader_epoch = Some(epoch);
                    set_role(&role_tx, Role::Leader { epoch });
                    tracing::info!(identity = %id, epoch, "became leader");
                }
                observed = None;
            }
            Ok(Ok(LeaseState::Other { holder, epoch })) => {
                step_down(&mut leader_epoch, "lease held by another");
                let seen = Some((holder, epoch));
                if observed != seen {
                    if let Some((holder, epoch)) = &seen {
                        tracing::info!(identity = %id, leader = %holder, epoch, "observed leader");
                    }
                    observed = seen;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(identity = %id, error = %e, "lease attempt failed");
                if leader_epoch.is_some() && Instant::now() >= deadline {
                    step_down(&mut leader_epoch, "no renewal within renew_deadline");
                }
            }
            Err(_) => {
                tracing::warn!(identity = %id, timeout = ?budget, "lease attempt timed out");
                if leader_epoch.is_some() {
                    step_down(&mut leader_epoch, "no renewal within renew_deadline");
                }
            }
        }
    }

    let was_leader = leader_epoch.is_some();
    step_down(&mut leader_epoch, "shutdown");
    set_role(&role_tx, Role::Standby);
    if was_leader {
        release_bounded(backend.as_ref(), cfg.renew_deadline).await;
        tracing::info!(identity = %id, "shut down; lease released (best effort)");
    }
    Ok(())
}

/// Best-effort release, logged, never longer than `limit`.
async fn release_bounded(backend: &dyn LeaseBackend, limit: Duration) {
    match tokio::time::timeout(limit, backend.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(identity = %backend.identity(), error = %e, "releasing the lease failed")
        }
        Err(_) => {
            tracing::warn!(identity = %backend.identity(), timeout = ?limit, "releasing the lease timed out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    fn lease_at(dir: &tempfile::TempDir, id: &str, dur: Duration) -> FileLease {
        FileLease::new(dir.path().join("leader.json"), id, dur).unwrap()
    }

    fn held(epoch: u64) -> LeaseState {
        LeaseState::Held { epoch }
    }

    // ---- config ----

    #[test]
    fn config_defaults_validate_and_errors_name_values() {
        let d = LeaseConfig::default();
        assert_eq!(d.lease_duration, Duration::from_secs(2));
        assert_eq!(d.renew_deadline, Duration::from_millis(1500));
        assert_eq!(d.retry_period, Duration::from_millis(250));
        d.validate().unwrap();
        let bad = LeaseConfig {
            renew_deadline: Duration::from_secs(2),
            ..d
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(
            msg.contains("renew_deadline must be shorter than lease_duration"),
            "{msg}"
        );
        assert!(msg.contains("2s") && msg.contains("250ms"), "{msg}");
        let bad = LeaseConfig {
            retry_period: Duration::from_millis(1500),
            ..d
        };
        assert!(matches!(bad.validate(), Err(LeaseError::Config { .. })));
        let bad = LeaseConfig {
            retry_period: Duration::ZERO,
            ..d
        };
        assert!(matches!(bad.validate(), Err(LeaseError::Config { .. })));
    }

    #[test]
    fn constructor_rejects_bad_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.json");
        assert!(matches!(
            FileLease::new(&p, "", Duration::from_secs(1)),
            Err(LeaseError::InvalidArgument {
                what: "identity",
                ..
            })
        ));
        assert!(matches!(
            FileLease::new(&p, "a", Duration::ZERO),
            Err(LeaseError::InvalidArgument {
                what: "lease_duration",
                ..
            })
        ));
        let l = FileLease::new(&p, "a", Duration::from_micros(1500)).unwrap();
        assert_eq!(l.lease_duration(), Duration::from_millis(2));
    }

    // ---- file backend ----

    #[tokio::test]
    async fn file_first_acquire_renew_other_expiry() {
        // Durations long enough that a loaded machine does not expire a lease between two
        // back-to-back calls.
        let dir = tempfile::tempdir().unwrap();
        let a = lease_at(&dir, "a", Duration::from_millis(1000));
        let b = lease_at(&dir, "b", Duration::from_millis(1000));
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), held(1));
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), held(1));
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            LeaseState::Other {
                holder: "a".into(),
                epoch: 1
            }
        );
        // The newest version is what the docs say.
        let newest = *a.inner.versions().unwrap().last().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.inner.version_path(newest)).unwrap()).unwrap();
        assert_eq!(v["holder"], "a");
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["transitions"], 1);
        assert_eq!(v["lease_duration_ms"], 1000);
        assert!(v["renew_time_micros"].as_u64().unwrap() > 0);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), held(2));
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), held(2));
        assert_eq!(
            a.try_acquire_or_renew().await.unwrap(),
            LeaseState::Other {
                holder: "b".into(),
                epoch: 2
            }
        );
        // The same identity re-acquiring after its own lease expired is a new term.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), held(3));
    }

    /// A restarted replica (same identity, new process) never renews its predecessor's
    /// term: it takes the lease as a new term, so shards can fence the old process.
    #[tokio::test]
    async fn file_a_restarted_replica_starts_a_new_term() {
        let dir = tempfile::tempdir().unwrap();
        let before = lease_at(&dir, "a", Duration::from_secs(60));
        assert_eq!(before.try_acquire_or_renew().await.unwrap(), held(1));
        assert_eq!(before.try_acquire_or_renew().await.unwrap(), held(1));
        let after = lease_at(&dir, "a", Duration::from_secs(60));
        assert_eq!(after.try_acquire_or_renew().await.unwrap(), held(2));
        assert_eq!(after.try_acquire_or_renew().await.unwrap(), held(2));
        // The old incarnation, were it still alive, sees its term gone.
        assert_eq!(before.try_acquire_or_renew().await.unwrap(), held(3));
    }

    #[tokio::test]
    async fn file_release_then_reacquire_bumps_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease_at(&dir, "a", Duration::from_secs(60));
        let b = lease_at(&dir, "b", Duration::from_secs(60));
        // Releasing a lease that does not exist, or is not ours, changes nothing.
        a.release().await.unwrap();
        assert!(a.inner.versions().unwrap().is_empty());
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), held(1));
        b.release().await.unwrap();
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), held(1));

        a.release().await.unwrap();
        assert_eq!(FileLease::current(a.path()).unwrap(), (None, 1));
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), held(2));
        a.release().await.unwrap();
        // A standby takes a released lease at once, long before it would expire.
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), held(3));
    }

    #[tokio::test]
    async fn file_corrupt_is_an_error_naming_the_path_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease_at(&dir, "a", Duration::from_secs(1));
        let newest = a.inner.version_path(7);
        for junk in [
            &b"{\"holder\": \"a\", \"epo"[..],
            b"",
            b"{\"holder\":\"a\",\"epoch\":3,\"renew_time_micros\":1,\"lease_duration_ms\":1,\"transitions\":2}",
            b"{\"holder\":\"a\",\"epoch\":0,\"renew_time_micros\":1,\"lease_duration_ms\":1,\"transitions\":0}",
        ] {
            std::fs::write(&newest, junk).unwrap();
            let err = a.try_acquire_or_renew().await.unwrap_err();
            match &err {
                LeaseError::Corrupt { path, .. } => assert_eq!(path, &newest),
                other => panic!("expected Corrupt, got {other:?}"),
            }
            assert!(err.to_string().contains(&newest.display().to_string()));
            assert!(matches!(a.release().await, Err(LeaseError::Corrupt { .. })));
            assert_eq!(std::fs::read(&newest).unwrap(), junk, "never reset");
            assert_eq!(a.inner.versions().unwrap(), vec![7], "nothing written past it");
        }
    }

    #[tokio::test]
    async fn file_io_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("no-such-dir");
        let a =
            FileLease::new(missing_dir.join("leader.json"), "a", Duration::from_secs(1)).unwrap();
        match a.try_acquire_or_renew().await {
            Err(LeaseError::Io { path, .. }) => assert_eq!(path, missing_dir),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    /// A writer that decided on a version somebody else has since replaced loses, whether
    /// its version number is taken or was already collected; it never shares an epoch.
    #[test]
    fn file_a_writer_that_slept_after_reading_loses() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease_at(&dir, "a", Duration::from_secs(60));
        let b = lease_at(&dir, "b", Duration::from_secs(60));
        assert_eq!(a.inner.try_acquire_or_renew().unwrap(), held(1));
        // a reads version 1, then "sleeps"; b releases nothing but the lease expires...
        let (seq, _) = a.inner.latest().unwrap();
        let stale = FileRecord {
            holder: Some("a".into()),
            epoch: 1,
            renew_time_micros: now_micros(),
            lease_duration_ms: 60_000,
            transitions: 1,
        };
        // ...and meanwhile b writes the next version: a's link finds it taken.
        let taken = FileRecord {
            holder: Some("b".into()),
            epoch: 2,
            renew_time_micros: now_micros(),
            lease_duration_ms: 60_000,
            transitions: 2,
        };
        assert!(b.inner.write(seq + 1, &taken).unwrap());
        assert!(!a.inner.write(seq + 1, &stale).unwrap(), "version taken");
        // Several more versions later, a's number is collected: its link succeeds but lands
        // below the newest, so it still loses and readers never see it.
        for v in seq + 2..seq + 6 {
            assert!(b.inner.write(v, &taken).unwrap());
        }
        assert!(!a.inner.version_path(seq + 1).exists(), "collected");
        assert!(
            !a.inner.write(seq + 1, &stale).unwrap(),
            "landed below the newest"
        );
        assert_eq!(
            FileLease::current(a.path()).unwrap(),
            (Some("b".to_owned()), 2)
        );
        assert!(matches!(
            a.inner.try_acquire_or_renew().unwrap(),
            LeaseState::Other { holder, epoch: 2 } if holder == "b"
        ));
    }

    /// A process frozen at any point (here: one that never finishes its write) blocks
    /// nobody: there is no lock to hold.
    #[test]
    fn file_a_frozen_writer_blocks_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease_at(&dir, "a", Duration::from_millis(5));
        let b = lease_at(&dir, "b", Duration::from_millis(5));
        assert_eq!(a.inner.try_acquire_or_renew().unwrap(), held(1));
        // a's half-written temporary file, as if frozen mid-write.
        std::fs::write(dir.path().join("leader.json.vtmp-1-1"), b"{\"hol").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(b.inner.try_acquire_or_renew().unwrap(), held(2));
    }

    /// Every epoch is won by at most one identity, across tasks and threads. An epoch can be
    /// skipped, rarely: a writer whose version was superseded before it could confirm it was
    /// the newest reports the round lost (conservatively: it never acts on a term it cannot
    /// confirm), although a reader saw its record and took over from it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_concurrent_contenders_never_share_an_epoch() {
        const TASKS: usize = 8;
        const THREADS: usize = 3;
        const ROUNDS: usize = 40;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.json");
        let winners: Arc<Mutex<HashMap<u64, String>>> = Arc::default();

        fn record(winners: &Mutex<HashMap<u64, String>>, epoch: u64, id: &str) {
            let mut w = winners.lock().unwrap();
            let prev = w.entry(epoch).or_insert_with(|| id.to_owned());
            assert_eq!(prev, id, "epoch {epoch} won by two identities");
        }

        async fn contend(lease: FileLease, winners: Arc<Mutex<HashMap<u64, String>>>, seed: usize) {
            for round in 0..ROUNDS {
                if let LeaseState::Held { epoch } = lease.try_acquire_or_renew().await.unwrap() {
                    record(&winners, epoch, lease.identity());
                    // Sometimes renew, sometimes hand over, sometimes let it expire.
                    match (round + seed) % 3 {
                        0 => lease.release().await.unwrap(),
                        1 => {
                            let again = lease.try_acquire_or_renew().await.unwrap();
                            if let LeaseState::Held { epoch: e2 } = again {
                                record(&winners, e2, lease.identity());
                            }
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(((round * 7 + seed) % 4) as u64)).await;
            }
        }

        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let lease =
                FileLease::new(&path, format!("task-{i}"), Duration::from_millis(3)).unwrap();
            tasks.push(tokio::spawn(contend(lease, Arc::clone(&winners), i)));
        }
        let mut threads = Vec::new();
        for i in 0..THREADS {
            let lease =
                FileLease::new(&path, format!("thread-{i}"), Duration::from_millis(3)).unwrap();
            let winners = Arc::clone(&winners);
            threads.push(std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(contend(lease, winners, 100 + i));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        let w = winners.lock().unwrap();
        let epochs: BTreeSet<u64> = w.keys().copied().collect();
        let last = *epochs.last().unwrap();
        // Nearly every epoch was won by somebody who knew it (skips are the rare race above).
        assert!(
            epochs.len() as u64 * 10 >= last * 9,
            "{} of {last} epochs were won knowingly: {epochs:?}",
            epochs.len()
        );
        let ids: BTreeSet<&String> = w.values().collect();
        assert!(
            last > 20,
            "too little contention to mean anything: {last} epochs"
        );
        assert!(ids.len() > 3, "only {ids:?} ever won");
        assert!(FileLease::current(&path).unwrap().1 >= last);
    }

    // ---- elector ----

    fn fast_cfg() -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(300),
            renew_deadline: Duration::from_millis(200),
            retry_period: Duration::from_millis(50),
        }
    }

    struct Replica {
        rx: watch::Receiver<Role>,
        stop: CancellationToken,
        resign: Arc<Notify>,
        task: tokio::task::JoinHandle<Result<(), LeaseError>>,
    }

    fn start(path: &Path, id: &str) -> Replica {
        start_with(path, id, fast_cfg())
    }

    fn start_with(path: &Path, id: &str, cfg: LeaseConfig) -> Replica {
        let backend: Arc<dyn LeaseBackend> =
            Arc::new(FileLease::new(path, id, cfg.lease_duration).unwrap());
        let (tx, rx) = watch::channel(Role::Standby);
        let stop = CancellationToken::new();
        let resign = Arc::new(Notify::new());
        let task = tokio::spawn(run_elector_with_resign(
            backend,
            cfg,
            tx,
            stop.clone(),
            Arc::clone(&resign),
        ));
        Replica {
            rx,
            stop,
            resign,
            task,
        }
    }

    fn epoch_of(r: &Replica) -> Option<u64> {
        match *r.rx.borrow() {
            Role::Leader { epoch } => Some(epoch),
            Role::Standby => None,
        }
    }

    async fn wait_leader(r: &mut Replica, within: Duration) -> u64 {
        let role =
            tokio::time::timeout(within, r.rx.wait_for(|r| matches!(r, Role::Leader { .. })))
                .await
                .expect("no leader in time")
                .unwrap();
        match *role {
            Role::Leader { epoch } => epoch,
            Role::Standby => unreachable!(),
        }
    }

    /// Checks for a while that the two never lead at once (an elector steps down at its
    /// renew deadline, before its lease can expire for the other), then returns which one
    /// leads and its epoch. Who leads may change in between: a stall of the shared machine
    /// longer than renew_deadline makes a leader step down, as it should.
    async fn the_one_leader(a: &Replica, b: &Replica) -> (bool, u64) {
        let t0 = Instant::now();
        let mut seen_leader = false;
        loop {
            let (ea, eb) = (epoch_of(a), epoch_of(b));
            assert!(ea.is_none() || eb.is_none(), "two leaders: {ea:?} {eb:?}");
            seen_leader |= ea.is_some() || eb.is_some();
            if seen_leader && t0.elapsed() > Duration::from_millis(500) {
                match (ea, eb) {
                    (Some(e), None) => return (true, e),
                    (None, Some(e)) => return (false, e),
                    _ => {}
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(3), "no leader");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn elector_shutdown_hands_over_quickly_with_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.json");
        // A long lease, so that a handover well before it could expire proves the release
        // (without timing the handover itself, which a loaded machine would make flaky).
        let slow = LeaseConfig {
            lease_duration: Duration::from_secs(20),
            renew_deadline: Duration::from_secs(15),
            retry_period: Duration::from_millis(50),
        };
        let a = start_with(&path, "a", slow);
        let b = start_with(&path, "b", slow);
        let (a_leads, epoch) = the_one_leader(&a, &b).await;
        let (leader, mut standby) = if a_leads { (a, b) } else { (b, a) };

        let t0 = Instant::now();
        leader.stop.cancel();
        let new_epoch = wait_leader(&mut standby, Duration::from_secs(10)).await;
        let took = t0.elapsed();
        assert!(new_epoch > epoch, "{new_epoch} <= {epoch}");
        // Had it been left to expire, the standby would have waited about 20 s.
        assert!(took < Duration::from_secs(10), "handover took {took:?}");
        leader.task.await.unwrap().unwrap();
        assert_eq!(*leader.rx.borrow(), Role::Standby);

        standby.stop.cancel();
        standby.task.await.unwrap().unwrap();
        assert_eq!(*standby.rx.borrow(), Role::Standby);
        assert_eq!(FileLease::current(&path).unwrap(), (None, new_epoch));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn elector_resign_hands_over_and_sits_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.json");
        let a = start(&path, "a");
        let b = start(&path, "b");
        let (a_leads, epoch) = the_one_leader(&a, &b).await;
        let (mut leader, mut standby) = if a_leads { (a, b) } else { (b, a) };

        leader.resign.notify_one();
        let new_epoch = wait_leader(&mut standby, Duration::from_secs(1)).await;
        assert!(new_epoch > epoch);
        assert_eq!(epoch_of(&leader), None);

        // Once the new leader goes away, the resigned one takes over again.
        standby.stop.cancel();
        standby.task.await.unwrap().unwrap();
        let third = wait_leader(&mut leader, Duration::from_secs(2)).await;
        assert!(third > new_epoch);
        leader.stop.cancel();
        leader.task.await.unwrap().unwrap();
    }

    /// A backend that grants epoch 1 once, then never answers (a stuck store).
    struct Stuck {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl LeaseBackend for Stuck {
        async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
            if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Ok(held(1))
            } else {
                std::future::pending().await
            }
        }
        async fn release(&self) -> Result<(), LeaseError> {
            std::future::pending().await
        }
        fn identity(&self) -> &str {
            "stuck"
        }
        fn lease_duration(&self) -> Duration {
            Duration::from_secs(2)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn elector_steps_down_at_renew_deadline_even_if_the_store_hangs() {
        let cfg = LeaseConfig::default();
        let (tx, mut rx) = watch::channel(Role::Standby);
        let stop = CancellationToken::new();
        let backend = Arc::new(Stuck {
            calls: Default::default(),
        });
        let t0 = Instant::now();
        let task = tokio::spawn(run_elector(backend, cfg, tx, stop.clone()));
        rx.wait_for(|r| *r == Role::Leader { epoch: 1 })
            .await
            .unwrap();
        rx.wait_for(|r| *r == Role::Standby).await.unwrap();
        let took = t0.elapsed();
        assert!(
            took >= cfg.renew_deadline && took < cfg.renew_deadline + cfg.retry_period,
            "stepped down after {took:?}"
        );
        // Shutdown while a release hangs is still bounded.
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn elector_rejects_renew_deadline_not_below_backend_lease() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn LeaseBackend> =
            Arc::new(lease_at(&dir, "a", Duration::from_millis(150)));
        let (tx, _rx) = watch::channel(Role::Standby);
        let err = run_elector(backend, fast_cfg(), tx, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Config { .. }), "{err}");
    }

    // ---- kubernetes backend ----

    mod kube_mock {
        use super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use serde_json::{Value, json};
        use tower_test::mock::{self, SendResponse};

        type Handle = mock::Handle<Request<Body>, Response<Body>>;
        const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/lp";
        const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

        fn backend() -> (KubeLease, Handle) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(service, "default");
            let lease =
                KubeLease::new(client, "default", "lp", "me", Duration::from_millis(1500)).unwrap();
            (lease, handle)
        }

        fn ts(offset_secs: i64) -> String {
            Timestamp::now()
                .checked_add(SignedDuration::from_secs(offset_secs))
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
        }

        fn lease_json(holder: Option<&str>, transitions: i32, renewed: &str, rv: &str) -> Value {
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": { "name": "lp", "namespace": "default", "resourceVersion": rv },
                "spec": {
                    "holderIdentity": holder,
                    "leaseTransitions": transitions,
                    "acquireTime": "2020-01-01T00:00:00.000000Z",
                    "renewTime": renewed,
                    "leaseDurationSeconds": 2,
                }
            })
        }

        fn status(code: u16, reason: &str) -> Value {
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code,
            })
        }

        /// Takes the next request, checks its method and path, returns its JSON body.
        async fn expect(
            handle: &mut Handle,
            method: Method,
            path: &str,
        ) -> (Value, SendResponse<Response<Body>>) {
            let (req, send) = handle.next_request().await.expect("no request");
            assert_eq!(req.method(), method);
            assert_eq!(req.uri().path(), path);
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (body, send)
        }

        fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
            let resp = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap();
            send.send_response(resp);
        }

        /// Runs `client` against the scripted `server`. A request the script does not expect
        /// (the client waits for an answer forever) or one it expects but never gets (the
        /// script waits forever) ends in the timeout.
        async fn run<T>(
            lease: KubeLease,
            mut handle: Handle,
            client: impl AsyncFnOnce(&KubeLease) -> T,
            server: impl AsyncFnOnce(&mut Handle),
        ) -> T {
            let (out, ()) = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::join!(client(&lease), server(&mut handle))
            })
            .await
            .expect("client and scripted server disagree on the requests");
            out
        }

        #[tokio::test]
        async fn acquiring_a_free_lease_puts_with_resource_version_and_bumps_transitions() {
            let (lease, handle) = backend();
            assert_eq!(lease.lease_duration(), Duration::from_secs(2));
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(None, 3, &ts(-1), "100"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["metadata"]["resourceVersion"], "100");
                    assert_eq!(body["spec"]["leaseTransitions"], 4);
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    assert_eq!(body["spec"]["leaseDurationSeconds"], 2);
                    assert_ne!(body["spec"]["acquireTime"], "2020-01-01T00:00:00.000000Z");
                    assert_eq!(body["spec"]["acquireTime"], body["spec"]["renewTime"]);
                    reply(send, 200, &body);
                },
            )
            .await;
            assert_eq!(state, held(4));
        }

        #[tokio::test]
        async fn taking_over_an_expired_lease_bumps_transitions() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("old"), 9, &ts(-10), "7"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["metadata"]["resourceVersion"], "7");
                    assert_eq!(body["spec"]["leaseTransitions"], 10);
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    reply(send, 200, &body);
                },
            )
            .await;
            assert_eq!(state, held(10));
        }

        #[tokio::test]
        async fn renewing_keeps_transitions_and_acquire_time() {
            let (lease, handle) = backend();
            // This instance won term 7 earlier.
            lease.term.store(7, Ordering::Release);
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let old_renew = ts(-1);
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("me"), 7, &old_renew, "55"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["metadata"]["resourceVersion"], "55");
                    assert_eq!(body["spec"]["leaseTransitions"], 7);
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    assert_eq!(body["spec"]["acquireTime"], "2020-01-01T00:00:00.000000Z");
                    assert_ne!(body["spec"]["renewTime"], old_renew.as_str());
                    reply(send, 200, &body);
                },
            )
            .await;
            assert_eq!(state, held(7));
        }

        /// A live lease naming us that this instance never won (a restarted process with
        /// the same pod name) is taken over as a new term, never renewed at the old epoch.
        #[tokio::test]
        async fn a_live_lease_of_an_earlier_incarnation_is_a_new_term() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("me"), 7, &ts(-1), "55"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["metadata"]["resourceVersion"], "55");
                    assert_eq!(body["spec"]["leaseTransitions"], 8);
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    assert_ne!(body["spec"]["acquireTime"], "2020-01-01T00:00:00.000000Z");
                    reply(send, 200, &body);
                },
            )
            .await;
            assert_eq!(state, held(8));
        }

        #[tokio::test]
        async fn a_live_lease_of_another_is_only_read() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("other"), 4, &ts(0), "1"));
                },
            )
            .await;
            assert_eq!(
                state,
                LeaseState::Other {
                    holder: "other".into(),
                    epoch: 4
                }
            );
        }

        #[tokio::test]
        async fn conflict_on_put_is_not_held() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(None, 3, &ts(-1), "100"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["spec"]["leaseTransitions"], 4);
                    reply(send, 409, &status(409, "Conflict"));
                    // The next round reads the winner's write and backs off.
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("other"), 4, &ts(0), "101"));
                },
            )
            .await;
            assert_eq!(
                state,
                LeaseState::Other {
                    holder: "other".into(),
                    epoch: 4
                }
            );
        }

        #[tokio::test]
        async fn conflicts_every_round_are_never_held() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    for rv in ["1", "2"] {
                        let (_, send) = expect(h, Method::GET, PATH).await;
                        reply(send, 200, &lease_json(Some("me"), 2, &ts(0), rv));
                        let (body, send) = expect(h, Method::PUT, PATH).await;
                        assert_eq!(body["metadata"]["resourceVersion"], rv);
                        reply(send, 409, &status(409, "Conflict"));
                    }
                },
            )
            .await;
            assert!(matches!(state, LeaseState::Other { .. }), "{state:?}");
        }

        #[tokio::test]
        async fn missing_lease_is_created_at_transition_one() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 404, &status(404, "NotFound"));
                    let (body, send) = expect(h, Method::POST, COLLECTION).await;
                    assert_eq!(body["metadata"]["name"], "lp");
                    assert_eq!(body["spec"]["leaseTransitions"], 1);
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    assert_eq!(body["spec"]["leaseDurationSeconds"], 2);
                    assert!(body["spec"]["acquireTime"].is_string());
                    assert!(body["spec"]["renewTime"].is_string());
                    let mut created = body.clone();
                    created["metadata"]["resourceVersion"] = json!("1");
                    reply(send, 201, &created);
                },
            )
            .await;
            assert_eq!(state, held(1));
        }

        #[tokio::test]
        async fn losing_the_create_race_observes_the_winner() {
            let (lease, handle) = backend();
            let state = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 404, &status(404, "NotFound"));
                    let (_, send) = expect(h, Method::POST, COLLECTION).await;
                    reply(send, 409, &status(409, "AlreadyExists"));
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("other"), 1, &ts(0), "1"));
                },
            )
            .await;
            assert_eq!(
                state,
                LeaseState::Other {
                    holder: "other".into(),
                    epoch: 1
                }
            );
        }

        #[tokio::test]
        async fn release_clears_holder_and_keeps_transitions() {
            let (lease, handle) = backend();
            run(
                lease,
                handle,
                async |l| l.release().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("me"), 6, &ts(0), "9"));
                    let (body, send) = expect(h, Method::PUT, PATH).await;
                    assert_eq!(body["metadata"]["resourceVersion"], "9");
                    assert!(
                        body["spec"]
                            .get("holderIdentity")
                            .is_none_or(Value::is_null)
                    );
                    assert_eq!(body["spec"]["leaseTransitions"], 6);
                    reply(send, 200, &body);
                },
            )
            .await;
        }

        #[tokio::test]
        async fn release_of_anothers_lease_writes_nothing() {
            let (lease, handle) = backend();
            run(
                lease,
                handle,
                async |l| l.release().await.unwrap(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(Some("other"), 6, &ts(0), "9"));
                },
            )
            .await;
        }

        #[tokio::test]
        async fn other_api_errors_are_kube_errors_naming_the_lease() {
            let (lease, handle) = backend();
            let err = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap_err(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 403, &status(403, "Forbidden"));
                },
            )
            .await;
            assert!(matches!(err, LeaseError::Kube { .. }), "{err:?}");
            assert!(err.to_string().contains("default/lp"), "{err}");
        }

        #[tokio::test]
        async fn negative_transitions_are_rejected() {
            let (lease, handle) = backend();
            let err = run(
                lease,
                handle,
                async |l| l.try_acquire_or_renew().await.unwrap_err(),
                async |h| {
                    let (_, send) = expect(h, Method::GET, PATH).await;
                    reply(send, 200, &lease_json(None, -1, &ts(0), "9"));
                },
            )
            .await;
            assert!(
                matches!(err, LeaseError::InvalidKubeLease { .. }),
                "{err:?}"
            );
        }
    }
}
