//! The controllers: each reconciliation reads, builds the desired objects, applies them,
//! observes, and writes the status and Events; timed and counted by one helper.

use super::apply::{apply, apply_rbac, apply_status, prune};
use super::metrics::{ErrorLabel, KindLabel};
use super::observe::{
    Found, ShardSeen, any_running, component_pods, observe, paused, pods_of, probe_shard_and_log,
    serving_replicas, shards_of,
};
use super::{Context, OperatorError, RESYNC, certs, desired, log_members, status, triggers};
use crate::crd::{LogPlayer, Shard};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(super) async fn reconcile_logplayer(
    lp: Arc<LogPlayer>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let result = measured(
        &ctx,
        "LogPlayer",
        &*lp,
        reconcile_logplayer_inner(&lp, &ctx),
    )
    .await;
    if let (Err(e), Some(ns)) = (&result, failing(&ctx, "LogPlayer", &*lp, result.is_ok())) {
        let old = lp.status.clone().unwrap_or_default();
        let generation = lp.metadata.generation.unwrap_or(0);
        let new = status::failed_logplayer_status(&old, generation, &e.to_string(), status::now());
        if new != old
            && report_failure::<LogPlayer>(
                &ctx,
                lp.object_ref(&()),
                &failure_key("LogPlayer", &*lp).unwrap_or_default(),
                &ns,
                &lp.name_any(),
                &new,
            )
            .await
        {
            publish(&ctx, lp.object_ref(&()), &old.conditions, &new.conditions).await;
        }
    }
    result
}

/// Reconciliations in a row that must fail before the failure is written into the status.
const FAILURES_BEFORE_REPORTING: u32 = 3;

/// Counts `obj`'s failed reconciliations in a row (`ok` resets the count); its namespace
/// once the failure is to be reported in its status.
pub(super) fn failing(
    ctx: &Context,
    kind: &str,
    obj: &impl ResourceExt,
    ok: bool,
) -> Option<String> {
    let ns = obj.namespace()?;
    let key = failure_key(kind, obj)?;
    let mut failures = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ok {
        failures.remove(&key);
        return None;
    }
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    (*n >= FAILURES_BEFORE_REPORTING).then_some(ns)
}

/// The key of `obj` in [`Context::failures`].
fn failure_key(kind: &str, obj: &impl ResourceExt) -> Option<String> {
    Some(format!("{kind}/{}/{}", obj.namespace()?, obj.name_any()))
}

/// How many reconciliations of the resource `key` failed in a row.
fn failures_in_a_row(ctx: &Context, key: &str) -> u32 {
    ctx.failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(key)
        .copied()
        .unwrap_or(0)
}

/// Writes the status of a resource whose reconciliation failed (best effort: the API
/// server may be what failed); whether it was written. One that cannot be written (the API
/// server refuses the status itself: RBAC, an admission policy) is said in a Warning Event
/// on the resource, else its status would stay as it last was without a word.
async fn report_failure<K>(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    key: &str,
    ns: &str,
    name: &str,
    new: &impl serde::Serialize,
) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match apply_status::<K>(&ctx.client, ns, name, new).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not write the status of a failed reconciliation");
            // Said once per run of failures, not at every retry (every 5 s).
            if failures_in_a_row(ctx, key) != FAILURES_BEFORE_REPORTING {
                return false;
            }
            let event = Event {
                type_: EventType::Warning,
                action: "WriteStatus".into(),
                reason: "StatusWriteFailed".into(),
                note: Some(format!(
                    "the operator cannot write this resource's status ({e}): it shows what was \
                     last written"
                )),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &reference).await {
                tracing::debug!(%error, "could not publish an event");
            }
            false
        }
    }
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
    let is_paused = paused(lp);
    // Being deleted: nothing is applied or pruned (a foreground deletion removes the
    // dependents first, which applying would make again, a new CA among them).
    let deleting = lp.metadata.deletion_timestamp.as_ref().map(|_| {
        match lp.metadata.finalizers.as_deref().unwrap_or_default() {
            [] => "waiting for its dependents to go".to_owned(),
            f => format!("finalizers: {}", f.join(", ")),
        }
    });
    let hold = is_paused || deleting.is_some();
    // A spec a user can fix is reported in the status, not retried as an error: what runs
    // keeps running, and the next change of the LogPlayer or a Shard reconciles again.
    let (shards, selector_problem) = match shards_of(&ctx.client, lp, &ns).await? {
        Ok(shards) => (shards, None),
        Err(problem) => (Vec::new(), Some(problem)),
    };
    let mut apply_problems = Vec::new();
    let mut log_seen = None;
    let mut certificates = certs::CertState::NotChecked;
    // The admin identity, once read (after the certificates are kept, so a new LogPlayer's
    // first reconciliation has it).
    let mut identity = None;
    let spec_problem = match (
        selector_problem,
        desired::player_objects(lp, &shards, &ctx.defaults),
    ) {
        (Some(p), _) => Some(p),
        (None, Ok(mut objects)) => {
            if !hold {
                let leaves = certs::leaves(lp, &ns, &shards);
                certificates = certs::keep(&ctx.client, &ns, lp, &leaves).await?;
                let tls = certs::admin_identity(&ctx.client, &ns, Some(lp)).await?;
                identity = Some(tls.clone());
                let members = log_members_before(ctx, lp, &ns, &mut objects, tls.clone()).await?;
                apply_problems = apply_player_objects(&ctx.client, &ns, lp, objects).await?;
                log_seen = members_step(ctx, lp, &ns, members, tls, true).await?;
            }
            None
        }
        (None, Err(e @ desired::DesiredError::Yaml(_))) => return Err(e.into()),
        (None, Err(e)) => Some(status::Problem::new(e.reason(), e.to_string())),
    };
    if identity.is_none() {
        identity = Some(certs::admin_identity(&ctx.client, &ns, Some(lp)).await?);
    }
    let tls = identity.clone().flatten();
    // Paused, or a spec that does not build: a managed LogStore's group is still asked and
    // reported (never changed), so its leader, term and log id stay in the status.
    if log_seen.is_none()
        && lp.spec.log_store.managed.is_some()
        && let Some(addrs) = desired::logstore_endpoint(lp, &ns, &ctx.defaults)
    {
        let members = log_members::ask(&addrs, tls.clone()).await;
        log_seen = members_step(ctx, lp, &ns, Some((addrs, members)), tls, false).await?;
    }
    let failed = !apply_problems.is_empty();
    let converging = !hold
        && log_seen.as_ref().is_some_and(|s: &log_members::Seen| {
            s.members
                .as_ref()
                .is_none_or(|m| log_members::next_change(m, s.want, &s.running).is_some())
                || s.change.is_some()
        });
    let found = Found {
        spec_problem,
        apply_problems,
        paused: is_paused,
        deleting,
        tls: identity.flatten(),
        certificates,
    };
    let mut observed = observe(ctx, lp, &ns, &shards, found).await?;
    observed.log_members = log_seen;
    let old = lp.status.clone().unwrap_or_default();
    let new = status::logplayer_status(&observed, &old, status::now());
    if new != old {
        apply_status::<LogPlayer>(&ctx.client, &ns, &lp.name_any(), &new).await?;
    }
    // After the status is stored: a status that could not be written is retried, and its
    // Events with it, never sent once per attempt.
    publish(ctx, lp.object_ref(&()), &old.conditions, &new.conditions).await;
    // A refused apply is retried soon (the API server may have been briefly strict, or the
    // user fixes the spec); the status already says what is wrong.
    Ok(Action::requeue(if failed || converging {
        APPLY_RETRY
    } else {
        RESYNC
    }))
}

/// A managed LogStore's membership before its objects are applied (from its leader), and
/// the StatefulSet sized to keep every pod whose replica is still in the group.
async fn log_members_before(
    ctx: &Context,
    lp: &LogPlayer,
    ns: &str,
    objects: &mut desired::PlayerObjects,
    tls: Option<Arc<crate::tls::Tls>>,
) -> Result<Option<(String, Result<crate::proto::MembersResponse, String>)>, OperatorError> {
    let want = desired::log_replicas(lp);
    let Some(ls) = objects.logstore.as_mut() else {
        return Ok(None);
    };
    let Some(addrs) = desired::logstore_endpoint(lp, ns, &ctx.defaults) else {
        return Ok(None);
    };
    let members = log_members::ask(&addrs, tls).await;
    // Unknown membership (no leader, or nobody answers): keep the pods the StatefulSet has
    // now, so that no voter loses its pod while nobody can tell who votes, unless no group
    // ever formed (see `log_members::never_formed`). A StatefulSet that cannot be read is
    // an error (retried), never "0 pods run": applied with fewer replicas, it would delete
    // voters' pods.
    let current = match &members {
        Ok(_) => 0,
        Err(_) => {
            let pods = pods_of(&ctx.client, ns, &lp.name_any()).await?;
            let any_running = component_pods(&pods, "logstore", None)
                .into_iter()
                .any(|p| any_running(&[p]));
            if log_members::never_formed(known_log_id(lp), any_running) {
                0
            } else {
                Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&desired::logstore_name(lp))
                    .await?
                    .and_then(|s| s.spec.and_then(|s| s.replicas))
                    .unwrap_or(0)
            }
        }
    };
    let keep = log_members::pods_to_keep(members.as_ref().ok(), want.max(1)).max(current);
    if let Some(spec) = ls.server.stateful_set.spec.as_mut() {
        spec.replicas = Some(keep);
    }
    Ok(Some((addrs, members)))
}

/// The id of the log a managed LogStore's group established, as its status last recorded.
fn known_log_id(lp: &LogPlayer) -> Option<&str> {
    lp.status
        .as_ref()
        .and_then(|s| s.log_store.as_ref())
        .and_then(|l| l.log_id.as_deref())
}

/// Makes the next membership change of a managed LogStore, if one is due (see
/// `log_members`) and `may_change` (false while paused or while the spec does not build:
/// only what was seen), and returns what was seen and done.
async fn members_step(
    ctx: &Context,
    lp: &LogPlayer,
    ns: &str,
    before: Option<(String, Result<crate::proto::MembersResponse, String>)>,
    tls: Option<Arc<crate::tls::Tls>>,
    may_change: bool,
) -> Result<Option<log_members::Seen>, OperatorError> {
    let Some((addrs, members)) = before else {
        return Ok(None);
    };
    let pods = pods_of(&ctx.client, ns, &lp.name_any()).await?;
    let log_pods = component_pods(&pods, "logstore", None);
    let running = serving_replicas(&log_pods);
    let revisions = super::observe::revisions(&log_pods);
    let (members, unknown) = match members {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e)),
    };
    let mut seen = log_members::Seen {
        stateful_set: desired::logstore_name(lp),
        want: u64::try_from(desired::log_replicas(lp)).unwrap_or(1).max(1),
        members,
        unknown,
        running,
        change: None,
        revisions,
    };
    let change = match &seen.members {
        _ if !may_change => None,
        Some(m) => log_members::next_change(m, seen.want, &seen.running),
        None => {
            log_members::should_seed(&seen, known_log_id(lp)).then_some(log_members::Change::Seed)
        }
    };
    if let Some(change) = change {
        let id = match change {
            log_members::Change::Seed => 1,
            log_members::Change::Add(id) | log_members::Change::Remove(id) => id,
        };
        let addr = desired::log_replica_addr(lp, ns, &ctx.defaults, id);
        match log_members::make(&addrs, change, &addr, tls).await {
            Ok(after) => {
                seen.members = Some(after);
                seen.change = Some(Ok(change));
            }
            Err(e) => {
                tracing::warn!(?change, error = %e, "a log membership change failed; retrying soon");
                seen.change = Some(Err(format!("{change:?}: {e}")));
            }
        }
    }
    Ok(Some(seen))
}

/// How soon a reconciliation whose apply was refused runs again.
const APPLY_RETRY: Duration = Duration::from_secs(5);

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
            action: status::event_action(&e.note),
            reason: e.reason,
            note: Some(e.note),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "could not publish an event");
        }
    }
}

/// Applies every object (a refused one does not stop the others), then deletes what the
/// operator made for this LogPlayer and no longer wants. Returns the failed applies as
/// `ApplyFailed` problems; any other error (a prune, a lookup) is returned.
async fn apply_player_objects(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    mut o: desired::PlayerObjects,
) -> Result<Vec<status::Problem>, OperatorError> {
    let account = apply(client, ns, &o.service_account).await;
    // The players' pods name their ServiceAccount's uid (see
    // `SERVICE_ACCOUNT_UID_ANNOTATION`): the one applied, else (the apply refused) the one
    // there is, so that a refusal does not roll the players.
    let uid = match &account {
        Ok(a) => a.metadata.uid.clone(),
        Err(_) => super::apply::existing_uid(client, ns, &o.service_account).await,
    };
    // Without the uid, the Deployment applied would drop the annotation from the pods'
    // template and restart every player (and again once the uid is back): it is left as it
    // is until the account is known (the refusal is reported; with no account at all, the
    // players' pods could not be made anyway).
    let keep_deployment = account.is_err() && uid.is_none();
    let template = o
        .deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut());
    if let (Some(uid), Some(meta)) = (uid, template) {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(desired::SERVICE_ACCOUNT_UID_ANNOTATION.to_owned(), uid);
    }
    let mut outcomes = vec![account.map(drop)];
    outcomes.extend(
        apply_rbac(
            client,
            ns,
            o.operator_binding.as_ref(),
            &o.role,
            &o.role_binding,
        )
        .await,
    );
    outcomes.extend([
        apply(client, ns, &o.shard_map).await.map(drop),
        apply(client, ns, &o.metrics_service).await.map(drop),
    ]);
    if let Some(logstore) = &o.logstore {
        outcomes.push(apply(client, ns, &logstore.server.service).await.map(drop));
        outcomes.push(apply(client, ns, &logstore.client_service).await.map(drop));
        outcomes.push(
            apply(client, ns, &logstore.server.stateful_set)
                .await
                .map(drop),
        );
        outcomes.push(apply(client, ns, &logstore.pdb).await.map(drop));
    }
    let mut kept = None;
    if keep_deployment {
        let name = o.deployment.metadata.name.clone().unwrap_or_default();
        let account = o.service_account.metadata.name.clone().unwrap_or_default();
        tracing::warn!(ns, deployment = %name, "the players' Deployment is left as it is: their ServiceAccount was refused and is not there");
        // Said as the Deployment's own refusal, so that `Progressing` says it is held back.
        kept = Some(status::Problem::new(
            "ApplyFailed",
            format!(
                "applying Deployment {name}: left as it is while its ServiceAccount {account} \
                 is refused and not there (applied without it, every player would restart)"
            ),
        ));
    } else {
        outcomes.push(apply(client, ns, &o.deployment).await.map(drop));
    }
    if let Some(pdb) = &o.pdb {
        outcomes.push(apply(client, ns, pdb).await.map(drop));
    }
    for p in &o.network_policies {
        outcomes.push(apply(client, ns, p).await.map(drop));
    }
    let mut problems = apply_problems(outcomes)?;
    problems.extend(kept);
    prune_player_objects(client, ns, lp, &o).await?;
    Ok(problems)
}

/// Splits apply outcomes: refusals become `ApplyFailed` problems, other errors are returned.
fn apply_problems(
    outcomes: Vec<Result<(), OperatorError>>,
) -> Result<Vec<status::Problem>, OperatorError> {
    let mut problems = Vec::new();
    for outcome in outcomes {
        if let Err(e) = outcome {
            match e.as_apply_problem() {
                Some(p) => {
                    tracing::warn!(error = %e, "the API server refused an object");
                    problems.push(p);
                }
                None => return Err(e),
            }
        }
    }
    Ok(problems)
}

/// Deletes the LogPlayer's own objects (not its Shards') that `o` no longer contains.
async fn prune_player_objects(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    o: &desired::PlayerObjects,
) -> Result<(), OperatorError> {
    let Some(uid) = lp.metadata.uid.as_deref() else {
        return Ok(());
    };
    let selector = desired::managed_selector(&lp.name_any());
    let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
    let mut sets = o
        .logstore
        .iter()
        .map(|l| name(&l.server.stateful_set.metadata))
        .collect::<Vec<_>>();
    prune::<StatefulSet>(client, ns, &selector, uid, &sets).await?;
    sets = vec![name(&o.metrics_service.metadata)];
    if let Some(l) = &o.logstore {
        sets.push(name(&l.server.service.metadata));
        sets.push(name(&l.client_service.metadata));
    }
    prune::<Service>(client, ns, &selector, uid, &sets).await?;
    let mut pdbs: Vec<String> = o.pdb.iter().map(|p| name(&p.metadata)).collect();
    pdbs.extend(o.logstore.iter().map(|l| name(&l.pdb.metadata)));
    prune::<PodDisruptionBudget>(client, ns, &selector, uid, &pdbs).await?;
    let policies: Vec<String> = o
        .network_policies
        .iter()
        .map(|p| name(&p.metadata))
        .collect();
    prune::<NetworkPolicy>(client, ns, &selector, uid, &policies).await?;
    Ok(())
}

pub(super) async fn reconcile_shard(
    shard: Arc<Shard>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let result = measured(&ctx, "Shard", &*shard, reconcile_shard_inner(&shard, &ctx)).await;
    if let (Err(e), Some(ns)) = (&result, failing(&ctx, "Shard", &*shard, result.is_ok())) {
        let old = shard.status.clone().unwrap_or_default();
        let generation = shard.metadata.generation.unwrap_or(0);
        let new = status::failed_shard_status(&old, generation, &e.to_string(), status::now());
        let mine = status::operators_part(&old);
        if new != mine
            && report_failure::<Shard>(
                &ctx,
                shard.object_ref(&()),
                &failure_key("Shard", &*shard).unwrap_or_default(),
                &ns,
                &shard.name_any(),
                &new,
            )
            .await
        {
            publish(
                &ctx,
                shard.object_ref(&()),
                &old.conditions,
                &new.conditions,
            )
            .await;
        }
    }
    result
}

/// Why nothing of `shard`'s server is applied now, if so. A managed Shard whose LogPlayer
/// is gone keeps the server it runs, untouched: rebuilt without its LogPlayer (the default
/// image, TLS files nobody issues, no NetworkPolicy choice) it would roll onto pods that
/// cannot start. A new Shard whose LogPlayer does not exist yet still gets its server.
async fn shard_paused(
    ctx: &Context,
    ns: &str,
    shard: &Shard,
    owner: Option<&LogPlayer>,
) -> Result<Option<status::ShardPaused>, OperatorError> {
    if owner.is_none() && shard.spec.managed.is_some() {
        let sets = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns);
        if sets
            .get_opt(&desired::shard_server_name(shard))
            .await?
            .is_some()
        {
            return Ok(Some(status::ShardPaused::LogPlayerGone));
        }
    }
    Ok(owner
        .is_some_and(paused)
        .then_some(status::ShardPaused::LogPlayerPaused))
}

async fn reconcile_shard_inner(shard: &Shard, ctx: &Context) -> Result<Action, OperatorError> {
    let ns = shard
        .namespace()
        .ok_or(OperatorError::NoNamespace { kind: "Shard" })?;
    let owner = Api::<LogPlayer>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&shard.spec.log_player)
        .await?;
    let paused = shard_paused(ctx, &ns, shard, owner.as_ref()).await?;
    let mut apply_problems = Vec::new();
    let spec_problem = match desired::shard_objects(
        shard,
        &ctx.defaults,
        desired::FromLogPlayer::of(owner.as_ref()),
        desired::shard_tls(shard, owner.as_ref()),
    ) {
        Ok(objects) => {
            if paused.is_none() {
                let policy = desired::shard_network_policy(shard, owner.as_ref(), &ctx.defaults);
                apply_problems =
                    apply_shard_objects(&ctx.client, &ns, shard, objects, policy).await?;
            }
            None
        }
        Err(e) => Some(status::Problem::new(e.reason(), e.to_string())),
    };
    let name = shard.name_any();
    let pods = pods_of(&ctx.client, &ns, &shard.spec.log_player).await?;
    let mine = component_pods(&pods, "shard", Some(&name));
    let mut pod_problems = Vec::new();
    if shard.spec.managed.is_some() {
        let sts = desired::shard_server_name(shard);
        pod_problems
            .extend(crate::operator::observe::pods_not_created(&ctx.client, &ns, &sts).await?);
    }
    pod_problems.extend(crate::operator::observe::pod_problems(
        &mine.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
    ));
    let down = shard.spec.managed.is_some() && !any_running(&mine);
    let endpoint = desired::shard_endpoint(shard, &ctx.defaults);
    let tls = certs::admin_identity(&ctx.client, &ns, owner.as_ref()).await?;
    // Its LogPlayer runs TLS but has not issued the admin certificate yet (it was just
    // created): look again soon rather than at the next resync.
    let no_identity_yet = tls.is_none()
        && owner
            .as_ref()
            .is_some_and(|lp| lp.spec.tls.mode != crate::crd::TlsMode::Insecure);
    let seen = ShardSeen {
        endpoint: endpoint.as_deref(),
        down,
        owner: owner.as_ref(),
        ns: &ns,
    };
    let (probe, entry_limits, refused) = probe_shard_and_log(ctx, shard, seen, tls).await;
    let lag = owner
        .as_ref()
        .and_then(|lp| lp.status.as_ref())
        .and_then(|s| s.shards.iter().find(|p| p.name == name))
        .and_then(|p| p.lag);
    let failed = !apply_problems.is_empty();
    let (not_selected, not_in_map) = not_delivered(ctx, &ns, owner.as_ref(), shard).await?;
    let observed = status::ShardObservation {
        generation: shard.metadata.generation.unwrap_or(0),
        endpoint,
        probe,
        spec_problem,
        apply_problems,
        pod_problems,
        log_player_found: owner.is_some(),
        not_selected,
        not_in_map,
        lag,
        entry_limits,
        refused,
        paused,
    };
    let old = shard.status.clone().unwrap_or_default();
    let new = status::shard_status(&observed, &old, status::now());
    // Compare only the operator's fields: the player owns the cursor fields, which
    // `shard_status` leaves unset.
    let mine = status::operators_part(&old);
    if new != mine {
        apply_status::<Shard>(&ctx.client, &ns, &name, &new).await?;
    }
    // After the status is stored (see the LogPlayer's).
    publish(ctx, shard.object_ref(&()), &old.conditions, &new.conditions).await;
    Ok(Action::requeue(if failed || no_identity_yet {
        APPLY_RETRY
    } else {
        RESYNC
    }))
}

/// Why `lp` delivers nothing to `shard` although the Shard names it: its `shardSelector`
/// does not match the Shard's labels (an invalid selector is the LogPlayer's own problem).
fn not_selected(lp: &LogPlayer, shard: &Shard) -> Option<status::Problem> {
    use kube::core::SelectorExt as _;
    let selector = kube::core::Selector::try_from(lp.spec.shard_selector.clone()).ok()?;
    (!selector.matches(shard.labels())).then(|| {
        status::Problem::new(
            "NotSelected",
            format!(
                "LogPlayer {} does not select this Shard (its shardSelector {} does not match \
                 the Shard's labels), so nothing is delivered to it",
                lp.name_any(),
                serde_json::to_string(&lp.spec.shard_selector).unwrap_or_default()
            ),
        )
    })
}

/// Why the players of `owner` do not deliver to `shard` as its spec says: not selected, or
/// not in their map (`ShardObservation::not_selected`, `not_in_map`).
async fn not_delivered(
    ctx: &Context,
    ns: &str,
    owner: Option<&LogPlayer>,
    shard: &Shard,
) -> Result<(Option<status::Problem>, Option<status::Problem>), OperatorError> {
    let Some(lp) = owner else {
        return Ok((None, None));
    };
    if let Some(p) = not_selected(lp, shard) {
        return Ok((Some(p), None));
    }
    Ok((
        None,
        map_problem(&ctx.client, ns, lp, shard, &ctx.defaults).await?,
    ))
}

/// Whether the players' shard map (`<lp>-shard-map`) has `shard` as its spec says, and if
/// not, whether that is a problem (see [`status::map_problem`]). The map is read with a list
/// by name: the operator may list ConfigMaps (it watches the ones it owns), and a `get`
/// would be one more permission for this alone.
async fn map_problem(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    shard: &Shard,
    defaults: &desired::Defaults,
) -> Result<Option<status::Problem>, OperatorError> {
    let name = desired::shard_map_name(lp);
    let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&by_name)
        .await?;
    let text = maps
        .items
        .iter()
        .find(|m| m.name_any() == name)
        .and_then(|m| m.data.as_ref()?.get(desired::SHARD_MAP_FILE));
    let slots: Vec<String> = shard.spec.slots.iter().map(|r| r.to_string()).collect();
    let addr = desired::shard_endpoint(shard, defaults).unwrap_or_default();
    let Some(diff) =
        status::map_difference(text.map(String::as_str), &shard.name_any(), &addr, &slots)
    else {
        return Ok(None);
    };
    let verdict = map_verdict(client, ns, lp, defaults).await?;
    Ok(Some(status::map_problem(
        &name,
        &lp.name_any(),
        &diff,
        &verdict,
        &addr,
        &slots,
    )))
}

/// Whether `lp`'s reconciliation writes the map of the Shards it selects: refused as that
/// reconciliation refuses it (the same `desired::player_objects`), or waited for, saying
/// what for (a pause, a deletion, its next reconciliation, and its Degraded condition if it
/// is degraded: an apply it keeps failing).
async fn map_verdict(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    defaults: &desired::Defaults,
) -> Result<status::MapVerdict, OperatorError> {
    let name = lp.name_any();
    if paused(lp) {
        return Ok(status::MapVerdict::Waiting(format!(
            "LogPlayer {name} is paused ({}), so it writes no map",
            super::PAUSE_ANNOTATION
        )));
    }
    if lp.metadata.deletion_timestamp.is_some() {
        return Ok(status::MapVerdict::Waiting(format!(
            "LogPlayer {name} is being deleted"
        )));
    }
    let refused = match shards_of(client, lp, ns).await? {
        Err(problem) => Some(problem.message),
        Ok(shards) => desired::player_objects(lp, &shards, defaults)
            .err()
            .map(|e| e.to_string()),
    };
    if let Some(why) = refused {
        return Ok(status::MapVerdict::Refused(why));
    }
    let degraded = lp
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == crate::crd::condition::DEGRADED)
        })
        .filter(|c| c.status == "True")
        .map(|c| format!("; it is Degraded now ({}: {})", c.reason, c.message))
        .unwrap_or_default();
    Ok(status::MapVerdict::Waiting(format!(
        "LogPlayer {name} writes it next{degraded}"
    )))
}

/// Applies a managed shard server's objects (or, for an external shard, none) and deletes
/// the ones the Shard made and no longer wants (after a switch from managed to external).
async fn apply_shard_objects(
    client: &Client,
    ns: &str,
    shard: &Shard,
    objects: Option<desired::ServerObjects>,
    policy: Option<NetworkPolicy>,
) -> Result<Vec<status::Problem>, OperatorError> {
    let mut outcomes = Vec::new();
    if let Some(o) = &objects {
        outcomes.push(apply(client, ns, &o.service).await.map(drop));
        outcomes.push(apply(client, ns, &o.stateful_set).await.map(drop));
    }
    if let Some(p) = &policy {
        outcomes.push(apply(client, ns, p).await.map(drop));
    }
    let problems = apply_problems(outcomes)?;
    if let Some(uid) = shard.metadata.uid.as_deref() {
        let selector = format!("{}={}", desired::SHARD_LABEL, shard.name_any());
        let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
        let sets: Vec<String> = objects
            .iter()
            .map(|o| name(&o.stateful_set.metadata))
            .collect();
        let services: Vec<String> = objects.iter().map(|o| name(&o.service.metadata)).collect();
        prune::<StatefulSet>(client, ns, &selector, uid, &sets).await?;
        prune::<Service>(client, ns, &selector, uid, &services).await?;
        let policies: Vec<String> = policy.iter().map(|p| name(&p.metadata)).collect();
        prune::<NetworkPolicy>(client, ns, &selector, uid, &policies).await?;
    }
    Ok(problems)
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

/// The label every object the operator creates carries; owned kinds are watched through it,
/// so the operator neither receives nor caches anybody else's ConfigMaps, Services,
/// Deployments or StatefulSets.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=logplayer-operator";

/// Runs both controllers until `stop`, over the namespaces of `ctx` (none named: the whole
/// cluster; else one pair of controllers per namespace, so that Roles in those namespaces
/// are all the operator needs).
pub(super) async fn run_controllers(ctx: Arc<Context>, stop: CancellationToken) {
    if ctx.namespaces.is_empty() {
        run_scope(ctx, None, stop).await;
    } else {
        let scopes = ctx
            .namespaces
            .clone()
            .into_iter()
            .map(|ns| run_scope(ctx.clone(), Some(ns), stop.clone()));
        futures::future::join_all(scopes).await;
    }
}

/// An `Api` over the whole cluster, or one namespace.
fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Both controllers over one scope. Each watch wakes a reconciliation only for the changes
/// [`triggers`] passes on; owned objects wake their owner on any change (their status, such
/// as ready replicas, is what the owner reports).
async fn run_scope(ctx: Arc<Context>, ns: Option<String>, stop: CancellationToken) {
    let client = ctx.client.clone();
    let ns = ns.as_deref();
    let cfg = watcher::Config::default();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let (lp_store, lp_writer) = reflector::store::<LogPlayer>();
    let lp_events = reflector(lp_writer, watcher(api(&client, ns), cfg.clone()));
    let logplayers = Controller::for_stream(
        triggers::changes(lp_events, triggers::spec_and_meta::<LogPlayer>),
        lp_store,
    )
    .owns(api::<Deployment>(&client, ns), owned.clone())
    .owns(api::<StatefulSet>(&client, ns), owned.clone())
    .owns(api::<ConfigMap>(&client, ns), owned.clone())
    .owns(api::<Service>(&client, ns), owned.clone())
    .owns(api::<ServiceAccount>(&client, ns), owned.clone())
    .owns(api::<Role>(&client, ns), owned.clone())
    .owns(api::<RoleBinding>(&client, ns), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, ns), owned.clone())
    .watches_stream(
        triggers::changes(
            watcher(api::<Shard>(&client, ns), cfg.clone()),
            triggers::shard_as_member,
        ),
        |s: Shard| {
            s.namespace()
                .map(|ns| ObjectRef::<LogPlayer>::new(&s.spec.log_player).within(&ns))
        },
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(reconcile_logplayer, error_policy("LogPlayer"), ctx.clone())
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "LogPlayer controller");
        }
    });
    let (shard_store, shard_writer) = reflector::store::<Shard>();
    let shard_events = reflector(shard_writer, watcher(api(&client, ns), cfg.clone()));
    // A LogPlayer appearing, changing or going away changes its Shards' status (their
    // `LogPlayerNotFound`, their image): map it to the Shards that name it.
    let known = shard_store.clone();
    // The players' shard map written or rewritten changes whether its Shards are in it
    // (their `NotInShardMap`, `ShardMapStale`).
    let in_map = shard_store.clone();
    let shard_controller = Controller::for_stream(
        triggers::changes(shard_events, triggers::spec_and_meta::<Shard>),
        shard_store,
    )
    .owns(api::<StatefulSet>(&client, ns), owned.clone())
    .owns(api::<Service>(&client, ns), owned.clone())
    .watches_stream(
        triggers::changes(
            watcher(api::<ConfigMap>(&client, ns), owned),
            triggers::config_map_data,
        ),
        move |cm: ConfigMap| {
            let lp = triggers::shard_map_owner(&cm);
            let ns = cm.namespace();
            in_map
                .state()
                .into_iter()
                .filter(|s| Some(&s.spec.log_player) == lp.as_ref() && s.namespace() == ns)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
    )
    .watches_stream(
        triggers::changes(
            watcher(api::<LogPlayer>(&client, ns), cfg.clone()),
            triggers::spec_and_meta::<LogPlayer>,
        ),
        move |lp: LogPlayer| {
            let (name, ns) = (lp.name_any(), lp.namespace());
            known
                .state()
                .into_iter()
                .filter(|s| s.spec.log_player == name && s.namespace() == ns)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile_shard, error_policy("Shard"), ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "Shard controller");
        }
    });
    tokio::join!(logplayers, shard_controller);
}
