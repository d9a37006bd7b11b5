//! Part of scenario c: a certificate nearing expiry is renewed by the operator and the pod
//! that serves it picks the renewal up without a restart. The test makes `s0-shard-tls`
//! near its end as time would (a certificate of the same CA and names, one week left), then
//! waits for the operator to issue it again (90 days) and for the shard's server to present
//! the renewed certificate on new connections. Also scenario m, `spec.tls.mode: CertManager`
//! ([`cert_manager_certificates`]).

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
    let names = [(logplayer::tls::identity::Role::Shard, "s0")];
    let short = issuer.leaf(SECRET, &names, &["s0-shard.demo.svc"], week)?;
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

/// The directory of cert-manager's CRDs (`tests/e2e/cert-manager-crds.sh`).
fn cert_manager_crds() -> anyhow::Result<String> {
    let out = std::process::Command::new(crate::repo().join("tests/e2e/cert-manager-crds.sh"))
        .stdin(std::process::Stdio::null())
        .output()
        .context("running tests/e2e/cert-manager-crds.sh")?;
    ensure!(
        out.status.success(),
        "tests/e2e/cert-manager-crds.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Scenario m: `spec.tls.mode: CertManager`. With cert-manager's real `Certificate` CRD
/// installed, the operator applies one `Certificate` per certificate Secret (accepted by
/// cert-manager's schema), each naming the issuer, the Secret and the role as a URI; until
/// they are issued the LogPlayer says `CertificatesReady=False` (`CertificateNotReady`).
/// The test then does cert-manager's part (no cert-manager controller runs here: it is not
/// buildable from the module proxy alone): it writes each Secret and marks each
/// `Certificate` Ready, and the condition turns `True`, naming cert-manager and the issuer.
pub async fn cert_manager_certificates(h: &Harness) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{DynamicObject, PostParams};
    use logplayer::operator::cert_manager::certificate_resource;
    const NS: &str = "cm";
    let crds = cert_manager_crds()?;
    h.cp.kubectl(&[
        "apply",
        "-f",
        &format!("{crds}/cert-manager.io_certificates.yaml"),
    ])?;
    h.cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/certificates.cert-manager.io",
        "--timeout=60s",
    ])?;
    h.cp.kubectl(&["create", "namespace", NS])?;
    crate::restricted_namespace(h, NS)?;
    let file = h.cp.dir().join("cm-logplayer.yaml");
    std::fs::write(
        &file,
        "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata:\n  name: cm\nspec:\n  \
         replicas: 1\n  logStore:\n    external:\n      endpoint: \"demo-logstore.demo.svc:7000\"\n  \
         shardSelector:\n    matchLabels:\n      logplayer.io/instance: cm\n  tls:\n    \
         mode: CertManager\n    issuerRef:\n      name: corp-ca\n      kind: ClusterIssuer\n\
         ---\napiVersion: logplayer.io/v1alpha1\nkind: Shard\nmetadata:\n  name: cm-s\n  \
         labels: {logplayer.io/instance: cm}\nspec:\n  logPlayer: cm\n  slots:\n    \
         - {start: 0, end: 16383}\n  external:\n    endpoint: \"127.0.0.1:9\"\n",
    )?;
    h.cp.kubectl(&["-n", NS, "apply", "-f", &file.display().to_string()])?;

    let certs: Api<DynamicObject> =
        Api::namespaced_with(h.client.clone(), NS, &certificate_resource());
    let wanted = [
        ("cm-player-tls", "logplayer://player/cm"),
        ("cm-writer-tls", "logplayer://writer/*"),
        ("cm-admin-tls", "logplayer://admin/cm"),
    ];
    for (name, uri) in wanted {
        let c = wait_for(
            &format!("the operator's Certificate {name}"),
            60 * SECOND,
            SECOND,
            || async { certs.get_opt(name).await.map_err(|e| e.to_string()) },
        )
        .await?;
        let spec = &c.data["spec"];
        ensure!(
            spec["secretName"] == name
                && spec["issuerRef"]["name"] == "corp-ca"
                && spec["issuerRef"]["kind"] == "ClusterIssuer"
                && spec["uris"]
                    .as_array()
                    .is_some_and(|u| u.len() == 1 && u[0] == uri)
                && c.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "LogPlayer" && o.name == "cm"),
            "Certificate {name} is not what the operator should write: {}",
            serde_json::to_string(&c).unwrap_or_default()
        );
    }
    let condition = |reason: &'static str| async move {
        wait_for(
            &format!("CertificatesReady with reason {reason}"),
            60 * SECOND,
            SECOND,
            || async {
                let out =
                    h.cp.kubectl(&["-n", NS, "get", "logplayer", "cm", "-o", "json"])
                        .map_err(|e| e.to_string())?;
                let lp: serde_json::Value =
                    serde_json::from_str(&out).map_err(|e| e.to_string())?;
                match crate::condition(&lp, "CertificatesReady") {
                    Some(c) if c["reason"] == reason => Ok(Some(c)),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    };
    let waiting = condition("CertificateNotReady").await?;
    ensure!(waiting["status"] == "False", "{waiting}");

    // cert-manager's part.
    let ca = logplayer::tls::issue::Ca::new("corp CA", Duration::from_secs(365 * 24 * 3600))?;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    for (name, _) in wanted {
        let leaf = ca.leaf(name, &[], &[], Duration::from_secs(90 * 24 * 3600))?;
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS},
            "stringData": {"tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.pem.cert},
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        certs
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                    "message": "Certificate is up to date and has not expired",
                                    "lastTransitionTime": "2026-12-02T00:00:00Z"}],
                    "notAfter": "2027-03-02T00:00:00Z"}})),
            )
            .await?;
    }
    let ready = condition("Issued").await?;
    ensure!(
        ready["status"] == "True"
            && ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("by cert-manager (ClusterIssuer corp-ca)")),
        "{ready}"
    );
    h.cp.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
