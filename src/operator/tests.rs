//! Reconciliations against kube's mock service: a scripted API server answers every
//! request and records it, and the tests check what was asked, in what order, with
//! which field manager and body.
use super::reconcile::{error_policy, failing, reconcile_logplayer, reconcile_shard};
use super::*;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};

use crate::crd::{LogPlayer, Shard};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::HashMap;
use tower_test::mock;

mod refusals;
mod shard_map;
mod spec_problems;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// One request the operator sent.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// What the scripted API server holds: objects by path (GET answers them, or 404), and
/// lists by collection path.
#[derive(Default)]
struct World {
    objects: HashMap<String, Value>,
    lists: HashMap<String, Vec<Value>>,
    /// Paths whose apply the API server refuses (422), with its message, until they are
    /// deleted.
    refuse: HashMap<String, String>,
    /// Paths whose apply the API server forbids (403) this many times before accepting it.
    forbid: HashMap<String, u32>,
    /// Paths whose apply the API server answers with this status code (a failure of the
    /// moment: 429, 503) every time.
    fail: HashMap<String, StatusCode>,
    /// Paths whose GET the API server refuses as a bad request (400), with its message.
    bad_request: HashMap<String, String>,
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
            .expect("a response"),
    );
}

/// The API server's answer to a request it refuses.
fn failure(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code.as_u16(), "message": message})
}

fn not_found(path: &str) -> Value {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{path} not found"),
    )
}

/// Serves until the client is dropped; returns every request.
async fn serve(mut handle: Handle, mut world: World) -> Vec<Sent> {
    let mut sent = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        sent.push(Sent {
            method: method.clone(),
            path: path.clone(),
            query,
            content_type,
            body: body.clone(),
        });
        if method == Method::GET {
            if let Some(message) = world.bad_request.get(&path) {
                let code = StatusCode::BAD_REQUEST;
                respond(send, code, &failure(code, "BadRequest", message));
            } else if let Some(items) = world.lists.get(&path) {
                respond(
                    send,
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                );
            } else if let Some(obj) = world.objects.get(&path) {
                respond(send, StatusCode::OK, obj);
            } else {
                respond(send, StatusCode::NOT_FOUND, &not_found(&path));
            }
        } else if method == Method::DELETE {
            if world.refuse.remove(&path).is_some() {
                respond(
                    send,
                    StatusCode::OK,
                    &json!({"kind": "Status", "status": "Success"}),
                );
            } else {
                respond(send, StatusCode::NOT_FOUND, &not_found(&path));
            }
        } else if let Some(left) = world.forbid.get_mut(&path).filter(|n| **n > 0) {
            *left -= 1;
            let code = StatusCode::FORBIDDEN;
            let message = format!(
                "{path} is forbidden: user is attempting to grant RBAC permissions not currently held"
            );
            respond(send, code, &failure(code, "Forbidden", &message));
        } else if let Some(code) = world.fail.get(&path).copied() {
            let message = format!("{path}: {}", code.canonical_reason().unwrap_or_default());
            let reason = match code {
                StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
                _ => "ServiceUnavailable",
            };
            respond(send, code, &failure(code, reason, &message));
        } else if let Some(message) = world.refuse.get(&path) {
            let code = StatusCode::UNPROCESSABLE_ENTITY;
            respond(send, code, &failure(code, "Invalid", message));
        } else if let Some(parent) = path.strip_suffix("/status") {
            // A status patch answers the whole object with the new status.
            let mut obj = world.objects.get(parent).cloned().unwrap_or(Value::Null);
            obj["status"] = body["status"].clone();
            respond(send, StatusCode::OK, &obj);
        } else {
            // Server-side apply and event creation echo what was sent.
            respond(send, StatusCode::OK, &body);
        }
    }
    sent
}

const LP_PATH: &str = "/apis/logplayer.io/v1alpha1/namespaces/ns/logplayers/demo";
const SHARDS_PATH: &str = "/apis/logplayer.io/v1alpha1/namespaces/ns/shards";
/// Nothing listens here: probes fail at once with "connection refused".
const DEAD: &str = "127.0.0.1:1";

fn logplayer(replicas: i32, paused: bool) -> Value {
    let mut annotations = json!({});
    if paused {
        annotations[PAUSE_ANNOTATION] = json!("true");
    }
    json!({
        "apiVersion": "logplayer.io/v1alpha1", "kind": "LogPlayer",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-demo", "generation": 3,
                     "annotations": annotations},
        "spec": {"replicas": replicas, "logStore": {"external": {"endpoint": DEAD}}},
    })
}

fn shard(name: &str, start: i32, end: i32, managed: bool) -> Value {
    let backend = if managed {
        json!({"managed": {"storage": "1Gi"}})
    } else {
        // A port nothing listens on, one per shard (a map may not give two one address).
        json!({"external": {"endpoint": format!("127.0.0.{}:1", 2 + start / 4096)}})
    };
    let mut s = json!({
        "apiVersion": "logplayer.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "generation": 1},
        "spec": {"logPlayer": "demo", "slots": [{"start": start, "end": end}]},
        "status": {"ackedIndex": 40, "ackedEpoch": 2},
    });
    if let (Some(spec), Some(b)) = (s["spec"].as_object_mut(), backend.as_object()) {
        spec.extend(b.clone());
    }
    s
}

fn four_shards() -> Vec<Value> {
    (0..4)
        .map(|i| shard(&format!("s{i}"), i * 4096, i * 4096 + 4095, false))
        .collect()
}

const CONFIG_MAPS_PATH: &str = "/api/v1/namespaces/ns/configmaps";

/// The players' shard map ConfigMap as the operator writes it for `shards` (none when they
/// make no valid map).
fn shard_map_of(shards: &[Value]) -> Vec<Value> {
    let shards: Vec<Shard> = shards
        .iter()
        .filter_map(|s| serde_json::from_value(s.clone()).ok())
        .collect();
    desired::shard_map_yaml(&shards, &desired::Defaults::default())
        .map(|text| {
            vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "demo-shard-map", "namespace": "ns"},
                         "data": {desired::SHARD_MAP_FILE: text}})]
        })
        .unwrap_or_default()
}

fn world(lp: &Value, shards: Vec<Value>) -> World {
    let mut w = World::default();
    w.objects.insert(LP_PATH.into(), lp.clone());
    for s in &shards {
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        w.objects.insert(format!("{SHARDS_PATH}/{name}"), s.clone());
    }
    w.lists
        .insert(CONFIG_MAPS_PATH.into(), shard_map_of(&shards));
    w.lists.insert(SHARDS_PATH.into(), shards);
    for collection in [
        "/api/v1/namespaces/ns/pods",
        "/apis/apps/v1/namespaces/ns/statefulsets",
        "/api/v1/namespaces/ns/services",
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets",
        "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies",
    ] {
        w.lists.insert(collection.into(), Vec::new());
    }
    w.objects.insert(
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/demo-player".into(),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "demo-player", "namespace": "ns"},
                   "spec": {"holderIdentity": "demo-player-abc", "leaseTransitions": 7,
                            "leaseDurationSeconds": 3600,
                            "renewTime": status::now()}}),
    );
    w.objects.insert(
        "/apis/apps/v1/namespaces/ns/deployments/demo-player".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "demo-player", "namespace": "ns", "generation": 2},
                   "spec": {"selector": {}, "template": {}},
                   "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                              "observedGeneration": 2}}),
    );
    w
}

fn context(service: mock::Mock<Request<Body>, Response<Body>>) -> Arc<Context> {
    let client = Client::new(service, "ns");
    Arc::new(Context {
        client: client.clone(),
        namespaces: Vec::new(),
        defaults: desired::Defaults::default(),
        metrics: Arc::new(OperatorMetrics::default()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some("test".into()),
            },
        ),
        failures: Default::default(),
    })
}

/// Runs one LogPlayer reconciliation against `world`; returns its result, the
/// requests and the metrics text.
async fn reconcile_lp(
    lp: &Value,
    world: World,
) -> (Result<Action, OperatorError>, Vec<Sent>, String) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, world));
    let ctx = context(service);
    let metrics = ctx.metrics.clone();
    let obj: LogPlayer = serde_json::from_value(lp.clone()).expect("a LogPlayer");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        reconcile_logplayer(Arc::new(obj), ctx),
    )
    .await
    .expect("the reconciliation finishes");
    let sent = server.await.expect("the scripted server");
    (
        result,
        sent,
        crate::metrics::Exposition::encode(metrics.as_ref()),
    )
}

fn applies(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .filter(|s| s.method == Method::PATCH && !s.path.ends_with("/status"))
        .map(|s| s.path.clone())
        .collect()
}

fn status_patch(sent: &[Sent]) -> &Sent {
    let patches: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.method == Method::PATCH && s.path.ends_with("/status"))
        .collect();
    assert_eq!(patches.len(), 1, "one status patch: {sent:#?}");
    patches[0]
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn events(sent: &[Sent]) -> Vec<(String, String)> {
    sent.iter()
        .filter(|s| s.method == Method::POST && s.path.ends_with("/events"))
        .map(|s| {
            (
                s.body["type"].as_str().unwrap_or_default().to_owned(),
                s.body["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn applies_every_object_by_server_side_apply_then_reports_what_it_sees() {
    let lp = logplayer(3, false);
    let (result, sent, metrics) = reconcile_lp(&lp, world(&lp, four_shards())).await;
    assert!(result.is_ok(), "{result:?}");
    let ns = "/namespaces/ns";
    assert_eq!(
        applies(&sent),
        vec![
            format!("/api/v1{ns}/secrets/demo-player-tls"),
            format!("/api/v1{ns}/secrets/demo-writer-tls"),
            format!("/api/v1{ns}/secrets/demo-admin-tls"),
            format!("/api/v1{ns}/serviceaccounts/demo-player"),
            // The operator holds the players' rights before it writes their Role.
            format!("/apis/rbac.authorization.k8s.io/v1{ns}/rolebindings/demo-player-grant"),
            format!("/apis/rbac.authorization.k8s.io/v1{ns}/roles/demo-player"),
            format!("/apis/rbac.authorization.k8s.io/v1{ns}/rolebindings/demo-player"),
            format!("/api/v1{ns}/configmaps/demo-shard-map"),
            format!("/api/v1{ns}/services/demo-player-metrics"),
            format!("/apis/apps/v1{ns}/deployments/demo-player"),
            format!("/apis/policy/v1{ns}/poddisruptionbudgets/demo-player"),
            format!("/apis/networking.k8s.io/v1{ns}/networkpolicies/demo-player"),
        ]
    );
    for s in sent.iter().filter(|s| s.method == Method::PATCH) {
        assert!(
            s.query.contains("fieldManager=logplayer-operator") && s.query.contains("force=true"),
            "{} {}",
            s.path,
            s.query
        );
        assert_eq!(s.content_type, "application/apply-patch+yaml", "{}", s.path);
    }
    // Every applied object is owned by the LogPlayer.
    for s in sent
        .iter()
        .filter(|s| s.method == Method::PATCH && !s.path.ends_with("/status"))
    {
        assert_eq!(
            s.body["metadata"]["ownerReferences"][0]["uid"], "uid-demo",
            "{}",
            s.path
        );
    }
    // The shards, the LogStore (external, dead) and the Lease were looked at.
    let st = &status_patch(&sent).body["status"];
    assert_eq!(st["observedGeneration"], 3);
    assert_eq!(st["leader"], "demo-player-abc");
    assert_eq!(st["epoch"], 7);
    assert_eq!(st["readyReplicas"], 3);
    assert_eq!(condition(st, "LeaderElected")["status"], "True");
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "LogStoreUnreachable");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(message.contains(DEAD), "{message}");
    let shards = &st["problems"][1];
    assert_eq!(shards["reason"], "ShardUnreachable");
    let text = shards["message"].as_str().unwrap_or_default();
    assert!(
        text.contains("4 of 4 shards do not answer") && text.contains("shard s3"),
        "{text}"
    );
    assert_eq!(condition(st, "Ready")["status"], "False");
    assert_eq!(condition(st, "Progressing")["reason"], "Complete");
    // Neither the LogStore nor the shard answers: the lag is unknown, not 0.
    assert_eq!(st["shards"][0], json!({"name": "s0", "ackedIndex": 40}));
    // The problem and the new leader were announced.
    let ev = events(&sent);
    assert!(
        ev.contains(&("Warning".into(), "LogStoreUnreachable".into())),
        "{ev:?}"
    );
    assert!(
        ev.contains(&("Normal".into(), "LeaderElected".into())),
        "{ev:?}"
    );
    assert!(
        metrics.contains("logplayer_operator_reconciliations_total{kind=\"LogPlayer\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_replica_has_no_disruption_budget_and_a_managed_log_gets_a_stateful_set() {
    let mut lp = logplayer(1, false);
    lp["spec"]["logStore"] = json!({"managed": {"storage": "2Gi"}});
    let mut w = world(&lp, four_shards());
    w.lists.insert(
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets".into(),
        vec![owned_meta(
            "PodDisruptionBudget",
            "policy/v1",
            "demo-player",
            "uid-demo",
        )],
    );
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert!(result.is_ok(), "{result:?}");
    let applied = applies(&sent);
    assert!(
        applied.contains(&"/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore".into()),
        "{applied:?}"
    );
    assert!(
        applied.contains(&"/api/v1/namespaces/ns/services/demo-logstore".into()),
        "{applied:?}"
    );
    // The players' budget is gone with one player; the log replicas keep theirs.
    assert!(
        !applied
            .iter()
            .any(|p| p.contains("poddisruptionbudgets/demo-player")),
        "{applied:?}"
    );
    assert!(
        applied
            .contains(&"/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo-logstore".into()),
        "{applied:?}"
    );
    // A budget left from when replicas was > 1 is deleted.
    assert!(sent.iter().any(|s| s.method == Method::DELETE
        && s.path == "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo-player"));
}

#[tokio::test]
async fn a_paused_logplayer_is_only_observed() {
    let lp = logplayer(3, true);
    let (result, sent, _) = reconcile_lp(&lp, world(&lp, four_shards())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(applies(&sent), Vec::<String>::new());
    assert!(!sent.iter().any(|s| s.method == Method::DELETE));
    let st = &status_patch(&sent).body["status"];
    assert_eq!(condition(st, "ReconciliationPaused")["status"], "True");
    assert_eq!(
        condition(st, "ReconciliationPaused")["reason"],
        "PauseAnnotation"
    );
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let lp = logplayer(3, false);
    let (_, sent, _) = reconcile_lp(&lp, world(&lp, four_shards())).await;
    let mut lp2 = lp.clone();
    lp2["status"] = status_patch(&sent).body["status"].clone();
    let mut again = world(&lp2, four_shards());
    // The certificates of the first run are found again, as in a cluster: issued anew in
    // another second, they would expire at another time, which the status says.
    keep_written_secrets(&mut again, &sent);
    let (_, sent2, _) = reconcile_lp(&lp2, again).await;
    assert!(
        !sent2
            .iter()
            .any(|s| s.method == Method::PATCH && s.path.ends_with("/status")),
        "{sent2:#?}"
    );
    assert_eq!(events(&sent2), Vec::<(String, String)>::new());
}

/// Puts the Secrets a reconciliation wrote into `world`, where a later one reads them.
fn keep_written_secrets(world: &mut World, sent: &[Sent]) {
    const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
    for s in sent {
        let written = (s.method == Method::POST && s.path == SECRETS)
            || (s.method == Method::PATCH && s.path.starts_with(SECRETS));
        if let (true, Some(name)) = (written, s.body["metadata"]["name"].as_str()) {
            world
                .objects
                .insert(format!("{SECRETS}/{name}"), s.body.clone());
        }
    }
}

/// Runs one Shard reconciliation.
async fn reconcile_one_shard(
    s: &Value,
    world: World,
) -> (Result<Action, OperatorError>, Vec<Sent>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, world));
    let ctx = context(service);
    let obj: Shard = serde_json::from_value(s.clone()).expect("a Shard");
    let result = tokio::time::timeout(Duration::from_secs(30), reconcile_shard(Arc::new(obj), ctx))
        .await
        .expect("the reconciliation finishes");
    (result, server.await.expect("the scripted server"))
}

#[tokio::test]
async fn a_managed_shard_gets_its_server_and_status_without_touching_the_cursor() {
    let lp = logplayer(3, false);
    let s0 = shard("s0", 0, 16383, true);
    let (result, sent) = reconcile_one_shard(&s0, world(&lp, vec![s0.clone()])).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        applies(&sent),
        vec![
            "/api/v1/namespaces/ns/services/s0-shard".to_owned(),
            "/apis/apps/v1/namespaces/ns/statefulsets/s0-shard".to_owned(),
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/s0-shard".to_owned(),
        ]
    );
    let sts = &sent[2].body;
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "uid-s0");
    let patch = status_patch(&sent);
    assert!(patch.path.ends_with("/shards/s0/status"));
    let st = &patch.body["status"];
    assert!(
        st.get("ackedIndex").is_none() && st.get("ackedEpoch").is_none(),
        "{st}"
    );
    assert_eq!(st["endpoint"], "s0-shard.ns.svc:7100");
    assert_eq!(st["ready"], false);
    // No pod of the server runs yet: starting, not "unreachable".
    assert_eq!(condition(st, "Ready")["reason"], "Starting");
}

#[tokio::test]
async fn a_shard_whose_logplayer_is_missing_says_so() {
    let s0 = shard("s0", 0, 16383, false);
    let mut w = world(&logplayer(3, false), vec![s0.clone()]);
    w.objects.remove(LP_PATH);
    let (result, sent) = reconcile_one_shard(&s0, w).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(applies(&sent), Vec::<String>::new());
    let st = &status_patch(&sent).body["status"];
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "LogPlayerNotFound");
}

/// A status the API server refuses to store (RBAC, an admission policy) is said in a Warning
/// Event once the failure repeats: the status itself can only show what was last written.
#[tokio::test]
async fn a_status_the_api_server_refuses_is_said_in_an_event() {
    let lp = logplayer(3, false);
    let mut w = world(&lp, four_shards());
    w.refuse
        .insert(format!("{LP_PATH}/status"), "denied by a policy".into());
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, w));
    let ctx = context(service);
    let obj: Arc<LogPlayer> = Arc::new(serde_json::from_value(lp).expect("a LogPlayer"));
    for _ in 0..3 {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            reconcile_logplayer(obj.clone(), ctx.clone()),
        )
        .await
        .expect("the reconciliation finishes");
        assert!(result.is_err(), "{result:?}");
    }
    drop(ctx);
    let sent = server.await.expect("the scripted server");
    let events = events(&sent);
    assert!(
        events.contains(&("Warning".to_owned(), "StatusWriteFailed".to_owned())),
        "{events:?}"
    );
}

/// A LogPlayer being deleted (a foreground deletion, or a finalizer of someone else's) gets
/// nothing applied or pruned, no certificate written: applying would make again what the
/// garbage collector removes, a new CA among them. Its status says so.
#[tokio::test]
async fn a_logplayer_being_deleted_gets_nothing_applied_and_says_so() {
    let mut lp = logplayer(3, false);
    lp["metadata"]["deletionTimestamp"] = json!("2026-12-05T08:00:00Z");
    lp["metadata"]["finalizers"] = json!(["example.com/backup"]);
    let (result, sent, _) = reconcile_lp(&lp, world(&lp, four_shards())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(applies(&sent), Vec::<String>::new());
    assert!(
        !sent.iter().any(|s| s.method == Method::DELETE
            || s.method == Method::POST && s.path.contains("/secrets")),
        "{sent:#?}"
    );
    let st = &status_patch(&sent).body["status"];
    let ready = condition(st, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("Deleting"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("example.com/backup"),
        "{ready}"
    );
}

/// A Shard that names a LogPlayer whose shardSelector does not select it is not Ready: it
/// read `Serving` while nothing was delivered to it.
#[tokio::test]
async fn a_shard_its_logplayer_does_not_select_says_so() {
    let mut lp = logplayer(3, false);
    lp["spec"]["shardSelector"] = json!({"matchLabels": {"tier": "hot"}});
    let s0 = shard("s0", 0, 16383, false);
    let (result, sent) = reconcile_one_shard(&s0, world(&lp, vec![s0.clone()])).await;
    assert!(result.is_ok(), "{result:?}");
    let st = &status_patch(&sent).body["status"];
    let ready = condition(st, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("NotSelected"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tier"),
        "{ready}"
    );
}

/// A managed Shard whose LogPlayer was deleted keeps its running server as it is: nothing
/// is applied to it (rebuilt without its LogPlayer, with the default image and TLS files
/// nobody issues, it would roll onto pods that cannot start).
#[tokio::test]
async fn a_managed_shard_whose_logplayer_is_gone_keeps_its_server_untouched() {
    let s0 = shard("s0", 0, 16383, true);
    let parsed: Shard = serde_json::from_value(s0.clone()).expect("a Shard");
    let sts = desired::shard_server_name(&parsed);
    let mut w = world(&logplayer(3, false), vec![s0.clone()]);
    w.objects.remove(LP_PATH);
    w.objects.insert(
        format!("/apis/apps/v1/namespaces/ns/statefulsets/{sts}"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": sts, "namespace": "ns"},
               "spec": {"replicas": 1, "selector": {}, "serviceName": sts, "template": {}}}),
    );
    let (result, sent) = reconcile_one_shard(&s0, w).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(applies(&sent), Vec::<String>::new());
    let st = &status_patch(&sent).body["status"];
    assert_eq!(condition(st, "Degraded")["reason"], "LogPlayerNotFound");
}

#[tokio::test]
async fn api_errors_are_retried_and_counted() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    // An API server that answers every request with 500.
    let server = tokio::spawn(async move {
        let mut handle = handle;
        while let Some((_, send)) = handle.next_request().await {
            respond(
                send,
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "InternalError", "code": 500,
                            "message": "etcd is down"}),
            );
        }
    });
    let ctx = context(service);
    let lp: LogPlayer = serde_json::from_value(logplayer(3, false)).expect("a LogPlayer");
    let lp = Arc::new(lp);
    let error = reconcile_logplayer(lp.clone(), ctx.clone())
        .await
        .expect_err("a 500 fails the reconciliation");
    assert!(error.to_string().contains("etcd is down"), "{error}");
    let action = error_policy::<LogPlayer>("LogPlayer")(lp, &error, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let text = crate::metrics::Exposition::encode(ctx.metrics.as_ref());
    assert!(
        text.contains(
            "logplayer_operator_reconcile_errors_total{kind=\"LogPlayer\",reason=\"KubeApi\"} 1"
        ),
        "{text}"
    );
    drop(ctx);
    let _ = server.await;
}

/// One failed reconciliation (a 429 on a read, a brief outage of the API server) is not written into
/// the status; the third in a row is, and a success starts the count again.
#[tokio::test]
async fn a_failure_is_reported_in_the_status_only_once_it_repeats() {
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(service);
    let lp: LogPlayer = serde_json::from_value(logplayer(3, false)).expect("a LogPlayer");
    let reported = |ok| failing(&ctx, "LogPlayer", &lp, ok);
    assert_eq!((reported(false), reported(false)), (None, None));
    assert_eq!(reported(false).as_deref(), Some("ns"));
    assert_eq!(reported(false).as_deref(), Some("ns"));
    assert_eq!(reported(true), None);
    assert_eq!(reported(false), None, "counted again from the success");
}

/// A listed object's metadata, controlled by `owner`.
fn owned_meta(kind: &str, api_version: &str, name: &str, owner: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": "ns",
                        "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
                        "ownerReferences": [{"apiVersion": "logplayer.io/v1alpha1",
                            "kind": "LogPlayer", "name": "demo", "uid": owner,
                            "controller": true}]}})
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/ns";

/// The API server may not yet count the operator's just-made binding when the players' Role
/// comes: that refusal (an escalation, 403) is asked again, not reported.
#[tokio::test]
async fn the_players_role_is_asked_again_while_the_operators_binding_is_not_counted_yet() {
    let lp = logplayer(3, false);
    let mut w = world(&lp, four_shards());
    let role = format!("{RBAC}/roles/demo-player");
    w.forbid.insert(role.clone(), 2);
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert!(result.is_ok(), "{result:?}");
    let tries = applies(&sent).iter().filter(|p| **p == role).count();
    assert_eq!(tries, 3, "two refusals, then applied");
    let st = &status_patch(&sent).body["status"];
    assert_ne!(condition(st, "Degraded")["reason"], "ApplyFailed", "{st}");
}

/// The players' binding of an older operator refers to the ClusterRole, and a roleRef never
/// changes: ours is deleted and made again, referring to the players' Role; somebody else's
/// of that name is left alone, and the refusal reported.
#[tokio::test]
async fn a_players_binding_to_another_role_is_made_again_if_it_is_ours() {
    for (owner, ours) in [("uid-demo", true), ("uid-someone-else", false)] {
        let lp = logplayer(3, false);
        let mut w = world(&lp, four_shards());
        let binding = format!("{RBAC}/rolebindings/demo-player");
        w.refuse.insert(
            binding.clone(),
            "RoleBinding.rbac.authorization.k8s.io \"demo-player\" is invalid: roleRef: \
             Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", \
             Kind:\"Role\", Name:\"demo-player\"}: cannot change roleRef"
                .into(),
        );
        w.lists.insert(
            format!("{RBAC}/rolebindings"),
            vec![{
                let mut b = owned_meta(
                    "RoleBinding",
                    "rbac.authorization.k8s.io/v1",
                    "demo-player",
                    owner,
                );
                b["metadata"]["uid"] = json!("uid-binding");
                b
            }],
        );
        let (result, sent, _) = reconcile_lp(&lp, w).await;
        assert!(result.is_ok(), "{result:?}");
        let on_binding: Vec<&Method> = sent
            .iter()
            .filter(|s| s.path == binding)
            .map(|s| &s.method)
            .collect();
        let asked = sent
            .iter()
            .find(|s| s.path == format!("{RBAC}/rolebindings") && s.method == Method::GET)
            .expect("the binding looked up");
        assert!(
            asked
                .query
                .contains("fieldSelector=metadata.name%3Ddemo-player"),
            "{}",
            asked.query
        );
        let st = &status_patch(&sent).body["status"];
        if ours {
            assert_eq!(
                on_binding,
                vec![&Method::PATCH, &Method::DELETE, &Method::PATCH]
            );
            let delete = sent
                .iter()
                .find(|s| s.path == binding && s.method == Method::DELETE)
                .expect("a delete");
            assert_eq!(
                delete.body["preconditions"]["uid"], "uid-binding",
                "that very binding: {}",
                delete.body
            );
            assert_ne!(condition(st, "Degraded")["reason"], "ApplyFailed", "{st}");
        } else {
            assert_eq!(on_binding, vec![&Method::PATCH]);
            assert_eq!(condition(st, "Degraded")["reason"], "ApplyFailed", "{st}");
        }
    }
}

#[tokio::test]
async fn a_switch_to_an_external_log_deletes_the_managed_logstore() {
    let lp = logplayer(3, false);
    let mut w = world(&lp, four_shards());
    w.lists.insert(
        "/apis/apps/v1/namespaces/ns/statefulsets".into(),
        vec![
            owned_meta("StatefulSet", "apps/v1", "demo-logstore", "uid-demo"),
            // Somebody else's: kept.
            owned_meta("StatefulSet", "apps/v1", "other", "uid-other"),
        ],
    );
    w.lists.insert(
        "/api/v1/namespaces/ns/services".into(),
        vec![
            owned_meta("Service", "v1", "demo-logstore", "uid-demo"),
            owned_meta("Service", "v1", "demo-player-metrics", "uid-demo"),
        ],
    );
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert!(result.is_ok(), "{result:?}");
    let deleted: Vec<&str> = sent
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        deleted,
        [
            "/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore",
            "/api/v1/namespaces/ns/services/demo-logstore",
        ]
    );
    // The lists asked only for the operator's own objects.
    assert!(
        sent.iter()
            .filter(|s| s.method == Method::GET && s.path.ends_with("/statefulsets"))
            .all(|s| s.query.contains("managed-by")),
        "{sent:?}"
    );
}

/// A managed LogStore scaled down (3 -> 1) while nobody can tell its membership (no replica
/// answers) keeps the pods its StatefulSet has: shrinking it would delete the pods of
/// replicas that still vote, and the group would lose its majority for good. Either half of
/// "no group ever formed" alone keeps them: a log id in the status (a group formed, though
/// none of its pods runs now), or a running replica pod (a group may have formed since the
/// status was last written).
#[tokio::test]
async fn a_managed_log_scaled_down_while_its_membership_is_unknown_keeps_its_pods() {
    // The log id in the status, and each replica's pod phase.
    let cases = [
        (Some("log-a"), ["Running", "Running", "Running"]),
        (Some("log-a"), ["Pending", "Pending", "Pending"]),
        // Not replica 1's pod: running without a log id, the operator would seed it.
        (None, ["Pending", "Running", "Running"]),
    ];
    for (log_id, phases) in cases {
        let mut lp = logplayer(1, false);
        lp["spec"]["logStore"] = json!({"managed": {"storage": "2Gi", "replicas": 1}});
        lp["status"] = json!({"logStore": {"logId": log_id, "replicas": 3, "voters": 3}});
        let mut w = world(&lp, four_shards());
        let pods = phases
            .iter()
            .enumerate()
            .map(|(i, phase)| {
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": format!("demo-logstore-{i}"), "namespace": "ns",
                                    "labels": {"app.kubernetes.io/component": "logstore",
                                               "app.kubernetes.io/instance": "demo"}},
                       "status": {"phase": phase}})
            })
            .collect();
        w.lists.insert("/api/v1/namespaces/ns/pods".into(), pods);
        w.objects.insert(
            "/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore".into(),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                   "metadata": {"name": "demo-logstore", "namespace": "ns"},
                   "spec": {"replicas": 3, "selector": {}, "serviceName": "demo-logstore",
                            "template": {}}}),
        );
        let (result, sent, _) = reconcile_lp(&lp, w).await;
        assert!(result.is_ok(), "{log_id:?}: {result:?}");
        let path = "/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore";
        let applied = sent
            .iter()
            .find(|s| s.method == Method::PATCH && s.path == path)
            .expect("the StatefulSet is applied");
        assert_eq!(
            applied.body["spec"]["replicas"], 3,
            "{log_id:?}: {}",
            applied.body["spec"]
        );
    }
}
