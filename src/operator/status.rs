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
//! - `Degraded`: something a user must fix or wait for, the first named in the reason:
//!   a spec problem (`InvalidSpec`, `InvalidShard`, `NoShards`, `SlotsOverlap`,
//!   `SlotsUnowned`), a pod that cannot start (`ImagePullFailed`, `CrashLoopBackOff`),
//!   `LogStoreUnreachable`, `ShardUnreachable`; else `AsExpected`.
//! - `Progressing`: player pods being created or rolled (`RollingOut`), else `Complete`.
//! - `Ready`: a leader is elected, at least one player pod is ready and nothing is degraded
//!   (`Delivering`); else the reason of what is missing.
//! - `ReconciliationPaused`: only while the pause annotation is set (`PauseAnnotation`).
//!
//! Shard conditions: `Ready` (the shard server answers: `Serving`, else the problem) and
//! `Degraded` (`InvalidSpec`, `LogPlayerNotFound`, `ShardUnreachable`, `AsExpected`).
//!
//! The operator never writes a Shard's `ackedIndex` or `ackedEpoch`: those belong to the
//! leading player's field manager.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LogPlayerStatus, ShardProgress, ShardStatus, condition};

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
}

/// The outcome of asking a server for something small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Reachable,
    /// It did not, and why (naming the address).
    Unreachable(String),
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
    /// Whether its server answered.
    pub probe: Probe,
}

/// Everything a LogPlayer's status is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The players' Lease; `None` before any player created it.
    pub lease: Option<LeaseInfo>,
    /// The driven shards, in name order.
    pub shards: Vec<ShardObserved>,
    /// The LogStore's last index, when it answered.
    pub head_index: Option<i64>,
    /// Whether the LogStore answered.
    pub logstore: Probe,
    /// A problem with the spec or the selected Shards (from building the desired objects).
    pub spec_problem: Option<Problem>,
    /// A player pod that cannot start.
    pub pod_problem: Option<Problem>,
    /// The pause annotation is set.
    pub paused: bool,
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

/// The problems that make a LogPlayer `Degraded`, most fundamental first.
fn problems(obs: &Observed) -> Vec<Problem> {
    let mut out = Vec::new();
    out.extend(obs.spec_problem.clone());
    out.extend(obs.pod_problem.clone());
    if let Probe::Unreachable(why) = &obs.logstore {
        out.push(Problem::new("LogStoreUnreachable", why.clone()));
    }
    let down: Vec<String> = obs
        .shards
        .iter()
        .filter_map(|s| match &s.probe {
            Probe::Unreachable(why) => Some(format!("shard {}: {why}", s.name)),
            _ => None,
        })
        .collect();
    if !down.is_empty() {
        out.push(Problem::new(
            "ShardUnreachable",
            format!(
                "{} of {} shards do not answer: {}",
                down.len(),
                obs.shards.len(),
                down.join("; ")
            ),
        ));
    }
    out
}

/// The LogPlayer status for what was observed; `old` supplies transition times.
pub fn logplayer_status(obs: &Observed, old: &LogPlayerStatus, now: Time) -> LogPlayerStatus {
    let g = obs.generation;
    let mut conditions = Vec::new();

    // Per-shard progress and lag against the log's head.
    let shards: Vec<ShardProgress> = obs
        .shards
        .iter()
        .map(|s| {
            let acked = s.acked_index.unwrap_or(0);
            ShardProgress {
                name: s.name.clone(),
                acked_index: acked,
                lag: obs.head_index.map_or(0, |h| (h - acked).max(0)),
            }
        })
        .collect();
    let lag = obs
        .head_index
        .map(|_| shards.iter().map(|s| s.lag).max().unwrap_or(0));

    // LeaderElected.
    let (leader, epoch, leader_cond) = match &obs.lease {
        None => (
            None,
            None,
            cond(
                condition::LEADER_ELECTED,
                false,
                "NoLease",
                "no player has created its Lease yet".into(),
                g,
                &now,
            ),
        ),
        Some(l) => match (&l.holder, l.fresh) {
            (Some(holder), true) => (
                Some(holder.clone()),
                Some(l.transitions),
                cond(
                    condition::LEADER_ELECTED,
                    true,
                    "LeaseHeld",
                    format!("pod {holder} leads with epoch {}", l.transitions),
                    g,
                    &now,
                ),
            ),
            (Some(holder), false) => (
                None,
                Some(l.transitions),
                cond(
                    condition::LEADER_ELECTED,
                    false,
                    "LeaseExpired",
                    format!(
                        "the Lease held by pod {holder} (epoch {}) expired; a standby takes it \
                         over when one is ready",
                        l.transitions
                    ),
                    g,
                    &now,
                ),
            ),
            (None, _) => (
                None,
                Some(l.transitions),
                cond(
                    condition::LEADER_ELECTED,
                    false,
                    "NoLeader",
                    "the Lease is released and no player holds it".into(),
                    g,
                    &now,
                ),
            ),
        },
    };
    let elected = leader_cond.status == "True";
    put(&mut conditions, &old.conditions, leader_cond);

    // Degraded.
    let problems = problems(obs);
    let degraded = match problems.first() {
        Some(first) => cond(
            condition::DEGRADED,
            true,
            &first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            g,
            &now,
        ),
        None => cond(
            condition::DEGRADED,
            false,
            "AsExpected",
            String::new(),
            g,
            &now,
        ),
    };
    put(&mut conditions, &old.conditions, degraded);

    // Progressing.
    let want = obs.desired_replicas;
    let rolling = obs.updated_replicas < want || obs.ready_replicas < want || obs.replicas > want;
    let progressing = if rolling {
        cond(
            condition::PROGRESSING,
            true,
            "RollingOut",
            format!(
                "{} of {want} player pods ready, {} up to date, {} exist",
                obs.ready_replicas, obs.updated_replicas, obs.replicas
            ),
            g,
            &now,
        )
    } else {
        cond(
            condition::PROGRESSING,
            false,
            "Complete",
            format!("all {want} player pods are ready and up to date"),
            g,
            &now,
        )
    };
    put(&mut conditions, &old.conditions, progressing);

    // Ready.
    let ready = if let Some(first) = problems.first() {
        cond(
            condition::READY,
            false,
            &first.reason,
            first.message.clone(),
            g,
            &now,
        )
    } else if !elected {
        cond(
            condition::READY,
            false,
            "NoLeader",
            "no player leads, so nothing is delivered".into(),
            g,
            &now,
        )
    } else if obs.ready_replicas < 1 {
        cond(
            condition::READY,
            false,
            "NoReadyReplicas",
            "no player pod is ready".into(),
            g,
            &now,
        )
    } else {
        cond(
            condition::READY,
            true,
            "Delivering",
            format!(
                "pod {} delivers to {} shards{}",
                leader.as_deref().unwrap_or("?"),
                obs.shards.len(),
                lag.map(|l| format!("; largest lag {l} entries"))
                    .unwrap_or_default()
            ),
            g,
            &now,
        )
    };
    put(&mut conditions, &old.conditions, ready);

    if obs.paused {
        put(
            &mut conditions,
            &old.conditions,
            cond(
                RECONCILIATION_PAUSED,
                true,
                "PauseAnnotation",
                format!(
                    "annotation {}=true: the operator changes nothing and only reports status",
                    super::PAUSE_ANNOTATION
                ),
                g,
                &now,
            ),
        );
    }

    LogPlayerStatus {
        observed_generation: Some(g),
        conditions,
        leader,
        epoch,
        ready_replicas: obs.ready_replicas,
        replicas: obs.replicas,
        shards,
        lag,
    }
}

/// Everything a Shard's status is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardObservation {
    /// `metadata.generation`.
    pub generation: i64,
    /// The address the players use, when the spec names one.
    pub endpoint: Option<String>,
    /// Whether the shard server answered.
    pub probe: Probe,
    /// A problem with the Shard's own spec.
    pub spec_problem: Option<Problem>,
    /// Whether the LogPlayer named in `spec.logPlayer` exists.
    pub log_player_found: bool,
    /// The shard's lag as its LogPlayer last reported it.
    pub lag: Option<i64>,
}

/// The operator's part of a Shard's status (never `ackedIndex`/`ackedEpoch`).
pub fn shard_status(obs: &ShardObservation, old: &ShardStatus, now: Time) -> ShardStatus {
    let g = obs.generation;
    let mut problems = Vec::new();
    problems.extend(obs.spec_problem.clone());
    if !obs.log_player_found {
        problems.push(Problem::new(
            "LogPlayerNotFound",
            "the LogPlayer named in spec.logPlayer does not exist in this namespace, so \
             nothing is delivered to this shard",
        ));
    }
    if let Probe::Unreachable(why) = &obs.probe {
        problems.push(Problem::new("ShardUnreachable", why.clone()));
    }
    let mut conditions = Vec::new();
    let serving = obs.probe == Probe::Reachable;
    let ready = match (&obs.probe, &obs.spec_problem) {
        (_, Some(p)) => cond(
            condition::READY,
            false,
            &p.reason,
            p.message.clone(),
            g,
            &now,
        ),
        (Probe::Reachable, None) => cond(
            condition::READY,
            true,
            "Serving",
            format!(
                "the shard server at {} answers",
                obs.endpoint.as_deref().unwrap_or("?")
            ),
            g,
            &now,
        ),
        (Probe::Unreachable(why), None) => cond(
            condition::READY,
            false,
            "ShardUnreachable",
            why.clone(),
            g,
            &now,
        ),
        (Probe::Unknown, None) => cond(
            condition::READY,
            false,
            "NotProbed",
            "the shard server has not been asked yet".into(),
            g,
            &now,
        ),
    };
    put(&mut conditions, &old.conditions, ready);
    let degraded = match problems.first() {
        Some(first) => cond(
            condition::DEGRADED,
            true,
            &first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            g,
            &now,
        ),
        None => cond(
            condition::DEGRADED,
            false,
            "AsExpected",
            String::new(),
            g,
            &now,
        ),
    };
    put(&mut conditions, &old.conditions, degraded);
    ShardStatus {
        observed_generation: Some(g),
        conditions,
        acked_index: None,
        acked_epoch: None,
        lag: obs.lag,
        endpoint: obs.endpoint.clone(),
        ready: Some(serving),
    }
}

/// An Event to publish about a change of conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub note: String,
}

/// Events for what changed between two condition lists: a `Degraded` problem appearing or
/// changing (Warning, with its reason), recovering (`Recovered`), a new leader or the loss
/// of one, and `Ready` turning True.
pub fn events_for(old: &[Condition], new: &[Condition]) -> Vec<EventNote> {
    let find = |list: &[Condition], t: &str| list.iter().find(|c| c.type_ == t).cloned();
    let mut out = Vec::new();
    let degraded = (
        find(old, condition::DEGRADED),
        find(new, condition::DEGRADED),
    );
    if let (prev, Some(now)) = degraded {
        let was = prev.as_ref().is_some_and(|c| c.status == "True");
        let changed = prev.as_ref().is_none_or(|p| {
            p.status != now.status || p.reason != now.reason || p.message != now.message
        });
        if now.status == "True" && changed {
            out.push(EventNote {
                warning: true,
                reason: now.reason.clone(),
                note: now.message.clone(),
            });
        } else if now.status == "False" && was {
            out.push(EventNote {
                warning: false,
                reason: "Recovered".into(),
                note: "no longer degraded".into(),
            });
        }
    }
    if let (prev, Some(now)) = (
        find(old, condition::LEADER_ELECTED),
        find(new, condition::LEADER_ELECTED),
    ) {
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.status != now.status || p.message != now.message);
        if changed {
            out.push(EventNote {
                warning: now.status != "True",
                reason: if now.status == "True" {
                    "LeaderElected".into()
                } else {
                    now.reason.clone()
                },
                note: now.message.clone(),
            });
        }
    }
    if let (prev, Some(now)) = (find(old, condition::READY), find(new, condition::READY))
        && now.status == "True"
        && prev.as_ref().is_none_or(|p| p.status != "True")
    {
        out.push(EventNote {
            warning: false,
            reason: "Ready".into(),
            note: now.message.clone(),
        });
    }
    out
}
