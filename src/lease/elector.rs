//! The elector: the loop that drives a [`LeaseBackend`] (acquire, renew within the renew
//! deadline, release or resign) and publishes this replica's [`Role`] on a watch channel.

use super::{LeaseBackend, LeaseConfig, LeaseError, LeaseState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// This replica's role, as published by the elector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Not leading: do not send.
    #[default]
    Standby,
    /// Leading: send, stamping everything with `epoch`.
    Leader {
        /// The fencing epoch this replica leads under.
        epoch: u64,
    },
}

/// [`run_elector_with_resign`] without a way to resign.
pub async fn run_elector(
    backend: Arc<dyn LeaseBackend>,
    cfg: LeaseConfig,
    role_tx: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<(), LeaseError> {
    run_elector_with_resign(backend, cfg, role_tx, shutdown, Arc::new(Notify::new())).await
}

fn set_role(role_tx: &watch::Sender<Role>, role: Role) -> bool {
    role_tx.send_if_modified(|r| {
        let changed = *r != role;
        *r = role;
        changed
    })
}

/// Drives `backend` until `shutdown`, publishing this replica's [`Role`] on `role_tx`.
///
/// Every `retry_period` it calls [`LeaseBackend::try_acquire_or_renew`]:
/// - `Held { epoch }`: [`Role::Leader`] with that epoch (a new epoch after a lapse is published as a
///   new leadership).
/// - `Other`: step down at once.
/// - an error or an attempt that hangs: keep leading only until `renew_deadline` has passed
///   since the start of the last successful renewal, then step down. The deadline is
///   enforced even while an attempt is in flight, so a stuck store cannot keep us leading.
///
/// `resign.notify_one()` asks it to give up (e.g. the player was fenced by a higher epoch):
/// it steps down, releases the lease if it holds it, and sits out one `lease_duration`
/// before contending again, so a standby takes over. Requests made while it is busy are kept
/// (one permit) and handled next.
///
/// On `shutdown` it steps down first, then releases the lease if it was leading (best
/// effort, bounded by `renew_deadline`, errors logged) and returns `Ok(())`. It returns an
/// error only, at once, if `cfg` is invalid or `renew_deadline` is not shorter than the
/// backend's [`LeaseBackend::lease_duration`].
pub async fn run_elector_with_resign(
    backend: Arc<dyn LeaseBackend>,
    cfg: LeaseConfig,
    role_tx: watch::Sender<Role>,
    shutdown: CancellationToken,
    resign: Arc<Notify>,
) -> Result<(), LeaseError> {
    check_config(backend.as_ref(), &cfg)?;
    set_role(&role_tx, Role::Standby);
    let mut e = Elector {
        id: backend.identity().to_owned(),
        role_tx,
        leader_epoch: None,
        deadline: Instant::now(),
        observed: None,
    };
    let mut ticker = tokio::time::interval(cfg.retry_period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = resign.notified() => {
                let was = e.leader_epoch;
                e.step_down("resign requested");
                release_bounded(backend.as_ref(), cfg.renew_deadline).await;
                tracing::info!(identity = %e.id, was_leader_epoch = ?was, backoff = ?cfg.lease_duration, "resigned; sitting out one lease duration");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(cfg.lease_duration) => {}
                }
                ticker.reset_immediately();
                continue;
            }
            () = tokio::time::sleep_until(e.deadline), if e.leader_epoch.is_some() => {
                e.step_down("no renewal within renew_deadline");
                continue;
            }
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let budget = match e.leader_epoch {
            Some(_) => e.deadline.saturating_duration_since(started),
            None => cfg.renew_deadline,
        };
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(budget, backend.try_acquire_or_renew()) => r,
        };
        e.handle(outcome, started, budget, &cfg);
    }
    let was_leader = e.leader_epoch.is_some();
    e.step_down("shutdown");
    set_role(&e.role_tx, Role::Standby);
    if was_leader {
        release_bounded(backend.as_ref(), cfg.renew_deadline).await;
        tracing::info!(identity = %e.id, "shut down; lease released (best effort)");
    }
    Ok(())
}

/// The config must be valid and the renew deadline shorter than the backend's lease.
fn check_config(backend: &dyn LeaseBackend, cfg: &LeaseConfig) -> Result<(), LeaseError> {
    cfg.validate()?;
    if cfg.renew_deadline >= backend.lease_duration() {
        return Err(LeaseError::Config {
            reason: "renew_deadline must be shorter than the backend's lease duration",
            lease_duration: backend.lease_duration(),
            renew_deadline: cfg.renew_deadline,
            retry_period: cfg.retry_period,
        });
    }
    Ok(())
}

/// The elector's state between attempts.
struct Elector {
    id: String,
    role_tx: watch::Sender<Role>,
    /// The epoch we lead under, if we lead.
    leader_epoch: Option<u64>,
    /// While leading: when we must stop, unless a renewal succeeds first.
    deadline: Instant,
    /// The other holder last logged, so a standby logs each new leader once.
    observed: Option<(String, u64)>,
}

impl Elector {
    fn step_down(&mut self, why: &str) {
        if let Some(epoch) = self.leader_epoch.take() {
            set_role(&self.role_tx, Role::Standby);
            tracing::warn!(identity = %self.id, epoch, reason = why, "stepped down from leader");
        }
    }

    /// Acts on one attempt that started at `started` with `budget` to finish.
    fn handle(
        &mut self,
        outcome: Result<Result<LeaseState, LeaseError>, tokio::time::error::Elapsed>,
        started: Instant,
        budget: Duration,
        cfg: &LeaseConfig,
    ) {
        match outcome {
            Ok(Ok(LeaseState::Held { epoch })) => {
                self.deadline = started + cfg.renew_deadline;
                if self.leader_epoch != Some(epoch) {
                    self.leader_epoch = Some(epoch);
                    set_role(&self.role_tx, Role::Leader { epoch });
                    tracing::info!(identity = %self.id, epoch, "became leader");
                }
                self.observed = None;
            }
            Ok(Ok(LeaseState::Other { holder, epoch })) => {
                self.step_down("lease held by another");
                let seen = Some((holder, epoch));
                if self.observed != seen {
                    if let Some((holder, epoch)) = &seen {
                        tracing::info!(identity = %self.id, leader = %holder, epoch, "observed leader");
                    }
                    self.observed = seen;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(identity = %self.id, error = %e, "lease attempt failed");
                if self.leader_epoch.is_some() && Instant::now() >= self.deadline {
                    self.step_down("no renewal within renew_deadline");
                }
            }
            Err(_) => {
                tracing::warn!(identity = %self.id, timeout = ?budget, "lease attempt timed out");
                self.step_down("no renewal within renew_deadline");
            }
        }
    }
}

/// Best-effort release, logged, never longer than `limit`.
async fn release_bounded(backend: &dyn LeaseBackend, limit: Duration) {
    match tokio::time::timeout(limit, backend.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(identity = %backend.identity(), error = %e, "releasing the lease failed")
        }
        Err(_) => {
            tracing::warn!(identity = %backend.identity(), timeout = ?limit, "releasing the lease timed out")
        }
    }
}
