//! The status the operator reports: pure functions from what it observed (Deployment,
//! Lease, Shards, probes of the LogStore and the shard servers, player pods) to a
//! `LogPlayerStatus` or `ShardStatus`, and the Events that go with a change. No API calls
//! here, so every decision is unit-tested.
//!
//! Conditions follow the Kubernetes API conventions: `type`, `status` (`True`, `False`,
//! `Unknown`), a CamelCase `reason`, a human `message`, `observedGeneration`, and a
//! `lastTransitionTime` that changes only when `status` does.
//!
//! LogPlayer conditions:
//! - `LeaderElected`: a player holds an unexpired Lease (reasons `LeaseHeld`, `NoLease`,
//!   `LeaseExpired`, `NoLeader`).
//! - `Degraded`: something a user must fix or wait for, the first named in the reason, in
//!   the order of `problems` in `logplayer.rs`: a spec problem (`InvalidSpec`, `InvalidShard`,
//!   `NoShards`, `SlotsOverlap`, `SlotsUnowned`), `ApplyFailed`, the certificates'
//!   (`CaInvalid`, `CaExpiringSoon`, ...), `ShardDegraded`, pods that cannot be made or run
//!   (`PodsNotCreated`, `RolloutStalled`, `PodsPending`, `ImagePullFailed`,
//!   `ContainerCannotStart`, `CrashLoopBackOff`), `LogStoreUnreachable`, the managed log's
//!   group (`LogMembershipFailed`, `NoLogLeader`, `LogQuorumLost`, `LogReplicaDown`,
//!   `LogReplicaBehind`),
//!   `EntryLimitMismatch`, `LeaseEpochBehind`, `ShardUnreachable`; else `AsExpected`.
//! - `Progressing`: player pods being created or rolled (`RollingOut`), log replicas added
//!   or removed (`LogReplicasChanging`) or rolled (`RollingOut`), else `Complete`, `NoDeployment`, `Blocked` or
//!   `Paused`.
//! - `Ready`: a leader is elected, at least one player pod is ready and so is the leader's
//!   (`LeaderNotReady` when it is not: a shard refuses it, or its main stream is stalled),
//!   no shard server says it refuses the players (`DeliveryRefused`, naming the shard),
//!   every managed server has a running pod and nothing is degraded but for a warning
//!   (`CaExpiringSoon`, `LogReplicaDown`, `LogReplicaBehind`: [`Problem::is_warning`])
//!   (`Delivering`); else
//!   the reason of what is missing (`LogStoreNotRunning`, `ShardNotRunning`, ...).
//!
//! A reconciliation that fails before it has looked at everything sets `Ready` False and
//! `Degraded` True with reason `ReconcileFailed` ([`failed_conditions`]).
//! - `ReconciliationPaused`: only while the pause annotation is set (`PauseAnnotation`).
//!
//! Shard conditions: `Ready` (the shard server answers and the players' shard map has the
//! Shard as its spec says: `Serving`; else the problem, or `ShardMapPending`, `Starting`,
//! `NotProbed` while waited for) and `Degraded` (`InvalidShard`,
//! `LogPlayerNotFound`, `NotSelected`, `NotInShardMap`, `ShardMapStale`, `EntryLimitMismatch`,
//! `ShardUnreachable`, `AsExpected`).
//!
//! The operator never writes a Shard's `ackedIndex` or `ackedEpoch`: those belong to the
//! leading player's field manager.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::condition;

mod logplayer;
pub use logplayer::*;
mod shard;
pub use shard::*;
mod events;
pub use events::*;
#[cfg(test)]
mod tests;

/// Condition type shown while the pause annotation is set.
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";

/// The current time, as the API's `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A problem a user can fix, with the condition reason that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason, e.g. `SlotsOverlap`.
    pub reason: String,
    /// What is wrong, naming the objects and values at fault.
    pub message: String,
}

impl Problem {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A problem that needs you but does not stop delivery (a CA near its end, a log
    /// replica down or behind while a majority runs and keeps up; a majority down is
    /// `LogQuorumLost`): `Degraded` says it, `Ready` stays True,
    /// so that `kubectl wait` and deployment tools do not take a working LogPlayer for a
    /// broken one for up to 30 days.
    pub fn is_warning(&self) -> bool {
        WARNINGS.contains(&self.reason.as_str())
    }
}

/// The reasons of [`Problem::is_warning`].
pub const WARNINGS: [&str; 3] = ["CaExpiringSoon", "LogReplicaBehind", "LogReplicaDown"];

/// The outcome of asking a server for something small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Reachable,
    /// It did not although its pod runs, and why (naming the address).
    Unreachable(String),
    /// Not asked: the operator runs this server and no pod of it is running (the pod's own
    /// problem, such as `PodsPending`, says why).
    NotRunning,
    /// Not asked (no address to ask).
    Unknown,
}

/// The players' Lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// `holderIdentity`, empty treated as none.
    pub holder: Option<String>,
    /// `leaseTransitions`: the players' fencing epoch.
    pub transitions: i64,
    /// Renewed within `leaseDurationSeconds`.
    pub fresh: bool,
}

/// One driven shard as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardObserved {
    /// The Shard resource's name.
    pub name: String,
    /// `status.ackedIndex`, as the leader last checkpointed it.
    pub acked_index: Option<i64>,
    /// `status.ackedEpoch`: the epoch of the leader that checkpointed it.
    pub acked_epoch: Option<i64>,
    /// `status.coveredIndex`: through which log index the shard has every entry routed to
    /// it. Lag is measured from here (from `acked_index` when absent).
    pub covered_index: Option<i64>,
    /// Whether its server answered.
    pub probe: Probe,
    /// The entry limit its server reported, when it answered and said one.
    pub max_entry_bytes: Option<u64>,
    /// What its own status says is wrong that the LogPlayer cannot see by itself (its
    /// objects refused: `ApplyFailed`, `CertificateIssueFailed`, `ReconcileFailed`), as
    /// `(reason, message)`.
    pub degraded: Option<(String, String)>,
    /// Its server's last refusal of the players, as the Shard's `DeliveryRefused` says it.
    pub refused: Option<String>,
}

/// Everything a LogPlayer's status is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: i64,
    /// `spec.replicas`.
    pub desired_replicas: i32,
    /// Player pods that exist (the Deployment's `status.replicas`).
    pub replicas: i32,
    /// Player pods that are ready.
    pub ready_replicas: i32,
    /// Player pods running the current template.
    pub updated_replicas: i32,
    /// The Deployment's controller has seen its latest generation (so the counts above
    /// describe the current template); false while it has not, or there is no Deployment.
    pub deployment_current: bool,
    /// The players' Deployment exists (it is not applied while the spec does not build,
    /// while reconciliation is paused before it was first made, or when its apply fails).
    pub deployment_found: bool,
    /// The players' Lease; `None` before any player created it.
    pub lease: Option<LeaseInfo>,
    /// Whether the player pod the Lease names is ready (its `/readyz` answers 200; a
    /// leader refused by a shard, or whose main stream is stalled, answers 503); `None`
    /// when no such pod is seen.
    pub leader_ready: Option<bool>,
    /// The driven shards, in name order.
    pub shards: Vec<ShardObserved>,
    /// The LogStore's last index, when it answered.
    pub head_index: Option<i64>,
    /// Whether the LogStore answered.
    pub logstore: Probe,
    /// `spec.maxEntryBytes`: the players' entry limit.
    pub max_entry_bytes: u64,
    /// The entry limit the LogStore reported, when it answered and said one.
    pub log_max_entry_bytes: Option<u64>,
    /// A problem with the spec or the selected Shards (from building the desired objects).
    pub spec_problem: Option<Problem>,
    /// Objects the API server refused to apply (`ApplyFailed`).
    pub apply_problems: Vec<Problem>,
    /// Pods of this LogPlayer (players, managed LogStore, managed shards) that cannot run:
    /// `PodsPending`, `ImagePullFailed`, `CrashLoopBackOff`, `ContainerCannotStart`.
    pub pod_problems: Vec<Problem>,
    /// The pause annotation is set.
    pub paused: bool,
    /// The LogPlayer is being deleted (its `deletionTimestamp` is set): what holds it (its
    /// finalizers, or the dependents a foreground deletion waits for).
    pub deleting: Option<String>,
    /// A managed LogStore's membership, and the change made to it (none when the LogStore
    /// is external; no change while reconciliation is paused).
    pub log_members: Option<crate::operator::log_members::Seen>,
    /// What keeping the certificates found (`CertificatesReady`).
    pub certificates: crate::operator::certs::CertState,
}

/// The reason `Ready` and `Degraded` give when a reconciliation failed before it could
/// look at everything (the API server unreachable, or a call the operator may not make).
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// The conditions after a failed reconciliation: `old`, except that `Ready` is False and
/// `Degraded` True, both naming the failure (`why`), so that a status nobody could refresh
/// never keeps saying all is well. The other conditions keep what was last observed.
pub fn failed_conditions(
    old: &[Condition],
    generation: i64,
    why: &str,
    now: &Time,
) -> Vec<Condition> {
    let message =
        format!("the operator could not reconcile this resource: {why}; it tries again every 5 s");
    let failed = |type_: &str, status: bool| {
        let mut c = cond(
            type_,
            status,
            RECONCILE_FAILED,
            message.clone(),
            generation,
            now,
        );
        if let Some(prev) = old.iter().find(|p| p.type_ == type_)
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
        c
    };
    let mut out: Vec<Condition> = old
        .iter()
        .map(|c| match c.type_.as_str() {
            condition::READY => failed(condition::READY, false),
            condition::DEGRADED => failed(condition::DEGRADED, true),
            _ => c.clone(),
        })
        .collect();
    for (type_, status) in [(condition::READY, false), (condition::DEGRADED, true)] {
        if !out.iter().any(|c| c.type_ == type_) {
            out.push(failed(type_, status));
        }
    }
    out
}

/// Sets `new` into `conditions`, keeping `lastTransitionTime` when the status is unchanged.
fn put(conditions: &mut Vec<Condition>, old: &[Condition], mut new: Condition) {
    if let Some(prev) = old.iter().find(|c| c.type_ == new.type_)
        && prev.status == new.status
    {
        new.last_transition_time = prev.last_transition_time.clone();
    }
    conditions.push(new);
}

fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

/// The message of a condition that names the first of `problems`: its own message, and
/// how many more there are (the full list is `status.problems`).
fn primary_message(problems: &[Problem]) -> String {
    match problems {
        [] => String::new(),
        [only] => only.message.clone(),
        [first, rest @ ..] => format!(
            "{} (and {} more: see status.problems)",
            first.message,
            rest.len()
        ),
    }
}

/// `Degraded`: True with the first problem's reason and message (and a count of the
/// others), or False (`AsExpected`).
fn degraded_condition(problems: &[Problem], generation: i64, now: &Time) -> Condition {
    // A warning ranks after every other problem (a CA near its end must not hide a pod
    // that crash-loops for 30 days).
    let (blocking, warnings): (Vec<Problem>, Vec<Problem>) =
        problems.iter().cloned().partition(|p| !p.is_warning());
    let problems = [blocking, warnings].concat();
    match problems.first() {
        Some(first) => cond(
            condition::DEGRADED,
            true,
            &first.reason,
            primary_message(&problems),
            generation,
            now,
        ),
        None => cond(
            condition::DEGRADED,
            false,
            "AsExpected",
            String::new(),
            generation,
            now,
        ),
    }
}
