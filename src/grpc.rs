//! What every gRPC edge shares: binding listeners with `TCP_NODELAY`, HTTP/2 window sizes
//! large enough for big batches, message size limits, the `grpc.health.v1` service, server
//! reflection, client endpoints, and the SIGTERM/SIGINT shutdown signal.
//!
//! Two loopback traps this module exists to avoid: a listener handed to
//! `serve_with_incoming` without `TCP_NODELAY` gives a bimodal 0.2 ms / 40 ms latency (Nagle
//! plus delayed ACK), and h2's default 64 KiB stream window throttles large batches.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

pub use crate::tls::identity::Expected;

/// How long a stopping server lets open streams finish after SIGTERM before it closes them:
/// an idle client (a tailing reader, a delivery stream waiting for entries) must not hold a
/// shutdown up.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(500);

/// HTTP/2 stream window: half the player's default in-flight window of batches
/// (`--window-bytes`, 16 MiB), so a full window waits at most one WINDOW_UPDATE round trip
/// (a loopback hop) rather than double what every receiving stream may buffer.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 connection window (all streams of one connection).
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// Errors of the gRPC edge.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("binding the --listen address {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("serving {server}: {source}")]
    Serve {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to {addr}: {}", one_line(source))]
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
/// Metadata key carrying the shard's highest epoch on a `fenced` refusal.
pub const EPOCH_KEY: &str = "logplayer-highest-epoch";

/// The metadata key under which a log replica that does not lead names the leader's
/// address (with [`Reason::NotLeader`]).
pub const LEADER_KEY: &str = "logplayer-leader";

/// The machine-readable reason of a refusal, sent as [`ERROR_KEY`]. The table of codes and
/// reasons is in `proto/logplayer.proto` and the README; `tests/status_codes.rs` drives
/// each over a real socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Invalid,
    EntryTooLarge,
    SequenceReused,
    StaleSequence,
    Fenced,
    WrongShard,
    WrongLog,
    EntryLimit,
    Gap,
    BelowRetention,
    PastHead,
    NotDurable,
    Corrupt,
    Store,
    WrongPeer,
    NotLeader,
    Unavailable,
    Membership,
    Forbidden,
    Busy,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::Invalid,
        Reason::EntryTooLarge,
        Reason::SequenceReused,
        Reason::StaleSequence,
        Reason::Fenced,
        Reason::WrongShard,
        Reason::WrongLog,
        Reason::EntryLimit,
        Reason::Gap,
        Reason::BelowRetention,
        Reason::PastHead,
        Reason::NotDurable,
        Reason::Corrupt,
        Reason::Store,
        Reason::WrongPeer,
        Reason::NotLeader,
        Reason::Unavailable,
        Reason::Membership,
        Reason::Forbidden,
        Reason::Busy,
    ];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::EntryTooLarge => "entry-too-large",
            Reason::SequenceReused => "sequence-reused",
            Reason::StaleSequence => "stale-sequence",
            Reason::Fenced => "fenced",
            Reason::WrongShard => "wrong-shard",
            Reason::WrongLog => "wrong-log",
            Reason::EntryLimit => "entry-limit",
            Reason::Gap => "gap",
            Reason::BelowRetention => "below-retention",
            Reason::PastHead => "past-head",
            Reason::NotDurable => "not-durable",
            Reason::Corrupt => "corrupt",
            Reason::Store => "store",
            Reason::WrongPeer => "wrong-peer",
            Reason::NotLeader => "not-leader",
            Reason::Unavailable => "unavailable",
            Reason::Membership => "membership",
            Reason::Forbidden => "forbidden",
            Reason::Busy => "busy",
        }
    }

    /// The one status code that goes with this reason.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Reason::Invalid => Code::InvalidArgument,
            Reason::EntryTooLarge | Reason::Busy => Code::ResourceExhausted,
            Reason::SequenceReused => Code::AlreadyExists,
            Reason::StaleSequence
            | Reason::Fenced
            | Reason::WrongShard
            | Reason::WrongLog
            | Reason::EntryLimit
            | Reason::WrongPeer
            | Reason::Membership => Code::FailedPrecondition,
            Reason::Gap => Code::Aborted,
            Reason::BelowRetention | Reason::PastHead => Code::OutOfRange,
            Reason::NotDurable | Reason::NotLeader | Reason::Unavailable => Code::Unavailable,
            Reason::Corrupt => Code::DataLoss,
            Reason::Store => Code::Internal,
            Reason::Forbidden => Code::PermissionDenied,
        }
    }

    /// A status with this reason's code, `message`, and the reason in its metadata.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message);
        status.metadata_mut().insert(
            ERROR_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        status
    }

    /// The reason a status carries, if it is one of ours.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        let v = status.metadata().get(ERROR_KEY)?.to_str().ok()?;
        Reason::ALL.into_iter().find(|r| r.as_str() == v)
    }
}

/// Whether `status` says the server does not serve the API called (UNIMPLEMENTED: the
/// address is another kind of server, a shard's for a LogStore's or the reverse). tonic
/// maps a proxy's bare HTTP 404 (a mesh sidecar still warming up) to UNIMPLEMENTED too,
/// "mapped from HTTP status code": that one is not, and is retried.
pub fn not_served(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unimplemented && !status.message().contains("HTTP status code")
}

/// tonic refuses a message above a service's decoding limit with `OUT_OF_RANGE` ("decoded
/// message length too large"), the code that in our protocol means "below retention", and
/// bytes that are not a protobuf with `INTERNAL`, the code of a server fault. This turns the
/// first into `RESOURCE_EXHAUSTED` / `entry-too-large` naming our flag, and the second into
/// `INVALID_ARGUMENT` / `invalid`; other statuses pass unchanged.
pub fn decode_refusal(status: tonic::Status) -> tonic::Status {
    let message = status.message();
    if status.code() == tonic::Code::OutOfRange && message.contains("length too large") {
        // tonic names the message limit, which is the entry limit plus the envelope: say
        // the entry limit, the number a flag sets.
        let limit = (message.contains("decoded message length too large"))
            .then_some(message)
            .and_then(|m| m.split("the limit is: ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n.saturating_sub(crate::limits::ENVELOPE_BYTES));
        let said = match limit {
            Some(l) => format!(
                "message too large for the --max-entry-bytes {l} of the side reading it (an \
                 entry above it is refused, and a message may carry {} bytes besides its \
                 entries; every component must run with the same --max-entry-bytes)",
                crate::limits::ENVELOPE_BYTES
            ),
            None => "message too large (every component must run with the same \
                     --max-entry-bytes; an entry above it is refused)"
                .to_owned(),
        };
        Reason::EntryTooLarge.status(format!("{said}: {message}"))
    } else if status.code() == tonic::Code::Internal
        && message.starts_with("failed to decode Protobuf message")
    {
        Reason::Invalid.status(format!("malformed request: {message}"))
    } else {
        status
    }
}

/// [`decode_refusal`] for a server reading a request: also the framing errors tonic answers
/// with `INTERNAL` (a truncated frame, a compressed flag without an encoding, an unknown
/// flag, a unary call without its message), which are the client's mistakes, not a server
/// fault: `INVALID_ARGUMENT` / `invalid`. Server side only: a client seeing the same words
/// from a server that died mid-message has a broken stream to retry, not a refusal.
pub fn request_refusal(status: tonic::Status) -> tonic::Status {
    let status = decode_refusal(status);
    let message = status.message();
    let framing = [
        "Unexpected EOF decoding stream",
        "Missing request message",
        "protocol error: received message with",
    ];
    if status.code() == tonic::Code::Internal
        && Reason::of(&status).is_none()
        && framing.iter().any(|f| message.starts_with(f))
    {
        Reason::Invalid.status(format!("malformed request: {message}"))
    } else {
        status
    }
}

/// A server layer applying [`request_refusal`] to unary calls, whose decoding fails inside
/// tonic before our handler runs: rewrites the `grpc-status` header of such a response.
#[derive(Clone, Copy, Default)]
pub struct DecodeRefusalLayer;

impl<S> tower::Layer<S> for DecodeRefusalLayer {
    type Service = tower::util::MapResponse<
        S,
        fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
    >;
    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, rewrite_refusal)
    }
}

fn rewrite_refusal(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let codes = [tonic::Code::OutOfRange, tonic::Code::Internal].map(|c| (c as i32).to_string());
    let candidate = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| codes.iter().any(|c| v.as_bytes() == c.as_bytes()));
    if !candidate {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    let code = status.code();
    let refused = request_refusal(status);
    if refused.code() != code {
        let headers = response.headers_mut();
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        if let Err(e) = refused.add_header(headers) {
            tracing::debug!(error = %e, "could not rewrite a size refusal");
        }
    }
    response
}

/// The methods of ours whose request is a stream of messages; every other one takes exactly
/// one.
const STREAMED_REQUESTS: [&str; 4] = [
    "/logplayer.v1.LogStore/AppendStream",
    "/logplayer.v1.Shard/Deliver",
    "/logplayer.v1.Replication/AppendStream",
    "/logplayer.v1.Replication/InstallSnapshotStream",
];

/// A server layer refusing a call of one of our methods that takes one message when its
/// request carries a second: tonic answers the first and drops the rest unread (a unary
/// `Append` with two transactions appended one and said nothing of the other; grpc-java and
/// grpc-go refuse such a call). The request body fails, as the second message starts, with
/// `INVALID_ARGUMENT` / `invalid`, before the handler runs.
#[derive(Clone, Copy, Default)]
pub struct OneMessageLayer;

type RequestMap = fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>;

impl<S> tower::Layer<S> for OneMessageLayer {
    type Service = tower::util::MapRequest<S, RequestMap>;
    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapRequest::new(inner, one_message as RequestMap)
    }
}

fn one_message(request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    let path = request.uri().path();
    if !path.starts_with("/logplayer.v1.") || STREAMED_REQUESTS.contains(&path) {
        return request;
    }
    request.map(|body| tonic::body::Body::new(OneMessage::new(body)))
}

/// A request body that counts the gRPC messages it carries (5-byte prefix: a flag and a
/// big-endian length) and fails once a second one starts. Written by hand: it is a few
/// lines of gRPC's framing, which no middleware crate exposes.
struct OneMessage {
    inner: tonic::body::Body,
    /// The prefix of the message being read, and how many of its bytes came.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    messages: u32,
}

impl OneMessage {
    fn new(inner: tonic::body::Body) -> Self {
        OneMessage {
            inner,
            prefix: [0; 5],
            have: 0,
            remaining: 0,
            messages: 0,
        }
    }

    fn count(&mut self, data: &[u8]) -> Result<(), tonic::Status> {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - i);
                self.remaining -= n;
                i += n;
                continue;
            }
            if self.have == 0 {
                self.messages += 1;
                if self.messages > 1 {
                    return Err(Reason::Invalid.status(
                        "malformed request: a second message on a call that takes one \
                         (send each request as its own call, or use a streaming method)",
                    ));
                }
            }
            self.prefix[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == self.prefix.len() {
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                self.have = 0;
            }
        }
        Ok(())
    }
}

impl http_body::Body for OneMessage {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
            && let Err(status) = this.count(data)
        {
            return std::task::Poll::Ready(Some(Err(status)));
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A server builder with our window sizes, keepalives and streams per connection.
pub fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(crate::serving::limits().max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// The layers of every server: each call counted as open on its connection, refusals
/// rewritten, each call authorized, then a second message refused where one is taken.
pub type Layers = tower::layer::util::Stack<
    OneMessageLayer,
    tower::layer::util::Stack<
        crate::tls::authz::AuthzLayer,
        tower::layer::util::Stack<
            DecodeRefusalLayer,
            tower::layer::util::Stack<
                crate::serving::idle::IdleLayer,
                tower::layer::util::Identity,
            >,
        >,
    >,
>;

/// A server with our settings, `grpc.health.v1` reporting `service` as serving, and
/// reflection; the caller adds its own service and hands the router to [`serve_incoming`].
pub async fn router(service: &str) -> Result<tonic::transport::server::Router<Layers>, GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    let (v1, v1alpha) = reflection(service)?;
    Ok(server()
        .layer(crate::serving::idle::IdleLayer)
        .layer(DecodeRefusalLayer)
        .layer(crate::tls::authz::AuthzLayer)
        .layer(OneMessageLayer)
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha))
}

/// A connection a server accepted, as tonic serves it: TCP's, or another transport's
/// (a simulated network, TLS).
pub trait AcceptedIo:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
    + Unpin
    + Send
    + 'static
{
}
impl<T> AcceptedIo for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
        + Unpin
        + Send
        + 'static
{
}

/// Serves `router` on `incoming` (accepted connections: [`incoming`] for TCP, or another
/// transport — the seam where a simulated network or TLS plugs in) until `shutdown` is
/// cancelled, then stops accepting and gives open streams [`DRAIN_DEADLINE`] to finish
/// before returning anyway (dropping the connections); `what` names the server in errors.
pub async fn serve_incoming<L, I, IO, IE>(
    router: tonic::transport::server::Router<L>,
    incoming: I,
    shutdown: CancellationToken,
    what: &str,
) -> Result<(), GrpcError>
where
    L: tower::Layer<tonic::service::Routes> + Clone,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: AcceptedIo,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let incoming = crate::serving::counted(incoming);
    let server = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        served = &mut server => served.map_err(|source| GrpcError::Serve { server: what.to_owned(), source }),
        _ = deadline => {
            tracing::info!(server = what, deadline = ?DRAIN_DEADLINE, "closing the streams still open after the drain deadline");
            Ok(())
        }
    }
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

/// An error and its causes on one line, each cause once: a cause whose text an outer
/// message already includes (errors that print their source) is not repeated. (A failed
/// connection's own text is only "transport error"; the reason is in its causes.)
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
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

/// A byte stream a client connection runs over.
pub trait DialedIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> DialedIo for T {}

/// Opens a byte stream to `host:port`.
pub type Dialer = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Box<dyn DialedIo>>>
        + Send
        + Sync,
>;

static DIALER: OnceLock<Dialer> = OnceLock::new();

/// Replaces TCP for every client channel this process opens from now on: the seam where the
/// deterministic simulation's network (`tests/sim.rs`) plugs in. Set once; `false` if a
/// dialer was already set.
pub fn set_dialer(dialer: Dialer) -> bool {
    DIALER.set(dialer).is_ok()
}

/// A dialed connection as hyper wants it.
type Dialed = hyper_util::rt::TokioIo<Box<dyn DialedIo>>;

/// The connector over the dialer.
fn dialed(
    dialer: &Dialer,
) -> impl tower::Service<
    http::Uri,
    Response = Dialed,
    Error = std::io::Error,
    Future = futures::future::BoxFuture<'static, std::io::Result<Dialed>>,
> + Clone
+ Send
+ 'static {
    let dialer = dialer.clone();
    tower::service_fn(move |uri: http::Uri| {
        let dialer = dialer.clone();
        // Without a port, HTTP's (as tonic's own connector would dial).
        let authority = match uri.authority() {
            Some(a) if a.port().is_none() => format!("{}:80", a.host()),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(dialer(authority).await?)) })
            as futures::future::BoxFuture<'static, _>
    })
}

/// Connects now (fails fast when nothing listens) to `server`, over TLS when this process
/// runs it ([`crate::tls::install`]; then the server's certificate must be `server`'s).
pub async fn connect(addr: &str, server: &Expected) -> Result<Channel, GrpcError> {
    connect_with(addr, server, crate::tls::process()).await
}

/// [`connect`] with the given TLS identity (`None`: plaintext), whatever the process's.
pub async fn connect_with(
    addr: &str,
    server: &Expected,
    tls: Option<&Arc<crate::tls::Tls>>,
) -> Result<Channel, GrpcError> {
    let endpoint = endpoint(addr)?;
    let connected = endpoint
        .connect_with_connector(dialed(&dialer(tls, server)))
        .await;
    connected.map_err(|source| GrpcError::Connect {
        addr: addr.to_owned(),
        source,
    })
}

/// What a client connection to `server` runs over: the simulated network's dialer when
/// set, else TLS with `tls`, else plain TCP that recognizes a TLS server.
fn dialer(tls: Option<&Arc<crate::tls::Tls>>, server: &Expected) -> Dialer {
    DIALER.get().cloned().unwrap_or_else(|| match tls {
        Some(t) => crate::tls::client::dialer(t.clone(), server.clone()),
        None => crate::tls::client::plaintext_dialer(),
    })
}

/// A channel to `server` that connects on first use (and reconnects after a failure). A
/// comma-separated list (the replicas of a replicated LogStore) gives a channel that
/// spreads calls over the addresses that answer.
///
/// Over TLS (when this process runs it), a list gives a channel that connects to one
/// address at a time, the next that answers when its connection breaks (tonic's balanced
/// channel cannot take the TLS connector).
pub fn connect_lazy(addr: &str, server: &Expected) -> Result<Channel, GrpcError> {
    connect_lazy_with(addr, server, crate::tls::process())
}

/// [`connect_lazy`] with the given TLS identity (`None`: plaintext), whatever the process's.
pub fn connect_lazy_with(
    addr: &str,
    server: &Expected,
    tls: Option<&Arc<crate::tls::Tls>>,
) -> Result<Channel, GrpcError> {
    if !addr.contains(',') {
        return Ok(lazy_with(endpoint(addr)?, server, tls));
    }
    let endpoints = addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(tls), None, Some(first)) = (tls, DIALER.get(), endpoints.first()) {
        let authorities = endpoints
            .iter()
            .filter_map(|e| e.uri().authority().map(|a| a.to_string()))
            .collect();
        let dialer = crate::tls::client::failover_dialer(tls.clone(), authorities);
        return Ok(first.clone().connect_with_connector_lazy(dialed(&dialer)));
    }
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// A lazily connecting channel on `endpoint` to `server`, over the simulated network, TLS,
/// or TCP.
pub fn lazy(endpoint: Endpoint, server: &Expected) -> Channel {
    lazy_with(endpoint, server, crate::tls::process())
}

fn lazy_with(endpoint: Endpoint, server: &Expected, tls: Option<&Arc<crate::tls::Tls>>) -> Channel {
    endpoint.connect_with_connector_lazy(dialed(&dialer(tls, server)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// [`STREAMED_REQUESTS`] is kept by hand: it must name every method of ours whose
    /// client sends a stream, or [`OneMessageLayer`] would refuse its second message.
    #[test]
    fn the_streamed_request_methods_are_those_the_proto_declares() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("our descriptor set decodes");
        let mut declared: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service.iter().flat_map(move |s| {
                    s.method
                        .iter()
                        .filter(|m| m.client_streaming.unwrap_or(false))
                        .map(move |m| {
                            format!(
                                "/{}.{}/{}",
                                f.package.as_deref().unwrap_or_default(),
                                s.name.as_deref().unwrap_or_default(),
                                m.name.as_deref().unwrap_or_default()
                            )
                        })
                })
            })
            .collect();
        declared.sort();
        let mut ours: Vec<String> = STREAMED_REQUESTS.iter().map(|s| s.to_string()).collect();
        ours.sort();
        assert_eq!(ours, declared);
    }
}
