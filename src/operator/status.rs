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
//! `Degraded` (`InvalidShard`, `LogPlayerNotFound`, `ShardUnreachable`, `AsExpected`).
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
    /// `status.coveredIndex`: through which log index the shard has every entry routed to
    /// it. Lag is measured from here (from `acked_index` when absent).
    pub covered_index: Option<i64>,
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

/// `Degraded`: True with the first problem's reason and every problem's message, or False
/// (`AsExpected`).
fn degraded_condition(problems: &[Problem], generation: i64, now: &Time) -> Condition {
    match problems.first() {
        Some(first) => cond(
            condition::DEGRADED,
            true,
            &first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
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
            let through = s.covered_index.unwrap_or(acked).max(acked);
            ShardProgress {
                name: s.name.clone(),
                acked_index: acked,
                lag: obs.head_index.map_or(0, |h| (h - through).max(0)),
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
    let degraded = degraded_condition(&problems, g, &now);
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
    let degraded = degraded_condition(&problems, g, &now);
    put(&mut conditions, &old.conditions, degraded);
    ShardStatus {
        observed_generation: Some(g),
        conditions,
        acked_index: None,
        acked_epoch: None,
        covered_index: None,
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
        // Not on a message change alone: a probe's error text varies from try to try, and
        // a shard that stays down must not repeat the Warning every resync.
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.status != now.status || p.reason != now.reason);
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

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: i64 = 7;
    const LEADER: &str = "demo-player-5c9d-abcde";
    const S1_DOWN: &str = "s1-shard.ns.svc:7100 does not answer: connection refused";
    const LOGSTORE_DOWN: &str = "LogStore at demo-logstore.ns.svc:7000 does not answer: timeout";

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("valid second"))
    }

    fn t0() -> Time {
        at(1_700_000_000)
    }

    fn t1() -> Time {
        at(1_700_000_060)
    }

    fn t2() -> Time {
        at(1_700_000_120)
    }

    fn shard(name: &str, acked: Option<i64>, probe: Probe) -> ShardObserved {
        ShardObserved {
            name: name.into(),
            acked_index: acked,
            covered_index: None,
            probe,
        }
    }

    /// Three ready, up-to-date replicas; a fresh lease held by [`LEADER`] at epoch 4; three
    /// reachable shards at 90, 60 and 100 of a log whose head is 100.
    fn healthy() -> Observed {
        Observed {
            generation: GEN,
            desired_replicas: 3,
            replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            lease: Some(LeaseInfo {
                holder: Some(LEADER.into()),
                transitions: 4,
                fresh: true,
            }),
            shards: vec![
                shard("s0", Some(90), Probe::Reachable),
                shard("s1", Some(60), Probe::Reachable),
                shard("s2", Some(100), Probe::Reachable),
            ],
            head_index: Some(100),
            logstore: Probe::Reachable,
            spec_problem: None,
            pod_problem: None,
            paused: false,
        }
    }

    /// A shard whose last entry is below the head but that has everything routed to it
    /// (its coveredIndex) has no lag; a covered index below its acked index is ignored.
    #[test]
    fn lag_is_measured_from_the_covered_index() {
        let obs = healthy_with(|o| {
            o.shards[0].covered_index = Some(100);
            o.shards[1].covered_index = Some(70);
            o.shards[2].covered_index = Some(5);
        });
        let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
        let lags: Vec<(i64, i64)> = st.shards.iter().map(|p| (p.acked_index, p.lag)).collect();
        assert_eq!(lags, vec![(90, 0), (60, 30), (100, 0)]);
        assert_eq!(st.lag, Some(30));
    }

    fn healthy_with(f: impl FnOnce(&mut Observed)) -> Observed {
        let mut obs = healthy();
        f(&mut obs);
        obs
    }

    fn c(type_: &str, status: &str, reason: &str, message: &str, time: Time) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(GEN),
            last_transition_time: time,
        }
    }

    fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
    }

    /// (status, reason, message) of one condition.
    fn srm<'a>(conditions: &'a [Condition], type_: &str) -> (&'a str, &'a str, &'a str) {
        let c = get(conditions, type_);
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    fn status(obs: &Observed) -> LogPlayerStatus {
        logplayer_status(obs, &LogPlayerStatus::default(), t0())
    }

    fn progress(name: &str, acked_index: i64, lag: i64) -> ShardProgress {
        ShardProgress {
            name: name.into(),
            acked_index,
            lag,
        }
    }

    #[test]
    fn a_healthy_logplayer_is_ready_and_delivering() {
        let s = status(&healthy());
        assert_eq!(
            s,
            LogPlayerStatus {
                observed_generation: Some(GEN),
                conditions: vec![
                    c(
                        condition::LEADER_ELECTED,
                        "True",
                        "LeaseHeld",
                        &format!("pod {LEADER} leads with epoch 4"),
                        t0()
                    ),
                    c(condition::DEGRADED, "False", "AsExpected", "", t0()),
                    c(
                        condition::PROGRESSING,
                        "False",
                        "Complete",
                        "all 3 player pods are ready and up to date",
                        t0()
                    ),
                    c(
                        condition::READY,
                        "True",
                        "Delivering",
                        &format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries"),
                        t0()
                    ),
                ],
                leader: Some(LEADER.into()),
                epoch: Some(4),
                ready_replicas: 3,
                replicas: 3,
                shards: vec![
                    progress("s0", 90, 10),
                    progress("s1", 60, 40),
                    progress("s2", 100, 0)
                ],
                lag: Some(40),
            }
        );
        assert!(
            !s.conditions
                .iter()
                .any(|c| c.type_ == RECONCILIATION_PAUSED),
            "{:?}",
            s.conditions
        );
    }

    #[test]
    fn every_condition_carries_the_observed_generation() {
        for obs in [
            healthy(),
            healthy_with(|o| o.lease = None),
            healthy_with(|o| o.paused = true),
            healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into())),
        ] {
            let s = status(&obs);
            assert_eq!(s.observed_generation, Some(GEN));
            assert!(s.conditions.len() >= 4, "{:?}", s.conditions);
            for cond in &s.conditions {
                assert_eq!(cond.observed_generation, Some(GEN), "{cond:?}");
            }
        }
    }

    #[test]
    fn lag_counts_a_shard_without_a_cursor_from_zero_and_never_goes_negative() {
        let s = status(&healthy_with(|o| {
            o.shards = vec![
                shard("s0", None, Probe::Reachable),
                shard("s1", Some(120), Probe::Reachable),
            ];
        }));
        assert_eq!(s.shards, [progress("s0", 0, 100), progress("s1", 120, 0)]);
        assert_eq!(s.lag, Some(100));

        // Without the log's head, lag is unknown: no overall lag, no suffix.
        let s = status(&healthy_with(|o| {
            o.head_index = None;
            o.logstore = Probe::Unknown;
        }));
        assert_eq!(s.lag, None);
        assert_eq!(
            s.shards,
            [
                progress("s0", 90, 0),
                progress("s1", 60, 0),
                progress("s2", 100, 0)
            ]
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            (
                "True",
                "Delivering",
                &*format!("pod {LEADER} delivers to 3 shards")
            )
        );
    }

    #[test]
    fn without_a_lease_there_is_no_leader() {
        let s = status(&healthy_with(|o| o.lease = None));
        assert_eq!(
            srm(&s.conditions, condition::LEADER_ELECTED),
            ("False", "NoLease", "no player has created its Lease yet")
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            (
                "False",
                "NoLeader",
                "no player leads, so nothing is delivered"
            )
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("False", "AsExpected", "")
        );
        assert_eq!((s.leader, s.epoch), (None, None));
    }

    #[test]
    fn an_expired_lease_keeps_the_epoch_but_names_no_leader() {
        let s = status(&healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: Some(LEADER.into()),
                transitions: 4,
                fresh: false,
            })
        }));
        assert_eq!(
            srm(&s.conditions, condition::LEADER_ELECTED),
            (
                "False",
                "LeaseExpired",
                &*format!(
                    "the Lease held by pod {LEADER} (epoch 4) expired; a standby takes it over \
                     when one is ready"
                )
            )
        );
        assert_eq!((s.leader, s.epoch), (None, Some(4)));
        assert_eq!(
            srm(&s.conditions, condition::READY),
            (
                "False",
                "NoLeader",
                "no player leads, so nothing is delivered"
            )
        );
    }

    #[test]
    fn a_released_lease_is_no_leader() {
        for fresh in [true, false] {
            let s = status(&healthy_with(|o| {
                o.lease = Some(LeaseInfo {
                    holder: None,
                    transitions: 5,
                    fresh,
                })
            }));
            assert_eq!(
                srm(&s.conditions, condition::LEADER_ELECTED),
                (
                    "False",
                    "NoLeader",
                    "the Lease is released and no player holds it"
                )
            );
            assert_eq!((s.leader.as_deref(), s.epoch), (None, Some(5)));
            assert_eq!(get(&s.conditions, condition::READY).reason, "NoLeader");
        }
    }

    #[test]
    fn an_unreachable_shard_degrades_and_unreadies_naming_it() {
        let s = status(&healthy_with(|o| {
            o.shards[1].probe = Probe::Unreachable(S1_DOWN.into())
        }));
        let msg = format!("1 of 3 shards do not answer: shard s1: {S1_DOWN}");
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("True", "ShardUnreachable", msg.as_str())
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "ShardUnreachable", msg.as_str())
        );
        // The leader is still there.
        assert_eq!(get(&s.conditions, condition::LEADER_ELECTED).status, "True");
        assert_eq!(s.leader.as_deref(), Some(LEADER));

        // Two down: both named, in order.
        let s = status(&healthy_with(|o| {
            o.shards[0].probe = Probe::Unreachable("a".into());
            o.shards[2].probe = Probe::Unreachable("b".into());
        }));
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            (
                "True",
                "ShardUnreachable",
                "2 of 3 shards do not answer: shard s0: a; shard s2: b"
            )
        );
    }

    #[test]
    fn an_unknown_shard_probe_is_not_a_problem() {
        let s = status(&healthy_with(|o| o.shards[1].probe = Probe::Unknown));
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("False", "AsExpected", "")
        );
        assert_eq!(get(&s.conditions, condition::READY).status, "True");
    }

    #[test]
    fn an_unreachable_logstore_degrades() {
        let s = status(&healthy_with(|o| {
            o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
            o.head_index = None;
        }));
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("True", "LogStoreUnreachable", LOGSTORE_DOWN)
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "LogStoreUnreachable", LOGSTORE_DOWN)
        );
        assert_eq!(s.lag, None);
    }

    #[test]
    fn a_pod_that_cannot_start_degrades() {
        let msg = "pod demo-player-1 container player (bad:image): ImagePullBackOff";
        let s = status(&healthy_with(|o| {
            o.pod_problem = Some(Problem::new("ImagePullFailed", msg))
        }));
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("True", "ImagePullFailed", msg)
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "ImagePullFailed", msg)
        );
    }

    #[test]
    fn a_spec_problem_comes_first_and_every_message_is_joined() {
        let spec = "shards do not own every slot exactly once: slots 0-9 are owned by no shard";
        let pod = "pod demo-player-1 container player (x): CrashLoopBackOff";
        let s = status(&healthy_with(|o| {
            o.spec_problem = Some(Problem::new("SlotsUnowned", spec));
            o.pod_problem = Some(Problem::new("CrashLoopBackOff", pod));
            o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
            o.shards[1].probe = Probe::Unreachable(S1_DOWN.into());
        }));
        let joined = format!(
            "{spec}; {pod}; {LOGSTORE_DOWN}; 1 of 3 shards do not answer: shard s1: {S1_DOWN}"
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("True", "SlotsUnowned", joined.as_str())
        );
        // Ready names the first problem only.
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "SlotsUnowned", spec)
        );

        // Without the spec problem, the pod comes next.
        let s = status(&healthy_with(|o| {
            o.pod_problem = Some(Problem::new("CrashLoopBackOff", pod));
            o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
        }));
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            (
                "True",
                "CrashLoopBackOff",
                &*format!("{pod}; {LOGSTORE_DOWN}")
            )
        );
        // And the LogStore before the shards.
        let s = status(&healthy_with(|o| {
            o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
            o.shards[1].probe = Probe::Unreachable(S1_DOWN.into());
        }));
        assert_eq!(
            get(&s.conditions, condition::DEGRADED).reason,
            "LogStoreUnreachable"
        );
    }

    #[test]
    fn a_problem_outranks_a_missing_leader_in_ready() {
        let s = status(&healthy_with(|o| {
            o.lease = None;
            o.spec_problem = Some(Problem::new("NoShards", "no shards"));
        }));
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "NoShards", "no shards")
        );
    }

    #[test]
    fn pods_being_created_or_rolled_are_progressing() {
        for (replicas, ready, updated) in [(3, 2, 3), (3, 3, 1), (4, 3, 3), (0, 0, 0)] {
            let s = status(&healthy_with(|o| {
                o.replicas = replicas;
                o.ready_replicas = ready;
                o.updated_replicas = updated;
            }));
            assert_eq!(
                srm(&s.conditions, condition::PROGRESSING),
                (
                    "True",
                    "RollingOut",
                    &*format!(
                        "{ready} of 3 player pods ready, {updated} up to date, {replicas} exist"
                    )
                ),
                "{replicas}/{ready}/{updated}"
            );
            assert_eq!((s.replicas, s.ready_replicas), (replicas, ready));
        }
        // Ready while rolling, as long as one pod is ready and a leader is elected.
        let s = status(&healthy_with(|o| o.ready_replicas = 1));
        assert_eq!(get(&s.conditions, condition::READY).status, "True");
    }

    #[test]
    fn a_leader_without_ready_pods_is_not_ready() {
        let s = status(&healthy_with(|o| o.ready_replicas = 0));
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "NoReadyReplicas", "no player pod is ready")
        );
        assert_eq!(get(&s.conditions, condition::LEADER_ELECTED).status, "True");
        assert_eq!(s.ready_replicas, 0);
    }

    #[test]
    fn the_pause_annotation_shows_as_a_condition() {
        let s = status(&healthy_with(|o| o.paused = true));
        assert_eq!(s.conditions.len(), 5);
        assert_eq!(
            s.conditions[4],
            c(
                RECONCILIATION_PAUSED,
                "True",
                "PauseAnnotation",
                "annotation logplayer.io/paused=true: the operator changes nothing and only \
                 reports status",
                t0()
            )
        );
        // Everything else is reported as usual.
        assert_eq!(get(&s.conditions, condition::READY).status, "True");
        // Unpausing drops it.
        let s = logplayer_status(&healthy(), &s, t1());
        assert_eq!(s.conditions.len(), 4);
        assert!(
            !s.conditions
                .iter()
                .any(|c| c.type_ == RECONCILIATION_PAUSED)
        );
    }

    #[test]
    fn transition_times_change_only_when_a_status_flips() {
        let first = logplayer_status(&healthy(), &LogPlayerStatus::default(), t0());
        for cond in &first.conditions {
            assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
        }

        // Same statuses, other reasons and messages: new leader, more lag.
        let same = healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: Some("demo-player-other".into()),
                transitions: 5,
                fresh: true,
            });
            o.head_index = Some(500);
        });
        let second = logplayer_status(&same, &first, t1());
        assert_ne!(
            get(&second.conditions, condition::LEADER_ELECTED).message,
            get(&first.conditions, condition::LEADER_ELECTED).message
        );
        assert_ne!(
            get(&second.conditions, condition::READY).message,
            get(&first.conditions, condition::READY).message
        );
        for cond in &second.conditions {
            assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
        }

        // Degraded and Ready flip; LeaderElected and Progressing stay.
        let down = healthy_with(|o| o.shards[1].probe = Probe::Unreachable(S1_DOWN.into()));
        let third = logplayer_status(&down, &second, t1());
        let time =
            |s: &LogPlayerStatus, t: &str| get(&s.conditions, t).last_transition_time.clone();
        assert_eq!(time(&third, condition::DEGRADED), t1());
        assert_eq!(time(&third, condition::READY), t1());
        assert_eq!(time(&third, condition::LEADER_ELECTED), t0());
        assert_eq!(time(&third, condition::PROGRESSING), t0());

        // Still degraded, for another reason: the time of the flip stays.
        let other = healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into()));
        let fourth = logplayer_status(&other, &third, t2());
        assert_eq!(
            get(&fourth.conditions, condition::DEGRADED).reason,
            "LogStoreUnreachable"
        );
        assert_eq!(time(&fourth, condition::DEGRADED), t1());
        assert_eq!(time(&fourth, condition::READY), t1());

        // Recovered: flips back at the new time.
        let fifth = logplayer_status(&healthy(), &fourth, t2());
        assert_eq!(time(&fifth, condition::DEGRADED), t2());
        assert_eq!(time(&fifth, condition::READY), t2());
        assert_eq!(time(&fifth, condition::LEADER_ELECTED), t0());

        // Pausing adds a condition stamped now; staying paused keeps its time.
        let paused = healthy_with(|o| o.paused = true);
        let sixth = logplayer_status(&paused, &fifth, t1());
        assert_eq!(time(&sixth, RECONCILIATION_PAUSED), t1());
        let seventh = logplayer_status(&paused, &sixth, t2());
        assert_eq!(time(&seventh, RECONCILIATION_PAUSED), t1());
    }

    // ------------------------------------------------------------------------------------
    // Shard status
    // ------------------------------------------------------------------------------------

    const ENDPOINT: &str = "s0-shard.ns.svc:7100";

    fn shard_obs() -> ShardObservation {
        ShardObservation {
            generation: GEN,
            endpoint: Some(ENDPOINT.into()),
            probe: Probe::Reachable,
            spec_problem: None,
            log_player_found: true,
            lag: Some(12),
        }
    }

    fn shard_obs_with(f: impl FnOnce(&mut ShardObservation)) -> ShardObservation {
        let mut obs = shard_obs();
        f(&mut obs);
        obs
    }

    /// A status the leading player has written its cursor into.
    fn with_cursor() -> ShardStatus {
        ShardStatus {
            acked_index: Some(1234),
            acked_epoch: Some(3),
            ..ShardStatus::default()
        }
    }

    #[test]
    fn a_reachable_shard_is_ready_and_serving() {
        let s = shard_status(&shard_obs(), &ShardStatus::default(), t0());
        assert_eq!(
            s,
            ShardStatus {
                observed_generation: Some(GEN),
                conditions: vec![
                    c(
                        condition::READY,
                        "True",
                        "Serving",
                        &format!("the shard server at {ENDPOINT} answers"),
                        t0()
                    ),
                    c(condition::DEGRADED, "False", "AsExpected", "", t0()),
                ],
                acked_index: None,
                acked_epoch: None,
                covered_index: None,
                lag: Some(12),
                endpoint: Some(ENDPOINT.into()),
                ready: Some(true),
            }
        );
    }

    #[test]
    fn the_operator_never_writes_the_players_cursor() {
        for obs in [
            shard_obs(),
            shard_obs_with(|o| o.probe = Probe::Unreachable("down".into())),
            shard_obs_with(|o| o.spec_problem = Some(Problem::new("InvalidShard", "bad"))),
        ] {
            let s = shard_status(&obs, &with_cursor(), t0());
            assert_eq!((s.acked_index, s.acked_epoch), (None, None), "{obs:?}");
        }
    }

    #[test]
    fn an_unreachable_shard_is_not_ready_and_degraded() {
        let why = format!("{ENDPOINT} does not answer: connection refused");
        let s = shard_status(
            &shard_obs_with(|o| o.probe = Probe::Unreachable(why.clone())),
            &with_cursor(),
            t0(),
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "ShardUnreachable", why.as_str())
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("True", "ShardUnreachable", why.as_str())
        );
        assert_eq!(s.ready, Some(false));
        assert_eq!(s.endpoint.as_deref(), Some(ENDPOINT));
        assert_eq!(s.lag, Some(12));
    }

    #[test]
    fn a_shard_whose_logplayer_is_missing_is_degraded() {
        let s = shard_status(
            &shard_obs_with(|o| {
                o.log_player_found = false;
                o.lag = None;
            }),
            &ShardStatus::default(),
            t0(),
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            (
                "True",
                "LogPlayerNotFound",
                "the LogPlayer named in spec.logPlayer does not exist in this namespace, so \
                 nothing is delivered to this shard"
            )
        );
        // Its server still answers.
        assert_eq!(get(&s.conditions, condition::READY).reason, "Serving");
        assert_eq!((s.ready, s.lag), (Some(true), None));
    }

    #[test]
    fn a_shard_spec_problem_is_not_ready_with_its_reason() {
        let msg = "Shard s0: Shard spec must set exactly one of `external` or `managed`, but \
                   sets neither";
        let s = shard_status(
            &shard_obs_with(|o| {
                o.spec_problem = Some(Problem::new("InvalidShard", msg));
                o.endpoint = None;
                o.probe = Probe::Unknown;
                o.log_player_found = false;
            }),
            &ShardStatus::default(),
            t0(),
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            ("False", "InvalidShard", msg)
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            (
                "True",
                "InvalidShard",
                &*format!(
                    "{msg}; the LogPlayer named in spec.logPlayer does not exist in this \
                     namespace, so nothing is delivered to this shard"
                )
            )
        );
        assert_eq!((s.ready, s.endpoint), (Some(false), None));

        // The spec problem wins over a reachable server in Ready.
        let s = shard_status(
            &shard_obs_with(|o| o.spec_problem = Some(Problem::new("InvalidShard", msg))),
            &ShardStatus::default(),
            t0(),
        );
        assert_eq!(get(&s.conditions, condition::READY).reason, "InvalidShard");
    }

    #[test]
    fn an_unprobed_shard_is_not_ready_yet() {
        let s = shard_status(
            &shard_obs_with(|o| o.probe = Probe::Unknown),
            &ShardStatus::default(),
            t0(),
        );
        assert_eq!(
            srm(&s.conditions, condition::READY),
            (
                "False",
                "NotProbed",
                "the shard server has not been asked yet"
            )
        );
        assert_eq!(
            srm(&s.conditions, condition::DEGRADED),
            ("False", "AsExpected", "")
        );
        assert_eq!(s.ready, Some(false));
    }

    #[test]
    fn shard_transition_times_change_only_when_a_status_flips() {
        let first = shard_status(&shard_obs(), &ShardStatus::default(), t0());
        let moved = shard_obs_with(|o| {
            o.endpoint = Some("s0.example:7100".into());
            o.lag = Some(99);
        });
        let second = shard_status(&moved, &first, t1());
        assert_eq!(
            get(&second.conditions, condition::READY).message,
            "the shard server at s0.example:7100 answers"
        );
        for cond in &second.conditions {
            assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
        }
        let down = shard_obs_with(|o| o.probe = Probe::Unreachable("down".into()));
        let third = shard_status(&down, &second, t1());
        for cond in &third.conditions {
            assert_eq!(cond.last_transition_time, t1(), "{cond:?}");
        }
    }

    // ------------------------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------------------------

    fn conditions(obs: &Observed) -> Vec<Condition> {
        status(obs).conditions
    }

    fn note(warning: bool, reason: &str, text: &str) -> EventNote {
        EventNote {
            warning,
            reason: reason.into(),
            note: text.into(),
        }
    }

    fn shard_down() -> Observed {
        healthy_with(|o| o.shards[1].probe = Probe::Unreachable(S1_DOWN.into()))
    }

    #[test]
    fn a_degraded_problem_appearing_is_one_warning() {
        let events = events_for(&conditions(&healthy()), &conditions(&shard_down()));
        assert_eq!(
            events,
            [note(
                true,
                "ShardUnreachable",
                &format!("1 of 3 shards do not answer: shard s1: {S1_DOWN}")
            )]
        );
    }

    #[test]
    fn the_same_conditions_again_are_no_event() {
        for obs in [healthy(), shard_down(), healthy_with(|o| o.lease = None)] {
            let cs = conditions(&obs);
            assert_eq!(events_for(&cs, &cs), [], "{obs:?}");
            // Also when only the transition times differ.
            let later = logplayer_status(&obs, &LogPlayerStatus::default(), t1()).conditions;
            assert_eq!(events_for(&cs, &later), [], "{obs:?}");
        }
    }

    #[test]
    fn another_degraded_problem_is_another_warning() {
        let other = healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into()));
        let events = events_for(&conditions(&shard_down()), &conditions(&other));
        assert_eq!(events, [note(true, "LogStoreUnreachable", LOGSTORE_DOWN)]);
    }

    #[test]
    fn recovering_is_normal_recovered_and_ready() {
        let events = events_for(&conditions(&shard_down()), &conditions(&healthy()));
        assert_eq!(
            events,
            [
                note(false, "Recovered", "no longer degraded"),
                note(
                    false,
                    "Ready",
                    &format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries")
                ),
            ]
        );
    }

    #[test]
    fn a_new_leader_is_a_normal_event() {
        let new_leader = healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: Some("demo-player-next".into()),
                transitions: 5,
                fresh: true,
            })
        });
        let events = events_for(&conditions(&healthy()), &conditions(&new_leader));
        assert_eq!(
            events,
            [note(
                false,
                "LeaderElected",
                "pod demo-player-next leads with epoch 5"
            )]
        );
    }

    #[test]
    fn losing_the_leader_is_a_warning_with_the_reason() {
        let expired = healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: Some(LEADER.into()),
                transitions: 4,
                fresh: false,
            })
        });
        let events = events_for(&conditions(&healthy()), &conditions(&expired));
        assert_eq!(
            events,
            [note(
                true,
                "LeaseExpired",
                &format!(
                    "the Lease held by pod {LEADER} (epoch 4) expired; a standby takes it over \
                     when one is ready"
                )
            )]
        );
        let released = healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: None,
                transitions: 4,
                fresh: true,
            })
        });
        let events = events_for(&conditions(&expired), &conditions(&released));
        assert_eq!(
            events,
            [note(
                true,
                "NoLeader",
                "the Lease is released and no player holds it"
            )]
        );
    }

    #[test]
    fn becoming_ready_is_a_normal_event() {
        let delivering = format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries");
        let no_pods = healthy_with(|o| o.ready_replicas = 0);
        let events = events_for(&conditions(&no_pods), &conditions(&healthy()));
        assert_eq!(events, [note(false, "Ready", &delivering)]);

        // The first status: a leader and readiness, no recovery.
        let events = events_for(&[], &conditions(&healthy()));
        assert_eq!(
            events,
            [
                note(
                    false,
                    "LeaderElected",
                    &format!("pod {LEADER} leads with epoch 4")
                ),
                note(false, "Ready", &delivering),
            ]
        );
        // Becoming degraded on the first status is a warning.
        let events = events_for(&[], &conditions(&shard_down()));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            (events[0].warning, events[0].reason.as_str()),
            (true, "ShardUnreachable")
        );
        assert_eq!(
            (events[1].warning, events[1].reason.as_str()),
            (false, "LeaderElected")
        );
    }

    #[test]
    fn shard_condition_changes_give_events_too() {
        let up = shard_status(&shard_obs(), &ShardStatus::default(), t0()).conditions;
        let down = shard_status(
            &shard_obs_with(|o| o.probe = Probe::Unreachable("refused".into())),
            &ShardStatus::default(),
            t0(),
        )
        .conditions;
        assert_eq!(
            events_for(&up, &down),
            [note(true, "ShardUnreachable", "refused")]
        );
        assert_eq!(
            events_for(&down, &up),
            [
                note(false, "Recovered", "no longer degraded"),
                note(
                    false,
                    "Ready",
                    &format!("the shard server at {ENDPOINT} answers")
                ),
            ]
        );
    }
}
