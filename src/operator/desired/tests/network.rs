//! The NetworkPolicies: who may connect to the log replicas, the shard servers and the
//! players' metrics.

use super::*;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};

type Labels = BTreeMap<String, String>;

/// Each peer of a policy's one rule as `(pod labels, namespace labels)`, and its ports.
fn peers(p: &NetworkPolicy) -> (Vec<(Labels, Option<Labels>)>, Vec<i32>) {
    let spec = p.spec.as_ref().expect("spec");
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    let rules = spec.ingress.as_deref().expect("ingress rules");
    assert_eq!(rules.len(), 1, "one rule");
    let labels = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        s.as_ref()
            .map(|s| s.match_labels.clone().unwrap_or_default())
    };
    let from: Vec<_> = rules[0]
        .from
        .as_deref()
        .expect("a rule names who may connect: never everyone")
        .iter()
        .map(|p: &NetworkPolicyPeer| {
            (
                labels(&p.pod_selector).unwrap_or_default(),
                labels(&p.namespace_selector),
            )
        })
        .collect();
    assert!(!from.is_empty(), "an empty from would admit everyone");
    let ports = rules[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| match &p.port {
            Some(IntOrString::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    (from, ports)
}

fn component(c: &str) -> BTreeMap<String, String> {
    selector_labels("demo", c)
}

#[test]
fn the_log_replicas_take_grpc_from_players_peers_the_operator_and_writers_only() {
    let o = objects(&logplayer(managed_spec()), &four_shards());
    let names: Vec<&str> = o
        .network_policies
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["demo-player", "demo-logstore"]);
    let log = &o.network_policies[1];
    assert_eq!(
        log.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone()),
        Some(component("logstore")),
        "it protects the log replicas"
    );
    let (from, ports) = peers(log);
    assert_eq!(ports, [7000]);
    let operator = BTreeMap::from([
        (
            "app.kubernetes.io/component".to_owned(),
            "operator".to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "logplayer".to_owned(),
        ),
    ]);
    let ns = |n: &str| {
        Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            n.to_owned(),
        )]))
    };
    assert_eq!(
        from,
        vec![
            (component("player"), None),
            (component("logstore"), None),
            (operator, ns("logplayer-system")),
            (
                BTreeMap::from([(WRITER_LABEL.to_owned(), "demo".to_owned())]),
                None
            ),
        ]
    );
    // The players' metrics: from this namespace only, by default.
    let (from, ports) = peers(&o.network_policies[0]);
    assert_eq!(ports, [9090]);
    assert_eq!(from, vec![(BTreeMap::new(), ns("ns"))]);
}

#[test]
fn writers_and_metrics_namespaces_are_the_specs_and_disabled_means_none() {
    let lp = lp_with(|s| {
        s["networkPolicy"] = json!({
            "writers": [{"podSelector": {"matchLabels": {"app": "tm"}},
                         "namespaceSelector": {"matchLabels": {"team": "pay"}}}],
            "metricsNamespaceSelector": {"matchLabels": {"monitoring": "true"}}
        })
    });
    let o = objects(&lp, &four_shards());
    let (from, _) = peers(&o.network_policies[1]);
    assert_eq!(
        from.last().cloned(),
        Some((
            BTreeMap::from([("app".to_owned(), "tm".to_owned())]),
            Some(BTreeMap::from([("team".to_owned(), "pay".to_owned())]))
        ))
    );
    let (from, _) = peers(&o.network_policies[0]);
    assert_eq!(
        from,
        vec![(
            BTreeMap::new(),
            Some(BTreeMap::from([(
                "monitoring".to_owned(),
                "true".to_owned()
            )]))
        )]
    );

    let off = lp_with(|s| s["networkPolicy"] = json!({"enabled": false}));
    assert!(objects(&off, &four_shards()).network_policies.is_empty());
    let s0 = managed_shard("s0", &[(0, 16383)]);
    assert!(shard_network_policy(&s0, Some(&off), &Defaults::default()).is_none());
}

#[test]
fn a_managed_shard_server_takes_grpc_from_its_players_and_the_operator_only() {
    let s0 = managed_shard("s0", &[(0, 16383)]);
    let p = shard_network_policy(&s0, None, &Defaults::default()).expect("a policy by default");
    assert_eq!(p.metadata.name.as_deref(), Some("s0-shard"));
    let mut protects = component("shard");
    protects.insert(SHARD_LABEL.to_owned(), "s0".to_owned());
    assert_eq!(
        p.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone()),
        Some(protects)
    );
    let (from, ports) = peers(&p);
    assert_eq!(ports, [7100]);
    assert_eq!(from.len(), 2);
    assert_eq!(from[0], (component("player"), None));
    let external = external_shard("s1", &[(0, 16383)], "x:1");
    assert!(shard_network_policy(&external, None, &Defaults::default()).is_none());
}
