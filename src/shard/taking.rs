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
//! Keys are encoded in order, from the live state. Before an op changes a key that is not
//! encoded yet, [`Taking::keep_before`] keeps what the key was (that it did not exist, or its
//! value); the slice that reaches the key encodes what was kept instead of the live value.
//! A list that is only appended to is kept as its length, not copied: the live list's first
//! items are what it was (a key's list growing under a snapshot is the common case, and
//! copying each such list made the snapshot cost twice its encoding). An op that replaces
//! such a list copies that prefix first. Keys already encoded may change freely. What is
//! kept is at most the values changed while a snapshot is taken, each once. The ops are not
//! idempotent (an append, an add), so a "fuzzy" snapshot replayed from its starting record
//! would apply some twice: this is what keeps it exact.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::journal::{FrameTooLarge, SNAPSHOT_MAGIC, SnapshotHeader, State, push_frame, push_row};
use crate::model::Value;
use crate::proto::mutation::Op;

/// Bytes of rows encoded per commit, at most one row more.
pub(super) const STEP_BYTES: usize = 256 * 1024;

/// A snapshot being taken (see the module docs).
pub(super) struct Taking {
    header: SnapshotHeader,
    /// The last key encoded (`None`: none yet).
    last: Option<Vec<u8>>,
    /// Keys not encoded yet that commits changed: what they were as of the snapshot.
    before: BTreeMap<Vec<u8>, Kept>,
    rows: Vec<u8>,
    keys: u64,
}

/// What a key was when the snapshot was started.
enum Kept {
    /// Its value (`None`: the key did not exist).
    Value(Option<Value>),
    /// A list of this many items: the first items of the live list, which has only been
    /// appended to since.
    ListOf(usize),
}

impl Taking {
    /// Starts a snapshot of the state as it is now, described by `header` (its key count is
    /// filled in at the end).
    pub fn start(header: SnapshotHeader) -> Self {
        Taking {
            header,
            last: None,
            before: BTreeMap::new(),
            rows: Vec::new(),
            keys: 0,
        }
    }

    /// The first journal record it does not contain.
    pub fn next_record(&self) -> u64 {
        self.header.next_record
    }

    /// Called before `op` is applied to `key` in `state`: keeps what the key was as of the
    /// snapshot, if it is not encoded yet and nothing is kept for it.
    pub fn keep_before(&mut self, state: &State, key: &[u8], op: &Op) {
        if self.last.as_deref().is_some_and(|last| key <= last) {
            return;
        }
        let live = state.get(key);
        let appends = matches!((live, op), (Some(Value::List(_)), Op::Append(_)));
        match (self.before.get_mut(key), live) {
            (None, Some(Value::List(items))) if appends => {
                self.before.insert(key.to_vec(), Kept::ListOf(items.len()));
            }
            (None, _) => {
                self.before.insert(key.to_vec(), Kept::Value(live.cloned()));
            }
            (Some(kept), Some(Value::List(items))) if !appends => {
                if let Kept::ListOf(n) = *kept {
                    *kept = Kept::Value(Some(Value::List(items[..n].to_vec())));
                }
            }
            (Some(_), _) => {}
        }
    }

    /// Encodes the next keys, about `budget` bytes of rows; once every key is encoded,
    /// returns the whole snapshot: its magic and header, and its rows (written one after
    /// the other: the rows are not copied on the commit thread).
    pub fn step(&mut self, state: &State, budget: usize) -> Result<Option<Encoded>, TooLarge> {
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
                (Some((l, _)), Some((k, _))) => k.as_slice() <= l.as_slice(),
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if self.rows.len() - start >= budget {
                break false;
            }
            let (key, value) = if from_kept {
                let Some((key, kept)) = kept.next() else {
                    break false; // not reached: peeked above
                };
                let now = live
                    .next_if(|(l, _)| l.as_slice() == key.as_slice())
                    .map(|(_, v)| v);
                let key = key.as_slice();
                match (kept, now) {
                    (Kept::Value(v), _) => (key, v.as_ref().map(Row::Value)),
                    (Kept::ListOf(n), Some(Value::List(items))) => {
                        (key, items.get(..*n).map(Row::List))
                    }
                    // Not reached: a list kept by its length is appended to or copied.
                    (Kept::ListOf(_), _) => (key, None),
                }
            } else {
                let Some((k, v)) = live.next() else {
                    break false; // not reached: peeked above
                };
                (k.as_slice(), Some(Row::Value(v)))
            };
            let pushed = match value {
                Some(Row::Value(v)) => push_row(&mut self.rows, key, |out| v.encode_into(out)),
                Some(Row::List(items)) => push_row(&mut self.rows, key, |out| {
                    Value::encode_list_into(items, out)
                }),
                None => Ok(()),
            };
            if let Err(FrameTooLarge(bytes)) = pushed {
                return Err(TooLarge {
                    key: key.to_vec(),
                    bytes,
                });
            }
            self.keys += u64::from(value.is_some());
            last = Some(key);
        };
        if let Some(last) = last {
            let last = last.to_vec();
            // What is kept for keys now encoded is no longer needed.
            let mut after = self.before.split_off(&last);
            after.remove(&last);
            self.before = after;
            self.last = Some(last);
        }
        if !finished {
            return Ok(None);
        }
        self.header.keys = self.keys;
        let mut head = SNAPSHOT_MAGIC.to_vec();
        push_frame(&mut head, &prost::Message::encode_to_vec(&self.header)).map_err(
            |FrameTooLarge(bytes)| TooLarge {
                key: Vec::new(),
                bytes,
            },
        )?;
        Ok(Some((head, std::mem::take(&mut self.rows))))
    }
}

/// A whole snapshot, encoded: its magic and header, and its rows.
pub type Encoded = (Vec<u8>, Vec<u8>);

/// A key whose row is larger than a snapshot frame holds (see [`FrameTooLarge`]): the
/// snapshot cannot be taken.
#[derive(Debug)]
pub struct TooLarge {
    pub key: Vec<u8>,
    pub bytes: usize,
}

/// The value a row is encoded from.
enum Row<'a> {
    Value(&'a Value),
    List(&'a [Vec<u8>]),
}
