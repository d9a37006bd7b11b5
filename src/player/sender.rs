//! One sender per shard: keeps a bidirectional `Deliver` stream up (Hello with the epoch,
//! the log id, the shard id the map expects and the entry limit; batches within the
//! in-flight window; cumulative acks), checks the shard's Welcome, and reconnects with
//! backoff. A shard that refuses this player for a reason that retrying cannot fix (wrong
//! shard, wrong log, a smaller entry limit, an entry it cannot take) is reported once at
//! ERROR, in `shard_refused` and in `/readyz`, and retried slowly; the other shards go on.

use super::{PlayerError, Shared, Target, backoff, lock};
use crate::grpc::{self, Reason};
use crate::model::now_micros;
use crate::player::metrics::{Metrics, RefusalLabel};
use crate::proto::shard_client::ShardClient;
use crate::proto::{Batch, DeliverRequest, Hello, Welcome, deliver_request, deliver_response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

impl Shared {
    /// Keeps one shard's delivery stream up for the life of the player.
    pub(super) async fn sender(self: Arc<Self>, t: usize) {
        let target = &self.targets[t];
        let mut retry = backoff(&self.config, &format!("sender {}", target.id));
        // The last reason a stream broke, reported at WARN once (again only when it
        // changes), so that an unreachable shard says why without a line per retry.
        let mut last_broken: Option<String> = None;
        while !self.shutdown.is_cancelled() {
            let mut slow = false;
            let mut opened = false;
            let ended = self.deliver_session(t, &mut opened).await;
            if opened {
                // A stream was up: the next break is news, whatever its reason.
                last_broken = None;
            }
            match ended {
                Ok(()) => retry = backoff(&self.config, &format!("sender {}", target.id)),
                Err(SessionEnd::Fenced { message, highest }) => {
                    self.fail(PlayerError::Fenced {
                        shard: target.id.clone(),
                        message,
                        highest,
                    });
                    return;
                }
                Err(SessionEnd::Refused { reason, message }) => {
                    self.refused(target, reason, &message);
                    slow = true;
                }
                Err(SessionEnd::Broken(reason)) => {
                    if last_broken.as_deref() == Some(reason.as_str()) {
                        tracing::debug!(shard = %target.id, %reason, "delivery stream ended");
                    } else {
                        tracing::warn!(shard = %target.id, addr = %target.addr, %reason, "no delivery stream to the shard; retrying");
                        last_broken = Some(reason);
                    }
                }
            }
            lock(&target.queue).suspend();
            target.room.notify_waiters();
            if self.shutdown.is_cancelled() {
                return;
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.stats
                .metrics
                .reconnects
                .get_or_create(&Metrics::shard(&target.id))
                .inc();
            // A refusal will not go away by itself: retry at the slowest pace.
            let wait = if slow {
                self.config.backoff_max
            } else {
                retry.next()
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Whether the log still reaches `applied`, the index a shard ahead of what the main
    /// stream has read (one that was down when the player started) says it applied (see
    /// `behind`); when not, the player stops, naming both.
    async fn log_reaches(&self, target: &Target, applied: u64) -> bool {
        if applied <= lock(&self.dispatch).current_index {
            return true;
        }
        let log = self.main_stream_log().await;
        let wait = super::behind::Unanswered::Wait;
        let Err(unreached) =
            super::behind::reaches(&log, &self.log_id, applied, wait, &self.shutdown).await
        else {
            return true;
        };
        let who = format!("shard {} has applied", target.id);
        self.fail(unreached.error(&self.config.logstore, &self.log_id, who, applied));
        false
    }

    /// Whether the log still has what the shard applied from it: it reaches the shard's
    /// applied index, and holds there the entry the shard applied. When not, the player
    /// stops.
    async fn log_keeps(
        &self,
        target: &Target,
        applied: u64,
        fingerprint: u64,
    ) -> Result<bool, SessionEnd> {
        Ok(self.log_reaches(target, applied).await
            && self.log_holds(target, applied, fingerprint).await?)
    }

    /// Whether the log holds, at the shard's applied index, the entry the shard applied
    /// there (`fingerprint`, see `behind::holds`); when not, the player stops, naming both.
    /// A log that cannot say yet is `Broken` (asked again, see `wait_until_log_keeps`), so
    /// nothing is delivered unchecked.
    async fn log_holds(
        &self,
        target: &Target,
        applied: u64,
        fingerprint: u64,
    ) -> Result<bool, SessionEnd> {
        let log = self.main_stream_log().await;
        match super::behind::holds(&log, &self.log_id, applied, fingerprint).await {
            // Another log: the main stream refuses it by name and stops the player.
            super::behind::Held::Same | super::behind::Held::AnotherLog => Ok(true),
            super::behind::Held::Unchecked(why) => {
                tracing::warn!(shard = %target.id, applied, %why, "cannot check the shard's last applied entry against the log; delivering unchecked");
                Ok(true)
            }
            super::behind::Held::Unknown(why) => Err(SessionEnd::Broken(format!(
                "cannot check the shard's last applied entry against the log: {why}"
            ))),
            super::behind::Held::Other(held) => {
                self.fail(PlayerError::LogDiverged {
                    addr: self.config.logstore.clone(),
                    log_id: self.log_id.clone(),
                    who: format!("shard {} applied", target.id),
                    index: applied,
                    held,
                    had: fingerprint,
                });
                Ok(false)
            }
        }
    }

    /// `log_keeps`, asked again while the log cannot say (unreachable, or a replica
    /// behind): the shard's stream stays open and its queue keeps filling, but nothing is
    /// sent until the log answers. `false` when the player stops.
    async fn wait_until_log_keeps(
        &self,
        target: &Target,
        (applied, fingerprint): (u64, u64),
        inbound: &mut tonic::Streaming<crate::proto::DeliverResponse>,
    ) -> Result<bool, SessionEnd> {
        let mut retry = backoff(&self.config, &format!("log check {}", target.id));
        let mut said = false;
        let gone = |m: Result<Option<_>, tonic::Status>| match m {
            Ok(Some(_)) => SessionEnd::Broken("unexpected response".into()),
            Ok(None) => SessionEnd::Broken("shard closed the stream".into()),
            Err(status) => classify(status),
        };
        loop {
            // The shard may leave while the log is asked (which can take half a minute).
            let kept = tokio::select! {
                kept = self.log_keeps(target, applied, fingerprint) => kept,
                m = inbound.message() => return Err(gone(m)),
                _ = self.shutdown.cancelled() => return Ok(false),
            };
            let why = match kept {
                Err(SessionEnd::Broken(why)) => why,
                other => return other,
            };
            if !said {
                tracing::warn!(shard = %target.id, applied, %why, "nothing is sent to the shard until the log answers; asking again");
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry.next()) => {}
                _ = self.shutdown.cancelled() => return Ok(false),
                m = inbound.message() => return Err(gone(m)),
            }
        }
    }

    /// Opens a delivery stream to target `t`: Hello out, Welcome in and checked. Returns
    /// the request sender, the response stream and the shard's applied index with the
    /// fingerprint of its entry.
    async fn open_session(&self, t: usize) -> Result<Session, SessionEnd> {
        let target = &self.targets[t];
        let broken = |e: &dyn std::fmt::Display| SessionEnd::Broken(e.to_string());
        let channel = grpc::connect(&target.addr, &grpc::Expected::Shard(target.id.clone()))
            .await
            .map_err(|e| connect_failed(&e))?;
        let limit = crate::limits::message_limit(self.config.max_entry_bytes);
        let mut client = ShardClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let (tx, rx) = mpsc::channel(self.config.window_batches + 1);
        let hello = DeliverRequest {
            msg: Some(deliver_request::Msg::Hello(Hello {
                epoch: self.config.epoch,
                player_id: self.config.player_id.clone(),
                log_id: self.log_id.clone(),
                shard_id: target.id.clone(),
                // A LogStore too old to say its limit (0): the player's own, which holds
                // every entry it decodes (0 in a Hello is refused as malformed).
                max_entry_bytes: match self.log_max_entry_bytes {
                    0 => self.config.max_entry_bytes as u64,
                    log => log,
                },
                slots: target.slots.clone(),
            })),
        };
        tx.send(hello).await.map_err(|e| broken(&e))?;
        let mut inbound = client
            .deliver(ReceiverStream::new(rx))
            .await
            .map_err(classify)?
            .into_inner();
        let applied = match inbound.message().await.map_err(classify)? {
            Some(r) => match r.msg {
                Some(deliver_response::Msg::Welcome(w)) => self.check_welcome(target, &w)?,
                _ => {
                    return Err(SessionEnd::Broken(
                        "first response was not a Welcome".into(),
                    ));
                }
            },
            None => return Err(SessionEnd::Broken("stream ended before Welcome".into())),
        };
        Ok((tx, inbound, applied))
    }

    /// The shard came back with `applied` durable: its queue resumes (see `Queue::resume`),
    /// and a recovery reads what the main stream has passed since.
    fn resume(&self, t: usize, applied: u64) {
        let target = &self.targets[t];
        // Resume under the dispatcher's lock: no main-stream push can slip between reading
        // current_index and the queue's state change.
        let recovery = {
            let d = lock(&self.dispatch);
            let mut q = lock(&target.queue);
            if applied < q.last_ack() {
                // The shard acknowledges only what is durable: it lost commits (a damaged
                // disk, a restore from an older copy). Sent again from the log below, if the
                // log still holds them; said because the cause is outside LogPlayer.
                tracing::error!(shard = %target.id, applied, acknowledged = q.last_ack(), "the shard went back below what it had acknowledged: its store lost acknowledged commits (a damaged disk, or a restore from an older copy); sending them again from the log");
            }
            let rec = q.resume(applied, d.current_index);
            tracing::info!(shard = %target.id, applied, current = d.current_index, term = q.term(), state = q.state().short(), "shard connected");
            rec
        };
        if let Some(rec) = recovery {
            self.spawn_recovery(t, rec);
        }
    }

    /// One connection: hello, resume, then batches out and acks in until it breaks.
    /// `opened` is set once the shard has welcomed the stream and the log was found to
    /// still have what it applied.
    async fn deliver_session(&self, t: usize, opened: &mut bool) -> Result<(), SessionEnd> {
        let target = &self.targets[t];
        let broken = |e: &dyn std::fmt::Display| SessionEnd::Broken(e.to_string());
        let (tx, mut inbound, (applied, fingerprint)) = self.open_session(t).await?;
        self.resume(t, applied);
        // Checked after the resume, so that the log's answer overlaps the recovery's first
        // read, and before anything is sent: the check gates delivery, not queueing. On
        // failure, the session's end suspends the queue, which stops the recovery.
        if !self
            .wait_until_log_keeps(target, (applied, fingerprint), &mut inbound)
            .await?
        {
            return Ok(()); // the player stops, or the log holds other entries
        }
        lock(&target.queue).vouch();
        *opened = true;
        self.accepted(target);
        let mut in_flight = InFlight::default();
        // The highest index the shard can acknowledge on this stream.
        let mut sent_through = applied;
        // Batches within the log's limit too: a shard takes messages up to its own limit,
        // which its Hello check holds at or above the log's, not at the player's (which may
        // be larger).
        let log_limit = usize::try_from(self.log_max_entry_bytes).unwrap_or(usize::MAX);
        let batch_bytes = crate::limits::batch_budget(
            self.config.batch_bytes,
            self.config.batch_bytes,
            match log_limit {
                0 => self.config.max_entry_bytes,
                log => log.min(self.config.max_entry_bytes),
            },
        );
        loop {
            // Fill the window.
            while in_flight.has_room(&self.config) {
                let batch = lock(&target.queue).next_batch(self.config.batch_entries, batch_bytes);
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                    break;
                };
                let (first, last) = (first.index, last.index);
                let dispatched = batch.iter().map(|e| e.dispatch_micros).min().unwrap_or(0);
                target.room.notify_waiters();
                let bytes = batch.iter().map(prost::Message::encoded_len).sum();
                in_flight.push(Sent {
                    first,
                    last,
                    dispatched,
                    bytes,
                });
                sent_through = last;
                let msg = DeliverRequest {
                    msg: Some(deliver_request::Msg::Batch(Batch { entries: batch })),
                };
                tx.send(msg).await.map_err(|e| broken(&e))?;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    // Drain: wait briefly for what is in flight to be acknowledged.
                    let deadline = tokio::time::sleep(Duration::from_secs(2));
                    tokio::pin!(deadline);
                    while !in_flight.is_empty() {
                        tokio::select! {
                            m = inbound.message() => match m {
                                Ok(Some(r)) => if let Some(deliver_response::Msg::Ack(a)) = r.msg {
                                    self.acked(target, &mut in_flight, a.applied_index, sent_through);
                                },
                                _ => break,
                            },
                            _ = &mut deadline => break,
                        }
                    }
                    return Ok(());
                }
                m = inbound.message() => {
                    let m = m.map_err(|status| undeliverable(status, in_flight.front()));
                    match m? {
                        Some(r) => match r.msg {
                            Some(deliver_response::Msg::Ack(a)) => {
                                self.acked(target, &mut in_flight, a.applied_index, sent_through);
                            }
                            _ => return Err(SessionEnd::Broken("unexpected response".into())),
                        },
                        None => return Err(SessionEnd::Broken("shard closed the stream".into())),
                    }
                }
                _ = target.ready.notified(), if in_flight.has_room(&self.config) => {}
            }
        }
    }

    /// A cumulative ack of `applied` on a stream that sent up to `sent_through`: record
    /// what it counts for ([`ack_within`]; one place for the stream's acks and those taken
    /// while it drains at shutdown), observe the delivery delay of the batches it covers,
    /// and free their window slots.
    fn acked(&self, target: &Target, in_flight: &mut InFlight, applied: u64, sent_through: u64) {
        let applied = ack_within(applied, sent_through);
        lock(&target.queue).on_ack(applied);
        let now = now_micros();
        let delay = self
            .stats
            .metrics
            .delivery_delay
            .get_or_create(&Metrics::shard(&target.id));
        for sent in in_flight.acked(applied) {
            if sent.dispatched > 0 {
                delay.observe(now.saturating_sub(sent.dispatched) as f64 / 1e6);
            }
        }
    }
}

/// One batch sent and not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct Sent {
    first: u64,
    last: u64,
    /// The earliest dispatch time of its entries (wall-clock microseconds).
    dispatched: u64,
    /// Its entries' encoded bytes.
    bytes: usize,
}

/// The batches in flight to one shard, oldest first, and their bytes: the window is full
/// at `window_batches` batches or `window_bytes` bytes (a batch always goes when none is in
/// flight, so one batch may take it past the byte limit).
#[derive(Debug, Default)]
struct InFlight {
    batches: std::collections::VecDeque<Sent>,
    bytes: usize,
}

impl InFlight {
    fn has_room(&self, config: &super::PlayerConfig) -> bool {
        self.room_within(config.window_batches, config.window_bytes)
    }

    fn room_within(&self, batches: usize, bytes: usize) -> bool {
        self.batches.is_empty() || (self.batches.len() < batches && self.bytes < bytes)
    }

    fn push(&mut self, sent: Sent) {
        self.bytes += sent.bytes;
        self.batches.push_back(sent);
    }

    /// Removes and returns the batches a cumulative ack of `applied` covers.
    fn acked(&mut self, applied: u64) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(&sent) = self.batches.front() {
            if sent.last > applied {
                break;
            }
            self.bytes -= sent.bytes;
            out.push(sent);
            self.batches.pop_front();
        }
        out
    }

    fn front(&self) -> Option<&Sent> {
        self.batches.front()
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

impl Shared {
    /// Checks a shard's Welcome (see [`check_welcome`]); returns its applied index and the
    /// fingerprint of its entry.
    fn check_welcome(&self, target: &Target, w: &Welcome) -> Result<(u64, u64), SessionEnd> {
        let log = (self.log_id.as_str(), self.log_max_entry_bytes);
        check_welcome(&target.id, &target.addr, log, w)
            .map(|applied| (applied, w.applied_fingerprint))
            .map_err(|(reason, message)| SessionEnd::Refused { reason, message })
    }

    /// Reports a refusal: the metric and `/readyz` always, the log at ERROR only when it is
    /// new (not on every retry).
    fn refused(&self, target: &Target, reason: Reason, message: &str) {
        let m = &self.stats.metrics;
        m.refused
            .get_or_create(&RefusalLabel {
                shard: target.id.clone(),
                reason: reason.as_str().to_owned(),
            })
            .set(1);
        let what = format!("shard {}", target.id);
        if m.set_problem(&what, &format!("{}: {message}", reason.as_str())) {
            tracing::error!(shard = %target.id, addr = %target.addr, reason = reason.as_str(), %message, "the shard refuses this player; retrying slowly until it is fixed");
        } else {
            tracing::debug!(shard = %target.id, reason = reason.as_str(), "still refused");
        }
    }

    /// The shard accepted a session: clear any refusal it was reported for.
    fn accepted(&self, target: &Target) {
        let m = &self.stats.metrics;
        if m.clear_problem(&format!("shard {}", target.id)) {
            for reason in Reason::ALL {
                let label = RefusalLabel {
                    shard: target.id.clone(),
                    reason: reason.as_str().to_owned(),
                };
                if m.refused.get(&label).is_some() {
                    m.refused.get_or_create(&label).set(0);
                }
            }
            tracing::info!(shard = %target.id, "the shard accepts this player again");
        }
    }
}

/// Checks a shard's Welcome against the map and the log, whatever the shard itself checked
/// (a shard of another implementation may not check the Hello's ids): the shard must be
/// the one the map names at this address, bound to this player's log (`log`: its id and
/// entry limit; or to none yet), taking entries as large as the log's (0: a limit not
/// said). Returns the shard's applied index, or the refusal.
pub(super) fn check_welcome(
    expected: &str,
    addr: &str,
    (log_id, log_limit): (&str, u64),
    w: &Welcome,
) -> Result<u64, (Reason, String)> {
    if w.shard_id != expected {
        return Err((
            Reason::WrongShard,
            format!(
                "the shard at {addr} reports id {:?}, but the shard map says {expected:?} is there; nothing was sent",
                w.shard_id
            ),
        ));
    }
    if !w.log_id.is_empty() && w.log_id != log_id {
        return Err((
            Reason::WrongLog,
            format!(
                "shard {expected:?} at {addr} is bound to log {}, but this player delivers log {log_id}; nothing was sent",
                w.log_id
            ),
        ));
    }
    if w.max_entry_bytes != 0 && log_limit != 0 && w.max_entry_bytes < log_limit {
        return Err((
            Reason::EntryLimit,
            format!(
                "shard {expected:?} at {addr} takes entries up to {} bytes, but log {log_id} holds entries up to {log_limit}; raise the shard's --max-entry-bytes to at least the log's. Nothing was sent",
                w.max_entry_bytes
            ),
        ));
    }
    Ok(w.applied_index)
}

/// What an ack of `applied` on a stream that has sent entries up to `sent_through` (or
/// whose shard welcomed it with that applied index) counts for: at most that. A shard acks
/// its whole applied index, which may be past this stream's entries (a newer leader's, in
/// the ack before a fencing; an older stream's batches still committing), and a shard of
/// another implementation may ack anything. Taken as it was, an ack past what this
/// player knows the shard received became its saved cursor, which lets retention remove
/// entries; counted up to `sent_through`, the rest is sent again and skipped by the shard.
fn ack_within(applied: u64, sent_through: u64) -> u64 {
    applied.min(sent_through)
}

/// An open delivery stream: requests out, responses in, and the shard's applied index.
type Session = (
    mpsc::Sender<DeliverRequest>,
    tonic::Streaming<crate::proto::DeliverResponse>,
    // The shard's applied index and the fingerprint of its entry.
    (u64, u64),
);

/// How a delivery session ended: fenced (stop), refused for a reason retrying will not fix
/// (report, retry slowly), or broken (reconnect).
pub(super) enum SessionEnd {
    Fenced {
        message: String,
        highest: Option<u64>,
    },
    Refused {
        reason: Reason,
        message: String,
    },
    Broken(String),
}

pub(super) fn classify(status: tonic::Status) -> SessionEnd {
    let status = grpc::decode_refusal(status);
    match Reason::of(&status) {
        Some(Reason::Fenced) => SessionEnd::Fenced {
            message: status.message().to_owned(),
            highest: status
                .metadata()
                .get(grpc::EPOCH_KEY)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        },
        Some(
            reason @ (Reason::WrongShard
            | Reason::WrongLog
            | Reason::EntryLimit
            | Reason::EntryTooLarge
            | Reason::Invalid
            | Reason::Forbidden),
        ) => SessionEnd::Refused {
            reason,
            message: status.message().to_owned(),
        },
        // Not a shard at all (a LogStore, another gRPC server): retrying will not fix it.
        // It was a broken stream, retried quickly for ever with `/readyz` still ready.
        None if grpc::not_served(&status) => SessionEnd::Refused {
            reason: Reason::WrongShard,
            message: format!(
                "the server at the shard's address does not serve the Shard API (it answered \
                 UNIMPLEMENTED{}): is the shard map's address a LogStore's or another \
                 server's?",
                Some(status.message())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        },
        _ => SessionEnd::Broken(format!("{}: {}", status.code(), status.message())),
    }
}

/// A connection that failed: a server that is not the shard expected at the address (its
/// certificate names another) is a refusal, which retrying does not fix; anything else is
/// a broken stream.
fn connect_failed(e: &grpc::GrpcError) -> SessionEnd {
    match crate::tls::client::wrong_server(e) {
        Some(w) => SessionEnd::Refused {
            reason: Reason::WrongShard,
            message: w.to_string(),
        },
        None => SessionEnd::Broken(e.to_string()),
    }
}

/// A refusal in the middle of a session, naming the entries of the first batch the shard
/// had not acknowledged (the one it could not take) when the refusal is about an entry.
fn undeliverable(status: tonic::Status, oldest: Option<&Sent>) -> SessionEnd {
    match (classify(status), oldest.map(|s| (s.first, s.last))) {
        (SessionEnd::Refused { reason, message }, Some((first, last)))
            if matches!(reason, Reason::EntryTooLarge | Reason::Invalid) =>
        {
            let which = if first == last {
                format!("entry {first}")
            } else {
                format!("the batch of entries {first}..={last}")
            };
            SessionEnd::Refused {
                reason,
                message: format!("cannot deliver {which}: {message}"),
            }
        }
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_full_at_its_batch_count_or_its_bytes_and_an_ack_frees_what_it_covers() {
        let sent = |first, last, bytes| Sent {
            first,
            last,
            dispatched: 0,
            bytes,
        };
        let mut w = InFlight::default();
        w.push(sent(1, 1, 5000));
        assert!(!w.room_within(3, 1000), "one batch past the bytes fills it");
        assert_eq!(w.acked(1).len(), 1);
        assert!(w.room_within(3, 1000) && w.bytes == 0);
        for i in 2..5 {
            w.push(sent(i, i, 10));
        }
        assert!(!w.room_within(3, 1000), "three batches fill it");
        let freed: Vec<u64> = w.acked(3).iter().map(|s| s.last).collect();
        assert_eq!(
            freed,
            [2, 3],
            "a cumulative ack frees what it covers, oldest first"
        );
        assert!(w.room_within(3, 1000));
        assert_eq!((w.front().map(|s| s.first), w.bytes), (Some(4), 10));
    }

    #[test]
    fn a_welcome_from_another_shard_or_log_is_refused_naming_both() {
        let w = |shard: &str, log: &str| Welcome {
            applied_index: 7,
            shard_id: shard.into(),
            log_id: log.into(),
            ..Default::default()
        };
        let log = ("L", 0);
        assert_eq!(check_welcome("s0", "h:1", log, &w("s0", "L")), Ok(7));
        assert_eq!(check_welcome("s0", "h:1", log, &w("s0", "")), Ok(7));
        let (reason, msg) = check_welcome("s0", "h:1", log, &w("s1", "L")).unwrap_err();
        assert_eq!(reason, Reason::WrongShard);
        assert!(
            msg.contains("\"s1\"") && msg.contains("\"s0\"") && msg.contains("h:1"),
            "{msg}"
        );
        let (reason, msg) = check_welcome("s0", "h:1", log, &w("s0", "M")).unwrap_err();
        assert_eq!(reason, Reason::WrongLog);
        assert!(msg.contains(" M,") && msg.contains("log L"), "{msg}");
    }

    /// A server that does not serve the Shard API is refused (retrying will not fix it, and
    /// `/readyz` says so), not a broken stream retried for ever.
    #[test]
    fn a_server_without_the_shard_api_is_a_refusal() {
        match classify(tonic::Status::unimplemented("")) {
            SessionEnd::Refused { reason, message } => {
                assert_eq!(reason, Reason::WrongShard);
                assert!(
                    message.contains("does not serve the Shard API"),
                    "{message}"
                );
            }
            _ => panic!("taken as a broken stream"),
        }
        assert!(matches!(
            classify(tonic::Status::unavailable("down")),
            SessionEnd::Broken(_)
        ));
    }

    /// An ack counts up to what the stream sent (or the shard's Welcome said), not past
    /// it: it becomes the saved cursor, which bounds retention.
    #[test]
    fn an_ack_counts_up_to_what_was_sent() {
        assert_eq!(ack_within(7, 7), 7);
        assert_eq!(ack_within(3, 7), 3);
        assert_eq!(ack_within(u64::MAX, 7), 7);
    }

    /// A shard that welcomes a Hello naming a larger entry limit than its own (one that
    /// does not check it) is refused by the player: an entry between the two limits would
    /// be refused later, and its delivery stop there.
    #[test]
    fn a_welcome_taking_smaller_entries_than_the_log_is_refused_naming_both_limits() {
        let w = |limit: u64| Welcome {
            applied_index: 7,
            shard_id: "s0".into(),
            max_entry_bytes: limit,
            ..Default::default()
        };
        let log = ("L", 8 << 20);
        assert_eq!(check_welcome("s0", "h:1", log, &w(8 << 20)), Ok(7));
        assert_eq!(check_welcome("s0", "h:1", log, &w(16 << 20)), Ok(7));
        assert_eq!(check_welcome("s0", "h:1", log, &w(0)), Ok(7), "not said");
        let (reason, msg) = check_welcome("s0", "h:1", log, &w(4 << 20)).unwrap_err();
        assert_eq!(reason, Reason::EntryLimit);
        assert!(
            msg.contains(&(4u64 << 20).to_string()) && msg.contains(&(8u64 << 20).to_string()),
            "{msg}"
        );
    }
}
