//! `logplayer operator`: the Kubernetes controllers for `LogPlayer` and `Shard`.
//!
//! The operator runs as several replicas behind its own Lease (the same elector the players
//! use); only the leader reconciles, over the whole cluster or the namespaces it is given
//! (`--watch-namespace`). For a LogPlayer it keeps the objects [`desired`] builds (player
//! Deployment, ServiceAccount, their Role naming their own Lease and Shards and its
//! RoleBinding, its own binding to the players' ClusterRole that lets it write that Role,
//! shard-map ConfigMap, metrics Service, a PodDisruptionBudget when replicas > 1, and the managed
//! LogStore StatefulSet and Service when asked), applied by server-side apply under the field
//! manager [`FIELD_MANAGER`], owned by the LogPlayer so that deleting it deletes them; what it
//! made and no longer wants is deleted after each apply. An object the API server refuses is
//! a status problem (`ApplyFailed`), not a silent retry. It then observes the Deployment, the
//! players' Lease, the Shards, the LogStore's head and the pods, and always writes the status
//! [`status`] computes for the generation it saw, with Events on condition changes. For a
//! Shard with a managed server it keeps its StatefulSet and Service. Owned kinds are watched
//! through the `managed-by` label only. No finalizers: owner references and pruning are all
//! the cleanup there is.
//!
//! Pause reconciliation of one LogPlayer with the annotation `logplayer.io/paused: "true"`:
//! the operator then only reports status (with `ReconciliationPaused`).

mod apply;
pub mod cert_manager;
pub mod certs;
pub mod desired;
pub mod log_members;
mod metrics;
pub mod names;
mod observe;
mod reconcile;
pub mod status;
#[cfg(test)]
mod tests;
mod triggers;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::lease::{self, LeaseBackend, LeaseConfig, Role as LeaseRole};
pub use metrics::OperatorMetrics;
pub use observe::{lease_info, pod_problem};
use reconcile::run_controllers;

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
    /// The API server refused to apply one of the objects the operator wants.
    #[error("applying {kind} {name}: {}", api_message(source))]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("{kind} has no namespace")]
    NoNamespace { kind: &'static str },
    #[error("{0}")]
    Desired(#[from] desired::DesiredError),
    #[error("lease: {0}")]
    Lease(#[from] crate::lease::LeaseError),
    /// The API server could not say who the operator is (`whoami`).
    #[error(
        "could not learn who the operator is from the API server (a SelfSubjectReview, \
         Kubernetes 1.28 or later): {0}; without it the operator cannot grant the players \
         their Role"
    )]
    WhoAmI(String),
}

impl OperatorError {
    /// A short, stable label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "KubeApi",
            OperatorError::Apply { .. } => "ApplyFailed",
            OperatorError::NoNamespace { .. } => "NoNamespace",
            OperatorError::Desired(e) => e.reason(),
            OperatorError::Lease(_) => "Lease",
            OperatorError::WhoAmI(_) => "WhoAmI",
        }
    }
}

/// The API server's own words for a refusal (its `message`), or the client error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

impl OperatorError {
    /// An apply the API server refused, as a status problem (`ApplyFailed`) naming the
    /// object, the field and the server's words; `None` for any other error (retried), an
    /// apply that failed for the moment among them (see [`refused`]).
    pub(crate) fn as_apply_problem(&self) -> Option<status::Problem> {
        match self {
            OperatorError::Apply { source, .. } if refused(source) => {
                Some(status::Problem::new("ApplyFailed", self.to_string()))
            }
            _ => None,
        }
    }
}

/// Whether the API server answered `e` with a refusal of the request itself (invalid,
/// forbidden, over a quota, refused by an admission policy), which the status says at once,
/// rather than with a failure of the moment: throttled (429), a timeout (408, 504), the server
/// or one it depends on unavailable (500, 502, 503), or no answer at all. Those are retried
/// like any failed reconciliation, and written into the status only once they repeat
/// (`reconcile::FAILURES_BEFORE_REPORTING`), so that one throttled apply does not flip
/// `Ready`.
pub(crate) fn refused(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if refusal(s.code))
}

/// Whether an answer with this HTTP status code refuses the request itself (see
/// [`refused`]).
pub(crate) fn refusal(code: u16) -> bool {
    !matches!(code, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Namespaces to reconcile; empty means the whole cluster.
    pub namespaces: Vec<String>,
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease: LeaseConfig,
    pub defaults: desired::Defaults,
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    /// Namespaces to reconcile; empty means the whole cluster.
    pub namespaces: Vec<String>,
    pub defaults: desired::Defaults,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
    /// Failed reconciliations in a row, per resource (`kind/namespace/name`): a failure is
    /// written into the status only once it repeats (one 429 on a read or a brief outage of
    /// the API server does not flip `Ready`). An apply the API server refuses (`refused`)
    /// is `ApplyFailed` at once instead: the reconciliation goes on and the status says it.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Who the API server takes the operator for (a SelfSubjectReview, which every
/// authenticated user may make, Kubernetes 1.28 or later): the subject of its bindings to the
/// players' ClusterRole, without which it cannot write the players' Roles. Asked again for
/// about half a minute (each ask at most 5 s) while the server does not answer; a refusal
/// (the API missing, or forbidden) is final. Without an answer the operator stops, saying
/// why, and its pod is restarted.
async fn whoami(client: &Client) -> Result<String, OperatorError> {
    use backon::{ExponentialBuilder, Retryable};
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api = kube::Api::<SelfSubjectReview>::all(client.clone());
    let ask = || async {
        match tokio::time::timeout(
            Duration::from_secs(5),
            api.create(&Default::default(), &SelfSubjectReview::default()),
        )
        .await
        {
            Ok(answer) => answer.map_err(|e| (true, e.to_string(), final_refusal(&e))),
            Err(_) => Err((false, "no answer within 5 s".to_owned(), false)),
        }
    };
    let answer = ask
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(8))
                .with_max_times(6),
        )
        .sleep(tokio::time::sleep)
        .when(|(_, _, refused)| !refused)
        .notify(|(_, error, _), after| {
            tracing::info!(%error, ?after, "asking the API server who the operator is, again");
        })
        .await;
    let user = answer
        .map_err(|(_, reason, _)| OperatorError::WhoAmI(reason))?
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| OperatorError::WhoAmI("the answer names no user".into()))?;
    tracing::info!(%user, "the API server knows the operator as");
    Ok(user)
}

/// A refusal asking again will not change: the API missing (404) or forbidden (403).
fn final_refusal(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 403)
}

/// Runs the operator: contends for its lease; while leading, runs the controllers.
pub async fn run(
    config: OperatorConfig,
    metrics: Arc<OperatorMetrics>,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let client = Client::try_default().await?;
    let mut defaults = config.defaults.clone();
    if defaults.operator_user.is_none() {
        defaults.operator_user = Some(tokio::select! {
            user = whoami(&client) => user?,
            _ = shutdown.cancelled() => return Ok(()),
        });
    }
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
        namespaces: config.namespaces.clone(),
        defaults,
        metrics: metrics.clone(),
        recorder: Recorder::new(client, reporter),
        failures: Default::default(),
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
        let leading = shutdown.child_token();
        let controllers = tokio::spawn(run_controllers(ctx.clone(), leading.clone()));
        loop {
            if !matches!(*role.borrow_and_update(), LeaseRole::Leader { .. }) {
                break;
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
        leading.cancel();
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
