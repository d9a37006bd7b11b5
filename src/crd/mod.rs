//! The `logplayer.io/v1alpha1` custom resources, `LogPlayer` and `Shard`, as Rust types.
//!
//! This module owns the API: the spec and status types, their defaults, the server-side
//! validation the generated CRDs carry (schema bounds, patterns and CEL rules in
//! `x-kubernetes-validations`), printer columns, the CRD YAML that is committed under
//! `crds/`, and the client-side checks the operator runs before acting on a spec
//! ([`ShardSpec::validate_slots`], [`check_coverage`], [`LeaseSettings::timing`],
//! [`LogSource::backend`]). It talks to no API server and must not: reconciling lives
//! elsewhere.
//!
//! The CEL rules catch a bad object at admission; the Rust checks say the same things with
//! the offending names and numbers, and also cover what one object cannot see, such as two
//! Shards claiming the same slot.
//!
//! Serialization: every optional field is left out when unset, so status is best written
//! with server-side apply (a field the operator stops sending is removed).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource here.
pub const GROUP: &str = "logplayer.io";
/// API version of every resource here.
pub const VERSION: &str = "v1alpha1";

/// Number of hash slots (the same as `routing::SLOTS`).
pub const SLOT_COUNT: i32 = 16384;
/// Highest slot number.
pub const MAX_SLOT: i32 = SLOT_COUNT - 1;
/// Most slot ranges one Shard may list. The bound keeps the API server's CEL cost estimate
/// for the pairwise overlap rule (quadratic in the list length) far below its limit.
pub const MAX_SLOT_RANGES: usize = 64;

/// Condition types the operator writes into `status.conditions`.
pub mod condition {
    /// The resource does what its spec asks.
    pub const READY: &str = "Ready";
    /// The operator is changing something to match the spec.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that the operator cannot fix by itself.
    pub const DEGRADED: &str = "Degraded";
    /// A player replica holds the lease (LogPlayer only).
    pub const LEADER_ELECTED: &str = "LeaderElected";
}

/// Durations are written like `2s`, `1500ms` or `1m30s`: one or more integer-unit pairs with
/// units `ns`, `us`, `ms`, `s`, `m`, `h`. Both humantime (the player) and CEL's `duration()`
/// (the API server) read this form the same way.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";
/// A storage size in Kubernetes quantity form, e.g. `10Gi` or `500M`.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// Longest duration or quantity string (also bounds CEL cost).
const SHORT_STRING_MAX: u32 = 32;

/// Header written at the top of every generated CRD file.
pub const GENERATED_HEADER: &str =
    "# Generated from the Rust types in src/crd.rs (crd::write_crds); do not edit by hand.\n";

/// Errors from checking a spec or writing the CRDs; each names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// One Shard's slot ranges are malformed.
    #[error("invalid slot ranges: {0}")]
    Slots(#[from] SlotError),
    /// A set of Shards does not own every slot exactly once.
    #[error("{}", CoverageReport(.0))]
    Coverage(Vec<CoverageIssue>),
    /// A spec names both or neither of `external` and `managed`.
    #[error("{what} must set exactly one of `external` or `managed`, but sets {found}")]
    Backend {
        /// Which part of which resource, e.g. `LogPlayer spec.logStore`.
        what: &'static str,
        /// `both` or `neither`.
        found: &'static str,
    },
    /// A duration field does not parse.
    #[error("{field} = {value:?} is not a duration like 2s, 1500ms or 1m30s: {source}")]
    Duration {
        /// Field path, e.g. `spec.lease.leaseDuration`.
        field: &'static str,
        /// The text as written.
        value: String,
        /// Why it did not parse.
        source: humantime::DurationError,
    },
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Field path.
        field: &'static str,
    },
    /// The lease durations are out of order.
    #[error(
        "lease timing needs 0 < retryPeriod < renewDeadline < leaseDuration, got retryPeriod \
         {retry_period:?}, renewDeadline {renew_deadline:?}, leaseDuration {lease_duration:?}"
    )]
    LeaseTiming {
        /// `spec.lease.retryPeriod`.
        retry_period: Duration,
        /// `spec.lease.renewDeadline`.
        renew_deadline: Duration,
        /// `spec.lease.leaseDuration`.
        lease_duration: Duration,
    },
    /// A generated CRD has no name (a bug in the derive).
    #[error("generated CRD for kind {kind} has no metadata.name")]
    UnnamedCrd {
        /// The CRD's kind.
        kind: String,
    },
    /// A CRD would not serialize.
    #[error("serializing CRD {name} to YAML: {source}")]
    Yaml {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_yaml::Error,
    },
    /// A CRD file could not be written.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A problem with the slot ranges of one Shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// No ranges at all.
    #[error("the shard lists no slot ranges; it needs at least one")]
    Empty,
    /// More ranges than [`MAX_SLOT_RANGES`].
    #[error("the shard lists {count} slot ranges, more than the {max} allowed")]
    TooMany {
        /// Ranges listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A range reaches outside `0..=16383`.
    #[error("slot range {range} is out of bounds: slots go from 0 to {MAX_SLOT}")]
    OutOfBounds {
        /// The range.
        range: SlotRange,
    },
    /// A range starts after it ends.
    #[error("slot range {range} starts after it ends")]
    Reversed {
        /// The range.
        range: SlotRange,
    },
    /// A range is listed after one that starts later.
    #[error("slot range {next} is listed after {prev}: list ranges in ascending order")]
    Unordered {
        /// The earlier entry.
        prev: SlotRange,
        /// The later entry, which starts first.
        next: SlotRange,
    },
    /// Two ranges of the same shard share slots.
    #[error("slot ranges {a} and {b} overlap on slots {from}-{to}")]
    Overlap {
        /// The earlier entry.
        a: SlotRange,
        /// The later entry.
        b: SlotRange,
        /// First shared slot.
        from: i32,
        /// Last shared slot.
        to: i32,
    },
}

/// One way a set of Shards fails to own every slot exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageIssue {
    /// There are no shards at all.
    #[error("no shards: all slots 0-{MAX_SLOT} are owned by no shard")]
    NoShards,
    /// Two entries have the same name.
    #[error("shard {shard:?} appears more than once")]
    DuplicateShard {
        /// The repeated name.
        shard: String,
    },
    /// One shard's own ranges are malformed.
    #[error("shard {shard:?}: {error}")]
    InvalidShard {
        /// The shard.
        shard: String,
        /// What is wrong with its ranges.
        error: SlotError,
    },
    /// Slots owned by two shards.
    #[error("slots {from}-{to} are owned by both shard {a:?} and shard {b:?}")]
    Overlap {
        /// First slot.
        from: i32,
        /// Last slot.
        to: i32,
        /// The shard listed first.
        a: String,
        /// The shard listed later.
        b: String,
    },
    /// Slots owned by no shard.
    #[error("slots {from}-{to} are owned by no shard")]
    Hole {
        /// First slot.
        from: i32,
        /// Last slot.
        to: i32,
    },
}

/// Most coverage issues spelled out in one error message.
const COVERAGE_ISSUES_SHOWN: usize = 10;

/// Display of a coverage issue list, bounded to [`COVERAGE_ISSUES_SHOWN`] entries.
struct CoverageReport<'a>(&'a [CoverageIssue]);

impl fmt::Display for CoverageReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shards do not own every slot exactly once: ")?;
        for (i, issue) in self.0.iter().take(COVERAGE_ISSUES_SHOWN).enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{issue}")?;
        }
        if self.0.len() > COVERAGE_ISSUES_SHOWN {
            write!(f, "; and {} more", self.0.len() - COVERAGE_ISSUES_SHOWN)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// When the kubelet pulls the player image. Unset leaves Kubernetes' default (`Always` for a
/// `:latest` tag, else `IfNotPresent`).
// (This text, not the field's, is what the CRD shows: kube inlines an optional enum's schema.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

/// A server LogPlayer does not run: it only connects to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEndpoint {
    /// gRPC address of the server, `host:port` or `http://host:port`
    /// (for example `logstore.logs.svc:7000`).
    #[schemars(length(min = 1, max = 512), pattern(r"^\S+$"))]
    pub endpoint: String,
}

/// A server the operator runs: a StatefulSet with one persistent volume per pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedStorage {
    /// Size of the persistent volume, as a Kubernetes quantity (for example `10Gi`).
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(QUANTITY_PATTERN))]
    pub storage: String,
    /// StorageClass of the persistent volume; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// CPU and memory for the server's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Where a server is: exactly one of `external` or `managed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend<'a> {
    /// Connect to a server someone else runs.
    External(&'a ExternalEndpoint),
    /// Run the server as a StatefulSet.
    Managed(&'a ManagedStorage),
}

fn backend<'a>(
    what: &'static str,
    external: Option<&'a ExternalEndpoint>,
    managed: Option<&'a ManagedStorage>,
) -> Result<Backend<'a>, CrdError> {
    match (external, managed) {
        (Some(e), None) => Ok(Backend::External(e)),
        (None, Some(m)) => Ok(Backend::Managed(m)),
        (Some(_), Some(_)) => Err(CrdError::Backend {
            what,
            found: "both",
        }),
        (None, None) => Err(CrdError::Backend {
            what,
            found: "neither",
        }),
    }
}

fn parse_duration(field: &'static str, value: &str) -> Result<Duration, CrdError> {
    humantime::parse_duration(value).map_err(|source| CrdError::Duration {
        field,
        value: value.to_owned(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// LogPlayer
// ---------------------------------------------------------------------------------------------

/// Delivers the entries of one LogStore to the Shards it selects, exactly once and in order.
/// The operator runs `replicas` player pods; one leads (holds the Lease), the others stand by.
// Several printer columns share `type_ = "integer"`, which clippy's duplicated_attributes
// mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "logplayer.io",
    version = "v1alpha1",
    kind = "LogPlayer",
    namespaced,
    shortname = "lp",
    doc = "A LogPlayer delivers the entries of one LogStore (a write-ahead log) to the Shards it \
           selects, exactly once and in order, with one leading replica and hot standbys.",
    status = "LogPlayerStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "Pod that holds the lease"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.epoch",
        description = "Fencing epoch of the current leader"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Player pods that are ready"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Largest lag of any shard, in log entries"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LogPlayerSpec {
    /// Number of player pods (one leader, the rest hot standbys). At least 1; 3 by default.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Container image of the player; unset uses the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the player pods; unset leaves Kubernetes' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory for each player container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Timing of the leader lease the replicas contend for.
    #[serde(default)]
    pub lease: LeaseSettings,
    /// How often the leader saves each shard's acknowledged index into the Shard's status
    /// (a duration such as `1s`). Default `1s`.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("checkpointInterval must be greater than zero"))]
    pub checkpoint_interval: String,
    /// After each checkpoint, let the LogStore delete log segments that every shard has
    /// acknowledged. A shard added later can then only start from what is left. Default false.
    #[serde(default)]
    pub retain_log: bool,
    /// Batching and flow control toward each shard.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// Which Shard resources in this namespace this LogPlayer drives (a selected Shard must
    /// also name this LogPlayer in `spec.logPlayer`). Empty selects every such Shard.
    #[serde(default)]
    pub shard_selector: LabelSelector,
    /// The log to deliver: an external LogStore, or one the operator runs.
    pub log_store: LogSource,
    /// Port of the player's Prometheus `/metrics`, `/healthz` and `/readyz`. Default 9090.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics_port: i32,
}

fn default_replicas() -> i32 {
    3
}
fn default_checkpoint_interval() -> String {
    "1s".to_owned()
}
fn default_metrics_port() -> i32 {
    9090
}

impl LogPlayerSpec {
    /// `checkpointInterval` as a positive duration.
    pub fn checkpoint_interval(&self) -> Result<Duration, CrdError> {
        let field = "spec.checkpointInterval";
        let d = parse_duration(field, &self.checkpoint_interval)?;
        if d.is_zero() {
            return Err(CrdError::ZeroDuration { field });
        }
        Ok(d)
    }
}

/// Leader lease timing. The leader stops sending once it could not renew for
/// `renewDeadline`; a standby takes over once the lease is `leaseDuration` old; everyone
/// retries every `retryPeriod`. Needs `0 < retryPeriod < renewDeadline < leaseDuration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.retryPeriod) > duration('0s') && duration(self.retryPeriod) < duration(self.renewDeadline)")
        .message("lease timing needs 0 < retryPeriod < renewDeadline"),
    validation = Rule::new("duration(self.renewDeadline) < duration(self.leaseDuration)")
        .message("lease timing needs renewDeadline < leaseDuration")
)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal; a standby takes over after this. Default `2s`.
    #[serde(default = "default_lease_duration")]
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(DURATION_PATTERN))]
    pub lease_duration: String,
    /// A leader that could not renew for this long stops sending; below `leaseDuration`, the
    /// difference absorbing clock skew and scheduling delay. Default `1500ms`.
    #[serde(default = "default_renew_deadline")]
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(DURATION_PATTERN))]
    pub renew_deadline: String,
    /// How often replicas try to acquire or renew the lease. Default `250ms`.
    #[serde(default = "default_retry_period")]
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(DURATION_PATTERN))]
    pub retry_period: String,
}

fn default_lease_duration() -> String {
    "2s".to_owned()
}
fn default_renew_deadline() -> String {
    "1500ms".to_owned()
}
fn default_retry_period() -> String {
    "250ms".to_owned()
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

/// Lease timing as durations, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// See [`LeaseSettings::lease_duration`].
    pub lease_duration: Duration,
    /// See [`LeaseSettings::renew_deadline`].
    pub renew_deadline: Duration,
    /// See [`LeaseSettings::retry_period`].
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Parses the three durations and checks `0 < retryPeriod < renewDeadline < leaseDuration`.
    pub fn timing(&self) -> Result<LeaseTiming, CrdError> {
        let t = LeaseTiming {
            lease_duration: parse_duration("spec.lease.leaseDuration", &self.lease_duration)?,
            renew_deadline: parse_duration("spec.lease.renewDeadline", &self.renew_deadline)?,
            retry_period: parse_duration("spec.lease.retryPeriod", &self.retry_period)?,
        };
        if t.retry_period.is_zero()
            || t.retry_period >= t.renew_deadline
            || t.renew_deadline >= t.lease_duration
        {
            return Err(CrdError::LeaseTiming {
                retry_period: t.retry_period,
                renew_deadline: t.renew_deadline,
                lease_duration: t.lease_duration,
            });
        }
        Ok(t)
    }
}

/// Batching and flow control toward each shard (the player's `--window`, `--batch-entries`,
/// `--batch-bytes` and `--queue-bytes`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySettings {
    /// Most batches in flight (sent, not yet acknowledged) per shard. 1 to 1024; default 16.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = 1024))]
    pub window: i32,
    /// Most entries in one batch. At least 1; default 512.
    #[serde(default = "default_batch_entries")]
    #[schemars(range(min = 1))]
    pub batch_entries: i32,
    /// Most bytes in one batch (a single larger entry still goes alone). 1 to 8 MiB (half the
    /// 16 MiB gRPC message limit); default 1 MiB (1048576).
    #[serde(default = "default_batch_bytes")]
    #[schemars(range(min = 1, max = 8388608))]
    pub batch_bytes: i64,
    /// Per-shard queue limit in bytes; past it the shard catches up by reading the log
    /// instead. At least 64 KiB (65536); default 8 MiB (8388608).
    #[serde(default = "default_queue_bytes")]
    #[schemars(range(min = 65536))]
    pub queue_bytes: i64,
}

fn default_window() -> i32 {
    16
}
fn default_batch_entries() -> i32 {
    512
}
fn default_batch_bytes() -> i64 {
    1024 * 1024
}
fn default_queue_bytes() -> i64 {
    8 * 1024 * 1024
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            window: default_window(),
            batch_entries: default_batch_entries(),
            batch_bytes: default_batch_bytes(),
            queue_bytes: default_queue_bytes(),
        }
    }
}

/// The LogStore a LogPlayer reads: exactly one of `external` or `managed`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.external) != has(self.managed)")
    .message("set exactly one of external or managed"))]
pub struct LogSource {
    /// Connect to a LogStore someone else runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,
    /// Have the operator run the LogStore as a StatefulSet with a persistent volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedStorage>,
}

impl LogSource {
    /// The one backend this source names.
    pub fn backend(&self) -> Result<Backend<'_>, CrdError> {
        backend(
            "LogPlayer spec.logStore",
            self.external.as_ref(),
            self.managed.as_ref(),
        )
    }
}

/// Observed state of a LogPlayer, written by the operator and the leading player.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogPlayerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `LeaderElected`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Name of the pod that holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Fencing epoch of the current leader; grows with every change of leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Player pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Player pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Delivery progress of each driven shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub shards: Vec<ShardProgress>,
    /// Largest lag of any shard, in log entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// Delivery progress of one shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardProgress {
    /// Name of the Shard resource.
    pub name: String,
    /// Highest log index the shard has durably applied and acknowledged.
    #[serde(default)]
    pub acked_index: i64,
    /// Log entries not yet delivered to this shard: the last log index minus the index
    /// through which the shard has every entry routed to it (`coveredIndex` of the Shard).
    #[serde(default)]
    pub lag: i64,
}

// ---------------------------------------------------------------------------------------------
// Shard
// ---------------------------------------------------------------------------------------------

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
#[x_kube(validation = Rule::new("has(self.external) != has(self.managed)")
    .message("set exactly one of external or managed"))]
pub struct ShardSpec {
    /// Name of the LogPlayer (in this namespace) that delivers to this shard. Cannot change.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("logPlayer cannot change"))]
    pub log_player: String,
    /// Inclusive hash-slot ranges this shard owns, in ascending order and not overlapping
    /// (1 to 64 ranges). Across the Shards of one LogPlayer, every slot 0-16383 must be owned
    /// exactly once.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.map(r, r.start).isSorted()")
            .message("slot ranges must be listed in ascending order of start"),
        validation = Rule::new("self.all(a, a.start > a.end || self.exists_one(b, b.start <= a.end && a.start <= b.end))")
            .message("slot ranges must not overlap")
    )]
    pub slots: Vec<SlotRange>,
    /// Connect to a shard server someone else runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,
    /// Have the operator run the shard server as a StatefulSet with a persistent volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedStorage>,
}

/// An inclusive range of hash slots, `start` to `end`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start <= self.end").message("start must not be after end"))]
pub struct SlotRange {
    /// First slot of the range, 0 to 16383.
    #[schemars(range(min = 0, max = 16383))]
    pub start: i32,
    /// Last slot of the range (inclusive), `start` to 16383.
    #[schemars(range(min = 0, max = 16383))]
    pub end: i32,
}

impl fmt::Display for SlotRange {
    /// `start-end`, the form `routing` uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl SlotRange {
    /// A range from `start` to `end`, inclusive (not checked).
    pub const fn new(start: i32, end: i32) -> Self {
        SlotRange { start, end }
    }

    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: i32) -> bool {
        self.start <= slot && slot <= self.end
    }

    fn check_alone(&self) -> Result<(), SlotError> {
        if self.start < 0 || self.end < 0 || self.start > MAX_SLOT || self.end > MAX_SLOT {
            return Err(SlotError::OutOfBounds { range: *self });
        }
        if self.start > self.end {
            return Err(SlotError::Reversed { range: *self });
        }
        Ok(())
    }
}

/// Checks one shard's ranges: 1 to [`MAX_SLOT_RANGES`] of them, each within `0..=16383`
/// with `start <= end`, listed in ascending order, none overlapping. Reports the first
/// problem, naming the ranges.
pub fn validate_ranges(ranges: &[SlotRange]) -> Result<(), SlotError> {
    if ranges.is_empty() {
        return Err(SlotError::Empty);
    }
    if ranges.len() > MAX_SLOT_RANGES {
        return Err(SlotError::TooMany {
            count: ranges.len(),
            max: MAX_SLOT_RANGES,
        });
    }
    for r in ranges {
        r.check_alone()?;
    }
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (from, to) = (a.start.max(b.start), a.end.min(b.end));
        if from <= to {
            return Err(SlotError::Overlap { a, b, from, to });
        }
        if b.start < a.start {
            return Err(SlotError::Unordered { prev: a, next: b });
        }
    }
    Ok(())
}

impl ShardSpec {
    /// Checks the slot ranges (see [`validate_ranges`]).
    pub fn validate_slots(&self) -> Result<(), CrdError> {
        Ok(validate_ranges(&self.slots)?)
    }

    /// The one backend this shard names.
    pub fn backend(&self) -> Result<Backend<'_>, CrdError> {
        backend("Shard spec", self.external.as_ref(), self.managed.as_ref())
    }
}

/// Checks that the named shards together own every slot `0..=16383` exactly once. Reports
/// every problem found, each with the shard names and slot numbers: duplicate names,
/// malformed ranges, slots owned twice, and slots owned by no one.
pub fn check_coverage(shards: &[(String, Vec<SlotRange>)]) -> Result<(), CrdError> {
    if shards.is_empty() {
        return Err(CrdError::Coverage(vec![CoverageIssue::NoShards]));
    }
    let mut issues = Vec::new();
    for (i, (name, ranges)) in shards.iter().enumerate() {
        if shards[..i].iter().any(|(other, _)| other == name) {
            issues.push(CoverageIssue::DuplicateShard {
                shard: name.clone(),
            });
        }
        if let Err(error) = validate_ranges(ranges) {
            issues.push(CoverageIssue::InvalidShard {
                shard: name.clone(),
                error,
            });
        }
    }

    // Every in-bounds span as (first slot, last slot, shard index), in slot order. Malformed
    // ranges are reported above; what part of them is in bounds still counts.
    let mut spans: Vec<(i32, i32, usize)> = shards
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ranges))| {
            ranges
                .iter()
                .map(move |r| (r.start.max(0), r.end.min(MAX_SLOT), i))
        })
        .filter(|&(lo, hi, _)| lo <= hi)
        .collect();
    spans.sort_unstable();

    // Slots shared by two different shards, as (from, to, first listed, second listed).
    let mut doubles: Vec<(i32, i32, usize, usize)> = Vec::new();
    for (k, &(_, hi, i)) in spans.iter().enumerate() {
        for &(lo2, hi2, j) in spans[k + 1..].iter().take_while(|s| s.0 <= hi) {
            if i != j {
                doubles.push((lo2, hi.min(hi2), i.min(j), i.max(j)));
            }
        }
    }
    // Join touching runs of the same pair, then report in slot order.
    doubles.sort_unstable_by_key(|&(from, to, a, b)| (a, b, from, to));
    let mut merged: Vec<(i32, i32, usize, usize)> = Vec::with_capacity(doubles.len());
    for d in doubles {
        match merged.last_mut() {
            Some(m) if m.2 == d.2 && m.3 == d.3 && m.1 + 1 >= d.0 => m.1 = m.1.max(d.1),
            _ => merged.push(d),
        }
    }
    merged.sort_unstable();
    issues.extend(
        merged
            .into_iter()
            .map(|(from, to, a, b)| CoverageIssue::Overlap {
                from,
                to,
                a: shards[a].0.clone(),
                b: shards[b].0.clone(),
            }),
    );

    // Slots below `next` are owned by someone.
    let mut next = 0;
    for &(lo, hi, _) in &spans {
        if lo > next {
            issues.push(CoverageIssue::Hole {
                from: next,
                to: lo - 1,
            });
        }
        next = next.max(hi + 1);
    }
    if next <= MAX_SLOT {
        issues.push(CoverageIssue::Hole {
            from: next,
            to: MAX_SLOT,
        });
    }

    if issues.is_empty() {
        Ok(())
    } else {
        Err(CrdError::Coverage(issues))
    }
}

/// Observed state of a Shard, written by the operator and the leading player.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
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
    /// Whether the shard server is serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// CRD generation
// ---------------------------------------------------------------------------------------------

/// The CRDs, in a stable order: LogPlayer, then Shard.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![LogPlayer::crd(), Shard::crd()]
}

fn crd_name(crd: &CustomResourceDefinition) -> Result<&str, CrdError> {
    crd.metadata
        .name
        .as_deref()
        .ok_or_else(|| CrdError::UnnamedCrd {
            kind: crd.spec.names.kind.clone(),
        })
}

fn crd_to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    serde_yaml::to_string(crd).map_err(|source| CrdError::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// All CRDs as one multi-document YAML stream (`---` before each), in the order of
/// [`all_crds`], after a "generated" comment.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::from(GENERATED_HEADER);
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&crd_to_yaml(&crd)?);
    }
    Ok(out)
}

/// The file name and contents of each CRD file: `<plural>.<group>.yaml`.
pub fn crd_files() -> Result<Vec<(String, String)>, CrdError> {
    all_crds()
        .iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd_name(crd)?);
            Ok((name, format!("{GENERATED_HEADER}{}", crd_to_yaml(crd)?)))
        })
        .collect()
}

/// Writes one file per CRD into `dir` (created if missing): `logplayers.logplayer.io.yaml`
/// and `shards.logplayer.io.yaml`. Returns the paths written.
pub fn write_crds(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    std::fs::create_dir_all(dir).map_err(|source| CrdError::Io {
        path: dir.to_owned(),
        source,
    })?;
    crd_files()?
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| CrdError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn crd_json(crd: &CustomResourceDefinition) -> Value {
        serde_json::to_value(crd).expect("CRD serializes")
    }

    fn schema(crd: &CustomResourceDefinition) -> Value {
        crd_json(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Walks a schema and collects every violation of the structural-schema rules the API
    /// server enforces (and of our rule that every field of ours has a description).
    fn structural_violations(node: &Value, path: &str, ours: bool, out: &mut Vec<String>) {
        let Some(obj) = node.as_object() else {
            out.push(format!("{path}: schema is not an object"));
            return;
        };
        for banned in [
            "$ref",
            "$defs",
            "definitions",
            "$schema",
            "oneOf",
            "allOf",
            "not",
        ] {
            if obj.contains_key(banned) {
                out.push(format!("{path}: has {banned}"));
            }
        }
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        let ty = obj.get("type").and_then(Value::as_str);
        if ty.is_none() && !int_or_string && !preserve {
            out.push(format!("{path}: no type"));
        }
        if let Some(t) = obj.get("type")
            && !t.is_string()
        {
            out.push(format!("{path}: type is not a single string: {t}"));
        }
        if let Some(any_of) = obj.get("anyOf") {
            // Only int-or-string may use anyOf, and only with bare type branches.
            let ok = int_or_string
                && any_of.as_array().is_some_and(|branches| {
                    branches
                        .iter()
                        .all(|b| b.as_object().is_some_and(|b| b.keys().all(|k| k == "type")))
                });
            if !ok {
                out.push(format!("{path}: anyOf outside int-or-string: {any_of}"));
            }
        }
        if ours
            && path.contains(".properties.")
            && obj
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            out.push(format!("{path}: no description"));
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            if ty != Some("object") {
                out.push(format!("{path}: has properties but type is {ty:?}"));
            }
            if obj.contains_key("additionalProperties") {
                out.push(format!("{path}: both properties and additionalProperties"));
            }
            for (name, sub) in props {
                // Fields from k8s-openapi types keep their upstream descriptions (or lack).
                let sub_ours = ours && !path.contains(".resources") && !path.contains("Selector");
                let sub_ours = sub_ours && !path.contains(".conditions");
                structural_violations(sub, &format!("{path}.properties.{name}"), sub_ours, out);
            }
        }
        if let Some(items) = obj.get("items") {
            if ty != Some("array") {
                out.push(format!("{path}: has items but type is {ty:?}"));
            }
            structural_violations(items, &format!("{path}.items"), ours, out);
        }
        if ty == Some("array") && !obj.contains_key("items") {
            out.push(format!("{path}: array without items"));
        }
        if let Some(ap) = obj.get("additionalProperties")
            && ap.is_object()
        {
            structural_violations(ap, &format!("{path}.additionalProperties"), false, out);
        }
        if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
            let required = obj["items"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for key in obj["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if !required.contains(key) {
                    out.push(format!("{path}: list-map key {key} is not required"));
                }
            }
        }
    }

    fn rules(node: &Value) -> Vec<String> {
        node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn generated_crds_are_structural_and_describe_every_field() {
        for crd in all_crds() {
            let mut violations = Vec::new();
            let s = schema(&crd);
            assert_eq!(s["type"], "object");
            structural_violations(&s, &crd.spec.names.kind, false, &mut violations);
            for part in ["spec", "status"] {
                structural_violations(
                    &s["properties"][part],
                    &format!("{}.{part}", crd.spec.names.kind),
                    true,
                    &mut violations,
                );
            }
            assert!(violations.is_empty(), "{violations:#?}");
        }
    }

    #[test]
    fn crds_have_names_scope_status_subresource_and_printer_columns() {
        let lp = crd_json(&LogPlayer::crd());
        assert_eq!(lp["metadata"]["name"], "logplayers.logplayer.io");
        assert_eq!(lp["spec"]["group"], GROUP);
        assert_eq!(lp["spec"]["scope"], "Namespaced");
        assert_eq!(lp["spec"]["names"]["shortNames"], json!(["lp"]));
        assert_eq!(lp["spec"]["versions"][0]["name"], VERSION);
        assert_eq!(
            lp["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
        assert_eq!(
            lp["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        let cols: Vec<(String, String)> = lp["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("LogPlayer printer columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").into(),
                    c["jsonPath"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let want = [
            ("Leader", ".status.leader"),
            ("Epoch", ".status.epoch"),
            ("Ready", ".status.readyReplicas"),
            ("Lag", ".status.lag"),
            ("Age", ".metadata.creationTimestamp"),
        ];
        assert_eq!(cols, want.map(|(a, b)| (a.to_owned(), b.to_owned())));

        let shard = crd_json(&Shard::crd());
        assert_eq!(shard["metadata"]["name"], "shards.logplayer.io");
        assert_eq!(shard["spec"]["scope"], "Namespaced");
        assert_eq!(
            shard["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
        assert_eq!(
            shard["spec"]["versions"][0]["selectableFields"],
            json!([{"jsonPath": ".spec.logPlayer"}])
        );
        let cols: Vec<(String, String)> = shard["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("Shard printer columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").into(),
                    c["type"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let want = [
            ("LogPlayer", "string"),
            ("Acked", "integer"),
            ("Lag", "integer"),
            ("Ready", "boolean"),
            ("Age", "date"),
        ];
        assert_eq!(cols, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    }

    #[test]
    fn cel_rules_sit_where_the_spec_needs_them() {
        let lp = schema(&LogPlayer::crd());
        let spec = &lp["properties"]["spec"];
        assert_eq!(
            rules(&spec["properties"]["logStore"]),
            ["has(self.external) != has(self.managed)"]
        );
        let lease_rules = rules(&spec["properties"]["lease"]);
        assert_eq!(lease_rules.len(), 2, "{lease_rules:?}");
        assert!(lease_rules.iter().all(|r| r.contains("duration(")));
        assert_eq!(
            rules(&spec["properties"]["checkpointInterval"]),
            ["duration(self) > duration('0s')"]
        );
        for f in ["leaseDuration", "renewDeadline", "retryPeriod"] {
            assert_eq!(
                spec["properties"]["lease"]["properties"][f]["pattern"],
                DURATION_PATTERN
            );
        }

        let shard = schema(&Shard::crd());
        let spec = &shard["properties"]["spec"];
        assert_eq!(rules(spec), ["has(self.external) != has(self.managed)"]);
        assert_eq!(spec["required"], json!(["logPlayer", "slots"]));
        assert_eq!(rules(&spec["properties"]["logPlayer"]), ["self == oldSelf"]);
        assert_eq!(spec["properties"]["logPlayer"]["minLength"], 1);
        let slots = &spec["properties"]["slots"];
        assert_eq!(slots["minItems"], 1);
        assert_eq!(slots["maxItems"], MAX_SLOT_RANGES);
        let slot_rules = rules(slots);
        assert!(
            slot_rules.iter().any(|r| r.contains("isSorted()")),
            "{slot_rules:?}"
        );
        assert!(
            slot_rules.iter().any(|r| r.contains("exists_one")),
            "{slot_rules:?}"
        );
        assert_eq!(rules(&slots["items"]), ["self.start <= self.end"]);
        for f in ["start", "end"] {
            // k8s-openapi keeps bounds as f64.
            assert_eq!(slots["items"]["properties"][f]["minimum"], 0.0);
            assert_eq!(
                slots["items"]["properties"][f]["maximum"],
                f64::from(MAX_SLOT)
            );
        }
        // Every rule carries a message for the user.
        fn all_rules(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                        out.extend(rs.iter().cloned());
                    }
                    m.values().for_each(|c| all_rules(c, out));
                }
                Value::Array(a) => a.iter().for_each(|c| all_rules(c, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        for crd in all_crds() {
            all_rules(&schema(&crd), &mut found);
        }
        assert_eq!(found.len(), 9, "{found:#?}");
        for rule in &found {
            assert!(
                rule["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{rule}"
            );
        }
    }

    #[test]
    fn schema_carries_the_defaults_and_bounds() {
        let lp = schema(&LogPlayer::crd());
        let p = &lp["properties"]["spec"]["properties"];
        assert_eq!(p["replicas"]["default"], 3);
        assert_eq!(p["replicas"]["minimum"], 1.0);
        assert_eq!(p["checkpointInterval"]["default"], "1s");
        assert_eq!(p["retainLog"]["default"], false);
        assert_eq!(p["metricsPort"]["default"], 9090);
        assert_eq!(
            p["lease"]["default"],
            json!({"leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "250ms"})
        );
        assert_eq!(
            p["delivery"]["default"],
            json!({"window": 16, "batchEntries": 512, "batchBytes": 1048576, "queueBytes": 8388608})
        );
        let d = &p["delivery"]["properties"];
        assert_eq!(d["window"]["minimum"], 1.0);
        assert_eq!(d["window"]["maximum"], 1024.0);
        assert_eq!(d["batchBytes"]["maximum"], 8388608.0);
        assert_eq!(d["queueBytes"]["minimum"], 65536.0);
        assert_eq!(
            p["imagePullPolicy"]["enum"],
            json!(["Always", "IfNotPresent", "Never"])
        );
        assert_eq!(lp["properties"]["spec"]["required"], json!(["logStore"]));
        let status = &lp["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        assert_eq!(
            status["shards"]["x-kubernetes-list-map-keys"],
            json!(["name"])
        );
    }

    #[test]
    fn descriptions_reach_kubectl_explain() {
        let lp = schema(&LogPlayer::crd());
        let desc = |v: &Value| v["description"].as_str().unwrap_or("").to_owned();
        assert!(desc(&lp).contains("LogPlayer delivers"));
        assert!(desc(&lp["properties"]["spec"]["properties"]["replicas"]).contains("player pods"));
        assert!(
            desc(&lp["properties"]["spec"]["properties"]["logStore"]["properties"]["managed"])
                .contains("StatefulSet")
        );
        let shard = schema(&Shard::crd());
        assert!(desc(&shard["properties"]["spec"]["properties"]["slots"]).contains("exactly once"));
    }

    const LOGPLAYER_YAML: &str = r#"
apiVersion: logplayer.io/v1alpha1
kind: LogPlayer
metadata:
  name: orders
  namespace: payments
spec:
  replicas: 3
  image: ghcr.io/example/logplayer:0.1.0
  imagePullPolicy: IfNotPresent
  resources:
    requests:
      cpu: 500m
      memory: 256Mi
    limits:
      memory: 512Mi
  lease:
    leaseDuration: 4s
    renewDeadline: 3s
    retryPeriod: 500ms
  checkpointInterval: 2s
  retainLog: true
  delivery:
    window: 32
    batchEntries: 1024
    batchBytes: 2097152
    queueBytes: 16777216
  shardSelector:
    matchLabels:
      logplayer.io/player: orders
  logStore:
    managed:
      storage: 20Gi
      storageClassName: fast-ssd
      resources:
        requests:
          cpu: "1"
          memory: 1Gi
  metricsPort: 9191
status:
  observedGeneration: 4
  conditions:
    - type: Ready
      status: "True"
      reason: AllShardsDelivering
      message: 3 of 3 shards acknowledged within the last checkpoint
      lastTransitionTime: "2025-01-02T03:04:05Z"
      observedGeneration: 4
    - type: LeaderElected
      status: "True"
      reason: LeaseHeld
      message: orders-player-1 holds the lease
      lastTransitionTime: "2025-01-02T03:04:00Z"
  leader: orders-player-1
  epoch: 7
  readyReplicas: 3
  replicas: 3
  shards:
    - name: orders-0
      ackedIndex: 10500
      lag: 12
    - name: orders-1
      ackedIndex: 10511
      lag: 1
  lag: 12
"#;

    const SHARD_YAML: &str = r#"
apiVersion: logplayer.io/v1alpha1
kind: Shard
metadata:
  name: orders-0
  namespace: payments
  labels:
    logplayer.io/player: orders
spec:
  logPlayer: orders
  slots:
    - start: 0
      end: 4095
    - start: 8192
      end: 12287
  external:
    endpoint: http://orders-0.shards.payments.svc:7101
status:
  observedGeneration: 1
  conditions:
    - type: Ready
      status: "True"
      reason: Serving
      message: applied index 10500
      lastTransitionTime: "2025-01-02T03:04:05Z"
  ackedIndex: 10500
  ackedEpoch: 7
  lag: 12
  endpoint: http://orders-0.shards.payments.svc:7101
  ready: true
"#;

    /// Parses `text` as a resource, checks it serializes back to the same document, and
    /// returns it.
    fn round_trip<T>(text: &str) -> T
    where
        T: serde::de::DeserializeOwned + Serialize + PartialEq + fmt::Debug,
    {
        let original: Value = serde_yaml::from_str(text).expect("valid YAML");
        let parsed: T = serde_yaml::from_str(text).expect("deserializes");
        let back = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(back, original, "round trip changed the document");
        let yaml = serde_yaml::to_string(&parsed).expect("to YAML");
        let again: T = serde_yaml::from_str(&yaml).expect("reparses");
        assert_eq!(again, parsed);
        parsed
    }

    #[test]
    fn a_full_logplayer_round_trips_through_yaml() {
        let lp: LogPlayer = round_trip(LOGPLAYER_YAML);
        assert_eq!(lp.spec.replicas, 3);
        assert_eq!(
            lp.spec.image_pull_policy,
            Some(ImagePullPolicy::IfNotPresent)
        );
        let timing = lp.spec.lease.timing().expect("valid lease");
        assert_eq!(timing.renew_deadline, Duration::from_secs(3));
        assert_eq!(
            lp.spec.checkpoint_interval().expect("valid"),
            Duration::from_secs(2)
        );
        let Backend::Managed(m) = lp.spec.log_store.backend().expect("one backend") else {
            panic!("expected a managed LogStore");
        };
        assert_eq!(m.storage, "20Gi");
        let status = lp.status.expect("status");
        assert_eq!(status.leader.as_deref(), Some("orders-player-1"));
        assert_eq!(status.shards[1].acked_index, 10511);
        assert_eq!(status.conditions[1].type_, condition::LEADER_ELECTED);
    }

    #[test]
    fn a_full_shard_round_trips_through_yaml() {
        let shard: Shard = round_trip(SHARD_YAML);
        assert_eq!(shard.spec.log_player, "orders");
        shard.spec.validate_slots().expect("valid slots");
        assert!(
            matches!(shard.spec.backend(), Ok(Backend::External(e)) if e.endpoint.ends_with(":7101"))
        );
        assert_eq!(shard.status.and_then(|s| s.ready), Some(true));
    }

    #[test]
    fn a_minimal_logplayer_gets_the_documented_defaults() {
        let lp: LogPlayer = serde_yaml::from_str(
            "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata: {name: p}\n\
             spec: {logStore: {external: {endpoint: 'logstore:7000'}}}\n",
        )
        .expect("minimal spec parses");
        let s = &lp.spec;
        assert_eq!(s.replicas, 3);
        assert_eq!(s.lease, LeaseSettings::default());
        assert_eq!(s.lease.lease_duration, "2s");
        assert_eq!(s.lease.renew_deadline, "1500ms");
        assert_eq!(s.lease.retry_period, "250ms");
        assert_eq!(s.checkpoint_interval, "1s");
        assert!(!s.retain_log);
        assert_eq!(s.delivery, DeliverySettings::default());
        assert_eq!(s.delivery.batch_bytes, 1 << 20);
        assert_eq!(s.delivery.queue_bytes, 8 << 20);
        assert_eq!(s.shard_selector, LabelSelector::default());
        assert_eq!(s.metrics_port, 9090);
        assert!(lp.status.is_none());
        // Partial sub-objects are filled field by field.
        let d: DeliverySettings = serde_json::from_value(json!({"window": 4})).expect("parses");
        assert_eq!((d.window, d.batch_entries), (4, 512));
        s.lease.timing().expect("default lease timing is valid");
    }

    #[test]
    fn lease_timing_and_durations_are_checked() {
        let lease = |l: &str, r: &str, p: &str| LeaseSettings {
            lease_duration: l.into(),
            renew_deadline: r.into(),
            retry_period: p.into(),
        };
        assert_eq!(
            lease("1m30s", "1m", "10s")
                .timing()
                .expect("valid")
                .lease_duration,
            Duration::from_secs(90)
        );
        let e = lease("2s", "2s", "250ms").timing().unwrap_err();
        assert!(
            e.to_string().contains("renewDeadline < leaseDuration"),
            "{e}"
        );
        let e = lease("2s", "1s", "0s").timing().unwrap_err();
        assert!(e.to_string().contains("0 < retryPeriod"), "{e}");
        let e = lease("two seconds", "1s", "1ms").timing().unwrap_err();
        assert!(e.to_string().contains("spec.lease.leaseDuration"), "{e}");
        let mut spec: LogPlayerSpec =
            serde_json::from_value(json!({"logStore": {"external": {"endpoint": "x:1"}}}))
                .expect("parses");
        spec.checkpoint_interval = "0ms".into();
        let e = spec.checkpoint_interval().unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.checkpointInterval must be greater"),
            "{e}"
        );
    }

    #[test]
    fn a_source_must_name_exactly_one_backend() {
        let both: LogSource = serde_json::from_value(json!({
            "external": {"endpoint": "a:1"},
            "managed": {"storage": "1Gi"}
        }))
        .expect("parses");
        let e = both.backend().unwrap_err();
        assert!(
            e.to_string().contains("exactly one") && e.to_string().contains("both"),
            "{e}"
        );
        let neither: ShardSpec =
            serde_json::from_value(json!({"logPlayer": "p", "slots": [{"start": 0, "end": 1}]}))
                .expect("parses");
        let e = neither.backend().unwrap_err();
        assert!(
            e.to_string().contains("Shard spec") && e.to_string().contains("neither"),
            "{e}"
        );
    }

    fn r(start: i32, end: i32) -> SlotRange {
        SlotRange::new(start, end)
    }

    fn spec(slots: Vec<SlotRange>) -> ShardSpec {
        ShardSpec {
            log_player: "p".into(),
            slots,
            external: Some(ExternalEndpoint {
                endpoint: "s:1".into(),
            }),
            managed: None,
        }
    }

    #[test]
    fn validate_slots_accepts_ordered_disjoint_ranges() {
        spec(vec![r(0, 16383)])
            .validate_slots()
            .expect("one full range");
        spec(vec![r(0, 0), r(1, 99), r(200, 16383)])
            .validate_slots()
            .expect("adjacent and gapped ranges");
        spec((0..64).map(|i| r(i * 2, i * 2)).collect())
            .validate_slots()
            .expect("64 ranges");
    }

    #[test]
    fn validate_slots_names_each_problem() {
        let msg = |slots| spec(slots).validate_slots().unwrap_err().to_string();
        assert!(msg(vec![]).contains("no slot ranges"));
        let m = msg((0..65).map(|i| r(i, i)).collect());
        assert!(m.contains("65 slot ranges") && m.contains("64"), "{m}");
        let m = msg(vec![r(0, 16384)]);
        assert!(
            m.contains("0-16384 is out of bounds") && m.contains("0 to 16383"),
            "{m}"
        );
        let m = msg(vec![r(-1, 5)]);
        assert!(m.contains("-1-5 is out of bounds"), "{m}");
        let m = msg(vec![r(10, 5)]);
        assert!(m.contains("10-5 starts after it ends"), "{m}");
        let m = msg(vec![r(100, 200), r(0, 50)]);
        assert!(m.contains("0-50 is listed after 100-200"), "{m}");
        let m = msg(vec![r(0, 100), r(50, 200)]);
        assert!(
            m.contains("0-100 and 50-200 overlap on slots 50-100"),
            "{m}"
        );
        let m = msg(vec![r(0, 10), r(0, 10)]);
        assert!(m.contains("overlap on slots 0-10"), "{m}");
        let m = msg(vec![r(50, 60), r(0, 100)]);
        assert!(m.contains("overlap on slots 50-60"), "{m}");
    }

    fn shards(list: &[(&str, &[(i32, i32)])]) -> Vec<(String, Vec<SlotRange>)> {
        list.iter()
            .map(|(n, rs)| (n.to_string(), rs.iter().map(|&(a, b)| r(a, b)).collect()))
            .collect()
    }

    fn coverage_issues(list: &[(&str, &[(i32, i32)])]) -> (Vec<CoverageIssue>, String) {
        match check_coverage(&shards(list)) {
            Err(e @ CrdError::Coverage(_)) => {
                let text = e.to_string();
                let CrdError::Coverage(issues) = e else {
                    unreachable!()
                };
                (issues, text)
            }
            other => panic!("expected a coverage error, got {other:?}"),
        }
    }

    #[test]
    fn check_coverage_accepts_an_exact_cover() {
        check_coverage(&shards(&[("a", &[(0, 16383)])])).expect("one shard");
        check_coverage(&shards(&[
            ("s0", &[(0, 4095), (8192, 12287)]),
            ("s1", &[(4096, 8191)]),
            ("s2", &[(12288, 16383)]),
        ]))
        .expect("interleaved");
    }

    #[test]
    fn check_coverage_reports_overlaps_between_shards() {
        let (issues, text) = coverage_issues(&[("a", &[(0, 8191)]), ("b", &[(8000, 16383)])]);
        assert_eq!(
            issues,
            [CoverageIssue::Overlap {
                from: 8000,
                to: 8191,
                a: "a".into(),
                b: "b".into()
            }]
        );
        assert!(
            text.contains("slots 8000-8191 are owned by both shard \"a\" and shard \"b\""),
            "{text}"
        );
        // Overlap across two of b's ranges is reported as one run.
        let (issues, _) = coverage_issues(&[("a", &[(0, 16383)]), ("b", &[(10, 19), (20, 29)])]);
        assert_eq!(
            issues,
            [CoverageIssue::Overlap {
                from: 10,
                to: 29,
                a: "a".into(),
                b: "b".into()
            }]
        );
    }

    #[test]
    fn check_coverage_reports_each_pair_of_a_three_way_overlap() {
        let (issues, _) =
            coverage_issues(&[("a", &[(0, 16383)]), ("b", &[(0, 9)]), ("c", &[(5, 14)])]);
        let pair = |from, to, a: &str, b: &str| CoverageIssue::Overlap {
            from,
            to,
            a: a.into(),
            b: b.into(),
        };
        assert_eq!(
            issues,
            [
                pair(0, 9, "a", "b"),
                pair(5, 9, "b", "c"),
                pair(5, 14, "a", "c")
            ]
        );
    }

    /// Compares `check_coverage` with a slot-by-slot count on seeded random shard maps.
    #[test]
    fn check_coverage_agrees_with_a_slot_by_slot_count() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as i32
        };
        for _ in 0..100 {
            let list: Vec<(String, Vec<SlotRange>)> = (0..1 + next(4))
                .map(|i| {
                    let ranges = (0..1 + next(3))
                        .map(|_| {
                            let a = next(SLOT_COUNT as u64);
                            r(a, (a + next(9000)).min(MAX_SLOT))
                        })
                        .collect();
                    (format!("s{i}"), ranges)
                })
                .collect();
            let mut owners = vec![Vec::new(); SLOT_COUNT as usize];
            for (i, (_, ranges)) in list.iter().enumerate() {
                for rg in ranges {
                    for slot in rg.start..=rg.end {
                        if !owners[slot as usize].contains(&i) {
                            owners[slot as usize].push(i);
                        }
                    }
                }
            }
            let mut want_holes = Vec::new();
            let mut want_pairs = Vec::new();
            for (slot, o) in owners.iter().enumerate() {
                if o.is_empty() {
                    want_holes.push(slot as i32);
                }
                for (x, &a) in o.iter().enumerate() {
                    for &b in &o[x + 1..] {
                        want_pairs.push((
                            slot as i32,
                            list[a.min(b)].0.clone(),
                            list[a.max(b)].0.clone(),
                        ));
                    }
                }
            }
            let issues = match check_coverage(&list) {
                Ok(()) => vec![],
                Err(CrdError::Coverage(issues)) => issues,
                Err(e) => panic!("{e}"),
            };
            let mut got_holes = Vec::new();
            let mut got_pairs = Vec::new();
            for issue in issues {
                match issue {
                    CoverageIssue::Hole { from, to } => got_holes.extend(from..=to),
                    CoverageIssue::Overlap { from, to, a, b } => {
                        got_pairs.extend((from..=to).map(|s| (s, a.clone(), b.clone())))
                    }
                    CoverageIssue::InvalidShard { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            got_pairs.sort();
            want_pairs.sort();
            let before = got_pairs.len();
            got_pairs.dedup();
            assert_eq!(
                before,
                got_pairs.len(),
                "a slot is reported twice for one pair"
            );
            assert_eq!(got_holes, want_holes);
            assert_eq!(got_pairs, want_pairs);
        }
    }

    #[test]
    fn check_coverage_reports_holes() {
        let (issues, text) = coverage_issues(&[("a", &[(0, 99)]), ("b", &[(200, 16000)])]);
        assert_eq!(
            issues,
            [
                CoverageIssue::Hole { from: 100, to: 199 },
                CoverageIssue::Hole {
                    from: 16001,
                    to: 16383
                }
            ]
        );
        assert!(
            text.contains("slots 100-199 are owned by no shard"),
            "{text}"
        );
        assert!(text.contains("slots 16001-16383"), "{text}");
        let (issues, text) = coverage_issues(&[]);
        assert_eq!(issues, [CoverageIssue::NoShards]);
        assert!(text.contains("0-16383"), "{text}");
    }

    #[test]
    fn check_coverage_reports_bad_shards_and_duplicate_names() {
        let (issues, text) = coverage_issues(&[
            ("a", &[(0, 8191)]),
            ("b", &[(8192, 16384)]),
            ("a", &[(5, 4)]),
        ]);
        assert!(
            text.contains("shard \"b\": slot range 8192-16384 is out of bounds"),
            "{text}"
        );
        assert!(
            text.contains("shard \"a\" appears more than once"),
            "{text}"
        );
        assert!(
            text.contains("shard \"a\": slot range 5-4 starts after it ends"),
            "{text}"
        );
        // The in-bounds part of b still counts: nothing is missing.
        assert!(
            !issues
                .iter()
                .any(|i| matches!(i, CoverageIssue::Hole { .. })),
            "{issues:?}"
        );
    }

    #[test]
    fn check_coverage_bounds_its_message() {
        // 100 single-slot shards with a gap after each: 100 holes.
        let list: Vec<(String, Vec<SlotRange>)> = (0..100)
            .map(|i| (format!("s{i}"), vec![r(i * 2, i * 2)]))
            .collect();
        let e = check_coverage(&list).unwrap_err();
        let CrdError::Coverage(issues) = &e else {
            panic!("{e}")
        };
        assert_eq!(issues.len(), 100);
        let text = e.to_string();
        assert!(text.contains("and 90 more"), "{text}");
        assert!(text.len() < 1000, "{}", text.len());
    }

    #[test]
    fn crds_yaml_is_a_stable_multi_document_stream() {
        let text = crds_yaml().expect("yaml");
        assert!(text.starts_with(GENERATED_HEADER));
        assert_eq!(text, crds_yaml().expect("yaml"), "output is deterministic");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).expect("each document parses"))
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["logplayers.logplayer.io", "shards.logplayer.io"]);
        for d in &docs {
            assert_eq!(d["kind"], "CustomResourceDefinition");
            assert_eq!(d["apiVersion"], "apiextensions.k8s.io/v1");
            let back: CustomResourceDefinition =
                serde_json::from_value(d.clone()).expect("parses as a CRD");
            assert_eq!(back.spec.group, GROUP);
        }
    }

    #[test]
    fn write_crds_writes_one_file_per_crd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("crds");
        let paths = write_crds(&out).expect("written");
        let names: Vec<_> = paths
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            ["logplayers.logplayer.io.yaml", "shards.logplayer.io.yaml"]
        );
        for (path, crd) in paths.iter().zip(all_crds()) {
            let text = std::fs::read_to_string(path).expect("readable");
            assert!(text.starts_with(GENERATED_HEADER));
            let back: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parses");
            assert_eq!(back, crd);
        }
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").expect("write");
        let e = write_crds(&file).unwrap_err();
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    /// The committed `crds/` files and the chart's copy match the Rust types. Regenerate with
    /// `LOGPLAYER_UPDATE_CRDS=1 cargo test crd` after changing a type.
    #[test]
    fn committed_crd_files_match_the_types() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in [
            root.join("crds"),
            root.join("charts/logplayer-operator/files/crds"),
        ] {
            if std::env::var_os("LOGPLAYER_UPDATE_CRDS").is_some() {
                write_crds(&dir).expect("regenerated");
            }
            for (name, want) in crd_files().expect("generated") {
                let path = dir.join(&name);
                let have = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    have == want,
                    "{} is missing or stale; regenerate with `cargo run -- crd --write crds \
                     --write charts/logplayer-operator/files/crds` (or \
                     `LOGPLAYER_UPDATE_CRDS=1 cargo test crd`)",
                    path.display()
                );
            }
        }
    }
}
