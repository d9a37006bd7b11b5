//! `CertificatesReady` and certificate problems in a LogPlayer's status.

use super::*;

/// Certificates in order are `CertificatesReady=True`; a certificate problem (a CA that
/// does not load, one about to expire) is `False` with its reason and degrades the
/// LogPlayer; Insecure mode says so; not looked at (paused) is no condition at all.
#[test]
fn certificate_problems_are_a_condition_and_degrade() {
    use crate::operator::certs::CertState;
    let cond_of = |obs: &Observed| {
        logplayer_status(obs, &LogPlayerStatus::default(), now())
            .conditions
            .into_iter()
            .find(|c| c.type_ == "CertificatesReady")
    };
    assert_eq!(cond_of(&healthy()), None);
    let ready = healthy_with(|o| {
        o.certificates = CertState::Ready {
            count: 5,
            first_expiry: 1_900_000_000,
            issuer: None,
        }
    });
    let c = cond_of(&ready).expect("a condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Issued"));
    assert!(c.message.contains("2030-03-17"), "{}", c.message);
    assert!(c.message.contains("from the CA"), "{}", c.message);
    let by_cert_manager = healthy_with(|o| {
        o.certificates = CertState::Ready {
            count: 5,
            first_expiry: 1_900_000_000,
            issuer: Some("ClusterIssuer corp-ca".into()),
        }
    });
    let c = cond_of(&by_cert_manager).expect("a condition");
    assert!(
        c.message
            .contains("by cert-manager (ClusterIssuer corp-ca)"),
        "{}",
        c.message
    );
    let bad = healthy_with(|o| {
        o.certificates = CertState::Problem(Problem::new(
            "CaInvalid",
            "the CA Secret demo-ca lacks tls.key",
        ))
    });
    let st = logplayer_status(&bad, &LogPlayerStatus::default(), now());
    let c = cond_of(&bad).expect("a condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "CaInvalid")
    );
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CaInvalid")
    );
    let insecure = healthy_with(|o| o.certificates = CertState::Insecure);
    let c = cond_of(&insecure).expect("a condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Insecure")
    );
}

/// Certificates not looked at (a pause) keep what was last found: a CA about to expire stays
/// in `CertificatesReady` and `Degraded`, and no `Recovered` Event says otherwise. Dropped,
/// the pause made a LogPlayer look healthy.
#[test]
fn a_pause_keeps_the_last_certificate_problem() {
    use crate::operator::certs::CertState;
    let expiring = healthy_with(|o| {
        o.certificates = CertState::Problem(Problem::new(
            "CaExpiringSoon",
            "the CA in Secret demo-ca expires at 1900000000 (unix time): replace it",
        ))
    });
    let before = logplayer_status(&expiring, &LogPlayerStatus::default(), now());
    let paused = healthy_with(|o| {
        o.paused = true;
        o.certificates = CertState::NotChecked;
    });
    let after = logplayer_status(&paused, &before, now());
    for type_ in ["CertificatesReady", "Degraded"] {
        let (status, reason, _) = srm(&after.conditions, type_);
        assert_eq!(
            (type_, status, reason),
            (type_, srm(&before.conditions, type_).0, "CaExpiringSoon")
        );
    }
    assert_eq!(
        srm(&after.conditions, condition::READY).0,
        srm(&before.conditions, condition::READY).0
    );
    assert_eq!(events_for(&before.conditions, &after.conditions), []);
}

/// A warning (a CA within 30 days of its end, a log replica behind) is `Degraded` but not
/// a reason for `Ready` False: delivery works, and for up to 30 days `kubectl wait` and
/// deployment tools took the LogPlayer for a broken one. A blocking problem beside it is
/// `Ready`'s reason, and a CA that does not work is blocking.
#[test]
fn a_warning_is_degraded_but_ready() {
    use crate::operator::certs::CertState;
    let problem = |reason: &str| {
        healthy_with(|o| {
            o.certificates = CertState::Problem(Problem::new(reason, format!("{reason} here")))
        })
    };
    let expiring = logplayer_status(
        &problem("CaExpiringSoon"),
        &LogPlayerStatus::default(),
        now(),
    );
    assert_eq!(srm(&expiring.conditions, condition::READY).0, "True");
    assert_eq!(
        srm(&expiring.conditions, condition::DEGRADED),
        ("True", "CaExpiringSoon", "CaExpiringSoon here")
    );
    let invalid = logplayer_status(&problem("CaInvalid"), &LogPlayerStatus::default(), now());
    assert_eq!(
        srm(&invalid.conditions, condition::READY),
        ("False", "CaInvalid", "CaInvalid here")
    );
}
