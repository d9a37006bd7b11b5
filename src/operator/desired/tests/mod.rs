//! Unit tests of the desired objects: every object, name, owner, arg and error reason,
//! and snapshots of what the operator creates for a sample LogPlayer. This file holds the
//! fixtures; the tests are grouped by what they build.

pub(super) use super::*;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaimSpec, PodSpec, Probe, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::crd::{Coverage, CoverageIssue, LogPlayerSpec, SlotRange};
use crate::crd::{CrdError, LogPlayer, Shard};
use crate::player::args::PlayerArgs;
use crate::routing::{ShardMap, slot};
use serde_json::{Value, json};

mod errors;
mod network;
mod player;
mod servers;
mod snapshots;

pub(super) const UID: &str = "9f0e6c1a-7d2b-4c55-8e61-3a4b5c6d7e8f";

pub(super) fn logplayer(spec: Value) -> LogPlayer {
    let spec: LogPlayerSpec = serde_json::from_value(spec).expect("LogPlayer spec parses");
    let mut lp = LogPlayer::new("demo", spec);
    lp.metadata.namespace = Some("ns".into());
    lp.metadata.uid = Some(UID.into());
    lp
}

/// A managed LogStore (10Gi, class "fast") and settings that differ from the defaults.
pub(super) fn managed_spec() -> Value {
    json!({
        "replicas": 3,
        "lease": {"leaseDuration": "4s", "renewDeadline": "3s", "retryPeriod": "500ms"},
        "checkpointInterval": "2s",
        "delivery": {
            "window": 32,
            "windowBytes": 4_194_304,
            "batchEntries": 256,
            "batchBytes": 2_097_152,
            "queueBytes": 16_777_216
        },
        "metricsPort": 9090,
        "logStore": {"managed": {"storage": "10Gi", "storageClassName": "fast"}}
    })
}

pub(super) fn external_spec() -> Value {
    json!({"logStore": {"external": {"endpoint": "logstore.logs.svc:7000"}}})
}

pub(super) fn lp_with(f: impl FnOnce(&mut Value)) -> LogPlayer {
    let mut spec = managed_spec();
    f(&mut spec);
    logplayer(spec)
}

/// A Shard in "ns" naming LogPlayer "demo"; `backend` is merged into the spec.
pub(super) fn shard(name: &str, slots: &[(i32, i32)], backend: Value) -> Shard {
    let mut spec = json!({
        "logPlayer": "demo",
        "slots": slots
            .iter()
            .map(|&(start, end)| json!({"start": start, "end": end}))
            .collect::<Vec<_>>(),
    });
    for (k, v) in backend.as_object().expect("backend is an object") {
        spec[k] = v.clone();
    }
    let spec: crate::crd::ShardSpec = serde_json::from_value(spec).expect("Shard spec parses");
    let mut s = Shard::new(name, spec);
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some(format!("uid-{name}"));
    s
}

pub(super) fn managed_shard(name: &str, slots: &[(i32, i32)]) -> Shard {
    shard(name, slots, json!({"managed": {"storage": "1Gi"}}))
}

pub(super) fn external_shard(name: &str, slots: &[(i32, i32)], endpoint: &str) -> Shard {
    shard(name, slots, json!({"external": {"endpoint": endpoint}}))
}

/// s0..s3, 4096 slots each, listed out of name order.
pub(super) fn four_shards() -> Vec<Shard> {
    vec![
        managed_shard("s2", &[(8192, 12287)]),
        managed_shard("s0", &[(0, 4095)]),
        managed_shard("s3", &[(12288, 16383)]),
        managed_shard("s1", &[(4096, 8191)]),
    ]
}

/// The objects of `s` with the operator's defaults and no LogPlayer found.
pub(super) fn shard_objects_alone(s: &Shard) -> Result<Option<ServerObjects>, DesiredError> {
    shard_objects(
        s,
        &Defaults::default(),
        FromLogPlayer::default(),
        shard_tls(s, None),
    )
}

pub(super) fn objects(lp: &LogPlayer, shards: &[Shard]) -> PlayerObjects {
    player_objects(lp, shards, &Defaults::default()).expect("objects build")
}

/// The objects for `lp` with the four sample shards and these operator defaults.
pub(super) fn objects_with(lp: &LogPlayer, defaults: &Defaults) -> PlayerObjects {
    player_objects(lp, &four_shards(), defaults).expect("valid")
}

/// Operator defaults with the cluster domain "cluster.local".
pub(super) fn cluster_local() -> Defaults {
    Defaults {
        cluster_domain: "cluster.local".into(),
        ..Defaults::default()
    }
}

/// Operator defaults with another default image.
pub(super) fn default_image(image: &str) -> Defaults {
    Defaults {
        image: image.into(),
        ..Defaults::default()
    }
}

pub(super) fn demo() -> PlayerObjects {
    objects(&logplayer(managed_spec()), &four_shards())
}

pub(super) fn err(lp: &LogPlayer, shards: &[Shard]) -> DesiredError {
    player_objects(lp, shards, &Defaults::default()).expect_err("spec is invalid")
}

pub(super) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

pub(super) fn player_container(o: &PlayerObjects) -> &Container {
    let pod = pod_spec(&o.deployment);
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

pub(super) fn args(o: &PlayerObjects) -> Vec<String> {
    player_container(o).args.clone().expect("args")
}

/// The player container's args parsed by the player's own parser.
pub(super) fn parsed_args(o: &PlayerObjects) -> PlayerArgs {
    let a = args(o);
    PlayerArgs::parse_without_env(&a[1..]).unwrap_or_else(|e| panic!("{e}: {a:?}"))
}

/// The value following `flag` in `args`.
pub(super) fn arg_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("{flag} has no value in {args:?}"))
}

pub(super) fn hash(o: &PlayerObjects) -> String {
    o.deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(SHARD_MAP_HASH_ANNOTATION))
        .cloned()
        .expect("shard-map hash annotation")
}

pub(super) fn map_text(o: &PlayerObjects) -> String {
    o.shard_map
        .data
        .as_ref()
        .and_then(|d| d.get(SHARD_MAP_FILE))
        .cloned()
        .expect("shard-map.yaml in the ConfigMap")
}

pub(super) fn load_map(text: &str) -> ShardMap {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(SHARD_MAP_FILE);
    std::fs::write(&path, text).expect("write the shard map");
    ShardMap::from_file(&path).expect("the players can load the shard map")
}

pub(super) fn selector_of(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .expect("selector")
}

/// Checks that the pods of `spec` carry every label of its `selector`.
pub(super) fn assert_pods_carry(spec: &StatefulSetSpec, selector: &BTreeMap<String, String>) {
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    for (k, v) in selector {
        assert_eq!(pod_labels.get(k), Some(v));
    }
}

/// The storage a volume claim requests.
pub(super) fn requested_storage(claim: &PersistentVolumeClaimSpec) -> Option<&Quantity> {
    claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
}

pub(super) fn sts_container(sts: &StatefulSet) -> &Container {
    let pod = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

pub(super) fn expected_owner() -> OwnerReference {
    OwnerReference {
        api_version: "logplayer.io/v1alpha1".into(),
        kind: "LogPlayer".into(),
        name: "demo".into(),
        uid: UID.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// (what, name, metadata) of every object for a LogPlayer.
pub(super) fn all_meta(o: &PlayerObjects) -> Vec<(&'static str, &ObjectMeta)> {
    let mut out = vec![
        ("ServiceAccount", &o.service_account.metadata),
        ("RoleBinding", &o.role_binding.metadata),
        ("ConfigMap", &o.shard_map.metadata),
        ("metrics Service", &o.metrics_service.metadata),
        ("Deployment", &o.deployment.metadata),
    ];
    if let Some(ls) = &o.logstore {
        out.push(("LogStore Service", &ls.server.service.metadata));
        out.push(("LogStore client Service", &ls.client_service.metadata));
        out.push(("LogStore StatefulSet", &ls.server.stateful_set.metadata));
        out.push(("LogStore PodDisruptionBudget", &ls.pdb.metadata));
    }
    if let Some(pdb) = &o.pdb {
        out.push(("PodDisruptionBudget", &pdb.metadata));
    }
    out
}
