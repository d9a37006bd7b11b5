//! Unit tests of every status decision and Event.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LogPlayerStatus, ShardProgress, ShardStatus, condition};

mod certs;
mod lease;
mod limits;
mod log;
mod not_ready;
mod shard_map;
mod snapshots;

const GEN: i64 = 7;
const LEADER: &str = "demo-player-5c9d-abcde";
const S1_DOWN: &str = "s1-shard.ns.svc:7100 does not answer: connection refused";
const LOGSTORE_DOWN: &str = "LogStore at demo-logstore.ns.svc:7000 does not answer: timeout";

fn at(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("valid second"))
}

fn t0() -> Time {
    at(1_700_000_000)
}

fn t1() -> Time {
    at(1_700_000_060)
}

fn t2() -> Time {
    at(1_700_000_120)
}

/// Every server's entry limit in [`healthy`].
const LIMIT: u64 = 4 << 20;

fn shard(name: &str, acked: Option<i64>, probe: Probe) -> ShardObserved {
    ShardObserved {
        name: name.into(),
        acked_index: acked,
        acked_epoch: None,
        covered_index: None,
        probe,
        max_entry_bytes: Some(LIMIT),
        degraded: None,
        refused: None,
    }
}

/// Three ready, up-to-date replicas; a fresh lease held by [`LEADER`] at epoch 4; three
/// reachable shards at 90, 60 and 100 of a log whose head is 100.
fn healthy() -> Observed {
    Observed {
        log_members: None,
        generation: GEN,
        desired_replicas: 3,
        replicas: 3,
        ready_replicas: 3,
        updated_replicas: 3,
        deployment_current: true,
        deployment_found: true,
        lease: Some(LeaseInfo {
            holder: Some(LEADER.into()),
            transitions: 4,
            fresh: true,
        }),
        leader_ready: Some(true),
        shards: vec![
            shard("s0", Some(90), Probe::Reachable),
            shard("s1", Some(60), Probe::Reachable),
            shard("s2", Some(100), Probe::Reachable),
        ],
        head_index: Some(100),
        logstore: Probe::Reachable,
        max_entry_bytes: LIMIT,
        log_max_entry_bytes: Some(LIMIT),
        spec_problem: None,
        apply_problems: Vec::new(),
        pod_problems: Vec::new(),
        paused: false,
        deleting: None,
        certificates: crate::operator::certs::CertState::NotChecked,
    }
}

/// A shard whose last entry is below the head but that has everything routed to it
/// (its coveredIndex) has no lag; a covered index below its acked index is ignored.
#[test]
fn lag_is_measured_from_the_covered_index() {
    let obs = healthy_with(|o| {
        o.shards[0].covered_index = Some(100);
        o.shards[1].covered_index = Some(70);
        o.shards[2].covered_index = Some(5);
    });
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let lags: Vec<(i64, Option<i64>)> = st.shards.iter().map(|p| (p.acked_index, p.lag)).collect();
    assert_eq!(lags, vec![(90, Some(0)), (60, Some(30)), (100, Some(0))]);
    assert_eq!(st.lag, Some(30));
}

fn healthy_with(f: impl FnOnce(&mut Observed)) -> Observed {
    let mut obs = healthy();
    f(&mut obs);
    obs
}

fn c(type_: &str, status: &str, reason: &str, message: &str, time: Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(GEN),
        last_transition_time: time,
    }
}

fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

/// (status, reason, message) of one condition.
fn srm<'a>(conditions: &'a [Condition], type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = get(conditions, type_);
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

/// Checks that Degraded is False, as expected.
fn assert_not_degraded(conditions: &[Condition]) {
    assert_eq!(
        srm(conditions, condition::DEGRADED),
        ("False", "AsExpected", "")
    );
}

/// Checks that Ready is False because no player leads.
fn assert_unready_without_leader(conditions: &[Condition]) {
    assert_eq!(
        srm(conditions, condition::READY),
        (
            "False",
            "NoLeader",
            "no player leads, so nothing is delivered"
        )
    );
}

/// Checks that Degraded is True for `reason`, with `message`.
fn assert_degraded(conditions: &[Condition], reason: &str, message: &str) {
    assert_eq!(
        srm(conditions, condition::DEGRADED),
        ("True", reason, message)
    );
}

/// Checks that Degraded is True and Ready is False, both for `reason`, with these messages.
fn assert_degraded_unready(conditions: &[Condition], reason: &str, degraded: &str, ready: &str) {
    assert_degraded(conditions, reason, degraded);
    assert_eq!(srm(conditions, condition::READY), ("False", reason, ready));
}

fn status(obs: &Observed) -> LogPlayerStatus {
    logplayer_status(obs, &LogPlayerStatus::default(), t0())
}

fn progress(name: &str, acked_index: i64, lag: impl Into<Option<i64>>) -> ShardProgress {
    ShardProgress {
        name: name.into(),
        acked_index,
        lag: lag.into(),
    }
}

#[test]
fn a_healthy_logplayer_is_ready_and_delivering() {
    let s = status(&healthy());
    assert_eq!(
        s,
        LogPlayerStatus {
            observed_generation: Some(GEN),
            conditions: vec![
                c(
                    condition::LEADER_ELECTED,
                    "True",
                    "LeaseHeld",
                    &format!("pod {LEADER} leads with epoch 4"),
                    t0()
                ),
                c(condition::DEGRADED, "False", "AsExpected", "", t0()),
                c(
                    condition::PROGRESSING,
                    "False",
                    "Complete",
                    "all 3 player pods are ready and up to date",
                    t0()
                ),
                c(
                    condition::READY,
                    "True",
                    "Delivering",
                    &format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries"),
                    t0()
                ),
            ],
            leader: Some(LEADER.into()),
            epoch: Some(4),
            ready_replicas: 3,
            replicas: 3,
            shards: vec![
                progress("s0", 90, 10),
                progress("s1", 60, 40),
                progress("s2", 100, 0)
            ],
            lag: Some(40),
            problems: Vec::new(),
            log_store: None,
        }
    );
    assert!(
        !s.conditions
            .iter()
            .any(|c| c.type_ == RECONCILIATION_PAUSED),
        "{:?}",
        s.conditions
    );
}

#[test]
fn every_condition_carries_the_observed_generation() {
    for obs in [
        healthy(),
        healthy_with(|o| o.lease = None),
        healthy_with(|o| o.paused = true),
        healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into())),
    ] {
        let s = status(&obs);
        assert_eq!(s.observed_generation, Some(GEN));
        assert!(s.conditions.len() >= 4, "{:?}", s.conditions);
        for cond in &s.conditions {
            assert_eq!(cond.observed_generation, Some(GEN), "{cond:?}");
        }
    }
}

#[test]
fn lag_counts_a_shard_without_a_cursor_from_zero_and_never_goes_negative() {
    let s = status(&healthy_with(|o| {
        o.shards = vec![
            shard("s0", None, Probe::Reachable),
            shard("s1", Some(120), Probe::Reachable),
        ];
    }));
    assert_eq!(s.shards, [progress("s0", 0, 100), progress("s1", 120, 0)]);
    assert_eq!(s.lag, Some(100));

    // Without the log's head, lag is unknown: no overall lag, no suffix.
    let s = status(&healthy_with(|o| {
        o.head_index = None;
        o.logstore = Probe::Unknown;
    }));
    assert_eq!(s.lag, None);
    assert_eq!(
        s.shards,
        [
            progress("s0", 90, None),
            progress("s1", 60, None),
            progress("s2", 100, None)
        ]
    );
    assert_eq!(
        srm(&s.conditions, condition::READY),
        (
            "True",
            "Delivering",
            &*format!("pod {LEADER} delivers to 3 shards")
        )
    );
}

#[test]
fn without_a_lease_there_is_no_leader() {
    let s = status(&healthy_with(|o| o.lease = None));
    assert_eq!(
        srm(&s.conditions, condition::LEADER_ELECTED),
        ("False", "NoLease", "no player has created its Lease yet")
    );
    assert_unready_without_leader(&s.conditions);
    assert_not_degraded(&s.conditions);
    assert_eq!((s.leader, s.epoch), (None, None));
}

#[test]
fn an_expired_lease_keeps_the_epoch_but_names_no_leader() {
    let s = status(&healthy_with(|o| {
        o.lease = Some(LeaseInfo {
            holder: Some(LEADER.into()),
            transitions: 4,
            fresh: false,
        })
    }));
    assert_eq!(
        srm(&s.conditions, condition::LEADER_ELECTED),
        (
            "False",
            "LeaseExpired",
            &*format!(
                "the Lease held by pod {LEADER} (epoch 4) expired; a standby takes it over \
                     when one is ready"
            )
        )
    );
    assert_eq!((s.leader, s.epoch), (None, Some(4)));
    assert_unready_without_leader(&s.conditions);
}

#[test]
fn a_released_lease_is_no_leader() {
    for fresh in [true, false] {
        let s = status(&healthy_with(|o| {
            o.lease = Some(LeaseInfo {
                holder: None,
                transitions: 5,
                fresh,
            })
        }));
        assert_eq!(
            srm(&s.conditions, condition::LEADER_ELECTED),
            (
                "False",
                "NoLeader",
                "the Lease is released and no player holds it"
            )
        );
        assert_eq!((s.leader.as_deref(), s.epoch), (None, Some(5)));
        assert_eq!(get(&s.conditions, condition::READY).reason, "NoLeader");
    }
}

#[test]
fn an_unreachable_shard_degrades_and_unreadies_naming_it() {
    let s = status(&healthy_with(|o| {
        o.shards[1].probe = Probe::Unreachable(S1_DOWN.into())
    }));
    let msg = format!("1 of 3 shards do not answer: shard s1: {S1_DOWN}");
    assert_degraded_unready(&s.conditions, "ShardUnreachable", &msg, &msg);
    // The leader is still there.
    assert_eq!(get(&s.conditions, condition::LEADER_ELECTED).status, "True");
    assert_eq!(s.leader.as_deref(), Some(LEADER));

    // Two down: both named, in order.
    let s = status(&healthy_with(|o| {
        o.shards[0].probe = Probe::Unreachable("a".into());
        o.shards[2].probe = Probe::Unreachable("b".into());
    }));
    assert_degraded(
        &s.conditions,
        "ShardUnreachable",
        "2 of 3 shards do not answer: shard s0: a; shard s2: b",
    );
}

#[test]
fn an_unknown_shard_probe_is_not_a_problem() {
    let s = status(&healthy_with(|o| o.shards[1].probe = Probe::Unknown));
    assert_not_degraded(&s.conditions);
    assert_eq!(get(&s.conditions, condition::READY).status, "True");
}

#[test]
fn an_unreachable_logstore_degrades() {
    let s = status(&healthy_with(|o| {
        o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
        o.head_index = None;
    }));
    let reason = "LogStoreUnreachable";
    assert_degraded_unready(&s.conditions, reason, LOGSTORE_DOWN, LOGSTORE_DOWN);
    assert_eq!(s.lag, None);
}

#[test]
fn a_pod_that_cannot_start_degrades() {
    let msg = "pod demo-player-1 container player (bad:image): ImagePullBackOff";
    let s = status(&healthy_with(|o| {
        o.pod_problems = vec![Problem::new("ImagePullFailed", msg)]
    }));
    assert_degraded_unready(&s.conditions, "ImagePullFailed", msg, msg);
}

#[test]
fn a_spec_problem_comes_first_and_every_problem_is_listed() {
    let spec = "shards do not own every slot exactly once: slots 0-9 are owned by no shard";
    let pod = "pod demo-player-1 container player (x): CrashLoopBackOff";
    let s = status(&healthy_with(|o| {
        o.spec_problem = Some(Problem::new("SlotsUnowned", spec));
        o.pod_problems = vec![Problem::new("CrashLoopBackOff", pod)];
        o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
        o.shards[1].probe = Probe::Unreachable(S1_DOWN.into());
    }));
    // Degraded and Ready name the first problem only, and count the others.
    let primary = format!("{spec} (and 3 more: see status.problems)");
    assert_degraded_unready(&s.conditions, "SlotsUnowned", &primary, &primary);
    let listed: Vec<(&str, &str)> = s
        .problems
        .iter()
        .map(|p| (p.reason.as_str(), p.message.as_str()))
        .collect();
    let shards = format!("1 of 3 shards do not answer: shard s1: {S1_DOWN}");
    assert_eq!(
        listed,
        [
            ("SlotsUnowned", spec),
            ("CrashLoopBackOff", pod),
            ("LogStoreUnreachable", LOGSTORE_DOWN),
            ("ShardUnreachable", shards.as_str()),
        ]
    );
    // An unreachable shard's lag is unknown, and so is the largest lag.
    assert_eq!(s.shards[1].lag, None);
    assert_eq!(s.lag, None);

    // Without the spec problem, the pod comes next.
    let s = status(&healthy_with(|o| {
        o.pod_problems = vec![Problem::new("CrashLoopBackOff", pod)];
        o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
    }));
    assert_degraded(
        &s.conditions,
        "CrashLoopBackOff",
        &format!("{pod} (and 1 more: see status.problems)"),
    );
    // And the LogStore before the shards.
    let s = status(&healthy_with(|o| {
        o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
        o.shards[1].probe = Probe::Unreachable(S1_DOWN.into());
    }));
    assert_eq!(
        get(&s.conditions, condition::DEGRADED).reason,
        "LogStoreUnreachable"
    );
}

#[test]
fn a_problem_outranks_a_missing_leader_in_ready() {
    let s = status(&healthy_with(|o| {
        o.lease = None;
        o.spec_problem = Some(Problem::new("NoShards", "no shards"));
    }));
    assert_eq!(
        srm(&s.conditions, condition::READY),
        ("False", "NoShards", "no shards")
    );
}

#[test]
fn pods_being_created_or_rolled_are_progressing() {
    for (replicas, ready, updated) in [(3, 2, 3), (3, 3, 1), (4, 3, 3), (0, 0, 0)] {
        let s = status(&healthy_with(|o| {
            o.replicas = replicas;
            o.ready_replicas = ready;
            o.updated_replicas = updated;
        }));
        assert_eq!(
            srm(&s.conditions, condition::PROGRESSING),
            (
                "True",
                "RollingOut",
                &*format!("{ready} of 3 player pods ready, {updated} up to date, {replicas} exist")
            ),
            "{replicas}/{ready}/{updated}"
        );
        assert_eq!((s.replicas, s.ready_replicas), (replicas, ready));
    }
    // Ready while rolling, as long as one pod is ready and a leader is elected.
    let s = status(&healthy_with(|o| o.ready_replicas = 1));
    assert_eq!(get(&s.conditions, condition::READY).status, "True");
}

#[test]
fn a_leader_without_ready_pods_is_not_ready() {
    let s = status(&healthy_with(|o| o.ready_replicas = 0));
    assert_eq!(
        srm(&s.conditions, condition::READY),
        ("False", "NoReadyReplicas", "no player pod is ready")
    );
    assert_eq!(get(&s.conditions, condition::LEADER_ELECTED).status, "True");
    assert_eq!(s.ready_replicas, 0);
}

#[test]
fn the_pause_annotation_shows_as_a_condition() {
    let s = status(&healthy_with(|o| o.paused = true));
    assert_eq!(s.conditions.len(), 5);
    assert_eq!(
        s.conditions[4],
        c(
            RECONCILIATION_PAUSED,
            "True",
            "PauseAnnotation",
            "annotation logplayer.io/paused=true: the operator changes nothing and only \
                 reports status",
            t0()
        )
    );
    // Everything else is reported as usual.
    assert_eq!(get(&s.conditions, condition::READY).status, "True");
    // Unpausing drops it.
    let s = logplayer_status(&healthy(), &s, t1());
    assert_eq!(s.conditions.len(), 4);
    assert!(
        !s.conditions
            .iter()
            .any(|c| c.type_ == RECONCILIATION_PAUSED)
    );
}

#[test]
fn transition_times_change_only_when_a_status_flips() {
    let first = logplayer_status(&healthy(), &LogPlayerStatus::default(), t0());
    for cond in &first.conditions {
        assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
    }

    // Same statuses, other reasons and messages: new leader, more lag.
    let same = healthy_with(|o| {
        o.lease = Some(LeaseInfo {
            holder: Some("demo-player-other".into()),
            transitions: 5,
            fresh: true,
        });
        o.head_index = Some(500);
    });
    let second = logplayer_status(&same, &first, t1());
    assert_ne!(
        get(&second.conditions, condition::LEADER_ELECTED).message,
        get(&first.conditions, condition::LEADER_ELECTED).message
    );
    assert_ne!(
        get(&second.conditions, condition::READY).message,
        get(&first.conditions, condition::READY).message
    );
    for cond in &second.conditions {
        assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
    }

    // Degraded and Ready flip; LeaderElected and Progressing stay.
    let down = healthy_with(|o| o.shards[1].probe = Probe::Unreachable(S1_DOWN.into()));
    let third = logplayer_status(&down, &second, t1());
    let time = |s: &LogPlayerStatus, t: &str| get(&s.conditions, t).last_transition_time.clone();
    assert_eq!(time(&third, condition::DEGRADED), t1());
    assert_eq!(time(&third, condition::READY), t1());
    assert_eq!(time(&third, condition::LEADER_ELECTED), t0());
    assert_eq!(time(&third, condition::PROGRESSING), t0());

    // Still degraded, for another reason: the time of the flip stays.
    let other = healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into()));
    let fourth = logplayer_status(&other, &third, t2());
    assert_eq!(
        get(&fourth.conditions, condition::DEGRADED).reason,
        "LogStoreUnreachable"
    );
    assert_eq!(time(&fourth, condition::DEGRADED), t1());
    assert_eq!(time(&fourth, condition::READY), t1());

    // Recovered: flips back at the new time.
    let fifth = logplayer_status(&healthy(), &fourth, t2());
    assert_eq!(time(&fifth, condition::DEGRADED), t2());
    assert_eq!(time(&fifth, condition::READY), t2());
    assert_eq!(time(&fifth, condition::LEADER_ELECTED), t0());

    // Pausing adds a condition stamped now; staying paused keeps its time.
    let paused = healthy_with(|o| o.paused = true);
    let sixth = logplayer_status(&paused, &fifth, t1());
    assert_eq!(time(&sixth, RECONCILIATION_PAUSED), t1());
    let seventh = logplayer_status(&paused, &sixth, t2());
    assert_eq!(time(&seventh, RECONCILIATION_PAUSED), t1());
}

// ------------------------------------------------------------------------------------
// Shard status
// ------------------------------------------------------------------------------------

const ENDPOINT: &str = "s0-shard.ns.svc:7100";

fn shard_obs() -> ShardObservation {
    ShardObservation {
        generation: GEN,
        endpoint: Some(ENDPOINT.into()),
        probe: Probe::Reachable,
        spec_problem: None,
        apply_problems: Vec::new(),
        pod_problems: Vec::new(),
        log_player_found: true,
        not_selected: None,
        not_in_map: None,
        lag: Some(12),
        entry_limits: (Some(LIMIT), Some(LIMIT)),
        refused: None,
        paused: None,
    }
}

/// The first status of a shard observed as `obs`, at t0.
fn first_shard_status(obs: &ShardObservation) -> ShardStatus {
    shard_status(obs, &ShardStatus::default(), t0())
}

fn shard_obs_with(f: impl FnOnce(&mut ShardObservation)) -> ShardObservation {
    let mut obs = shard_obs();
    f(&mut obs);
    obs
}

/// A status the leading player has written its cursor into.
fn with_cursor() -> ShardStatus {
    ShardStatus {
        acked_index: Some(1234),
        acked_epoch: Some(3),
        acked_log_id: Some("log-1".into()),
        ..ShardStatus::default()
    }
}

#[test]
fn a_reachable_shard_is_ready_and_serving() {
    let s = first_shard_status(&shard_obs());
    assert_eq!(
        s,
        ShardStatus {
            observed_generation: Some(GEN),
            conditions: vec![
                c(
                    condition::READY,
                    "True",
                    "Serving",
                    &format!("the shard server at {ENDPOINT} answers"),
                    t0()
                ),
                c(condition::DEGRADED, "False", "AsExpected", "", t0()),
            ],
            acked_index: None,
            acked_epoch: None,
            acked_log_id: None,
            covered_index: None,
            lag: Some(12),
            endpoint: Some(ENDPOINT.into()),
            ready: Some(true),
        }
    );
}

#[test]
fn the_operator_never_writes_the_players_cursor() {
    for obs in [
        shard_obs(),
        shard_obs_with(|o| o.probe = Probe::Unreachable("down".into())),
        shard_obs_with(|o| o.spec_problem = Some(Problem::new("InvalidShard", "bad"))),
    ] {
        let s = shard_status(&obs, &with_cursor(), t0());
        assert_eq!(
            (s.acked_index, s.acked_epoch, s.acked_log_id),
            (None, None, None),
            "{obs:?}"
        );
    }
}

#[test]
fn an_unreachable_shard_is_not_ready_and_degraded() {
    let why = format!("{ENDPOINT} does not answer: connection refused");
    let s = shard_status(
        &shard_obs_with(|o| o.probe = Probe::Unreachable(why.clone())),
        &with_cursor(),
        t0(),
    );
    assert_degraded_unready(&s.conditions, "ShardUnreachable", &why, &why);
    assert_eq!(s.ready, Some(false));
    assert_eq!(s.endpoint.as_deref(), Some(ENDPOINT));
    assert_eq!(s.lag, Some(12));
}

#[test]
fn a_shard_spec_problem_is_not_ready_with_its_reason() {
    let msg = "Shard s0: Shard spec must set exactly one of `external` or `managed`, but \
                   sets neither";
    let s = first_shard_status(&shard_obs_with(|o| {
        o.spec_problem = Some(Problem::new("InvalidShard", msg));
        o.endpoint = None;
        o.probe = Probe::Unknown;
        o.log_player_found = false;
    }));
    assert_eq!(
        srm(&s.conditions, condition::READY),
        ("False", "InvalidShard", msg)
    );
    assert_degraded(
        &s.conditions,
        "InvalidShard",
        &format!("{msg} (and 1 more: see status.problems)"),
    );
    assert_eq!((s.ready, s.endpoint), (Some(false), None));

    // The spec problem wins over a reachable server in Ready.
    let s = first_shard_status(&shard_obs_with(|o| {
        o.spec_problem = Some(Problem::new("InvalidShard", msg))
    }));
    assert_eq!(get(&s.conditions, condition::READY).reason, "InvalidShard");
}

#[test]
fn an_unprobed_shard_is_not_ready_yet() {
    let s = first_shard_status(&shard_obs_with(|o| o.probe = Probe::Unknown));
    assert_eq!(
        srm(&s.conditions, condition::READY),
        (
            "False",
            "NotProbed",
            "the shard server has not been asked yet"
        )
    );
    assert_not_degraded(&s.conditions);
    assert_eq!(s.ready, Some(false));
}

#[test]
fn shard_transition_times_change_only_when_a_status_flips() {
    let first = first_shard_status(&shard_obs());
    let moved = shard_obs_with(|o| {
        o.endpoint = Some("s0.example:7100".into());
        o.lag = Some(99);
    });
    let second = shard_status(&moved, &first, t1());
    assert_eq!(
        get(&second.conditions, condition::READY).message,
        "the shard server at s0.example:7100 answers"
    );
    for cond in &second.conditions {
        assert_eq!(cond.last_transition_time, t0(), "{cond:?}");
    }
    let down = shard_obs_with(|o| o.probe = Probe::Unreachable("down".into()));
    let third = shard_status(&down, &second, t1());
    for cond in &third.conditions {
        assert_eq!(cond.last_transition_time, t1(), "{cond:?}");
    }
}

// ------------------------------------------------------------------------------------
// Events
// ------------------------------------------------------------------------------------

fn conditions(obs: &Observed) -> Vec<Condition> {
    status(obs).conditions
}

fn note(warning: bool, reason: &str, text: &str) -> EventNote {
    EventNote {
        warning,
        reason: reason.into(),
        note: text.into(),
    }
}

fn shard_down() -> Observed {
    healthy_with(|o| o.shards[1].probe = Probe::Unreachable(S1_DOWN.into()))
}

#[test]
fn a_degraded_problem_appearing_is_one_warning() {
    let events = events_for(&conditions(&healthy()), &conditions(&shard_down()));
    assert_eq!(
        events,
        [note(
            true,
            "ShardUnreachable",
            &format!("1 of 3 shards do not answer: shard s1: {S1_DOWN}")
        )]
    );
}

#[test]
fn the_same_conditions_again_are_no_event() {
    for obs in [healthy(), shard_down(), healthy_with(|o| o.lease = None)] {
        let cs = conditions(&obs);
        assert_eq!(events_for(&cs, &cs), [], "{obs:?}");
        // Also when only the transition times differ.
        let later = logplayer_status(&obs, &LogPlayerStatus::default(), t1()).conditions;
        assert_eq!(events_for(&cs, &later), [], "{obs:?}");
    }
}

#[test]
fn another_degraded_problem_is_another_warning() {
    let other = healthy_with(|o| o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into()));
    let events = events_for(&conditions(&shard_down()), &conditions(&other));
    assert_eq!(events, [note(true, "LogStoreUnreachable", LOGSTORE_DOWN)]);
}

#[test]
fn recovering_is_normal_recovered_and_ready() {
    let events = events_for(&conditions(&shard_down()), &conditions(&healthy()));
    assert_eq!(
        events,
        [
            note(false, "Recovered", "no longer degraded"),
            note(
                false,
                "Ready",
                &format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries")
            ),
        ]
    );
}

#[test]
fn a_new_leader_is_a_normal_event() {
    let new_leader = healthy_with(|o| {
        o.lease = Some(LeaseInfo {
            holder: Some("demo-player-next".into()),
            transitions: 5,
            fresh: true,
        })
    });
    let events = events_for(&conditions(&healthy()), &conditions(&new_leader));
    assert_eq!(
        events,
        [note(
            false,
            "LeaderElected",
            "pod demo-player-next leads with epoch 5"
        )]
    );
}

#[test]
fn losing_the_leader_is_a_warning_with_the_reason() {
    let expired = healthy_with(|o| {
        o.lease = Some(LeaseInfo {
            holder: Some(LEADER.into()),
            transitions: 4,
            fresh: false,
        })
    });
    let events = events_for(&conditions(&healthy()), &conditions(&expired));
    assert_eq!(
        events,
        [note(
            true,
            "LeaseExpired",
            &format!(
                "the Lease held by pod {LEADER} (epoch 4) expired; a standby takes it over \
                     when one is ready"
            )
        )]
    );
    let released = healthy_with(|o| {
        o.lease = Some(LeaseInfo {
            holder: None,
            transitions: 4,
            fresh: true,
        })
    });
    let events = events_for(&conditions(&expired), &conditions(&released));
    assert_eq!(
        events,
        [note(
            true,
            "NoLeader",
            "the Lease is released and no player holds it"
        )]
    );
}

#[test]
fn becoming_ready_is_a_normal_event() {
    let delivering = format!("pod {LEADER} delivers to 3 shards; largest lag 40 entries");
    let no_pods = healthy_with(|o| o.ready_replicas = 0);
    let events = events_for(&conditions(&no_pods), &conditions(&healthy()));
    assert_eq!(events, [note(false, "Ready", &delivering)]);

    // The first status: a leader and readiness, no recovery.
    let events = events_for(&[], &conditions(&healthy()));
    assert_eq!(
        events,
        [
            note(
                false,
                "LeaderElected",
                &format!("pod {LEADER} leads with epoch 4")
            ),
            note(false, "Ready", &delivering),
        ]
    );
    // Becoming degraded on the first status is a warning.
    let events = events_for(&[], &conditions(&shard_down()));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].warning, events[0].reason.as_str()),
        (true, "ShardUnreachable")
    );
    assert_eq!(
        (events[1].warning, events[1].reason.as_str()),
        (false, "LeaderElected")
    );
}

#[test]
fn shard_condition_changes_give_events_too() {
    let up = first_shard_status(&shard_obs()).conditions;
    let down = first_shard_status(&shard_obs_with(|o| {
        o.probe = Probe::Unreachable("refused".into())
    }))
    .conditions;
    assert_eq!(
        events_for(&up, &down),
        [note(true, "ShardUnreachable", "refused")]
    );
    assert_eq!(
        events_for(&down, &up),
        [
            note(false, "Recovered", "no longer degraded"),
            note(
                false,
                "Ready",
                &format!("the shard server at {ENDPOINT} answers")
            ),
        ]
    );
}

#[test]
fn a_refused_apply_degrades_with_the_current_generation() {
    let msg = "applying StatefulSet demo-logstore: StatefulSet.apps \"demo-logstore\" is invalid: \
               spec.volumeClaimTemplates[0].spec.resources[storage]: Invalid value: \"0\": \
               must be greater than zero";
    let s = status(&healthy_with(|o| {
        o.apply_problems = vec![Problem::new("ApplyFailed", msg)];
    }));
    assert_degraded_unready(&s.conditions, "ApplyFailed", msg, msg);
    assert_eq!(s.observed_generation, Some(GEN));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(GEN))
    );
    let ev = events_for(&status(&healthy()).conditions, &s.conditions);
    assert!(
        ev.iter()
            .any(|e| e.warning && e.reason == "ApplyFailed" && e.note == msg),
        "{ev:?}"
    );
}

#[test]
fn pending_pods_are_named_and_a_server_that_does_not_run_is_not_called_unreachable() {
    let pending = "pod demo-logstore-0 cannot be scheduled: Unschedulable: 0/1 nodes are \
                   available: 1 Insufficient cpu.";
    let s = status(&healthy_with(|o| {
        o.pod_problems = vec![Problem::new("PodsPending", pending)];
        o.logstore = Probe::NotRunning;
        o.head_index = None;
    }));
    assert_degraded_unready(&s.conditions, "PodsPending", pending, pending);
    assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
    assert!(s.shards.iter().all(|p| p.lag.is_none()));
    assert_eq!(s.lag, None);
}

#[test]
fn a_changed_message_is_a_new_warning() {
    let a = status(&healthy_with(|o| {
        o.pod_problems = vec![Problem::new("PodsPending", "pod a cannot be scheduled")];
    }));
    let b = logplayer_status(
        &healthy_with(|o| {
            o.pod_problems = vec![Problem::new("PodsPending", "pod b cannot be scheduled")];
        }),
        &a,
        t0(),
    );
    let ev = events_for(&a.conditions, &b.conditions);
    assert!(
        ev.iter().any(|e| e.warning && e.note.contains("pod b")),
        "{ev:?}"
    );
    // The same message again is not a new event.
    assert!(events_for(&b.conditions, &b.conditions).is_empty());
}
