//! A managed LogStore's group in the status: `status.logStore`, a voting replica whose pod
//! does not run (`LogReplicaDown`), a failed membership change (`LogMembershipFailed`), no
//! log leader (`NoLogLeader`), and a membership still changing (`Progressing`).

use super::*;
use crate::operator::log_members::{Change, Seen};
use crate::proto::{Member, MembersResponse};

fn group(voters: &[u64], learners: &[u64], leader: u64, running: &[u64]) -> Seen {
    let member = |id: u64, voter: bool| Member {
        id,
        addr: format!("demo-logstore-{}:7000", id - 1),
        voter,
        matched: 90 + id,
    };
    Seen {
        stateful_set: "demo-logstore".into(),
        want: 3,
        members: Some(MembersResponse {
            members: voters
                .iter()
                .map(|&id| member(id, true))
                .chain(learners.iter().map(|&id| member(id, false)))
                .collect(),
            leader,
            joint: false,
            last_log: if leader == 0 { 0 } else { 100 },
            raft_term: 7,
            applied: if leader == 0 { 0 } else { 99 },
            log_id: "log-a".into(),
        }),
        unknown: None,
        running: running.iter().copied().collect(),
        change: None,
        revisions: ["rev-1".to_owned()].into(),
    }
}

/// A change of the log replicas' template rolls them one at a time: while their pods run
/// two revisions, `Progressing` says so (it said `Complete` while each restart showed as a
/// replica down).
#[test]
fn log_replicas_on_two_revisions_are_rolling_out() {
    let mut seen = group(&[1, 2, 3], &[], 2, &[1, 2]);
    seen.revisions = ["rev-1".to_owned(), "rev-2".to_owned()].into();
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::PROGRESSING);
    assert_eq!((status, reason), ("True", "RollingOut"), "{message}");
    assert!(message.contains("demo-logstore"), "{message}");
}

#[test]
fn a_full_group_is_reported_member_by_member_and_nothing_is_wrong() {
    let obs = healthy_with(|o| o.log_members = Some(group(&[1, 2, 3], &[], 2, &[1, 2, 3])));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    assert_not_degraded(&st.conditions);
    assert_eq!(srm(&st.conditions, condition::PROGRESSING).0, "False");
    let log = st.log_store.expect("status.logStore");
    assert_eq!((log.replicas, log.voters), (3, Some(3)));
    assert_eq!(log.leader.as_deref(), Some("demo-logstore-1"));
    assert_eq!(
        (log.raft_term, log.last_index, log.commit_index),
        (Some(7), Some(100), Some(99))
    );
    let rows: Vec<(i64, &str, &str, Option<i64>)> = log
        .members
        .iter()
        .map(|m| (m.id, m.pod.as_str(), m.role.as_str(), m.behind))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "demo-logstore-0", "voter", Some(9)),
            (2, "demo-logstore-1", "leader", Some(8)),
            (3, "demo-logstore-2", "voter", Some(7)),
        ]
    );
}

#[test]
fn a_voting_replica_whose_pod_does_not_run_degrades_by_name() {
    let obs = healthy_with(|o| o.log_members = Some(group(&[1, 2, 3], &[], 1, &[1, 2])));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::DEGRADED);
    assert_eq!((status, reason), ("True", "LogReplicaDown"));
    assert!(
        message.contains("replica 3 (pod demo-logstore-2)") && message.contains("1 of 3"),
        "{message}"
    );
    // Two of three still append and deliver: fewer copies, not a stop (a rolling restart
    // takes one replica at a time).
    assert_eq!(srm(&st.conditions, condition::READY).0, "True");
}

#[test]
fn a_majority_of_voting_replicas_down_is_a_lost_quorum_and_not_ready() {
    let obs = healthy_with(|o| o.log_members = Some(group(&[1, 2, 3], &[], 1, &[1])));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::DEGRADED);
    assert_eq!((status, reason), ("True", "LogQuorumLost"));
    assert!(
        message.contains("2 of 3") && message.contains("fewer than a majority (2)"),
        "{message}"
    );
    let (status, reason, _) = srm(&st.conditions, condition::READY);
    assert_eq!((status, reason), ("False", "LogQuorumLost"));
}

/// A leader restarting while the two others run: `NoLogLeader` blocks, and the replica
/// down is a warning beside it, not a lost quorum.
#[test]
fn a_leaderless_group_whose_majority_runs_has_not_lost_its_quorum() {
    let obs = healthy_with(|o| o.log_members = Some(group(&[1, 2, 3], &[], 0, &[1, 2])));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let reasons: Vec<&str> = st.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons, ["NoLogLeader", "LogReplicaDown"]);
    assert_eq!(srm(&st.conditions, condition::READY).1, "NoLogLeader");
}

/// While the group changes, one voter down is not judged by the union's count.
#[test]
fn a_voter_down_while_the_group_changes_blocks() {
    let mut seen = group(&[1, 2, 3, 4], &[], 1, &[1, 2, 3]);
    if let Some(m) = seen.members.as_mut() {
        m.joint = true;
    }
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::READY);
    assert_eq!((status, reason), ("False", "LogQuorumLost"), "{message}");
    assert!(message.contains("while the group changes"), "{message}");
}

#[test]
fn a_voting_replica_far_behind_the_leader_degrades_by_name() {
    let mut seen = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    if let Some(m) = seen.members.as_mut() {
        m.last_log = 5_000;
        m.members[1].matched = 3_000;
        m.members[0].matched = 5_000;
        m.members[2].matched = 4_990;
    }
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::DEGRADED);
    assert_eq!((status, reason), ("True", "LogReplicaBehind"));
    assert!(
        message.contains("replica 2 (pod demo-logstore-1) is more than 1000 Raft entries behind"),
        "{message}"
    );
    assert_eq!(
        st.log_store
            .and_then(|l| l.members.get(1).and_then(|r| r.behind)),
        Some(2_000),
        "the count is in status.logStore.members"
    );
    // Further behind, or less: the same message, so no new Event at each reconciliation.
    let mut further = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    if let Some(m) = further.members.as_mut() {
        m.last_log = 6_000;
        m.members[1].matched = 3_100;
        m.members[0].matched = 6_000;
        m.members[2].matched = 5_990;
    }
    let obs = healthy_with(|o| o.log_members = Some(further));
    let later = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    assert_eq!(srm(&later.conditions, condition::DEGRADED).2, message);
}

/// While no replica can tell the group's members, `voters` is absent, not 0.
#[test]
fn voters_unknown_are_absent() {
    let mut seen = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    seen.members = None;
    seen.unknown = Some("no replica answers".into());
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let log = st.log_store.expect("status.logStore");
    assert_eq!((log.replicas, log.voters), (3, None));
}

#[test]
fn no_log_leader_and_a_failed_change_degrade() {
    let mut seen = group(&[1, 2, 3], &[], 0, &[1, 2, 3]);
    seen.change = Some(Err("Add(4): not caught up".into()));
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let reasons: Vec<&str> = st.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons, ["LogMembershipFailed", "NoLogLeader"]);
    assert_eq!(st.log_store.and_then(|l| l.leader), None);
}

#[test]
fn a_group_still_growing_or_shrinking_is_progressing_and_stays_ready() {
    let mut seen = group(&[1], &[2], 1, &[1, 2, 3]);
    seen.change = Some(Ok(Change::Add(2)));
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::PROGRESSING);
    assert_eq!((status, reason), ("True", "LogReplicasChanging"));
    assert!(
        message.contains("{1}") && message.contains("{1, 2, 3}"),
        "{message}"
    );
    assert_eq!(srm(&st.conditions, condition::READY).0, "True");
    assert_not_degraded(&st.conditions);
    let shrinking =
        healthy_with(|o| o.log_members = Some(group(&[1, 2, 3, 4, 5], &[], 1, &[1, 2, 3, 4, 5])));
    let st = logplayer_status(&shrinking, &LogPlayerStatus::default(), now());
    assert_eq!(
        srm(&st.conditions, condition::PROGRESSING).1,
        "LogReplicasChanging"
    );
}

#[test]
fn a_membership_nobody_can_tell_is_no_log_leader_and_unknown_progress_is_not_behind() {
    let mut seen = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    seen.members = None;
    seen.unknown = Some("no answer within 3s".into());
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let (status, reason, message) = srm(&st.conditions, condition::DEGRADED);
    assert_eq!((status, reason), ("True", "NoLogLeader"));
    assert!(message.contains("no answer within 3s"), "{message}");

    let mut seen = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    if let Some(m) = seen.members.as_mut() {
        m.last_log = 5_000;
        m.members[0].matched = 5_000;
        m.members[1].matched = 0;
        m.members[2].matched = 5_000;
    }
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    assert_not_degraded(&st.conditions);
    let behind: Vec<Option<i64>> = st
        .log_store
        .expect("status.logStore")
        .members
        .iter()
        .map(|m| m.behind)
        .collect();
    assert_eq!(behind, [Some(0), None, Some(0)]);
}

#[test]
fn the_log_id_once_known_stays_in_the_status_while_nobody_can_tell_it() {
    let obs = healthy_with(|o| o.log_members = Some(group(&[1, 2, 3], &[], 1, &[1, 2, 3])));
    let st = logplayer_status(&obs, &LogPlayerStatus::default(), now());
    let known = st.log_store.as_ref().and_then(|l| l.log_id.clone());
    assert_eq!(known.as_deref(), Some("log-a"));
    let mut seen = group(&[1, 2, 3], &[], 1, &[1, 2, 3]);
    seen.members = None;
    seen.unknown = Some("no answer".into());
    let obs = healthy_with(|o| o.log_members = Some(seen));
    let st = logplayer_status(&obs, &st, now());
    assert_eq!(
        st.log_store.and_then(|l| l.log_id).as_deref(),
        Some("log-a"),
        "the operator must not seed a second group after a status without it"
    );
}
