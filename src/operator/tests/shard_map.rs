//! A Shard's status against its players' shard map, through a reconciliation against the
//! scripted API server.

use super::*;

/// A Shard its LogPlayer selects but whose players' map does not have it (the map is kept
/// while the selected Shards' map is refused) is not Ready: it read `Serving` whenever its
/// server answered. Listed at another address, it is `ShardMapStale`. While the selected
/// Shards make a valid map, a difference is a map on its way: `ShardMapPending`, not
/// degraded. The map is read with a list by name (the operator's role has no `get` on
/// ConfigMaps).
#[tokio::test]
async fn a_shard_the_players_map_does_not_have_as_its_spec_says_is_not_ready() {
    let lp = logplayer(3, false);
    let s0 = shard("s0", 0, 16383, false);
    let mut moved = s0.clone();
    moved["spec"]["external"]["endpoint"] = json!("127.0.0.9:1");
    let twin = shard("twin", 100, 200, false);
    let old_map = || shard_map_of(std::slice::from_ref(&s0));
    // (the Shard, the Shards selected, the map written, its Ready reason, its Degraded
    // reason: the probe of a dead address when the map is not the problem)
    let cases = [
        (
            &twin,
            vec![s0.clone(), twin.clone()],
            old_map(),
            "NotInShardMap",
            "NotInShardMap",
        ),
        (
            &moved,
            vec![moved.clone(), twin.clone()],
            old_map(),
            "ShardMapStale",
            "ShardMapStale",
        ),
        (
            &s0,
            vec![s0.clone()],
            Vec::new(),
            "ShardMapPending",
            "ShardUnreachable",
        ),
        (
            &moved,
            vec![moved.clone()],
            old_map(),
            "ShardMapPending",
            "ShardUnreachable",
        ),
    ];
    for (s, selected, map, reason, degraded) in cases {
        let mut w = world(&lp, selected);
        w.lists.insert(CONFIG_MAPS_PATH.into(), map);
        let (result, sent) = reconcile_one_shard(s, w).await;
        assert!(result.is_ok(), "{result:?}");
        let st = &status_patch(&sent).body["status"];
        let ready = condition(st, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!(reason)),
            "{s}"
        );
        assert_eq!(condition(st, "Degraded")["reason"], json!(degraded), "{s}");
        let read = sent
            .iter()
            .find(|r| r.path == CONFIG_MAPS_PATH)
            .expect("the map was read");
        assert!(
            read.method == Method::GET && read.query.contains("metadata.name%3Ddemo-shard-map"),
            "{read:?}"
        );
    }
}

/// A map on its way says what it waits for: a paused LogPlayer, or the next reconciliation
/// of a LogPlayer whose Degraded condition (an apply it keeps failing) is quoted, so that a
/// map that never comes is not a silent wait.
#[tokio::test]
async fn a_shard_map_on_its_way_says_what_it_waits_for() {
    let s0 = shard("s0", 0, 16383, false);
    let mut moved = s0.clone();
    moved["spec"]["external"]["endpoint"] = json!("127.0.0.9:1");
    let mut degraded = logplayer(3, false);
    degraded["status"] = json!({"conditions": [{"type": "Degraded", "status": "True",
        "reason": "ApplyFailed", "message": "the ConfigMap demo-shard-map was refused",
        "lastTransitionTime": "2026-12-05T08:00:00Z"}]});
    for (lp, words) in [
        (
            logplayer(3, true),
            "LogPlayer demo is paused (logplayer.io/paused)",
        ),
        (
            degraded,
            "LogPlayer demo writes it next; it is Degraded now (ApplyFailed: the ConfigMap \
             demo-shard-map was refused)",
        ),
    ] {
        let mut w = world(&lp, vec![moved.clone()]);
        w.lists.insert(
            CONFIG_MAPS_PATH.into(),
            shard_map_of(std::slice::from_ref(&s0)),
        );
        let (result, sent) = reconcile_one_shard(&moved, w).await;
        assert!(result.is_ok(), "{result:?}");
        let ready = condition(&status_patch(&sent).body["status"], "Ready");
        assert_eq!(ready["reason"], json!("ShardMapPending"), "{ready}");
        let message = ready["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{words:?} in {message}");
    }
}
