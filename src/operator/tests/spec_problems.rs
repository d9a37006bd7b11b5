//! A spec a user can fix (overlapping or missing slots, a selector the API server
//! refuses) is reported in the LogPlayer's status, not retried as an error, through a
//! reconciliation against the scripted API server.

use super::*;

#[tokio::test]
async fn overlapping_shards_are_reported_and_nothing_is_applied() {
    let lp = logplayer(3, false);
    let mut shards = four_shards();
    shards.push(shard("extra", 100, 200, false));
    let (result, sent, _) = reconcile_lp(&lp, world(&lp, shards)).await;
    assert!(
        result.is_ok(),
        "a user's mistake is status, not a retry: {result:?}"
    );
    assert_eq!(applies(&sent), Vec::<String>::new());
    let st = &status_patch(&sent).body["status"];
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["reason"], "SlotsOverlap");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("100-200") && message.contains("\"extra\"") && message.contains("\"s0\""),
        "{message}"
    );
    assert_eq!(condition(st, "Ready")["reason"], "SlotsOverlap");
    assert!(
        events(&sent).contains(&("Warning".into(), "SlotsOverlap".into())),
        "{:?}",
        events(&sent)
    );
}

/// A shard selector kube takes but the API server refuses (a label value with a space) is
/// the spec's fault, reported as `InvalidSpec` naming the selector and the API server's
/// words, not retried as an outage.
#[tokio::test]
async fn a_selector_the_api_server_refuses_is_an_invalid_spec() {
    let mut lp = logplayer(3, false);
    lp["spec"]["shardSelector"] = json!({"matchLabels": {"team": "a b"}});
    let mut w = world(&lp, four_shards());
    w.bad_request.insert(
        SHARDS_PATH.into(),
        "unable to parse requirement: values[0][team]: Invalid value: \"a b\"".into(),
    );
    let (result, sent, _) = reconcile_lp(&lp, w).await;
    assert!(
        result.is_ok(),
        "a user's mistake is status, not a retry: {result:?}"
    );
    let st = &status_patch(&sent).body["status"];
    let degraded = condition(st, "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec", "{degraded}");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("shardSelector") && message.contains("unable to parse requirement"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_slots_are_reported_by_name() {
    let lp = logplayer(3, false);
    let shards = four_shards().into_iter().take(3).collect();
    let (_, sent, _) = reconcile_lp(&lp, world(&lp, shards)).await;
    let degraded = condition(&status_patch(&sent).body["status"], "Degraded").clone();
    assert_eq!(degraded["reason"], "SlotsUnowned");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("slots 12288-16383 are owned by no shard"),
        "{degraded}"
    );
}
