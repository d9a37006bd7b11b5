//! The delivery target: what a shard does with the entries a player sends it.
//!
//! [`ShardCore`] holds the protocol rules and nothing else: checking who is talking (the
//! shard id the sender expects, the log the entries come from, the entry-size limit),
//! fencing by leader epoch, skipping indexes already applied, refusing gaps, and committing
//! each batch through a [`ShardStore`] in one atomic, durable write together with the new
//! applied index. It knows
//! neither gRPC nor a particular storage engine: `service` is the gRPC edge, `gather` how it groups batches into commits, `journal` the
//! default store (a journal of commits, the state in memory), `store` the redb one, `any`
//! the choice between them, and a user can put their own storage behind [`ShardStore`].

pub mod any;
pub mod gather;
pub mod journal;
pub mod service;
pub mod stats;
pub mod store;
mod taking;

use crate::model::Value;
use crate::mutations::{self, Mutation};
use crate::proto::ShardEntry;
use crate::routing::{SlotRange, SlotSet};

/// What a storage backend must provide to sit behind the shard protocol.
///
/// The contract: `commit` applies the mutations of `entries` in order and records `applied`
/// as the applied index in **one atomic write that is durable when it returns**. After a
/// crash, `load` returns exactly the state of the last successful commit.
pub trait ShardStore: Send + 'static {
    /// The durable applied index (0 for a new store) and highest epoch seen.
    fn load(&self) -> Result<Durable, StoreError>;
    /// Which shard this store belongs to, which log it applies and which slots it owns
    /// (each `None` until set).
    fn identity(&self) -> Result<Identity, StoreError>;
    /// Durably records the identity, every field of it: a store that dropped `slots` would
    /// turn off the check that refuses a map giving the shard more slots.
    fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError>;
    /// Durably records a new highest epoch.
    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError>;
    /// Applies `entries` (in index order, all above the current applied index) and sets the
    /// applied index to `applied`, atomically and durably, with the fingerprint of the entry
    /// there ([`fingerprint_at`]), which [`ShardStore::load`] gives back beside it (0 when
    /// a store cannot keep it: the player then cannot tell whether the log still holds that
    /// entry, see `player::behind`).
    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError>;
    /// Visits every key and value in key order.
    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError>;
}

/// A store's durable bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    pub applied: u64,
    pub highest_epoch: u64,
    /// The fingerprint of the entry at `applied` as delivered ([`crate::model::fingerprint`];
    /// 0: not known).
    pub fingerprint: u64,
}

/// The fingerprint a commit of `entries` through `applied` leaves: that of the entry at
/// `applied` (0 when the commit does not end with it, or its sender did not say).
pub fn fingerprint_at(entries: &[ShardEntry], applied: u64) -> u64 {
    entries
        .last()
        .filter(|e| e.index == applied)
        .map_or(0, |e| e.fingerprint)
}

/// Whom a shard's data belongs to: its own shard id, the log its applied index counts
/// entries of, and the slots whose entries it has received. All are persisted, so a
/// restart, a swapped address, a different log behind the LogStore's address or a map that
/// gives it more slots cannot make the shard apply somebody else's entries, or apply a
/// slot's entries without that slot's earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub shard_id: Option<String>,
    pub log_id: Option<String>,
    /// The slots the shard owns (`None` until its first Hello, or for a store written before
    /// slots were recorded).
    pub slots: Option<SlotSet>,
}

/// What a sender announces at the start of a delivery stream.
#[derive(Debug, Clone, Default)]
pub struct HelloInfo {
    pub epoch: u64,
    /// The log the entries come from (required).
    pub log_id: String,
    /// The shard id the sender expects at this address (empty: not checked).
    pub shard_id: String,
    /// The log's entry-size limit (0: not said).
    pub max_entry_bytes: u64,
    /// The slots the sender's map gives this shard (required), as sent.
    pub slots: Vec<SlotRange>,
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
    #[error(
        "wrong shard: this is shard {ours:?} (at {addr}), but the sender's shard map expects {expected:?} at this address"
    )]
    WrongShard {
        ours: String,
        expected: String,
        addr: String,
    },
    #[error(
        "wrong log: shard {shard:?} (at {addr}) is bound to log {ours}, its first delivery's (applied through index {applied}); the sender delivers from log {theirs}. If the sender's log is the right one (a deliberate move, or the first delivery came from a LogStore given by mistake), stop the shard and run `logplayer shard reset-log --log-id {theirs}` on its data"
    )]
    WrongLog {
        shard: String,
        addr: String,
        ours: String,
        theirs: String,
        applied: u64,
    },
    #[error(
        "entry limit: the log accepts entries up to {log} bytes but shard {shard:?} (at {addr}) was started with --max-entry-bytes {ours}; use the same value everywhere"
    )]
    EntryLimit {
        shard: String,
        addr: String,
        log: u64,
        ours: u64,
    },
    #[error(
        "slots grew: shard {shard:?} (at {addr}) has applied entries up to index {applied} for slots {ours}, but the sender's shard map also gives it slots {extra}, whose earlier entries it never received; give those slots to a new shard (it is delivered the log from its start), or map this shard back to slots it owns"
    )]
    SlotsGrew {
        shard: String,
        addr: String,
        applied: u64,
        ours: SlotSet,
        extra: SlotSet,
    },
    #[error("data directory belongs to shard {stored:?}, but this shard was started as {given:?}")]
    NotThisShard { stored: String, given: String },
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error(
        "entry {index} is {size} bytes, above this shard's --max-entry-bytes {limit} (the log \
         accepts no such entry: the sender is not a player delivering a log of this limit)"
    )]
    TooLarge { index: u64, size: usize, limit: u64 },
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

/// Who a shard is and where it listens, as its refusals name it.
#[derive(Debug, Clone)]
pub struct ShardSelf {
    pub id: String,
    pub addr: String,
    pub max_entry_bytes: u64,
}

/// The protocol rules of a shard around a store.
pub struct ShardCore<S: ShardStore> {
    store: S,
    durable: Durable,
    identity: Identity,
    me: ShardSelf,
    /// The slots the current sender's Hello gives this shard (`None` before a Hello):
    /// recorded with the first entry applied under them, and every key applied must be in
    /// one of them.
    offered: Option<SlotSet>,
}

impl<S: ShardStore> ShardCore<S> {
    /// Opens the rules around `store` for shard `me.id`: a store that belongs to another
    /// shard is refused; a new one is stamped with this id.
    pub fn open(mut store: S, me: ShardSelf) -> Result<Self, ShardError> {
        let durable = store.load()?;
        let mut identity = store.identity()?;
        match &identity.shard_id {
            Some(stored) if *stored != me.id => {
                return Err(ShardError::NotThisShard {
                    stored: stored.clone(),
                    given: me.id.clone(),
                });
            }
            Some(_) => {}
            None => {
                identity.shard_id = Some(me.id.clone());
                store.set_identity(&identity)?;
            }
        }
        Ok(ShardCore {
            store,
            durable,
            identity,
            me,
            offered: None,
        })
    }

    pub fn durable(&self) -> Durable {
        self.durable
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn me(&self) -> &ShardSelf {
        &self.me
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store back (to reopen it, as a restart does).
    pub fn into_store(self) -> S {
        self.store
    }

    /// A sender announces itself. Refuses a sender that expects another shard here, that
    /// delivers from another log than the one this shard applied, whose log accepts larger
    /// entries than this shard, whose epoch is below the highest seen, or whose map gives
    /// this shard a slot it does not own once it has applied an entry. Persists the log id
    /// of the first delivery and a higher epoch before returning, so a restart cannot forget
    /// either; the slots it is given are persisted with the first entry applied under them.
    pub fn hello(&mut self, hello: &HelloInfo) -> Result<Durable, ShardError> {
        // Every field of the Hello is checked, so each must be said: a sender that leaves
        // one out would skip its check (the wrong shard, a larger entry limit).
        if hello.shard_id.is_empty() {
            return Err(ShardError::Malformed(
                "the Hello names no shard id; a sender must say which shard it delivers to".into(),
            ));
        }
        if hello.max_entry_bytes == 0 {
            return Err(ShardError::Malformed(
                "the Hello names no entry limit (max_entry_bytes 0); a sender must say its \
                 log's --max-entry-bytes"
                    .into(),
            ));
        }
        if hello.shard_id != self.me.id {
            return Err(ShardError::WrongShard {
                ours: self.me.id.clone(),
                expected: hello.shard_id.clone(),
                addr: self.me.addr.clone(),
            });
        }
        if hello.log_id.is_empty() {
            return Err(ShardError::Malformed(
                "the Hello names no log id; a sender must say which log it delivers".into(),
            ));
        }
        if let Some(ours) = &self.identity.log_id
            && *ours != hello.log_id
        {
            return Err(ShardError::WrongLog {
                shard: self.me.id.clone(),
                addr: self.me.addr.clone(),
                ours: ours.clone(),
                theirs: hello.log_id.clone(),
                applied: self.durable.applied,
            });
        }
        if hello.max_entry_bytes > self.me.max_entry_bytes {
            return Err(ShardError::EntryLimit {
                shard: self.me.id.clone(),
                addr: self.me.addr.clone(),
                log: hello.max_entry_bytes,
                ours: self.me.max_entry_bytes,
            });
        }
        self.check_epoch(hello.epoch)?;
        let slots = self.check_slots(&hello.slots)?;
        if self.identity.log_id.is_none() {
            if self.durable.applied > 0 {
                tracing::warn!(shard = %self.me.id, applied = self.durable.applied, log_id = %hello.log_id, "this shard applied entries before log ids existed; adopting the sender's log");
            }
            let mut identity = self.identity.clone();
            identity.log_id = Some(hello.log_id.clone());
            self.store.set_identity(&identity)?;
            self.identity = identity;
        }
        if hello.epoch > self.durable.highest_epoch {
            self.store.set_epoch(hello.epoch)?;
            self.durable.highest_epoch = hello.epoch;
        }
        self.offered = Some(slots);
        Ok(self.durable)
    }

    /// The Hello's slots as a set, refused when malformed or when they give this shard a
    /// slot it does not own after it has applied an entry: it never received that slot's
    /// earlier entries, which the sender will not deliver (it resumes from the applied
    /// index). Before the first entry any slots are taken: everything is still to come.
    fn check_slots(&self, given: &[SlotRange]) -> Result<SlotSet, ShardError> {
        if given.is_empty() {
            return Err(ShardError::Malformed(
                "the Hello names no slots; a sender must say which slots its shard map gives \
                 this shard"
                    .into(),
            ));
        }
        let given = SlotSet::from_ranges(given.iter().copied())
            .map_err(|e| ShardError::Malformed(format!("the Hello's slots: {e}")))?;
        self.refuse_growth(&given)?;
        Ok(given)
    }

    /// Refuses `given` when, after this shard applied an entry, it holds a slot the shard
    /// does not own (see [`ShardCore::hello`]).
    fn refuse_growth(&self, given: &SlotSet) -> Result<(), ShardError> {
        if self.durable.applied == 0 || mutations::on(Mutation::ShardIgnoresSlots) {
            return Ok(());
        }
        if let Some(ours) = &self.identity.slots {
            let extra = given.minus(ours);
            if !extra.is_empty() {
                return Err(ShardError::SlotsGrew {
                    shard: self.me.id.clone(),
                    addr: self.me.addr.clone(),
                    applied: self.durable.applied,
                    ours: ours.clone(),
                    extra,
                });
            }
        }
        Ok(())
    }

    /// The slots the last accepted Hello gave this shard.
    pub fn offered(&self) -> Option<&SlotSet> {
        self.offered.as_ref()
    }

    /// [`ShardCore::apply`] for the sender whose Hello gave `slots` (each delivery stream
    /// keeps its own: another stream's Hello may have given others since).
    pub fn apply_for(
        &mut self,
        epoch: u64,
        slots: &SlotSet,
        entries: &[ShardEntry],
    ) -> Result<Applied, ShardError> {
        if self.offered.as_ref() != Some(slots) {
            self.offered = Some(slots.clone());
        }
        self.apply(epoch, entries)
    }

    /// Records the slots of the current sender's Hello, if they are not what is recorded,
    /// before the first entry applied under them: from then on the shard lacks the later
    /// entries of any slot it gave up. Not at the Hello, so a map given by mistake and
    /// corrected before anything was applied under it leaves no trace. They are checked
    /// again here: a Hello taken before the shard applied anything may be from a sender
    /// whose map grew the shard's slots since another sender applied entries.
    fn record_offered(&mut self) -> Result<(), ShardError> {
        let Some(offered) = &self.offered else {
            return Ok(());
        };
        if self.identity.slots.as_ref() == Some(offered) {
            return Ok(());
        }
        self.refuse_growth(offered)?;
        match &self.identity.slots {
            None if self.durable.applied > 0 => {
                tracing::warn!(shard = %self.me.id, applied = self.durable.applied, slots = %offered, "this shard applied entries before it recorded its slots; taking the sender's")
            }
            None => {
                tracing::info!(shard = %self.me.id, slots = %offered, "recorded the slots this shard owns")
            }
            Some(before) => {
                tracing::info!(shard = %self.me.id, %before, now = %offered, "this shard owns fewer slots from now on")
            }
        }
        let mut identity = self.identity.clone();
        identity.slots = Some(offered.clone());
        self.store.set_identity(&identity)?;
        self.identity = identity;
        Ok(())
    }

    /// Refuses an entry to apply that is above this shard's entry limit, or that changes a
    /// key of a slot the sender's Hello did not give this shard (the sender routes by
    /// another map than it announced).
    fn check_entry(&self, e: &ShardEntry) -> Result<(), ShardError> {
        let size = crate::limits::entry_bytes(&e.mutations);
        if size as u64 > self.me.max_entry_bytes {
            return Err(ShardError::TooLarge {
                index: e.index,
                size,
                limit: self.me.max_entry_bytes,
            });
        }
        let Some(offered) = &self.offered else {
            return Ok(());
        };
        if offered.ranges() == [SlotRange::new(0, crate::routing::slots::MAX_SLOT)] {
            return Ok(());
        }
        for m in &e.mutations {
            let slot = crate::routing::slot(&m.key);
            if !offered.contains(slot) {
                // The key's start only: a key has no length limit of its own.
                let shown = &m.key[..m.key.len().min(64)];
                return Err(ShardError::Malformed(format!(
                    "entry {} changes key {:?}{} of slot {slot}, which the sender's Hello does \
                     not give this shard (it gives {offered}): the sender routes by another \
                     map than it said",
                    e.index,
                    String::from_utf8_lossy(shown),
                    if shown.len() < m.key.len() { "..." } else { "" }
                )));
            }
        }
        Ok(())
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ShardError> {
        if epoch < self.durable.highest_epoch && !mutations::on(Mutation::ShardIgnoresEpochs) {
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
        let mut take: Vec<usize> = Vec::new();
        let mut gap = None;
        let before = applied;
        for (i, e) in entries.iter().enumerate() {
            if e.index == 0 {
                gap = Some(ShardError::Malformed(format!(
                    "entry {i} of the batch has index 0"
                )));
                break;
            }
            // A resent entry (at or below the applied index) is skipped. But one above what
            // was applied before this call that this call did not apply was passed over by
            // the entry before it (which named an earlier previous index): a sender's
            // mistake, refused rather than skipped with its mutations lost.
            // (Only a resend within this call gets past the first two tests: rare, so a scan.)
            if e.index <= applied
                && e.index > before
                && !take.iter().any(|&j| entries[j].index == e.index)
            {
                gap = Some(ShardError::Malformed(format!(
                    "entry {} comes after entry {applied}, which named an earlier previous \
                     index: indexes of one shard's entries must increase",
                    e.index
                )));
                break;
            }
            if e.index <= applied {
                if mutations::on(Mutation::ShardReapplies) {
                    take.push(i);
                } else {
                    skipped += 1;
                }
                continue;
            }
            let missing = e.prev_index > applied && !mutations::on(Mutation::ShardAcceptsGaps);
            if missing || e.prev_index >= e.index {
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
            // Only entries to apply are checked (a resend is skipped whatever it holds).
            if let Err(refused) = self.check_entry(e) {
                gap = Some(refused);
                break;
            }
            applied = e.index;
            take.push(i);
        }
        let new = take.len();
        if applied > self.durable.applied {
            self.record_offered()?;
        }
        if new > 0 {
            // Fast path: the whole batch is new and contiguous (the common case).
            let fingerprint = if new == entries.len() {
                self.store.commit(entries, applied)?;
                fingerprint_at(entries, applied)
            } else {
                let subset: Vec<ShardEntry> = take.iter().map(|&i| entries[i].clone()).collect();
                self.store.commit(&subset, applied)?;
                fingerprint_at(&subset, applied)
            };
            debug_assert!(applied > self.durable.applied);
            self.durable.applied = applied;
            self.durable.fingerprint = fingerprint;
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

/// Checks a batch as it arrives on a `Deliver` stream, before anything of it is applied:
/// its entries' indexes increase over the whole stream (`last` is the stream's highest so
/// far, updated), and every mutation has a key and an op, as every entry of the log has. A
/// player never sends otherwise; a sender that does is refused by name, rather than have an
/// entry passed over (skipped as a resend once a later one was committed) or a mutation the
/// log would refuse applied.
pub fn check_arriving(entries: &[ShardEntry], last: &mut u64) -> Result<(), ShardError> {
    for e in entries {
        if e.index <= *last {
            return Err(ShardError::Malformed(format!(
                "entry {} comes after entry {} on this stream: indexes on one stream must increase",
                e.index, *last
            )));
        }
        *last = e.index;
        for (i, m) in e.mutations.iter().enumerate() {
            if m.key.is_empty() {
                return Err(ShardError::Malformed(format!(
                    "entry {}: mutation {i} has an empty key",
                    e.index
                )));
            }
            if m.op.is_none() {
                return Err(ShardError::Malformed(format!(
                    "entry {}: mutation {i} has no op",
                    e.index
                )));
            }
        }
    }
    Ok(())
}

/// An in-memory [`ShardStore`] for unit tests of the protocol rules (not durable).
#[derive(Default)]
pub struct MemStore {
    pub durable: Durable,
    pub identity: Identity,
    pub state: crate::model::State,
    pub commits: usize,
}

impl ShardStore for MemStore {
    fn load(&self) -> Result<Durable, StoreError> {
        Ok(self.durable)
    }
    fn identity(&self) -> Result<Identity, StoreError> {
        Ok(self.identity.clone())
    }
    fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        self.identity = identity.clone();
        Ok(())
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
        self.durable.fingerprint = fingerprint_at(entries, applied);
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
mod tests;
