//! The certificates of a LogPlayer in `spec.tls.mode: Operator`: its CA, kept in a Secret
//! (created when absent; a user's own, or cert-manager's, when it exists), and one leaf
//! certificate per component and role in Secrets of type `kubernetes.io/tls` that the pods
//! mount (see `crd::TlsSettings` for the list). A leaf is issued again
//! [`RENEW_BEFORE`] before it expires, when it was signed by another CA than the current
//! one, or when the roles it should grant changed; otherwise it is left alone (its key is
//! never rotated for nothing). The operator dials the LogPlayer's servers with the admin
//! certificate ([`admin_identity`]). In `CertManager` mode the same leaves are cert-manager
//! `Certificate`s instead (`super::cert_manager`).
//!
//! Written here rather than left to cert-manager: the operator must work in a cluster
//! without it, and what it needs (a CA, a few leaves with URI names, renewal by date) is a
//! few calls of rcgen, the crate `demo` already issues its certificates with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::apply::apply;
use super::desired::{self, ca_secret, labels, shard_server_name, shard_tls_secret, tls_secret};
use super::status::Problem;
use super::{FIELD_MANAGER, OperatorError};
use crate::crd::{LogPlayer, Shard, TlsMode};
use crate::tls::Tls;
use crate::tls::identity::Role;
use crate::tls::issue::{Ca, Pem};

/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A leaf is issued again when it expires within this; the CA is reported as expiring.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a CA the operator creates is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Annotation of a leaf Secret: the names its certificate grants (to issue it again when
/// they change).
pub const GRANTS_ANNOTATION: &str = "logplayer.io/grants";

/// One leaf certificate to keep in a Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// The Secret's name (also the certificate's common name).
    pub secret: String,
    pub grants: Vec<(Role, String)>,
    /// DNS names it carries (for tools that check them; ours do not).
    pub hosts: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
}

impl Leaf {
    /// The grants as the annotation writes them (`logplayer://ROLE/NAME`, comma-separated).
    pub fn grants_text(&self) -> String {
        self.grants
            .iter()
            .map(|(role, name)| role.uri(name))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The leaves of a LogPlayer in Operator mode: its players, its managed LogStore, the
/// writers, the admin, and each managed Shard it drives.
pub fn leaves(lp: &LogPlayer, ns: &str, shards: &[Shard]) -> Vec<Leaf> {
    let name = lp.name_any();
    let owner = desired::owner_of(lp);
    let leaf = |what: &str, grants: Vec<(Role, String)>, hosts: Vec<String>| Leaf {
        secret: tls_secret(lp, what),
        grants,
        hosts,
        labels: labels(&name, what),
        owner: owner.clone(),
    };
    let mut out = vec![
        leaf("player", vec![(Role::Player, name.clone())], vec![]),
        leaf(
            "writer",
            lp.spec
                .tls
                .writer_ids
                .iter()
                .map(|id| (Role::Writer, id.0.clone()))
                .collect(),
            vec![],
        ),
        leaf("admin", vec![(Role::Admin, name.clone())], vec![]),
    ];
    if lp.spec.log_store.managed.is_some() {
        let service = desired::logstore_name(lp);
        let client = desired::logstore_client_name(lp);
        out.push(leaf(
            "logstore",
            vec![(Role::Replica, service.clone())],
            service_names(&[&format!("*.{service}"), &service, &client], ns),
        ));
    }
    for s in shards.iter().filter(|s| s.spec.managed.is_some()) {
        let service = shard_server_name(s);
        out.push(Leaf {
            secret: shard_tls_secret(s),
            grants: vec![(Role::Shard, s.name_any())],
            hosts: service_names(&[&format!("*.{service}"), &service], ns),
            labels: labels(&name, "shard"),
            owner: desired::owner_of(s),
        });
    }
    out
}

/// The DNS names of Services (and `*.SERVICE` for their pods) in `ns`, short and with
/// Kubernetes' default domain: for third-party clients, which check the name they dialed
/// against the certificate (ours check the `logplayer://` names instead).
fn service_names(services: &[&str], ns: &str) -> Vec<String> {
    services
        .iter()
        .flat_map(|s| {
            [
                format!("{s}.{ns}.svc"),
                format!("{s}.{ns}.svc.cluster.local"),
            ]
        })
        .collect()
}

/// Why a leaf Secret must be issued (again), or `None` to leave it.
pub fn why_issue(
    existing: Option<&Secret>,
    ca_cert: &str,
    leaf: &Leaf,
    now: i64,
) -> Option<String> {
    let Some(secret) = existing else {
        return Some("it does not exist".into());
    };
    let text = |key: &str| secret_text(secret, key);
    if text("ca.crt").as_deref() != Some(ca_cert) {
        return Some("it was not signed by the current CA".into());
    }
    let grants = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GRANTS_ANNOTATION));
    if grants.map(String::as_str) != Some(leaf.grants_text().as_str()) {
        return Some("the names it should grant changed".into());
    }
    let cert = text("tls.crt");
    let Some(expiry) = cert.as_deref().and_then(not_after) else {
        return Some("its certificate does not parse".into());
    };
    // A key that is not the certificate's, or a certificate the CA did not sign (another
    // Secret's copied in, an edit gone wrong), would crash-loop every pod that mounts it and
    // leave the operator's own calls plaintext, while the status said the certificates
    // were issued.
    let key = text("tls.key").unwrap_or_default();
    if let Err(e) = Tls::from_pem(
        "the Secret",
        cert.as_deref().unwrap_or_default(),
        &key,
        ca_cert,
    ) {
        return Some(format!("it does not load: {e}"));
    }
    if expiry - now < RENEW_BEFORE.as_secs() as i64 {
        return Some(format!("it expires at {expiry} (unix time)"));
    }
    // The DNS names are for third-party clients (ours check the grants); a certificate
    // issued before a name was added (an upgrade) gets it now, not at its renewal.
    let mut want: Vec<&str> = leaf.hosts.iter().map(String::as_str).collect();
    want.sort_unstable();
    let mut has = cert.as_deref().map(dns_names).unwrap_or_default();
    has.sort_unstable();
    (has != want).then(|| "the DNS names it should carry changed".into())
}

/// The DNS names of the first certificate of `pem` (empty if it does not parse).
fn dns_names(pem: &str) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, der)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = der.parse_x509() else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

/// When the first certificate of `pem` expires (unix seconds).
pub fn not_after(pem: &str) -> Option<i64> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The Secret holding `leaf`, freshly issued by `ca`.
pub fn leaf_secret(leaf: &Leaf, ns: &str, ca: &Ca) -> Result<Secret, crate::tls::TlsError> {
    let grants: Vec<(Role, &str)> = leaf.grants.iter().map(|(r, n)| (*r, n.as_str())).collect();
    let hosts: Vec<&str> = leaf.hosts.iter().map(String::as_str).collect();
    let pem = ca.leaf(&leaf.secret, &grants, &hosts, LEAF_VALIDITY)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(leaf.secret.clone()),
            namespace: Some(ns.to_owned()),
            labels: Some(leaf.labels.clone()),
            annotations: Some(BTreeMap::from([(
                GRANTS_ANNOTATION.to_owned(),
                leaf.grants_text(),
            )])),
            owner_references: Some(vec![leaf.owner.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(tls_data(&pem.cert, &pem.key, &ca.pem.cert)),
        ..Secret::default()
    })
}

/// What keeping a LogPlayer's certificates found.
#[derive(Debug, Clone, PartialEq)]
pub enum CertState {
    /// Not looked at (reconciliation paused, or the spec is invalid).
    NotChecked,
    /// `spec.tls.mode: Insecure`.
    Insecure,
    /// Every leaf is current; the first of them (or the CA) to expire, as unix seconds.
    /// `issuer` names the cert-manager issuer in `CertManager` mode.
    Ready {
        count: usize,
        first_expiry: i64,
        issuer: Option<String>,
    },
    /// Something to fix (an unusable CA, one expiring soon, a leaf that could not be issued).
    Problem(Problem),
}

/// The data of a `kubernetes.io/tls` Secret: `tls.crt`, `tls.key` and `ca.crt`.
fn tls_data(cert: &str, key: &str, ca: &str) -> BTreeMap<String, ByteString> {
    [("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The CA in the Secret `name` (`tls.crt`, `tls.key`), or why it is unusable.
fn read_ca(secret: &Secret, name: &str) -> Result<Ca, Problem> {
    let (Some(cert), Some(key)) = (
        secret_text(secret, "tls.crt"),
        secret_text(secret, "tls.key"),
    ) else {
        return Err(Problem::new(
            "CaInvalid",
            format!("the CA Secret {name} lacks tls.crt or tls.key (PEM)"),
        ));
    };
    Ca::from_pem(Pem { cert, key }).map_err(|e| {
        let why = match e {
            crate::tls::TlsError::NotACa(why) => why,
            other => other.to_string(),
        };
        Problem::new(
            "CaInvalid",
            format!("the CA Secret {name} does not hold a usable CA: {why}"),
        )
    })
}

/// The LogPlayer's CA: read from its Secret, or created there when absent.
async fn ca(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
) -> Result<Result<Ca, Problem>, OperatorError> {
    let name = ca_secret(lp);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(secret) = api.get_opt(&name).await? {
        return Ok(read_ca(&secret, &name));
    }
    let ca = match Ca::new(&format!("logplayer {ns}/{} CA", lp.name_any()), CA_VALIDITY) {
        Ok(ca) => ca,
        Err(e) => return Ok(Err(Problem::new("CertificateIssueFailed", e.to_string()))),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels(&lp.name_any(), "ca")),
            owner_references: Some(vec![desired::owner_of(lp)]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(tls_data(&ca.pem.cert, &ca.pem.key, &ca.pem.cert)),
        ..Secret::default()
    };
    // Created, never applied over: a CA someone made meanwhile wins (the create fails and
    // that one is read).
    let created = api
        .create(
            &kube::api::PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            },
            &secret,
        )
        .await;
    match created {
        Ok(_) => {
            tracing::info!(secret = %name, "created the LogPlayer's CA");
            Ok(Ok(ca))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(read_ca(&api.get(&name).await?, &name)),
        Err(e) => Err(e.into()),
    }
}

/// Keeps the certificates of `lp` (its `leaves`): issues each that is missing, expiring,
/// or from another CA. What the API server refuses (RBAC without Secrets, an admission
/// policy) is a problem in the status, not an error that would stop the reconciliation.
pub async fn keep(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    leaves: &[Leaf],
) -> Result<CertState, OperatorError> {
    let kept = match lp.spec.tls.mode {
        TlsMode::Insecure => return Ok(CertState::Insecure),
        TlsMode::CertManager => {
            return super::cert_manager::keep(client, ns, lp, leaves).await;
        }
        TlsMode::Operator => keep_issued(client, ns, lp, leaves).await,
    };
    match kept {
        Ok(state) => Ok(state),
        Err(e) => match e.as_apply_problem() {
            Some(p) => Ok(CertState::Problem(Problem::new(
                "CertificateIssueFailed",
                p.message,
            ))),
            None => match e {
                OperatorError::Kube(kube::Error::Api(status)) if super::refusal(status.code) => {
                    Ok(CertState::Problem(Problem::new(
                        "CertificateIssueFailed",
                        format!("the API server refused a Secret call: {}", status.message),
                    )))
                }
                other => Err(other),
            },
        },
    }
}

async fn keep_issued(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    leaves: &[Leaf],
) -> Result<CertState, OperatorError> {
    let ca = match ca(client, ns, lp).await? {
        Ok(ca) => ca,
        Err(problem) => return Ok(CertState::Problem(problem)),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ca_expiry = not_after(&ca.pem.cert).unwrap_or(0);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut first_expiry = ca_expiry;
    for leaf in leaves {
        let existing = api.get_opt(&leaf.secret).await?;
        let expiry = match why_issue(existing.as_ref(), &ca.pem.cert, leaf, now) {
            None => existing
                .as_ref()
                .and_then(|s| secret_text(s, "tls.crt"))
                .and_then(|c| not_after(&c))
                .unwrap_or(0),
            Some(why) => {
                let secret = match leaf_secret(leaf, ns, &ca) {
                    Ok(s) => s,
                    Err(e) => {
                        return Ok(CertState::Problem(Problem::new(
                            "CertificateIssueFailed",
                            format!("issuing {}: {e}", leaf.secret),
                        )));
                    }
                };
                // A CA whose leaves do not verify (a subject rcgen cannot repeat as their
                // issuer, say) would have every leaf issued again at every reconciliation.
                let text = |k: &str| secret_text(&secret, k).unwrap_or_default();
                if let Err(e) = Tls::from_pem(
                    &leaf.secret,
                    &text("tls.crt"),
                    &text("tls.key"),
                    &ca.pem.cert,
                ) {
                    return Ok(CertState::Problem(Problem::new(
                        "CaInvalid",
                        format!(
                            "the CA in Secret {} signs certificates that do not verify against \
                             it ({e}): replace it (tls.crt, tls.key)",
                            ca_secret(lp)
                        ),
                    )));
                }
                apply(client, ns, &secret).await?;
                tracing::info!(secret = %leaf.secret, reason = %why, "issued a certificate");
                now + LEAF_VALIDITY.as_secs() as i64
            }
        };
        first_expiry = first_expiry.min(expiry);
    }
    if ca_expiry - now < RENEW_BEFORE.as_secs() as i64 {
        return Ok(CertState::Problem(Problem::new(
            "CaExpiringSoon",
            format!(
                "the CA in Secret {} expires at {} (unix time): replace it (tls.crt, tls.key) \
                 and every certificate is issued again from the new one",
                ca_secret(lp),
                ca_expiry
            ),
        )));
    }
    Ok(CertState::Ready {
        count: leaves.len(),
        first_expiry,
        issuer: None,
    })
}

/// The identity the operator dials `lp`'s servers with: its admin certificate (`None` in
/// Insecure mode, or before it exists: then the calls go plaintext and are refused).
pub async fn admin_identity(
    client: &Client,
    ns: &str,
    lp: Option<&LogPlayer>,
) -> Result<Option<Arc<Tls>>, OperatorError> {
    let Some(lp) = lp.filter(|lp| lp.spec.tls.mode != TlsMode::Insecure) else {
        return Ok(None);
    };
    let name = tls_secret(lp, "admin");
    let secret = match Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await
    {
        Ok(Some(secret)) => secret,
        Ok(None) => return Ok(None),
        // Forbidden (RBAC without Secrets): keeping the certificates reports it in the
        // status; the probes go plaintext and are refused, which the status says too. An
        // error here would stop the reconciliation before any status is written. Any other
        // error (the API server unavailable) is one, retried.
        Err(kube::Error::Api(status)) if status.is_forbidden() => {
            tracing::warn!(secret = %name, message = %status.message, "the admin certificate cannot be read");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let (Some(cert), Some(key), Some(ca)) = (
        secret_text(&secret, "tls.crt"),
        secret_text(&secret, "tls.key"),
        secret_text(&secret, "ca.crt"),
    ) else {
        return Ok(None);
    };
    match Tls::from_pem(&format!("Secret {ns}/{name}"), &cert, &key, &ca) {
        Ok(tls) => Ok(Some(tls)),
        Err(e) => {
            tracing::warn!(error = %e, "the admin certificate does not load");
            Ok(None)
        }
    }
}

/// Whether an object is one of ours (for tests of [`leaf_secret`]).
#[cfg(test)]
fn managed(secret: &Secret) -> bool {
    use kube::Resource as _;
    secret
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == FIELD_MANAGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp() -> LogPlayer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logplayer.io/v1alpha1",
            "kind": "LogPlayer",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u1"},
            "spec": {"logStore": {"managed": {"storage": "1Gi"}}, "tls": {"writerIds": ["app-*"]}}
        }))
        .expect("a LogPlayer")
    }

    /// A CA Secret holding a certificate that is not a CA's is `CaInvalid`, not `Issued`:
    /// every pod given a leaf it signed would fail its own chain check and crash-loop.
    #[test]
    fn a_ca_secret_holding_a_leaf_is_an_invalid_ca() {
        let ca = Ca::new("test CA", CA_VALIDITY).unwrap();
        let secret = |cert: &str, key: &str| Secret {
            data: Some(tls_data(cert, key, cert)),
            ..Secret::default()
        };
        read_ca(&secret(&ca.pem.cert, &ca.pem.key), "demo-ca").unwrap();
        let leaf = ca
            .leaf("not a CA", &[], &["leaf.invalid"], CA_VALIDITY)
            .unwrap();
        let problem = read_ca(&secret(&leaf.cert, &leaf.key), "demo-ca")
            .err()
            .unwrap();
        assert_eq!(problem.reason, "CaInvalid");
        assert!(
            problem.message.contains("demo-ca") && problem.message.contains("CA:TRUE"),
            "{}",
            problem.message
        );
    }

    fn leaf_named(leaves: &[Leaf], secret: &str) -> Leaf {
        leaves
            .iter()
            .find(|l| l.secret == secret)
            .cloned()
            .unwrap_or_else(|| panic!("no leaf {secret}"))
    }

    #[test]
    fn a_logplayer_gets_one_certificate_per_component_and_role() {
        let leaves = leaves(&lp(), "ns", &[]);
        let names: Vec<&str> = leaves.iter().map(|l| l.secret.as_str()).collect();
        assert_eq!(
            names,
            [
                "demo-player-tls",
                "demo-writer-tls",
                "demo-admin-tls",
                "demo-logstore-tls"
            ]
        );
        let writer = leaf_named(&leaves, "demo-writer-tls");
        assert_eq!(writer.grants, vec![(Role::Writer, "app-*".to_owned())]);
        assert_eq!(
            leaf_named(&leaves, "demo-logstore-tls").grants,
            vec![(Role::Replica, "demo-logstore".to_owned())]
        );
        // A managed shard's certificate names it: its clients accept no other server there.
        let s0: Shard = serde_json::from_value(serde_json::json!({
            "apiVersion": "logplayer.io/v1alpha1",
            "kind": "Shard",
            "metadata": {"name": "s0", "namespace": "ns", "uid": "u2"},
            "spec": {"logPlayer": "demo", "slots": [{"start": 0, "end": 16383}],
                     "managed": {"storage": "1Gi"}}
        }))
        .expect("a Shard");
        let with_shard = super::leaves(&lp(), "ns", &[s0]);
        let shard = leaf_named(&with_shard, "s0-shard-tls");
        assert_eq!(shard.grants, vec![(Role::Shard, "s0".to_owned())]);
        // DNS names for third-party clients, which check the name they dialed: each Service
        // and its pods, short and with the default domain.
        assert!(
            shard
                .hosts
                .contains(&"s0-shard.ns.svc.cluster.local".to_owned())
        );
        assert!(shard.hosts.contains(&"*.s0-shard.ns.svc".to_owned()));
        let log = leaf_named(&leaves, "demo-logstore-tls");
        for name in [
            "demo-logstore-client.ns.svc",
            "demo-logstore-client.ns.svc.cluster.local",
            "*.demo-logstore.ns.svc.cluster.local",
        ] {
            assert!(
                log.hosts.contains(&name.to_owned()),
                "{name}: {:?}",
                log.hosts
            );
        }
    }

    #[test]
    fn a_leaf_is_issued_again_only_when_missing_expiring_from_another_ca_regranted_or_renamed() {
        let leaves = leaves(&lp(), "ns", &[]);
        let player = leaf_named(&leaves, "demo-player-tls");
        let ca = Ca::new("test CA", CA_VALIDITY).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(why_issue(None, &ca.pem.cert, &player, now).is_some());
        let secret = leaf_secret(&player, "ns", &ca).unwrap();
        assert!(managed(&secret));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(why_issue(Some(&secret), &ca.pem.cert, &player, now), None);
        // 61 days on, 29 are left: renewed.
        let later = now + 61 * 24 * 3600;
        let why = why_issue(Some(&secret), &ca.pem.cert, &player, later).unwrap();
        assert!(why.contains("expires"), "{why}");
        let other = Ca::new("another CA", CA_VALIDITY).unwrap();
        let why = why_issue(Some(&secret), &other.pem.cert, &player, now).unwrap();
        assert!(why.contains("current CA"), "{why}");
        let mut regranted = player.clone();
        regranted.grants = vec![(Role::Player, "other".into())];
        assert!(why_issue(Some(&secret), &ca.pem.cert, &regranted, now).is_some());
        // A server's certificate issued before a DNS name was added gets it now.
        let log = leaf_named(&leaves, "demo-logstore-tls");
        let mut before = log.clone();
        before.hosts.retain(|h| !h.ends_with(".cluster.local"));
        let old = leaf_secret(&before, "ns", &ca).unwrap();
        assert_eq!(why_issue(Some(&old), &ca.pem.cert, &before, now), None);
        let why = why_issue(Some(&old), &ca.pem.cert, &log, now).unwrap();
        assert!(why.contains("DNS names"), "{why}");
        let current = leaf_secret(&log, "ns", &ca).unwrap();
        assert_eq!(why_issue(Some(&current), &ca.pem.cert, &log, now), None);
        // A key that is not the certificate's, or none, or a certificate of another CA
        // under this CA's ca.crt: issued again.
        let mut swapped = secret.clone();
        let other_key = secret_text(&current, "tls.key").unwrap();
        swapped.data.as_mut().unwrap().insert(
            "tls.key".into(),
            k8s_openapi::ByteString(other_key.into_bytes()),
        );
        let why = why_issue(Some(&swapped), &ca.pem.cert, &player, now).unwrap();
        assert!(why.contains("does not load"), "{why}");
        let mut keyless = secret.clone();
        keyless.data.as_mut().unwrap().remove("tls.key");
        assert!(why_issue(Some(&keyless), &ca.pem.cert, &player, now).is_some());
        let foreign = leaf_secret(&player, "ns", &other).unwrap();
        let mut copied = foreign.clone();
        copied.data.as_mut().unwrap().insert(
            "ca.crt".into(),
            k8s_openapi::ByteString(ca.pem.cert.clone().into_bytes()),
        );
        let why = why_issue(Some(&copied), &ca.pem.cert, &player, now).unwrap();
        assert!(why.contains("does not load"), "{why}");
    }

    #[test]
    fn an_issued_leaf_loads_and_carries_its_role() {
        let leaves = leaves(&lp(), "ns", &[]);
        let ca = Ca::new("test CA", CA_VALIDITY).unwrap();
        let secret = leaf_secret(&leaf_named(&leaves, "demo-admin-tls"), "ns", &ca).unwrap();
        let cert = secret_text(&secret, "tls.crt").unwrap();
        let key = secret_text(&secret, "tls.key").unwrap();
        let ca_pem = secret_text(&secret, "ca.crt").unwrap();
        Tls::from_pem("test", &cert, &key, &ca_pem).expect("loads");
        let (_, der) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let peer = crate::tls::identity::Peer::from_der(&der.contents);
        assert!(peer.has(Role::Admin), "{peer:?}");
        assert!(!peer.has(Role::Writer), "{peer:?}");
    }
}
