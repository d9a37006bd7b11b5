//! Part of scenario c: a certificate nearing expiry is renewed by the operator and the pod
//! that serves it picks the renewal up without a restart. The test makes `s0-shard-tls`
//! near its end as time would (a certificate of the same CA and names, one week left), then
//! waits for the operator to issue it again (90 days) and for the shard's server to present
//! the renewed certificate on new connections.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use crate::{DEMO_NS, Harness, SECOND, wait_for};

const SECRET: &str = "s0-shard-tls";
const SHARD: &str = "s0-shard.demo.svc:7100";

/// The certificate `addr`'s server presents to a new connection from `me`.
async fn presented(addr: &str, me: &Arc<logplayer::tls::Tls>) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(me.current().client.clone());
    let name = ServerName::try_from("s0-shard.demo.svc").map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(5 * SECOND, connector.connect(name, tcp))
        .await
        .map_err(|_| "no handshake in 5 s".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate presented".to_owned())
}

fn der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .context("parsing a PEM certificate")?
        .to_vec())
}

/// See the module's doc. `issuer` is the demo's CA, `me` a client identity from it.
pub async fn a_certificate_nearing_expiry_is_renewed_and_served(
    h: &Harness,
    issuer: &logplayer::tls::issue::Ca,
    me: &Arc<logplayer::tls::Tls>,
) -> anyhow::Result<()> {
    use logplayer::operator::certs::{RENEW_BEFORE, not_after};
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), DEMO_NS);
    let week = Duration::from_secs(7 * 24 * 3600);
    let short = issuer.leaf(SECRET, &[], &["s0-shard.demo.svc"], week)?;
    secrets
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "stringData": {"tls.crt": short.cert, "tls.key": short.key}
            })),
        )
        .await?;
    let short_der = der(&short.cert)?;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    };
    let renewed = wait_for(
        "the operator to renew s0-shard-tls",
        90 * SECOND,
        SECOND,
        || async {
            let s = secrets.get(SECRET).await.map_err(|e| e.to_string())?;
            let cert = s
                .data
                .as_ref()
                .and_then(|d| d.get("tls.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            match not_after(&cert) {
                Some(t) if t - now() > RENEW_BEFORE.as_secs() as i64 => Ok(Some(cert)),
                Some(t) => Err(format!("expires in {} s", t - now())),
                None => Err("no certificate".into()),
            }
        },
    )
    .await?;
    let renewed_der = der(&renewed)?;
    ensure!(
        renewed_der != short_der,
        "the renewal is the short certificate"
    );
    wait_for(
        "the shard's server to present the renewed certificate",
        60 * SECOND,
        SECOND,
        || async {
            let got = presented(SHARD, me).await?;
            if got == renewed_der {
                Ok(Some(()))
            } else if got == short_der {
                Err("it presents the week-long certificate".into())
            } else {
                Err("it presents the first certificate".into())
            }
        },
    )
    .await
}
