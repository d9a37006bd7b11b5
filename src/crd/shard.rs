//! The `Shard` resource: the LogPlayer it belongs to, its slot ranges and its backend, with
//! its status (the operator's conditions and the leading player's `ackedIndex`).

use std::time::Duration;

use super::{
    Backend, CrdError, DNS_1035_LABEL_PATTERN, DURATION_MAX_LENGTH, DURATION_PATTERN,
    ExternalEndpoint, ManagedStorage, SlotRange, backend, parse_duration, validate_ranges,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A storage shard: owns some hash slots and applies the log entries for them.
// Several printer columns share `type_ = "integer"`, which clippy's duplicated_attributes
// mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "logplayer.io",
    version = "v1alpha1",
    kind = "Shard",
    namespaced,
    validation = Rule::new("(oldSelf.hasValue() && (has(oldSelf.value().spec.managed) || !has(self.spec.managed))) || (has(self.spec.managed) ? self.metadata.name.size() <= 46 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') : self.metadata.name.size() <= 63)")
        .optional_old_self(true)
        .message("a Shard's name is at most 46 characters when managed, and starts with a letter with no dot (its pods carry the label NAME-shard-HASH, at most 63, and its Service is NAME-shard); at most 63 when external (it is a label value)"),
    doc = "A Shard owns ranges of the 16384 hash slots and applies, in log order, the entries \
           of its LogPlayer's log that touch them.",
    status = "ShardStatus",
    derive = "PartialEq",
    selectable = ".spec.logPlayer",
    printcolumn(
        name = "LogPlayer",
        type_ = "string",
        json_path = ".spec.logPlayer",
        description = "LogPlayer that delivers to this shard"
    ),
    printcolumn(
        name = "Acked",
        type_ = "integer",
        json_path = ".status.ackedIndex",
        description = "Highest log index the shard has acknowledged"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Log entries not yet acknowledged"
    ),
    printcolumn(
        name = "Ready",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "Whether the shard server is serving"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.external) != has(self.managed)")
        .message("set exactly one of external or managed"),
    validation = Rule::new("!has(self.commitDelay) || has(self.managed)")
        .message("commitDelay applies to a managed shard only (an external shard server takes --commit-delay)"),
    validation = Rule::new("!has(self.managed) || !has(oldSelf.managed) || (self.managed.storage == oldSelf.managed.storage && has(self.managed.storageClassName) == has(oldSelf.managed.storageClassName) && (!has(self.managed.storageClassName) || self.managed.storageClassName == oldSelf.managed.storageClassName))")
        .message("managed.storage and storageClassName cannot change: the shard server's volume claim is fixed (Kubernetes refuses the StatefulSet's update, which would hold every later change back)")
)]
pub struct ShardSpec {
    /// Name of the LogPlayer (in this namespace) that delivers to this shard. Cannot change.
    #[schemars(length(min = 1, max = 48), pattern(DNS_1035_LABEL_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("logPlayer cannot change"))]
    pub log_player: String,
    /// Inclusive hash-slot ranges this shard owns, in ascending order and not overlapping
    /// (1 to 64 ranges). Across the Shards of one LogPlayer, every slot 0-16383 must be owned
    /// exactly once. They can only shrink (ranges may be split or merged): the state of a
    /// slot's keys stays on the shard that applied them, so a slot moved to another existing
    /// shard would leave its history behind (that shard would apply only what comes next).
    /// Give freed slots to a new Shard, which is delivered the log from its start (see
    /// `retainLog`); to undo a shrink, delete the Shard (and a managed one's volume claim)
    /// and make it again. The shard server refuses, on its own data, a map that gives it
    /// more slots once it has applied entries.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.map(r, r.start).isSorted()")
            .message("slot ranges must be listed in ascending order of start"),
        validation = Rule::new("self.all(a, a.start > a.end || self.exists_one(b, b.start <= a.end && a.start <= b.end))")
            .message("slot ranges must not overlap"),
        validation = Rule::new("self.all(r, oldSelf.filter(o, o.start <= r.end && r.start <= o.end).map(o, (o.end < r.end ? o.end : r.end) - (o.start > r.start ? o.start : r.start) + 1).sum() == r.end - r.start + 1)")
            .message("slots can only shrink: a slot a Shard gains was applied by another shard, whose state does not move; give freed slots to a new Shard (it is delivered the log from its start)")
    )]
    pub slots: Vec<SlotRange>,
    /// Connect to a shard server someone else runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,
    /// Have the operator run the shard server as a StatefulSet with a persistent volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedStorage>,
    /// How long a managed shard server's commit may wait for more batches on a busy stream
    /// (`logplayer shard --commit-delay`): a duration such as `2ms`, at most `100ms`; `0s`
    /// commits whatever has arrived. Longer means fewer, fuller commits (fewer bytes written
    /// to disk) for up to this much more delay. Unset uses the server's default, `2ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('100ms')")
        .message("commitDelay must be at most 100ms"))]
    pub commit_delay: Option<String>,
}

impl ShardSpec {
    /// Checks the slot ranges (see [`validate_ranges`]).
    pub fn validate_slots(&self) -> Result<(), CrdError> {
        Ok(validate_ranges(&self.slots)?)
    }

    /// The commit delay the spec sets, checked: parsed, and no longer than a shard server
    /// allows ([`crate::shard::gather::MAX_COMMIT_DELAY`], which the CRD's rule repeats).
    pub fn commit_delay(&self) -> Result<Option<Duration>, CrdError> {
        const FIELD: &str = "spec.commitDelay";
        let Some(text) = &self.commit_delay else {
            return Ok(None);
        };
        let value = parse_duration(FIELD, text)?;
        let max = crate::shard::gather::MAX_COMMIT_DELAY;
        if value > max {
            return Err(CrdError::DurationAbove {
                field: FIELD,
                value,
                max,
            });
        }
        Ok(Some(value))
    }

    /// The one backend this shard names.
    pub fn backend(&self) -> Result<Backend<'_>, CrdError> {
        backend("Shard spec", self.external.as_ref(), self.managed.as_ref())
    }
}

/// Observed state of a Shard, written by the operator and the leading player.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The leader's ack cursor: highest log index this shard has durably applied and
    /// acknowledged, as last checkpointed. A new leader starts from here (then asks the shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_index: Option<i64>,
    /// Epoch of the leader that checkpointed `ackedIndex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_epoch: Option<i64>,
    /// The log `ackedIndex` counts in (its log id): a cursor of another log (the LogStore
    /// was replaced) never bounds this log's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_log_id: Option<String>,
    /// Log index through which every entry for this shard is acknowledged, counting the
    /// entries that do not touch it (at least `ackedIndex`); lag is measured from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_index: Option<i64>,
    /// Log entries not yet delivered to this shard (the last log index minus
    /// `coveredIndex`), as the operator last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// gRPC address the player uses for this shard (the external endpoint, or the managed
    /// server's Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether the Shard is ready, as its `Ready` condition says: its server answers and
    /// nothing keeps it from being delivered to (a missing LogPlayer, a refused apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}
