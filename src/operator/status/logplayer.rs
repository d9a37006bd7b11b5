//! A LogPlayer's status: its problems in order of what to fix first, and the conditions
//! `LeaderElected`, `Degraded`, `Progressing`, `Ready` and `ReconciliationPaused`.

use super::{
    Observed, Probe, Problem, RECONCILIATION_PAUSED, cond, degraded_condition, primary_message, put,
};
use crate::crd::{
    LogPlayerStatus, LogReplicaStatus, LogStoreStatus, ShardProgress, StatusProblem, condition,
};
use crate::operator::certs::CertState;
use crate::operator::log_members::{self, Seen};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The problems that make a LogPlayer `Degraded`, most fundamental first.
fn problems(obs: &Observed) -> Vec<Problem> {
    let mut out = Vec::new();
    out.extend(obs.spec_problem.clone());
    out.extend(obs.apply_problems.iter().cloned());
    if let CertState::Problem(p) = &obs.certificates {
        out.push(p.clone());
    }
    let shards: Vec<String> = obs
        .shards
        .iter()
        .filter_map(|s| {
            let (reason, message) = s.degraded.as_ref()?;
            Some(format!("Shard {}: {reason}: {message}", s.name))
        })
        .collect();
    if !shards.is_empty() {
        out.push(Problem::new("ShardDegraded", shards.join("; ")));
    }
    out.extend(obs.pod_problems.iter().cloned());
    if let Probe::Unreachable(why) = &obs.logstore {
        out.push(Problem::new("LogStoreUnreachable", why.clone()));
    }
    if let Some(seen) = &obs.log_members {
        out.extend(log_problems(seen));
    }
    out.extend(entry_limit_problem(obs));
    out.extend(lease_epoch_problem(obs));
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

/// The players' Lease counting below an epoch a shard acknowledged (`ackedEpoch`, written
/// by the leader of that epoch): only a Lease deleted (made again from 1) or reset does
/// that. Every player it then elects is fenced by the shards and stops, naming the shard
/// and the command that raises the epoch; the next one is one epoch higher, so it took a
/// crash loop per epoch to get past, with the command cut from the status. Said here once,
/// with the epoch to raise it to.
fn lease_epoch_problem(obs: &Observed) -> Option<Problem> {
    let lease = obs.lease.as_ref()?;
    let (shard, acked) = obs
        .shards
        .iter()
        .filter_map(|s| Some((&s.name, s.acked_epoch?)))
        .max_by_key(|(_, e)| *e)?;
    (acked > lease.transitions).then(|| {
        Problem::new(
            "LeaseEpochBehind",
            format!(
                "the players' Lease is at epoch {} but Shard {shard} acknowledged epoch {acked}: \
                 the Lease was deleted (or reset) and counts again from below, so the shards \
                 fence every player it elects, and each stops. Raise its \
                 spec.leaseTransitions to {} (kubectl patch lease NAME-player --type merge -p \
                 '{{\"spec\":{{\"leaseTransitions\":{}}}}}')",
                lease.transitions,
                acked + 1,
                acked + 1
            ),
        )
    })
}

/// Entry limits that cannot work together, as each server reported its own: a LogStore
/// that accepts larger entries than the players take (they refuse to start on it), a shard
/// that takes smaller ones than the LogStore accepts (it refuses every delivery,
/// `entry-limit`). A managed server shows one while it rolls to a changed `maxEntryBytes`.
fn entry_limit_problem(obs: &Observed) -> Option<Problem> {
    let mut found = Vec::new();
    if let Some(log) = obs.log_max_entry_bytes.filter(|l| *l > obs.max_entry_bytes) {
        found.push(format!(
            "the LogStore accepts entries of up to {log} bytes, more than spec.maxEntryBytes \
             {}: the players refuse to read it; set spec.maxEntryBytes to {log}",
            obs.max_entry_bytes
        ));
    }
    // A shard must take what the log accepts (unknown while the log does not answer).
    let log = obs.log_max_entry_bytes;
    let small: Vec<String> = obs
        .shards
        .iter()
        .filter_map(|s| {
            let limit = s.max_entry_bytes.filter(|l| Some(*l) < log)?;
            Some(format!(
                "shard {} takes entries of up to {limit} bytes",
                s.name
            ))
        })
        .collect();
    if !small.is_empty() {
        found.push(format!(
            "{}, less than the LogStore's {}: such a shard refuses every delivery; \
             raise its --max-entry-bytes to that (a managed shard takes spec.maxEntryBytes \
             when its pod is made again)",
            small.join(", "),
            log.unwrap_or_default()
        ));
    }
    (!found.is_empty()).then(|| Problem::new("EntryLimitMismatch", found.join("; ")))
}

/// What is wrong with a managed LogStore's group: no leader, wanted replicas that vote but
/// whose pod does not run (fewer copies of the log), a membership change that failed.
fn log_problems(seen: &Seen) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(Err(e)) = &seen.change {
        out.push(Problem::new(
            "LogMembershipFailed",
            format!("changing the log replicas failed: {e}"),
        ));
    }
    let Some(m) = &seen.members else {
        // Not asked while no replica runs: the pods' own problems say why.
        if let Some(why) = seen.unknown.as_ref().filter(|_| !seen.running.is_empty()) {
            out.push(Problem::new(
                "NoLogLeader",
                format!("no log replica could name a leader with the group's members: {why}"),
            ));
        }
        return out;
    };
    if m.leader == 0 {
        out.push(Problem::new(
            "NoLogLeader",
            "no log replica leads: appends wait for an election",
        ));
    }
    let voters = log_members::voters(m);
    let down: Vec<String> = voters
        .iter()
        .filter(|id| !seen.running.contains(id))
        .map(|id| format!("replica {id} (pod {})", seen.pod(*id)))
        .collect();
    if !down.is_empty() {
        // A majority that runs keeps the log appending and delivering: fewer copies is a
        // warning (a rolling restart takes one replica at a time). Without one, or while
        // the group changes (a joint majority is two majorities), it blocks.
        let majority = voters.len() / 2 + 1;
        let running = voters.len() - down.len();
        let (reason, then) = if m.joint {
            // Two configurations, each needing its own majority: the union's count says
            // nothing certain, so it blocks until the change is over.
            (
                "LogQuorumLost",
                "while the group changes, the old and the new voters must each keep a majority; \
                 appends may wait until they are back"
                    .to_owned(),
            )
        } else if running >= majority {
            // Without a leader, `NoLogLeader` says so and blocks.
            (
                "LogReplicaDown",
                "the log keeps fewer copies until they are back".to_owned(),
            )
        } else {
            (
                "LogQuorumLost",
                format!(
                    "fewer than a majority ({majority}) run, so the log appends nothing until \
                     they are back"
                ),
            )
        };
        out.push(Problem::new(
            reason,
            format!(
                "{} of {} voting log replicas are not running and ready: {}; {then}",
                down.len(),
                voters.len(),
                down.join(", ")
            ),
        ));
    }
    let behind: Vec<String> = m
        .members
        .iter()
        .filter(|r| r.voter && seen.running.contains(&r.id) && m.last_log > 0 && r.matched > 0)
        .filter(|r| m.last_log.saturating_sub(r.matched) > log_members::BEHIND)
        // The count is in `status.logStore.members`, not here: a message that changed at
        // every reconciliation made a new Warning Event each time.
        .map(|r| {
            format!(
                "replica {} (pod {}) is more than {} Raft entries behind",
                r.id,
                seen.pod(r.id),
                log_members::BEHIND
            )
        })
        .collect();
    if !behind.is_empty() {
        out.push(Problem::new(
            "LogReplicaBehind",
            format!(
                "{}; it catches up by itself unless it keeps falling behind (a slow disk)",
                behind.join(", ")
            ),
        ));
    }
    out
}

/// `status.logStore` from what the log leader said; the log id, once known, is kept from
/// `old` while nobody can tell it (it decides whether the operator may seed a group).
fn log_store_status(seen: &Seen, old: Option<&LogStoreStatus>) -> LogStoreStatus {
    let mut st = log_store_now(seen);
    if st.log_id.is_none() {
        st.log_id = old.and_then(|o| o.log_id.clone());
    }
    st
}

fn log_store_now(seen: &Seen) -> LogStoreStatus {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let Some(m) = &seen.members else {
        return LogStoreStatus {
            replicas: i32::try_from(seen.want).unwrap_or(i32::MAX),
            ..LogStoreStatus::default()
        };
    };
    let leads = m.last_log > 0;
    LogStoreStatus {
        replicas: i32::try_from(seen.want).unwrap_or(i32::MAX),
        voters: Some(i32::try_from(log_members::voters(m).len()).unwrap_or(i32::MAX)),
        log_id: Some(m.log_id.clone()).filter(|id| !id.is_empty()),
        leader: (m.leader != 0).then(|| seen.pod(m.leader)),
        raft_term: Some(to_i64(m.raft_term)),
        last_index: leads.then(|| to_i64(m.last_log)),
        commit_index: leads.then(|| to_i64(m.applied)),
        members: m
            .members
            .iter()
            .map(|r| LogReplicaStatus {
                id: to_i64(r.id),
                pod: seen.pod(r.id),
                role: match (r.id == m.leader, r.voter) {
                    (true, _) => "leader",
                    (false, true) => "voter",
                    (false, false) => "learner",
                }
                .to_owned(),
                // A leader that does not know a member's progress says 0: unknown.
                behind: (leads && r.matched > 0)
                    .then(|| to_i64(m.last_log.saturating_sub(r.matched))),
            })
            .collect(),
    }
}

/// A condition's verdict before it is stamped with the generation and time.
struct Verdict {
    status: bool,
    reason: String,
    message: String,
}

fn verdict(status: bool, reason: &str, message: String) -> Verdict {
    Verdict {
        status,
        reason: reason.to_owned(),
        message,
    }
}

/// The conditions being written: stamps each verdict with the observed generation and the
/// time, keeping `lastTransitionTime` from `old` when the status did not change.
struct Conditions<'a> {
    generation: i64,
    now: &'a Time,
    old: &'a [Condition],
    out: Vec<Condition>,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, v: Verdict) {
        let c = cond(
            type_,
            v.status,
            &v.reason,
            v.message,
            self.generation,
            self.now,
        );
        put(&mut self.out, self.old, c);
    }
}

/// Per-shard progress and lag against the log's head, and the largest lag. A lag is known
/// only when the LogStore told its head and the shard answers (an unreachable shard's
/// checkpointed cursor says nothing about now): unknown is absent, never 0. The largest
/// lag is absent when any shard's is, and when no shard is known (none selected, or a
/// selector that does not parse while the old players still deliver).
fn progress(obs: &Observed) -> (Vec<ShardProgress>, Option<i64>) {
    let shards: Vec<ShardProgress> = obs
        .shards
        .iter()
        .map(|s| {
            let acked = s.acked_index.unwrap_or(0);
            let through = s.covered_index.unwrap_or(acked).max(acked);
            let asked = !matches!(s.probe, Probe::Unreachable(_) | Probe::NotRunning);
            ShardProgress {
                name: s.name.clone(),
                acked_index: acked,
                lag: obs
                    .head_index
                    .filter(|_| asked)
                    .map(|h| (h - through).max(0)),
            }
        })
        .collect();
    let lag = shards
        .iter()
        .map(|s| s.lag)
        .collect::<Option<Vec<i64>>>()
        .filter(|_| obs.head_index.is_some())
        .and_then(|lags| lags.into_iter().max());
    (shards, lag)
}

/// `LeaderElected`, with the leader (when one holds a fresh lease) and the epoch.
fn leader_elected(obs: &Observed) -> (Option<String>, Option<i64>, Verdict) {
    let Some(l) = &obs.lease else {
        let v = verdict(
            false,
            "NoLease",
            "no player has created its Lease yet".into(),
        );
        return (None, None, v);
    };
    let epoch = Some(l.transitions);
    match (&l.holder, l.fresh) {
        (Some(holder), true) => (
            Some(holder.clone()),
            epoch,
            verdict(
                true,
                "LeaseHeld",
                format!("pod {holder} leads with epoch {}", l.transitions),
            ),
        ),
        (Some(holder), false) => (
            None,
            epoch,
            verdict(
                false,
                "LeaseExpired",
                format!(
                    "the Lease held by pod {holder} (epoch {}) expired; a standby takes it \
                     over when one is ready",
                    l.transitions
                ),
            ),
        ),
        (None, _) => (
            None,
            epoch,
            verdict(
                false,
                "NoLeader",
                "the Lease is released and no player holds it".into(),
            ),
        ),
    }
}

/// `CertificatesReady`, unless the certificates were not looked at.
fn certificates_ready(obs: &Observed) -> Option<Verdict> {
    Some(match &obs.certificates {
        CertState::NotChecked => return None,
        CertState::Insecure => verdict(
            false,
            "Insecure",
            "spec.tls.mode is Insecure: gRPC is plaintext and nobody is authenticated".into(),
        ),
        CertState::Problem(p) => verdict(false, &p.reason, p.message.clone()),
        CertState::Ready {
            count,
            first_expiry,
            issuer,
        } => verdict(
            true,
            "Issued",
            format!(
                "{count} certificates issued {}; the first to expire does at {}, \
                 each is issued again 30 days before",
                match issuer {
                    Some(issuer) => format!("by cert-manager ({issuer})"),
                    None => "from the CA".to_owned(),
                },
                k8s_openapi::jiff::Timestamp::from_second(*first_expiry)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| first_expiry.to_string())
            ),
        ),
    })
}

/// What keeps the players' Deployment from the latest spec: a spec that does not build, or
/// the Deployment's own apply refused.
fn blocked(obs: &Observed) -> Option<&Problem> {
    obs.spec_problem.as_ref().or_else(|| {
        obs.apply_problems
            .iter()
            .find(|p| p.message.starts_with("applying Deployment "))
    })
}

/// `Progressing`: player pods being created or rolled. Nothing is while there is no
/// Deployment to roll (the spec does not build, or its apply failed: `Degraded` says which)
/// or while reconciliation is paused (the Deployment is left as it is, whatever the spec).
fn progressing(obs: &Observed) -> Verdict {
    let want = obs.desired_replicas;
    let rolling = obs.updated_replicas < want || obs.ready_replicas < want || obs.replicas > want;
    if obs.paused {
        verdict(
            false,
            "Paused",
            format!(
                "reconciliation is paused: nothing is rolled out ({} player pods ready, {} exist)",
                obs.ready_replicas, obs.replicas
            ),
        )
    } else if !obs.deployment_found {
        verdict(
            false,
            "NoDeployment",
            "the player Deployment does not exist: nothing rolls out until what Degraded names is fixed"
                .into(),
        )
    } else if let Some(p) = blocked(obs) {
        // The Deployment was not brought to this spec: its counts compare the new replica
        // count with the old template (`RollingOut` forever, or `Complete` for a template
        // that was never applied).
        verdict(
            false,
            "Blocked",
            format!(
                "the player Deployment is not brought to the latest spec ({}: see Degraded); {} player pods ready, {} exist",
                p.reason, obs.ready_replicas, obs.replicas
            ),
        )
    } else if !obs.deployment_current {
        // Its replica counts still describe the template before the last apply.
        verdict(
            true,
            "RollingOut",
            "the player Deployment's controller has not yet seen its latest change".into(),
        )
    } else if rolling {
        verdict(
            true,
            "RollingOut",
            format!(
                "{} of {want} player pods ready, {} up to date, {} exist",
                obs.ready_replicas, obs.updated_replicas, obs.replicas
            ),
        )
    } else if let Some(v) = obs
        .log_members
        .as_ref()
        .filter(|_| !obs.paused)
        .and_then(log_membership_changing)
    {
        v
    } else if let Some(seen) = obs.log_members.as_ref().filter(|s| s.revisions.len() > 1) {
        // A change of the pods' template (`maxEntryBytes`, `image`) rolls the log replicas
        // one at a time: each restart shows as `LogReplicaDown` meanwhile.
        verdict(
            true,
            "RollingOut",
            format!(
                "the log replicas of StatefulSet {} are being rolled to a new revision (their \
                 pods run {} revisions)",
                seen.stateful_set,
                seen.revisions.len()
            ),
        )
    } else {
        verdict(
            false,
            "Complete",
            format!("all {want} player pods are ready and up to date"),
        )
    }
}

/// `Progressing` while a managed LogStore's voters are not yet replicas `1..=want`.
fn log_membership_changing(seen: &Seen) -> Option<Verdict> {
    let m = seen.members.as_ref()?;
    let voters = log_members::voters(m);
    let wanted: std::collections::BTreeSet<u64> = (1..=seen.want).collect();
    (voters != wanted).then(|| {
        verdict(
            true,
            "LogReplicasChanging",
            format!("log replicas voting: {voters:?}; wanted: {wanted:?} (one change at a time)"),
        )
    })
}

/// `Ready`: the first problem that is not a warning, else a missing leader or ready pod,
/// else delivering.
fn ready(obs: &Observed, problems: &[Problem], leader: Option<&str>, lag: Option<i64>) -> Verdict {
    let blocking: Vec<Problem> = problems
        .iter()
        .filter(|p| !p.is_warning())
        .cloned()
        .collect();
    if let Some(holds) = &obs.deleting {
        verdict(
            false,
            "Deleting",
            format!("the LogPlayer is being deleted ({holds}): the operator changes nothing"),
        )
    } else if let Some(first) = blocking.first() {
        verdict(false, &first.reason, primary_message(&blocking))
    } else if leader.is_none() {
        verdict(
            false,
            "NoLeader",
            "no player leads, so nothing is delivered".into(),
        )
    } else if let Some((shard, why)) = obs
        .shards
        .iter()
        .find_map(|s| s.refused.as_ref().map(|r| (&s.name, r)))
    {
        // The leader's pod fails its readiness for it too, but only once its probe ran.
        verdict(false, "DeliveryRefused", format!("shard {shard}: {why}"))
    } else if obs.leader_ready == Some(false) {
        // A standby's readiness says nothing of delivery: only the leader delivers.
        let pod = leader.unwrap_or("?");
        verdict(
            false,
            "LeaderNotReady",
            format!(
                "the leading player pod {pod} is not ready: it is starting, or a problem holds \
                 up delivery (a shard refusing it, its main stream stalled), which its log and \
                 /readyz name (kubectl logs {pod})"
            ),
        )
    } else if obs.ready_replicas < 1 {
        verdict(false, "NoReadyReplicas", "no player pod is ready".into())
    } else if obs.logstore == Probe::NotRunning {
        // No pod problem names why (a pod being created, deleted, or waiting for its
        // volume): not degraded yet, but nothing is delivered.
        verdict(
            false,
            "LogStoreNotRunning",
            "no pod of the managed LogStore is running, so nothing is appended or delivered".into(),
        )
    } else if let Some(down) = not_running(obs) {
        verdict(false, "ShardNotRunning", down)
    } else {
        verdict(
            true,
            "Delivering",
            format!(
                "pod {} delivers to {} shards{}",
                leader.unwrap_or("?"),
                obs.shards.len(),
                lag.map(|l| format!("; largest lag {l} entries"))
                    .unwrap_or_default()
            ),
        )
    }
}

/// Which managed shards have no running pod, if any.
fn not_running(obs: &Observed) -> Option<String> {
    let down: Vec<&str> = obs
        .shards
        .iter()
        .filter(|s| s.probe == Probe::NotRunning)
        .map(|s| s.name.as_str())
        .collect();
    (!down.is_empty()).then(|| {
        format!(
            "{} of {} shards have no running pod ({}): nothing is delivered to them",
            down.len(),
            obs.shards.len(),
            down.join(", ")
        )
    })
}

/// The LogPlayer status for what was observed; `old` supplies transition times.
pub fn logplayer_status(obs: &Observed, old: &LogPlayerStatus, now: Time) -> LogPlayerStatus {
    let g = obs.generation;
    let mut c = Conditions {
        generation: g,
        now: &now,
        old: &old.conditions,
        out: Vec::new(),
    };
    let (shards, lag) = progress(obs);
    let (leader, epoch, elected) = leader_elected(obs);
    c.set(condition::LEADER_ELECTED, elected);
    let mut problems = problems(obs);
    // Certificates not looked at (paused, being deleted, an invalid spec): what was last
    // found of them stands. Dropped, a CA about to expire vanished from `Degraded` at a
    // pause, with a `Recovered` Event, and `Ready` could turn True.
    let unchecked = (obs.certificates == CertState::NotChecked)
        .then(|| {
            old.conditions
                .iter()
                .find(|c| c.type_ == condition::CERTIFICATES_READY)
        })
        .flatten();
    if let Some(last) = unchecked.filter(|c| c.status == "False" && c.reason != "Insecure") {
        problems.push(Problem::new(last.reason.clone(), last.message.clone()));
    }
    put(
        &mut c.out,
        &old.conditions,
        degraded_condition(&problems, g, &now),
    );
    c.set(condition::PROGRESSING, progressing(obs));
    if let Some(v) = certificates_ready(obs) {
        c.set(condition::CERTIFICATES_READY, v);
    } else if let Some(last) = unchecked {
        c.out.push(last.clone());
    }
    c.set(
        condition::READY,
        ready(obs, &problems, leader.as_deref(), lag),
    );
    if obs.paused {
        let message = format!(
            "annotation {}=true: the operator changes nothing and only reports status",
            crate::operator::PAUSE_ANNOTATION
        );
        c.set(
            RECONCILIATION_PAUSED,
            verdict(true, "PauseAnnotation", message),
        );
    }
    LogPlayerStatus {
        observed_generation: Some(g),
        conditions: c.out,
        leader,
        epoch,
        ready_replicas: obs.ready_replicas,
        replicas: obs.replicas,
        shards,
        lag,
        problems: problems
            .into_iter()
            .map(|p| StatusProblem {
                reason: p.reason,
                message: p.message,
            })
            .collect(),
        log_store: obs
            .log_members
            .as_ref()
            .map(|seen| log_store_status(seen, old.log_store.as_ref())),
    }
}

/// The LogPlayer status after a reconciliation that failed (see [`super::failed_conditions`]):
/// what was last observed, with `Ready`/`Degraded` naming the failure, it as the one
/// problem, and lag unknown (it can no longer be told). `observedGeneration` is the
/// generation that failed: a client waiting for it to catch up (`kubectl wait`, kstatus)
/// then reads the failure instead of waiting for a status that never comes.
pub fn failed_logplayer_status(
    old: &LogPlayerStatus,
    generation: i64,
    why: &str,
    now: Time,
) -> LogPlayerStatus {
    let conditions = super::failed_conditions(&old.conditions, generation, why, &now);
    let problem = conditions
        .iter()
        .find(|c| c.type_ == condition::DEGRADED)
        .map(|c| StatusProblem {
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
    LogPlayerStatus {
        observed_generation: Some(generation),
        conditions,
        problems: problem.into_iter().collect(),
        lag: None,
        shards: old
            .shards
            .iter()
            .map(|s| ShardProgress {
                lag: None,
                ..s.clone()
            })
            .collect(),
        ..old.clone()
    }
}
