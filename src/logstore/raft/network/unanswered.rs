//! What an append stream owes: the AppendEntries it sent to a peer and was not yet
//! answered, and when the oldest of them is due. A peer that leaves one unanswered past its
//! due time (a peer gone silent without a reset) has its stream given up; openraft then
//! opens another.

use std::time::{Duration, Instant};

/// How long an append stream may leave a request unanswered before it is given up, on top
/// of the time its bytes take to travel ([`carry_time`]).
pub(super) const STREAM_STALL: Duration = Duration::from_secs(1);

/// How fast an AppendEntries is assumed to travel, be written and be fsynced at the least,
/// for its deadline: a batch of 1 MiB has 31 ms more than [`STREAM_STALL`], one of the
/// largest entries a replicated log takes (about 254 MiB) 8 s more. Without it a large entry
/// could never be answered in time: each try was given up after 1 s and sent again.
const REPLICATION_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;

/// The time `bytes` of AppendEntries are given to travel beyond the fixed deadline.
pub(super) fn carry_time(bytes: usize) -> Duration {
    Duration::from_millis(bytes as u64 * 1000 / REPLICATION_BYTES_PER_SEC)
}

/// The requests an append stream sent and was not yet answered, oldest first: when each
/// was sent and its size. The peer answers in order, so only the oldest is waited on: it is
/// due [`STREAM_STALL`] and its own [`carry_time`] after it was sent or the answer before it
/// came, whichever was later (a request sent behind a large one waits for that one first).
pub(super) struct Unanswered {
    pub(super) sent: std::collections::VecDeque<(Instant, usize)>,
    pub(super) last_answer: Instant,
}

impl Default for Unanswered {
    fn default() -> Self {
        Unanswered {
            sent: std::collections::VecDeque::new(),
            last_answer: Instant::now(),
        }
    }
}

impl Unanswered {
    pub(super) fn sent(&mut self, bytes: usize) {
        self.sent.push_back((Instant::now(), bytes));
    }

    pub(super) fn answered(&mut self) {
        self.sent.pop_front();
        self.last_answer = Instant::now();
    }

    /// Since when the oldest unanswered request is waited on, and when it is due; `None`
    /// with none unanswered.
    fn waited(&self) -> Option<(Instant, Instant)> {
        let &(at, bytes) = self.sent.front()?;
        let since = at.max(self.last_answer);
        Some((since, since + STREAM_STALL + carry_time(bytes)))
    }

    /// When the oldest unanswered request is due; `None` with none unanswered.
    pub(super) fn due(&self) -> Option<Instant> {
        self.waited().map(|(_, due)| due)
    }

    /// How long the oldest request has been waited on, if it is past due.
    pub(super) fn overdue(&self) -> Option<Duration> {
        let (since, due) = self.waited()?;
        (Instant::now() >= due).then(|| since.elapsed())
    }
}
