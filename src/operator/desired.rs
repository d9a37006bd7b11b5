//! The objects the operator keeps for a `LogPlayer` and a `Shard`: pure functions from a
//! spec to Kubernetes objects, with no API calls, so every decision is unit-tested.
//!
//! For a LogPlayer named `N` in namespace `NS`:
//! - `N-player`: the players' Deployment (`replicas` pods, spread over nodes), their
//!   ServiceAccount, Role, RoleBinding and Lease name, and a PodDisruptionBudget
//!   (`maxUnavailable: 1`) when `replicas > 1`;
//! - `N-shard-map`: a ConfigMap with the shard map (YAML, as `logplayer player --shard-map`
//!   reads it) built from the selected Shards; the pods carry a hash of it, so a changed map
//!   restarts them;
//! - `N-player-metrics`: a Service in front of the players' `/metrics`;
//! - with `logStore.managed`: `N-logstore`, a headless Service and a one-pod StatefulSet
//!   with a PersistentVolumeClaim.
//!
//! For a Shard named `S` with `managed`: `S-shard`, a headless Service and a one-pod
//! StatefulSet with a PersistentVolumeClaim, running `logplayer shard --id S`.
//!
//! Every object carries an owner reference to its LogPlayer or Shard (controller, blocking
//! deletion), so deleting the resource deletes them; PVCs of the StatefulSets stay (the
//! StatefulSet default), so data outlives a mistaken delete.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    GRPCAction, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{Backend, CrdError, ImagePullPolicy, LogPlayer, ManagedStorage, Shard};

/// Port of a managed LogStore.
pub const LOGSTORE_PORT: i32 = 7000;
/// Port of a managed shard server.
pub const SHARD_PORT: i32 = 7100;
/// Where the players find the shard map.
pub const SHARD_MAP_DIR: &str = "/etc/logplayer";
/// File name of the shard map in its ConfigMap and in [`SHARD_MAP_DIR`].
pub const SHARD_MAP_FILE: &str = "shard-map.yaml";
/// Where managed servers keep their data (the PVC's mount).
pub const DATA_DIR: &str = "/data";
/// Pod-template annotation holding a hash of the shard map.
pub const SHARD_MAP_HASH_ANNOTATION: &str = "logplayer.io/shard-map-hash";
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
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: concat!("ghcr.io/logplayer/logplayer:", env!("CARGO_PKG_VERSION")).to_owned(),
            cluster_domain: String::new(),
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
    Coverage(#[source] CrdError),
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
            DesiredError::Shard { .. } => "InvalidShard",
            DesiredError::Coverage(CrdError::Coverage(issues)) => {
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
            DesiredError::Coverage(_) => "InvalidShard",
            DesiredError::Yaml(_) => "Internal",
        }
    }
}

/// Everything the operator keeps for one LogPlayer.
#[derive(Debug, Clone)]
pub struct PlayerObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub shard_map: ConfigMap,
    pub metrics_service: Service,
    /// Only with `logStore.managed`.
    pub logstore: Option<ServerObjects>,
    pub deployment: Deployment,
    /// Only with `replicas > 1`.
    pub pdb: Option<PodDisruptionBudget>,
}

/// A managed server: its headless Service and its StatefulSet.
#[derive(Debug, Clone)]
pub struct ServerObjects {
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// Name of the players' Deployment, ServiceAccount, Role, RoleBinding, PDB and Lease.
pub fn player_name(lp: &LogPlayer) -> String {
    format!("{}-player", lp.name_any())
}

/// Name of the players' shard-map ConfigMap.
pub fn shard_map_name(lp: &LogPlayer) -> String {
    format!("{}-shard-map", lp.name_any())
}

/// Name of the players' metrics Service.
pub fn metrics_service_name(lp: &LogPlayer) -> String {
    format!("{}-player-metrics", lp.name_any())
}

/// Name of a managed LogStore's Service and StatefulSet.
pub fn logstore_name(lp: &LogPlayer) -> String {
    format!("{}-logstore", lp.name_any())
}

/// Name of a managed shard server's Service and StatefulSet.
pub fn shard_server_name(shard: &Shard) -> String {
    format!("{}-shard", shard.name_any())
}

fn service_host(name: &str, ns: &str, defaults: &Defaults) -> String {
    if defaults.cluster_domain.is_empty() {
        format!("{name}.{ns}.svc")
    } else {
        format!("{name}.{ns}.svc.{}", defaults.cluster_domain)
    }
}

/// The LogStore address the players use: the external endpoint, or the managed LogStore's
/// Service. `None` when the spec names both or neither.
pub fn logstore_endpoint(lp: &LogPlayer, ns: &str, defaults: &Defaults) -> Option<String> {
    match lp.spec.log_store.backend().ok()? {
        Backend::External(e) => Some(e.endpoint.clone()),
        Backend::Managed(_) => Some(format!(
            "{}:{LOGSTORE_PORT}",
            service_host(&logstore_name(lp), ns, defaults)
        )),
    }
}

/// The address the players use for a shard: its external endpoint, or the managed server's
/// Service. `None` when the spec names both or neither.
pub fn shard_endpoint(shard: &Shard, defaults: &Defaults) -> Option<String> {
    match shard.spec.backend().ok()? {
        Backend::External(e) => Some(e.endpoint.clone()),
        Backend::Managed(_) => {
            let ns = shard.namespace().unwrap_or_else(|| "default".to_owned());
            Some(format!(
                "{}:{SHARD_PORT}",
                service_host(&shard_server_name(shard), &ns, defaults)
            ))
        }
    }
}

/// Labels common to everything the operator creates for `instance` (a LogPlayer name).
fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "logplayer".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "logplayer".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            super::FIELD_MANAGER.to_owned(),
        ),
    ])
}

/// The labels that select the pods of one component (a subset of [`labels`]).
fn selector_labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "logplayer".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The label selector (as a string) of a LogPlayer's player pods.
pub fn player_pod_selector(lp: &LogPlayer) -> String {
    selector_labels(&lp.name_any(), "player")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
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

fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    // `controller_owner_ref` is None only without a name or uid; objects read from the API
    // server always have both, and a spec-only object in a test gets empty strings.
    obj.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
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

fn pod_env() -> Vec<EnvVar> {
    vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
    ]
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

fn pull_policy(p: Option<ImagePullPolicy>) -> Option<String> {
    p.map(|p| {
        match p {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
        .to_owned()
    })
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn grpc_probe(port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port,
            service: None,
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The shard map YAML for the selected shards (sorted by name), after checking that every
/// shard's spec is valid and that together they own every slot exactly once.
pub fn shard_map_yaml(shards: &[Shard], defaults: &Defaults) -> Result<String, DesiredError> {
    let mut sorted: Vec<&Shard> = shards.iter().collect();
    sorted.sort_by_key(|s| s.name_any());
    let mut entries = Vec::with_capacity(sorted.len());
    for s in &sorted {
        let shard = s.name_any();
        s.spec
            .validate_slots()
            .map_err(|source| DesiredError::Shard {
                shard: shard.clone(),
                source,
            })?;
        s.spec.backend().map_err(|source| DesiredError::Shard {
            shard: shard.clone(),
            source,
        })?;
        let addr = shard_endpoint(s, defaults).unwrap_or_default();
        entries.push(crate::routing::ShardSpec {
            id: shard,
            addr,
            slots: s.spec.slots.iter().map(|r| r.to_string()).collect(),
        });
    }
    let coverage: Vec<_> = sorted
        .iter()
        .map(|s| (s.name_any(), s.spec.slots.clone()))
        .collect();
    crate::crd::check_coverage(&coverage).map_err(DesiredError::Coverage)?;
    #[derive(serde::Serialize)]
    struct MapFile {
        version: u64,
        shards: Vec<crate::routing::ShardSpec>,
    }
    Ok(serde_yaml::to_string(&MapFile {
        version: 1,
        shards: entries,
    })?)
}

/// A short, stable hash of the shard map (FNV-1a, hex), put on the pod template so that a
/// changed map rolls the players.
fn map_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The objects for a LogPlayer that drives `shards` (already selected: same namespace,
/// naming it, matching its selector).
pub fn player_objects(
    lp: &LogPlayer,
    shards: &[Shard],
    defaults: &Defaults,
) -> Result<PlayerObjects, DesiredError> {
    let name = lp.name_any();
    let ns = lp.namespace().ok_or_else(|| DesiredError::NoNamespace {
        kind: "LogPlayer",
        name: name.clone(),
    })?;
    let spec = &lp.spec;
    let timing = spec.lease.timing().map_err(DesiredError::Spec)?;
    let checkpoint = spec.checkpoint_interval().map_err(DesiredError::Spec)?;
    let backend = spec.log_store.backend().map_err(DesiredError::Spec)?;
    let map = shard_map_yaml(shards, defaults)?;
    let logstore = logstore_endpoint(lp, &ns, defaults).unwrap_or_default();

    let owner = owner_of(lp);
    let player = player_name(lp);
    let player_labels = labels(&name, "player");
    let player_selector = selector_labels(&name, "player");
    let image = spec.image.clone().unwrap_or_else(|| defaults.image.clone());

    let service_account = ServiceAccount {
        metadata: meta(player.clone(), &ns, player_labels.clone(), &owner),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(player.clone(), &ns, player_labels.clone(), &owner),
        rules: Some(player_rules(&player)),
    };
    let role_binding = RoleBinding {
        metadata: meta(player.clone(), &ns, player_labels.clone(), &owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: player.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: player.clone(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    let shard_map = ConfigMap {
        metadata: meta(shard_map_name(lp), &ns, player_labels.clone(), &owner),
        data: Some(BTreeMap::from([(SHARD_MAP_FILE.to_owned(), map.clone())])),
        ..ConfigMap::default()
    };
    let metrics_service = Service {
        metadata: meta(metrics_service_name(lp), &ns, player_labels.clone(), &owner),
        spec: Some(ServiceSpec {
            selector: Some(player_selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                port: spec.metrics_port,
                target_port: Some(IntOrString::String("metrics".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let d = &spec.delivery;
    let mut args: Vec<String> = vec![
        "player".into(),
        "--logstore".into(),
        logstore,
        "--shard-map".into(),
        format!("{SHARD_MAP_DIR}/{SHARD_MAP_FILE}"),
        "--lease-name".into(),
        player.clone(),
        "--lease-duration".into(),
        humantime::format_duration(timing.lease_duration).to_string(),
        "--renew-deadline".into(),
        humantime::format_duration(timing.renew_deadline).to_string(),
        "--retry-period".into(),
        humantime::format_duration(timing.retry_period).to_string(),
        "--cursor-shard-status".into(),
        "--checkpoint-interval".into(),
        humantime::format_duration(checkpoint).to_string(),
        "--metrics-listen".into(),
        format!("0.0.0.0:{}", spec.metrics_port),
        "--window".into(),
        d.window.to_string(),
        "--batch-entries".into(),
        d.batch_entries.to_string(),
        "--batch-bytes".into(),
        d.batch_bytes.to_string(),
        "--queue-bytes".into(),
        d.queue_bytes.to_string(),
    ];
    if spec.retain_log {
        args.push("--retain-log".into());
    }
    let container = Container {
        name: "player".to_owned(),
        image: Some(image.clone()),
        image_pull_policy: pull_policy(spec.image_pull_policy),
        args: Some(args),
        env: Some(pod_env()),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: spec.metrics_port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        resources: spec.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "shard-map".to_owned(),
            mount_path: SHARD_MAP_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let mut pod_labels = player_labels.clone();
    pod_labels.extend(player_selector.clone());
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([(
                SHARD_MAP_HASH_ANNOTATION.to_owned(),
                map_hash(&map),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(player.clone()),
            security_context: Some(pod_security()),
            // A standby must be on another node than the leader for a node loss to be
            // survivable; preferred, so a one-node cluster still runs every replica.
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(player_selector.clone()),
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
            }),
            // The leader releases its lease on SIGTERM; a few seconds covers the drain.
            termination_grace_period_seconds: Some(10),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "shard-map".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: shard_map_name(lp),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
    };
    let deployment = Deployment {
        metadata: meta(player.clone(), &ns, player_labels.clone(), &owner),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(player_selector.clone()),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let pdb = (spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(player.clone(), &ns, player_labels.clone(), &owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(player_selector.clone()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });
    let logstore = match backend {
        Backend::External(_) => None,
        Backend::Managed(storage) => Some(server_objects(
            ServerKind::LogStore,
            logstore_name(lp),
            &ns,
            labels(&name, "logstore"),
            selector_labels(&name, "logstore"),
            &owner,
            storage,
            image,
            pull_policy(spec.image_pull_policy),
            vec![
                "logstore".into(),
                "--data".into(),
                DATA_DIR.into(),
                "--listen".into(),
                format!("0.0.0.0:{LOGSTORE_PORT}"),
            ],
        )),
    };
    Ok(PlayerObjects {
        service_account,
        role,
        role_binding,
        shard_map,
        metrics_service,
        logstore,
        deployment,
        pdb,
    })
}

/// The players' permissions, the least they need: their own Lease (create cannot be limited
/// to a name), reading Shards (cursors) and patching Shard status (saving cursors).
pub fn player_rules(lease: &str) -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, names: Option<&str>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: names.map(|n| vec![n.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule("coordination.k8s.io", "leases", None, &["create"]),
        rule(
            "coordination.k8s.io",
            "leases",
            Some(lease),
            &["get", "update"],
        ),
        rule(crate::crd::GROUP, "shards", None, &["get", "list", "watch"]),
        rule(crate::crd::GROUP, "shards/status", None, &["get", "patch"]),
    ]
}

#[derive(Clone, Copy)]
enum ServerKind {
    LogStore,
    Shard,
}

#[allow(clippy::too_many_arguments)]
fn server_objects(
    kind: ServerKind,
    name: String,
    ns: &str,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    owner: &OwnerReference,
    storage: &ManagedStorage,
    image: String,
    image_pull_policy: Option<String>,
    args: Vec<String>,
) -> ServerObjects {
    let (container_name, port) = match kind {
        ServerKind::LogStore => ("logstore", LOGSTORE_PORT),
        ServerKind::Shard => ("shard", SHARD_PORT),
    };
    let service = Service {
        metadata: meta(name.clone(), ns, labels.clone(), owner),
        spec: Some(ServiceSpec {
            // Headless: clients dial the pod itself (gRPC keeps one long connection, which a
            // virtual IP would not balance anyway), and the StatefulSet's pod gets DNS.
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port,
                target_port: Some(IntOrString::String("grpc".to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("kubernetes.io/h2c".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    let container = Container {
        name: container_name.to_owned(),
        image: Some(image),
        image_pull_policy,
        args: Some(args),
        env: Some(pod_env()),
        ports: Some(vec![ContainerPort {
            name: Some("grpc".to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(grpc_probe(port, 10, 3)),
        readiness_probe: Some(grpc_probe(port, 2, 2)),
        resources: storage.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.storage.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta(name.clone(), ns, labels, owner),
        spec: Some(StatefulSetSpec {
            // One writer per data directory: the WAL and the shard database are not shared.
            replicas: Some(1),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // No API access needed.
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    ServerObjects {
        service,
        stateful_set,
    }
}

/// The objects for a Shard: `Some` only for a managed shard server.
pub fn shard_objects(
    shard: &Shard,
    defaults: &Defaults,
    image: Option<&str>,
) -> Result<Option<ServerObjects>, DesiredError> {
    let name = shard.name_any();
    let ns = shard.namespace().ok_or_else(|| DesiredError::NoNamespace {
        kind: "Shard",
        name: name.clone(),
    })?;
    let storage = match shard.spec.backend() {
        Ok(Backend::Managed(storage)) => storage,
        Ok(Backend::External(_)) => return Ok(None),
        Err(source) => {
            return Err(DesiredError::Shard {
                shard: name,
                source,
            });
        }
    };
    let instance = &shard.spec.log_player;
    let mut labels = labels(instance, "shard");
    labels.insert(SHARD_LABEL.to_owned(), name.clone());
    let mut selector = selector_labels(instance, "shard");
    selector.insert(SHARD_LABEL.to_owned(), name.clone());
    Ok(Some(server_objects(
        ServerKind::Shard,
        shard_server_name(shard),
        &ns,
        labels,
        selector,
        &owner_of(shard),
        storage,
        image.map_or_else(|| defaults.image.clone(), str::to_owned),
        None,
        vec![
            "shard".into(),
            "--id".into(),
            name,
            "--data".into(),
            DATA_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{SHARD_PORT}"),
        ],
    )))
}
