//! Dialing TLS connections for tonic: a connector that opens TCP (with `TCP_NODELAY`) and
//! runs the TLS handshake with the configuration current at that moment, so a rotated
//! client certificate is used from the next connection on. The URI stays `http://`: tonic
//! speaks HTTP/2 over the stream this returns.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Tls;

/// A dialed TLS connection as hyper wants it.
pub type Dialed = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

/// Dials `host:port` and completes the TLS handshake.
pub async fn dial(tls: &Tls, authority: &str) -> std::io::Result<Dialed> {
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
    let io = connector.connect(name, tcp).await?;
    Ok(TokioIo::new(io))
}

/// The connector for `Endpoint::connect_with_connector`.
pub fn connector(
    tls: Arc<Tls>,
) -> impl tower::Service<
    http::Uri,
    Response = Dialed,
    Error = std::io::Error,
    Future = futures::future::BoxFuture<'static, std::io::Result<Dialed>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        Box::pin(async move { dial(&tls, &authority).await })
            as futures::future::BoxFuture<'static, _>
    })
}

/// A connector that dials the first of `authorities` that answers, starting with the one
/// that answered last: a channel over several log replicas under TLS (tonic's balanced
/// channel cannot take a connector). Each connection goes to one replica; when it breaks,
/// the next one is dialed.
pub fn failover_connector(
    tls: Arc<Tls>,
    authorities: Vec<String>,
) -> impl tower::Service<
    http::Uri,
    Response = Dialed,
    Error = std::io::Error,
    Future = futures::future::BoxFuture<'static, std::io::Result<Dialed>>,
> + Clone
+ Send
+ 'static {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let authorities = Arc::new(authorities);
    tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        let next = next.clone();
        let authorities = authorities.clone();
        Box::pin(async move {
            let n = authorities.len().max(1);
            let start = next.load(std::sync::atomic::Ordering::Relaxed);
            let mut last = std::io::Error::other("no address to dial");
            for i in 0..n {
                let k = (start + i) % n;
                let Some(a) = authorities.get(k) else { break };
                match dial(&tls, a).await {
                    Ok(io) => {
                        next.store(k, std::sync::atomic::Ordering::Relaxed);
                        return Ok(io);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }) as futures::future::BoxFuture<'static, _>
    })
}
