//! Unit tests of the CRD types: structural schemas, CEL rules, defaults, round trips and
//! the committed files.

use super::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResourceExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn crd_json(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(crd).expect("CRD serializes")
}

fn schema(crd: &CustomResourceDefinition) -> Value {
    crd_json(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Walks a schema and collects every violation of the structural-schema rules the API
/// server enforces (and of our rule that every field of ours has a description).
fn structural_violations(node: &Value, path: &str, ours: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for banned in [
        "$ref",
        "$defs",
        "definitions",
        "$schema",
        "oneOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: has {banned}"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string && !preserve {
        out.push(format!("{path}: no type"));
    }
    if let Some(t) = obj.get("type")
        && !t.is_string()
    {
        out.push(format!("{path}: type is not a single string: {t}"));
    }
    if let Some(any_of) = obj.get("anyOf") {
        // Only int-or-string may use anyOf, and only with bare type branches.
        let ok = int_or_string
            && any_of.as_array().is_some_and(|branches| {
                branches
                    .iter()
                    .all(|b| b.as_object().is_some_and(|b| b.keys().all(|k| k == "type")))
            });
        if !ok {
            out.push(format!("{path}: anyOf outside int-or-string: {any_of}"));
        }
    }
    if ours
        && path.contains(".properties.")
        && obj
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        out.push(format!("{path}: no description"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            out.push(format!("{path}: has properties but type is {ty:?}"));
        }
        if obj.contains_key("additionalProperties") {
            out.push(format!("{path}: both properties and additionalProperties"));
        }
        for (name, sub) in props {
            // Fields from k8s-openapi types keep their upstream descriptions (or lack).
            let sub_ours = ours && !path.contains(".resources") && !path.contains("Selector");
            let sub_ours = sub_ours && !path.contains(".conditions");
            structural_violations(sub, &format!("{path}.properties.{name}"), sub_ours, out);
        }
    }
    if let Some(items) = obj.get("items") {
        if ty != Some("array") {
            out.push(format!("{path}: has items but type is {ty:?}"));
        }
        structural_violations(items, &format!("{path}.items"), ours, out);
    }
    if ty == Some("array") && !obj.contains_key("items") {
        out.push(format!("{path}: array without items"));
    }
    if let Some(ap) = obj.get("additionalProperties")
        && ap.is_object()
    {
        structural_violations(ap, &format!("{path}.additionalProperties"), false, out);
    }
    if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
        let required = obj["items"]["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for key in obj["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !required.contains(key) {
                out.push(format!("{path}: list-map key {key} is not required"));
            }
        }
    }
}

fn rules(node: &Value) -> Vec<String> {
    node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn log_replicas_default_to_three_and_must_be_odd() {
    let crd = serde_json::to_value(LogPlayer::crd()).expect("the CRD serializes");
    let managed = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["logStore"]["properties"]["managed"];
    assert_eq!(rules(managed)[0], "self.replicas % 2 == 1");
    let replicas = &managed["properties"]["replicas"];
    assert_eq!(replicas["default"], 3);
    assert_eq!(
        (replicas["minimum"].as_f64(), replicas["maximum"].as_f64()),
        (Some(1.0), Some(7.0))
    );
}

#[test]
fn generated_crds_are_structural_and_describe_every_field() {
    for crd in all_crds() {
        let mut violations = Vec::new();
        let s = schema(&crd);
        assert_eq!(s["type"], "object");
        structural_violations(&s, &crd.spec.names.kind, false, &mut violations);
        for part in ["spec", "status"] {
            structural_violations(
                &s["properties"][part],
                &format!("{}.{part}", crd.spec.names.kind),
                true,
                &mut violations,
            );
        }
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// (name, `field`) of every printer column of a CRD's first version.
fn printer_columns<'a>(crd: &'a Value, field: &str) -> Vec<(&'a str, &'a str)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c[field].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[test]
fn crds_have_names_scope_status_subresource_and_printer_columns() {
    let lp = crd_json(&LogPlayer::crd());
    assert_eq!(lp["metadata"]["name"], "logplayers.logplayer.io");
    assert_eq!(lp["spec"]["group"], GROUP);
    assert_eq!(lp["spec"]["scope"], "Namespaced");
    assert_eq!(lp["spec"]["names"]["shortNames"], json!(["lp"]));
    assert_eq!(lp["spec"]["versions"][0]["name"], VERSION);
    assert_eq!(
        lp["spec"]["versions"][0]["subresources"]["status"],
        json!({})
    );
    assert_eq!(
        lp["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        printer_columns(&lp, "jsonPath"),
        [
            ("Leader", ".status.leader"),
            ("Epoch", ".status.epoch"),
            ("Ready", ".status.readyReplicas"),
            ("Lag", ".status.lag"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );

    let shard = crd_json(&Shard::crd());
    assert_eq!(shard["metadata"]["name"], "shards.logplayer.io");
    assert_eq!(shard["spec"]["scope"], "Namespaced");
    assert_eq!(
        shard["spec"]["versions"][0]["subresources"]["status"],
        json!({})
    );
    assert_eq!(
        shard["spec"]["versions"][0]["selectableFields"],
        json!([{"jsonPath": ".spec.logPlayer"}])
    );
    assert_eq!(
        printer_columns(&shard, "type"),
        [
            ("LogPlayer", "string"),
            ("Acked", "integer"),
            ("Lag", "integer"),
            ("Ready", "boolean"),
            ("Age", "date"),
        ]
    );
}

#[test]
fn cel_rules_sit_where_the_spec_needs_them() {
    let lp = schema(&LogPlayer::crd());
    let spec = &lp["properties"]["spec"];
    assert_eq!(
        rules(&spec["properties"]["logStore"]),
        ["has(self.external) != has(self.managed)"]
    );
    assert_eq!(
        rules(&spec["properties"]["tls"]),
        [
            "!has(self.mode) || self.mode != 'CertManager' || has(self.issuerRef)",
            "!has(self.issuerRef) || (has(self.mode) && self.mode == 'CertManager')",
        ]
    );
    let lease_rules = rules(&spec["properties"]["lease"]);
    assert_eq!(lease_rules.len(), 3, "{lease_rules:?}");
    // The CRD's longest lease is the player's: one number, written twice (CEL and Rust).
    assert!(lease_rules.contains(&format!(
        "duration(self.leaseDuration) <= duration('{}')",
        humantime::format_duration(crate::lease::MAX_LEASE_DURATION)
    )));
    // The longest checkpoint interval, likewise.
    assert_eq!(
        rules(&spec["properties"]["checkpointInterval"]),
        [format!(
            "(oldSelf.hasValue() && self == oldSelf.value()) || (duration(self) > duration('0s') \
             && duration(self) <= duration('{}'))",
            humantime::format_duration(crate::player::MAX_CHECKPOINT_INTERVAL)
        )]
    );
    // The entry limit only grows, within what every server takes (the bounds are the
    // servers' own constants).
    let limit = &spec["properties"]["maxEntryBytes"];
    assert_eq!(rules(limit), ["self >= oldSelf"]);
    assert_eq!(
        (&limit["minimum"], &limit["maximum"], &limit["default"]),
        (
            &json!(crate::limits::MIN_MAX_ENTRY_BYTES as f64),
            &json!(crate::limits::MAX_MAX_ENTRY_BYTES as f64),
            &json!(crate::limits::DEFAULT_MAX_ENTRY_BYTES)
        )
    );
    // A managed log's replicas take less: the number in CEL is the log replica's own.
    assert!(
        rules(spec).contains(&format!(
            "!has(self.logStore.managed) || self.maxEntryBytes <= {}",
            crate::logstore::raft::node::MAX_REPLICABLE_ENTRY_BYTES
        )),
        "{:?}",
        rules(spec)
    );
    // The longest names, likewise (see `MAX_LOGPLAYER_NAME`), and a Service's pattern,
    // checked at creation and when a backend becomes managed (`oldSelf` is optional: an
    // object of an earlier CRD with a name these refuse can still be updated, and deleted,
    // but not switched to a managed server whose objects could not be named).
    let names = |crd: &Value| {
        let r = &crd["x-kubernetes-validations"][0];
        assert_eq!(r["optionalOldSelf"], true, "{r}");
        r["rule"].as_str().unwrap_or_default().to_owned()
    };
    let pattern_in_cel = format!("matches('{}')", super::DNS_1035_LABEL_PATTERN);
    let rule = names(&lp);
    assert!(
        rule.starts_with(
            "(oldSelf.hasValue() && (has(oldSelf.value().spec.logStore.managed) || \
             !has(self.spec.logStore.managed))) || "
        ),
        "{rule}"
    );
    assert!(
        rule.contains(&format!(
            "size() <= (has(self.spec.logStore.managed) ? {} : {})",
            super::MAX_LOGPLAYER_NAME,
            super::MAX_LOGPLAYER_NAME_EXTERNAL
        )) && rule.contains(&pattern_in_cel),
        "{rule}"
    );
    let rule = names(&schema(&Shard::crd()));
    assert!(
        rule.starts_with(
            "(oldSelf.hasValue() && (has(oldSelf.value().spec.managed) || \
             !has(self.spec.managed))) || "
        ),
        "{rule}"
    );
    assert!(
        rule.contains(&format!("size() <= {}", super::MAX_SHARD_NAME))
            && rule.contains(&pattern_in_cel),
        "{rule}"
    );
    assert!(lease_rules.iter().all(|r| r.contains("duration(")));
    for f in ["leaseDuration", "renewDeadline", "retryPeriod"] {
        assert_eq!(
            spec["properties"]["lease"]["properties"][f]["pattern"],
            DURATION_PATTERN
        );
    }

    let shard = schema(&Shard::crd());
    let spec = &shard["properties"]["spec"];
    assert_eq!(
        rules(spec)[..2],
        [
            "has(self.external) != has(self.managed)",
            "!has(self.commitDelay) || has(self.managed)"
        ]
    );
    assert_eq!(spec["required"], json!(["logPlayer", "slots"]));
    // The volumes of a managed server stay as made (a StatefulSet's claims are fixed).
    assert!(
        rules(spec).iter().any(
            |r| r.contains("self.managed.storage == oldSelf.managed.storage")
                && r.contains("self.managed.storageClassName == oldSelf.managed.storageClassName")
        ),
        "{:?}",
        rules(spec)
    );
    let managed_log = &lp["properties"]["spec"]["properties"]["logStore"]["properties"]["managed"];
    assert!(
        rules(managed_log)
            .iter()
            .any(|r| r.starts_with("self.storage == oldSelf.storage")
                && r.contains("self.storageClassName == oldSelf.storageClassName")),
        "{:?}",
        rules(managed_log)
    );
    let commit_delay = &spec["properties"]["commitDelay"];
    assert_eq!(commit_delay["pattern"], DURATION_PATTERN);
    // The CRD's bound is the shard server's: one number, written twice (CEL and Rust).
    assert_eq!(
        rules(commit_delay),
        [format!(
            "duration(self) <= duration('{}')",
            humantime::format_duration(crate::shard::gather::MAX_COMMIT_DELAY)
        )]
    );
    assert_eq!(rules(&spec["properties"]["logPlayer"]), ["self == oldSelf"]);
    // A Shard's slots only shrink: a slot it gained would lack the history another shard
    // applied.
    assert!(
        rules(&spec["properties"]["slots"]).iter().any(|r| r
            .starts_with("self.all(r, oldSelf.filter(o, o.start <= r.end && r.start <= o.end)")
            && r.ends_with(".sum() == r.end - r.start + 1)")),
        "{:?}",
        rules(&spec["properties"]["slots"])
    );
    assert_eq!(spec["properties"]["logPlayer"]["minLength"], 1);
    assert_eq!(
        spec["properties"]["logPlayer"]["maxLength"],
        super::MAX_LOGPLAYER_NAME_EXTERNAL
    );
    assert_eq!(
        spec["properties"]["logPlayer"]["pattern"],
        super::DNS_1035_LABEL_PATTERN
    );
    let slots = &spec["properties"]["slots"];
    assert_eq!(slots["minItems"], 1);
    assert_eq!(slots["maxItems"], MAX_SLOT_RANGES);
    let slot_rules = rules(slots);
    assert!(
        slot_rules.iter().any(|r| r.contains("isSorted()")),
        "{slot_rules:?}"
    );
    assert!(
        slot_rules.iter().any(|r| r.contains("exists_one")),
        "{slot_rules:?}"
    );
    assert_eq!(rules(&slots["items"]), ["self.start <= self.end"]);
    for f in ["start", "end"] {
        // k8s-openapi keeps bounds as f64.
        assert_eq!(slots["items"]["properties"][f]["minimum"], 0.0);
        assert_eq!(
            slots["items"]["properties"][f]["maximum"],
            f64::from(MAX_SLOT)
        );
    }
    // Every rule carries a message for the user.
    fn all_rules(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                    out.extend(rs.iter().cloned());
                }
                m.values().for_each(|c| all_rules(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| all_rules(c, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for crd in all_crds() {
        all_rules(&schema(&crd), &mut found);
    }
    assert_eq!(found.len(), 23, "{found:#?}");
    for rule in &found {
        assert!(
            rule["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{rule}"
        );
    }
}

#[test]
fn schema_carries_the_defaults_and_bounds() {
    let lp = schema(&LogPlayer::crd());
    let p = &lp["properties"]["spec"]["properties"];
    assert_eq!(p["replicas"]["default"], 3);
    assert_eq!(p["replicas"]["minimum"], 1.0);
    assert_eq!(p["checkpointInterval"]["default"], "1s");
    assert_eq!(p["retainLog"]["default"], false);
    assert_eq!(p["metricsPort"]["default"], 9090);
    assert_eq!(
        p["lease"]["default"],
        json!({"leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "250ms"})
    );
    assert_eq!(
        p["delivery"]["default"],
        json!({"window": 64, "windowBytes": 16777216, "batchEntries": 512, "batchBytes": 1048576, "queueBytes": 8388608})
    );
    // The bounds are the player's own (`limits`, checked by `PlayerConfig::validate`), so
    // that nothing the API server accepts is refused by the pods it runs.
    let d = &p["delivery"]["properties"];
    let f = |n: usize| n as f64;
    use crate::limits::{MAX_BATCH_BYTES, MAX_QUEUE_BYTES, MAX_WINDOW, MAX_WINDOW_BYTES};
    assert_eq!(d["window"]["minimum"], 1.0);
    assert_eq!(d["window"]["maximum"], f(MAX_WINDOW));
    assert_eq!(d["windowBytes"]["minimum"], 1.0);
    assert_eq!(d["windowBytes"]["maximum"], f(MAX_WINDOW_BYTES));
    assert_eq!(d["batchBytes"]["maximum"], f(MAX_BATCH_BYTES));
    assert_eq!(d["queueBytes"]["minimum"], 65536.0);
    assert_eq!(d["queueBytes"]["maximum"], f(MAX_QUEUE_BYTES));
    let tls = &p["tls"]["properties"];
    assert_eq!(tls["caSecret"]["pattern"], super::DNS_SUBDOMAIN_PATTERN);
    // Fixed once set (a typo could only be undone by deleting the resource), or failing
    // only at the apply: checked by the API server.
    let managed = &p["logStore"]["properties"]["managed"]["properties"];
    assert_eq!(
        managed["storageClassName"]["pattern"],
        super::STORAGE_CLASS_PATTERN
    );
    let class = regex::Regex::new(super::STORAGE_CLASS_PATTERN).unwrap();
    for (name, ok) in [
        ("", true),
        ("fast-ssd", true),
        ("gp3.ebs", true),
        ("Fast SSD", false),
    ] {
        assert_eq!(class.is_match(name), ok, "{name:?}");
    }
    assert_eq!(p["image"]["minLength"], 1);
    assert_eq!(
        tls["issuerRef"]["properties"]["name"]["pattern"],
        super::DNS_SUBDOMAIN_PATTERN
    );
    assert_eq!(
        p["imagePullPolicy"]["enum"],
        json!(["Always", "IfNotPresent", "Never"])
    );
    assert_eq!(lp["properties"]["spec"]["required"], json!(["logStore"]));
    let status = &lp["properties"]["status"]["properties"];
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
    assert_eq!(
        status["shards"]["x-kubernetes-list-map-keys"],
        json!(["name"])
    );
}

#[test]
fn descriptions_reach_kubectl_explain() {
    let lp = schema(&LogPlayer::crd());
    let desc = |v: &Value| v["description"].as_str().unwrap_or("").to_owned();
    assert!(desc(&lp).contains("LogPlayer delivers"));
    assert!(desc(&lp["properties"]["spec"]["properties"]["replicas"]).contains("player pods"));
    assert!(
        desc(&lp["properties"]["spec"]["properties"]["logStore"]["properties"]["managed"])
            .contains("StatefulSet")
    );
    let shard = schema(&Shard::crd());
    assert!(desc(&shard["properties"]["spec"]["properties"]["slots"]).contains("exactly once"));
}

const LOGPLAYER_YAML: &str = r#"
apiVersion: logplayer.io/v1alpha1
kind: LogPlayer
metadata:
  name: orders
  namespace: payments
spec:
  replicas: 3
  image: ghcr.io/example/logplayer:0.1.0
  imagePullPolicy: IfNotPresent
  resources:
    requests:
      cpu: 500m
      memory: 256Mi
    limits:
      memory: 512Mi
  lease:
    leaseDuration: 4s
    renewDeadline: 3s
    retryPeriod: 500ms
  checkpointInterval: 2s
  retainLog: true
  delivery:
    window: 32
    windowBytes: 4194304
    batchEntries: 1024
    batchBytes: 2097152
    queueBytes: 16777216
  shardSelector:
    matchLabels:
      logplayer.io/player: orders
  tls:
    mode: Operator
    caSecret: orders-ca
    writerIds:
      - orders-tm-*
  networkPolicy:
    enabled: true
    writers:
      - podSelector:
          matchLabels:
            app: orders-tm
        namespaceSelector:
          matchLabels:
            team: payments
    metricsNamespaceSelector:
      matchLabels:
        monitoring: "true"
  logStore:
    managed:
      storage: 20Gi
      storageClassName: fast-ssd
      replicas: 3
      resources:
        requests:
          cpu: "1"
          memory: 1Gi
  metricsPort: 9191
  maxEntryBytes: 8388608
status:
  observedGeneration: 4
  conditions:
    - type: Ready
      status: "True"
      reason: AllShardsDelivering
      message: 3 of 3 shards acknowledged within the last checkpoint
      lastTransitionTime: "2025-01-02T03:04:05Z"
      observedGeneration: 4
    - type: LeaderElected
      status: "True"
      reason: LeaseHeld
      message: orders-player-1 holds the lease
      lastTransitionTime: "2025-01-02T03:04:00Z"
  leader: orders-player-1
  epoch: 7
  readyReplicas: 3
  replicas: 3
  shards:
    - name: orders-0
      ackedIndex: 10500
      lag: 12
    - name: orders-1
      ackedIndex: 10511
      lag: 1
  lag: 12
"#;

const SHARD_YAML: &str = r#"
apiVersion: logplayer.io/v1alpha1
kind: Shard
metadata:
  name: orders-0
  namespace: payments
  labels:
    logplayer.io/player: orders
spec:
  logPlayer: orders
  slots:
    - start: 0
      end: 4095
    - start: 8192
      end: 12287
  external:
    endpoint: http://orders-0.shards.payments.svc:7101
status:
  observedGeneration: 1
  conditions:
    - type: Ready
      status: "True"
      reason: Serving
      message: applied index 10500
      lastTransitionTime: "2025-01-02T03:04:05Z"
  ackedIndex: 10500
  ackedEpoch: 7
  lag: 12
  endpoint: http://orders-0.shards.payments.svc:7101
  ready: true
"#;

/// Parses `text` as a resource, checks it serializes back to the same document, and
/// returns it.
fn round_trip<T>(text: &str) -> T
where
    T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let original: Value = serde_yaml::from_str(text).expect("valid YAML");
    let parsed: T = serde_yaml::from_str(text).expect("deserializes");
    let back = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(back, original, "round trip changed the document");
    let yaml = serde_yaml::to_string(&parsed).expect("to YAML");
    let again: T = serde_yaml::from_str(&yaml).expect("reparses");
    assert_eq!(again, parsed);
    parsed
}

#[test]
fn a_full_logplayer_round_trips_through_yaml() {
    let lp: LogPlayer = round_trip(LOGPLAYER_YAML);
    assert_eq!(lp.spec.replicas, 3);
    assert_eq!(
        lp.spec.image_pull_policy,
        Some(ImagePullPolicy::IfNotPresent)
    );
    let timing = lp.spec.lease.timing().expect("valid lease");
    assert_eq!(timing.renew_deadline, Duration::from_secs(3));
    assert_eq!(
        lp.spec.checkpoint_interval().expect("valid"),
        Duration::from_secs(2)
    );
    let Backend::Managed(m) = lp.spec.log_store.backend().expect("one backend") else {
        panic!("expected a managed LogStore");
    };
    assert_eq!(m.storage, "20Gi");
    let status = lp.status.expect("status");
    assert_eq!(status.leader.as_deref(), Some("orders-player-1"));
    assert_eq!(status.shards[1].acked_index, 10511);
    assert_eq!(status.conditions[1].type_, condition::LEADER_ELECTED);
}

#[test]
fn a_full_shard_round_trips_through_yaml() {
    let shard: Shard = round_trip(SHARD_YAML);
    assert_eq!(shard.spec.log_player, "orders");
    shard.spec.validate_slots().expect("valid slots");
    assert!(
        matches!(shard.spec.backend(), Ok(Backend::External(e)) if e.endpoint.ends_with(":7101"))
    );
    assert_eq!(shard.status.and_then(|s| s.ready), Some(true));
}

#[test]
fn a_minimal_logplayer_gets_the_documented_defaults() {
    let lp: LogPlayer = serde_yaml::from_str(
        "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata: {name: p}\n\
             spec: {logStore: {external: {endpoint: 'logstore:7000'}}}\n",
    )
    .expect("minimal spec parses");
    let s = &lp.spec;
    assert_eq!(s.replicas, 3);
    assert_eq!(s.lease, LeaseSettings::default());
    assert_eq!(s.lease.lease_duration, "2s");
    assert_eq!(s.lease.renew_deadline, "1500ms");
    assert_eq!(s.lease.retry_period, "250ms");
    assert_eq!(s.checkpoint_interval, "1s");
    assert!(!s.retain_log);
    assert_eq!(s.delivery, DeliverySettings::default());
    assert_eq!(s.delivery.batch_bytes, 1 << 20);
    assert_eq!(s.delivery.queue_bytes, 8 << 20);
    assert_eq!(s.shard_selector, LabelSelector::default());
    assert_eq!(s.metrics_port, 9090);
    assert!(lp.status.is_none());
    // Partial sub-objects are filled field by field.
    let d: DeliverySettings = serde_json::from_value(json!({"window": 4})).expect("parses");
    assert_eq!((d.window, d.batch_entries), (4, 512));
    s.lease.timing().expect("default lease timing is valid");
}

#[test]
fn lease_timing_and_durations_are_checked() {
    let lease = |l: &str, r: &str, p: &str| LeaseSettings {
        lease_duration: l.into(),
        renew_deadline: r.into(),
        retry_period: p.into(),
    };
    assert_eq!(
        lease("1m30s", "1m", "10s")
            .timing()
            .expect("valid")
            .lease_duration,
        Duration::from_secs(90)
    );
    let e = lease("2s", "2s", "250ms").timing().unwrap_err();
    assert!(
        e.to_string().contains("renewDeadline < leaseDuration"),
        "{e}"
    );
    let e = lease("2s", "1s", "0s").timing().unwrap_err();
    assert!(e.to_string().contains("10ms <= retryPeriod"), "{e}");
    let e = lease("2s", "1s", "9ms").timing().unwrap_err();
    assert!(e.to_string().contains("10ms <= retryPeriod"), "{e}");
    lease("2s", "1s", "10ms")
        .timing()
        .expect("the floor is allowed");
    let e = lease("two seconds", "1s", "1ms").timing().unwrap_err();
    assert!(e.to_string().contains("spec.lease.leaseDuration"), "{e}");
    let mut spec: LogPlayerSpec =
        serde_json::from_value(json!({"logStore": {"external": {"endpoint": "x:1"}}}))
            .expect("parses");
    spec.checkpoint_interval = "0ms".into();
    let e = spec.checkpoint_interval().unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.checkpointInterval must be greater"),
        "{e}"
    );
}

#[test]
fn a_source_must_name_exactly_one_backend() {
    let both: LogSource = serde_json::from_value(json!({
        "external": {"endpoint": "a:1"},
        "managed": {"storage": "1Gi"}
    }))
    .expect("parses");
    let e = both.backend().unwrap_err();
    assert!(
        e.to_string().contains("exactly one") && e.to_string().contains("both"),
        "{e}"
    );
    let neither: ShardSpec =
        serde_json::from_value(json!({"logPlayer": "p", "slots": [{"start": 0, "end": 1}]}))
            .expect("parses");
    let e = neither.backend().unwrap_err();
    assert!(
        e.to_string().contains("Shard spec") && e.to_string().contains("neither"),
        "{e}"
    );
}

/// An external endpoint nobody can dial is refused when the spec is read (the players would
/// otherwise refuse the whole shard map and stop delivering to every shard).
#[test]
fn an_external_endpoint_must_be_host_and_port() {
    let log = |endpoint: &str| -> LogSource {
        serde_json::from_value(json!({"external": {"endpoint": endpoint}})).expect("parses")
    };
    assert!(
        log("log-0.logs.svc:7000,log-1.logs.svc:7000")
            .backend()
            .is_ok()
    );
    let e = log("logs.svc").backend().unwrap_err().to_string();
    assert!(
        e.contains("spec.logStore.external.endpoint") && e.contains("no port"),
        "{e}"
    );
    let shard = |endpoint: &str| -> ShardSpec {
        serde_json::from_value(json!({"logPlayer": "p", "slots": [{"start": 0, "end": 1}],
                                      "external": {"endpoint": endpoint}}))
        .expect("parses")
    };
    assert!(shard("http://s0.example:7100").backend().is_ok());
    for bad in ["s0.example", "h:0", "a:1,b:2"] {
        let e = shard(bad).backend().unwrap_err().to_string();
        assert!(e.contains("Shard spec.external.endpoint"), "{bad}: {e}");
    }
}

#[test]
fn crds_yaml_is_a_stable_multi_document_stream() {
    let text = crds_yaml().expect("yaml");
    assert!(text.starts_with(GENERATED_HEADER));
    assert_eq!(text, crds_yaml().expect("yaml"), "output is deterministic");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("each document parses"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["logplayers.logplayer.io", "shards.logplayer.io"]);
    for d in &docs {
        assert_eq!(d["kind"], "CustomResourceDefinition");
        assert_eq!(d["apiVersion"], "apiextensions.k8s.io/v1");
        let back: CustomResourceDefinition =
            serde_json::from_value(d.clone()).expect("parses as a CRD");
        assert_eq!(back.spec.group, GROUP);
    }
}

#[test]
fn write_crds_writes_one_file_per_crd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("crds");
    let paths = write_crds(&out).expect("written");
    let names: Vec<_> = paths
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["logplayers.logplayer.io.yaml", "shards.logplayer.io.yaml"]
    );
    for (path, crd) in paths.iter().zip(all_crds()) {
        let text = std::fs::read_to_string(path).expect("readable");
        assert!(text.starts_with(GENERATED_HEADER));
        let back: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(back, crd);
    }
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let e = write_crds(&file).unwrap_err();
    assert!(e.to_string().contains("not-a-dir"), "{e}");
}

/// The committed `crds/` files and the chart's copy match the Rust types. Regenerate with
/// `LOGPLAYER_UPDATE_CRDS=1 cargo test crd` after changing a type.
#[test]
fn committed_crd_files_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        root.join("crds"),
        root.join("charts/logplayer-operator/files/crds"),
    ] {
        if std::env::var_os("LOGPLAYER_UPDATE_CRDS").is_some() {
            write_crds(&dir).expect("regenerated");
        }
        for (name, want) in crd_files().expect("generated") {
            let path = dir.join(&name);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is missing or stale; regenerate with `cargo run -- crd --write crds \
                     --write charts/logplayer-operator/files/crds` (or \
                     `LOGPLAYER_UPDATE_CRDS=1 cargo test crd`)",
                path.display()
            );
        }
    }
}

#[test]
fn quantity_patterns_refuse_what_the_api_server_would_refuse_later() {
    let storage = regex::Regex::new(super::QUANTITY_PATTERN).unwrap();
    for ok in ["1Gi", "10Gi", "500M", "0.5Gi", "1", "100"] {
        assert!(storage.is_match(ok), "storage {ok} should pass");
    }
    for bad in ["0", "0Gi", "0.0", "-1Gi", "lots", "", "1 Gi"] {
        assert!(!storage.is_match(bad), "storage {bad} should be refused");
    }
    let resource = regex::Regex::new(super::RESOURCE_QUANTITY_PATTERN).unwrap();
    for ok in ["500m", "1", "1.5", "2Gi", "128Mi", "1e3", "0", ".5", "100k"] {
        assert!(resource.is_match(ok), "resource {ok} should pass");
    }
    for bad in ["lots", "-1", "1GB", "", "1.2.3", "m"] {
        assert!(!resource.is_match(bad), "resource {bad} should be refused");
    }
    let writer = regex::Regex::new(super::logplayer::WRITER_ID_PATTERN).unwrap();
    // The longest id is the LogStore's (one number, written twice: Rust and the pattern).
    let max = crate::logstore::MAX_WRITER_ID_BYTES;
    assert!(
        super::logplayer::WRITER_ID_PATTERN.contains(&format!("{{1,{max}}}")),
        "the pattern's bound is not MAX_WRITER_ID_BYTES"
    );
    let lp = schema(&LogPlayer::crd());
    assert_eq!(
        lp["properties"]["spec"]["properties"]["tls"]["properties"]["writerIds"]["items"]["maxLength"],
        max + 1
    );
    for ok in [
        "*",
        "app-*",
        "tm-1",
        "a.b_c~d",
        "tenant:1",
        "svc@eu",
        &"w".repeat(256),
    ] {
        assert!(writer.is_match(ok), "writer id {ok} should pass");
    }
    for bad in [
        "a b",
        "x/y",
        "*a*",
        "a?b#c",
        "a**",
        "50%",
        "",
        &"w".repeat(257),
    ] {
        assert!(!writer.is_match(bad), "writer id {bad} should be refused");
    }
    let secret = regex::Regex::new(super::DNS_SUBDOMAIN_PATTERN).unwrap();
    for ok in ["demo-ca", "a", "ca.example-1"] {
        assert!(secret.is_match(ok), "secret name {ok} should pass");
    }
    for bad in ["Bad Name", "-a", "a-", "a..b", "UPPER", ""] {
        assert!(!secret.is_match(bad), "secret name {bad} should be refused");
    }
    // The generated CRDs carry the resource pattern on every requests/limits value.
    let text = super::generate::crds_yaml().unwrap();
    assert_eq!(
        text.matches(super::RESOURCE_QUANTITY_PATTERN).count(),
        // limits and requests of: the player pods and the managed LogStore (LogPlayer), and
        // a managed shard (Shard).
        6,
        "{text}"
    );
}

/// The largest duration the CRD's pattern and length admit still fits the API server's
/// duration (Go's `time.Duration`, int64 nanoseconds), so CEL's `duration()` can read every
/// value the pattern lets through and its rules name the bound instead of failing with
/// "type conversion error".
#[test]
fn every_duration_the_pattern_admits_fits_the_api_servers() {
    let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
    let max = DURATION_MAX_LENGTH as usize;
    // The largest: as many `999999h` as fit, the rest one more pair with the digits left.
    let full = "999999h".repeat(max / 7);
    let rest = max % 7;
    let largest = if rest >= 2 {
        format!("{full}{}h", "9".repeat(rest - 1))
    } else {
        full
    };
    assert_eq!(largest.len(), max);
    assert!(pattern.is_match(&largest), "{largest}");
    let d = humantime::parse_duration(&largest).unwrap();
    assert!(d.as_nanos() <= i64::MAX as u128, "{largest} = {d:?}");
    // One digit more in a pair is refused by the pattern.
    assert!(!pattern.is_match("9999999h"));
}
