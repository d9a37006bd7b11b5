//! Accepting TLS connections for tonic: each accepted TCP connection's handshake runs on a
//! task of its own (bounded by [`HANDSHAKE_TIMEOUT`], so a client that stalls cannot hold
//! up the others), with the configuration current at that moment (so a rotated certificate
//! is used from the next connection on), and the verified peer's identity is parsed once per
//! connection and handed to every request on it ([`Conn`] in the request extensions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use super::Tls;
use super::identity::Peer;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; past this, accepting waits.
const HANDSHAKES: usize = 256;

/// What every request on a TLS connection knows about it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub remote: Option<SocketAddr>,
    pub peer: Arc<Peer>,
}

/// An accepted, handshaken TLS connection.
pub type TlsConn = crate::serving::Accepted<tokio_rustls::server::TlsStream<TcpStream>, Conn>;

/// The TLS connections accepted on `listener`, for tonic's `serve_with_incoming`. A failed
/// handshake (no certificate, one from another CA, an expired one) is logged and dropped;
/// the stream goes on.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, then go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let peer = Peer::of_chain(io.get_ref().1.peer_certificates());
                        let conn = Conn {
                            remote: Some(remote),
                            peer: Arc::new(peer),
                        };
                        let _ = tx.send(Ok(TlsConn::new(io, conn))).await;
                    }
                    // Closed before saying anything: a TCP probe (the kubelet's, on
                    // Kubernetes), not an attempt worth a warning.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%remote, "a connection closed before its TLS handshake");
                    }
                    Ok(Err(e)) if super::is_plaintext_peer(&e) => {
                        tracing::warn!(%remote, error = %e, "refused a connection: the client does not speak TLS (does it run --insecure?)");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, error = %e, "refused a connection: TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "refused a connection: no TLS handshake in time");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
