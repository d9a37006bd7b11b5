//! Observing the world: the Shards a LogPlayer drives, probes of the LogStore and the
//! shard servers, the players' Lease and pods. What it finds feeds [`super::status`].

use super::{Context, OperatorError, PAUSE_ANNOTATION, desired, status};
use crate::crd::{LogPlayer, Shard};
use k8s_openapi::api::apps::v1::Deployment;
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
/// its `shardSelector`.
pub(super) async fn shards_of(
    client: &Client,
    lp: &LogPlayer,
    ns: &str,
) -> Result<Vec<Shard>, OperatorError> {
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
/// Asks a shard server its applied index.
pub(super) async fn probe_shard(addr: &str) -> status::Probe {
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
/// How long a probe of a shard or the LogStore may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks at everything a LogPlayer's status reports.
pub(super) async fn observe(
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
