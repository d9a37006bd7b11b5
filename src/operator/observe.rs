//! Observing the world: the Shards a LogPlayer drives, probes of the LogStore and the
//! shard servers, the players' Lease and pods. What it finds feeds [`super::status`].

use super::{Context, OperatorError, PAUSE_ANNOTATION, desired, status};
use crate::crd::{LogPlayer, Shard};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::time::Duration;

pub(super) fn paused(lp: &LogPlayer) -> bool {
    lp.annotations()
        .get(PAUSE_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The Shards a LogPlayer drives: same namespace, `spec.logPlayer` naming it, and matching
/// its `shardSelector`. A selector that does not parse is a problem with the spec
/// (`InvalidSpec`, naming it), never "select every Shard".
pub(super) async fn shards_of(
    client: &Client,
    lp: &LogPlayer,
    ns: &str,
) -> Result<Result<Vec<Shard>, status::Problem>, OperatorError> {
    let invalid = |why: String| {
        Ok(Err(status::Problem::new(
            "InvalidSpec",
            format!(
                "invalid LogPlayer spec: shardSelector {}: {why}",
                serde_json::to_string(&lp.spec.shard_selector).unwrap_or_default()
            ),
        )))
    };
    let selector = match kube::core::Selector::try_from(lp.spec.shard_selector.clone()) {
        Ok(s) => s,
        Err(e) => return invalid(e.to_string()),
    };
    let api: Api<Shard> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().labels_from(&selector);
    let name = lp.name_any();
    let listed = match api.list(&params).await {
        Ok(listed) => listed,
        // A selector kube takes but the API server does not (a label value with a space,
        // `In` with no values): the spec's fault, not an outage.
        Err(kube::Error::Api(e)) if e.code == 400 => {
            return invalid(format!("the API server refuses it: {}", e.message));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Ok(listed
        .items
        .into_iter()
        .filter(|s| s.spec.log_player == name)
        .collect()))
}
/// Asks the shard `id`'s server its applied index, dialing with `tls` (the LogPlayer's
/// admin certificate; `None`: plaintext): whether it answers, and what it said.
async fn probe_shard(
    addr: &str,
    id: &str,
    tls: Option<&std::sync::Arc<crate::tls::Tls>>,
) -> (status::Probe, ShardSaid) {
    let asked = within(addr, async {
        let conn = crate::client::ShardConn::connect_with(addr, Some(id), tls)
            .await
            .map_err(|e| e.to_string())?;
        conn.applied().await.map_err(|e| e.to_string())
    })
    .await;
    match asked {
        Ok(a) => match answered_as(addr, id, &a.shard_id) {
            Ok(()) => (status::Probe::Reachable, ShardSaid::from(&a)),
            Err(wrong) => (wrong, ShardSaid::default()),
        },
        Err(unreachable) => (unreachable, ShardSaid::default()),
    }
}

/// Whether the server at `addr` answered as shard `id` (it says `said`; empty: a version
/// before it said). Without TLS nothing else checks it, and a Shard whose endpoint names
/// another shard's server was shown as reachable, with the other shard's limit and
/// refusals.
fn answered_as(addr: &str, id: &str, said: &str) -> Result<(), status::Probe> {
    if said.is_empty() || said == id {
        return Ok(());
    }
    Err(status::Probe::Unreachable(format!(
        "the server at {addr} answers as shard {said:?}, not {id:?}: the Shard's endpoint names another shard's server"
    )))
}

/// What a shard's server said when asked (nothing, when it was not asked or did not answer).
#[derive(Debug, Default)]
pub(super) struct ShardSaid {
    /// Its entry limit.
    pub limit: Option<u64>,
    /// Its last refusal of a sender (`DeliveryRefused`).
    pub refused: Option<status::Problem>,
}

impl From<&crate::proto::AppliedResponse> for ShardSaid {
    fn from(a: &crate::proto::AppliedResponse) -> Self {
        ShardSaid {
            limit: said_limit(a.max_entry_bytes),
            refused: status::delivery_refused(&a.refused_reason, &a.refused_message),
        }
    }
}

/// [`probe_shard`] at `endpoint`, unless there is none (`Unknown`) or its managed server
/// has no running pod (`NotRunning`, not asked).
async fn probe_shard_if_running(
    endpoint: Option<&str>,
    down: bool,
    id: &str,
    tls: Option<&std::sync::Arc<crate::tls::Tls>>,
) -> (status::Probe, ShardSaid) {
    match endpoint {
        Some(_) if down => (status::Probe::NotRunning, ShardSaid::default()),
        Some(addr) => probe_shard(addr, id, tls).await,
        None => (status::Probe::Unknown, ShardSaid::default()),
    }
}

/// An entry limit a server reported (0: not said, a version before it did).
fn said_limit(max_entry_bytes: u64) -> Option<u64> {
    (max_entry_bytes != 0).then_some(max_entry_bytes)
}

/// Runs a probe's `call` for at most [`PROBE_TIMEOUT`]; a failure is `Unreachable`, naming
/// `what` was asked.
async fn within<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, status::Probe> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(status::Probe::Unreachable(format!(
            "{what} does not answer: {e}"
        ))),
        Err(_) => Err(status::Probe::Unreachable(format!(
            "{what} did not answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        ))),
    }
}
/// How long a probe of a shard or the LogStore may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a LogPlayer's reconciliation found before observing, for its status.
pub(super) struct Found {
    pub spec_problem: Option<status::Problem>,
    pub apply_problems: Vec<status::Problem>,
    pub paused: bool,
    /// See [`status::Observed::deleting`].
    pub deleting: Option<String>,
    /// The identity the operator dials the LogPlayer's servers with (its admin certificate).
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
    pub certificates: crate::operator::certs::CertState,
}

/// Asks the LogStore at `addr` (one address, or each replica's, comma-separated) its
/// bounds: whether it answers, its last index and its entry limit. Every replica is asked
/// at once ([`log_members::ask_each`]). With `from_leader` the log leader's answer counts
/// ([`log_members::leader_of`]: only a leader knows where the log ends), else the highest
/// end any replica reported; without, the first answer (all say the same entry limit).
async fn probe_log(
    addr: &str,
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
    from_leader: bool,
) -> (status::Probe, Option<i64>, Option<u64>) {
    use crate::operator::log_members;
    let ask_one = |a: String| {
        let tls = tls.clone();
        async move { Ok(log_members::describe_at(&a, tls).await?.1) }
    };
    let enough = |b: &crate::proto::BoundsResponse| {
        // A single-node LogStore (no replica status) is the log itself.
        !from_leader || b.replica.as_ref().is_none_or(log_members::leads_a_majority)
    };
    let (answers, failed) = log_members::ask_each(addr, PROBE_TIMEOUT, ask_one, enough).await;
    let best = answers
        .iter()
        .find(|b| b.replica.is_none())
        .or_else(|| log_members::leader_of(&answers, |b| b.replica.as_ref()))
        .or_else(|| answers.iter().max_by_key(|b| b.last));
    match best {
        Some(b) => (
            status::Probe::Reachable,
            i64::try_from(b.last).ok(),
            said_limit(b.max_entry_bytes),
        ),
        None => (
            status::Probe::Unreachable(format!("LogStore at {}", failed.join("; "))),
            None,
            None,
        ),
    }
}

/// Where a Shard's server is and what runs it, for [`probe_shard_and_log`].
pub(super) struct ShardSeen<'a> {
    /// The address the players use (none: nothing to ask).
    pub endpoint: Option<&'a str>,
    /// Its managed server has no running pod (not asked).
    pub down: bool,
    /// Its LogPlayer, when found.
    pub owner: Option<&'a LogPlayer>,
    pub ns: &'a str,
}

/// Asks a Shard's server whether it answers, its entry limit and its last refusal of a
/// sender; and when it said a limit, the entry limit of its LogPlayer's LogStore, to
/// compare with (`(shard, log)`).
pub(super) async fn probe_shard_and_log(
    ctx: &Context,
    shard: &Shard,
    seen: ShardSeen<'_>,
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
) -> (
    status::Probe,
    (Option<u64>, Option<u64>),
    Option<status::Problem>,
) {
    let (probe, said) =
        probe_shard_if_running(seen.endpoint, seen.down, &shard.name_any(), tls.as_ref()).await;
    let ShardSaid { limit, refused } = said;
    let log = match (limit, seen.owner) {
        (Some(_), Some(lp)) => match desired::logstore_endpoint(lp, seen.ns, &ctx.defaults) {
            Some(addr) => probe_log(&addr, tls, false).await.2,
            None => None,
        },
        _ => None,
    };
    (probe, (limit, log), refused)
}

/// Looks at everything a LogPlayer's status reports.
pub(super) async fn observe(
    ctx: &Context,
    lp: &LogPlayer,
    ns: &str,
    shards: &[Shard],
    found: Found,
) -> Result<status::Observed, OperatorError> {
    let client = &ctx.client;
    let player = desired::player_name(lp);
    let pods = pods_of(client, ns, &lp.name_any()).await?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&player)
        .await?;
    let deployment_current = deployment.as_ref().is_some_and(|d| {
        let seen = d.status.as_ref().and_then(|s| s.observed_generation);
        seen.is_some() && seen >= d.metadata.generation
    });
    let deployment_found = deployment.is_some();
    // Pods the API server refuses to create: of the players' Deployment, of the log's
    // StatefulSet.
    let mut not_created: Vec<status::Problem> = deployment
        .as_ref()
        .map(|d| deployment_problems(ns, d))
        .unwrap_or_default();
    if lp.spec.log_store.managed.is_some() {
        let sts = desired::logstore_name(lp);
        not_created.extend(pods_not_created(client, ns, &sts).await?);
    }
    let dstatus = deployment.and_then(|d| d.status).unwrap_or_default();
    // The LogStore's head (for lag) and every shard, asked at once: one at a time, N shards
    // that do not answer took N probe timeouts, and the status that long to change.
    let managed_logstore = lp.spec.log_store.managed.is_some();
    let logstore_down = managed_logstore && !any_running(&component_pods(&pods, "logstore", None));
    let log_probe = async {
        match desired::logstore_endpoint(lp, ns, &ctx.defaults) {
            Some(_) if logstore_down => (status::Probe::NotRunning, None, None),
            Some(addr) => probe_log(&addr, found.tls.clone(), true).await,
            None => (status::Probe::Unknown, None, None),
        }
    };
    let ((logstore, head_index, log_max_entry_bytes), observed_shards) = tokio::join!(
        log_probe,
        observe_shards(ctx, shards, &pods, found.tls.clone())
    );
    // Read last, so that its freshness is judged when the status is written.
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&player)
        .await?
        .map(|l| lease_info(&l, status::now()));
    let leader_ready = lease
        .as_ref()
        .and_then(|l| l.holder.as_deref())
        .and_then(|holder| pod_ready(&component_pods(&pods, "player", None), holder));
    // What keeps pods from being made comes before what is wrong with a pod.
    let pod_problems = not_created.into_iter().chain(pod_problems(&pods)).collect();
    Ok(status::Observed {
        generation: lp.metadata.generation.unwrap_or(0),
        desired_replicas: lp.spec.replicas,
        replicas: dstatus.replicas.unwrap_or(0),
        ready_replicas: dstatus.ready_replicas.unwrap_or(0),
        updated_replicas: dstatus.updated_replicas.unwrap_or(0),
        deployment_current,
        deployment_found,
        lease,
        leader_ready,
        shards: observed_shards,
        head_index,
        logstore,
        max_entry_bytes: u64::try_from(lp.spec.max_entry_bytes).unwrap_or(0),
        log_max_entry_bytes,
        spec_problem: found.spec_problem,
        apply_problems: found.apply_problems,
        pod_problems,
        paused: found.paused,
        deleting: found.deleting,
        log_members: None,
        certificates: found.certificates,
    })
}

/// Every shard of `shards`, in name order, its server asked at once (see [`observe`]).
async fn observe_shards(
    ctx: &Context,
    shards: &[Shard],
    pods: &[Pod],
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
) -> Vec<status::ShardObserved> {
    let mut sorted: Vec<&Shard> = shards.iter().collect();
    sorted.sort_by_key(|s| s.name_any());
    let probes =
        futures::future::join_all(
            sorted.iter().map(|s| {
                let name = s.name_any();
                let down = s.spec.managed.is_some()
                    && !any_running(&component_pods(pods, "shard", Some(&name)));
                let endpoint = desired::shard_endpoint(s, &ctx.defaults);
                let tls = tls.clone();
                async move {
                    probe_shard_if_running(endpoint.as_deref(), down, &name, tls.as_ref()).await
                }
            }),
        )
        .await;
    sorted
        .iter()
        .zip(probes)
        .map(|(s, (probe, said))| status::ShardObserved {
            name: s.name_any(),
            acked_index: s.status.as_ref().and_then(|st| st.acked_index),
            acked_epoch: s.status.as_ref().and_then(|st| st.acked_epoch),
            covered_index: s.status.as_ref().and_then(|st| st.covered_index),
            probe,
            max_entry_bytes: said.limit,
            degraded: shard_degraded(s),
            refused: said.refused.map(|p| p.message),
        })
        .collect()
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

/// Why a pod cannot run, as a condition reason and a text naming the pod: `PodsPending`
/// (the scheduler could not place it, e.g. no node has room or a PersistentVolumeClaim is
/// unbound, in the scheduler's words), `ImagePullFailed`, `CrashLoopBackOff` or
/// `ContainerCannotStart`. `None` for a pod that runs or is just starting.
pub fn pod_problem(pod: &Pod) -> Option<status::Problem> {
    let st = pod.status.as_ref()?;
    let unscheduled = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if st.phase.as_deref() == Some("Pending")
        && let Some(c) = unscheduled
    {
        return Some(status::Problem::new(
            "PodsPending",
            format!(
                "pod {} cannot be scheduled: {}{}",
                pod.name_any(),
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let statuses = st.container_statuses.as_ref()?;
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
        // A crash loop's own text ("back-off 40s restarting failed container") changes at
        // each step of the back-off, and a changed message is a new Warning Event: its
        // last words say more, and stay the same.
        let looping = reason == "CrashLoopBackOff";
        let kubelet_says = waiting.message.as_deref().filter(|_| !looping);
        Some(status::Problem::new(
            reason,
            format!(
                "pod {} container {} ({}): {}{}{}",
                pod.name_any(),
                c.name,
                c.image,
                waiting.reason.as_deref().unwrap_or_default(),
                kubelet_says.map(|m| format!(": {m}")).unwrap_or_default(),
                looping.then(|| last_exit(c)).flatten().unwrap_or_default()
            ),
        ))
    })
}

/// The longest last words of a container the status repeats: room for an error and the
/// command that ends it (a player fenced by an epoch the Lease never gave says both).
const LAST_WORDS_BYTES: usize = 1_000;

/// How a container last ended, when it ended with an error: `; last exit N: LINE`, where
/// LINE is the last line of its termination message (its last log line, with
/// `FallbackToLogsOnError`), cut to [`LAST_WORDS_BYTES`].
fn last_exit(c: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let ended = c.last_state.as_ref()?.terminated.as_ref()?;
    if ended.exit_code == 0 {
        return None;
    }
    let mut line = ended
        .message
        .as_deref()
        .and_then(|m| m.lines().rev().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or_default()
        .to_owned();
    status::cut_text(&mut line, LAST_WORDS_BYTES);
    Some(match line.as_str() {
        "" => format!("; last exit {}", ended.exit_code),
        _ => format!("; last exit {}: {line}", ended.exit_code),
    })
}

/// The problems of `pods`, one per reason (in the order of [`POD_REASONS`]), each message
/// naming every pod with that reason.
pub fn pod_problems(pods: &[Pod]) -> Vec<status::Problem> {
    let found: Vec<status::Problem> = pods.iter().filter_map(pod_problem).collect();
    POD_REASONS
        .iter()
        .filter_map(|reason| {
            let texts: Vec<&str> = found
                .iter()
                .filter(|p| p.reason == *reason)
                .map(|p| p.message.as_str())
                .collect();
            (!texts.is_empty()).then(|| status::Problem::new(*reason, texts.join("; ")))
        })
        .collect()
}

/// The reason for pods the API server refuses to create (a Deployment's or a StatefulSet's).
const PODS_NOT_CREATED: &str = "PodsNotCreated";

/// How long a StatefulSet's `FailedCreate` Event can name the cause of its missing pods: the
/// API server's default Event lifetime. The controller repeats the Event at every retry,
/// backing off to about 17 minutes between them, and the Event recorder lets at most one a
/// source and object through every 5 minutes once it has sent a burst, so a window shorter
/// than that lost the cause of a refusal that lasted.
const FAILED_CREATE_FRESH: Duration = Duration::from_secs(60 * 60);

/// Why the StatefulSet `name` (a managed log or shard server) has fewer pods than it wants:
/// its newest `FailedCreate` Event, as `PodsNotCreated` (a quota, a pod security level, a pod
/// field the API server refuses), when its last word on creating pods was that failure. A
/// StatefulSet has no condition for it, unlike a Deployment's `ReplicaFailure`, and the pods
/// never exist, so nothing else names the cause. `None` when it has its pods, when a pod was
/// created after the last refusal, or when the Events cannot be read (an RBAC from before the
/// operator listed them: it says so at DEBUG).
pub(super) async fn pods_not_created(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<status::Problem>, OperatorError> {
    let Some(sts) = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let have = sts.status.as_ref().map_or(0, |s| s.replicas);
    if have >= want {
        return Ok(None);
    }
    // Every Event about it (one field selector cannot name two reasons): a few.
    let fields = format!("regarding.kind=StatefulSet,regarding.name={name}");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&fields))
        .await;
    match events {
        Ok(list) => Ok(failed_create(ns, name, &list.items, status::now())),
        Err(error) => {
            tracing::debug!(%error, statefulset = name, "could not list its FailedCreate events");
            Ok(None)
        }
    }
}

/// The newest `FailedCreate` of `events` (a StatefulSet's), as a problem, if it is newer than
/// its newest `SuccessfulCreate` and fresh at `now`.
fn failed_create(
    ns: &str,
    name: &str,
    events: &[k8s_openapi::api::events::v1::Event],
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<status::Problem> {
    let when = |e: &k8s_openapi::api::events::v1::Event| {
        [
            e.series.as_ref().map(|s| s.last_observed_time.0),
            e.deprecated_last_timestamp.as_ref().map(|t| t.0),
            e.event_time.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max()
    };
    let newest = |reason: &str| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| Some((when(e)?, e)))
            .max_by_key(|(t, _)| *t)
    };
    let failed = newest("FailedCreate")?;
    // A pod created in the same second as the refusal (Events are stamped to the second;
    // the log's pods are created in parallel) does not hide it: a failure wins a tie.
    if newest("SuccessfulCreate").is_some_and(|(t, _)| t > failed.0) {
        return None;
    }
    let age = now.0.duration_since(failed.0);
    if age.as_secs_f64() > FAILED_CREATE_FRESH.as_secs_f64() {
        return None;
    }
    Some(status::Problem::new(
        PODS_NOT_CREATED,
        format!(
            "StatefulSet {ns}/{name} cannot create its pods: {}",
            failed.1.note.as_deref().unwrap_or("FailedCreate")
        ),
    ))
}

/// The reasons of a Shard's own `Degraded` that its LogPlayer reports as `ShardDegraded`: what
/// only the Shard's reconciliation sees, including pods its server's StatefulSet cannot
/// create (its running pods, its address and its spec the LogPlayer observes for itself).
const SHARD_OWN_REASONS: [&str; 4] = [
    "ApplyFailed",
    "CertificateIssueFailed",
    PODS_NOT_CREATED,
    status::RECONCILE_FAILED,
];

/// A Shard's own `Degraded=True`, when its reason is one of [`SHARD_OWN_REASONS`].
fn shard_degraded(s: &Shard) -> Option<(String, String)> {
    let conditions = s.status.as_ref().map(|st| st.conditions.as_slice())?;
    conditions
        .iter()
        .find(|c| c.type_ == crate::crd::condition::DEGRADED && c.status == "True")
        .filter(|c| SHARD_OWN_REASONS.contains(&c.reason.as_str()))
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// What the players' Deployment says keeps it from its pods: `PodsNotCreated` when its
/// ReplicaSet's pods are refused (`ReplicaFailure`: a quota, a pod security level, a field the
/// API server refuses in the pod), `RolloutStalled` when it gave up waiting for them
/// (`ProgressDeadlineExceeded`). Neither shows on any pod, since the pods never exist.
pub fn deployment_problems(ns: &str, d: &Deployment) -> Vec<status::Problem> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let conditions = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    let mut out = Vec::new();
    for c in conditions.into_iter().flatten() {
        let message = c.message.as_deref().unwrap_or_default();
        if c.type_ == "ReplicaFailure" && c.status == "True" {
            out.push(status::Problem::new(
                PODS_NOT_CREATED,
                format!("Deployment {ns}/{name} cannot create its pods: {message}"),
            ));
        } else if c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        {
            out.push(status::Problem::new(
                "RolloutStalled",
                format!("Deployment {ns}/{name} stopped waiting for its pods: {message}"),
            ));
        }
    }
    out
}

/// Pod problem reasons, most fundamental first.
pub const POD_REASONS: [&str; 4] = [
    "PodsPending",
    "ImagePullFailed",
    "ContainerCannotStart",
    "CrashLoopBackOff",
];

/// Whether any of `pods` is running (phase `Running`, not being deleted).
pub fn any_running(pods: &[&Pod]) -> bool {
    pods.iter().any(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
}

/// Whether the pod named `name` among `pods` is ready (its `Ready` condition is True);
/// `None` when it is not among them or is being deleted (a leader on its way out, whose
/// successor takes the Lease).
pub fn pod_ready(pods: &[&Pod], name: &str) -> Option<bool> {
    let pod = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())?;
    Some(
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
    )
}

/// The log replicas (by id, from the pod's ordinal) among the LogStore's `pods` that run and
/// are ready (their server answers its readiness probe). A replica crash-looping keeps its
/// pod's phase Running: counted as running, it let a voter be removed while the group
/// needed it to commit the change (the log stalled), and was never reported down. (A
/// frozen process is not caught under TLS, whose probe is a TCP connect the kernel
/// answers.)
pub fn serving_replicas(pods: &[&Pod]) -> std::collections::BTreeSet<u64> {
    pods.iter()
        .filter(|p| any_running(&[**p]) && pod_ready(&[**p], &p.name_any()) == Some(true))
        .filter_map(|p| super::log_members::replica_of_pod(&p.name_any()))
        .collect()
}

/// The StatefulSet revisions `pods` run (their `controller-revision-hash` label): more than
/// one while a StatefulSet is rolled.
pub fn revisions(pods: &[&Pod]) -> std::collections::BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.labels().get("controller-revision-hash").cloned())
        .collect()
}

/// The pods of everything the operator runs for the LogPlayer `instance` (players, the
/// managed LogStore, managed shard servers).
pub(super) async fn pods_of(
    client: &Client,
    ns: &str,
    instance: &str,
) -> Result<Vec<Pod>, OperatorError> {
    let selector = desired::managed_selector(instance);
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// Pods of one component (`player`, `logstore`, `shard`), and for shards of one Shard.
pub fn component_pods<'a>(pods: &'a [Pod], component: &str, shard: Option<&str>) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            let l = p.labels();
            l.get("app.kubernetes.io/component").map(String::as_str) == Some(component)
                && shard.is_none_or(|s| l.get(desired::SHARD_LABEL).map(String::as_str) == Some(s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(conditions: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-player"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_is_ready_when_its_ready_condition_is_true() {
        let pod = |name: &str, ready: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"phase": "Running", "conditions": [
                    {"type": "ContainersReady", "status": ready},
                    {"type": "Ready", "status": ready}
                ]}
            }))
            .unwrap()
        };
        let (a, b) = (pod("p-a", "True"), pod("p-b", "False"));
        let mut leaving = pod("p-d", "False");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let pods = [&a, &b, &leaving];
        assert_eq!(pod_ready(&pods, "p-a"), Some(true));
        assert_eq!(pod_ready(&pods, "p-b"), Some(false));
        assert_eq!(pod_ready(&pods, "p-c"), None);
        assert_eq!(
            pod_ready(&pods, "p-d"),
            None,
            "a pod being deleted is not the leader's"
        );
    }

    /// A shard's server that answers as another shard is not shown as this one's (its limit
    /// and refusals would be the other's); one that says no id (an older version) is.
    #[test]
    fn a_shard_probe_answered_by_another_shard_is_a_problem() {
        assert!(answered_as("h:1", "s0", "s0").is_ok());
        assert!(answered_as("h:1", "s0", "").is_ok());
        match answered_as("h:1", "s0", "s1") {
            Err(status::Probe::Unreachable(m)) => {
                assert!(
                    m.contains("h:1") && m.contains("\"s1\"") && m.contains("\"s0\""),
                    "{m}"
                )
            }
            other => panic!("taken as reachable: {other:?}"),
        }
    }

    /// A log replica counts as running only while its pod is ready: one crash-looping keeps
    /// the phase Running, and counted, it let a voter go while the group needed it.
    #[test]
    fn a_log_replica_crash_looping_is_not_serving() {
        let pod = |name: &str, ready: &str, waiting: Option<&str>| -> Pod {
            let state = match waiting {
                Some(reason) => serde_json::json!({"waiting": {"reason": reason}}),
                None => serde_json::json!({"running": {}}),
            };
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"phase": "Running", "conditions": [
                    {"type": "ContainersReady", "status": ready},
                    {"type": "Ready", "status": ready}
                ], "containerStatuses": [{
                    "name": "logstore", "image": "i", "imageID": "", "ready": ready == "True",
                    "restartCount": 3, "state": state
                }]}
            }))
            .unwrap()
        };
        let up = pod("demo-logstore-0", "True", None);
        let looping = pod("demo-logstore-1", "False", Some("CrashLoopBackOff"));
        let frozen = pod("demo-logstore-2", "False", None);
        let running = serving_replicas(&[&up, &looping, &frozen]);
        assert_eq!(running.into_iter().collect::<Vec<_>>(), [1]);
    }

    /// Pods the API server refuses never exist, so no pod names the cause: the Deployment's
    /// conditions do, and the status carries them (it used to say only "0 of 1 pods ready").
    #[test]
    fn a_deployment_that_cannot_create_its_pods_is_a_problem() {
        let refused = "pods \"demo-player-5d8\" is forbidden: exceeded quota: compute";
        let d = deployment(serde_json::json!([
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refused},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"demo-player-5d8\" has timed out progressing."}
        ]));
        let found = deployment_problems("ns", &d);
        let reasons: Vec<&str> = found.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons, ["PodsNotCreated", "RolloutStalled"]);
        assert!(found[0].message.contains("Deployment ns/demo-player"));
        assert!(found[0].message.contains(refused), "{}", found[0].message);
        // A Deployment making progress, or one that has recovered, has none.
        let fine = deployment(serde_json::json!([
            {"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        ]));
        assert!(deployment_problems("ns", &fine).is_empty());
    }

    /// What only a Shard's reconciliation sees reaches its LogPlayer as `ShardDegraded`;
    /// what the LogPlayer observes for itself does not come twice.
    #[test]
    fn a_shards_own_problems_reach_its_logplayer_and_those_it_sees_itself_do_not() {
        let shard = |reason: &str| -> Shard {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "logplayer.io/v1alpha1", "kind": "Shard",
                "metadata": {"name": "s0", "namespace": "ns"},
                "spec": {"logPlayer": "demo", "slots": [{"start": 0, "end": 16383}],
                         "managed": {"storage": "1Gi"}},
                "status": {"conditions": [{"type": "Degraded", "status": "True",
                    "reason": reason, "message": "why",
                    "lastTransitionTime": "2026-12-06T12:00:00Z"}]}
            }))
            .unwrap()
        };
        for own in SHARD_OWN_REASONS {
            assert_eq!(
                shard_degraded(&shard(own)),
                Some((own.to_owned(), "why".to_owned()))
            );
        }
        // A StatefulSet's refused pods exist nowhere else the LogPlayer looks.
        assert!(SHARD_OWN_REASONS.contains(&PODS_NOT_CREATED));
        for seen in ["ShardUnreachable", "PodsPending", "CrashLoopBackOff"] {
            assert_eq!(shard_degraded(&shard(seen)), None, "{seen}");
        }
    }

    /// A container in `CrashLoopBackOff` is reported with why it last exited: the last line
    /// of its termination message (its last log line), cut to a bounded length; the
    /// kubelet's back-off text ("back-off 40s restarting failed container") says nothing of
    /// the cause, and is left out. A clean last exit adds nothing.
    #[test]
    fn a_crash_looping_container_is_reported_with_its_last_words() {
        let pod = |exit_code: i32, message: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "demo-player-1"},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "player", "image": "x", "ready": false, "restartCount": 3,
                    "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": exit_code, "message": message}}
                }]}
            }))
            .unwrap()
        };
        let said = "error: the LogStore at log:7000 accepts entries up to 8388608 bytes but this player was started with --max-entry-bytes 4194304; use the same value on every component";
        let logs = format!("2026-12-06T12:00:00Z  INFO logplayer::player: starting\n{said}\n\n");
        let p = pod_problem(&pod(1, &logs)).unwrap();
        assert_eq!(p.reason, "CrashLoopBackOff");
        assert_eq!(
            p.message,
            format!(
                "pod demo-player-1 container player (x): CrashLoopBackOff; last exit 1: {said}"
            )
        );
        let long = "é".repeat(800);
        let p = pod_problem(&pod(1, &long)).unwrap();
        assert!(
            p.message.ends_with('…') && p.message.len() < 1_200,
            "{}",
            p.message
        );
        // A clean last exit adds nothing; nor does the back-off's text, which changes at
        // each step (a new Event each time).
        let p = pod_problem(&pod(0, "bye")).unwrap();
        assert_eq!(
            p.message,
            "pod demo-player-1 container player (x): CrashLoopBackOff"
        );
        let p = pod_problem(&pod(137, "")).unwrap();
        assert!(p.message.ends_with("; last exit 137"), "{}", p.message);
    }

    /// Each kubelet waiting reason a container cannot leave on its own maps to one problem
    /// reason, its message naming the pod, the container, the image and the kubelet's words;
    /// a container just starting is no problem.
    #[test]
    fn a_waiting_container_is_named_by_the_problem_it_has() {
        let pod = |reason: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "demo-shard-s0-0"},
                "status": {"phase": "Pending", "containerStatuses": [{
                    "name": "shard", "image": "logplayer:1", "ready": false,
                    "restartCount": 0, "imageID": "",
                    "state": {"waiting": {"reason": reason, "message": "the kubelet's words"}}
                }]}
            }))
            .unwrap()
        };
        for (waiting, problem) in [
            ("ImagePullBackOff", Some("ImagePullFailed")),
            ("ErrImagePull", Some("ImagePullFailed")),
            ("InvalidImageName", Some("ImagePullFailed")),
            ("ErrImageNeverPull", Some("ImagePullFailed")),
            ("CreateContainerConfigError", Some("ContainerCannotStart")),
            ("CreateContainerError", Some("ContainerCannotStart")),
            ("ContainerCreating", None),
            ("PodInitializing", None),
        ] {
            let p = pod_problem(&pod(waiting));
            assert_eq!(p.as_ref().map(|p| p.reason.as_str()), problem, "{waiting}");
            if let Some(p) = p {
                assert_eq!(
                    p.message,
                    format!(
                        "pod demo-shard-s0-0 container shard (logplayer:1): {waiting}: the \
                         kubelet's words"
                    )
                );
            }
        }
    }

    /// A StatefulSet's pods refused by the API server are named by its newest `FailedCreate`
    /// Event, also after the controller has backed off to minutes between retries; a pod
    /// created since, or an Event older than Events live, says nothing.
    #[test]
    fn a_statefulset_that_cannot_create_its_pods_is_named_by_its_newest_event() {
        let at = |s: i64| k8s_openapi::jiff::Timestamp::from_second(s).unwrap();
        let event = |reason: &str, note: &str, last: i64| -> k8s_openapi::api::events::v1::Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e"},
                "eventTime": null,
                "reason": reason,
                "note": note,
                "deprecatedLastTimestamp": at(last).to_string(),
            }))
            .unwrap()
        };
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(10_000));
        let quota = "pods \"demo-logstore-0\" is forbidden: exceeded quota: none";
        let events = [
            event("SuccessfulCreate", "create Pod demo-logstore-0", 8_000),
            event("FailedCreate", "an older refusal", 9_000),
            event("FailedCreate", quota, 9_990),
        ];
        let p = failed_create("ns", "demo-logstore", &events, now.clone()).unwrap();
        assert_eq!(p.reason, "PodsNotCreated");
        assert_eq!(
            p.message,
            format!("StatefulSet ns/demo-logstore cannot create its pods: {quota}")
        );
        // 17 minutes after the last retry (the controller's longest backoff): still named.
        let backed_off = [event("FailedCreate", quota, 10_000 - 17 * 60)];
        assert!(failed_create("ns", "demo-logstore", &backed_off, now.clone()).is_some());
        // A pod created after the refusal: the refusal no longer explains anything.
        let created = [
            event("FailedCreate", quota, 9_000),
            event("SuccessfulCreate", "create Pod demo-logstore-1", 9_500),
        ];
        assert_eq!(
            failed_create("ns", "demo-logstore", &created, now.clone()),
            None
        );
        let stale = [event("FailedCreate", quota, 10_000 - 61 * 60)];
        assert_eq!(failed_create("ns", "demo-logstore", &stale, now), None);
    }
}
