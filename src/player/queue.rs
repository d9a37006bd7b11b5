//! One shard's target queue: the paper's state machine, as plain data with no IO.
//!
//! States: `Normal` (N), `RecoveryFetching` (RF), `FetchCompleted` (FC), `Suspended` (S).
//! - N: the shard is connected and caught up; the main stream pushes into the normal queue.
//! - RF: the shard is connected but behind; a recovery reader fills the catch-up queue with
//!   `(.., recovery_to]` while the main stream keeps pushing entries above `recovery_to`
//!   into the normal queue. The sender drains only the catch-up queue.
//! - FC: the recovery read is done; the sender finishes the catch-up queue, then the queue
//!   becomes N by itself.
//! - S: the shard is down; both queues are empty and every push is dropped.
//!
//! The **term** increments each time the shard comes back (and each time a new recovery
//! starts); a catch-up push tagged with an older term is dropped, so a recovery reader of an
//! earlier incarnation can never inject entries into a later one (the duplicate delivery
//! the paper's TLA+ model found).
//!
//! Memory is bounded: when the normal queue of a slow shard exceeds its byte limit, the queue
//! is dropped and the shard is switched to recovery from the log — the log, not the player's
//! memory, is the buffer for a shard that cannot keep up.

use std::collections::VecDeque;

use prost::Message;

use crate::proto::ShardEntry;

/// The paper's four states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Normal,
    RecoveryFetching,
    FetchCompleted,
    Suspended,
}

impl QueueState {
    pub fn short(self) -> &'static str {
        match self {
            QueueState::Normal => "N",
            QueueState::RecoveryFetching => "RF",
            QueueState::FetchCompleted => "FC",
            QueueState::Suspended => "S",
        }
    }
}

/// Byte limits of the two queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub normal_bytes: usize,
    pub catchup_bytes: usize,
}

/// A recovery the caller must start: read `[from, to]` for this target with `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub term: u64,
    pub from: u64,
    pub to: u64,
}

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Dropped because the shard is down (S).
    DroppedSuspended,
    /// Dropped because the shard already acknowledged the index.
    DroppedAcked,
    /// Dropped because it belongs to an expired term or the queue is not recovering.
    DroppedStale,
    /// Dropped because a recovery read covers it (the normal queue overflowed while
    /// recovering; the running reader was extended).
    DroppedCovered,
    /// The normal queue overflowed: it was cleared and the caller must start this recovery.
    Overflow(Recovery),
}

/// What a recovery reader does after finishing a range read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDone {
    /// The recovery is complete (RF -> FC, or straight to N when nothing is left).
    Complete,
    /// The range was extended while reading: read `[from, to]` next.
    Continue { from: u64, to: u64 },
    /// This reader's term expired: stop.
    Stale,
}

/// Memory an entry holds in a queue: its encoded size plus the in-memory overhead of the
/// structs and heap allocations around each mutation (measured at roughly 160 bytes), so
/// the byte limits bound real memory rather than wire bytes.
fn size(e: &ShardEntry) -> usize {
    const ENTRY_OVERHEAD: usize = 96;
    const MUTATION_OVERHEAD: usize = 160;
    e.encoded_len() + ENTRY_OVERHEAD + MUTATION_OVERHEAD * e.mutations.len()
}

/// One target's queue.
#[derive(Debug)]
pub struct TargetQueue {
    state: QueueState,
    term: u64,
    normal: VecDeque<ShardEntry>,
    normal_bytes: usize,
    catchup: VecDeque<ShardEntry>,
    catchup_bytes: usize,
    recovery_to: u64,
    last_taken: u64,
    last_ack: u64,
    /// Whether `last_ack` is vouched for: false from a resume (which takes the shard's word
    /// for its applied index) until the log was found to still hold what the shard applied
    /// ([`TargetQueue::vouch`]). Only a vouched-for index is saved as a cursor.
    vouched: bool,
    limits: QueueLimits,
}

impl TargetQueue {
    /// A new queue starts suspended: the shard has not said hello yet.
    pub fn new(limits: QueueLimits) -> Self {
        TargetQueue {
            state: QueueState::Suspended,
            term: 0,
            normal: VecDeque::new(),
            normal_bytes: 0,
            catchup: VecDeque::new(),
            catchup_bytes: 0,
            recovery_to: 0,
            last_taken: 0,
            last_ack: 0,
            vouched: true,
            limits,
        }
    }

    pub fn state(&self) -> QueueState {
        self.state
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn last_ack(&self) -> u64 {
        self.last_ack
    }
    /// Whether `last_ack` is vouched for (see [`TargetQueue::vouch`]); false between a
    /// resume and the log's answer.
    pub fn is_vouched(&self) -> bool {
        self.vouched
    }
    /// The log was found to still hold what the shard applied: its applied index counts.
    pub fn vouch(&mut self) {
        self.vouched = true;
    }
    pub fn len(&self) -> usize {
        self.normal.len() + self.catchup.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.normal_bytes + self.catchup_bytes
    }

    /// The shard went away: S, both queues cleared.
    pub fn suspend(&mut self) {
        self.state = QueueState::Suspended;
        self.normal.clear();
        self.catchup.clear();
        self.normal_bytes = 0;
        self.catchup_bytes = 0;
    }

    /// The shard came back with `applied` durable; `current` is the last index the main
    /// stream dispatched. Must be called under the dispatcher's lock so that no main-stream
    /// push can fall between reading `current` and the state change.
    pub fn resume(&mut self, applied: u64, current: u64) -> Option<Recovery> {
        debug_assert_eq!(self.state, QueueState::Suspended, "resume without suspend");
        self.suspend();
        self.term += 1;
        self.last_ack = applied;
        self.vouched = false;
        self.last_taken = applied;
        if applied < current {
            self.state = QueueState::RecoveryFetching;
            self.recovery_to = current;
            Some(Recovery {
                term: self.term,
                from: applied + 1,
                to: current,
            })
        } else {
            self.state = QueueState::Normal;
            None
        }
    }

    /// A main-stream push (under the dispatcher's lock, so always of the current term).
    pub fn push_normal(&mut self, entry: ShardEntry) -> Push {
        if self.state == QueueState::Suspended {
            return Push::DroppedSuspended;
        }
        if entry.index <= self.last_ack {
            return Push::DroppedAcked;
        }
        let recovering = matches!(
            self.state,
            QueueState::RecoveryFetching | QueueState::FetchCompleted
        );
        if recovering && entry.index <= self.recovery_to {
            return Push::DroppedCovered;
        }
        let sz = size(&entry);
        if self.normal_bytes + sz > self.limits.normal_bytes && !self.normal.is_empty() {
            // Too far behind: drop the normal queue and read this stretch from the log.
            let index = entry.index;
            self.normal.clear();
            self.normal_bytes = 0;
            match self.state {
                QueueState::RecoveryFetching => {
                    // The running reader will see the extension when its range ends.
                    self.recovery_to = index;
                    return Push::DroppedCovered;
                }
                QueueState::FetchCompleted => {
                    let from = self.recovery_to + 1;
                    return Push::Overflow(self.start_recovery(from, index));
                }
                QueueState::Normal => {
                    let from = self.last_taken + 1;
                    return Push::Overflow(self.start_recovery(from, index));
                }
                QueueState::Suspended => unreachable!("checked above"),
            }
        }
        self.normal_bytes += sz;
        self.normal.push_back(entry);
        Push::Queued
    }

    fn start_recovery(&mut self, from: u64, to: u64) -> Recovery {
        self.term += 1;
        self.state = QueueState::RecoveryFetching;
        self.recovery_to = to;
        Recovery {
            term: self.term,
            from,
            to,
        }
    }

    /// Whether a recovery reader of `term` may push now (false: wait for room). A stale
    /// reader gets `true` so that it pushes, is told `DroppedStale`, and stops.
    pub fn catchup_has_room(&self, term: u64) -> bool {
        term != self.term
            || self.state != QueueState::RecoveryFetching
            || self.catchup_bytes < self.limits.catchup_bytes
    }

    /// A recovery-stream push.
    pub fn push_catchup(&mut self, term: u64, entry: ShardEntry) -> Push {
        let stale = term != self.term
            && !crate::mutations::on(crate::mutations::Mutation::QueueIgnoresTerms);
        if stale || self.state != QueueState::RecoveryFetching {
            return Push::DroppedStale;
        }
        if entry.index <= self.last_ack {
            return Push::DroppedAcked;
        }
        self.catchup_bytes += size(&entry);
        self.catchup.push_back(entry);
        Push::Queued
    }

    /// A recovery reader of `term` finished reading up to `read_to`.
    pub fn read_done(&mut self, term: u64, read_to: u64) -> ReadDone {
        if term != self.term || self.state != QueueState::RecoveryFetching {
            return ReadDone::Stale;
        }
        if self.recovery_to > read_to {
            return ReadDone::Continue {
                from: read_to + 1,
                to: self.recovery_to,
            };
        }
        self.state = QueueState::FetchCompleted;
        if self.catchup.is_empty() {
            self.state = QueueState::Normal;
        }
        ReadDone::Complete
    }

    /// The next batch for the sender: from the catch-up queue while recovering, else from
    /// the normal queue. At most `max_entries` entries and (beyond the first) `max_bytes`.
    pub fn next_batch(&mut self, max_entries: usize, max_bytes: usize) -> Vec<ShardEntry> {
        let catchup = match self.state {
            QueueState::Suspended => return Vec::new(),
            QueueState::RecoveryFetching => true,
            QueueState::FetchCompleted => {
                if self.catchup.is_empty() {
                    self.state = QueueState::Normal;
                    false
                } else {
                    true
                }
            }
            QueueState::Normal => false,
        };
        let (queue, bytes) = if catchup {
            (&mut self.catchup, &mut self.catchup_bytes)
        } else {
            (&mut self.normal, &mut self.normal_bytes)
        };
        let mut out = Vec::new();
        let mut taken = 0;
        while let Some(front) = queue.front() {
            let sz = size(front);
            if out.len() >= max_entries || (!out.is_empty() && taken + sz > max_bytes) {
                break;
            }
            taken += sz;
            *bytes -= sz;
            if let Some(e) = queue.pop_front() {
                debug_assert!(e.index > self.last_taken, "queue out of order");
                self.last_taken = e.index;
                out.push(e);
            }
        }
        if self.state == QueueState::FetchCompleted && self.catchup.is_empty() {
            self.state = QueueState::Normal;
        }
        out
    }

    /// A cumulative ack from the shard.
    pub fn on_ack(&mut self, applied: u64) {
        self.last_ack = self.last_ack.max(applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use QueueState::*;

    fn e(index: u64) -> ShardEntry {
        ShardEntry {
            index,
            prev_index: index - 1,
            ..Default::default()
        }
    }

    fn queue(normal_bytes: usize, catchup_bytes: usize) -> TargetQueue {
        TargetQueue::new(QueueLimits {
            normal_bytes,
            catchup_bytes,
        })
    }

    fn q() -> TargetQueue {
        queue(1 << 20, 1 << 20)
    }

    /// Suspends `q` and checks that it is suspended with both queues empty.
    fn suspend_empties(q: &mut TargetQueue) {
        q.suspend();
        assert_eq!((q.state(), q.len()), (Suspended, 0));
    }

    fn indexes(batch: &[ShardEntry]) -> Vec<u64> {
        batch.iter().map(|e| e.index).collect()
    }

    #[test]
    fn a_new_queue_is_suspended_and_drops_pushes() {
        let mut q = q();
        assert_eq!(q.state(), Suspended);
        assert_eq!(q.push_normal(e(1)), Push::DroppedSuspended);
        assert!(q.next_batch(10, 1 << 20).is_empty());
    }

    /// A resumed shard's applied index is its word until the log vouches for it: only then
    /// is it offered as a cursor.
    #[test]
    fn a_resumed_index_counts_as_a_cursor_only_once_vouched_for() {
        let mut q = q();
        assert!(q.is_vouched());
        q.resume(10, 12);
        assert!(!q.is_vouched());
        assert_eq!(q.last_ack(), 10, "the queue still drops what the shard has");
        q.vouch();
        assert!(q.is_vouched());
        assert_eq!(q.last_ack(), 10);
        q.suspend();
        q.resume(40, 40);
        assert!(!q.is_vouched(), "each resume again");
    }

    #[test]
    fn s_to_n_when_the_shard_is_caught_up() {
        let mut q = q();
        assert_eq!(q.resume(10, 10), None);
        assert_eq!((q.state(), q.term()), (Normal, 1));
        assert_eq!(q.push_normal(e(11)), Push::Queued);
        assert_eq!(indexes(&q.next_batch(10, 1 << 20)), vec![11]);
    }

    #[test]
    fn n_to_s_clears_both_queues() {
        let mut q = q();
        q.resume(0, 0);
        q.push_normal(e(1));
        suspend_empties(&mut q);
    }

    #[test]
    fn s_to_rf_to_fc_to_n_delivers_catchup_before_normal() {
        let mut q = q();
        let rec = q.resume(3, 6).unwrap();
        assert_eq!(
            rec,
            Recovery {
                term: 1,
                from: 4,
                to: 6
            }
        );
        assert_eq!(q.state(), RecoveryFetching);
        // The main stream goes on above 6 while the recovery reads 4..=6.
        assert_eq!(q.push_normal(e(7)), Push::Queued);
        assert_eq!(q.push_catchup(1, e(4)), Push::Queued);
        // RF with catch-up entries: only catch-up is taken.
        assert_eq!(indexes(&q.next_batch(10, 1 << 20)), vec![4]);
        // RF with an empty catch-up queue: nothing, even though normal has 7.
        assert!(q.next_batch(10, 1 << 20).is_empty());
        q.push_catchup(1, e(5));
        q.push_catchup(1, e(6));
        assert_eq!(q.read_done(1, 6), ReadDone::Complete);
        assert_eq!(q.state(), FetchCompleted);
        assert_eq!(indexes(&q.next_batch(1, 1 << 20)), vec![5]);
        assert_eq!(q.state(), FetchCompleted);
        // Draining the last catch-up entry turns FC into N.
        assert_eq!(indexes(&q.next_batch(1, 1 << 20)), vec![6]);
        assert_eq!(q.state(), Normal);
        assert_eq!(indexes(&q.next_batch(10, 1 << 20)), vec![7]);
    }

    #[test]
    fn rf_to_n_directly_when_the_recovery_found_nothing() {
        let mut q = q();
        q.resume(3, 6);
        assert_eq!(q.read_done(1, 6), ReadDone::Complete);
        assert_eq!(q.state(), Normal);
    }

    #[test]
    fn rf_and_fc_to_s_when_the_shard_drops_again() {
        let mut q = q();
        q.resume(0, 5);
        q.push_catchup(1, e(1));
        suspend_empties(&mut q);
        q.resume(0, 5);
        q.push_catchup(2, e(1));
        q.read_done(2, 5);
        assert_eq!(q.state(), FetchCompleted);
        suspend_empties(&mut q);
    }

    #[test]
    fn a_push_of_an_expired_term_is_dropped() {
        let mut q = q();
        let first = q.resume(0, 5).unwrap();
        q.suspend();
        let second = q.resume(2, 5).unwrap();
        assert_eq!(second.term, first.term + 1);
        // The first incarnation's reader is still running and pushes index 3: dropped.
        assert_eq!(q.push_catchup(first.term, e(3)), Push::DroppedStale);
        assert_eq!(q.read_done(first.term, 5), ReadDone::Stale);
        assert_eq!(q.state(), RecoveryFetching);
        assert_eq!(q.push_catchup(second.term, e(3)), Push::Queued);
        assert_eq!(indexes(&q.next_batch(10, 1 << 20)), vec![3]);
    }

    #[test]
    fn acknowledged_indexes_are_not_queued_again() {
        let mut q = q();
        q.resume(8, 5);
        assert_eq!(q.push_normal(e(8)), Push::DroppedAcked);
        assert_eq!(q.push_normal(e(9)), Push::Queued);
    }

    #[test]
    fn an_overflowing_normal_queue_switches_to_recovery_from_the_log() {
        let mut q = queue(8, 1 << 20);
        q.resume(0, 0);
        q.push_normal(e(1));
        assert_eq!(indexes(&q.next_batch(1, 1 << 20)), vec![1]);
        let mut n = 2;
        let rec = loop {
            match q.push_normal(e(n)) {
                Push::Queued => n += 1,
                Push::Overflow(rec) => break rec,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            rec,
            Recovery {
                term: 2,
                from: 2,
                to: n
            }
        );
        assert_eq!((q.state(), q.len()), (RecoveryFetching, 0));
        // While recovering, a further overflow extends the running reader.
        let mut m = n + 1;
        while q.push_normal(e(m)) == Push::Queued {
            m += 1;
        }
        assert_eq!(q.read_done(2, n), ReadDone::Continue { from: n + 1, to: m });
    }

    #[test]
    fn a_full_catchup_queue_asks_the_reader_to_wait() {
        let mut q = queue(1 << 20, 4);
        q.resume(0, 10);
        assert!(q.catchup_has_room(1));
        q.push_catchup(1, e(1));
        q.push_catchup(1, e(2));
        assert!(!q.catchup_has_room(1));
        q.next_batch(10, 1 << 20);
        assert!(q.catchup_has_room(1));
        // A stale reader is let through so that it learns it is stale.
        assert!(q.catchup_has_room(0));
    }
}
