//! A log that ends below what was delivered from it: its data directory put back to an
//! older copy (a restore from backup, a disk that lost acknowledged writes) under the same
//! log id. The entries appended to it next would take indexes the shards have applied
//! already, and each shard would skip them as applied, silently. So the player asks, at
//! start (against the highest index a shard applied), each time its main stream
//! (re)connects (against what it has read) and when a shard connects ahead of what it has
//! read (one that was down at the start), whether the log still reaches that far, and
//! stops naming both when it does not ([`super::PlayerError::LogBehind`]).
//!
//! A log that has grown back past the shards by the time it is asked reaches every index,
//! but holds other entries at them. So each shard keeps the fingerprint of the entry at its
//! applied index ([`crate::model::fingerprint`], carried by every delivered entry), says it
//! in its Welcome, and the player compares it with the entry the log holds there before it
//! delivers anything on that stream ([`holds`]); the main stream does the same with the
//! last entry it read each time it reconnects. When they differ the player stops naming
//! both ([`super::PlayerError::LogDiverged`]). Not seen: a log that differs only below the
//! index compared (nothing is lost to that shard: what it skips is what it applied), or
//! holds there an entry of the same content (same mutations and writer start time).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::PlayerError;
use crate::grpc::Reason;
use crate::proto::log_store_client::LogStoreClient;
use crate::proto::{BoundsRequest, BoundsResponse, ReadRequest};

/// How long the log may stay below the index before the player concludes it lost entries.
/// Only answers that know the log's end count (a single-node LogStore's, or a leader's
/// that a majority acknowledged moments ago and that has applied an entry of its own term,
/// so every entry committed before it led):
/// what remains is a leader applying what it committed moments ago.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// How long one `Bounds` call may take.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// One answer about where the log ends.
enum Answer {
    Reaches,
    /// It ends at `last`, below the index; `sure` when the answer knows the log's end (see
    /// [`GRACE`]): a follower may lag, and a leader elected or restarted moments ago may
    /// still be applying its predecessors' entries (from the start of the log, after a
    /// restart).
    Below {
        last: u64,
        sure: bool,
    },
    /// No answer (the LogStore is down).
    None,
    /// An answer from another log (its id): the log behind the address was replaced.
    AnotherLog(String),
}

/// Why the log does not reach an index (see [`reaches`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unreached {
    /// Sure answers said it ends at this index, below the one asked for.
    Below(u64),
    /// The LogStore serves another log (its id). Said at once: a follow read of this
    /// address would wait for the other log to grow, and a short read of it finds nothing,
    /// so nothing else would name it before it grew past what was read.
    AnotherLog(String),
}

impl Unreached {
    /// What stops the player: `who` went `through` an index that the log `log_id` at
    /// `addr` no longer reaches.
    pub(super) fn error(self, addr: &str, log_id: &str, who: String, through: u64) -> PlayerError {
        match self {
            Unreached::Below(last) => PlayerError::LogBehind {
                addr: addr.to_owned(),
                log_id: log_id.to_owned(),
                last,
                who,
                through,
            },
            Unreached::AnotherLog(found) => PlayerError::WrongLog {
                addr: addr.to_owned(),
                expected: log_id.to_owned(),
                found,
            },
        }
    }
}

async fn ask(log: &LogStoreClient<Channel>, log_id: &str, index: u64) -> Answer {
    let mut request = tonic::Request::new(BoundsRequest {});
    request.set_timeout(ASK_WAIT);
    let mut client = log.clone();
    match tokio::time::timeout(ASK_WAIT, client.bounds(request)).await {
        Ok(Ok(b)) => {
            let b = b.into_inner();
            if b.log_id != log_id {
                Answer::AnotherLog(b.log_id)
            } else if b.last >= index {
                Answer::Reaches
            } else {
                let sure = knows_the_end(&b);
                Answer::Below { last: b.last, sure }
            }
        }
        _ => Answer::None,
    }
}

/// Whether a `Bounds` answer knows where the log ends: a single-node LogStore's, or a
/// leader's that has applied an entry of its own term (so every entry committed before it
/// led; Raft's leader commits one of its term when elected) and that a majority
/// acknowledged moments ago (one cut off from it may have been replaced by a leader that
/// committed more).
fn knows_the_end(b: &BoundsResponse) -> bool {
    b.replica.as_ref().is_none_or(|r| {
        r.role == "leader" && r.raft_term > 0 && r.applied_term == r.raft_term && r.leads_a_majority
    })
}

/// What to do while the LogStore does not answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// Go on (the main stream: its read fails and is retried, and asks again).
    GoOn,
    /// Keep asking until it answers (a start, a shard's connection: nothing else would ask
    /// again).
    Wait,
}

/// `Ok` when the log `log_id` reaches `index` (or answers only unsure for [`GRACE`], or the
/// player is stopping); `Err(Below(last))` when sure answers said it ends at `last`, below
/// `index`, for [`GRACE`] (see [`Below`]); `Err(AnotherLog)` as soon as an answer comes from
/// another log. `log` should reach the leader of a replicated
/// log (`fetch::leader_log`): a follower's answer is never sure.
pub(super) async fn reaches(
    log: &LogStoreClient<Channel>,
    log_id: &str,
    index: u64,
    unanswered: Unanswered,
    shutdown: &CancellationToken,
) -> Result<(), Unreached> {
    if index == 0 {
        return Ok(());
    }
    let mut below = Below::default();
    let mut said_waiting = false;
    loop {
        match ask(log, log_id, index).await {
            Answer::Reaches => return Ok(()),
            Answer::AnotherLog(found) => return Err(Unreached::AnotherLog(found)),
            Answer::None if unanswered == Unanswered::GoOn => return Ok(()),
            Answer::None => {
                if !said_waiting {
                    said_waiting = true;
                    tracing::info!(
                        index,
                        "waiting for the LogStore to say whether the log reaches what was delivered from it"
                    );
                }
            }
            Answer::Below { last, sure } => {
                if sure && below.since.is_none() {
                    tracing::info!(
                        last,
                        index,
                        "the log ends below what was delivered from it; waiting {GRACE:?} for it to reach that far"
                    );
                }
                match below.answered(sure, Instant::now()) {
                    Some(true) => return Err(Unreached::Below(last)),
                    Some(false) => return Ok(()),
                    None => {}
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// What the answers that the log ends below the index have said so far. Sure answers
/// conclude once the first of them is [`GRACE`] old; unsure ones in between (a follower
/// answering while no leader was known, a leader whose majority acknowledged it late) do not
/// reset that, as long as a sure one came within [`GRACE`]. Only unsure answers, for
/// [`GRACE`] from the first answer (time without any answer does not count), conclude
/// that nothing can be concluded.
#[derive(Debug, Default)]
struct Below {
    first: Option<Instant>,
    since: Option<Instant>,
    last_sure: Option<Instant>,
}

impl Below {
    /// One more answer below the index: `Some(true)` when the log lost entries, `Some(false)`
    /// when nothing can be concluded, `None` to ask again.
    fn answered(&mut self, sure: bool, now: Instant) -> Option<bool> {
        let first = *self.first.get_or_insert(now);
        if sure {
            self.last_sure = Some(now);
            let since = *self.since.get_or_insert(now);
            return (now.duration_since(since) >= GRACE).then_some(true);
        }
        if self
            .last_sure
            .is_some_and(|at| now.duration_since(at) >= GRACE)
        {
            // Sure answers stopped coming: start over.
            self.since = None;
            self.last_sure = None;
        }
        (self.since.is_none() && now.duration_since(first) >= GRACE).then_some(false)
    }
}

/// What the log holds at a shard's applied index, against the entry the shard applied
/// there.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// The same entry, or nothing to compare: nothing applied, or a fingerprint not known
    /// (an older sender delivered the entry, or `reset-log`), or an entry the log has
    /// removed (retention below the slowest shard's next entry removes its applied one).
    Same,
    /// Another entry, with this fingerprint.
    Other(u64),
    /// The log did not answer, or does not hold the index (yet): ask again later.
    Unknown(String),
    /// The log cannot serve the entry, and asking again will not change that (it is
    /// damaged, or above the LogStore's entry limit now): go on unchecked, saying so.
    Unchecked(String),
    /// The LogStore serves another log: go on to the read, which refuses it by name.
    AnotherLog,
}

/// How long reading one entry for [`holds`] may take (an entry may be up to a GiB).
const READ_WAIT: Duration = Duration::from_secs(30);

/// Compares the entry `log_id` holds at `index` with `fingerprint`, the one a shard applied
/// there.
pub(super) async fn holds(
    log: &LogStoreClient<Channel>,
    log_id: &str,
    index: u64,
    fingerprint: u64,
) -> Held {
    if index == 0 || fingerprint == 0 {
        return Held::Same;
    }
    let mut request = tonic::Request::new(ReadRequest {
        from: index,
        to: index,
        max_batch_bytes: 0,
        follow: false,
    });
    request.set_timeout(READ_WAIT);
    // `Ok(Err(()))`: a response of another log.
    let read = async {
        let mut stream = log.clone().read(request).await?.into_inner();
        while let Some(response) = stream.message().await? {
            if response.log_id != log_id {
                return Ok(Err(()));
            }
            if let Some(entry) = response.entries.iter().find(|e| e.index == index) {
                return Ok(Ok(Some(crate::model::fingerprint(entry))));
            }
        }
        Ok::<_, tonic::Status>(Ok(None))
    };
    match tokio::time::timeout(READ_WAIT, read).await {
        Ok(Ok(Err(()))) => Held::AnotherLog,
        Ok(Ok(Ok(Some(held)))) if held == fingerprint => Held::Same,
        Ok(Ok(Ok(Some(held)))) => Held::Other(held),
        Ok(Ok(Ok(None))) => Held::Unknown(format!("the log does not hold index {index} (yet)")),
        Ok(Err(status)) => match Reason::of(&status) {
            Some(Reason::BelowRetention) => Held::Same,
            Some(Reason::Corrupt | Reason::EntryTooLarge) => {
                Held::Unchecked(format!("reading index {index} of the log: {status}"))
            }
            _ => Held::Unknown(format!("reading index {index} of the log: {status}")),
        },
        Err(_) => Held::Unknown(format!(
            "reading index {index} of the log took over {READ_WAIT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ReplicaStatus;

    /// Sure answers below the index conclude after GRACE, unsure ones in between do not
    /// reset them (a leader whose majority acknowledged it late, a follower answering
    /// while no leader was known), and only unsure answers conclude nothing, after GRACE
    /// from the first answer.
    #[test]
    fn unsure_answers_between_sure_ones_do_not_let_a_lost_log_through() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Below::default();
        assert_eq!(b.answered(true, at(0)), None);
        for ms in (200..5_000).step_by(200) {
            assert_eq!(b.answered(ms % 400 == 0, at(ms)), None, "at {ms} ms");
        }
        assert_eq!(
            b.answered(false, at(5_200)),
            None,
            "a sure answer came 200 ms ago"
        );
        assert_eq!(b.answered(true, at(5_400)), Some(true));
        // Only unsure answers: nothing to conclude, after GRACE from the first.
        let mut b = Below::default();
        assert_eq!(
            b.answered(false, at(60_000)),
            None,
            "no time without answers counts"
        );
        assert_eq!(b.answered(false, at(64_000)), None);
        assert_eq!(b.answered(false, at(65_000)), Some(false));
        // A sure answer, then only unsure ones for GRACE: it starts over.
        let mut b = Below::default();
        assert_eq!(b.answered(true, at(0)), None);
        assert_eq!(b.answered(false, at(4_000)), None);
        assert_eq!(b.answered(false, at(5_000)), Some(false));
    }

    /// Only a single-node LogStore, or a leader that applied an entry of its own term and
    /// that its majority acknowledged moments ago, knows where the log ends: a follower may
    /// lag, a leader restarted moments ago replays its log from the start before it applies
    /// anything of its term, and one cut off from its majority may have been replaced.
    #[test]
    fn only_a_caught_up_leader_or_a_single_node_knows_where_the_log_ends() {
        let replica = |role: &str, raft_term, applied_term| BoundsResponse {
            replica: Some(ReplicaStatus {
                role: role.into(),
                raft_term,
                applied_term,
                leads_a_majority: role == "leader",
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(knows_the_end(&BoundsResponse::default()), "single node");
        assert!(knows_the_end(&replica("leader", 7, 7)));
        let mut cut_off = replica("leader", 7, 7);
        cut_off.replica.as_mut().unwrap().leads_a_majority = false;
        assert!(
            !knows_the_end(&cut_off),
            "a leader its majority has not acknowledged"
        );
        assert!(!knows_the_end(&replica("leader", 7, 6)), "still replaying");
        assert!(!knows_the_end(&replica("leader", 0, 0)));
        for role in ["follower", "candidate", "learner"] {
            assert!(!knows_the_end(&replica(role, 7, 7)), "{role}");
        }
    }
}
