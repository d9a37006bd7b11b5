//! `logplayer operator`: the Kubernetes controllers for `LogPlayer` and `Shard`.
//!
//! The operator runs as several replicas behind its own Lease (the same elector the players
//! use); only the leader reconciles. For a LogPlayer it keeps the objects [`desired`] builds
//! (player Deployment, ServiceAccount, Role, RoleBinding, shard-map ConfigMap, metrics
//! Service, a PodDisruptionBudget when replicas > 1, and the managed LogStore StatefulSet and
//! Service when asked), applied by server-side apply under the field manager
//! [`FIELD_MANAGER`], owned by the LogPlayer so that deleting it deletes them. It then
//! observes the Deployment, the players' Lease, the Shards, the LogStore's head and the
//! player pods, and writes the status [`status`] computes, with Events on condition changes.
//! For a Shard with a managed server it keeps its StatefulSet and Service. No finalizers:
//! owner references are all the cleanup there is.
//!
//! Pause reconciliation of one LogPlayer with the annotation `logplayer.io/paused: "true"`:
//! the operator then only reports status (with `ReconciliationPaused`).

pub mod desired;
pub mod names;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crd::{LogPlayer, Shard};
use crate::lease::{self, LeaseBackend, LeaseConfig, Role as LeaseRole};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "logplayer-operator";
/// Annotation that pauses reconciliation of one LogPlayer.
pub const PAUSE_ANNOTATION: &str = "logplayer.io/paused";
/// How often a healthy LogPlayer is looked at again (lag, leader, reachability).
const RESYNC: Duration = Duration::from_secs(15);

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{kind} has no namespace")]
    NoNamespace { kind: &'static str },
    #[error("{0}")]
    Desired(#[from] desired::DesiredError),
    #[error("lease: {0}")]
    Lease(#[from] crate::lease::LeaseError),
}

impl OperatorError {
    /// A short, stable label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "KubeApi",
            OperatorError::NoNamespace { .. } => "NoNamespace",
            OperatorError::Desired(e) => e.reason(),
            OperatorError::Lease(_) => "Lease",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    kind: String,
    reason: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The operator's metrics: reconciliations, errors and durations per kind, and leadership.
pub struct OperatorMetrics {
    registry: Registry,
    reconciliations: Family<KindLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    durations: Family<KindLabel, Histogram, fn() -> Histogram>,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("logplayer_operator");
        let reconciliations = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let durations = Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciliations run, per kind",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, per kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the operator lease",
            leader.clone(),
        );
        OperatorMetrics {
            registry,
            reconciliations,
            errors,
            durations,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl crate::metrics::Exposition for OperatorMetrics {
    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease: LeaseConfig,
    pub defaults: desired::Defaults,
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub defaults: desired::Defaults,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
}

/// Server-side applies `obj` (namespaced) under [`FIELD_MANAGER`].
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Server-side applies the status of one of our resources under [`FIELD_MANAGER`].
async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Deletes a namespaced object if it exists (for objects the spec no longer asks for).
async fn delete_if_present<K>(client: &Client, ns: &str, name: &str) -> Result<(), OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn paused(lp: &LogPlayer) -> bool {
    lp.annotations()
        .get(PAUSE_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The Shards a LogPlayer drives: same namespace, `spec.logPlayer` naming it, and matching
/// its `shardSelector`.
async fn shards_of(client: &Client, lp: &LogPlayer, ns: &str) -> Result<Vec<Shard>, OperatorError> {
    let api: Api<Shard> = Api::namespaced(client.clone(), ns);
    let mut params = ListParams::default();
    if let Ok(selector) = kube::core::Selector::try_from(lp.spec.shard_selector.clone()) {
        params = params.labels_from(&selector);
    }
    let name = lp.name_any();
    Ok(api
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|s| s.spec.log_player == name)
        .collect())
}

async fn reconcile_logplayer(
    lp: Arc<LogPlayer>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let (name, namespace) = (lp.name_any(), lp.namespace().unwrap_or_default());
    measured(
        &ctx,
        "LogPlayer",
        &name,
        &namespace,
        reconcile_logplayer_inner(&lp, &ctx),
    )
    .await
}

/// Runs one reconciliation inside a tracing span, counting it and timing it.
async fn measured(
    ctx: &Context,
    kind: &'static str,
    name: &str,
    namespace: &str,
    reconcile: impl std::future::Future<Output = Result<Action, OperatorError>>,
) -> Result<Action, OperatorError> {
    let started = Instant::now();
    let label = KindLabel { kind: kind.into() };
    ctx.metrics.reconciliations.get_or_create(&label).inc();
    let span = tracing::info_span!("reconcile", kind, name, namespace);
    let result = reconcile.instrument(span.clone()).await;
    span.in_scope(
        || tracing::debug!(elapsed = ?started.elapsed(), ok = result.is_ok(), "reconciled"),
    );
    ctx.metrics
        .durations
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_logplayer_inner(lp: &LogPlayer, ctx: &Context) -> Result<Action, OperatorError> {
    let ns = lp
        .namespace()
        .ok_or(OperatorError::NoNamespace { kind: "LogPlayer" })?;
    let shards = shards_of(&ctx.client, lp, &ns).await?;
    let is_paused = paused(lp);
    // A spec a user can fix is reported in the status, not retried as an error: what runs
    // keeps running, and the next change of the LogPlayer or a Shard reconciles again.
    let spec_problem = match desired::player_objects(lp, &shards, &ctx.defaults) {
        Ok(objects) => {
            if !is_paused {
                apply_player_objects(&ctx.client, &ns, lp, objects).await?;
            }
            None
        }
        Err(e @ desired::DesiredError::Yaml(_)) => return Err(e.into()),
        Err(e) => Some(status::Problem::new(e.reason(), e.to_string())),
    };
    let observed = observe(ctx, lp, &ns, &shards, spec_problem, is_paused).await?;
    let old = lp.status.clone().unwrap_or_default();
    let new = status::logplayer_status(&observed, &old, status::now());
    publish(ctx, lp.object_ref(&()), &old.conditions, &new.conditions).await;
    if new != old {
        apply_status::<LogPlayer>(&ctx.client, &ns, &lp.name_any(), &new).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Publishes the Events for a change of conditions (best effort: a failed Event is logged).
async fn publish(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    new: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    for e in status::events_for(old, new) {
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason,
            note: Some(e.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "could not publish an event");
        }
    }
}

async fn apply_player_objects(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    o: desired::PlayerObjects,
) -> Result<(), OperatorError> {
    apply(client, ns, &o.service_account).await?;
    apply(client, ns, &o.role).await?;
    apply(client, ns, &o.role_binding).await?;
    apply(client, ns, &o.shard_map).await?;
    apply(client, ns, &o.metrics_service).await?;
    if let Some(logstore) = &o.logstore {
        apply(client, ns, &logstore.service).await?;
        apply(client, ns, &logstore.stateful_set).await?;
    }
    apply(client, ns, &o.deployment).await?;
    match &o.pdb {
        Some(pdb) => {
            apply(client, ns, pdb).await?;
        }
        None => {
            delete_if_present::<PodDisruptionBudget>(client, ns, &desired::player_name(lp)).await?
        }
    }
    Ok(())
}

async fn reconcile_shard(shard: Arc<Shard>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let (name, namespace) = (shard.name_any(), shard.namespace().unwrap_or_default());
    measured(
        &ctx,
        "Shard",
        &name,
        &namespace,
        reconcile_shard_inner(&shard, &ctx),
    )
    .await
}

async fn reconcile_shard_inner(shard: &Shard, ctx: &Context) -> Result<Action, OperatorError> {
    let ns = shard
        .namespace()
        .ok_or(OperatorError::NoNamespace { kind: "Shard" })?;
    let owner = Api::<LogPlayer>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&shard.spec.log_player)
        .await?;
    let image = owner.as_ref().and_then(|lp| lp.spec.image.clone());
    let pull_policy = owner.as_ref().and_then(|lp| lp.spec.image_pull_policy);
    let paused = owner.as_ref().is_some_and(paused);
    let spec_problem =
        match desired::shard_objects(shard, &ctx.defaults, image.as_deref(), pull_policy) {
            Ok(Some(objects)) => {
                if !paused {
                    apply(&ctx.client, &ns, &objects.service).await?;
                    apply(&ctx.client, &ns, &objects.stateful_set).await?;
                }
                None
            }
            Ok(None) => None,
            Err(e) => Some(status::Problem::new(e.reason(), e.to_string())),
        };
    let endpoint = desired::shard_endpoint(shard, &ctx.defaults);
    let probe = match &endpoint {
        Some(addr) => probe_shard(addr).await,
        None => status::Probe::Unknown,
    };
    let name = shard.name_any();
    let lag = owner
        .as_ref()
        .and_then(|lp| lp.status.as_ref())
        .and_then(|s| s.shards.iter().find(|p| p.name == name))
        .map(|p| p.lag);
    let observed = status::ShardObservation {
        generation: shard.metadata.generation.unwrap_or(0),
        endpoint,
        probe,
        spec_problem,
        log_player_found: owner.is_some(),
        lag,
    };
    let old = shard.status.clone().unwrap_or_default();
    let new = status::shard_status(&observed, &old, status::now());
    publish(ctx, shard.object_ref(&()), &old.conditions, &new.conditions).await;
    // Compare only the operator's fields: the player owns the cursor fields, which
    // `shard_status` leaves unset.
    let mine = crate::crd::ShardStatus {
        acked_index: None,
        acked_epoch: None,
        covered_index: None,
        ..old.clone()
    };
    if new != mine {
        apply_status::<Shard>(&ctx.client, &ns, &name, &new).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Asks a shard server its applied index.
async fn probe_shard(addr: &str) -> status::Probe {
    let asked = tokio::time::timeout(PROBE_TIMEOUT, async {
        let conn = crate::client::ShardConn::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        conn.applied().await.map_err(|e| e.to_string())
    })
    .await;
    match asked {
        Ok(Ok(_)) => status::Probe::Reachable,
        Ok(Err(e)) => status::Probe::Unreachable(format!("{addr} does not answer: {e}")),
        Err(_) => status::Probe::Unreachable(format!(
            "{addr} did not answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    }
}

fn error_policy<K>(kind: &'static str) -> impl Fn(Arc<K>, &OperatorError, Arc<Context>) -> Action {
    move |_obj, error, ctx| {
        tracing::warn!(kind, %error, "reconcile failed");
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabel {
                kind: kind.into(),
                reason: error.reason().into(),
            })
            .inc();
        Action::requeue(Duration::from_secs(5))
    }
}

/// Runs both controllers until `stop`.
async fn run_controllers(ctx: Arc<Context>, stop: CancellationToken) {
    let client = ctx.client.clone();
    let lps: Api<LogPlayer> = Api::all(client.clone());
    let shards: Api<Shard> = Api::all(client.clone());
    let cfg = watcher::Config::default();
    let logplayers = Controller::new(lps, cfg.clone())
        .owns(Api::<Deployment>::all(client.clone()), cfg.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), cfg.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), cfg.clone())
        .owns(Api::<Service>::all(client.clone()), cfg.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), cfg.clone())
        .owns(Api::<Role>::all(client.clone()), cfg.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), cfg.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), cfg.clone())
        .watches(shards.clone(), cfg.clone(), |s: Shard| {
            s.namespace()
                .map(|ns| ObjectRef::<LogPlayer>::new(&s.spec.log_player).within(&ns))
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile_logplayer, error_policy("LogPlayer"), ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "LogPlayer controller");
            }
        });
    let shard_controller = Controller::new(shards, cfg.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), cfg.clone())
        .owns(Api::<Service>::all(client.clone()), cfg)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_shard, error_policy("Shard"), ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Shard controller");
            }
        });
    tokio::join!(logplayers, shard_controller);
}

/// Runs the operator: contends for its lease; while leading, runs the controllers.
pub async fn run(
    config: OperatorConfig,
    metrics: Arc<OperatorMetrics>,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let client = Client::try_default().await?;
    let backend: Arc<dyn LeaseBackend> = Arc::new(lease::KubeLease::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        config.lease.lease_duration,
    )?);
    let (role_tx, mut role) = tokio::sync::watch::channel(LeaseRole::Standby);
    let elector_stop = CancellationToken::new();
    let elector = tokio::spawn(lease::run_elector(
        backend,
        config.lease,
        role_tx,
        elector_stop.clone(),
    ));
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(config.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults: config.defaults.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client, reporter),
    });
    metrics.ready.store(true, Ordering::Relaxed);
    loop {
        // Standby until elected.
        let leading = loop {
            if matches!(*role.borrow_and_update(), LeaseRole::Leader { .. }) {
                break true;
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { break false },
                _ = shutdown.cancelled() => break false,
            }
        };
        if !leading {
            break;
        }
        metrics.leader.set(1);
        tracing::info!(identity = %config.identity, "operator leading");
        let term = shutdown.child_token();
        let controllers = tokio::spawn(run_controllers(ctx.clone(), term.clone()));
        loop {
            if !matches!(*role.borrow_and_update(), LeaseRole::Leader { .. }) {
                break;
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
        term.cancel();
        let _ = controllers.await;
        metrics.leader.set(0);
        tracing::info!("operator stopped leading");
        if shutdown.is_cancelled() {
            break;
        }
    }
    metrics.ready.store(false, Ordering::Relaxed);
    elector_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    Ok(())
}

/// How long a probe of a shard or the LogStore may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks at everything a LogPlayer's status reports.
async fn observe(
    ctx: &Context,
    lp: &LogPlayer,
    ns: &str,
    shards: &[Shard],
    spec_problem: Option<status::Problem>,
    paused: bool,
) -> Result<status::Observed, OperatorError> {
    let client = &ctx.client;
    let player = desired::player_name(lp);
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&player)
        .await?;
    let dstatus = deployment.and_then(|d| d.status).unwrap_or_default();
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&player)
        .await?
        .map(|l| lease_info(&l, status::now()));
    // The LogStore's head, for lag.
    let (logstore, head_index) = match desired::logstore_endpoint(lp, ns, &ctx.defaults) {
        Some(addr) => {
            let asked = tokio::time::timeout(PROBE_TIMEOUT, async {
                let log = crate::client::Log::connect(&addr)
                    .await
                    .map_err(|e| e.to_string())?;
                log.bounds().await.map_err(|e| e.to_string())
            })
            .await;
            match asked {
                Ok(Ok((_, last))) => (status::Probe::Reachable, i64::try_from(last).ok()),
                Ok(Err(e)) => (
                    status::Probe::Unreachable(format!("LogStore at {addr} does not answer: {e}")),
                    None,
                ),
                Err(_) => (
                    status::Probe::Unreachable(format!(
                        "LogStore at {addr} did not answer within {}",
                        humantime::format_duration(PROBE_TIMEOUT)
                    )),
                    None,
                ),
            }
        }
        None => (status::Probe::Unknown, None),
    };
    let mut sorted: Vec<&Shard> = shards.iter().collect();
    sorted.sort_by_key(|s| s.name_any());
    let mut observed_shards = Vec::with_capacity(sorted.len());
    for s in sorted {
        let probe = match desired::shard_endpoint(s, &ctx.defaults) {
            Some(addr) => probe_shard(&addr).await,
            None => status::Probe::Unknown,
        };
        observed_shards.push(status::ShardObserved {
            name: s.name_any(),
            acked_index: s.status.as_ref().and_then(|st| st.acked_index),
            covered_index: s.status.as_ref().and_then(|st| st.covered_index),
            probe,
        });
    }
    let pod_problem = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&desired::player_pod_selector(lp)))
        .await?
        .items
        .iter()
        .find_map(pod_problem);
    Ok(status::Observed {
        generation: lp.metadata.generation.unwrap_or(0),
        desired_replicas: lp.spec.replicas,
        replicas: dstatus.replicas.unwrap_or(0),
        ready_replicas: dstatus.ready_replicas.unwrap_or(0),
        updated_replicas: dstatus.updated_replicas.unwrap_or(0),
        lease,
        shards: observed_shards,
        head_index,
        logstore,
        spec_problem,
        pod_problem,
        paused,
    })
}

/// Holder, epoch and freshness of the players' Lease at `now`.
pub fn lease_info(
    lease: &Lease,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> status::LeaseInfo {
    let spec = lease.spec.clone().unwrap_or_default();
    let fresh = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                secs,
            )))
            .is_ok_and(|until| now.0 <= until),
        _ => false,
    };
    status::LeaseInfo {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        transitions: i64::from(spec.lease_transitions.unwrap_or(0)),
        fresh,
    }
}

/// A player pod whose container cannot start, as a problem naming the pod and the reason.
pub fn pod_problem(pod: &Pod) -> Option<status::Problem> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = match waiting.reason.as_deref()? {
            "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
                "ImagePullFailed"
            }
            "CrashLoopBackOff" => "CrashLoopBackOff",
            "CreateContainerConfigError" | "CreateContainerError" => "ContainerCannotStart",
            _ => return None,
        };
        Some(status::Problem::new(
            reason,
            format!(
                "pod {} container {} ({}): {}{}",
                pod.name_any(),
                c.name,
                c.image,
                waiting.reason.as_deref().unwrap_or_default(),
                waiting
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    //! Reconciliations against kube's mock service: a scripted API server answers every
    //! request and records it, and the tests check what was asked, in what order, with
    //! which field manager and body.
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use tower_test::mock;

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

    fn not_found(path: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": "NotFound", "code": 404, "message": format!("{path} not found")})
    }

    /// Serves until the client is dropped; returns every request.
    async fn serve(mut handle: Handle, world: World) -> Vec<Sent> {
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
                if let Some(items) = world.lists.get(&path) {
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
                respond(send, StatusCode::NOT_FOUND, &not_found(&path));
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
            json!({"external": {"endpoint": DEAD}})
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

    fn world(lp: &Value, shards: Vec<Value>) -> World {
        let mut w = World::default();
        w.objects.insert(LP_PATH.into(), lp.clone());
        for s in &shards {
            let name = s["metadata"]["name"].as_str().unwrap_or_default();
            w.objects.insert(format!("{SHARDS_PATH}/{name}"), s.clone());
        }
        w.lists.insert(SHARDS_PATH.into(), shards);
        w.lists
            .insert("/api/v1/namespaces/ns/pods".into(), Vec::new());
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
                   "metadata": {"name": "demo-player", "namespace": "ns"},
                   "spec": {"selector": {}, "template": {}},
                   "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3}}),
        );
        w
    }

    fn context(service: mock::Mock<Request<Body>, Response<Body>>) -> Arc<Context> {
        let client = Client::new(service, "ns");
        Arc::new(Context {
            client: client.clone(),
            defaults: desired::Defaults::default(),
            metrics: Arc::new(OperatorMetrics::default()),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some("test".into()),
                },
            ),
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
                format!("/api/v1{ns}/serviceaccounts/demo-player"),
                format!("/apis/rbac.authorization.k8s.io/v1{ns}/roles/demo-player"),
                format!("/apis/rbac.authorization.k8s.io/v1{ns}/rolebindings/demo-player"),
                format!("/api/v1{ns}/configmaps/demo-shard-map"),
                format!("/api/v1{ns}/services/demo-player-metrics"),
                format!("/apis/apps/v1{ns}/deployments/demo-player"),
                format!("/apis/policy/v1{ns}/poddisruptionbudgets/demo-player"),
            ]
        );
        for s in sent.iter().filter(|s| s.method == Method::PATCH) {
            assert!(
                s.query.contains("fieldManager=logplayer-operator")
                    && s.query.contains("force=true"),
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
        assert!(
            message.contains("4 of 4 shards do not answer") && message.contains("shard s3"),
            "{message}"
        );
        assert_eq!(condition(st, "Ready")["status"], "False");
        assert_eq!(condition(st, "Progressing")["reason"], "Complete");
        assert_eq!(
            st["shards"][0],
            json!({"name": "s0", "ackedIndex": 40, "lag": 0})
        );
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
        let (result, sent, _) = reconcile_lp(&lp, world(&lp, four_shards())).await;
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
        assert!(!applied.iter().any(|p| p.contains("poddisruptionbudgets")));
        // A budget left from when replicas was > 1 is deleted.
        assert!(sent.iter().any(|s| s.method == Method::DELETE
            && s.path == "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo-player"));
    }

    #[tokio::test]
    async fn overlapping_shards_are_reported_and_nothing_is_applied() {
        let lp = logplayer(3, false);
        let mut shards = four_shards();
        shards.push(shard("extra", 100, 200, false));
        let (result, sent, _) = reconcile_lp(&lp, world(&lp, shards)).await;
        assert!(
            result.is_ok(),
            "a user's mistake is status, not a retry: {result:?}"
        );
        assert_eq!(applies(&sent), Vec::<String>::new());
        let st = &status_patch(&sent).body["status"];
        let degraded = condition(st, "Degraded");
        assert_eq!(degraded["reason"], "SlotsOverlap");
        let message = degraded["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("100-200")
                && message.contains("\"extra\"")
                && message.contains("\"s0\""),
            "{message}"
        );
        assert_eq!(condition(st, "Ready")["reason"], "SlotsOverlap");
        assert!(
            events(&sent).contains(&("Warning".into(), "SlotsOverlap".into())),
            "{:?}",
            events(&sent)
        );
    }

    #[tokio::test]
    async fn missing_slots_are_reported_by_name() {
        let lp = logplayer(3, false);
        let shards = four_shards().into_iter().take(3).collect();
        let (_, sent, _) = reconcile_lp(&lp, world(&lp, shards)).await;
        let degraded = condition(&status_patch(&sent).body["status"], "Degraded").clone();
        assert_eq!(degraded["reason"], "SlotsUnowned");
        assert!(
            degraded["message"]
                .as_str()
                .unwrap_or_default()
                .contains("slots 12288-16383 are owned by no shard"),
            "{degraded}"
        );
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
        let (_, sent2, _) = reconcile_lp(&lp2, world(&lp2, four_shards())).await;
        assert!(
            !sent2
                .iter()
                .any(|s| s.method == Method::PATCH && s.path.ends_with("/status")),
            "{sent2:#?}"
        );
        assert_eq!(events(&sent2), Vec::<(String, String)>::new());
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
        let result =
            tokio::time::timeout(Duration::from_secs(30), reconcile_shard(Arc::new(obj), ctx))
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
        assert_eq!(condition(st, "Ready")["reason"], "ShardUnreachable");
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
}
