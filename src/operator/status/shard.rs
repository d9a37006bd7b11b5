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
    /// It selects this Shard, but the players' shard map does not have it as its spec
    /// says (`NotInShardMap`, `ShardMapStale`; see [`map_problem`]).
    pub not_in_map: Option<Problem>,
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
    // A map not written yet is waited for, not a problem (as `Starting`): it keeps the
    // Shard from being ready, but does not degrade it.
    let (pending, not_in_map) = match &obs.not_in_map {
        Some(p) if p.reason == MAP_PENDING => (Some(p.clone()), None),
        other => (None, other.clone()),
    };
    problems.extend(not_in_map);
    // What keeps the shard from doing its job whatever the server says (the first of these
    // decides `Ready`): a shard nobody delivers to is not ready.
    let blocking = problems.first().cloned().or(pending);
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

/// The reason of a Shard whose players' shard map is not written yet.
pub const MAP_PENDING: &str = "ShardMapPending";

/// Whether the players deliver to a Shard as its spec says: the players' shard map (the
/// ConfigMap `map`, whose text is `text`, `None` when it does not exist) must list shard
/// `id` at `addr` with `slots`. When the selected Shards' map is refused (slots that
/// overlap or leave a hole, two Shards at one address), LogPlayer `lp` keeps its players on
/// the last valid map, and a Shard added or changed since is not delivered to as its spec
/// says, however well its server answers.
pub fn map_problem(
    map: &str,
    lp: &str,
    text: Option<&str>,
    id: &str,
    addr: &str,
    slots: &[String],
) -> Option<Problem> {
    let Some(text) = text else {
        return Some(Problem::new(
            MAP_PENDING,
            format!(
                "the players' shard map (ConfigMap {map}) is not written yet, so nothing is \
                 delivered to this shard: LogPlayer {lp} writes it once the Shards it selects \
                 make a valid map, unless it is paused"
            ),
        ));
    };
    let why = format!(
        "LogPlayer {lp} keeps its players on the last valid map while the map of the Shards \
         it selects is refused (see its Degraded condition)"
    );
    let file: crate::routing::MapFile = match serde_yaml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return Some(Problem::new(
                "NotInShardMap",
                format!("the players' shard map (ConfigMap {map}) cannot be read ({e})"),
            ));
        }
    };
    match file.shards.iter().find(|e| e.id == id) {
        None => Some(Problem::new(
            "NotInShardMap",
            format!(
                "the players' shard map (ConfigMap {map}) does not list this Shard, so \
                 nothing is delivered to it: {why}"
            ),
        )),
        Some(e) if e.addr != addr || e.slots != slots => Some(Problem::new(
            "ShardMapStale",
            format!(
                "the players deliver to this shard at {} for slots [{}] (ConfigMap {map}), \
                 not at {addr} for slots [{}] as its spec says: {why}",
                e.addr,
                e.slots.join(","),
                slots.join(",")
            ),
        )),
        Some(_) => None,
    }
}
