//! Failover on real processes: take the leader replica down (SIGKILL, SIGTERM or SIGSTOP)
//! and measure the time from then to the first entry a new leader delivered, as the shards
//! see it: the first durable commit under a higher epoch (shards report it in `Stats`).
//! Used by `demo`, `bench failover` and the tests.

use std::time::{Duration, Instant};

use crate::client::{ClientError, ShardConn};
use crate::harness::cluster::{Cluster, ClusterError};
use crate::model::now_micros;

/// How the leader is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takedown {
    /// SIGKILL: no chance to release the lease; standbys wait for it to expire.
    Kill,
    /// SIGTERM: the leader stops delivering and releases the lease.
    Term,
    /// SIGSTOP: frozen past its lease; the caller decides when to SIGCONT it.
    Stop,
}

impl std::fmt::Display for Takedown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Takedown::Kill => "SIGKILL",
            Takedown::Term => "SIGTERM",
            Takedown::Stop => "SIGSTOP",
        })
    }
}

/// One measured failover.
#[derive(Debug, Clone)]
pub struct Failover {
    pub takedown: Takedown,
    /// Player index of the leader taken down.
    pub old_leader: usize,
    pub old_epoch: u64,
    pub new_epoch: u64,
    /// Takedown to the first durable commit under the new epoch at any shard.
    pub millis: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("no replica holds the lease (is the lease file at {0} being written?)")]
    NoLeader(String),
    #[error("no shard saw a commit under an epoch above {old_epoch} within {waited:?}")]
    NoTakeover { old_epoch: u64, waited: Duration },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Waits until a replica holds the lease.
pub async fn wait_for_leader(
    c: &Cluster,
    timeout: Duration,
) -> Result<(usize, u64), FailoverError> {
    let start = Instant::now();
    loop {
        if let Some(found) = c.leader() {
            return Ok(found);
        }
        if start.elapsed() > timeout {
            return Err(FailoverError::NoLeader(
                c.lease_path().display().to_string(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The earliest first-commit time under an epoch above `epoch` across the shards, and
/// that epoch. Shards that do not answer are skipped.
async fn first_commit_above(c: &Cluster, epoch: u64) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for s in &c.shards {
        let Ok(conn) = ShardConn::connect(s.addr(), None).await else {
            continue;
        };
        let Ok(st) = conn.stats(false).await else {
            continue;
        };
        if st.epoch > epoch && st.epoch_first_commit_micros > 0 {
            let at = st.epoch_first_commit_micros;
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, st.epoch));
            }
        }
    }
    best
}

/// Takes the current leader down and measures the takeover. A killed or terminated leader
/// is restarted (as a standby) afterwards; a stopped one is left stopped.
pub async fn take_down_leader(
    c: &mut Cluster,
    how: Takedown,
    timeout: Duration,
) -> Result<Failover, FailoverError> {
    let (old, old_epoch) = c
        .leader()
        .ok_or_else(|| FailoverError::NoLeader(c.lease_path().display().to_string()))?;
    let t0 = now_micros();
    match how {
        Takedown::Kill => c.players[old].kill().await,
        Takedown::Term => {
            c.players[old].terminate(Duration::from_secs(10)).await;
        }
        Takedown::Stop => c.players[old].stop()?,
    }
    let start = Instant::now();
    let (at, new_epoch) = loop {
        if let Some(found) = first_commit_above(c, old_epoch).await {
            break found;
        }
        if start.elapsed() > timeout {
            return Err(FailoverError::NoTakeover {
                old_epoch,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if how != Takedown::Stop {
        c.players[old].restart().await?;
    }
    Ok(Failover {
        takedown: how,
        old_leader: old,
        old_epoch,
        new_epoch,
        millis: at.saturating_sub(t0) as f64 / 1000.0,
    })
}
