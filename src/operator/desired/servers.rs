//! The objects of a managed server (LogStore or shard): a headless Service and a
//! StatefulSet with a PersistentVolumeClaim per pod (one pod for a shard, one per log
//! replica for a LogStore).

use super::{
    DATA_DIR, Defaults, DesiredError, HEALTH_PORT, HEALTH_PORT_NAME, LOGSTORE_PORT, PodTls,
    SHARD_LABEL, SHARD_PORT, ServerObjects, container_security, http_probe, labels, meta, owner_of,
    pod_env, pod_security, pull_policy_name, selector_labels, shard_server_name, shard_tls_secret,
};
use crate::crd::{Backend, ImagePullPolicy, ManagedStorage, Shard};
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

#[derive(Clone, Copy)]
pub(super) enum ServerKind {
    LogStore,
    Shard,
}

/// What a managed server's objects are built from.
pub(super) struct ServerSpec<'a> {
    pub(super) kind: ServerKind,
    /// Name of the Service and the StatefulSet.
    pub(super) name: String,
    pub(super) ns: &'a str,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) selector: BTreeMap<String, String>,
    pub(super) owner: &'a OwnerReference,
    pub(super) storage: &'a ManagedStorage,
    pub(super) image: String,
    pub(super) image_pull_policy: Option<String>,
    /// Pods of the StatefulSet (1 for a shard server).
    pub(super) pods: i32,
    /// Replicas of one group that must reach each other before any is ready: pods start
    /// in parallel, spread over nodes, and get DNS names before they are ready.
    pub(super) replicated: bool,
    pub(super) tls: PodTls,
}

impl ServerKind {
    /// The container's name and gRPC port.
    fn container(self) -> (&'static str, i32) {
        match self {
            ServerKind::LogStore => ("logstore", LOGSTORE_PORT),
            ServerKind::Shard => ("shard", SHARD_PORT),
        }
    }
}

/// A headless Service in front of the server's one pod: clients dial the pod itself (gRPC
/// keeps one long connection, which a virtual IP would not balance anyway), and the
/// StatefulSet's pod gets DNS.
fn headless_service(s: &ServerSpec) -> Service {
    let (_, port) = s.kind.container();
    Service {
        metadata: meta(s.name.clone(), s.ns, s.labels.clone(), s.owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(s.selector.clone()),
            publish_not_ready_addresses: s.replicated.then_some(true),
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
    }
}

/// The server's container, with its data volume mounted.
fn server_container(s: &ServerSpec, args: Vec<String>) -> Container {
    let (container_name, port) = s.kind.container();
    Container {
        name: container_name.to_owned(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        args: Some(
            args.into_iter()
                .chain([
                    "--health-listen".to_owned(),
                    format!("0.0.0.0:{HEALTH_PORT}"),
                ])
                .collect(),
        ),
        env: Some(pod_env(&s.tls)),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".to_owned()),
                container_port: port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(HEALTH_PORT_NAME.to_owned()),
                container_port: HEALTH_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        // The server's own HTTP probes, TLS or not (see `metrics::Serving`): a TCP connect
        // passes on a frozen process, and the kubelet's gRPC probe cannot speak TLS. Not
        // ready after 2 missed answers; restarted only after a minute without one (5 s
        // each), so that a server short of CPU under load is not restarted for it.
        liveness_probe: Some(Probe {
            timeout_seconds: Some(5),
            ..http_probe("/healthz", HEALTH_PORT_NAME, 10, 6)
        }),
        readiness_probe: Some(http_probe("/readyz", HEALTH_PORT_NAME, 2, 2)),
        resources: s.storage.resources.clone(),
        security_context: Some(container_security()),
        termination_message_policy: Some(super::TERMINATION_MESSAGE_POLICY.to_owned()),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "data".to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            })
            .chain(s.tls.volume().map(|(_, m)| m))
            .collect(),
        ),
        ..Container::default()
    }
}

/// The objects of a managed server running `args`.
pub(super) fn server_objects(s: &ServerSpec, args: Vec<String>) -> ServerObjects {
    let storage = s.storage;
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(s.labels.clone()),
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
        metadata: meta(s.name.clone(), s.ns, s.labels.clone(), s.owner),
        spec: Some(StatefulSetSpec {
            // One writer per data directory: the WAL and the shard database are not shared
            // (a LogStore's replicas each have their own).
            replicas: Some(s.pods),
            pod_management_policy: s.replicated.then(|| "Parallel".to_owned()),
            // Set, so that a partition (or `OnDelete`) set by hand is undone at the next
            // apply: with one, a changed spec would never reach the pods above it.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            service_name: Some(s.name.clone()),
            selector: LabelSelector {
                match_labels: Some(s.selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(s.labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // No API access needed.
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![server_container(s, args)],
                    volumes: s.tls.volume().map(|(v, _)| vec![v]),
                    affinity: s.replicated.then(|| super::spread_over_nodes(&s.selector)),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    ServerObjects {
        service: headless_service(s),
        stateful_set,
    }
}

/// How a Shard's server is secured: as its LogPlayer says (`None`: not found yet, which
/// means the default, mutual TLS; the pod waits for its Secret).
pub fn shard_tls(shard: &Shard, log_player: Option<&crate::crd::LogPlayer>) -> PodTls {
    match log_player.map(|lp| lp.spec.tls.mode) {
        Some(crate::crd::TlsMode::Insecure) => PodTls::Insecure,
        _ => PodTls::Secret(shard_tls_secret(shard)),
    }
}

/// What a managed shard server takes from its Shard's LogPlayer; the default of each when
/// the LogPlayer is not found (a Shard made before it).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromLogPlayer<'a> {
    /// `spec.image`, when set.
    pub image: Option<&'a str>,
    /// `spec.imagePullPolicy`, when set.
    pub pull_policy: Option<ImagePullPolicy>,
    /// `spec.maxEntryBytes`.
    pub max_entry_bytes: Option<i64>,
}

impl<'a> FromLogPlayer<'a> {
    /// What `lp` sets.
    pub fn of(lp: Option<&'a crate::crd::LogPlayer>) -> FromLogPlayer<'a> {
        FromLogPlayer {
            image: lp.and_then(|lp| lp.spec.image.as_deref()),
            pull_policy: lp.and_then(|lp| lp.spec.image_pull_policy),
            max_entry_bytes: lp.map(|lp| lp.spec.max_entry_bytes),
        }
    }
}

/// A server's `--max-entry-bytes` for the LogPlayer's `maxEntryBytes`: none at the default
/// (so that operators of older versions and this one render the same pods for it).
pub(super) fn entry_limit_args(max_entry_bytes: i64) -> Vec<String> {
    if usize::try_from(max_entry_bytes).ok() == Some(crate::limits::DEFAULT_MAX_ENTRY_BYTES) {
        Vec::new()
    } else {
        vec!["--max-entry-bytes".into(), max_entry_bytes.to_string()]
    }
}

/// The objects for a Shard: `Some` only for a managed shard server.
/// `from` is what its LogPlayer sets, and `tls` comes from it too (see [`shard_tls`]).
pub fn shard_objects(
    shard: &Shard,
    defaults: &Defaults,
    from: FromLogPlayer,
    tls: PodTls,
) -> Result<Option<ServerObjects>, DesiredError> {
    let name = shard.name_any();
    let ns = shard.namespace().ok_or_else(|| DesiredError::NoNamespace {
        kind: "Shard",
        name: name.clone(),
    })?;
    shard
        .spec
        .validate_slots()
        .map_err(|source| DesiredError::Shard {
            shard: name.clone(),
            source,
        })?;
    let commit_delay = shard
        .spec
        .commit_delay()
        .map_err(|source| DesiredError::Shard {
            shard: name.clone(),
            source,
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
    let owner = owner_of(shard);
    let server = ServerSpec {
        kind: ServerKind::Shard,
        name: shard_server_name(shard),
        ns: &ns,
        labels,
        selector,
        owner: &owner,
        storage,
        image: from
            .image
            .map_or_else(|| defaults.image.clone(), str::to_owned),
        image_pull_policy: pull_policy_name(from.pull_policy),
        pods: 1,
        replicated: false,
        tls,
    };
    let mut args: Vec<String> = vec![
        "shard".into(),
        "--id".into(),
        name,
        "--data".into(),
        DATA_DIR.into(),
        "--listen".into(),
        format!("0.0.0.0:{SHARD_PORT}"),
    ];
    if let Some(delay) = commit_delay {
        args.push("--commit-delay".into());
        args.push(humantime::format_duration(delay).to_string());
    }
    if let Some(limit) = from.max_entry_bytes {
        args.extend(entry_limit_args(limit));
    }
    Ok(Some(server_objects(&server, args)))
}
