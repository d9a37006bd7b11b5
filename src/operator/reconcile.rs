//! The controllers: each reconciliation reads, builds the desired objects, applies them,
//! observes, and writes the status and Events; timed and counted by one helper.

use super::apply::{apply, apply_status, delete_if_present};
use super::metrics::{ErrorLabel, KindLabel};
use super::observe::{observe, paused, probe_shard, shards_of};
use super::{Context, OperatorError, RESYNC, desired, status};
use crate::crd::{LogPlayer, Shard};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(super) async fn reconcile_logplayer(
    lp: Arc<LogPlayer>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    measured(
        &ctx,
        "LogPlayer",
        &*lp,
        reconcile_logplayer_inner(&lp, &ctx),
    )
    .await
}

/// Runs one reconciliation of `obj` inside a tracing span, counting it and timing it.
async fn measured(
    ctx: &Context,
    kind: &'static str,
    obj: &impl ResourceExt,
    reconcile: impl std::future::Future<Output = Result<Action, OperatorError>>,
) -> Result<Action, OperatorError> {
    let (name, namespace) = (obj.name_any(), obj.namespace().unwrap_or_default());
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

pub(super) async fn reconcile_shard(
    shard: Arc<Shard>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    measured(&ctx, "Shard", &*shard, reconcile_shard_inner(&shard, &ctx)).await
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

pub(super) fn error_policy<K>(
    kind: &'static str,
) -> impl Fn(Arc<K>, &OperatorError, Arc<Context>) -> Action {
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
pub(super) async fn run_controllers(ctx: Arc<Context>, stop: CancellationToken) {
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
