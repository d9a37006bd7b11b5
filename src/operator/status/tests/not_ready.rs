//! What is not ready although the players may say otherwise: a Deployment whose controller
//! has not seen the change, a managed server without a running pod, no known shard, a
//! leader whose pod is not ready beside ready standbys, a shard server that answers but
//! refuses its players, and a reconciliation that failed before it could look
//! (`ReconcileFailed`).

use super::*;

/// Counts the Deployment's controller has not yet updated for the latest template say
/// nothing about it: right after a change of the image they still read "all up to date".
#[test]
fn a_deployment_whose_controller_has_not_seen_the_change_is_progressing() {
    // Without a Deployment (the spec does not build), or paused, nothing is rolling out
    // (both used to read `RollingOut`).
    let s = status(&healthy_with(|o| {
        o.deployment_found = false;
        o.deployment_current = false;
    }));
    let (st, reason, _) = srm(&s.conditions, condition::PROGRESSING);
    assert_eq!((st, reason), ("False", "NoDeployment"));
    let s = status(&healthy_with(|o| {
        o.paused = true;
        o.desired_replicas = 2;
    }));
    let (st, reason, _) = srm(&s.conditions, condition::PROGRESSING);
    assert_eq!((st, reason), ("False", "Paused"));
    // A Deployment that exists but is not brought to a spec that does not build, or whose
    // apply was refused: nothing rolls (it read `RollingOut` for a count never applied).
    for problem in [
        Problem::new("SlotsOverlap", "shards a and b both own slot 7"),
        Problem::new(
            "ApplyFailed",
            "applying Deployment demo-player: exceeded quota",
        ),
    ] {
        let s = status(&healthy_with(|o| {
            o.desired_replicas = 3;
            if problem.reason == "ApplyFailed" {
                o.apply_problems = vec![problem.clone()];
            } else {
                o.spec_problem = Some(problem.clone());
            }
        }));
        let (st, reason, message) = srm(&s.conditions, condition::PROGRESSING);
        assert_eq!((st, reason), ("False", "Blocked"), "{message}");
        assert!(message.contains(&problem.reason), "{message}");
    }
    let s = status(&healthy_with(|o| o.deployment_current = false));
    assert_eq!(
        srm(&s.conditions, condition::PROGRESSING),
        (
            "True",
            "RollingOut",
            "the player Deployment's controller has not yet seen its latest change"
        )
    );
}

/// A managed LogStore or shard with no running pod and no pod problem naming why (a pod
/// just deleted, or waiting minutes for its volume) is not delivering, whatever the
/// players say; it used to read `Ready=True Delivering`.
#[test]
fn a_managed_server_without_a_running_pod_is_not_ready() {
    let s = status(&healthy_with(|o| {
        o.logstore = Probe::NotRunning;
        o.head_index = None;
    }));
    let (st, reason, _) = srm(&s.conditions, condition::READY);
    assert_eq!((st, reason), ("False", "LogStoreNotRunning"));
    let s = status(&healthy_with(|o| {
        o.shards[1].probe = Probe::NotRunning;
        o.shards[2].probe = Probe::NotRunning;
    }));
    assert_eq!(
        srm(&s.conditions, condition::READY),
        (
            "False",
            "ShardNotRunning",
            "2 of 3 shards have no running pod (s1, s2): nothing is delivered to them"
        )
    );
}

/// With no shard known (a selector that does not parse empties the list while the old
/// players go on delivering) the largest lag is unknown, not 0.
#[test]
fn the_largest_lag_of_no_known_shard_is_unknown() {
    let s = status(&healthy_with(|o| {
        o.shards.clear();
        o.spec_problem = Some(Problem::new("InvalidSpec", "shardSelector: bad"));
    }));
    assert_eq!(s.lag, None);
}

/// A reconciliation that fails before it can look (the API server refuses to list pods,
/// say) no longer leaves `Ready=True` from the last good one: `Ready` and `Degraded` name
/// the failure, lag becomes unknown, and what else was observed stays. A later good
/// reconciliation writes the whole status again.
#[test]
fn a_failed_reconciliation_is_not_ready_and_names_the_failure() {
    let good = status(&healthy());
    assert_eq!(get(&good.conditions, condition::READY).status, "True");
    let why = "kubernetes API: pods is forbidden";
    let failed = failed_logplayer_status(&good, GEN + 1, why, t1());
    let (st, reason, message) = srm(&failed.conditions, condition::READY);
    assert_eq!((st, reason), ("False", RECONCILE_FAILED));
    assert!(message.contains(why), "{message}");
    let degraded = get(&failed.conditions, condition::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.observed_generation),
        ("True", Some(GEN + 1))
    );
    assert_eq!(degraded.last_transition_time, t1(), "it changed");
    assert_eq!(
        get(&failed.conditions, condition::LEADER_ELECTED),
        get(&good.conditions, condition::LEADER_ELECTED),
        "what it could not look at again stays as last observed"
    );
    assert_eq!(
        failed.observed_generation,
        Some(GEN + 1),
        "the status is for the generation that failed, not frozen at the last good one"
    );
    assert_eq!(failed.problems.len(), 1);
    assert_eq!(failed.problems[0].reason, RECONCILE_FAILED);
    assert_eq!(failed.lag, None);
    assert!(failed.shards.iter().all(|s| s.lag.is_none()));
    assert_eq!(failed.leader, good.leader);
    // Failing again keeps the transition time; events only for the first failure.
    let again = failed_logplayer_status(&failed, GEN + 1, why, at(1_700_000_120));
    assert_eq!(
        get(&again.conditions, condition::READY).last_transition_time,
        t1()
    );
    assert!(events_for(&failed.conditions, &again.conditions).is_empty());
    assert!(
        events_for(&good.conditions, &failed.conditions)
            .iter()
            .any(|e| e.warning && e.reason == RECONCILE_FAILED)
    );
    // And a Shard: not ready, degraded; the player's cursor fields are never written.
    let shard = failed_shard_status(&with_cursor(), GEN + 1, why, t1());
    assert_eq!(shard.ready, Some(false));
    assert_eq!(shard.observed_generation, Some(GEN + 1));
    assert_eq!(srm(&shard.conditions, condition::READY).1, RECONCILE_FAILED);
    assert_eq!(
        (shard.acked_index, shard.acked_epoch, shard.acked_log_id),
        (None, None, None)
    );
}

/// A Shard whose own objects were refused (its StatefulSet, its certificate) says so on its
/// status; its LogPlayer, which delivers to it, is Degraded naming the Shard and the words,
/// not merely "unreachable" (what it used to say, if anything).
#[test]
fn a_shard_degraded_by_its_own_objects_degrades_its_logplayer() {
    let why = "StatefulSet ns/s1-shard: spec.volumeClaimTemplates: Forbidden";
    let s = status(&healthy_with(|o| {
        o.shards[1].degraded = Some(("ApplyFailed".into(), why.into()));
    }));
    let degraded = get(&s.conditions, condition::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ShardDegraded")
    );
    let name = &healthy().shards[1].name;
    assert!(
        degraded
            .message
            .contains(&format!("Shard {name}: ApplyFailed: {why}")),
        "{}",
        degraded.message
    );
}

/// Ready standbys do not make a LogPlayer whose leader is not ready `Delivering`: a shard
/// refusing the leader makes its `/readyz` fail, and only the leader delivers.
#[test]
fn a_leader_whose_pod_is_not_ready_is_not_delivering() {
    let s = status(&healthy_with(|o| {
        o.leader_ready = Some(false);
        o.ready_replicas = 2;
    }));
    let (verdict, reason, message) = srm(&s.conditions, condition::READY);
    assert_eq!((verdict, reason), ("False", "LeaderNotReady"));
    assert!(
        message.contains(LEADER) && message.contains("a shard refusing it"),
        "{message}"
    );
    // With one player pod, the leader's, this says more than "no player pod is ready".
    let s = status(&healthy_with(|o| {
        o.leader_ready = Some(false);
        o.ready_replicas = 0;
    }));
    assert_eq!(
        get(&s.conditions, condition::READY).reason,
        "LeaderNotReady"
    );
    // A leader pod not (yet) seen changes nothing.
    let s = status(&healthy_with(|o| o.leader_ready = None));
    assert_eq!(get(&s.conditions, condition::READY).reason, "Delivering");
}

/// A shard whose server refuses the players makes the LogPlayer not Ready, naming the
/// shard and the refusal, whether or not the leader's pod has failed its readiness yet.
#[test]
fn a_shard_refusing_the_players_makes_the_logplayer_not_ready() {
    for leader_ready in [Some(true), Some(false)] {
        let s = status(&healthy_with(|o| {
            o.leader_ready = leader_ready;
            o.shards[1].refused = Some(
                "the shard server refuses its players' deliveries \
                                        (wrong-log): another log"
                    .into(),
            );
        }));
        let (verdict, reason, message) = srm(&s.conditions, condition::READY);
        assert_eq!((verdict, reason), ("False", "DeliveryRefused"));
        let name = &healthy().shards[1].name;
        assert!(
            message.starts_with(&format!("shard {name}: ")) && message.contains("(wrong-log)"),
            "{message}"
        );
    }
}

/// A shard server that answers its probe but refused its last sender (its `Applied` says
/// so) is not Ready, with the refusal's reason and message: it read `Serving` while its
/// players were refused every delivery.
#[test]
fn a_shard_refusing_its_players_is_not_serving() {
    let refused = delivery_refused(
        "wrong-shard",
        "shard s0 owns slots 0-8191 and has applied entries; it refuses slots 8192-12287",
    );
    let s = first_shard_status(&shard_obs_with(|o| o.refused = refused.clone()));
    let why = "the shard server refuses its players' deliveries (wrong-shard): shard s0 owns \
               slots 0-8191 and has applied entries; it refuses slots 8192-12287; nothing more \
               is applied until the players' configuration or the shard's is fixed (see the \
               shard server's log)";
    assert_degraded_unready(&s.conditions, "DeliveryRefused", why, why);
    assert_eq!(s.ready, Some(false));
    // Nothing refused: serving.
    assert_eq!(delivery_refused("", ""), None);
    let s = first_shard_status(&shard_obs_with(|o| o.refused = None));
    assert_eq!(get(&s.conditions, condition::READY).reason, "Serving");
}

/// A Shard of a paused LogPlayer (or of one that is gone) says so: its server without a pod
/// is not `Starting` (nothing makes one again while paused), and `ReconciliationPaused`
/// tells that spec changes wait. Unpaused, the condition goes.
#[test]
fn a_shard_of_a_paused_log_player_says_nothing_is_applied() {
    for (paused, reason) in [
        (ShardPaused::LogPlayerPaused, "LogPlayerPaused"),
        (ShardPaused::LogPlayerGone, "LogPlayerGone"),
    ] {
        let obs = shard_obs_with(|o| {
            o.probe = Probe::NotRunning;
            o.paused = Some(paused.clone());
        });
        let st = first_shard_status(&obs);
        let (status, why, message) = srm(&st.conditions, condition::READY);
        assert_eq!((status, why), ("False", reason), "{message}");
        assert!(message.contains("none is made while"), "{message}");
        let (status, why, _) = srm(&st.conditions, RECONCILIATION_PAUSED);
        assert_eq!((status, why), ("True", reason));
        // Running and serving while paused: ready, and still saying it is paused.
        let serving = first_shard_status(&shard_obs_with(|o| o.paused = Some(paused.clone())));
        assert_eq!(srm(&serving.conditions, condition::READY).1, "Serving");
        assert_eq!(srm(&serving.conditions, RECONCILIATION_PAUSED).0, "True");
    }
    let unpaused = first_shard_status(&shard_obs_with(|o| o.probe = Probe::NotRunning));
    assert_eq!(srm(&unpaused.conditions, condition::READY).1, "Starting");
    assert!(
        !unpaused
            .conditions
            .iter()
            .any(|c| c.type_ == RECONCILIATION_PAUSED)
    );
}
