//! The NetworkPolicies of a LogPlayer (`spec.networkPolicy`): who may open a connection to
//! its pods. The log replicas take gRPC from the players, each other, the operator and the
//! writers; a managed Shard's server from its LogPlayer's players and the operator; the
//! players' metrics port from the selected namespaces. Each policy selects the pods it
//! protects, so all other ingress to them is denied. Egress is not restricted.

use super::{
    Defaults, LOGSTORE_PORT, SHARD_LABEL, SHARD_PORT, labels, meta, owner_of, selector_labels,
};
use crate::crd::{LogPlayer, PeerSelector, Shard};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The label a writer pod carries, by default, to reach a LogPlayer's LogStore: its value
/// is the LogPlayer's name.
pub const WRITER_LABEL: &str = "logplayer.io/writer";

fn select(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// Pods of `instance`'s `component` in the policy's own namespace.
fn component(instance: &str, component: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(select(selector_labels(instance, component))),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods, in its namespace.
fn operator(defaults: &Defaults) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(select(BTreeMap::from([
            (
                "app.kubernetes.io/part-of".to_owned(),
                "logplayer".to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                "operator".to_owned(),
            ),
        ]))),
        namespace_selector: Some(select(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            defaults.operator_namespace.clone(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn policy(
    name: String,
    ns: &str,
    meta_labels: BTreeMap<String, String>,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    protects: BTreeMap<String, String>,
    rule: NetworkPolicyIngressRule,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(name, ns, meta_labels, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(select(protects)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![rule]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The writers that may reach the LogStore: as the spec says, or the default label.
fn writers(lp: &LogPlayer) -> Vec<NetworkPolicyPeer> {
    let default = || {
        vec![PeerSelector {
            pod_selector: select(BTreeMap::from([(WRITER_LABEL.to_owned(), lp.name_any())])),
            namespace_selector: None,
        }]
    };
    lp.spec
        .network_policy
        .writers
        .clone()
        .unwrap_or_else(default)
        .into_iter()
        .map(|w| NetworkPolicyPeer {
            pod_selector: Some(w.pod_selector),
            namespace_selector: w.namespace_selector,
            ..NetworkPolicyPeer::default()
        })
        .collect()
}

/// The LogPlayer's NetworkPolicies (none when disabled): its players' metrics, and with a
/// managed LogStore its log replicas'.
pub fn player_network_policies(
    lp: &LogPlayer,
    ns: &str,
    defaults: &Defaults,
) -> Vec<NetworkPolicy> {
    let np = &lp.spec.network_policy;
    if !np.enabled {
        return Vec::new();
    }
    let name = lp.name_any();
    let owner = owner_of(lp);
    let metrics_from = NetworkPolicyPeer {
        namespace_selector: Some(np.metrics_namespace_selector.clone().unwrap_or_else(|| {
            select(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                ns.to_owned(),
            )]))
        })),
        ..NetworkPolicyPeer::default()
    };
    let mut out = vec![policy(
        super::player_name(lp),
        ns,
        labels(&name, "player"),
        &owner,
        selector_labels(&name, "player"),
        NetworkPolicyIngressRule {
            from: Some(vec![metrics_from]),
            ports: Some(vec![tcp(lp.spec.metrics_port)]),
        },
    )];
    if lp.spec.log_store.managed.is_some() {
        let mut from = vec![
            component(&name, "player"),
            component(&name, "logstore"),
            operator(defaults),
        ];
        from.extend(writers(lp));
        out.push(policy(
            super::logstore_name(lp),
            ns,
            labels(&name, "logstore"),
            &owner,
            selector_labels(&name, "logstore"),
            NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![tcp(LOGSTORE_PORT)]),
            },
        ));
    }
    out
}

/// A managed Shard's NetworkPolicy: its server takes gRPC from its LogPlayer's players and
/// the operator. None for an external Shard, or when its LogPlayer disables them (a Shard
/// whose LogPlayer is not there yet gets one: the default).
pub fn shard_network_policy(
    shard: &Shard,
    log_player: Option<&LogPlayer>,
    defaults: &Defaults,
) -> Option<NetworkPolicy> {
    let ns = shard.namespace()?;
    shard.spec.managed.as_ref()?;
    if log_player.is_some_and(|lp| !lp.spec.network_policy.enabled) {
        return None;
    }
    let instance = &shard.spec.log_player;
    let mut protects = selector_labels(instance, "shard");
    protects.insert(SHARD_LABEL.to_owned(), shard.name_any());
    let mut meta_labels = labels(instance, "shard");
    meta_labels.insert(SHARD_LABEL.to_owned(), shard.name_any());
    Some(policy(
        super::shard_server_name(shard),
        &ns,
        meta_labels,
        &owner_of(shard),
        protects,
        NetworkPolicyIngressRule {
            from: Some(vec![component(instance, "player"), operator(defaults)]),
            ports: Some(vec![tcp(SHARD_PORT)]),
        },
    ))
}
