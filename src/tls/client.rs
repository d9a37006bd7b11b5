//! Dialing TLS connections for tonic: [`dialer`] opens TCP (with `TCP_NODELAY`) and runs
//! the TLS handshake with the configuration current at that moment, so a rotated client
//! certificate is used from the next connection on. It is a [`crate::grpc::Dialer`], the
//! same seam the simulated network plugs into; the URI stays `http://`, tonic speaks HTTP/2
//! over the stream it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Tls;
use crate::grpc::{DialedIo, Dialer};

/// Dials `host:port` and completes the TLS handshake.
pub async fn dial(
    tls: &Tls,
    authority: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
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
    connector.connect(name, tcp).await
}

/// The dialer of `tls`'s connections.
pub fn dialer(tls: Arc<Tls>) -> Dialer {
    Arc::new(move |authority: String| {
        let tls = tls.clone();
        Box::pin(async move { Ok(Box::new(dial(&tls, &authority).await?) as Box<dyn DialedIo>) })
    })
}

/// A dialer that ignores the address it is asked for and dials the first of `authorities`
/// that answers, starting with the one that answered last: a channel over several log
/// replicas under TLS (tonic's balanced channel cannot take a connector). Each connection
/// goes to one replica; when it breaks, the next one is dialed.
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
                match dial(&tls, a).await {
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
