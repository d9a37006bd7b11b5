//! Names and addresses of everything the operator creates, and the labels that select
//! them: one place, so the controllers, the status and the objects agree.

use super::FIELD_MANAGER;
use super::desired::{Defaults, LOGSTORE_PORT, SHARD_PORT};
use crate::crd::{Backend, LogPlayer, Shard};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Name of the players' Deployment, ServiceAccount, Role, RoleBinding, PDB and Lease.
pub fn player_name(lp: &LogPlayer) -> String {
    format!("{}-player", lp.name_any())
}

/// Name of the operator's own RoleBinding (to the players' ClusterRole) in a LogPlayer's
/// namespace: it may grant the players only what it holds there. (Not `<logplayer>-operator`:
/// the chart's namespaced install has a RoleBinding `logplayer-operator` in each namespace,
/// which a LogPlayer named `logplayer` would then take for its own.)
pub fn operator_binding_name(lp: &LogPlayer) -> String {
    format!("{}-player-grant", lp.name_any())
}

/// Name of the players' shard-map ConfigMap.
pub fn shard_map_name(lp: &LogPlayer) -> String {
    shard_map_name_of(&lp.name_any())
}

/// [`shard_map_name`] of the LogPlayer named `lp`.
pub fn shard_map_name_of(lp: &str) -> String {
    format!("{lp}-shard-map")
}

/// Name of the players' metrics Service.
pub fn metrics_service_name(lp: &LogPlayer) -> String {
    format!("{}-player-metrics", lp.name_any())
}

/// Name of a managed LogStore's headless Service (the replicas' own DNS names), its
/// StatefulSet and its PodDisruptionBudget.
pub fn logstore_name(lp: &LogPlayer) -> String {
    format!("{}-logstore", lp.name_any())
}

/// Name of a managed LogStore's client Service (any ready replica; one that does not lead
/// names the leader).
pub fn logstore_client_name(lp: &LogPlayer) -> String {
    format!("{}-logstore-client", lp.name_any())
}

/// The log replicas a managed LogStore should have (`logStore.managed.replicas`); 0 when
/// the LogStore is not managed.
pub fn log_replicas(lp: &LogPlayer) -> i32 {
    lp.spec.log_store.managed.as_ref().map_or(0, |m| m.replicas)
}

/// The address replica `id` (pod ordinal `id - 1`) of a managed LogStore is dialed at, by
/// its peers and by clients: its own DNS name under the headless Service.
pub fn log_replica_addr(lp: &LogPlayer, ns: &str, defaults: &Defaults, id: u64) -> String {
    let name = logstore_name(lp);
    format!(
        "{name}-{}.{}:{LOGSTORE_PORT}",
        id.saturating_sub(1),
        service_host(&name, ns, defaults)
    )
}

/// Name of a managed shard server's Service and StatefulSet.
pub fn shard_server_name(shard: &Shard) -> String {
    format!("{}-shard", shard.name_any())
}

/// Name of a managed shard server's certificate Secret.
pub fn shard_tls_secret(shard: &Shard) -> String {
    format!("{}-shard-tls", shard.name_any())
}

/// Name of a LogPlayer's CA Secret (`spec.tls.caSecret`, default `<name>-ca`).
pub fn ca_secret(lp: &LogPlayer) -> String {
    lp.spec
        .tls
        .ca_secret
        .clone()
        .unwrap_or_else(|| format!("{}-ca", lp.name_any()))
}

/// Name of one of a LogPlayer's certificate Secrets: `<name>-<what>-tls` (`what`: logstore,
/// player, writer, admin).
pub fn tls_secret(lp: &LogPlayer, what: &str) -> String {
    format!("{}-{what}-tls", lp.name_any())
}

fn service_host(name: &str, ns: &str, defaults: &Defaults) -> String {
    if defaults.cluster_domain.is_empty() {
        format!("{name}.{ns}.svc")
    } else {
        format!("{name}.{ns}.svc.{}", defaults.cluster_domain)
    }
}

/// The LogStore address the players use: the external endpoint, or every replica of the
/// managed LogStore, comma-separated (the client follows the leader among them). `None`
/// when the spec names both or neither.
pub fn logstore_endpoint(lp: &LogPlayer, ns: &str, defaults: &Defaults) -> Option<String> {
    match lp.spec.log_store.backend().ok()? {
        Backend::External(e) => Some(e.endpoint.clone()),
        Backend::Managed(_) => Some(
            (1..=log_replicas(lp).max(1) as u64)
                .map(|id| log_replica_addr(lp, ns, defaults, id))
                .collect::<Vec<_>>()
                .join(","),
        ),
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
pub fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance, component);
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "logplayer".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels
}

/// The labels that select the pods of one component (a subset of [`labels`]).
pub fn selector_labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "logplayer".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The label selector (as a string) of everything the operator made for the LogPlayer
/// `instance`: its players, its managed LogStore and its managed shard servers.
pub fn managed_selector(instance: &str) -> String {
    format!("app.kubernetes.io/instance={instance},app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

/// The label selector (as a string) of a LogPlayer's player pods.
pub fn player_pod_selector(lp: &LogPlayer) -> String {
    selector_labels(&lp.name_any(), "player")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        LogPlayerSpec, MAX_LOGPLAYER_NAME, MAX_LOGPLAYER_NAME_EXTERNAL, MAX_SHARD_NAME, ShardSpec,
    };
    use serde_json::json;

    /// A Service's name and a label's value are at most 63 characters, and a StatefulSet's
    /// pods carry `controller-revision-hash: STATEFULSET-HASH` (a hash of up to 10).
    const LABEL_MAX: usize = 63;
    const REVISION_SUFFIX: usize = 1 + 10;

    /// The CRDs' longest names are exactly what the derived names allow: at those lengths
    /// every Service name and pod label fits, and the StatefulSets' revision label is what
    /// bounds them (one character more and their pods could never be created).
    #[test]
    fn the_longest_names_the_crds_allow_fit_every_derived_name() {
        let spec: LogPlayerSpec =
            serde_json::from_value(json!({"logStore": {"managed": {"storage": "1Gi"}}})).unwrap();
        let lp = LogPlayer::new(&"l".repeat(MAX_LOGPLAYER_NAME as usize), spec);
        for service in [
            player_name(&lp),
            metrics_service_name(&lp),
            logstore_name(&lp),
            logstore_client_name(&lp),
        ] {
            assert!(service.len() <= LABEL_MAX, "{service}");
        }
        assert_eq!(logstore_name(&lp).len() + REVISION_SUFFIX, LABEL_MAX);
        // Without a managed LogStore, the metrics Service is the longest name.
        let spec: LogPlayerSpec =
            serde_json::from_value(json!({"logStore": {"external": {"endpoint": "l:7000"}}}))
                .unwrap();
        let lp = LogPlayer::new(&"l".repeat(MAX_LOGPLAYER_NAME_EXTERNAL as usize), spec);
        assert_eq!(metrics_service_name(&lp).len(), LABEL_MAX);
        assert!(player_name(&lp).len() <= LABEL_MAX);
        let spec: ShardSpec = serde_json::from_value(json!({
            "logPlayer": "demo",
            "slots": [{"start": 0, "end": 16383}],
            "managed": {"storage": "1Gi"}
        }))
        .unwrap();
        let shard = Shard::new(&"s".repeat(MAX_SHARD_NAME as usize), spec);
        assert_eq!(shard_server_name(&shard).len() + REVISION_SUFFIX, LABEL_MAX);
    }
}
