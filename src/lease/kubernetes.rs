//! The Kubernetes lease: a `coordination.k8s.io/v1` `Lease`, compare-and-set through the
//! API server's `resourceVersion`; the epoch is `spec.leaseTransitions`.

use super::{
    Decision, LeaseBackend, LeaseError, LeaseState, checked_identity, decide, whole_units,
};
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many read-decide-write rounds one call makes before reporting the race as lost.
const KUBE_ATTEMPTS: usize = 2;

/// A `coordination.k8s.io/v1` `Lease`, compare-and-set through the API server.
///
/// Each round GETs the Lease (creating it, as ours at `leaseTransitions` 1, when it does not
/// exist), decides like [`super::FileLease`], and REPLACEs it carrying the `resourceVersion` it read,
/// so a concurrent writer makes the API server answer 409 Conflict and the round is lost,
/// never won twice. The epoch is `spec.leaseTransitions`, incremented on every change of
/// holder; `acquireTime` is set on acquisition, `renewTime` (MicroTime) on every write,
/// `leaseDurationSeconds` is the duration rounded up to whole seconds. Release clears
/// `holderIdentity` and keeps `leaseTransitions`. The rules match client-go's Lease lock
/// (an empty holder is free), except that the first acquisition is transition 1, not 0, so
/// that no leadership has epoch 0, and that re-acquiring our own expired lease is a transition.
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
    /// The epoch this instance won and holds; 0 when it holds none. Kept while a later
    /// process with this identity holds the lease (see `decide`).
    pub(crate) held_epoch: Arc<AtomicU64>,
    /// The epoch such a process was last said to hold (see `stand_by`).
    twin_said: Arc<AtomicU64>,
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

/// Whether `s` is a Kubernetes name of at most `max` bytes: DNS labels (lower-case letters,
/// digits, inner `-`; at most 63 each) joined by `.` when `dots` (a subdomain), else one.
pub fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= max
        && if dots {
            s.split('.').all(label)
        } else {
            label(s)
        }
}

/// A Lease's name (a DNS subdomain: labels joined by `.`) or namespace (one label, at most
/// 63): refused here, naming the flag's value, rather than by the API server at every retry.
fn check_name(what: &'static str, s: &str, max: usize, dots: bool) -> Result<(), LeaseError> {
    if is_dns_name(s, max, dots) {
        Ok(())
    } else {
        Err(LeaseError::InvalidArgument {
            what,
            reason: format!(
                "{s:?} is not a Kubernetes name: lower-case letters, digits and inner '-'{}, at \
                 most {max} characters",
                if dots { " and '.'" } else { "" }
            ),
        })
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
        check_name("lease namespace", &namespace, 63, false)?;
        check_name("lease name", &name, 253, true)?;
        let identity = checked_identity(identity.into())?;
        let second = Duration::from_secs(1);
        // Bounded by i32::MAX, so the cast cannot overflow.
        let duration_secs = whole_units(lease_duration, second, i32::MAX as u128)? as i32;
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            lease: format!("{namespace}/{name}"),
            name,
            identity,
            duration_secs,
            held_epoch: Arc::default(),
            twin_said: Arc::default(),
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
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.kube_err(e))
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
                self.held_epoch.store(0, Ordering::Release);
                match self
                    .api
                    .create(&PostParams::default(), &self.new_lease(now))
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(lease = %self.lease, identity = %self.identity, epoch = 1, "created kubernetes lease");
                        self.held_epoch.store(1, Ordering::Release);
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
            let ours = self.held_epoch.load(Ordering::Acquire);
            let epoch = match decide(&self.identity, holder.as_deref(), seen_epoch, expired, ours) {
                Decision::Other { holder, epoch } => {
                    let mine = (&*self.held_epoch, &*self.twin_said);
                    super::stand_by(&self.identity, mine, &holder, epoch);
                    return Ok(LeaseState::Other { holder, epoch });
                }
                Decision::Renew { epoch } => epoch,
                Decision::Acquire { prev_epoch } => {
                    // Forgotten before the write (see the file lease's).
                    self.held_epoch.store(0, Ordering::Release);
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
                    self.held_epoch.store(epoch, Ordering::Release);
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
        let held = self.held_epoch.swap(0, Ordering::AcqRel);
        let mut last_conflict = None;
        for _ in 0..KUBE_ATTEMPTS {
            let Some(mut lease) = self.get().await? else {
                return Ok(());
            };
            let (holder, epoch) = self.view(&lease)?;
            // Only the epoch this process won (see the file backend's).
            if holder.as_deref() != Some(self.identity.as_str()) || epoch != held {
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

    fn raise_epoch_hint(&self, seen: u64) -> String {
        let (ns, name) = self.lease.split_once('/').unwrap_or(("", &self.lease));
        format!(
            "raise the Lease's epoch above {seen}: kubectl -n {ns} patch lease {name} --type \
             merge -p '{{\"spec\":{{\"leaseTransitions\":{}}}}}'",
            seen.saturating_add(1)
        )
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.duration_secs.unsigned_abs()))
    }
}
