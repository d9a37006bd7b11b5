//! A Shard's status: `Ready` and `Degraded` from its spec, its LogPlayer and the probe of
//! its server; never the leading player's cursor fields.

use super::{Probe, Problem, cond, degraded_condition, put};
use crate::crd::{ShardStatus, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
    /// Objects of the shard server the API server refused to apply (`ApplyFailed`).
    pub apply_problems: Vec<Problem>,
    /// Pods of the managed shard server that cannot run (`PodsPending`, ...).
    pub pod_problems: Vec<Problem>,
    /// Whether the LogPlayer named in `spec.logPlayer` exists.
    pub log_player_found: bool,
    /// It exists, but its `shardSelector` does not select this Shard (`NotSelected`).
    pub not_selected: Option<Problem>,
    /// The shard's lag as its LogPlayer last reported it.
    pub lag: Option<i64>,
}

/// The operator's part of a Shard's status (never `ackedIndex`/`ackedEpoch`).
pub fn shard_status(obs: &ShardObservation, old: &ShardStatus, now: Time) -> ShardStatus {
    let g = obs.generation;
    let mut problems = Vec::new();
    problems.extend(obs.spec_problem.clone());
    problems.extend(obs.apply_problems.iter().cloned());
    problems.extend(obs.pod_problems.iter().cloned());
    if !obs.log_player_found {
        problems.push(Problem::new(
            "LogPlayerNotFound",
            "the LogPlayer named in spec.logPlayer does not exist in this namespace, so \
             nothing is delivered to this shard",
        ));
    }
    problems.extend(obs.not_selected.clone());
    // What keeps the shard from doing its job whatever the server says (the first of these
    // decides `Ready`): a shard nobody delivers to is not ready.
    let blocking = problems.first().cloned();
    if let Probe::Unreachable(why) = &obs.probe {
        problems.push(Problem::new("ShardUnreachable", why.clone()));
    }
    let mut conditions = Vec::new();
    let ready = match (&obs.probe, &blocking) {
        (_, Some(p)) => cond(
            condition::READY,
            false,
            &p.reason,
            p.message.clone(),
            g,
            &now,
        ),
        (Probe::NotRunning, None) => cond(
            condition::READY,
            false,
            "Starting",
            "no pod of the shard server is running yet".into(),
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
    // `status.ready` (the READY column) says what the condition says.
    let is_ready = ready.status == "True";
    put(&mut conditions, &old.conditions, ready);
    let degraded = degraded_condition(&problems, g, &now);
    put(&mut conditions, &old.conditions, degraded);
    ShardStatus {
        observed_generation: Some(g),
        conditions,
        acked_index: None,
        acked_epoch: None,
        acked_log_id: None,
        covered_index: None,
        lag: obs.lag,
        endpoint: obs.endpoint.clone(),
        ready: Some(is_ready),
    }
}

/// `status` without the fields the leading player owns (its cursor): what the operator
/// writes and compares.
pub fn operators_part(status: &ShardStatus) -> ShardStatus {
    ShardStatus {
        acked_index: None,
        acked_epoch: None,
        acked_log_id: None,
        covered_index: None,
        ..status.clone()
    }
}

/// The operator's part of a Shard's status after a reconciliation that failed (see
/// [`super::failed_conditions`]): not ready, degraded, naming the failure, for the
/// generation that failed.
pub fn failed_shard_status(
    old: &ShardStatus,
    generation: i64,
    why: &str,
    now: Time,
) -> ShardStatus {
    ShardStatus {
        observed_generation: Some(generation),
        conditions: super::failed_conditions(&old.conditions, generation, why, &now),
        ready: Some(false),
        ..operators_part(old)
    }
}
