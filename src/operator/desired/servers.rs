//! The objects of a managed server (LogStore or shard): a headless Service and a one-pod
//! StatefulSet with a PersistentVolumeClaim.

use super::{
    DATA_DIR, Defaults, DesiredError, LOGSTORE_PORT, SHARD_LABEL, SHARD_PORT, ServerObjects,
    container_security, grpc_probe, labels, meta, owner_of, pod_env, pod_security,
    pull_policy_name, selector_labels, shard_server_name,
};
use crate::crd::{Backend, ImagePullPolicy, ManagedStorage, Shard};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Service, ServicePort, ServiceSpec, VolumeMount, VolumeResourceRequirements,
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

#[allow(clippy::too_many_arguments)]
pub(super) fn server_objects(
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
        metadata: meta(name.clone(), ns, labels.clone(), owner),
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
                    labels: Some(labels.clone()),
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
/// `image` and `pull_policy` come from the Shard's LogPlayer when it sets them.
pub fn shard_objects(
    shard: &Shard,
    defaults: &Defaults,
    image: Option<&str>,
    pull_policy: Option<ImagePullPolicy>,
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
        pull_policy_name(pull_policy),
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
