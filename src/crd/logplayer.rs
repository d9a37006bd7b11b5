//! The `LogPlayer` resource: player replicas, image, lease timing, delivery tuning, the
//! shard selector and the log source, with its status.

use super::{
    Backend, CrdError, DNS_SUBDOMAIN_PATTERN, DURATION_MAX_LENGTH, DURATION_PATTERN,
    ExternalEndpoint, ImagePullPolicy, ManagedStorage, backend, parse_duration,
};
use crate::limits::{
    DEFAULT_MAX_ENTRY_BYTES, MAX_BATCH_BYTES, MAX_MAX_ENTRY_BYTES, MAX_QUEUE_BYTES, MAX_WINDOW,
    MAX_WINDOW_BYTES, MIN_MAX_ENTRY_BYTES, MIN_QUEUE_BYTES,
};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    validation = Rule::new("(oldSelf.hasValue() && (has(oldSelf.value().spec.logStore.managed) || !has(self.spec.logStore.managed))) || (self.metadata.name.size() <= (has(self.spec.logStore.managed) ? 43 : 48) && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))")
        .optional_old_self(true)
        .message("a LogPlayer's name starts with a letter and has no dot (its Services are named after it), and is at most 43 characters with a managed LogStore (its replicas' pods carry the label NAME-logstore-HASH, at most 63), 48 with an external one (its Service NAME-player-metrics)"),
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
#[x_kube(validation = Rule::new("!has(self.logStore.managed) || self.maxEntryBytes <= 266076160")
    .message("maxEntryBytes is at most 266076160 with a managed LogStore: a log replica carries an entry in one replication message of 256 MiB, beside its framing and what may travel with it"))]
pub struct LogPlayerSpec {
    /// Number of player pods (one leader, the rest hot standbys). At least 1; 3 by default.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Container image of the player, log-replica and managed shard pods; unset uses the
    /// operator's `--default-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^\S+$"))]
    pub image: Option<String>,
    /// Image pull policy of the player, log-replica and managed shard pods; unset leaves
    /// Kubernetes' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory for each player container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Timing of the leader lease the replicas contend for.
    #[serde(default)]
    pub lease: LeaseSettings,
    /// How often the leader saves each shard's acknowledged index into the Shard's status
    /// (a duration such as `1s`, above zero and at most `1h`; an object written before the
    /// upper bound keeps its value through updates, and the operator reports it). Default
    /// `1s`.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(min = 1, max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("(oldSelf.hasValue() && self == oldSelf.value()) || (duration(self) > duration('0s') && duration(self) <= duration('1h'))")
        .optional_old_self(true)
        .message("checkpointInterval must be greater than zero and at most 1h"))]
    pub checkpoint_interval: String,
    /// After each checkpoint, let the LogStore delete log segments that every shard has
    /// acknowledged. A Shard added later is delivered the log from its start: once segments
    /// are gone, the players stop, naming the shard and the first index the log still holds
    /// (the LogPlayer shows `CrashLoopBackOff` with those words), until that Shard is
    /// removed. Retention is the LogStore's, for every reader: not when another LogPlayer
    /// reads the same external LogStore (its shards would lose entries not yet delivered to
    /// them). Default false.
    #[serde(default)]
    pub retain_log: bool,
    /// Batching and flow control toward each shard.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// The entry limit of every part of this LogPlayer: the largest entry (the encoded size
    /// of one append's mutations) its managed LogStore accepts, its players deliver and its
    /// managed shards apply (each one's `--max-entry-bytes`). 1 KiB (1024) to 1 GiB
    /// (1073741824), and at most 266076160 with a managed LogStore (the most one
    /// replication message of a log replica carries); default 4 MiB (4194304).
    ///
    /// It may grow and never shrink: the log may hold entries as large as the old limit,
    /// which players and shards of a smaller one could not take (a LogPlayer deleted and
    /// made again keeps its managed log's volumes, and the entries on them: make it again
    /// with at least the old limit). Growing it rolls every pod; a managed log's replicas
    /// refuse each other's messages while their limits differ, so appends pause in the
    /// middle of the roll, from when neither limit is held by a majority of the replicas
    /// until those of the new one elect a leader. Past about 38 MiB the log replicas also
    /// beat slower (`--heartbeat`), so that an entry at the limit reaches the followers
    /// within an election timeout; an election after a crash then waits as much longer
    /// (3-4 s at the largest limit).
    ///
    /// An external LogStore must accept no larger entries than this, and every shard at
    /// least those the LogStore accepts: the operator reports either (`EntryLimitMismatch`).
    #[serde(default = "default_max_entry_bytes")]
    #[schemars(range(min = MIN_MAX_ENTRY_BYTES, max = MAX_MAX_ENTRY_BYTES))]
    #[x_kube(validation = Rule::new("self >= oldSelf")
        .message("maxEntryBytes cannot shrink: the log may hold entries as large as the old limit, which players and shards of a smaller one could not take"))]
    pub max_entry_bytes: i64,
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
    /// How every gRPC connection of this LogPlayer (players, log replicas, its Shards'
    /// servers, writers) is secured. Default: mutual TLS with certificates the operator
    /// issues and renews.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Which pods may connect to this LogPlayer's pods: NetworkPolicies the operator keeps.
    #[serde(default)]
    pub network_policy: NetworkPolicySettings,
}

/// NetworkPolicies (effective with a network plugin that enforces them): the log replicas
/// accept gRPC only from the players, each other, the operator and the `writers`; each
/// managed Shard's server only from the players and the operator; the players' metrics port
/// only from the namespaces `metricsNamespaceSelector` selects. Everything else is denied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Keep the NetworkPolicies (default true); false deletes them.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may append to a managed LogStore, each a pod selector and an optional
    /// namespace selector (absent: this namespace). Default: the pods of this namespace
    /// labelled `logplayer.io/writer: <name>`. An empty list is refused: it would let no
    /// pod append (`podSelector: {}` lets every pod of the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("size(self) > 0")
        .message("writers must list at least one peer: an empty list lets no pod append to the log; omit it for the default (pods labelled logplayer.io/writer), or use podSelector: {} for every pod of the namespace"))]
    pub writers: Option<Vec<PeerSelector>>,
    /// Namespaces whose pods may scrape the players' `/metrics`. Default: this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_namespace_selector: Option<LabelSelector>,
}

fn default_true() -> bool {
    true
}

impl Default for NetworkPolicySettings {
    fn default() -> Self {
        NetworkPolicySettings {
            enabled: true,
            writers: None,
            metrics_namespace_selector: None,
        }
    }
}

/// Pods, by labels, in the namespaces a selector picks (absent: the LogPlayer's namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSelector {
    /// The pods (empty: every pod of the namespaces).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// The namespaces; absent means the LogPlayer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Mutual TLS for a LogPlayer. In `Operator` mode the operator keeps a CA in `caSecret` and
/// issues, into Secrets of type `kubernetes.io/tls` (`tls.crt`, `tls.key`, `ca.crt`), one
/// certificate per component and role: `<name>-logstore-tls` (log replicas, role
/// `replica`), `<name>-player-tls` (`player`), `<S>-shard-tls` for each managed Shard `S`,
/// `<name>-writer-tls` for your writers (`writer`, for `writerIds`) and `<name>-admin-tls`
/// (`admin`: `logplayer status`, `dump`, `logstore members`; the operator uses it too).
/// Each is valid 90 days and issued again 30 days before it expires, or at once when it was
/// not signed by the current CA. Pods read renewed files without a restart. In `CertManager`
/// mode cert-manager issues and renews the same Secrets instead, from `issuerRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'CertManager' || has(self.issuerRef)")
    .message("tls.mode CertManager needs tls.issuerRef (the cert-manager issuer to sign with)"))]
#[x_kube(validation = Rule::new("!has(self.issuerRef) || (has(self.mode) && self.mode == 'CertManager')")
    .message("tls.issuerRef is used only with tls.mode CertManager: set mode: CertManager, or remove issuerRef (in mode Operator the operator signs with its own CA, in caSecret)"))]
pub struct TlsSettings {
    /// `Operator` (default): mutual TLS with the certificates above, issued by the operator.
    /// `CertManager`: the same certificates, as cert-manager `Certificate`s the operator
    /// creates (signed by `issuerRef`; cert-manager renews them). `Insecure`: plaintext
    /// gRPC and no authentication (every pod runs with `--insecure`): only on a network
    /// where every pod that can connect is trusted.
    #[serde(default)]
    pub mode: TlsMode,
    /// (`mode: CertManager`) The cert-manager issuer that signs every certificate: one that
    /// writes `ca.crt` into the Secrets and allows URI names (a `CA` or `Vault` issuer, or an
    /// external one such as AWS Private CA); ACME issuers cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Secret holding the CA certificate and key (`tls.crt`, `tls.key`, PEM). The operator
    /// creates it (a CA valid 10 years) when it does not exist; to bring your own CA, or one
    /// cert-manager keeps (a `Certificate` with `isCA: true` writes such a Secret), create it
    /// first. Default `<name>-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub ca_secret: Option<String>,
    /// Writer ids the writer certificate may append as; `PREFIX*` allows every id starting
    /// with `PREFIX`. Default `["*"]` (any id). Up to 256 of letters, digits and
    /// `.` `_` `~` `-` `!` `$` `&` `'` `(` `)` `+` `,` `;` `=` `:` `@` (each id becomes a URI
    /// name `logplayer://writer/ID` in the certificate), and `*` only at the end.
    #[serde(default = "default_writer_ids")]
    #[schemars(length(min = 1, max = 32))]
    pub writer_ids: Vec<WriterId>,
}

/// A cert-manager issuer (`cert-manager.io/v1` `issuerRef`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// `Issuer` (default; in the LogPlayer's namespace), `ClusterIssuer`, or an external
    /// issuer's kind.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The issuer's API group. Default `cert-manager.io`.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}
fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

/// A writer id the writer certificate grants, or `PREFIX*` for every id with that prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct WriterId(#[schemars(length(min = 1, max = 257), pattern(WRITER_ID_PATTERN))] pub String);

/// A writer id as a certificate grants it: characters a URI path takes as they are (RFC
/// 3986's unreserved ones and the sub-delimiters but `*`, with `:` and `@`), at most
/// [`crate::logstore::MAX_WRITER_ID_BYTES`] of them, optionally followed by `*` (a prefix).
/// A space, `/`, `?`, `#` or `%` would make the certificate's `logplayer://writer/ID` no URI
/// (or another one).
pub(crate) const WRITER_ID_PATTERN: &str = r"^([A-Za-z0-9._~!$&'()+,;=:@-]{1,256}\*?|\*)$";

fn default_writer_ids() -> Vec<WriterId> {
    vec![WriterId("*".to_owned())]
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: TlsMode::default(),
            ca_secret: None,
            issuer_ref: None,
            writer_ids: default_writer_ids(),
        }
    }
}

/// How a LogPlayer's connections are secured (see `tls`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    /// Mutual TLS with certificates the operator issues from the CA in `caSecret`.
    #[default]
    Operator,
    /// Mutual TLS with the same certificates, issued by cert-manager from `issuerRef`.
    CertManager,
    /// Plaintext, nobody authenticated.
    Insecure,
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
    /// `checkpointInterval` as a positive duration, at most
    /// [`crate::player::MAX_CHECKPOINT_INTERVAL`] (which the CRD's rule repeats).
    pub fn checkpoint_interval(&self) -> Result<Duration, CrdError> {
        let field = "spec.checkpointInterval";
        let d = parse_duration(field, &self.checkpoint_interval)?;
        if d.is_zero() {
            return Err(CrdError::ZeroDuration { field });
        }
        let max = crate::player::MAX_CHECKPOINT_INTERVAL;
        if d > max {
            return Err(CrdError::DurationAbove {
                field,
                value: d,
                max,
            });
        }
        Ok(d)
    }
}

/// Leader lease timing. The leader stops sending once it could not renew for
/// `renewDeadline`; a standby takes over once the lease is `leaseDuration` old; everyone
/// retries every `retryPeriod`. Needs `10ms <= retryPeriod < renewDeadline < leaseDuration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.retryPeriod) >= duration('10ms') && duration(self.retryPeriod) < duration(self.renewDeadline)")
        .message("lease timing needs 10ms <= retryPeriod < renewDeadline"),
    validation = Rule::new("duration(self.renewDeadline) < duration(self.leaseDuration)")
        .message("lease timing needs renewDeadline < leaseDuration"),
    validation = Rule::new("duration(self.leaseDuration) <= duration('1h')")
        .message("leaseDuration is at most 1h")
)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal; a standby takes over after this. Default `2s`.
    #[serde(default = "default_lease_duration")]
    #[schemars(length(min = 1, max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    pub lease_duration: String,
    /// A leader that could not renew for this long stops sending; below `leaseDuration`, the
    /// difference absorbing clock skew and scheduling delay. Default `1500ms`.
    #[serde(default = "default_renew_deadline")]
    #[schemars(length(min = 1, max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    pub renew_deadline: String,
    /// How often replicas try to acquire or renew the lease. Default `250ms`.
    #[serde(default = "default_retry_period")]
    #[schemars(length(min = 1, max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
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
    /// Parses the three durations and checks `10ms <= retryPeriod < renewDeadline <
    /// leaseDuration`.
    pub fn timing(&self) -> Result<LeaseTiming, CrdError> {
        let t = LeaseTiming {
            lease_duration: parse_duration("spec.lease.leaseDuration", &self.lease_duration)?,
            renew_deadline: parse_duration("spec.lease.renewDeadline", &self.renew_deadline)?,
            retry_period: parse_duration("spec.lease.retryPeriod", &self.retry_period)?,
        };
        if t.retry_period < crate::lease::MIN_RETRY_PERIOD
            || t.retry_period >= t.renew_deadline
            || t.renew_deadline >= t.lease_duration
            || t.lease_duration > crate::lease::MAX_LEASE_DURATION
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

/// Batching and flow control toward each shard (the player's `--window`, `--window-bytes`,
/// `--batch-entries`, `--batch-bytes` and `--queue-bytes`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySettings {
    /// Most batches in flight (sent, not yet acknowledged) per shard. 1 to 1024; default 64.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = MAX_WINDOW))]
    pub window: i32,
    /// Most bytes of entries in flight per shard (a batch still goes when none is in
    /// flight). 1 to 1 GiB; default 16 MiB (16777216).
    #[serde(default = "default_window_bytes")]
    #[schemars(range(min = 1, max = MAX_WINDOW_BYTES))]
    pub window_bytes: i64,
    /// Most entries in one batch. At least 1; default 512.
    #[serde(default = "default_batch_entries")]
    #[schemars(range(min = 1))]
    pub batch_entries: i32,
    /// Most bytes in one batch (a single larger entry still goes alone). 1 to 8 MiB; a batch
    /// never exceeds the entry limit (`maxEntryBytes`) whatever this says; default 1 MiB
    /// (1048576).
    #[serde(default = "default_batch_bytes")]
    #[schemars(range(min = 1, max = MAX_BATCH_BYTES))]
    pub batch_bytes: i64,
    /// Per-shard queue limit in bytes; past it the shard catches up by reading the log
    /// instead. 64 KiB (65536) to 1 GiB; default 8 MiB (8388608).
    #[serde(default = "default_queue_bytes")]
    #[schemars(range(min = MIN_QUEUE_BYTES, max = MAX_QUEUE_BYTES))]
    pub queue_bytes: i64,
}

fn default_max_entry_bytes() -> i64 {
    DEFAULT_MAX_ENTRY_BYTES as i64
}

// The player's own defaults (each fits its field: the bounds above are far below i32::MAX).
fn default_window() -> i32 {
    crate::limits::DEFAULT_WINDOW as i32
}
fn default_window_bytes() -> i64 {
    crate::limits::DEFAULT_WINDOW_BYTES as i64
}
fn default_batch_entries() -> i32 {
    crate::limits::DEFAULT_BATCH_ENTRIES as i32
}
fn default_batch_bytes() -> i64 {
    crate::limits::DEFAULT_BATCH_BYTES as i64
}
fn default_queue_bytes() -> i64 {
    crate::limits::DEFAULT_QUEUE_BYTES as i64
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            window: default_window(),
            window_bytes: default_window_bytes(),
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
    /// Have the operator run the LogStore: a StatefulSet of log replicas (a Raft group),
    /// each with its own persistent volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedLogStore>,
}

/// A LogStore the operator runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas % 2 == 1")
        .message("logStore.managed.replicas must be odd (1, 3, 5 or 7): an even count of log replicas survives no more failures than one fewer"),
    validation = Rule::new("self.storage == oldSelf.storage && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("logStore.managed.storage and storageClassName cannot change: the log replicas' volume claims are fixed (Kubernetes refuses the StatefulSet's update, which would hold every later change back)")
)]
pub struct ManagedLogStore {
    #[serde(flatten)]
    pub storage: ManagedStorage,
    /// Log replicas: 3 (the default) is a Raft group that keeps every acknowledged entry
    /// and keeps taking appends through the loss of one pod, disk or node; 5 survives two;
    /// 1 is one replica, with no copy beyond its one volume (still a Raft group, so it can
    /// grow). Odd only. Changing it changes the group's membership one replica at a time.
    #[serde(default = "default_log_replicas")]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: i32,
}

fn default_log_replicas() -> i32 {
    3
}

impl LogSource {
    /// The one backend this source names.
    pub fn backend(&self) -> Result<Backend<'_>, CrdError> {
        backend(
            "LogPlayer spec.logStore",
            self.external.as_ref(),
            self.managed.as_ref().map(|m| &m.storage),
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
    /// `Ready`, `Progressing`, `Degraded`, `LeaderElected`, `CertificatesReady` and
    /// `ReconciliationPaused`, with reasons and messages.
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
    /// Largest lag of any shard, in log entries; absent when any is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Everything that is wrong now, most fundamental first (`Degraded` names the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub problems: Vec<StatusProblem>,
    /// A managed LogStore's log replicas, as its log leader reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_store: Option<LogStoreStatus>,
}

/// A managed LogStore's Raft group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStoreStatus {
    /// Log replicas wanted (`spec.logStore.managed.replicas`).
    pub replicas: i32,
    /// Log replicas that vote in the group now; absent while no replica can tell (never 0
    /// for unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<i32>,
    /// The log's id, once its group established one. The operator seeds a group only while
    /// this is unset: a replica back on an empty volume rejoins the group instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_id: Option<String>,
    /// Pod of the log leader; absent when no leader is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The group's Raft term (not a lease epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_term: Option<i64>,
    /// The log leader's last Raft index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_index: Option<i64>,
    /// The Raft index the log leader has committed and applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<i64>,
    /// Each member of the group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<LogReplicaStatus>,
}

/// One member of a managed LogStore's Raft group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogReplicaStatus {
    /// Replica id (pod ordinal + 1).
    pub id: i64,
    /// Its pod.
    pub pod: String,
    /// `leader`, `voter` or `learner`.
    pub role: String,
    /// Raft entries it is behind the leader; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<i64>,
}

/// One thing that is wrong, as a condition reason and a message naming what is at fault.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusProblem {
    /// CamelCase reason, e.g. `PodsPending` or `ApplyFailed`.
    pub reason: String,
    /// What is wrong, naming the objects and values at fault.
    pub message: String,
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
    /// Absent when the LogStore or the shard cannot be asked: unknown, never 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}
