//! Recovery readers: fill a returning (or overflowing) shard's catch-up queue from the log,
//! tagged with the queue's term, and close each range with a watermark.

use super::fetch::Copies;
use super::queue::{Push, ReadDone, Recovery};
use super::{PlayerError, Shared, backoff, lock};
use crate::grpc::Reason;
use crate::model::now_micros;
use crate::proto::{BoundsRequest, Mutation, ReadRequest, ShardEntry};
use std::sync::Arc;

impl Shared {
    /// Reads `[from, to]` (and any extension) for target `t` into its catch-up queue, ending
    /// each range with a watermark so the shard's applied index reaches the range's end.
    pub(super) async fn recover(self: Arc<Self>, t: usize, rec: Recovery) {
        let target = &self.targets[t];
        let (mut from, mut to) = (rec.from, rec.to);
        let mut prev = from - 1;
        // The fingerprint of the entry at `to`, once read: the closing watermark carries it.
        let mut at_to = 0;
        let mut retry = backoff(&self.config, &format!("recovery {}", target.id));
        tracing::info!(shard = %target.id, term = rec.term, from, to, "recovery started");
        let problem = format!("recovery of shard {}", target.id);
        loop {
            // A recovery of an expired term (its shard reconnected and a newer one started)
            // stops retrying: during a LogStore outage, each reconnect would otherwise leave
            // one more behind, all opening `Read` streams at once when the log returns.
            let ignore_terms = crate::mutations::on(crate::mutations::Mutation::QueueIgnoresTerms);
            if self.shutdown.is_cancelled()
                || (!ignore_terms && lock(&target.queue).term() != rec.term)
            {
                return;
            }
            match self
                .read_range(t, rec.term, (from, to), &mut prev, &mut at_to)
                .await
            {
                Ok(Some(())) => {}
                Ok(None) => return, // stale term
                Err(status) => {
                    match Reason::of(&status) {
                        Some(Reason::BelowRetention) => {
                            let first = self.first_index().await.unwrap_or(0);
                            self.fail(PlayerError::Retention {
                                shard: target.id.clone(),
                                needed: from,
                                first,
                            });
                            return;
                        }
                        Some(reason @ (Reason::EntryTooLarge | Reason::Corrupt)) => {
                            // As on the main stream: retrying will not help until somebody
                            // acts, so say it once, loudly, and in `/readyz`.
                            let message = format!(
                                "cannot read the log for shard {}: {}",
                                target.id,
                                status.message()
                            );
                            if self.stats.metrics.set_problem(&problem, &message) {
                                tracing::error!(shard = %target.id, reason = reason.as_str(), %message, "a recovery read is stalled; retrying slowly");
                            }
                        }
                        _ => {
                            tracing::warn!(shard = %target.id, %status, "recovery read failed; retrying")
                        }
                    }
                    tokio::time::sleep(retry.next()).await;
                    continue;
                }
            }
            self.stats.metrics.clear_problem(&problem);
            retry = backoff(&self.config, &format!("recovery {}", target.id));
            // The range is read: close it with a watermark at `to`.
            let wm = ShardEntry {
                index: to,
                prev_index: prev,
                dispatch_micros: now_micros(),
                fingerprint: at_to,
                ..Default::default()
            };
            let done = {
                let mut q = lock(&target.queue);
                if prev < to {
                    q.push_catchup(rec.term, wm);
                }
                q.read_done(rec.term, to)
            };
            match done {
                ReadDone::Complete => {
                    target.ready.notify_one();
                    tracing::info!(shard = %target.id, term = rec.term, to, "recovery read complete");
                    return;
                }
                ReadDone::Continue { from: f, to: t2 } => {
                    from = f;
                    to = t2;
                    at_to = 0;
                }
                ReadDone::Stale => return,
            }
        }
    }

    /// One pass over `[from, to]`; `Ok(None)` when the term expired. Advances `prev` past
    /// what was pushed so a retry resumes there, and sets `at_to` to the fingerprint of the
    /// entry at `to` when it reads it.
    async fn read_range(
        &self,
        t: usize,
        term: u64,
        (from, to): (u64, u64),
        prev: &mut u64,
        at_to: &mut u64,
    ) -> Result<Option<()>, tonic::Status> {
        let target = &self.targets[t];
        let start = (*prev + 1).max(from);
        if start > to {
            return Ok(Some(()));
        }
        let mut stream = self
            .log
            .clone()
            .read(ReadRequest {
                from: start,
                to,
                max_batch_bytes: 0,
                follow: false,
            })
            .await?
            .into_inner();
        // The highest index the stream delivered, for this shard or not.
        let mut seen_to = start - 1;
        while let Some(resp) = stream.message().await? {
            if resp.log_id != self.log_id {
                return Err(tonic::Status::failed_precondition(format!(
                    "the LogStore now serves log {}, not {}",
                    resp.log_id, self.log_id
                )));
            }
            super::fetch::in_order(seen_to + 1, to, &resp.entries)?;
            let ours = |m: &&Mutation| self.config.shards.shard_of(&m.key) == t;
            let bytes = resp.entries.iter().flat_map(|e| &e.mutations).filter(ours);
            let mut copies = Copies::with_capacity(bytes.map(Copies::len_of).sum());
            for entry in resp.entries {
                seen_to = seen_to.max(entry.index);
                if entry.index == to {
                    *at_to = crate::model::fingerprint(&entry);
                }
                let mutations: Vec<Mutation> = entry
                    .mutations
                    .iter()
                    .filter(ours)
                    .map(|m| copies.copy(m))
                    .collect();
                if mutations.is_empty() {
                    continue;
                }
                let part = ShardEntry {
                    index: entry.index,
                    prev_index: *prev,
                    mutations,
                    append_start_micros: entry.append_start_micros,
                    dispatch_micros: now_micros(),
                    fingerprint: crate::model::fingerprint(&entry),
                };
                if !self.push_when_room(target, term, part).await {
                    return Ok(None);
                }
                *prev = entry.index;
            }
        }
        // A read without `follow` ends at the server's last index: a replica of a
        // replicated log that is behind ends the range early. Closing it with a watermark
        // would skip what that replica did not have yet, so read again instead.
        if seen_to < to {
            return Err(tonic::Status::unavailable(format!(
                "the LogStore served the range only up to {seen_to} of {to} (a replica behind the leader); reading it again"
            )));
        }
        Ok(Some(()))
    }

    /// Waits for room in the catch-up queue (bounded memory), then pushes `part`; `false`
    /// when the term expired or the player is stopping.
    async fn push_when_room(&self, target: &super::Target, term: u64, part: ShardEntry) -> bool {
        let mut part = Some(part);
        loop {
            let room = target.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // None: no room yet; Some(pushed?) otherwise.
            let outcome = {
                let mut q = lock(&target.queue);
                if q.catchup_has_room(term) {
                    part.take().map(|p| q.push_catchup(term, p))
                } else {
                    None
                }
            };
            match outcome {
                Some(Push::Queued) => {
                    target.ready.notify_one();
                    return true;
                }
                Some(Push::DroppedAcked) => return true,
                Some(_) => return false,
                None => {}
            }
            tokio::select! {
                _ = room => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    pub(super) async fn first_index(&self) -> Option<u64> {
        let b = self.log.clone().bounds(BoundsRequest {}).await.ok()?;
        Some(b.into_inner().first)
    }
}
