//! The HTTP endpoints every long-running component serves beside its gRPC or Kubernetes
//! work: `/metrics` (Prometheus text exposition), `/healthz` (the process is up) and
//! `/readyz` (the component can do its job, as its [`Exposition`] says). The player's
//! metrics live in `player::metrics`, the operator's in `operator::metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the HTTP endpoints expose: the player's metrics, or the operator's.
pub trait Exposition: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn encode(&self) -> String;
    /// What `/readyz` answers.
    fn ready(&self) -> bool;
    /// Problems that make the component not ready although it runs (a shard refusing the
    /// player, an entry that cannot be delivered), one line each, shown by `/readyz`.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

type Shared = Arc<dyn Exposition>;

async fn metrics(State(m): State<Shared>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(m): State<Shared>) -> (StatusCode, String) {
    let problems = m.problems();
    match (m.ready(), problems.is_empty()) {
        (true, true) => (StatusCode::OK, "ready\n".into()),
        (_, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        ),
        (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    exposition: Arc<dyn Exposition>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(exposition);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
