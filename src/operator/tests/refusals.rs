//! Objects the API server refuses to apply, or answers without applying: each refusal is one
//! among the others (reported in the status, the rest still applied); an apply that was not
//! answered is no refusal.

use super::*;

#[tokio::test]
async fn a_refused_apply_is_reported_in_the_status_and_the_rest_is_still_applied() {
    let mut lp = logplayer(3, false);
    lp["spec"]["logStore"] = json!({"managed": {"storage": "2Gi"}});
    let mut w = world(&lp, four_shards());
    let sts = "/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore";
    let refusal = "StatefulSet.apps \"demo-logstore\" is invalid: \
                   spec.volumeClaimTemplates[0].spec.resources[storage]: Invalid value: \"0\": \
                   must be greater than zero";
    w.refuse.insert(sts.into(), refusal.into());
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    // Not an error to back off from: the status says it, and the apply is retried soon.
    assert_eq!(result.ok(), Some(Action::requeue(Duration::from_secs(5))));
    assert!(
        applies(&sent).contains(&"/apis/apps/v1/namespaces/ns/deployments/demo-player".into()),
        "the Deployment is applied after the refused StatefulSet"
    );
    let st = &status_patch(&sent).body["status"];
    assert_eq!(st["observedGeneration"], 3);
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert_eq!(degraded["observedGeneration"], 3);
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("StatefulSet demo-logstore")
            && message.contains("must be greater than zero"),
        "{message}"
    );
    assert_eq!(condition(st, "Ready")["status"], "False");
    assert!(
        events(&sent).contains(&("Warning".into(), "ApplyFailed".into())),
        "{:?}",
        events(&sent)
    );
}

/// A refused ServiceAccount apply is one refusal among the others: the account's uid is
/// then listed by name (the operator has no `get` on it: a GET is refused), and every other
/// object is still applied. With no account there, the players' Deployment is left as it
/// is: applied without the uid, it would restart every player.
#[tokio::test]
async fn a_refused_service_account_does_not_stop_the_other_applies() {
    let lp = logplayer(3, false);
    let mut w = world(&lp, four_shards());
    let account = "/api/v1/namespaces/ns/serviceaccounts/demo-player";
    w.refuse.insert(account.into(), "exceeded quota: sa".into());
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert_eq!(result.ok(), Some(Action::requeue(Duration::from_secs(5))));
    let paths = applies(&sent);
    assert!(
        !paths.contains(&"/apis/apps/v1/namespaces/ns/deployments/demo-player".into()),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.ends_with("/configmaps/demo-shard-map")),
        "{paths:?}"
    );
    let st = &status_patch(&sent).body["status"];
    assert_eq!(condition(st, "Progressing")["reason"], "Blocked", "{st}");
    let mut w = world(&lp, four_shards());
    let account = "/api/v1/namespaces/ns/serviceaccounts/demo-player";
    w.refuse.insert(
        account.into(),
        "serviceaccounts \"demo-player\" is forbidden: exceeded quota: sa".into(),
    );
    w.bad_request
        .insert(account.into(), "no get on serviceaccounts".into());
    let mut listed = owned_meta("ServiceAccount", "v1", "demo-player", "uid-demo");
    listed["metadata"]["uid"] = json!("uid-account");
    w.lists
        .insert("/api/v1/namespaces/ns/serviceaccounts".into(), vec![listed]);
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert_eq!(result.ok(), Some(Action::requeue(Duration::from_secs(5))));
    let deployment = sent
        .iter()
        .find(|s| s.path == "/apis/apps/v1/namespaces/ns/deployments/demo-player")
        .expect("the Deployment is applied after the refused ServiceAccount");
    assert_eq!(
        deployment.body["spec"]["template"]["metadata"]["annotations"]
            [desired::SERVICE_ACCOUNT_UID_ANNOTATION],
        "uid-account",
        "the uid of the account there is"
    );
    let st = &status_patch(&sent).body["status"];
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed", "{st}");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ServiceAccount demo-player") && message.contains("exceeded quota"),
        "{message}"
    );
}

/// An apply that failed for the moment (throttled, the server unavailable) is no refusal: the
/// reconciliation fails and is retried, its status not written until it has failed three
/// times in a row (then `ReconcileFailed`), so that one 429 does not flip `Ready` or say
/// `ApplyFailed`. Every other object is still applied.
#[tokio::test]
async fn an_apply_that_failed_for_the_moment_is_retried_not_reported_as_refused() {
    for code in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let mut lp = logplayer(3, false);
        lp["spec"]["logStore"] = json!({"managed": {"storage": "2Gi"}});
        let mut w = world(&lp, four_shards());
        let sts = "/apis/apps/v1/namespaces/ns/statefulsets/demo-logstore";
        w.fail.insert(sts.into(), code);
        let (result, sent, _) = reconcile_lp(&lp, w).await;
        let error = result.expect_err("the reconciliation failed, to be retried");
        assert!(error.as_apply_problem().is_none(), "{code}: {error}");
        assert!(
            applies(&sent).contains(&"/apis/apps/v1/namespaces/ns/deployments/demo-player".into()),
            "{code}: the Deployment is still applied"
        );
        assert!(
            !sent.iter().any(|s| s.path.ends_with("/status")),
            "{code}: no status written for one failure of the moment"
        );
        assert!(
            !events(&sent).contains(&("Warning".into(), "ApplyFailed".into())),
            "{code}: {:?}",
            events(&sent)
        );
    }
}
