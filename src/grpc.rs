//! What every gRPC edge shares: binding listeners with `TCP_NODELAY`, HTTP/2 window sizes
//! large enough for big batches, message size limits, the `grpc.health.v1` service, server
//! reflection, client endpoints, and the SIGTERM/SIGINT shutdown signal.
//!
//! Two loopback traps this module exists to avoid: a listener handed to
//! `serve_with_incoming` without `TCP_NODELAY` gives a bimodal 0.2 ms / 40 ms latency (Nagle
//! plus delayed ACK), and h2's default 64 KiB stream window throttles large batches.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

/// Largest gRPC message any of our servers or clients decodes. A 10 KB transaction is far
/// below; batches are capped well below this by their senders.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// HTTP/2 stream window: big enough that one in-flight window of batches (see the player's
/// `window_bytes`) never waits on a WINDOW_UPDATE round trip.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 connection window (all streams of one connection).
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// Errors of the gRPC edge.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds a listener (port 0 picks a free port; see the returned address).
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), GrpcError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| GrpcError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    Ok((listener, local))
}

/// Accepted connections with `TCP_NODELAY` on.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Metadata key carrying the machine-readable reason of a refusal (`fenced`, `gap`, ...),
/// part of the wire protocol.
pub const ERROR_KEY: &str = "logplayer-error";

/// A server builder with our window sizes and keepalives.
pub fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// A server with our settings, `grpc.health.v1` reporting `service` as serving, and
/// reflection; the caller adds its own service and hands the router to [`serve`].
pub async fn router(service: &str) -> Result<tonic::transport::server::Router, GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    let (v1, v1alpha) = reflection(service)?;
    Ok(server()
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha))
}

/// Serves `router` on `listener` until `shutdown` is cancelled; `what` names the server in
/// errors.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &str,
) -> Result<(), GrpcError> {
    let addr = listener.local_addr().map_err(|source| GrpcError::Bind {
        addr: format!("{what} listener"),
        source,
    })?;
    router
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await
        .map_err(|source| GrpcError::Serve { addr, source })
}

/// The gRPC health service's name, advertised by every server.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A reflection builder that advertises only `service` and health (each server lists its
/// own services, not every service in our proto file).
fn reflection_builder(service: &str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name(HEALTH_SERVICE)
}

/// The reflection services for `service` (plus health): v1, and v1alpha for older clients
/// (grpcurl before 1.9 and several GUI clients still ask for it).
pub fn reflection(
    service: &str,
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    GrpcError,
> {
    Ok((
        reflection_builder(service).build_v1()?,
        reflection_builder(service).build_v1alpha()?,
    ))
}

/// A lazily connecting client channel with `TCP_NODELAY` and our window sizes.
pub fn endpoint(addr: &str) -> Result<Endpoint, GrpcError> {
    let addr = crate::routing::normalize_addr(addr);
    Ok(Endpoint::from_shared(addr.clone())
        .map_err(|e| GrpcError::Address {
            addr,
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// Connects now (fails fast when nothing listens).
pub async fn connect(addr: &str) -> Result<Channel, GrpcError> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|source| GrpcError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; only ctrl-c stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
