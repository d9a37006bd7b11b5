//! The delivery target: what a shard does with the entries a player sends it.
//!
//! [`ShardCore`] holds the protocol rules and nothing else: fencing by leader epoch, skipping
//! indexes already applied, refusing gaps, and committing each batch through a
//! [`ShardStore`] in one atomic, durable write together with the new applied index. It knows
//! neither gRPC nor a particular storage engine: `service` is the gRPC edge, `store` the
//! built-in redb backend, and a user can put their own storage behind [`ShardStore`].

pub mod service;
pub mod stats;
pub mod store;

use crate::model::Value;
use crate::proto::ShardEntry;

/// What a storage backend must provide to sit behind the shard protocol.
///
/// The contract: `commit` applies the mutations of `entries` in order and records `applied`
/// as the applied index in **one atomic write that is durable when it returns**. After a
/// crash, `load` returns exactly the state of the last successful commit.
pub trait ShardStore: Send + 'static {
    /// The durable applied index (0 for a new store) and highest epoch seen.
    fn load(&self) -> Result<Durable, StoreError>;
    /// Durably records a new highest epoch.
    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError>;
    /// Applies `entries` (in index order, all above the current applied index) and sets the
    /// applied index to `applied`, atomically and durably.
    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError>;
    /// Visits every key and value in key order.
    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError>;
}

/// A store's durable bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    pub applied: u64,
    pub highest_epoch: u64,
}

/// An error of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend's error, its message included here (not also as a `source`, so a chain
    /// of causes names it once).
    #[error("shard store: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    #[error("shard store holds a corrupt value for key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<Box<dyn std::error::Error + Send + Sync>> for StoreError {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        StoreError::Backend(e)
    }
}

/// Why the shard refused something.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("fenced: epoch {epoch} is below the highest epoch {highest} this shard has seen")]
    Fenced { epoch: u64, highest: u64 },
    #[error(
        "gap: entry {index} names previous index {prev} but this shard has applied only up to {applied}"
    )]
    Gap { index: u64, prev: u64, applied: u64 },
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Applied index after the batch (durable).
    pub applied: u64,
    /// Entries newly applied, in order (watermarks included).
    pub new: usize,
    /// Entries skipped because they were already applied.
    pub skipped: usize,
}

/// The protocol rules of a shard around a store.
pub struct ShardCore<S: ShardStore> {
    store: S,
    durable: Durable,
}

impl<S: ShardStore> ShardCore<S> {
    pub fn open(store: S) -> Result<Self, ShardError> {
        let durable = store.load()?;
        Ok(ShardCore { store, durable })
    }

    pub fn durable(&self) -> Durable {
        self.durable
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// A sender announces its epoch. Rejects an epoch below the highest seen; persists a
    /// higher one before returning, so a restart cannot forget it.
    pub fn hello(&mut self, epoch: u64) -> Result<Durable, ShardError> {
        self.check_epoch(epoch)?;
        if epoch > self.durable.highest_epoch {
            self.store.set_epoch(epoch)?;
            self.durable.highest_epoch = epoch;
        }
        Ok(self.durable)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ShardError> {
        if epoch < self.durable.highest_epoch {
            return Err(ShardError::Fenced {
                epoch,
                highest: self.durable.highest_epoch,
            });
        }
        Ok(())
    }

    /// Applies a batch from a sender of `epoch`. Entries at or below the applied index are
    /// skipped; the run of new entries up to the first gap is committed in one durable
    /// write; a gap is then reported (after the commit, so the valid prefix is not lost).
    pub fn apply(&mut self, epoch: u64, entries: &[ShardEntry]) -> Result<Applied, ShardError> {
        self.check_epoch(epoch)?;
        let mut applied = self.durable.applied;
        let mut skipped = 0;
        let mut take = Vec::new();
        let mut gap = None;
        for (i, e) in entries.iter().enumerate() {
            if e.index == 0 {
                gap = Some(ShardError::Malformed(format!(
                    "entry {i} of the batch has index 0"
                )));
                break;
            }
            if e.index <= applied {
                skipped += 1;
                continue;
            }
            if e.prev_index > applied || e.prev_index >= e.index {
                gap = Some(if e.prev_index >= e.index {
                    ShardError::Malformed(format!(
                        "entry {} names previous index {} which is not below it",
                        e.index, e.prev_index
                    ))
                } else {
                    ShardError::Gap {
                        index: e.index,
                        prev: e.prev_index,
                        applied,
                    }
                });
                break;
            }
            applied = e.index;
            take.push(i);
        }
        let new = take.len();
        if new > 0 {
            // Fast path: the whole batch is new and contiguous (the common case).
            if new == entries.len() {
                self.store.commit(entries, applied)?;
            } else {
                let subset: Vec<ShardEntry> = take.iter().map(|&i| entries[i].clone()).collect();
                self.store.commit(&subset, applied)?;
            }
            debug_assert!(applied > self.durable.applied);
            self.durable.applied = applied;
        }
        match gap {
            Some(err) => Err(err),
            None => Ok(Applied {
                applied,
                new,
                skipped,
            }),
        }
    }
}

/// An in-memory [`ShardStore`] for unit tests of the protocol rules (not durable).
#[derive(Default)]
pub struct MemStore {
    pub durable: Durable,
    pub state: crate::model::State,
    pub commits: usize,
}

impl ShardStore for MemStore {
    fn load(&self) -> Result<Durable, StoreError> {
        Ok(self.durable)
    }
    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.durable.highest_epoch = epoch;
        Ok(())
    }
    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
        for e in entries {
            crate::model::apply_all(&mut self.state, &e.mutations);
        }
        self.durable.applied = applied;
        self.commits += 1;
        Ok(())
    }
    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError> {
        for (k, v) in &self.state {
            visit(k, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Mutation, mutation::Op};

    fn add(index: u64, prev: u64, key: &str, n: i64) -> ShardEntry {
        ShardEntry {
            index,
            prev_index: prev,
            mutations: vec![Mutation {
                key: key.as_bytes().to_vec().into(),
                op: Some(Op::Add(n)),
            }],
            ..Default::default()
        }
    }

    fn counter(core: &ShardCore<MemStore>, key: &str) -> Option<i64> {
        match core.store().state.get(key.as_bytes()) {
            Some(Value::Counter(n)) => Some(*n),
            _ => None,
        }
    }

    #[test]
    fn an_epoch_below_the_highest_seen_is_rejected() {
        let mut core = ShardCore::open(MemStore::default()).unwrap();
        assert_eq!(core.hello(5).unwrap().highest_epoch, 5);
        assert!(matches!(
            core.hello(4),
            Err(ShardError::Fenced {
                epoch: 4,
                highest: 5
            })
        ));
        // An equal epoch is the same leader reconnecting.
        core.hello(5).unwrap();
        // A batch from an old stream is fenced once a newer leader said hello.
        core.hello(7).unwrap();
        let err = core.apply(5, &[add(1, 0, "k", 1)]).unwrap_err();
        assert!(err.to_string().starts_with("fenced"), "{err}");
        assert_eq!(counter(&core, "k"), None);
    }

    #[test]
    fn a_duplicate_index_is_skipped_and_not_applied_twice() {
        let mut core = ShardCore::open(MemStore::default()).unwrap();
        core.hello(1).unwrap();
        core.apply(1, &[add(1, 0, "k", 1), add(3, 1, "k", 10)])
            .unwrap();
        let out = core
            .apply(
                1,
                &[add(1, 0, "k", 1), add(3, 1, "k", 10), add(4, 3, "k", 100)],
            )
            .unwrap();
        assert_eq!(
            out,
            Applied {
                applied: 4,
                new: 1,
                skipped: 2
            }
        );
        assert_eq!(counter(&core, "k"), Some(111));
    }

    #[test]
    fn a_gap_is_refused_after_committing_the_valid_prefix() {
        let mut core = ShardCore::open(MemStore::default()).unwrap();
        core.hello(1).unwrap();
        // Entry 5 says entry 4 touched this shard too, but 4 never came.
        let err = core
            .apply(1, &[add(1, 0, "k", 1), add(5, 4, "k", 10)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                ShardError::Gap {
                    index: 5,
                    prev: 4,
                    applied: 1
                }
            ),
            "{err}"
        );
        assert_eq!(core.durable().applied, 1);
        assert_eq!(counter(&core, "k"), Some(1));
    }

    #[test]
    fn a_watermark_advances_the_applied_index_without_data() {
        let mut core = ShardCore::open(MemStore::default()).unwrap();
        core.hello(1).unwrap();
        let mut wm = add(50, 0, "k", 0);
        wm.mutations.clear();
        core.apply(1, &[wm]).unwrap();
        assert_eq!(core.durable().applied, 50);
        // The next real entry names 0 as its previous: fine, 0 <= 50.
        core.apply(1, &[add(51, 0, "k", 2)]).unwrap();
        assert_eq!(counter(&core, "k"), Some(2));
    }

    #[test]
    fn a_malformed_previous_index_is_refused() {
        let mut core = ShardCore::open(MemStore::default()).unwrap();
        let err = core.apply(0, &[add(3, 3, "k", 1)]).unwrap_err();
        assert!(matches!(err, ShardError::Malformed(_)), "{err}");
        let err = core.apply(0, &[add(0, 0, "k", 1)]).unwrap_err();
        assert!(matches!(err, ShardError::Malformed(_)), "{err}");
    }
}
