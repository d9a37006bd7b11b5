//! Dialing TLS connections for tonic: [`dialer`] opens TCP (with `TCP_NODELAY`) and runs
//! the TLS handshake with the configuration current at that moment, so a rotated client
//! certificate is used from the next connection on. It is a [`crate::grpc::Dialer`], the
//! same seam the simulated network plugs into; the URI stays `http://`, tonic speaks HTTP/2
//! over the stream it returns.
//!
//! Each dialer knows whom it dials ([`Expected`]): after the handshake the server's
//! certificate must carry that name, or the connection is closed with a [`WrongServer`]
//! error before any call goes out (the chain alone only says the CA signed it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Tls;
use super::identity::{Expected, Peer};
use crate::grpc::{DialedIo, Dialer};

/// The server at an address presented a certificate from our CA that is not the one the
/// client expected there.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused the server at {addr}: {reason} (another part of the system, or someone holding \
     one of its certificates, answers at this address)"
)]
pub struct WrongServer {
    pub addr: String,
    pub expected: Expected,
    pub reason: String,
}

/// The [`WrongServer`] an error (a failed connection, as tonic or hyper wrap it) comes
/// from, if any.
pub fn wrong_server<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a WrongServer> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(w) = e.downcast_ref::<WrongServer>() {
            return Some(w);
        }
        // `io::Error::source` skips the error it wraps; look inside it here.
        if let Some(w) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<WrongServer>())
        {
            return Some(w);
        }
        next = e.source();
    }
    None
}

/// Dials `host:port`, completes the TLS handshake and checks that the server's certificate
/// is `expected`'s.
pub async fn dial(
    tls: &Tls,
    authority: &str,
    expected: &Expected,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_connect(authority).await?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    // The name only goes into SNI; the server's certificate is checked against the CA, not
    // against it (see the module doc of `tls`).
    let name = ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from("logplayer".to_owned()))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let connector = tokio_rustls::TlsConnector::from(tls.current().client.clone());
    let io = connector.connect(name, tcp).await.map_err(|e| {
        if super::is_plaintext_peer(&e) {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{e}: the server at {authority} does not speak TLS (does it run --insecure?)"
                ),
            )
        } else {
            e
        }
    })?;
    let peer = Peer::of_chain(io.get_ref().1.peer_certificates());
    match expected.check(&peer) {
        Ok(()) => Ok(io),
        Err(reason) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            WrongServer {
                addr: authority.to_owned(),
                expected: expected.clone(),
                reason,
            },
        )),
    }
}

/// The dialer of `tls`'s connections to `expected`.
pub fn dialer(tls: Arc<Tls>, expected: Expected) -> Dialer {
    let expected = Arc::new(expected);
    Arc::new(move |authority: String| {
        let (tls, expected) = (tls.clone(), expected.clone());
        Box::pin(async move {
            Ok(Box::new(dial(&tls, &authority, &expected).await?) as Box<dyn DialedIo>)
        })
    })
}

/// Opens TCP to `host:port` as tonic's own connector does (hyper's): every address the name
/// resolves to, IPv6 and IPv4 raced (happy eyeballs), each given its share of the time, with
/// `TCP_NODELAY`. (`TcpStream::connect` tries the addresses one after another, so one that
/// does not answer, a stale pod address, takes the whole connect timeout.)
pub async fn tcp_connect(authority: &str) -> std::io::Result<TcpStream> {
    use tower::ServiceExt as _;
    let uri: http::Uri = format!("http://{authority}").parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address {authority:?}: {e}"),
        )
    })?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // Shared between a name's addresses (without it each could take the system's whole
    // connect timeout, and they would be tried one after another); the channel bounds the
    // whole connect as well.
    http.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    let io = http.oneshot(uri).await.map_err(|e| {
        let kind = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
        std::io::Error::new(kind, e)
    })?;
    Ok(io.into_inner())
}

/// The dialer of a process without TLS: plain TCP with `TCP_NODELAY`, whose first bytes
/// from the server are checked. A rustls server (ours) answers the HTTP/2 preface with a TLS
/// record (an alert); an HTTP/2 server's first frame is a SETTINGS frame, whose first byte
/// (the top of a 24-bit length) is 0. Without this check the client's call fails as
/// "operation was canceled: connection closed", which names neither side's configuration.
/// (A server that closes without an alert, as Go's TLS does, still reads as that.)
pub fn plaintext_dialer() -> Dialer {
    Arc::new(move |authority: String| {
        Box::pin(async move {
            let tcp = tcp_connect(&authority).await?;
            Ok(Box::new(TlsSniff {
                inner: tcp,
                authority,
                checked: false,
            }) as Box<dyn DialedIo>)
        })
    })
}

/// A plaintext stream that fails its first read when the server speaks TLS.
struct TlsSniff {
    inner: TcpStream,
    authority: String,
    checked: bool,
}

/// First byte of a TLS record: alert (21) or handshake (22).
fn is_tls_record_start(b: u8) -> bool {
    b == 21 || b == 22
}

impl tokio::io::AsyncRead for TlsSniff {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled
            && !this.checked
            && let Some(&first) = buf.filled().get(before)
        {
            this.checked = true;
            if is_tls_record_start(first) {
                return std::task::Poll::Ready(Err(this.speaks_tls()));
            }
        }
        polled
    }
}

impl TlsSniff {
    fn speaks_tls(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the server at {} speaks TLS, and this process plaintext (--insecure): give it \
                 --tls-cert, --tls-key and --tls-ca instead",
                self.authority
            ),
        )
    }

    /// A failed write before anything was read: a TLS server answers the HTTP/2 preface
    /// with an alert and closes, and the client's next write can fail (broken pipe) before
    /// its read sees the alert. The alert is still in the socket's receive queue: look.
    fn failed_write(&mut self, e: std::io::Error) -> std::io::Error {
        if self.checked {
            return e;
        }
        let mut first = [0u8; 1];
        match self.inner.try_read(&mut first) {
            Ok(1) if is_tls_record_start(first[0]) => {
                self.checked = true;
                self.speaks_tls()
            }
            _ => e,
        }
    }
}

/// A write's outcome, a failure named by [`TlsSniff::failed_write`].
fn written<T>(
    sniff: &mut TlsSniff,
    polled: std::task::Poll<std::io::Result<T>>,
) -> std::task::Poll<std::io::Result<T>> {
    match polled {
        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(sniff.failed_write(e))),
        other => other,
    }
}

impl tokio::io::AsyncWrite for TlsSniff {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        written(&mut self, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        written(&mut self, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        written(&mut self, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A dialer that ignores the address it is asked for and dials the first of `authorities`
/// that answers, starting with the one that answered last: a channel over several log
/// replicas under TLS (tonic's balanced channel cannot take a connector). Each connection
/// goes to one replica; when it breaks, the next one is dialed. Each must be a log replica.
pub fn failover_dialer(tls: Arc<Tls>, authorities: Vec<String>) -> Dialer {
    let next = Arc::new(AtomicUsize::new(0));
    let authorities = Arc::new(authorities);
    Arc::new(move |_requested: String| {
        let (tls, next, authorities) = (tls.clone(), next.clone(), authorities.clone());
        Box::pin(async move {
            let n = authorities.len().max(1);
            let start = next.load(Ordering::Relaxed);
            let mut last = std::io::Error::other("no address to dial");
            for k in (0..n).map(|i| (start + i) % n) {
                let Some(a) = authorities.get(k) else { break };
                match dial(&tls, a, &Expected::Log).await {
                    Ok(io) => {
                        next.store(k, Ordering::Relaxed);
                        return Ok(Box::new(io) as Box<dyn DialedIo>);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    })
}
