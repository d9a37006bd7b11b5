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

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod logplayer;
pub use logplayer::*;
mod shard;
pub use shard::*;
mod generate;
pub use generate::*;
#[cfg(test)]
mod tests;

/// API group of every resource here.
pub const GROUP: &str = "logplayer.io";
/// API version of every resource here.
pub const VERSION: &str = "v1alpha1";

pub use crate::routing::slots::{
    Coverage, CoverageIssue, MAX_SLOT, MAX_SLOT_RANGES, SLOT_COUNT, SlotError, SlotRange,
    check_coverage, validate_ranges,
};

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
    /// Every certificate of the LogPlayer is issued from its CA and not about to expire
    /// (LogPlayer only).
    pub const CERTIFICATES_READY: &str = "CertificatesReady";
}

/// Durations are written like `2s`, `1500ms` or `1m30s`: one or more integer-unit pairs with
/// units `ns`, `us`, `ms`, `s`, `m`, `h`. Both humantime (the player) and CEL's `duration()`
/// (the API server) read this form the same way. At most six digits a pair and
/// [`DURATION_MAX_LENGTH`] characters, so no value the pattern admits overflows the API
/// server's duration (Go's, ~2.5 million hours): a larger one would pass the pattern and
/// then fail every CEL rule with "type conversion error" instead of naming the field's form.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}(ns|us|ms|s|m|h))+$";
/// The longest duration string (see [`DURATION_PATTERN`]).
pub const DURATION_MAX_LENGTH: u32 = 20;
/// A storage size in Kubernetes quantity form, e.g. `10Gi` or `500M`, and above zero (a
/// PersistentVolumeClaim of `0` is refused by the API server, so the CRD refuses it first).
pub const QUANTITY_PATTERN: &str =
    r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// Any non-negative Kubernetes quantity (`500m`, `1.5`, `2Gi`, `1e3`): what a container's
/// `resources.requests` and `resources.limits` accept. Checked by the CRD, because a value
/// such as `lots` would otherwise be accepted and then refuse every apply of the pods.
pub const RESOURCE_QUANTITY_PATTERN: &str = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$";
/// A DNS-1123 subdomain: what a Secret's (or an issuer's) name must be. Checked by the CRD,
/// because a name such as `Bad Name` is otherwise accepted and fails every reconciliation
/// with an error about a URI.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A StorageClass name (a DNS-1123 subdomain), or `""`: no class.
pub const STORAGE_CLASS_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";
/// A DNS-1035 label: what a Service's name must be, so what a LogPlayer's name (its Services
/// `NAME-player-metrics`, `NAME-logstore`, ...) and a managed Shard's (`NAME-shard`) must be;
/// a Shard's `spec.logPlayer` names a LogPlayer.
pub const DNS_1035_LABEL_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// The longest name of a LogPlayer with a managed LogStore: its log replicas' StatefulSet
/// `NAME-logstore` gives each pod a `controller-revision-hash` label `NAME-logstore-HASH` (a
/// hash of up to 10 characters), and a label value is at most 63 characters; longer, the pods
/// could never be created. Every other name the operator derives is shorter (`names.rs` tests
/// it).
pub const MAX_LOGPLAYER_NAME: u32 = 43;
/// The longest name of a LogPlayer with an external LogStore: its Service
/// `NAME-player-metrics`, at most 63.
pub const MAX_LOGPLAYER_NAME_EXTERNAL: u32 = 48;
/// The longest name of a managed Shard, for the same reason: its pods carry
/// `NAME-shard-HASH`. An external one's name is a label value: at most 63.
pub const MAX_SHARD_NAME: u32 = 46;
/// Longest duration or quantity string (also bounds CEL cost).
const SHORT_STRING_MAX: u32 = 32;

/// Header written at the top of every generated CRD file.
pub const GENERATED_HEADER: &str =
    "# Generated from the Rust types in src/crd/ (`logplayer crd --write`); do not edit by hand.\n";

/// Errors from checking a spec or writing the CRDs; each names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// One Shard's slot ranges are malformed.
    #[error("invalid slot ranges: {0}")]
    Slots(#[from] SlotError),
    /// A spec names both or neither of `external` and `managed`.
    #[error("{what} must set exactly one of `external` or `managed`, but sets {found}")]
    Backend {
        /// Which part of which resource, e.g. `LogPlayer spec.logStore`.
        what: &'static str,
        /// `both` or `neither`.
        found: &'static str,
    },
    /// An external endpoint is not an address a client can dial.
    #[error("{what}.external.endpoint {endpoint:?}: {reason}")]
    Endpoint {
        what: &'static str,
        endpoint: String,
        reason: String,
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
    /// A count that must not be negative is.
    #[error("{field} must not be negative, got {value}")]
    Negative {
        /// Field path.
        field: &'static str,
        /// The value as written.
        value: i64,
    },
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Field path.
        field: &'static str,
    },
    /// A duration is above the most its field allows.
    #[error("{field} = {value:?} is above the most it may be ({max:?})")]
    DurationAbove {
        /// Field path.
        field: &'static str,
        /// The duration as parsed.
        value: Duration,
        /// The largest allowed.
        max: Duration,
    },
    /// The lease durations are out of order.
    #[error(
        "lease timing needs 10ms <= retryPeriod < renewDeadline < leaseDuration <= 1h, got retryPeriod \
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
    /// gRPC address of the server, `host:port` or `http://host:port` with a port from 1 to
    /// 65535 (for example `logstore.logs.svc:7000`; a replicated LogStore's replicas
    /// comma-separated). Over TLS the server's certificate must name it: a
    /// `logplayer://replica/...` name for a LogStore, `logplayer://shard/NAME` (the Shard's
    /// name) for a shard.
    #[schemars(length(min = 1, max = 512), pattern(r"^\S+$"))]
    pub endpoint: String,
}

/// A server the operator runs: a StatefulSet with one persistent volume per pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedStorage {
    /// Size of the persistent volume, as a Kubernetes quantity (for example `10Gi`). Cannot
    /// change, nor can `storageClassName`: a StatefulSet's volume claims are fixed.
    #[schemars(length(min = 1, max = SHORT_STRING_MAX), pattern(QUANTITY_PATTERN))]
    pub storage: String,
    /// StorageClass of the persistent volume; unset uses the cluster's default class, `""`
    /// none (a volume made beforehand). A StorageClass name (a DNS subdomain): checked
    /// here, since it cannot change later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(STORAGE_CLASS_PATTERN))]
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
        (Some(e), None) => {
            // A LogStore's may list its replicas; a shard is one server.
            let many = what.starts_with("LogPlayer");
            let items: Vec<&str> = if many {
                e.endpoint.split(',').map(str::trim).collect()
            } else {
                vec![e.endpoint.as_str()]
            };
            for item in items {
                crate::routing::check_addr(item).map_err(|reason| CrdError::Endpoint {
                    what,
                    endpoint: e.endpoint.clone(),
                    reason: format!("{item:?} is not HOST:PORT ({reason})"),
                })?;
            }
            Ok(Backend::External(e))
        }
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
