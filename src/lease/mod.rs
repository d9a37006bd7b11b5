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

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

mod file;
pub use file::*;
mod kubernetes;
pub use kubernetes::*;
mod elector;
pub use elector::*;
#[cfg(test)]
mod tests;

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
    /// The timing does not satisfy `10ms <= retry_period < renew_deadline < lease_duration`.
    #[error(
        "invalid lease timing: {reason} (retry_period {retry_period:?}, renew_deadline \
         {renew_deadline:?}, lease_duration {lease_duration:?}); need 10ms <= retry_period < \
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

/// What a lease attempt observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold the lease for this epoch (just acquired, or renewed).
    Held {
        /// The fencing epoch we hold.
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
    /// acquisition: each epoch is won by exactly one identity (see the module docs).
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError>;
    /// Give the lease up (graceful shutdown) so a standby can take it at once: clears the
    /// holder and keeps the epoch. Does nothing when somebody else holds the lease, or holds
    /// it at an epoch this instance did not win (a later process with its identity).
    async fn release(&self) -> Result<(), LeaseError>;
    /// Who we are in the lease.
    fn identity(&self) -> &str;
    /// How an operator raises this lease's epoch above `seen` (after the lease was deleted
    /// or reset, a shard may have seen a higher epoch than the lease now counts).
    fn raise_epoch_hint(&self, seen: u64) -> String {
        format!("raise the lease's epoch above {seen}")
    }
    /// How long a lease written by this backend stays valid without a renewal, as others
    /// will judge it (after any rounding the store imposes). [`run_elector`] checks that its
    /// `renew_deadline` is shorter.
    fn lease_duration(&self) -> Duration;
}

/// The longest lease (`--lease-duration`, the CRD's `spec.lease.leaseDuration`): a standby
/// waits this long before it takes over from a leader that died, and a Kubernetes Lease
/// holds it in whole seconds as an `i32`. An hour is past any pause a lease is meant to
/// ride out.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);
/// The shortest retry period: each attempt writes the lease (a file's fsync, or a call to
/// the API server). A microsecond one wrote at every turn of the loop, flooded the API
/// server, and with a renew deadline of a few microseconds timed out at every attempt.
pub const MIN_RETRY_PERIOD: Duration = Duration::from_millis(10);

/// Parses `--lease-duration`: a duration above zero and at most [`MAX_LEASE_DURATION`].
pub fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > MAX_LEASE_DURATION {
        return Err(format!("{s}: must be above 0 and at most 1h"));
    }
    Ok(d)
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
/// `duration` in whole `unit`s, rounded up; an error naming it unless that is 1 to `max`.
fn whole_units(duration: Duration, unit: Duration, max: u128) -> Result<u128, LeaseError> {
    let n = duration.as_nanos().div_ceil(unit.as_nanos().max(1));
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(LeaseError::InvalidArgument {
            what: "lease_duration",
            reason: format!("{duration:?} is zero or too large"),
        })
    }
}

/// Only the instance that won an epoch renews it. A lease that names our identity but not our
/// epoch was held by an earlier incarnation of this replica (a restarted process, a pod whose
/// container the kubelet restarted with the same name); taking it over is an acquisition with a
/// new epoch, so the shards can tell the new process from the old one. One that names our
/// identity at an epoch above the one we won was taken by a later process with our identity
/// (a second process started with the same `--identity`, or this one's replacement while it
/// was frozen): we stand by, as for another holder. Taking it back, each took it from the
/// other at every retry, for ever, each fenced in turn.
fn decide(me: &str, holder: Option<&str>, epoch: u64, expired: bool, ours: u64) -> Decision {
    match holder {
        // epoch 0 is never won, so a holder at epoch 0 (only a foreign writer could leave
        // that) is taken over through an acquisition to epoch 1.
        Some(h) if h == me && !expired && epoch > 0 && epoch == ours => Decision::Renew { epoch },
        Some(h) if !expired && (h != me || (ours > 0 && epoch > ours)) => Decision::Other {
            holder: h.to_owned(),
            epoch,
        },
        _ => Decision::Acquire { prev_epoch: epoch },
    }
}

/// What a backend does with a [`Decision::Other`]: forgets the epoch it won, unless the
/// holder is its own identity (a later process with it, see [`decide`]), which it says once
/// per epoch (`said`: the last it said it for); the epoch it won is kept so that it goes on
/// standing by.
fn stand_by(
    me: &str,
    (held_epoch, said): (&std::sync::atomic::AtomicU64, &std::sync::atomic::AtomicU64),
    holder: &str,
    epoch: u64,
) {
    use std::sync::atomic::Ordering;
    if holder != me {
        held_epoch.store(0, Ordering::Release);
        return;
    }
    if said.swap(epoch, Ordering::AcqRel) != epoch {
        tracing::warn!(
            identity = me,
            epoch,
            ours = held_epoch.load(Ordering::Acquire),
            "the lease was taken at a later epoch under this process's own identity: another process runs with it (two started with the same --identity, or this one was replaced while it was stopped); standing by"
        );
    }
}

fn checked_identity(identity: String) -> Result<String, LeaseError> {
    if identity.is_empty() {
        return Err(LeaseError::InvalidArgument {
            what: "identity",
            reason: "must not be empty (an empty holder means a free lease)".into(),
        });
    }
    Ok(identity)
}

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
    /// Checks `MIN_RETRY_PERIOD <= retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let reason = if self.retry_period < MIN_RETRY_PERIOD {
            "retry_period must be at least 10ms"
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
