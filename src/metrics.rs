//! The HTTP endpoints every long-running component serves beside its gRPC or Kubernetes
//! work: `/metrics` (Prometheus text exposition), `/healthz` (the process is up) and
//! `/readyz` (the component can do its job, as its [`Exposition`] says). The player's
//! metrics live in `player::metrics`, the operator's in `operator::metrics`; the servers
//! (the LogStore, a shard) serve only the two probes ([`serve_probes`], [`Serving`]).

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
    let app = Router::new().route("/metrics", get(metrics));
    serve_router(app, exposition, listener, shutdown).await
}

/// Serves only `/healthz` and `/readyz` on `listener` until `shutdown`: the probes of a
/// server with no metrics of its own.
pub async fn serve_probes(
    exposition: Arc<dyn Exposition>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router(Router::new(), exposition, listener, shutdown).await
}

async fn serve_router(
    app: Router<Shared>,
    exposition: Shared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(exposition);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// A server's probes (the LogStore's, a shard's; `--health-listen`): `/healthz` answers as
/// soon as the process serves HTTP, while it opens its data too (replaying a long journal
/// or WAL is not a hang to restart it for); `/readyz` only once its gRPC server serves.
/// They are plaintext HTTP, beside the gRPC port, because the kubelet's gRPC probe cannot
/// speak TLS, and a TCP connect succeeds on a frozen or wedged process (the kernel accepts
/// for it): an answer from the process is the only proof that it runs.
#[derive(Debug)]
pub struct Serving {
    ready: std::sync::atomic::AtomicBool,
    /// What the server opens, for `/readyz` until it serves ("opening the log in /data").
    opening: String,
}

impl Serving {
    /// A server that is still opening `opening`.
    pub fn opening(opening: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            ready: std::sync::atomic::AtomicBool::new(false),
            opening: opening.into(),
        })
    }

    /// The gRPC server serves from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Exposition for Serving {
    fn encode(&self) -> String {
        String::new()
    }

    fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    fn problems(&self) -> Vec<String> {
        if self.ready() {
            Vec::new()
        } else {
            vec![format!("{}; gRPC is not served yet", self.opening)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server is up from its start, and ready only once gRPC is served: before that
    /// `/readyz` names what it opens.
    #[tokio::test]
    async fn a_server_is_ready_only_once_it_serves() {
        let serving = Serving::opening("opening the log in /data");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_probes(serving.clone(), listener, shutdown.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.unwrap();
            raw
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
        let readyz = get("/readyz").await;
        assert!(readyz.starts_with("HTTP/1.0 503"), "{readyz}");
        assert!(
            readyz.contains("opening the log in /data; gRPC is not served yet"),
            "{readyz}"
        );
        assert!(get("/metrics").await.starts_with("HTTP/1.0 404"));
        serving.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
