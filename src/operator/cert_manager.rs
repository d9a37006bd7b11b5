//! The certificates of a LogPlayer in `spec.tls.mode: CertManager`: the same leaves as
//! `Operator` mode ([`super::certs::leaves`]: same Secrets, roles and names), each as a
//! cert-manager `Certificate` signed by `spec.tls.issuerRef`. cert-manager issues them into
//! the Secrets the pods mount and renews them (90 days, renewed 30 before the end, a new
//! key each time); the operator only applies the `Certificate`s and reads back whether
//! each is `Ready` and its Secret carries `ca.crt` (the pods verify their peers with it).
//!
//! `Certificate` is not a type of `k8s-openapi`, and cert-manager's Rust bindings are not
//! kept; it is written as a `DynamicObject` here, the few fields we set and read.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::certs::{CertState, GRANTS_ANNOTATION, LEAF_VALIDITY, Leaf, RENEW_BEFORE};
use super::status::Problem;
use super::{FIELD_MANAGER, OperatorError};
use crate::crd::{IssuerRef, LogPlayer};

/// cert-manager's `Certificate` (`cert-manager.io/v1`).
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

fn hours(d: std::time::Duration) -> String {
    format!("{}h", d.as_secs() / 3600)
}

/// The `Certificate` for `leaf`: its Secret, URI names (the roles), DNS names, validity and
/// renewal window as the operator's own, an ECDSA P-256 key made anew at each renewal.
pub fn certificate(leaf: &Leaf, ns: &str, issuer: &IssuerRef) -> DynamicObject {
    let uris: Vec<String> = leaf.grants.iter().map(|(r, n)| r.uri(n)).collect();
    let mut obj = DynamicObject::new(&leaf.secret, &certificate_resource()).within(ns);
    obj.metadata.labels = Some(leaf.labels.clone());
    obj.metadata.owner_references = Some(vec![leaf.owner.clone()]);
    let mut spec = json!({
            "secretName": leaf.secret,
            "duration": hours(LEAF_VALIDITY),
            "renewBefore": hours(RENEW_BEFORE),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            "secretTemplate": {
                "labels": leaf.labels,
                "annotations": {GRANTS_ANNOTATION: leaf.grants_text()},
            },
    });
    // Only the names it has: cert-manager refuses a Certificate with no name at all, and
    // every leaf has a role URI or a DNS name (a shard's).
    if !uris.is_empty() {
        spec["uris"] = json!(uris);
    }
    if !leaf.hosts.is_empty() {
        spec["dnsNames"] = json!(leaf.hosts);
    }
    obj.data = json!({ "spec": spec });
    obj
}

/// What one `Certificate`'s status says: `Ok(expiry)` (unix seconds) when Ready, otherwise
/// why not.
pub fn readiness(cert: &DynamicObject) -> Result<i64, String> {
    let status = &cert.data["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    match ready {
        Some(c) if c["status"] == "True" => status["notAfter"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .ok_or_else(|| "Ready but without status.notAfter".to_owned()),
        Some(c) => Err(format!(
            "{}: {}",
            c["reason"].as_str().unwrap_or("NotReady"),
            c["message"].as_str().unwrap_or("")
        )),
        None => Err("cert-manager has not looked at it yet".to_owned()),
    }
}

/// Applies every leaf's `Certificate` and reports whether cert-manager has issued them all.
pub async fn keep(
    client: &Client,
    ns: &str,
    lp: &LogPlayer,
    leaves: &[Leaf],
) -> Result<CertState, OperatorError> {
    let Some(issuer) = lp.spec.tls.issuer_ref.as_ref() else {
        // The CRD refuses this; an object from before the rule existed may still have it.
        return Ok(CertState::Problem(Problem::new(
            "CertificateIssueFailed",
            "spec.tls.mode is CertManager but spec.tls.issuerRef is not set",
        )));
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &certificate_resource());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut first_expiry = i64::MAX;
    let mut waiting = Vec::new();
    for leaf in leaves {
        let desired = certificate(leaf, ns, issuer);
        let applied = match api
            .patch(&leaf.secret, &params, &Patch::Apply(&desired))
            .await
        {
            Ok(applied) => applied,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Ok(CertState::Problem(Problem::new(
                    "CertManagerMissing",
                    "the API server does not serve cert-manager.io/v1 Certificate: install \
                     cert-manager, or set spec.tls.mode to Operator",
                )));
            }
            Err(kube::Error::Api(e)) if super::refusal(e.code) => {
                return Ok(CertState::Problem(Problem::new(
                    "CertificateIssueFailed",
                    format!(
                        "the API server refused Certificate {}: {}",
                        leaf.secret, e.message
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        match readiness(&applied) {
            Ok(expiry) => first_expiry = first_expiry.min(expiry),
            Err(why) => {
                waiting.push(format!("{}: {why}", applied.name_any()));
                continue;
            }
        }
        let secret = match secrets.get_opt(&leaf.secret).await {
            Ok(secret) => secret,
            Err(kube::Error::Api(e)) if e.is_forbidden() => {
                return Ok(CertState::Problem(Problem::new(
                    "CertificateIssueFailed",
                    format!(
                        "the API server refused to read Secret {}: {}",
                        leaf.secret, e.message
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let has_ca = secret.is_some_and(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .is_some_and(|b| !b.0.is_empty())
        });
        if !has_ca {
            waiting.push(format!(
                "{}: its Secret has no ca.crt (use an issuer that writes one, such as a CA issuer)",
                leaf.secret
            ));
        }
    }
    if !waiting.is_empty() {
        return Ok(CertState::Problem(Problem::new(
            "CertificateNotReady",
            format!(
                "waiting for cert-manager ({} {}): {}",
                issuer.kind,
                issuer.name,
                waiting.join("; ")
            ),
        )));
    }
    Ok(CertState::Ready {
        count: leaves.len(),
        first_expiry,
        issuer: Some(format!("{} {}", issuer.kind, issuer.name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::certs::leaves;
    use serde_json::Value;

    fn lp() -> LogPlayer {
        serde_json::from_value(json!({
            "apiVersion": "logplayer.io/v1alpha1",
            "kind": "LogPlayer",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u1"},
            "spec": {"logStore": {"managed": {"storage": "1Gi"}},
                     "tls": {"mode": "CertManager", "issuerRef": {"name": "ca-issuer"}}}
        }))
        .expect("a LogPlayer")
    }

    #[test]
    fn each_leaf_is_a_certificate_with_its_roles_as_uris_and_the_issuer() {
        let lp = lp();
        let issuer = lp.spec.tls.issuer_ref.clone().unwrap();
        assert_eq!(issuer.kind, "Issuer");
        assert_eq!(issuer.group, "cert-manager.io");
        let leaves = leaves(&lp, "ns", &[]);
        let all: Vec<_> = leaves
            .iter()
            .map(|l| certificate(l, "ns", &issuer))
            .collect();
        insta::assert_yaml_snapshot!(all);
    }

    #[test]
    fn ready_means_the_ready_condition_and_an_expiry() {
        let with = |status: Value| {
            let mut o = DynamicObject::new("c", &certificate_resource());
            o.data = json!({ "status": status });
            readiness(&o)
        };
        assert!(with(json!({})).is_err());
        let not = with(json!({"conditions": [{"type": "Ready", "status": "False",
            "reason": "DoesNotExist", "message": "Issuing certificate as Secret does not exist"}]}));
        assert_eq!(
            not,
            Err("DoesNotExist: Issuing certificate as Secret does not exist".into())
        );
        let ready = with(json!({"conditions": [{"type": "Ready", "status": "True"}],
            "notAfter": "2027-03-02T10:00:00Z"}));
        assert_eq!(ready, Ok(1803981600));
    }
}
