//! A Shard the players' shard map does not have as its spec says is not ready, whatever
//! its server answers: nothing is delivered to it (or not as its spec says).

use super::*;

fn slots(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

const MAP: &str = "version: 1\nshards:\n- id: s0\n  addr: s0-shard.ns.svc:7100\n  slots: [0-8191]\n- id: s1\n  addr: s1-shard.ns.svc:7100\n  slots: [8192-16383]\n";

#[test]
fn a_shard_listed_as_its_spec_says_has_no_map_problem() {
    let p = map_problem(
        "demo-shard-map",
        "demo",
        Some(MAP),
        "s0",
        ENDPOINT,
        &slots(&["0-8191"]),
    );
    assert_eq!(p, None);
}

#[test]
fn a_shard_missing_from_the_map_or_listed_otherwise_is_named_with_the_reason() {
    let cases = [
        // Not written yet; not listed (the map kept while the selected Shards' map is
        // refused); unreadable; another address; other slots.
        (
            None,
            "s0",
            ENDPOINT,
            vec!["0-8191"],
            MAP_PENDING,
            "not written yet",
        ),
        (
            Some(MAP),
            "twin",
            ENDPOINT,
            vec!["100-200"],
            "NotInShardMap",
            "does not list this Shard",
        ),
        (
            Some("shards: 7"),
            "s0",
            ENDPOINT,
            vec!["0-8191"],
            "NotInShardMap",
            "cannot be read",
        ),
        (
            Some(MAP),
            "s0",
            "elsewhere:7100",
            vec!["0-8191"],
            "ShardMapStale",
            "not at elsewhere:7100",
        ),
        (
            Some(MAP),
            "s0",
            ENDPOINT,
            vec!["0-4095"],
            "ShardMapStale",
            "for slots [0-8191]",
        ),
    ];
    for (text, id, addr, want_slots, reason, words) in cases {
        let p = map_problem(
            "demo-shard-map",
            "demo",
            text,
            id,
            addr,
            &slots(&want_slots),
        )
        .unwrap_or_else(|| panic!("{id} {addr} {want_slots:?}: no problem found"));
        assert_eq!(p.reason, reason, "{p:?}");
        assert!(p.message.contains(words), "{words:?} in {p:?}");
        assert!(p.message.contains("demo-shard-map"), "{p:?}");
    }
}

/// The map's problem decides `Ready` and degrades the Shard although its server answers.
#[test]
fn a_reachable_shard_missing_from_the_map_is_not_ready() {
    let problem = map_problem(
        "demo-shard-map",
        "demo",
        Some(MAP),
        "twin",
        ENDPOINT,
        &slots(&["1-2"]),
    );
    let s = first_shard_status(&shard_obs_with(|o| o.not_in_map = problem.clone()));
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

/// A map not written yet (a new LogPlayer, a paused one) is waited for: not Ready, not
/// Degraded (no Warning for every Shard of a new install).
#[test]
fn a_shard_map_not_written_yet_is_waited_for_not_a_problem() {
    let problem = map_problem(
        "demo-shard-map",
        "demo",
        None,
        "s0",
        ENDPOINT,
        &slots(&["0-8191"]),
    );
    let s = first_shard_status(&shard_obs_with(|o| o.not_in_map = problem.clone()));
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
        o.not_in_map = problem;
        o.spec_problem = Some(Problem::new("InvalidShard", "bad"));
    }));
    assert_eq!(get(&s.conditions, condition::READY).reason, "InvalidShard");
}
