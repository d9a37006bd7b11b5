//! A Shard's status: `Ready` and `Degraded` from its spec, its LogPlayer and the probe of
//! its server; never the leading player's cursor fields.

use super::{Probe, Problem, cond, degraded_condition, put};
use crate::crd::{ShardStatus, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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
    /// The entry limits of the shard server and of its LogPlayer's LogStore, as each
    /// reported it (`None`: not asked, no answer, or a version that does not say).
    pub entry_limits: (Option<u64>, Option<u64>),
    /// The shard server's last refusal of a sender, as it said it (`DeliveryRefused`; see
    /// [`delivery_refused`]).
    pub refused: Option<Problem>,
    /// Why nothing of the shard's server is applied, if so: its LogPlayer is paused, or gone
    /// (the server it runs is kept as it is). `ReconciliationPaused` says it; the status
    /// said `Starting` for a server whose pods nothing would make again, and took a spec
    /// change as observed though nothing applied it.
    pub paused: Option<ShardPaused>,
}

/// See [`ShardObservation::paused`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardPaused {
    /// Its LogPlayer carries the pause annotation.
    LogPlayerPaused,
    /// Its LogPlayer is gone; the server it ran is kept.
    LogPlayerGone,
}

impl ShardPaused {
    fn reason(&self) -> &'static str {
        match self {
            ShardPaused::LogPlayerPaused => "LogPlayerPaused",
            ShardPaused::LogPlayerGone => "LogPlayerGone",
        }
    }

    fn message(&self) -> String {
        match self {
            ShardPaused::LogPlayerPaused => format!(
                "its LogPlayer carries {}=true: the operator changes nothing of this shard's \
                 server (spec changes wait) and only reports status",
                crate::operator::PAUSE_ANNOTATION
            ),
            ShardPaused::LogPlayerGone => {
                "its LogPlayer does not exist: the shard server it ran is \
                 kept as it is (spec changes wait for a LogPlayer)"
                    .into()
            }
        }
    }
}

/// A shard that answers its probe but refuses its players' deliveries (the reason and
/// message of its last refusal, as `Applied` says them; empty: none) is not Ready: nothing
/// reaches it. Without this, such a shard read `Serving`.
pub fn delivery_refused(reason: &str, message: &str) -> Option<Problem> {
    (!reason.is_empty()).then(|| {
        Problem::new(
            "DeliveryRefused",
            format!(
                "the shard server refuses its players' deliveries ({reason}): {message}; \
                 nothing more is applied until the players' configuration or the shard's \
                 is fixed (see the shard server's log)"
            ),
        )
    })
}

/// A shard that takes smaller entries than its LogStore accepts refuses every delivery
/// (`entry-limit`), however well it answers.
fn entry_limit_problem((shard, log): (Option<u64>, Option<u64>)) -> Option<Problem> {
    let (shard, log) = (shard?, log?);
    (shard < log).then(|| {
        Problem::new(
            "EntryLimitMismatch",
            format!(
                "this shard takes entries of up to {shard} bytes, less than its LogStore's \
                 {log}: it refuses every delivery; raise its --max-entry-bytes to {log} (a \
                 managed shard takes its LogPlayer's spec.maxEntryBytes when its pod is made \
                 again)"
            ),
        )
    })
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
    // A map on its way is waited for, not a problem (as `Starting`): it keeps the Shard from
    // being ready, but does not degrade it.
    let (pending, not_in_map) = match &obs.not_in_map {
        Some(p) if p.reason == MAP_PENDING => (Some(p.clone()), None),
        other => (None, other.clone()),
    };
    problems.extend(not_in_map);
    problems.extend(entry_limit_problem(obs.entry_limits));
    problems.extend(obs.refused.clone());
    // What keeps the shard from doing its job whatever the server says (the first of these
    // decides `Ready`): a shard nobody delivers to is not ready.
    let blocking = problems.first().cloned().or(pending);
    if let Probe::Unreachable(why) = &obs.probe {
        problems.push(Problem::new("ShardUnreachable", why.clone()));
    }
    let mut conditions = Vec::new();
    let ready = shard_ready(obs, blocking.as_ref(), &now);
    // `status.ready` (the READY column) says what the condition says.
    let is_ready = ready.status == "True";
    put(&mut conditions, &old.conditions, ready);
    let degraded = degraded_condition(&problems, g, &now);
    put(&mut conditions, &old.conditions, degraded);
    if let Some(p) = &obs.paused {
        let paused = cond(
            super::RECONCILIATION_PAUSED,
            true,
            p.reason(),
            p.message(),
            g,
            &now,
        );
        put(&mut conditions, &old.conditions, paused);
    }
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

/// A Shard's `Ready`: the first problem `blocking` it, else what its probe found.
fn shard_ready(obs: &ShardObservation, blocking: Option<&Problem>, now: &Time) -> Condition {
    let g = obs.generation;
    match (&obs.probe, blocking) {
        (_, Some(p)) => cond(
            condition::READY,
            false,
            &p.reason,
            p.message.clone(),
            g,
            now,
        ),
        (Probe::NotRunning, None) => match &obs.paused {
            Some(p) => cond(
                condition::READY,
                false,
                p.reason(),
                format!(
                    "no pod of the shard server is running, and none is made while {}",
                    p.message()
                ),
                g,
                now,
            ),
            None => cond(
                condition::READY,
                false,
                "Starting",
                "no pod of the shard server is running yet".into(),
                g,
                now,
            ),
        },
        (Probe::Reachable, None) => cond(
            condition::READY,
            true,
            "Serving",
            format!(
                "the shard server at {} answers",
                obs.endpoint.as_deref().unwrap_or("?")
            ),
            g,
            now,
        ),
        (Probe::Unreachable(why), None) => cond(
            condition::READY,
            false,
            "ShardUnreachable",
            why.clone(),
            g,
            now,
        ),
        (Probe::Unknown, None) => cond(
            condition::READY,
            false,
            "NotProbed",
            "the shard server has not been asked yet".into(),
            g,
            now,
        ),
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

/// The reason of a Shard whose players' shard map does not have it as its spec says yet
/// (a map on its way, or a paused LogPlayer): waited for, not a problem.
pub const MAP_PENDING: &str = "ShardMapPending";

/// How the players' shard map (the ConfigMap `<lp>-shard-map`) differs from what a Shard's
/// spec says; see [`map_difference`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapDifference {
    /// The ConfigMap does not exist (or holds no map).
    NotWritten,
    /// Its text does not parse.
    Unreadable(String),
    /// It does not list the Shard.
    NotListed,
    /// It lists the Shard at another address or with other slots.
    Elsewhere { addr: String, slots: Vec<String> },
}

/// How the map `text` (`None`: no map) differs from shard `id` at `addr` with `slots`;
/// `None` when it has the Shard as its spec says.
pub fn map_difference(
    text: Option<&str>,
    id: &str,
    addr: &str,
    slots: &[String],
) -> Option<MapDifference> {
    let Some(text) = text else {
        return Some(MapDifference::NotWritten);
    };
    let file: crate::routing::MapFile = match serde_yaml::from_str(text) {
        Ok(f) => f,
        Err(e) => return Some(MapDifference::Unreadable(e.to_string())),
    };
    match file.shards.iter().find(|e| e.id == id) {
        None => Some(MapDifference::NotListed),
        Some(e) if e.addr != addr || e.slots != slots => Some(MapDifference::Elsewhere {
            addr: e.addr.clone(),
            slots: e.slots.clone(),
        }),
        Some(_) => None,
    }
}

/// Whether a LogPlayer writes the players' shard map its Shards make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapVerdict {
    /// It does not: its spec or the Shards it selects are refused (why).
    Refused(String),
    /// It will, or would (what it waits for: its next reconciliation, a pause lifted).
    Waiting(String),
}

/// What a Shard's status says about `diff`, the difference between the players' shard map
/// (ConfigMap `map` of LogPlayer `lp`) and the Shard's spec (`addr`, `slots`). A map the
/// LogPlayer would write is on its way: `ShardMapPending`, not a problem. A refused one
/// keeps the players on the last valid map, which does not deliver to this Shard as its
/// spec says, however well its server answers: `NotInShardMap` or `ShardMapStale`.
pub fn map_problem(
    map: &str,
    lp: &str,
    diff: &MapDifference,
    verdict: &MapVerdict,
    addr: &str,
    slots: &[String],
) -> Problem {
    let refused = match verdict {
        MapVerdict::Refused(why) => why,
        MapVerdict::Waiting(what) => {
            return Problem::new(
                MAP_PENDING,
                format!(
                    "the players' shard map (ConfigMap {map}) does not have this Shard as its \
                     spec says yet, so nothing is delivered to it as it says: {what}"
                ),
            );
        }
    };
    let why = format!(
        "LogPlayer {lp} keeps its players on the last valid map while it refuses its spec or \
         the Shards it selects ({refused})"
    );
    match diff {
        MapDifference::Elsewhere {
            addr: theirs,
            slots: their_slots,
        } => Problem::new(
            "ShardMapStale",
            format!(
                "the players deliver to this shard at {theirs} for slots [{}] (ConfigMap \
                 {map}), not at {addr} for slots [{}] as its spec says: {why}",
                their_slots.join(","),
                slots.join(",")
            ),
        ),
        MapDifference::Unreadable(e) => Problem::new(
            "NotInShardMap",
            format!("the players' shard map (ConfigMap {map}) cannot be read ({e}): {why}"),
        ),
        MapDifference::NotWritten | MapDifference::NotListed => Problem::new(
            "NotInShardMap",
            format!(
                "the players' shard map (ConfigMap {map}) does not list this Shard, so \
                 nothing is delivered to it: {why}"
            ),
        ),
    }
}
