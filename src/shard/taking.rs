//! A snapshot of the journal store's state **taken a slice per commit**: the state as of one
//! journal record, encoded a few hundred KiB at a time on the commit thread between commits,
//! while the commits go on.
//!
//! # Why
//! Encoded at once, a 100 MB state stopped the shard's commits for 1.6 s (`bench --insecure
//! --shards 2 --sizes 1024 --rate 50000`): the player's queues overflowed and both shards
//! caught up from the log. Rebuilt on a thread of its own from the files instead (the last
//! snapshot read back, the journal replayed), the stall went but the shards' CPU per
//! transaction rose by a quarter. Taken in slices, the state is encoded once, as before, and
//! no commit waits for more than one slice.
//!
//! # How it stays the state as of its record
//! Keys are encoded in order, from the live state. Before a commit changes a key that is
//! not encoded yet, [`Taking::keep_before`] keeps the key's value as it was (or that it did
//! not exist); the slice that reaches the key encodes the kept value instead of the live
//! one. Keys already encoded may change freely. What is kept is at most the values the
//! commits change while a snapshot is taken, each once: at worst a second copy of the state.
//! The operations are not idempotent (an append, an add), so a "fuzzy" snapshot replayed
//! from its starting record would apply some twice: this is what keeps it exact.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::journal::{SNAPSHOT_MAGIC, SnapshotHeader, push_frame, push_row};
use crate::model::{State, Value};

/// Bytes of rows encoded per commit, at most one row more.
pub(super) const STEP_BYTES: usize = 256 * 1024;

/// A snapshot being taken (see the module docs).
pub(super) struct Taking {
    /// The first journal record it does not contain.
    pub next_record: u64,
    header: SnapshotHeader,
    /// The last key encoded (`None`: none yet).
    last: Option<Vec<u8>>,
    /// Keys not encoded yet that commits changed: their values as of the snapshot (`None`:
    /// the key did not exist).
    before: BTreeMap<Vec<u8>, Option<Value>>,
    rows: Vec<u8>,
    keys: u64,
}

impl Taking {
    /// Starts a snapshot of the state as it is now, described by `header` (its key count is
    /// filled in at the end).
    pub fn start(header: SnapshotHeader) -> Self {
        Taking {
            next_record: header.next_record,
            header,
            last: None,
            before: BTreeMap::new(),
            rows: Vec::new(),
            keys: 0,
        }
    }

    /// Called before `keys` are changed in `state`: keeps the values, as of the snapshot, of
    /// those not encoded yet.
    pub fn keep_before<'a>(&mut self, state: &State, keys: impl Iterator<Item = &'a [u8]>) {
        for key in keys {
            let encoded = self.last.as_deref().is_some_and(|last| key <= last);
            if !encoded && !self.before.contains_key(key) {
                self.before.insert(key.to_vec(), state.get(key).cloned());
            }
        }
    }

    /// Encodes the next keys, about `budget` bytes of rows; once every key is encoded,
    /// returns the whole snapshot: its magic and header, and its rows (written one after
    /// the other: the rows are not copied on the commit thread).
    pub fn step(&mut self, state: &State, budget: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let lower = match &self.last {
            Some(last) => Bound::Excluded(last.as_slice()),
            None => Bound::Unbounded,
        };
        let mut live = state.range::<[u8], _>((lower, Bound::Unbounded)).peekable();
        let mut kept = self
            .before
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let start = self.rows.len();
        let mut last = None;
        let finished = loop {
            let from_kept = match (live.peek(), kept.peek()) {
                (None, None) => break true,
                (Some((l, _)), Some((k, _))) => k <= l,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if self.rows.len() - start >= budget {
                break false;
            }
            let (key, value) = if from_kept {
                let (key, value) = kept.next()?;
                if live.peek().is_some_and(|(l, _)| *l == key) {
                    live.next();
                }
                (key, value.as_ref())
            } else {
                live.next().map(|(k, v)| (k, Some(v)))?
            };
            if let Some(value) = value {
                push_row(&mut self.rows, key, value);
                self.keys += 1;
            }
            last = Some(key);
        };
        if let Some(last) = last {
            let last = last.clone();
            // What is kept for keys now encoded is no longer needed.
            let mut after = self.before.split_off(&last);
            after.remove(&last);
            self.before = after;
            self.last = Some(last);
        }
        if !finished {
            return None;
        }
        self.header.keys = self.keys;
        let mut head = SNAPSHOT_MAGIC.to_vec();
        push_frame(&mut head, &prost::Message::encode_to_vec(&self.header));
        Some((head, std::mem::take(&mut self.rows)))
    }
}
