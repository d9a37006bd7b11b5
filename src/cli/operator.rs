//! `logplayer operator` and `logplayer crd`: the Kubernetes operator and the generated
//! CRDs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{default_identity, on_signal};

#[derive(Args)]
pub struct OperatorArgs {
    /// Reconcile only LogPlayers and Shards in these namespaces (comma-separated or
    /// repeated); the operator then needs Roles in those namespaces only. Unset: the whole
    /// cluster.
    #[arg(
        long = "watch-namespace",
        env = "LOGPLAYER_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "LOGPLAYER_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: String,
    /// The Lease the operator replicas elect a leader with.
    #[arg(
        long,
        env = "LOGPLAYER_LEASE_NAME",
        default_value = "logplayer-operator"
    )]
    lease_name: String,
    /// Namespace of that Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: the pod name, else host-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the player, LogStore and shard pods when a LogPlayer sets no spec.image.
    #[arg(long, env = "LOGPLAYER_DEFAULT_IMAGE", default_value = concat!("ghcr.io/logplayer/logplayer:", env!("CARGO_PKG_VERSION")))]
    default_image: String,
    /// The ClusterRole with the players' permissions (shipped with the operator's RBAC); the
    /// operator binds itself to it where it runs players, to write each LogPlayer's narrower
    /// Role.
    #[arg(long, env = "LOGPLAYER_PLAYER_CLUSTER_ROLE", default_value = crate::operator::desired::PLAYER_CLUSTER_ROLE)]
    player_cluster_role: String,
    /// DNS suffix for Service addresses (`<svc>.<ns>.svc.<domain>`); empty relies on the
    /// pods' DNS search path (`<svc>.<ns>.svc`).
    #[arg(long, env = "LOGPLAYER_CLUSTER_DOMAIN", default_value = "", value_parser = parse_cluster_domain)]
    cluster_domain: String,
    /// How long the operator's Lease lasts without renewal (at most 1h).
    #[arg(long, env = "LOGPLAYER_LEASE_DURATION", default_value = "15s", value_parser = crate::lease::parse_lease_duration)]
    lease_duration: Duration,
    /// The leader stops reconciling when it could not renew for this long.
    #[arg(long, env = "LOGPLAYER_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// How often replicas try to acquire or renew the Lease (at least 10ms; below
    /// --renew-deadline).
    #[arg(long, env = "LOGPLAYER_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
}

#[derive(Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing (repeat for several:
    /// `--write crds --write charts/logplayer-operator/files/crds` regenerates both copies).
    #[arg(long)]
    write: Vec<PathBuf>,
}

pub async fn run_operator(a: OperatorArgs) -> anyhow::Result<()> {
    use crate::operator;
    let lease = crate::lease::LeaseConfig {
        lease_duration: a.lease_duration,
        renew_deadline: a.renew_deadline,
        retry_period: a.retry_period,
    };
    lease.validate()?;
    let given = a.watch_namespaces.len();
    let namespaces: Vec<String> = a
        .watch_namespaces
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    // Only empty names (`--watch-namespace ""`, an empty LOGPLAYER_WATCH_NAMESPACES) would
    // otherwise leave no namespace named: the whole cluster, which a namespace-scoped
    // install has no permissions for. (An empty item in a list, `a,b,`, is skipped.)
    if given > 0 && namespaces.is_empty() {
        anyhow::bail!(
            "--watch-namespace: an empty namespace name; name each namespace, or leave the \
             flag (and LOGPLAYER_WATCH_NAMESPACES) out to watch the whole cluster"
        );
    }
    let operator_namespace = a.lease_namespace.clone();
    let config = operator::OperatorConfig {
        namespaces,
        lease_name: a.lease_name,
        lease_namespace: a.lease_namespace,
        identity: a.identity.unwrap_or_else(default_identity),
        lease,
        defaults: operator::desired::Defaults {
            image: a.default_image,
            cluster_domain: a.cluster_domain,
            player_cluster_role: a.player_cluster_role,
            // Asked of the API server at start (`operator::run`).
            operator_user: None,
            operator_namespace,
        },
    };
    let metrics = std::sync::Arc::new(operator::OperatorMetrics::default());
    let shutdown = on_signal();
    let listener = tokio::net::TcpListener::bind(&a.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics address {}", a.metrics_listen))?;
    println!("metrics listening on {}", listener.local_addr()?);
    let server = tokio::spawn(crate::metrics::serve(
        metrics.clone(),
        listener,
        shutdown.clone(),
    ));
    tracing::info!(identity = %config.identity, lease = %config.lease_name, namespace = %config.lease_namespace, "operator starting");
    operator::run(config, metrics, shutdown.clone())
        .await
        .context("running the operator")?;
    shutdown.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "metrics server");
    }
    Ok(())
}

/// Prints the CRDs, or writes them into each `--write` directory.
pub fn run_crd(a: CrdArgs) -> anyhow::Result<()> {
    if a.write.is_empty() {
        print!("{}", crate::crd::crds_yaml()?);
    }
    for dir in &a.write {
        for path in crate::crd::write_crds(dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// `--cluster-domain`: empty, or DNS labels (lower-case letters, digits, inner `-`) joined by
/// dots, as the chart's schema says: anything else made every address the operator gives its
/// pods fail their own check, so that every pod crash-looped while the operator ran on.
fn parse_cluster_domain(s: &str) -> Result<String, String> {
    if s.is_empty() || crate::lease::is_dns_name(s, 253, true) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a DNS domain (lower-case labels of letters, digits and inner '-', \
             joined by '.', such as cluster.local), nor empty"
        ))
    }
}
