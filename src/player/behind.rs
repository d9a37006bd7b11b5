//! A log that ends below what was delivered from it: its data directory put back to an
//! older copy (a restore from backup, a disk that lost acknowledged writes) under the same
//! log id. The entries appended to it next would take indexes the shards have applied
//! already, and each shard would skip them as applied, silently. So the player asks, at
//! start (against the highest index a shard applied), each time its main stream
//! (re)connects (against what it has read) and when a shard connects ahead of what it has
//! read (one that was down at the start), whether the log still reaches that far, and
//! stops naming both when it does not ([`super::PlayerError::LogBehind`]).
//!
//! What it cannot see: a log that has grown back past the shards by the time it is asked
//! (the indexes between were skipped by then). Telling that apart needs the content of the
//! shard's last applied entry, which the delivery protocol does not carry.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::proto::log_store_client::LogStoreClient;
use crate::proto::{BoundsRequest, BoundsResponse};

/// How long the log may stay below the index before the player concludes it lost entries.
/// Only answers that know the log's end count (a single-node LogStore's, or a leader's
/// that has applied an entry of its own term, so every entry committed before it led):
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
    /// No answer (the LogStore is down), or one from another log (the read that follows
    /// refuses it by name).
    None,
}

async fn ask(log: &LogStoreClient<Channel>, log_id: &str, index: u64) -> Answer {
    let mut request = tonic::Request::new(BoundsRequest {});
    request.set_timeout(ASK_WAIT);
    let mut client = log.clone();
    match tokio::time::timeout(ASK_WAIT, client.bounds(request)).await {
        Ok(Ok(b)) => {
            let b = b.into_inner();
            if b.log_id != log_id {
                Answer::None
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
/// led; Raft's leader commits one of its term when elected).
fn knows_the_end(b: &BoundsResponse) -> bool {
    b.replica
        .as_ref()
        .is_none_or(|r| r.role == "leader" && r.raft_term > 0 && r.applied_term == r.raft_term)
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
/// player is stopping); `Err(last)` when sure answers said it ends at `last`, below
/// `index`, for [`GRACE`]. `log` should reach the leader of a replicated log
/// (`fetch::leader_log`): a follower's answer is never sure.
pub(super) async fn reaches(
    log: &LogStoreClient<Channel>,
    log_id: &str,
    index: u64,
    unanswered: Unanswered,
    shutdown: &CancellationToken,
) -> Result<(), u64> {
    if index == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let mut below_since: Option<Instant> = None;
    let mut said_waiting = false;
    loop {
        match ask(log, log_id, index).await {
            Answer::Reaches => return Ok(()),
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
            Answer::Below { last, sure: true } => {
                let since = *below_since.get_or_insert_with(|| {
                    tracing::info!(
                        last,
                        index,
                        "the log ends below what was delivered from it; waiting {GRACE:?} for it to reach that far"
                    );
                    Instant::now()
                });
                if since.elapsed() >= GRACE {
                    return Err(last);
                }
            }
            // Only answers that do not know the log's end: nothing to conclude.
            Answer::Below { sure: false, .. } if started.elapsed() >= GRACE => return Ok(()),
            Answer::Below { sure: false, .. } => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ReplicaStatus;

    /// Only a single-node LogStore, or a leader that applied an entry of its own term, knows
    /// where the log ends: a follower may lag, and a leader restarted moments ago replays
    /// its log from the start before it applies anything of its term.
    #[test]
    fn only_a_caught_up_leader_or_a_single_node_knows_where_the_log_ends() {
        let replica = |role: &str, raft_term, applied_term| BoundsResponse {
            replica: Some(ReplicaStatus {
                role: role.into(),
                raft_term,
                applied_term,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(knows_the_end(&BoundsResponse::default()), "single node");
        assert!(knows_the_end(&replica("leader", 7, 7)));
        assert!(!knows_the_end(&replica("leader", 7, 6)), "still replaying");
        assert!(!knows_the_end(&replica("leader", 0, 0)));
        for role in ["follower", "candidate", "learner"] {
            assert!(!knows_the_end(&replica(role, 7, 7)), "{role}");
        }
    }
}
