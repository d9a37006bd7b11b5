//! Who speaks as each replica id: the incarnation a replica's process draws when it starts
//! and puts on its replication messages, and the record of incarnations heard per id that
//! tells two processes speaking as one id apart (see [`Speakers`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::NodeId;
use crate::proto::RaftMessage;

/// The random number this process drew when it started (never 0: 0 on the wire means "not
/// said"), and what it heard of the other replicas' (see `Speakers`), shared by the
/// replica's client and server halves.
#[derive(Clone, Debug)]
pub struct Incarnation {
    pub(super) mine: u64,
    heard: Arc<Mutex<Speakers>>,
}

impl Incarnation {
    /// A fresh one, for a starting replica.
    pub fn draw() -> Self {
        Incarnation {
            mine: rand::random::<u64>().max(1),
            heard: Default::default(),
        }
    }

    /// Notes a message (a request or an answer) from replica `from`; false while two
    /// processes speak as `from` (see [`Speakers`]).
    pub(super) fn heard(&self, m: &RaftMessage, heartbeat_millis: u64) -> bool {
        let window = Speakers::window(heartbeat_millis);
        self.heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spoke(m.from, m.incarnation, std::time::Instant::now(), window)
    }
}

/// Who last spoke as each replica id, to tell two processes that speak as one.
///
/// Raft counts votes by id: a voter asked for its vote twice in one term by "replica 1"
/// grants both, and two voters may each elect another process that calls itself replica 1.
/// Two such processes (two replicas started with the same `--id`, or a copy of a replica's
/// directory started beside it) could both be elected in one term and commit different
/// entries at one index. Each process draws a random incarnation when it starts and puts it
/// on every message; a replica that hears two incarnations for one id (in requests, or in
/// answers to its own) within [`Speakers::window`] of each other refuses every request from
/// that id (both processes') until only one has spoken for that long. Answers are not
/// refused: they come from the address the membership names. A replica restarted within
/// the window of its previous incarnation's last message is refused too, for up to one
/// window from its first one (its peers say so, naming the restart as one of the causes).
///
/// This narrows the danger to the moment before a voter hears the second process (each
/// candidate asks every voter at once, so that is about one message's flight); it does not
/// close it: only a per-replica identity (a certificate naming the id) would.
#[derive(Default, Debug)]
pub(super) struct Speakers {
    heard: std::collections::HashMap<NodeId, Spoke>,
}

#[derive(Debug)]
struct Spoke {
    incarnation: u64,
    at: std::time::Instant,
    /// Until when every message from this id is refused.
    contested_until: Option<std::time::Instant>,
}

impl Speakers {
    /// Twice the longest election timeout: both processes speak within it (a leader at each
    /// heartbeat, a candidate at each election timeout).
    pub(super) fn window(heartbeat_millis: u64) -> Duration {
        Duration::from_millis(
            heartbeat_millis.saturating_mul(2 * super::super::node::ELECTION_MAX_HEARTBEATS),
        )
    }

    /// Notes that `incarnation` spoke as `from` at `now`; false while `from` is contested
    /// (two incarnations heard within `window` of each other, until one has spoken alone
    /// for `window`).
    pub(super) fn spoke(
        &mut self,
        from: NodeId,
        incarnation: u64,
        now: std::time::Instant,
        window: Duration,
    ) -> bool {
        if incarnation == 0 {
            return true; // an older version says none
        }
        let spoke = self.heard.entry(from).or_insert(Spoke {
            incarnation,
            at: now,
            contested_until: None,
        });
        if spoke.incarnation != incarnation && now.saturating_duration_since(spoke.at) < window {
            spoke.contested_until = Some(now + window);
        }
        spoke.incarnation = incarnation;
        spoke.at = now;
        spoke.contested_until.is_none_or(|until| now >= until)
    }
}
