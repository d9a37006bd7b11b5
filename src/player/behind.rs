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

use crate::proto::BoundsRequest;
use crate::proto::log_store_client::LogStoreClient;

/// How long the log may stay below the index before the player concludes it lost entries:
/// a replicated log's new leader applies what its predecessor committed within
/// milliseconds of its election, and only a leader's (or a single-node LogStore's) answer
/// counts, so a replica that lags is never taken for a log that lost entries.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// How long one `Bounds` call may take.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// One answer about where the log ends.
enum Answer {
    Reaches,
    /// It ends at `last`, below the index; `sure` when the answer is a single-node LogStore's
    /// or its group leader's (a follower may lag).
    Below {
        last: u64,
        sure: bool,
    },
    /// No answer (the LogStore is down: the read that follows fails and is retried), or one
    /// from another log (the read that follows refuses it by name).
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
                let sure = b.replica.as_ref().is_none_or(|r| r.role == "leader");
                Answer::Below { last: b.last, sure }
            }
        }
        _ => Answer::None,
    }
}

/// `Ok` when the log `log_id` reaches `index` (or cannot be asked, or the player is
/// stopping); `Err(last)` when sure answers said it ends at `last`, below `index`, for
/// [`GRACE`].
pub(super) async fn reaches(
    log: &LogStoreClient<Channel>,
    log_id: &str,
    index: u64,
    shutdown: &CancellationToken,
) -> Result<(), u64> {
    if index == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let mut below_since: Option<Instant> = None;
    loop {
        match ask(log, log_id, index).await {
            Answer::Reaches | Answer::None => return Ok(()),
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
            // Only a lagging follower answered so far: nothing to conclude.
            Answer::Below { sure: false, .. } if started.elapsed() >= GRACE => return Ok(()),
            Answer::Below { sure: false, .. } => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
