//! The objects the operator keeps for a `LogPlayer` and a `Shard`: pure functions from a
//! spec to Kubernetes objects, with no API calls, so every decision is unit-tested.
//!
//! For a LogPlayer named `N` in namespace `NS`:
//! - `N-player`: the players' Deployment (`replicas` pods, spread over nodes), their
//!   ServiceAccount, their Role (their own Lease and their own Shards' status, by name:
//!   `PlayerObjects::role`) with its RoleBinding, and Lease name, and a PodDisruptionBudget
//!   (`maxUnavailable: 1`) when `replicas > 1`;
//! - `N-player-grant`: a RoleBinding of the operator itself to the players' ClusterRole
//!   ([`player_rules`], shipped with the operator) in `NS`. Kubernetes lets a Role be
//!   written only by whoever holds its permissions, so the operator holds them where it
//!   runs players (and nowhere else), to grant each LogPlayer's players their slice;
//! - `N-shard-map`: a ConfigMap with the shard map (YAML, as `logplayer player --shard-map`
//!   reads it) built from the selected Shards; the pods carry a hash of it, so a changed map
//!   restarts them;
//! - `N-player-metrics`: a Service in front of the players' `/metrics`;
//! - with `logStore.managed`: `N-logstore`, a StatefulSet of `logStore.managed.replicas`
//!   log replicas (pods started in parallel, spread over nodes, a PersistentVolumeClaim
//!   each), the headless Service that gives each replica its DNS name (ready or not: the
//!   replicas must reach each other to become ready), a PodDisruptionBudget
//!   (`maxUnavailable: 1`), and `N-logstore-client`, a Service for writers. Replica `i + 1`
//!   is pod ordinal `i`; pod 0 seeds the Raft group alone and the operator adds the others
//!   (and removes those scaled away) through the LogStore's membership calls
//!   (`operator::log_members`).
//!
//! For a Shard named `S` with `managed`: `S-shard`, a headless Service and a one-pod
//! StatefulSet with a PersistentVolumeClaim, running `logplayer shard --id S`.
//!
//! Every object carries an owner reference to its LogPlayer or Shard (controller, blocking
//! deletion), so deleting the resource deletes them; PVCs of the StatefulSets stay (the
//! StatefulSet default), so data outlives a mistaken delete.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::crd::{CrdError, ImagePullPolicy};

pub use super::names::*;
mod player;
pub use player::*;
mod servers;
pub use servers::*;
mod network;
pub use network::*;
#[cfg(test)]
mod tests;

/// Port of a managed LogStore.
pub const LOGSTORE_PORT: i32 = 7000;
/// Port of a managed shard server.
pub const SHARD_PORT: i32 = 7100;
/// Port of a managed server's HTTP probes (`--health-listen`).
pub const HEALTH_PORT: i32 = 8080;
/// That port's name in the container.
const HEALTH_PORT_NAME: &str = "health";
/// Where the players find the shard map.
pub const SHARD_MAP_DIR: &str = "/etc/logplayer";
/// File name of the shard map in its ConfigMap and in [`SHARD_MAP_DIR`].
pub const SHARD_MAP_FILE: &str = "shard-map.yaml";
/// Where managed servers keep their data (the PVC's mount).
pub const DATA_DIR: &str = "/data";
/// Pod-template annotation holding a hash of the shard map.
pub const SHARD_MAP_HASH_ANNOTATION: &str = "logplayer.io/shard-map-hash";
/// Pod-template annotation holding the uid of the players' ServiceAccount: a
/// ServiceAccount deleted (and made again by the operator, with a new uid) makes every
/// token its pods hold invalid until the kubelet refreshes it (up to an hour), and with
/// them the Lease; a new uid rolls the pods instead.
pub const SERVICE_ACCOUNT_UID_ANNOTATION: &str = "logplayer.io/service-account-uid";
/// Label naming the Shard a managed shard server's objects belong to.
pub const SHARD_LABEL: &str = "logplayer.io/shard";
/// The uid and gid every container runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// Settings of the operator that fill what a spec leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Image of the player, LogStore and shard pods when a LogPlayer sets no `image`.
    pub image: String,
    /// DNS suffix of Services: `<svc>.<ns>.svc.<cluster_domain>`; empty gives `<svc>.<ns>.svc`,
    /// which resolves in any cluster through the pods' search path.
    pub cluster_domain: String,
    /// The ClusterRole holding the players' permissions ([`player_rules`]), to which the
    /// operator binds itself in each namespace where it runs players (`PlayerObjects::operator_binding`).
    pub player_cluster_role: String,
    /// Who the operator is to the API server (its SelfSubjectReview's username, e.g.
    /// `system:serviceaccount:logplayer-system:logplayer-operator`): the subject of its
    /// bindings to [`Defaults::player_cluster_role`]. The operator learns it at start (it
    /// stops if it cannot); `None` only where objects are built without an API server, and
    /// then no such binding is made.
    pub operator_user: Option<String>,
    /// The operator's own namespace: its pods may reach the servers (NetworkPolicies).
    pub operator_namespace: String,
}

/// Default [`Defaults::player_cluster_role`], as `deploy/` and the chart (for a release named
/// `logplayer-operator`) name it.
pub const PLAYER_CLUSTER_ROLE: &str = "logplayer-operator-player";

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: concat!("ghcr.io/logplayer/logplayer:", env!("CARGO_PKG_VERSION")).to_owned(),
            cluster_domain: String::new(),
            player_cluster_role: PLAYER_CLUSTER_ROLE.to_owned(),
            operator_user: Some(
                "system:serviceaccount:logplayer-system:logplayer-operator".to_owned(),
            ),
            operator_namespace: "logplayer-system".to_owned(),
        }
    }
}

/// Why the objects for a spec cannot be built. Each is something the user can fix, and
/// [`DesiredError::reason`] is the condition reason that names it.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The resource has no namespace (the CRDs are namespaced, so only a broken object).
    #[error("{kind} {name} has no namespace")]
    NoNamespace { kind: &'static str, name: String },
    /// A field of the LogPlayer spec is invalid (lease timing, durations, log source).
    #[error("invalid LogPlayer spec: {0}")]
    Spec(#[source] CrdError),
    /// A selected Shard's own spec is invalid.
    #[error("Shard {shard}: {source}")]
    Shard {
        shard: String,
        #[source]
        source: CrdError,
    },
    /// The selected Shards do not own every slot exactly once.
    #[error("{0}")]
    Coverage(#[source] crate::routing::slots::Coverage),
    /// Two selected Shards have one address.
    #[error("{0}")]
    SharedAddress(#[source] crate::routing::RoutingError),
    /// A selected Shard's endpoint is the LogStore's address.
    #[error(
        "Shard {shard}'s endpoint {addr} is the LogStore's address: the players refuse a shard \
         there (it would never take a delivery); point the Shard at its own shard server"
    )]
    ShardAtLogStore { shard: String, addr: String },
    /// The player's args did not parse (a bug, not user input).
    #[error("building the player's args: {0}")]
    Args(String),
    /// The shard map did not serialize (a bug, not user input).
    #[error("serializing the shard map: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

impl DesiredError {
    /// The condition reason (CamelCase) that names the problem.
    pub fn reason(&self) -> &'static str {
        match self {
            DesiredError::NoNamespace { .. } => "NoNamespace",
            DesiredError::Spec(_) => "InvalidSpec",
            DesiredError::Shard { .. }
            | DesiredError::SharedAddress(_)
            | DesiredError::ShardAtLogStore { .. } => "InvalidShard",
            DesiredError::Coverage(crate::routing::slots::Coverage(issues)) => {
                use crate::crd::CoverageIssue as C;
                if issues.iter().any(|i| matches!(i, C::NoShards)) {
                    "NoShards"
                } else if issues.iter().any(|i| matches!(i, C::Overlap { .. })) {
                    "SlotsOverlap"
                } else if issues.iter().any(|i| matches!(i, C::Hole { .. })) {
                    "SlotsUnowned"
                } else {
                    "InvalidShard"
                }
            }
            DesiredError::Yaml(_) | DesiredError::Args(_) => "Internal",
        }
    }
}

/// Everything the operator keeps for one LogPlayer.
#[derive(Debug, Clone)]
pub struct PlayerObjects {
    pub service_account: ServiceAccount,
    /// The operator's own binding to the players' ClusterRole in this namespace (applied
    /// before `role`, which it may only write while it holds the Role's permissions); `None`
    /// when the operator does not know who it is.
    pub operator_binding: Option<RoleBinding>,
    /// The players' permissions: their Lease and their Shards, by name.
    pub role: Role,
    /// Binds `role` to the players' ServiceAccount.
    pub role_binding: RoleBinding,
    pub shard_map: ConfigMap,
    pub metrics_service: Service,
    /// Only with `logStore.managed`.
    pub logstore: Option<LogStoreObjects>,
    pub deployment: Deployment,
    /// Only with `replicas > 1`.
    pub pdb: Option<PodDisruptionBudget>,
    /// The players' and (managed) log replicas' NetworkPolicies, unless disabled.
    pub network_policies: Vec<NetworkPolicy>,
}

/// A managed server: its headless Service and its StatefulSet.
#[derive(Debug, Clone)]
pub struct ServerObjects {
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// A managed LogStore: its replicas' headless Service and StatefulSet, a client Service,
/// and a PodDisruptionBudget (one replica down at a time).
#[derive(Debug, Clone)]
pub struct LogStoreObjects {
    pub server: ServerObjects,
    pub client_service: Service,
    pub pdb: PodDisruptionBudget,
}

/// Pods selected by `selector` preferably on different nodes (a node loss then takes one);
/// preferred, so a one-node cluster still runs them all.
fn spread_over_nodes(selector: &BTreeMap<String, String>) -> k8s_openapi::api::core::v1::Affinity {
    use k8s_openapi::api::core::v1::{
        Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector.clone()),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn meta(
    name: String,
    ns: &str,
    labels: BTreeMap<String, String>,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

pub(super) fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    // `controller_owner_ref` is None only without a name or uid; objects read from the API
    // server always have both, and a spec-only object in a test gets empty strings. It
    // leaves blockOwnerDeletion unset; set it, so foreground deletion waits for the objects.
    let mut owner = obj
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
    owner.block_owner_deletion = Some(true);
    owner
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// How a pod's gRPC connections are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodTls {
    /// Mutual TLS with the certificate in this Secret (type `kubernetes.io/tls`, mounted at
    /// [`TLS_DIR`]); the pod reads a renewed one without a restart.
    Secret(String),
    /// Plaintext (`spec.tls.mode: Insecure`).
    Insecure,
}

impl PodTls {
    /// The Secret volume and its mount, with TLS.
    fn volume(&self) -> Option<(Volume, VolumeMount)> {
        let PodTls::Secret(secret) = self else {
            return None;
        };
        let volume = Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // Readable by the pods' group (fsGroup) only.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        let mount = VolumeMount {
            name: "tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        };
        Some((volume, mount))
    }
}

/// Where a pod's certificate Secret is mounted.
pub const TLS_DIR: &str = "/etc/logplayer-tls";

fn pod_env(tls: &PodTls) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
    ];
    match tls {
        PodTls::Secret(_) => {
            env.push(value("LOGPLAYER_TLS_CERT", format!("{TLS_DIR}/tls.crt")));
            env.push(value("LOGPLAYER_TLS_KEY", format!("{TLS_DIR}/tls.key")));
            env.push(value("LOGPLAYER_TLS_CA", format!("{TLS_DIR}/ca.crt")));
        }
        PodTls::Insecure => env.push(value("LOGPLAYER_INSECURE", "true".to_owned())),
    }
    env
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        // Volumes (the PVCs) become writable by the container's group.
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Every container's `terminationMessagePolicy`: a process that exits with an error says
/// why on its last log line (the CLI prints one plain line), and without a termination
/// message file that line becomes the container's `lastState.terminated.message`, which the
/// status shows beside `CrashLoopBackOff` (the kubelet's back-off text alone says nothing
/// of the cause).
const TERMINATION_MESSAGE_POLICY: &str = "FallbackToLogsOnError";

fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..SecurityContext::default()
    }
}

fn pull_policy_name(p: Option<ImagePullPolicy>) -> Option<String> {
    p.map(|p| {
        match p {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
        .to_owned()
    })
}

/// An HTTP GET of `path` on the container's port named `port`.
fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}
