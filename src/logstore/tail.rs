//! The tail cache: a log's most recent entries kept in memory, bounded in bytes, so that
//! readers of the tail never touch the disk. One type serves both logs: the client entries a
//! player tails, kept encoded so that a read sends their bytes as they are
//! ([`crate::proto::EncodedEntry`], single node and replicated state machine alike), and the
//! Raft entries a replica just wrote, which its leader replicates and its state
//! machine applies at once ([`super::raft::Entry`]).
//!
//! It holds a contiguous run of indexes ending at the last entry pushed. Its owner keeps it a
//! suffix of the log: pushes each entry once written, cuts it where the log is cut
//! ([`TailCache::cut_from`], before the cut returns) and drops what the log purges.
//!
//! Written by hand: a `VecDeque` with a byte count is all it is; an LRU or TTL cache crate
//! would evict by recency of use, not by position in the log.

use std::collections::VecDeque;

/// An entry a [`TailCache`] holds: it knows its index in its log.
pub(crate) trait Indexed: Clone {
    fn index(&self) -> u64;
}

impl Indexed for crate::proto::EncodedEntry {
    fn index(&self) -> u64 {
        self.index
    }
}

/// The most recent entries of a log, at most `limit` bytes of them (as their caller
/// measured them when pushed).
pub(crate) struct TailCache<E> {
    entries: VecDeque<(E, usize)>,
    bytes: usize,
    limit: usize,
}

impl TailCache<crate::proto::EncodedEntry> {
    /// Adds a client entry, measured by the bytes it takes in a read response.
    pub(crate) fn push_entry(&mut self, e: crate::proto::EncodedEntry) {
        let len = e.framed_len();
        self.push(e, len);
    }
}

impl<E: Indexed> TailCache<E> {
    /// An empty cache that keeps at most `limit` bytes of entries.
    pub(crate) fn new(limit: usize) -> Self {
        TailCache {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Entries `[from, to]` from the cache, if it holds `from`: at least one, and no more
    /// once the next would take the total past `max_bytes`. It may end before `to` where the
    /// cache ends.
    pub(crate) fn read(&self, from: u64, to: u64, max_bytes: usize) -> Option<Vec<E>> {
        let first = self.first()?;
        if from < first || from > to || ((from - first) as usize) >= self.entries.len() {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (e, len) in self.entries.range((from - first) as usize..) {
            if e.index() > to || (bytes.saturating_add(*len) > max_bytes && !out.is_empty()) {
                break;
            }
            bytes += len;
            out.push(e.clone());
        }
        Some(out)
    }

    /// The index of the oldest entry held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    /// The index of the newest entry held.
    pub(crate) fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.index())
    }

    /// Adds the log's next entry, of `bytes` bytes, evicting the oldest past the limit. An
    /// entry that does not follow the newest one held starts the cache anew (it is the log's
    /// tail now; what was held is not next to it).
    pub(crate) fn push(&mut self, e: E, bytes: usize) {
        if self
            .last()
            .is_some_and(|last| last.checked_add(1) != Some(e.index()))
        {
            self.clear();
        }
        self.bytes += bytes;
        self.entries.push_back((e, bytes));
        while self.bytes > self.limit && self.entries.len() > 1 {
            if let Some((_, len)) = self.entries.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// Forgets the entries at `index` and after (the log was cut there).
    pub(crate) fn cut_from(&mut self, index: u64) {
        while self.last().is_some_and(|last| last >= index) {
            if let Some((_, len)) = self.entries.pop_back() {
                self.bytes -= len;
            }
        }
    }

    /// Forgets the entries below `index` (the log no longer holds them).
    pub(crate) fn drop_below(&mut self, index: u64) {
        while self.first().is_some_and(|first| first < index) {
            if let Some((_, len)) = self.entries.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct E(u64);
    impl Indexed for E {
        fn index(&self) -> u64 {
            self.0
        }
    }

    fn cache(indexes: std::ops::RangeInclusive<u64>, limit: usize) -> TailCache<E> {
        let mut c = TailCache::new(limit);
        for i in indexes {
            c.push(E(i), 10);
        }
        c
    }

    fn indexes(v: Option<Vec<E>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|e| e.0).collect())
    }

    #[test]
    fn reads_what_it_holds_within_the_byte_budget() {
        let c = cache(1..=5, 1000);
        assert_eq!(indexes(c.read(2, 4, 1000)), Some(vec![2, 3, 4]));
        assert_eq!(indexes(c.read(2, 9, 1000)), Some(vec![2, 3, 4, 5]));
        assert_eq!(indexes(c.read(2, 9, 25)), Some(vec![2, 3]));
        // At least one entry, even past the budget.
        assert_eq!(indexes(c.read(2, 9, 1)), Some(vec![2]));
        assert_eq!(c.read(0, 3, 1000), None, "below the cache");
        assert_eq!(c.read(6, 9, 1000), None, "past the cache");
        assert_eq!(c.read(4, 3, 1000), None, "an empty range");
    }

    #[test]
    fn evicts_the_oldest_past_its_limit_but_keeps_the_newest() {
        let c = cache(1..=10, 35);
        assert_eq!((c.first(), c.last()), (Some(8), Some(10)));
        let mut c = TailCache::new(5);
        c.push(E(1), 10);
        c.push(E(2), 10);
        assert_eq!((c.first(), c.last()), (Some(2), Some(2)));
    }

    #[test]
    fn a_cut_forgets_the_entries_at_and_after_it() {
        let mut c = cache(1..=5, 1000);
        c.cut_from(3);
        assert_eq!(indexes(c.read(1, 9, 1000)), Some(vec![1, 2]));
        assert_eq!(c.read(3, 9, 1000), None);
        c.push(E(3), 10);
        assert_eq!(indexes(c.read(1, 9, 1000)), Some(vec![1, 2, 3]));
        assert_eq!(c.bytes, 30);
    }

    #[test]
    fn an_entry_that_does_not_follow_starts_anew() {
        let mut c = cache(1..=5, 1000);
        c.push(E(3), 10);
        assert_eq!((c.first(), c.last(), c.bytes), (Some(3), Some(3), 10));
        c.drop_below(4);
        assert_eq!((c.first(), c.bytes), (None, 0));
    }

    /// A read of the smallest entries with the largest budget a client may ask for (the
    /// entry limit) fits in one message: the budget counts each entry's framing too (2 bytes
    /// on an 11-byte entry; counting only the entries let such a response grow ~750 KB past
    /// the message limit, and the server failed the stream every time it was asked again).
    #[test]
    fn a_read_of_the_smallest_entries_fits_the_message_limit() {
        use crate::proto::{EncodedEntry, Entry, Mutation, ReadResponse};
        use prost::Message;
        let limit = crate::limits::DEFAULT_MAX_ENTRY_BYTES;
        let mut c = TailCache::new(2 * limit);
        let mut index = 1;
        while c.bytes < limit + limit / 4 {
            c.push_entry(EncodedEntry::new(&Entry {
                index,
                mutations: vec![Mutation {
                    key: bytes::Bytes::from_static(b"k"),
                    op: Some(crate::proto::mutation::Op::Add(1)),
                }],
                append_start_micros: 0,
            }));
            index += 1;
        }
        let budget = crate::limits::batch_budget(usize::MAX, 1 << 20, limit);
        let read = c.read(1, u64::MAX, budget).unwrap_or_default();
        assert!(read.len() > 100_000, "{} entries", read.len());
        let response = ReadResponse {
            encoded: read.into_iter().map(|e| e.bytes).collect(),
            log_id: "a".repeat(64),
            ..Default::default()
        };
        assert!(
            response.encoded_len() <= crate::limits::message_limit(limit),
            "{} bytes > {}",
            response.encoded_len(),
            crate::limits::message_limit(limit)
        );
    }
}
