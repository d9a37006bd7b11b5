//! Keeps a managed LogStore's Raft membership equal to `logStore.managed.replicas`: replica
//! `i + 1` is pod ordinal `i`. Pod 0 seeds the group alone (its `--peers` names only
//! itself); the operator adds the others, and removes those a smaller count leaves out,
//! through the LogStore's membership calls on the log leader.
//!
//! One change per reconciliation, so the group changes one replica at a time through
//! joint consensus: first the lowest missing replica whose pod runs (it catches up as a
//! learner, then votes), else the highest replica past the count. The StatefulSet keeps a
//! pod until its replica has left the group ([`pods_to_keep`]): scaling 3 → 1 by deleting
//! two pods first would leave the group without a majority to remove them with.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Log;
use crate::proto::MembersResponse;
use crate::tls::Tls;

/// How long asking for the membership may take.
const ASK_WAIT: Duration = Duration::from_secs(3);
/// How long, of that, asking each replica where it stands may take.
const STAND_WAIT: Duration = Duration::from_secs(2);
/// How long an added replica may take to catch up before the reconciliation gives up (it
/// stays a learner; the next one goes on).
pub const CATCH_UP: Duration = Duration::from_secs(20);

/// How long one membership change may take, its catch-up included (and before it, up to
/// 5 s to learn the log's id from the replicas, which the change names).
const MAKE_WAIT: Duration = Duration::from_secs(CATCH_UP.as_secs() + 15);

/// Raft entries a voter may be behind the log leader before the status calls it behind.
/// An entry is a group of appends (up to 1 MiB), so this is seconds of load, not a hiccup.
pub const BEHIND: u64 = 1_000;

/// One membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Start the group with replica 1 alone (once, when none exists).
    Seed,
    Add(u64),
    Remove(u64),
}

/// What the operator saw of a managed LogStore's membership.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The StatefulSet (its pods are `NAME-ORDINAL`).
    pub stateful_set: String,
    /// Replicas wanted.
    pub want: u64,
    /// The membership the leader reported; `None` when no replica could say.
    pub members: Option<MembersResponse>,
    /// Why the membership is unknown (no leader, nobody answers).
    pub unknown: Option<String>,
    /// Replicas whose pod runs and is ready (`observe::serving_replicas`).
    pub running: BTreeSet<u64>,
    /// The change made this time, or why it failed.
    pub change: Option<Result<Change, String>>,
    /// The StatefulSet revisions its pods run (`controller-revision-hash`): more than one
    /// while the replicas are rolled to a new one.
    pub revisions: BTreeSet<String>,
}

impl Seen {
    /// The pod of replica `id`.
    pub fn pod(&self, id: u64) -> String {
        format!("{}-{}", self.stateful_set, id.saturating_sub(1))
    }
}

/// The voters of `m`.
pub fn voters(m: &MembersResponse) -> BTreeSet<u64> {
    m.members.iter().filter(|r| r.voter).map(|r| r.id).collect()
}

/// The next change toward replicas `1..=want`, if any: nothing without a leader or while a
/// change is under way; an add only for a replica whose pod runs and is ready; a voter's
/// removal only while every voter that stays does.
pub fn next_change(m: &MembersResponse, want: u64, running: &BTreeSet<u64>) -> Option<Change> {
    if m.leader == 0 || m.joint {
        return None;
    }
    let voters = voters(m);
    if let Some(id) = (1..=want).find(|id| !voters.contains(id) && running.contains(id)) {
        return Some(Change::Add(id));
    }
    // Past the count: voters first (highest first), then leftover learners. A voter only
    // while every voter that stays runs: the joint configuration needs a majority of the
    // new voters too, and a change that cannot commit would stop the log until they return.
    let past = |voter: bool| {
        m.members
            .iter()
            .filter(|r| r.id > want && r.voter == voter)
            .map(|r| r.id)
            .max()
    };
    if let Some(id) = past(true) {
        let staying_run = voters
            .iter()
            .filter(|v| **v != id)
            .all(|v| running.contains(v));
        return staying_run.then_some(Change::Remove(id));
    }
    past(false).map(Change::Remove)
}

/// Pods the StatefulSet must keep: the count wanted, and every replica still in the group.
pub fn pods_to_keep(m: Option<&MembersResponse>, want: i32) -> i32 {
    let highest = m
        .and_then(|m| m.members.iter().map(|r| r.id).max())
        .map_or(0, |id| i32::try_from(id).unwrap_or(i32::MAX));
    want.max(highest)
}

/// Whether a managed LogStore's group never formed, when nobody can tell its membership:
/// no log id was ever recorded and no replica's pod runs. Then no pod holds a voter, and
/// the StatefulSet may shrink to the count wanted (a LogStore scaled from 5 to 1 because its
/// pods could not be created kept five unschedulable pods). A group that formed recorded
/// its log id in the status in the reconciliation that first saw it.
pub fn never_formed(known_log_id: Option<&str>, any_running: bool) -> bool {
    known_log_id.is_none() && !any_running
}

/// The ordinal at the end of a StatefulSet pod's name, as a replica id (ordinal + 1).
pub fn replica_of_pod(pod: &str) -> Option<u64> {
    let (_, n) = pod.rsplit_once('-')?;
    n.parse::<u64>().ok().map(|o| o + 1)
}

/// Where one log replica said it stands, and a client of it.
struct Stand {
    addr: String,
    log: Log,
    status: crate::proto::ReplicaStatus,
}

/// Whether a replica that says `r` leads a majority: a leader cut off from its majority
/// keeps its role until it hears of a higher term, and says so.
pub fn leads_a_majority(r: &crate::proto::ReplicaStatus) -> bool {
    r.role == "leader" && r.leads_a_majority
}

/// A client of the log replica (or single-node LogStore) at `addr`, and where it stands.
pub async fn describe_at(
    addr: &str,
    tls: Option<Arc<Tls>>,
) -> Result<(Log, crate::proto::BoundsResponse), String> {
    let log = Log::connect_with(addr, tls)
        .await
        .map_err(|e| e.to_string())?;
    let bounds = log.describe().await.map_err(|e| e.to_string())?;
    Ok((log, bounds))
}

/// The answer of the replica that leads among `answers`: one that leads a majority, else
/// the leader of the highest term.
pub fn leader_of<T>(
    answers: &[T],
    status: impl Fn(&T) -> Option<&crate::proto::ReplicaStatus>,
) -> Option<&T> {
    let leads = |a: &&T| status(a).is_some_and(|r| r.role == "leader");
    answers
        .iter()
        .find(|a| status(a).is_some_and(leads_a_majority))
        .or_else(|| {
            answers
                .iter()
                .filter(leads)
                .max_by_key(|a| status(a).map(|r| r.raft_term))
        })
}

/// Asks the LogStore at `addrs` (every replica, comma-separated) for its membership, from
/// its leader: every replica is asked at once where it stands ([`ask_each`]), then the one
/// that leads ([`leader_of`]) for the membership. A leader the others name outside `addrs`
/// is asked too: while the group shrinks, the replicas past the count wanted still run and
/// may lead. No leader is an error naming what each replica said (a group not seeded yet,
/// or electing): only a leader's membership is the group's, and only it knows how far each
/// replica matched.
pub async fn ask(addrs: &str, tls: Option<Arc<Tls>>) -> Result<MembersResponse, String> {
    let stand = |addr: String| {
        let tls = tls.clone();
        async move {
            let (log, b) = describe_at(&addr, tls).await?;
            let status = b.replica.unwrap_or_default();
            Ok(Stand { addr, log, status })
        }
    };
    let majority = |s: &Stand| leads_a_majority(&s.status);
    let asked = tokio::time::timeout(ASK_WAIT, async {
        let (mut answers, mut failed) = ask_each(addrs, STAND_WAIT, &stand, majority).await;
        if !answers.iter().any(majority) {
            let asked: BTreeSet<&str> = addrs.split(',').map(str::trim).collect();
            let named: BTreeSet<&str> = answers
                .iter()
                .map(|s| s.status.leader_addr.as_str())
                .filter(|a| !a.is_empty() && !asked.contains(a))
                .collect();
            if !named.is_empty() {
                let named = named.into_iter().collect::<Vec<_>>().join(",");
                let (more, more_failed) = ask_each(&named, STAND_WAIT, &stand, majority).await;
                answers.extend(more);
                failed.extend(more_failed);
            }
        }
        let Some(leader) = leader_of(&answers, |s| Some(&s.status)) else {
            let roles = answers.iter().map(|s| {
                let role = if s.status.role.is_empty() {
                    "replica of no group"
                } else {
                    &s.status.role
                };
                format!("{} is a {role}", s.addr)
            });
            failed.extend(roles);
            return Err(format!("no log replica leads: {}", failed.join("; ")));
        };
        let m = leader.log.members().await.map_err(|e| e.to_string())?;
        if m.leader != leader.status.id {
            return Err(format!(
                "{} stopped leading before it told the membership",
                leader.addr
            ));
        }
        Ok(m)
    })
    .await;
    asked.unwrap_or_else(|_| Err(format!("no answer within {ASK_WAIT:?}")))
}

/// Asks each replica of `addrs` (comma-separated) at once with `ask`, each for at most
/// `wait`, and collects the answers as they come until one is `enough` (returned at once)
/// or every replica answered or failed; the failures name their address; both in the
/// order of `addrs`. Asked one after the other, a frozen replica (its kernel accepts the
/// connection, nothing answers) took the whole time of the question, and a log the others
/// serve read as unreachable.
pub async fn ask_each<T, F, Fut>(
    addrs: &str,
    wait: Duration,
    ask: F,
    enough: impl Fn(&T) -> bool,
) -> (Vec<T>, Vec<String>)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    use futures::StreamExt as _;
    let mut asks: futures::stream::FuturesUnordered<_> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .enumerate()
        .map(|(i, a)| {
            let asked = tokio::time::timeout(wait, ask(a.to_owned()));
            async move {
                let failed = match asked.await {
                    Ok(Ok(answer)) => return Ok((i, answer)),
                    Ok(Err(e)) => format!("{a} does not answer: {e}"),
                    Err(_) => format!(
                        "{a} did not answer within {}",
                        humantime::format_duration(wait)
                    ),
                };
                Err((i, failed))
            }
        })
        .collect();
    let (mut answers, mut failed) = (Vec::new(), Vec::new());
    if asks.is_empty() {
        failed.push((0, format!("no address in {addrs:?}")));
    }
    while let Some(one) = asks.next().await {
        match one {
            Ok((i, answer)) => {
                let done = enough(&answer);
                answers.push((i, answer));
                if done {
                    break;
                }
            }
            Err(e) => failed.push(e),
        }
    }
    // In the order of `addrs`, whichever came first: a status message (and its Event) must
    // not change with the order the answers came in.
    answers.sort_by_key(|(i, _)| *i);
    failed.sort();
    (
        answers.into_iter().map(|(_, a)| a).collect(),
        failed.into_iter().map(|(_, e)| e).collect(),
    )
}

/// Whether to seed: no group answers, replica 1's pod runs, and no log was ever established
/// for this LogPlayer (`known_log_id`, from its status: a pod 0 back on an empty volume must
/// rejoin the group, not start another).
pub fn should_seed(seen: &Seen, known_log_id: Option<&str>) -> bool {
    seen.members.is_none() && seen.running.contains(&1) && known_log_id.is_none()
}

/// Makes `change`: a seed on replica 1 (at `addr`), anything else on the log leader; `addr`
/// is where the replica to add or seed is dialed.
pub async fn make(
    addrs: &str,
    change: Change,
    addr: &str,
    tls: Option<Arc<Tls>>,
) -> Result<MembersResponse, String> {
    let target = if change == Change::Seed { addr } else { addrs };
    // Bounded as a whole: a client of one address (a group shrinking to one replica) waits
    // on each attempt for as long as it takes, and a leader frozen after redirecting it
    // would hold the reconciliation up for ever.
    let made = tokio::time::timeout(MAKE_WAIT, async {
        let log = Log::connect_with(target, tls)
            .await
            .map_err(|e| e.to_string())?;
        match change {
            Change::Seed => {
                tracing::info!(%addr, "seeding the log's group with replica 1");
                log.seed().await
            }
            Change::Add(id) => {
                tracing::info!(replica = id, %addr, "adding a log replica to the group");
                log.add_member(id, addr, CATCH_UP).await
            }
            Change::Remove(id) => {
                tracing::info!(replica = id, "removing a log replica from the group");
                log.remove_member(id).await
            }
        }
        .map_err(|e| e.to_string())
    });
    made.await
        .unwrap_or_else(|_| Err(format!("no answer within {MAKE_WAIT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Member;

    fn group(voters: &[u64], learners: &[u64], leader: u64) -> MembersResponse {
        let member = |id: u64, voter: bool| Member {
            id,
            addr: format!("r{id}:7000"),
            voter,
            matched: 0,
        };
        MembersResponse {
            members: voters
                .iter()
                .map(|&id| member(id, true))
                .chain(learners.iter().map(|&id| member(id, false)))
                .collect(),
            leader,
            joint: false,
            last_log: 0,
            raft_term: 1,
            applied: 0,
            log_id: "log-a".into(),
        }
    }

    fn running(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_new_group_grows_one_running_replica_at_a_time_lowest_first() {
        let m = group(&[1], &[], 1);
        assert_eq!(
            next_change(&m, 3, &running(&[1, 2, 3])),
            Some(Change::Add(2))
        );
        assert_eq!(
            next_change(&m, 3, &running(&[1, 3])),
            Some(Change::Add(3)),
            "a replica whose pod does not run yet is skipped, not waited for"
        );
        assert_eq!(next_change(&m, 3, &running(&[1])), None);
        let full = group(&[1, 2, 3], &[], 2);
        assert_eq!(next_change(&full, 3, &running(&[1, 2, 3])), None);
    }

    #[test]
    fn a_smaller_count_removes_the_highest_voter_then_leftover_learners() {
        let m = group(&[1, 2, 3, 4, 5], &[], 1);
        assert_eq!(
            next_change(&m, 3, &running(&[1, 2, 3, 4, 5])),
            Some(Change::Remove(5))
        );
        let m = group(&[1, 2, 3], &[4], 1);
        assert_eq!(
            next_change(&m, 3, &running(&[1, 2, 3])),
            Some(Change::Remove(4))
        );
        // Not while a voter that stays is down: the change could not commit.
        let m5 = group(&[1, 2, 3, 4, 5], &[], 1);
        assert_eq!(next_change(&m5, 3, &running(&[1, 3, 4, 5])), None);
        // Adding a wanted replica comes before removing an unwanted one.
        let m = group(&[1, 3, 4], &[], 1);
        assert_eq!(
            next_change(&m, 3, &running(&[1, 2, 3, 4])),
            Some(Change::Add(2))
        );
    }

    #[test]
    fn nothing_changes_without_a_leader_or_while_a_change_is_under_way() {
        let m = group(&[1], &[], 0);
        assert_eq!(next_change(&m, 3, &running(&[1, 2, 3])), None);
        let mut m = group(&[1, 2], &[], 1);
        m.joint = true;
        assert_eq!(next_change(&m, 3, &running(&[1, 2, 3])), None);
    }

    #[test]
    fn a_group_is_seeded_only_when_none_answers_pod_0_runs_and_no_log_was_ever_known() {
        let seen = |members: Option<MembersResponse>, running: &[u64]| Seen {
            stateful_set: "demo-logstore".into(),
            want: 3,
            members,
            unknown: None,
            running: running.iter().copied().collect(),
            change: None,
            revisions: Default::default(),
        };
        assert!(should_seed(&seen(None, &[1, 2, 3]), None));
        assert!(
            !should_seed(&seen(None, &[1, 2, 3]), Some("log-a")),
            "a pod 0 back on an empty volume must rejoin, not start a second group"
        );
        assert!(!should_seed(&seen(None, &[2, 3]), None));
        assert!(!should_seed(&seen(Some(group(&[1], &[], 1)), &[1]), None));
    }

    #[test]
    fn pods_stay_until_their_replica_left_the_group() {
        let m = group(&[1, 2, 3], &[], 1);
        assert_eq!(pods_to_keep(Some(&m), 1), 3);
        assert_eq!(pods_to_keep(Some(&m), 5), 5);
        assert_eq!(pods_to_keep(None, 3), 3);
        assert_eq!(replica_of_pod("demo-logstore-0"), Some(1));
        assert_eq!(replica_of_pod("demo-logstore-12"), Some(13));
        assert_eq!(replica_of_pod("nothing"), None);
    }

    fn replica(role: &str, term: u64, majority: bool) -> crate::proto::ReplicaStatus {
        crate::proto::ReplicaStatus {
            role: role.into(),
            raft_term: term,
            leads_a_majority: majority,
            ..Default::default()
        }
    }

    /// The leader that leads a majority counts; else the leader of the highest term (one
    /// cut off from its majority keeps its role until it hears of a higher term); never a
    /// follower.
    #[test]
    fn the_leader_is_the_one_that_leads_a_majority() {
        let cut_off = replica("leader", 3, false);
        let newer = replica("leader", 4, true);
        let follower = replica("follower", 4, false);
        let all = [cut_off.clone(), follower.clone(), newer.clone()];
        assert_eq!(leader_of(&all, |r| Some(r)), Some(&newer));
        let no_majority = [
            cut_off.clone(),
            replica("leader", 2, false),
            follower.clone(),
        ];
        assert_eq!(leader_of(&no_majority, |r| Some(r)), Some(&cut_off));
        assert_eq!(leader_of(&[follower], |r| Some(r)), None);
    }

    /// Answers and failures come in the order of the addresses, whatever order they came
    /// in (a status message made of them would otherwise change, with an Event each time),
    /// and the first `enough` answer ends the question at once.
    #[tokio::test(start_paused = true)]
    async fn each_replica_is_asked_at_once_and_listed_in_order() {
        let ask = |a: String| async move {
            let n: u64 = a.trim_start_matches('r').parse().unwrap_or(0);
            // r3 answers first, r1 last; r2 fails; r9 never answers.
            tokio::time::sleep(Duration::from_millis(match n {
                9 => 60_000,
                _ => 100 * (4 - n.min(3)),
            }))
            .await;
            if n == 2 {
                Err("refused".to_owned())
            } else {
                Ok(n)
            }
        };
        let t = tokio::time::Instant::now();
        let (answers, failed) =
            ask_each("r1,r2,r3,r9", Duration::from_secs(2), ask, |_| false).await;
        assert_eq!(answers, vec![1, 3]);
        assert_eq!(
            failed,
            vec![
                "r2 does not answer: refused".to_owned(),
                "r9 did not answer within 2s".to_owned()
            ]
        );
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(2),
            "r9 was waited for at most 2 s"
        );
        let t = tokio::time::Instant::now();
        let (answers, _) = ask_each("r1,r9,r3", Duration::from_secs(2), ask, |n| *n == 3).await;
        assert_eq!(answers, vec![3]);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the frozen r9 held it up"
        );
    }
}
