//! A LogPlayer's status: its problems in order of what to fix first, and the conditions
//! `LeaderElected`, `Degraded`, `Progressing`, `Ready` and `ReconciliationPaused`.

use super::{Observed, Probe, Problem, RECONCILIATION_PAUSED, cond, degraded_condition, put};
use crate::crd::{LogPlayerStatus, ShardProgress, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
                    crate::operator::PAUSE_ANNOTATION
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
