//! One player replica under a lease: hot standby until it wins the lease, then leader with
//! the lease's epoch as its fencing token, until it loses or cannot renew the lease (it
//! stops sending at once), is fenced by a shard (it steps down and resigns the lease), or
//! is asked to shut down (it stops delivering, saves its cursors, then releases the lease
//! so a standby takes over without waiting for expiry).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Player, PlayerConfig, PlayerError, PlayerStats};
use crate::lease::{self, LeaseBackend, LeaseConfig, Role};
use crate::player::cursor::CursorStore;

/// A replica's settings.
pub struct ReplicaConfig {
    /// The delivery settings; `epoch` is replaced by each epoch the lease gives it.
    pub player: PlayerConfig,
    pub lease: LeaseConfig,
    pub cursors: Option<Arc<dyn CursorStore>>,
    /// Fault injection for tests: ignore the loss of the lease and keep delivering until a
    /// shard fences this replica (a leader paused between its lease check and its send).
    pub keep_leading_after_loss: bool,
}

/// Waits until `role` is no longer `Leader { epoch }` (or the elector is gone).
async fn lost(role: &mut watch::Receiver<Role>, epoch: u64) {
    loop {
        if *role.borrow_and_update() != (Role::Leader { epoch }) {
            return;
        }
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until this replica leads (its epoch) or shutdown / the elector's end (`None`).
async fn wait_to_lead(
    role: &mut watch::Receiver<Role>,
    shutdown: &CancellationToken,
) -> Option<u64> {
    loop {
        if let Role::Leader { epoch } = *role.borrow_and_update() {
            return Some(epoch);
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return None },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Shows the cursors the last leader saved as each shard's acked index, until the shard
/// answers (its own applied index, asked next by `Player::start`, stays the truth).
async fn show_saved_cursors(config: &ReplicaConfig, stats: &PlayerStats) {
    let Some(store) = &config.cursors else {
        return;
    };
    let m = &stats.metrics;
    match store.load().await {
        Ok(saved) => {
            tracing::info!(saved_by_epoch = saved.epoch, cursors = ?saved.acked, "read the ack cursors");
            for (shard, index) in &saved.acked {
                m.acked
                    .get_or_create(&crate::player::metrics::Metrics::shard(shard))
                    .set(*index as i64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the ack cursors"),
    }
}

/// Whether a fencing by epoch `seen`, while leading under `epoch`, can only be an epoch the
/// lease never gave: it is above ours, and we still lead and hold the lease (nobody took
/// it from us, so no holder was given `seen`). Otherwise a newer leader fenced us, as it
/// should, and we resign.
async fn never_given(
    seen: u64,
    epoch: u64,
    role: &watch::Receiver<Role>,
    backend: &dyn LeaseBackend,
) -> bool {
    seen > epoch && *role.borrow() == (Role::Leader { epoch }) && still_hold(backend, epoch).await
}

/// Whether this replica still holds the lease at `epoch`: then `epoch` is the highest the
/// lease ever gave (epochs only grow, by acquisition, and nobody acquired since us). Asked
/// only while the elector still sees this replica leading, so the call renews our own live
/// lease rather than acquiring a free one.
async fn still_hold(backend: &dyn LeaseBackend, epoch: u64) -> bool {
    match backend.try_acquire_or_renew().await {
        Ok(lease::LeaseState::Held { epoch: held }) => held == epoch,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the lease after being fenced");
            false
        }
    }
}

/// The player's flags checked, and a warning when a fault is injected.
fn checked(config: &ReplicaConfig) -> Result<(), PlayerError> {
    config.player.validate()?;
    if config.keep_leading_after_loss {
        tracing::warn!(
            "FAULT INJECTION (--fault-keep-leading): this replica keeps delivering after it \
             loses its lease, and only the shards' epoch fencing stops it; for tests and the \
             demo, never in production"
        );
    }
    Ok(())
}

/// Runs a replica until `shutdown`; returns an error only for a problem no other replica
/// could get past either (a bad setting, a log that lost entries a shard needs).
pub async fn run(
    config: ReplicaConfig,
    backend: Arc<dyn LeaseBackend>,
    stats: Arc<PlayerStats>,
    shutdown: CancellationToken,
) -> Result<(), PlayerError> {
    checked(&config)?;
    let (role_tx, mut role) = watch::channel(Role::Standby);
    let elector_stop = CancellationToken::new();
    let resign = Arc::new(tokio::sync::Notify::new());
    let elector = tokio::spawn(lease::run_elector_with_resign(
        backend.clone(),
        config.lease,
        role_tx,
        elector_stop.clone(),
        resign.clone(),
    ));
    let m = &stats.metrics;
    let outcome = loop {
        m.leader.set(0);
        m.set_ready(true);
        // Standby: wait for the lease.
        let epoch = wait_to_lead(&mut role, &shutdown).await;
        let Some(epoch) = epoch else { break Ok(()) };
        m.leader.set(1);
        m.epoch.set(epoch as i64);
        m.failovers.inc();
        tracing::info!(epoch, identity = backend.identity(), "leading");
        show_saved_cursors(&config, &stats).await;
        let leading = shutdown.child_token();
        let mut player_config = config.player.clone();
        player_config.epoch = epoch;
        let player = match Player::start(player_config, stats.clone(), leading.clone()).await {
            Ok(p) => p,
            // Shut down while it waited for the LogStore: a clean stop.
            Err(PlayerError::Stopped) => break Ok(()),
            Err(e) => break Err(e),
        };
        let player = match &config.cursors {
            Some(c) => player.with_cursors(c.clone()),
            None => player,
        };
        let run = player.run();
        tokio::pin!(run);
        let lease_lost = async {
            if config.keep_leading_after_loss {
                std::future::pending::<()>().await;
            }
            lost(&mut role, epoch).await
        };
        let ended = tokio::select! {
            r = &mut run => Some(r),
            _ = lease_lost => None,
            _ = shutdown.cancelled() => None,
        };
        let result = match ended {
            Some(r) => r,
            None => {
                // Lost the lease or shutting down: stop sending now, drain acks briefly.
                leading.cancel();
                run.await
            }
        };
        m.leader.set(0);
        match result {
            Ok(()) if shutdown.is_cancelled() => break Ok(()),
            Ok(()) => tracing::warn!(epoch, "stepped down: lost the lease"),
            Err(PlayerError::Fenced {
                shard,
                highest: Some(seen),
                ..
            }) if never_given(seen, epoch, &role, backend.as_ref()).await => {
                // Nobody took the lease from us, so no holder was ever given `seen`.
                break Err(PlayerError::UnknownEpoch {
                    shard,
                    seen,
                    lease_epoch: epoch,
                    remedy: backend.raise_epoch_hint(seen),
                });
            }
            Err(e @ PlayerError::Fenced { .. }) => {
                tracing::warn!(epoch, error = %e, "fenced by a newer leader; resigning");
                resign.notify_one();
                // Wait until the elector has let go before contending again.
                lost(&mut role, epoch).await;
            }
            Err(e) => break Err(e),
        }
    };
    m.set_ready(false);
    // Only now (no more sends) give the lease up so a standby takes over at once.
    elector_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease that answers one state (`None`: an error).
    struct Answers(Option<lease::LeaseState>);

    #[tonic::async_trait]
    impl LeaseBackend for Answers {
        async fn try_acquire_or_renew(&self) -> Result<lease::LeaseState, lease::LeaseError> {
            self.0.clone().ok_or_else(|| lease::LeaseError::Io {
                path: "lease".into(),
                source: std::io::Error::other("the store failed"),
            })
        }
        async fn release(&self) -> Result<(), lease::LeaseError> {
            Ok(())
        }
        fn identity(&self) -> &str {
            "p"
        }
        fn lease_duration(&self) -> Duration {
            Duration::from_secs(2)
        }
    }

    /// A fencing is an epoch the lease never gave only when it is above ours and we still
    /// lead and hold the lease; a newer leader's fencing (the lease moved on, or our elector
    /// already stepped down) is a resignation, not a stop telling the operator to raise
    /// the lease's epoch.
    #[tokio::test]
    async fn a_fencing_is_an_unknown_epoch_only_while_we_still_hold_the_lease() {
        let held = |e| Answers(Some(lease::LeaseState::Held { epoch: e }));
        let other = Answers(Some(lease::LeaseState::Other {
            holder: "q".into(),
            epoch: 6,
        }));
        let leading = watch::channel(Role::Leader { epoch: 5 }).1;
        let standby = watch::channel(Role::Standby).1;
        assert!(never_given(6, 5, &leading, &held(5)).await);
        for (seen, role, backend, why) in [
            (5, &leading, &held(5), "not above ours"),
            (6, &standby, &held(5), "our elector stepped down"),
            (6, &leading, &other, "another holds the lease"),
            (6, &leading, &held(6), "the lease moved on to another term"),
            (6, &leading, &Answers(None), "the lease cannot be read"),
        ] {
            assert!(!never_given(seen, 5, role, backend).await, "{why}");
        }
    }
}
