//! The leader's monitor: refreshes the per-shard gauges, and every checkpoint interval
//! saves the ack cursors and lets the LogStore retain only what a shard still needs.

use super::{Shared, lock};
use crate::player::cursor::{CursorStore, Cursors};
use crate::player::metrics::Metrics;
use crate::proto::RetainRequest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one `Retain` may take before the checkpoint gives up on it (the next one
/// asks again).
const RETAIN_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    /// Refreshes the per-shard gauges often, and saves the ack cursors (then lets the
    /// LogStore drop what every shard has acknowledged, if asked) every checkpoint.
    pub(super) async fn monitor(self: Arc<Self>, cursors: Option<Arc<dyn CursorStore>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = tokio::time::Instant::now();
        let ids: Vec<String> = self.targets.iter().map(|t| t.id.clone()).collect();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            let known = self.refresh_gauges();
            if let Some(store) = &cursors
                && last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                last_checkpoint = tokio::time::Instant::now();
                self.checkpoint(store.as_ref(), known, &ids, true).await;
            }
        }
        // A last checkpoint on the way out, so a successor starts from fresh cursors. It
        // leaves retention to the successor: a LogStore that does not answer would hold up
        // the stop for a whole `RETAIN_WAIT`.
        if let Some(store) = &cursors {
            let known = self.refresh_gauges();
            self.checkpoint(store.as_ref(), known, &ids, false).await;
        }
    }

    /// Sets the acked-index and lag gauges; returns the cursors that are known: each shard's
    /// acknowledged index, and the index through which it has everything routed to it.
    fn refresh_gauges(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let m = &self.stats.metrics;
        // One snapshot of the dispatcher: the current index and, per shard, the last real
        // entry dispatched to it up to there.
        let (current, last_real) = {
            let d = lock(&self.dispatch);
            (d.current_index, d.last_real.clone())
        };
        m.current_index.set(current as i64);
        let mut acked = BTreeMap::new();
        let mut covered = BTreeMap::new();
        for (t, &real) in self.targets.iter().zip(&last_real) {
            let (last, vouched) = {
                let q = lock(&t.queue);
                (q.last_ack(), q.is_vouched())
            };
            // Everything dispatched to the shard up to `current` is acknowledged: the shard
            // has every entry for it through `current`.
            let through = if last >= real {
                current.max(last)
            } else {
                last
            };
            let label = Metrics::shard(&t.id);
            m.acked.get_or_create(&label).set(last as i64);
            m.lag
                .get_or_create(&label)
                .set(current.saturating_sub(through) as i64);
            // A shard whose word the log has not vouched for yet (see `vouch`) keeps the
            // cursor saved before: a shard ahead of a log put back would otherwise save an
            // index that lets retention drop what it needs once it is restored.
            if last > 0 && vouched {
                acked.insert(t.id.clone(), last);
                covered.insert(t.id.clone(), through);
            }
        }
        (acked, covered)
    }

    /// Saves the cursors, then (with `--retain-log`, and `retain`) lets the LogStore drop
    /// what every shard acknowledged.
    async fn checkpoint(
        &self,
        store: &dyn CursorStore,
        (acked, covered): (BTreeMap<String, u64>, BTreeMap<String, u64>),
        ids: &[String],
        retain: bool,
    ) {
        let log_ids = acked
            .keys()
            .map(|shard| (shard.clone(), self.log_id.clone()))
            .collect();
        let cursors = Cursors {
            epoch: self.config.epoch,
            acked,
            covered,
            log_ids,
        };
        if let Err(e) = store.save(&cursors).await {
            tracing::warn!(error = %e, "could not save the ack cursors");
            return;
        }
        if !self.config.retain_log || !retain {
            return;
        }
        // Only what every shard acknowledged, per the stored (merged) cursors, may go.
        let lowest = match store.load().await {
            Ok(saved) => saved.lowest(ids, &self.log_id),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the ack cursors back");
                None
            }
        };
        if let Some(lowest) = lowest
            && lowest > 0
        {
            // A stop does not wait for it (a save is never cut short: a cancelled save could
            // land after the last one and move a cursor back).
            let retained = tokio::select! {
                r = self.retain_on_leader(lowest + 1) => r,
                _ = self.shutdown.cancelled() => return,
            };
            match retained {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.segments_removed > 0 {
                        tracing::info!(
                            below = lowest + 1,
                            first = r.first,
                            removed = r.segments_removed,
                            "log retention"
                        );
                    }
                }
                Err(status) => tracing::warn!(%status, "log retention failed"),
            }
        }
    }

    /// `Retain` on the LogStore; a replica that does not lead names the leader, and the call
    /// goes there (retention is written through the replicated log).
    async fn retain_on_leader(
        &self,
        below: u64,
    ) -> Result<tonic::Response<crate::proto::RetainResponse>, tonic::Status> {
        // Bounded: a LogStore that accepts and never answers (frozen) must not stall the
        // monitor's gauges, nor the last checkpoint on the way out.
        let request = || {
            let mut r = tonic::Request::new(RetainRequest {
                below,
                log_id: self.log_id.clone(),
            });
            r.set_timeout(RETAIN_WAIT);
            r
        };
        let status = match self.log.clone().retain(request()).await {
            Ok(r) => return Ok(r),
            Err(status) => status,
        };
        let leader = (crate::grpc::Reason::of(&status) == Some(crate::grpc::Reason::NotLeader))
            .then(|| {
                status
                    .metadata()
                    .get(crate::grpc::LEADER_KEY)?
                    .to_str()
                    .ok()
            })
            .flatten();
        let Some(leader) = leader else {
            return Err(status);
        };
        let channel = crate::grpc::connect_lazy(leader, &crate::grpc::Expected::Log)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        crate::proto::log_store_client::LogStoreClient::new(channel)
            .retain(request())
            .await
    }
}
