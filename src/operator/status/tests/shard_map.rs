//! A Shard nothing is delivered to is not ready, whatever its server answers: its LogPlayer
//! is missing, or the players' shard map does not have it as its spec says (a problem only
//! when the map of the Shards its LogPlayer selects is refused; else the map is on its way).

use super::*;

fn slots(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

const MAP: &str = "version: 1\nshards:\n- id: s0\n  addr: s0-shard.ns.svc:7100\n  slots: [0-8191]\n- id: s1\n  addr: s1-shard.ns.svc:7100\n  slots: [8192-16383]\n";

const REFUSED: &str = "slots 100-200 are owned by both shard \"s0\" and shard \"twin\"";

#[test]
fn a_shard_listed_as_its_spec_says_differs_in_nothing() {
    assert_eq!(
        map_difference(Some(MAP), "s0", ENDPOINT, &slots(&["0-8191"])),
        None
    );
}

#[test]
fn each_difference_is_told_apart() {
    let s0 = slots(&["0-8191"]);
    assert_eq!(
        map_difference(None, "s0", ENDPOINT, &s0),
        Some(MapDifference::NotWritten)
    );
    assert_eq!(
        map_difference(Some(MAP), "twin", ENDPOINT, &s0),
        Some(MapDifference::NotListed)
    );
    assert!(matches!(
        map_difference(Some("shards: 7"), "s0", ENDPOINT, &s0),
        Some(MapDifference::Unreadable(_))
    ));
    let elsewhere = Some(MapDifference::Elsewhere {
        addr: ENDPOINT.into(),
        slots: s0.clone(),
    });
    assert_eq!(
        map_difference(Some(MAP), "s0", "elsewhere:7100", &s0),
        elsewhere
    );
    assert_eq!(
        map_difference(Some(MAP), "s0", ENDPOINT, &slots(&["0-4095"])),
        elsewhere
    );
}

/// With the selected Shards' map refused, each difference is a problem naming the map and
/// the refusal; with it valid, every difference is a map on its way.
#[test]
fn a_difference_is_a_problem_only_while_the_map_is_refused() {
    let want = slots(&["0-4095"]);
    let cases = [
        (
            MapDifference::NotWritten,
            "NotInShardMap",
            "does not list this Shard",
        ),
        (
            MapDifference::NotListed,
            "NotInShardMap",
            "does not list this Shard",
        ),
        (
            MapDifference::Unreadable("bad".into()),
            "NotInShardMap",
            "cannot be read (bad)",
        ),
        (
            MapDifference::Elsewhere {
                addr: ENDPOINT.into(),
                slots: slots(&["0-8191"]),
            },
            "ShardMapStale",
            "for slots [0-8191] (ConfigMap demo-shard-map), not at elsewhere:7100 for slots [0-4095]",
        ),
    ];
    for (diff, reason, words) in cases {
        let p = map_problem(
            "demo-shard-map",
            "demo",
            &diff,
            &MapVerdict::Refused(REFUSED.into()),
            "elsewhere:7100",
            &want,
        );
        assert_eq!(p.reason, reason, "{p:?}");
        for part in [words, "demo-shard-map", REFUSED] {
            assert!(p.message.contains(part), "{part:?} in {p:?}");
        }
        let p = map_problem(
            "demo-shard-map",
            "demo",
            &diff,
            &MapVerdict::Waiting("LogPlayer demo writes it next".into()),
            "elsewhere:7100",
            &want,
        );
        assert_eq!(p.reason, MAP_PENDING, "{p:?}");
        assert!(
            p.message.ends_with("LogPlayer demo writes it next"),
            "{p:?}"
        );
    }
}

/// The map's problem decides `Ready` and degrades the Shard although its server answers.
#[test]
fn a_reachable_shard_missing_from_the_map_is_not_ready() {
    let p = map_problem(
        "demo-shard-map",
        "demo",
        &MapDifference::NotListed,
        &MapVerdict::Refused(REFUSED.into()),
        ENDPOINT,
        &[],
    );
    let s = first_shard_status(&shard_obs_with(|o| o.not_in_map = Some(p)));
    let ready = get(&s.conditions, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NotInShardMap")
    );
    let degraded = get(&s.conditions, condition::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NotInShardMap")
    );
    assert_eq!(s.ready, Some(false));
}

/// A map on its way (a new LogPlayer, a changed Shard, a paused LogPlayer) is waited for:
/// not Ready, not Degraded (no Warning for every Shard added).
#[test]
fn a_shard_map_on_its_way_is_waited_for_not_a_problem() {
    let pending = map_problem(
        "demo-shard-map",
        "demo",
        &MapDifference::NotWritten,
        &MapVerdict::Waiting("LogPlayer demo is paused".into()),
        ENDPOINT,
        &[],
    );
    let s = first_shard_status(&shard_obs_with(|o| o.not_in_map = Some(pending.clone())));
    let ready = get(&s.conditions, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", MAP_PENDING)
    );
    let degraded = get(&s.conditions, condition::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("False", "AsExpected")
    );
    // Another problem still comes first.
    let s = first_shard_status(&shard_obs_with(|o| {
        o.not_in_map = Some(pending);
        o.spec_problem = Some(Problem::new("InvalidShard", "bad"));
    }));
    assert_eq!(get(&s.conditions, condition::READY).reason, "InvalidShard");
}

#[test]
fn a_shard_whose_logplayer_is_missing_is_degraded_and_not_ready() {
    let s = first_shard_status(&shard_obs_with(|o| {
        o.log_player_found = false;
        o.lag = None;
    }));
    assert_degraded(
        &s.conditions,
        "LogPlayerNotFound",
        "the LogPlayer named in spec.logPlayer does not exist in this namespace, so \
                 nothing is delivered to this shard",
    );
    // Its server still answers, but nobody delivers to it: not Ready, and the READY
    // column (`status.ready`) says so too.
    let ready = get(&s.conditions, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "LogPlayerNotFound")
    );
    assert_eq!((s.ready, s.lag), (Some(false), None));
}
