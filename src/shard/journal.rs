//! The shard's default store: a **journal** of commits on the segment WAL ([`crate::wal`]),
//! the whole state in memory, and a **snapshot** of that state now and then so the journal
//! can be cut.
//!
//! # Why not a B-tree
//! A copy-on-write B-tree (redb, [`super::store`]) rewrites every page a commit touches —
//! leaves, branches, its allocator state — and a list value whole on every `append`: at the
//! bench's shape the shards wrote 13–20 bytes to disk per byte delivered. A commit here is
//! one WAL record (the mutations as received, plus the new applied index) and one
//! `fdatasync`: each delivered byte is written once, plus the padding that ends a commit on
//! a page (`pad_to_page`) and the snapshots.
//!
//! # What it costs
//! The state lives in memory (like Redis with its append-only file), so a shard's data must
//! fit in its RAM; a shard whose data does not fit runs with `--store redb`. Opening replays
//! the journal written since the last snapshot.
//!
//! # Snapshots
//! When the journal written since the last snapshot reaches [`SNAPSHOT_MIN_BYTES`] and the
//! size of the last snapshot (Redis's rewrite rule at 100%), the state as of the last record
//! is encoded a slice per commit while the commits go on (see `taking.rs`), and
//! written whole on a thread of its own (`snapshot.tmp`, fsync, rename, directory fsync: a
//! crash leaves the old snapshot or the new one, whole); once it is durable, the journal's
//! segments before it are removed. Disk use stays within about twice the state plus
//! [`SNAPSHOT_MIN_BYTES`] (the padding counts toward the journal's size). Snapshots add
//! nothing to the bytes written per byte delivered while the journal since the last one is
//! below [`SNAPSHOT_MIN_BYTES`], about 1 more for a state of steady size, and below 2 more
//! for a state that only grows; the journal itself writes whole pages per commit (1.9-2.9
//! bytes per byte delivered at the bench's 10 shards x 10 KB x 2,000/s when each commit took
//! what had arrived; 1.6 since a commit on a busy stream waits for its pages to fill, see
//! [`super::gather`]).
//!
//! # On disk
//! ```text
//! DIR/journal/*.wal   WAL segments with marks (see [`crate::wal`]); record = protobuf
//!                     `Record` (mutations, applied index and the fingerprint of its
//!                     entry, highest epoch, identity: whichever changed), one per
//!                     commit, each in a group of its own
//! DIR/snapshot        [magic "LPSNAP\0\x01"] frame* ; frame = [len u32 LE][crc32c u32 LE][payload]
//!                     first frame: protobuf `SnapshotHeader` (applied and its entry's
//!                     fingerprint, epoch, identity, the journal index it covers up to, the
//!                     key count); then one frame per key:
//!                     [key len u32 LE][key][value as `Value::encode`]
//! ```
//! Every frame and record is checksummed; a torn journal tail is cut at open (it was never
//! acknowledged), anything else that does not check is refused with the file and place: a
//! damaged commit that a later group's mark, or the tail mark a synced commit leaves after
//! it, says was synced included.

use std::collections::btree_map::Entry;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use super::taking::{Taking, TooLarge};
use super::{Durable, Identity, ShardStore, StoreError};
use crate::model::Value;
use crate::proto::{Mutation, ShardEntry, mutation::Op};
use crate::routing::SlotSet;
use crate::wal::{Wal, WalConfig, WalError, WalReader};

/// A key as the journal store holds it: up to 24 bytes inline (most keys are short), so that
/// a lookup compares the keys of a B-tree node where they lie instead of following a pointer
/// to each. At 2 shards x 50,000 transactions/s the state's lookups were half of a shard's
/// CPU, most of it waiting for memory (see the README's Numbers).
pub(super) type Key = smallvec::SmallVec<[u8; 24]>;

/// The state the journal store keeps in memory: the model's, with [`Key`]s.
pub(super) type State = std::collections::BTreeMap<Key, Value>;

/// The journal's folder inside the shard's data directory.
pub const JOURNAL_DIR: &str = "journal";
/// The snapshot's file name inside the shard's data directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The journal written since the last snapshot that triggers the next one, at least.
pub const SNAPSHOT_MIN_BYTES: u64 = 64 * 1024 * 1024;
pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"LPSNAP\0\x01";
/// Journal segments: small enough that a snapshot frees space soon after it is written.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Journal bytes read per step while replaying at open.
const REPLAY_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// What can go wrong with the journal or the snapshot; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {path} is corrupt at byte {offset}: {reason}")]
    Snapshot {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal record {index} in {dir} is corrupt: {reason}")]
    Record {
        dir: PathBuf,
        index: u64,
        reason: String,
    },
    #[error(
        "the journal in {dir} holds records {first}..={last}, but the snapshot needs every record from {needed} on: records are missing"
    )]
    Missing {
        dir: PathBuf,
        first: u64,
        last: u64,
        needed: u64,
    },
    #[error("writing the snapshot stopped: {0}")]
    SnapshotThread(String),
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// One journal record: whatever a write changed.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, optional, tag = "1")]
    applied: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    mutations: Vec<Mutation>,
    #[prost(uint64, optional, tag = "3")]
    highest_epoch: Option<u64>,
    #[prost(message, optional, tag = "4")]
    identity: Option<IdentityRecord>,
    /// The fingerprint of the entry at `applied` (absent: not known); only beside `applied`.
    #[prost(fixed64, optional, tag = "5")]
    fingerprint: Option<u64>,
    // Tag 15: padding (bytes), skipped when decoding; see [`pad_to_page`].
}

/// The page size commits are aligned to.
pub(crate) const PAGE: u64 = 4096;
/// The padding field's tag: wire type 2 (bytes), field 15, as one byte.
const PAD_TAG: u8 = (15 << 3) | 2;

/// Pads `record` (with a bytes field that decoding skips) so that, written at `offset` of
/// its segment after the WAL's 8-byte record header, it ends on a page boundary. The next
/// commit then starts on a fresh page: its `fdatasync` writes only its own pages, instead
/// of rewriting the partly filled page the previous commit ended in (which, for commits of a
/// few KB, doubled the bytes written to disk).
fn pad_to_page(record: &mut Vec<u8>, offset: u64) {
    let end = offset + 8 + record.len() as u64;
    let mut gap = (PAGE - end % PAGE) % PAGE;
    if gap == 0 {
        return;
    }
    if gap < 2 || gap == 130 {
        // Too small for a field, or the one size a field cannot have (a 128-byte body
        // needs a 2-byte length: 131; a 127-byte body takes 129).
        gap += PAGE;
    }
    // The field: tag (1 byte), length (varint: 1 byte below 128, 2 below 16,384), bytes.
    let len = if gap - 2 < 128 { gap - 2 } else { gap - 3 };
    record.push(PAD_TAG);
    prost::encoding::encode_varint(len, record);
    record.resize(record.len() + len as usize, 0);
}

#[derive(Clone, PartialEq, prost::Message)]
struct IdentityRecord {
    #[prost(string, optional, tag = "1")]
    shard_id: Option<String>,
    #[prost(string, optional, tag = "2")]
    log_id: Option<String>,
    /// The slots in their text form ([`SlotSet`]'s `Display`).
    #[prost(string, optional, tag = "3")]
    slots: Option<String>,
}

impl From<&Identity> for IdentityRecord {
    fn from(i: &Identity) -> Self {
        IdentityRecord {
            shard_id: i.shard_id.clone(),
            log_id: i.log_id.clone(),
            slots: i.slots.as_ref().map(ToString::to_string),
        }
    }
}

impl TryFrom<IdentityRecord> for Identity {
    /// Why the record does not read (its slots do not parse).
    type Error = String;

    fn try_from(i: IdentityRecord) -> Result<Self, String> {
        let slots = i
            .slots
            .map(|text| text.parse::<SlotSet>())
            .transpose()
            .map_err(|e| format!("the shard identity's slots: {e}"))?;
        Ok(Identity {
            shard_id: i.shard_id,
            log_id: i.log_id,
            slots,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SnapshotHeader {
    #[prost(uint64, tag = "1")]
    applied: u64,
    #[prost(uint64, tag = "2")]
    highest_epoch: u64,
    #[prost(message, optional, tag = "3")]
    identity: Option<IdentityRecord>,
    /// The first journal index this snapshot does not contain.
    #[prost(uint64, tag = "4")]
    pub(super) next_record: u64,
    #[prost(uint64, tag = "5")]
    pub(super) keys: u64,
    #[prost(fixed64, tag = "6")]
    fingerprint: u64,
}

/// A snapshot on its way to disk.
struct Writing {
    next_record: u64,
    thread: std::thread::JoinHandle<Result<u64, JournalError>>,
}

impl Drop for JournalStore {
    /// Waits for a snapshot being written, so that a store opened again on the same
    /// directory (a shard reopens its store after a failed commit) never sees an older
    /// snapshot written over its own.
    fn drop(&mut self) {
        if let Some(w) = self.writing.take() {
            let _ = w.thread.join();
        }
    }
}

/// The journal store of one shard.
pub struct JournalStore {
    dir: PathBuf,
    wal: Wal,
    state: State,
    durable: Durable,
    identity: Identity,
    /// Journal bytes written since the last snapshot was taken.
    since_snapshot: u64,
    /// The least of those that triggers a snapshot ([`SNAPSHOT_MIN_BYTES`]; tests lower it).
    snapshot_min_bytes: u64,
    /// Size of the last snapshot written (0: none).
    snapshot_bytes: u64,
    writing: Option<Writing>,
    /// A snapshot being taken, a slice per commit.
    taking: Option<Taking>,
    /// Bytes of a snapshot encoded per commit, at least ([`super::taking::STEP_BYTES`]; all
    /// at once under simulation); see [`step_budget`].
    snapshot_step_bytes: usize,
    /// Whether a step grows with the commit's bytes and the quiet before it (tests turn it
    /// off to take one key per commit).
    step_scales: bool,
    /// When the last commit was made.
    last_commit: std::time::Instant,
    /// Whether snapshots are written on the commit thread (under simulation, and in tests).
    inline_snapshots: bool,
    /// Whether commits fsync (see [`JournalStore::set_fsync`]).
    fsync: bool,
    /// The record being encoded (reused).
    buf: Vec<u8>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Applies one op to the state, in place when the value already has the op's kind (a list
/// grows by one item, a counter adds) and through [`Value::apply`] otherwise: the same
/// semantics either way.
fn apply_op(state: &mut State, key: &[u8], op: &Op) {
    if let Some(value) = state.get_mut(key) {
        match (value, op) {
            (Value::List(items), Op::Append(item)) => return items.push(item.to_vec()),
            (Value::Counter(n), Op::Add(delta)) => return *n = n.wrapping_add(*delta),
            _ => {}
        }
    }
    match state.entry(Key::from_slice(key)) {
        Entry::Occupied(slot) => {
            let (key, current) = slot.remove_entry();
            if let Some(v) = Value::apply(Some(current), op) {
                state.insert(key, v);
            }
        }
        Entry::Vacant(slot) => {
            if let Some(v) = Value::apply(None, op) {
                slot.insert(v);
            }
        }
    }
}

fn apply_mutations<'a>(state: &mut State, mutations: impl IntoIterator<Item = &'a Mutation>) {
    for m in mutations {
        if let Some(op) = &m.op {
            apply_op(state, &m.key, op);
        }
    }
}

impl JournalStore {
    /// Opens (or creates) the store in `dir`: reads the snapshot, then replays the journal
    /// after it.
    pub fn open(dir: &Path) -> Result<JournalStore, StoreError> {
        crate::disk::create_dir_all(dir).map_err(io_at(dir))?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let mut config = WalConfig::new(dir.join(JOURNAL_DIR));
        config.segment_bytes = SEGMENT_BYTES;
        // A record is one commit: a group of batches, each within the message limit.
        config.max_record_bytes = crate::wal::MAX_RECORD_BYTES;
        // Marks, as in the log: each synced commit leaves a tail mark after it, so a byte
        // flipped in an acknowledged commit (the last one included) refuses the open instead
        // of being cut as a torn tail, which would take back commits the player was told are
        // applied.
        config.marks = true;
        let (wal, _) = Wal::open(config).map_err(JournalError::from)?;
        let (mut state, mut durable, mut identity, next, snapshot_bytes) = match snapshot {
            Some(s) => s,
            None => (State::new(), Durable::default(), Identity::default(), 1, 0),
        };
        let (first, last) = (wal.first_index(), wal.last_index());
        if first > next || last + 1 < next {
            return Err(JournalError::Missing {
                dir: dir.join(JOURNAL_DIR),
                first,
                last,
                needed: next,
            }
            .into());
        }
        let since_snapshot = replay_journal(
            dir,
            &wal.reader(),
            next..=last,
            (&mut state, &mut durable, &mut identity),
        )?;
        tracing::debug!(dir = %dir.display(), keys = state.len(), replayed = last + 1 - next, "journal opened");
        Ok(JournalStore {
            dir: dir.to_owned(),
            wal,
            state,
            durable,
            identity,
            since_snapshot,
            snapshot_min_bytes: SNAPSHOT_MIN_BYTES,
            snapshot_bytes,
            writing: None,
            taking: None,
            snapshot_step_bytes: if crate::blocking::inline() {
                usize::MAX
            } else {
                super::taking::STEP_BYTES
            },
            step_scales: true,
            last_commit: std::time::Instant::now(),
            inline_snapshots: crate::blocking::inline(),
            fsync: true,
            buf: Vec::new(),
        })
    }

    /// Opens an existing store (offline `shard dump`, `shard reset-log`).
    pub fn open_existing(dir: &Path) -> Result<JournalStore, StoreError> {
        if !Self::is_in(dir) {
            return Err(StoreError::Backend(
                format!(
                    "no shard journal in {} (neither {JOURNAL_DIR}/ nor {SNAPSHOT_FILE})",
                    dir.display()
                )
                .into(),
            ));
        }
        Self::open(dir)
    }

    /// Whether `dir` holds a journal store.
    pub fn is_in(dir: &Path) -> bool {
        [JOURNAL_DIR, SNAPSHOT_FILE]
            .iter()
            .any(|name| crate::disk::exists(&dir.join(name)).unwrap_or(false))
    }

    /// With `false`, commits are written but not fsynced (the next synced write, or the
    /// kernel, makes them durable). Still atomic and exactly-once: a crash loses a suffix
    /// of whole commits, with their applied index. For benchmarks only.
    pub fn set_fsync(&mut self, fsync: bool) {
        self.fsync = fsync;
    }

    /// See [`super::store::RedbStore::reset_log`].
    pub fn reset_log(&mut self, log_id: &str, applied: u64) -> Result<(), StoreError> {
        let mut identity = self.identity.clone();
        identity.log_id = Some(log_id.to_owned());
        self.write(
            Record {
                applied: Some(applied),
                identity: Some((&identity).into()),
                ..Default::default()
            },
            true,
        )?;
        self.identity = identity;
        self.durable.applied = applied;
        // The entry at `applied` of the new log was never delivered here.
        self.durable.fingerprint = 0;
        Ok(())
    }

    #[cfg(test)]
    fn blocking_snapshots_for_test(&mut self) {
        self.inline_snapshots = true;
        self.snapshot_step_bytes = usize::MAX;
    }

    /// How many keys the shard holds.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        Ok(self.state.len() as u64)
    }

    /// Appends one record that is not a commit of entries.
    fn write(&mut self, record: Record, sync: bool) -> Result<(), StoreError> {
        self.buf.clear();
        record
            .encode(&mut self.buf)
            .map_err(|e| StoreError::Backend(format!("encoding a journal record: {e}").into()))?;
        self.append(sync)
    }

    /// Applies the mutations of a commit to the state, keeping first what a snapshot being
    /// taken still needs of it.
    fn apply(&mut self, entries: &[ShardEntry]) {
        let mutations = entries.iter().flat_map(|e| &e.mutations);
        let Some(taking) = &mut self.taking else {
            return apply_mutations(&mut self.state, mutations);
        };
        for m in mutations {
            if let Some(op) = &m.op {
                taking.keep_before(&self.state, &m.key, op);
                apply_op(&mut self.state, &m.key, op);
            }
        }
    }

    /// Appends `self.buf` as one record, padded to end on a page boundary.
    fn append(&mut self, sync: bool) -> Result<(), StoreError> {
        let sync = sync && !crate::mutations::on(crate::mutations::Mutation::ShardSkipsFsync);
        pad_to_page(&mut self.buf, self.wal.next_record_offset());
        let wrote = if sync {
            self.wal.append_batch(&[&self.buf])
        } else {
            self.wal.append_batch_unsynced(&[&self.buf])
        };
        wrote.map_err(JournalError::from)?;
        self.since_snapshot += self.buf.len() as u64;
        Ok(())
    }

    /// Encodes a commit of `entries` (and `applied` with its fingerprint, unless `None`)
    /// into `self.buf`, field by field, so the mutations are not copied into a `Record`
    /// first.
    fn encode_commit(&mut self, entries: &[ShardEntry], applied: Option<u64>) {
        self.buf.clear();
        if let Some(a) = applied {
            prost::encoding::uint64::encode(1, &a, &mut self.buf);
            let fingerprint = super::fingerprint_at(entries, a);
            if fingerprint != 0 {
                prost::encoding::fixed64::encode(5, &fingerprint, &mut self.buf);
            }
        }
        for e in entries {
            for m in &e.mutations {
                prost::encoding::message::encode(2, m, &mut self.buf);
            }
        }
    }

    /// The `shard-split-commit` mutation: the data in one record, the applied index in a
    /// second, with a crash between them one time in 50.
    fn split_commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
        self.encode_commit(entries, None);
        self.append(self.fsync)?;
        self.apply(entries);
        if rand::random::<u8>() < 5 {
            tracing::warn!(
                applied,
                "mutation shard-split-commit: crashing between the data and the applied index"
            );
            std::process::abort();
        }
        let fingerprint = super::fingerprint_at(entries, applied);
        self.write(
            Record {
                applied: Some(applied),
                fingerprint: Some(fingerprint).filter(|&f| f != 0),
                ..Default::default()
            },
            self.fsync,
        )?;
        self.durable.applied = applied;
        self.durable.fingerprint = fingerprint;
        Ok(())
    }

    /// Finishes a snapshot written in the background; encodes the next slice of the one
    /// being taken ([`Taking`]), and writes it once whole; starts the next one when the
    /// journal since the last has grown enough (see the module docs).
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let now = std::time::Instant::now();
        let quiet = now.saturating_duration_since(std::mem::replace(&mut self.last_commit, now));
        if let Some(w) = self.writing.take_if(|w| w.thread.is_finished()) {
            self.finish_snapshot(w)?;
        }
        if self.taking.is_none() {
            if self.writing.is_some()
                || self.since_snapshot < self.snapshot_min_bytes.max(self.snapshot_bytes)
            {
                return Ok(());
            }
            if !self.fsync {
                // The snapshot says which records it covers: they must not be lost after it.
                self.wal.sync_point().sync().map_err(JournalError::from)?;
            }
            self.since_snapshot = 0;
            let next_record = self.wal.last_index() + 1;
            tracing::info!(dir = %self.dir.display(), keys = self.state.len(), next_record, "taking a snapshot");
            self.taking = Some(Taking::start(SnapshotHeader {
                applied: self.durable.applied,
                highest_epoch: self.durable.highest_epoch,
                identity: Some((&self.identity).into()),
                next_record,
                keys: 0,
                fingerprint: self.durable.fingerprint,
            }));
        }
        let Some(taking) = &mut self.taking else {
            return Ok(());
        };
        let budget = step_budget(
            self.snapshot_step_bytes,
            self.step_scales.then_some((self.buf.len(), quiet)),
        );
        let (head, rows) = match taking.step(&self.state, budget) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Ok(()),
            Err(TooLarge { key, bytes }) => {
                // Given up, not failed: the journal keeps everything since the last
                // snapshot, and a snapshot is tried again once it has grown as much again.
                tracing::error!(dir = %self.dir.display(), key = %String::from_utf8_lossy(&key), bytes, "cannot take a snapshot: one key's value is larger than a snapshot row holds (4 GiB); the journal is kept whole (and grows, and the next start replays it) until the value is smaller");
                self.taking = None;
                return Ok(());
            }
        };
        let next_record = taking.next_record();
        self.taking = None;
        tracing::info!(dir = %self.dir.display(), bytes = head.len() + rows.len(), next_record, "writing a snapshot");
        let path = self.dir.join(SNAPSHOT_FILE);
        let write = move || {
            crate::disk::write_durably_parts(&path, &[&head, &rows]).map_err(io_at(&path))?;
            Ok((head.len() + rows.len()) as u64)
        };
        if self.inline_snapshots {
            let len = write()?;
            return self.snapshot_written(next_record, len);
        }
        let thread = std::thread::Builder::new()
            .name("shard-snapshot".into())
            .spawn(write)
            .map_err(io_at(&self.dir))?;
        self.writing = Some(Writing {
            next_record,
            thread,
        });
        Ok(())
    }

    fn finish_snapshot(&mut self, w: Writing) -> Result<(), StoreError> {
        let len = w
            .thread
            .join()
            .map_err(|_| JournalError::SnapshotThread("the thread panicked".into()))??;
        self.snapshot_written(w.next_record, len)
    }

    /// The snapshot covering the journal before `next_record` is durable: those records
    /// are no longer needed.
    fn snapshot_written(&mut self, next_record: u64, len: u64) -> Result<(), StoreError> {
        self.snapshot_bytes = len;
        let removed = self
            .wal
            .remove_below(next_record)
            .map_err(JournalError::from)?;
        tracing::info!(dir = %self.dir.display(), bytes = len, next_record, removed_segments = removed, "snapshot written");
        Ok(())
    }
}

/// Applies one replayed record (refused when its identity does not read).
fn replay(
    record: Record,
    state: &mut State,
    durable: &mut Durable,
    identity: &mut Identity,
) -> Result<(), String> {
    apply_mutations(state, &record.mutations);
    if let Some(a) = record.applied {
        durable.applied = a;
        durable.fingerprint = record.fingerprint.unwrap_or(0);
    }
    if let Some(e) = record.highest_epoch {
        durable.highest_epoch = e;
    }
    if let Some(i) = record.identity {
        *identity = i.try_into()?;
    }
    Ok(())
}

pub(super) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), FrameTooLarge> {
    push_frame_with(out, |out| out.extend_from_slice(payload))
}

/// A frame's payload of this many bytes, more than its length field (`u32`) holds: one
/// key's value grown past 4 GiB (a list appended to without end; no entry limit bounds
/// it).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FrameTooLarge(pub usize);

/// The length field of a frame of `bytes` bytes. The length was cast (`as u32`), which
/// wrapped: the snapshot was written with a wrong length under a right checksum, its
/// journal removed, and the shard never opened again.
fn frame_len(bytes: usize) -> Result<u32, FrameTooLarge> {
    u32::try_from(bytes).map_err(|_| FrameTooLarge(bytes))
}

/// Appends a frame whose payload `payload` appends to `out` in place; on
/// [`FrameTooLarge`], `out` is left as it was.
fn push_frame_with(
    out: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FrameTooLarge> {
    let at = out.len();
    out.extend_from_slice(&[0; 8]); // the frame's length and checksum, below
    payload(out);
    let written = &out[at + 8..];
    let len = match frame_len(written.len()) {
        Ok(len) => len,
        Err(e) => {
            out.truncate(at);
            return Err(e);
        }
    };
    let crc = crc32c::crc32c(written);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Replays the journal's records in `range` onto `into` (state, durable, identity), as
/// opening does; returns the bytes replayed.
fn replay_journal(
    dir: &Path,
    reader: &WalReader,
    range: std::ops::RangeInclusive<u64>,
    into: (&mut State, &mut Durable, &mut Identity),
) -> Result<u64, JournalError> {
    let (state, durable, identity) = into;
    let (mut from, last) = range.into_inner();
    let mut bytes = 0;
    while from <= last {
        let records = reader.read_range(from, last, REPLAY_CHUNK_BYTES)?;
        if records.is_empty() {
            return Err(JournalError::Missing {
                dir: dir.join(JOURNAL_DIR),
                first: reader.first_index(),
                last: reader.last_index(),
                needed: from,
            });
        }
        for (index, payload) in &records {
            let bad = |reason: String| JournalError::Record {
                dir: dir.join(JOURNAL_DIR),
                index: *index,
                reason,
            };
            let record = Record::decode(&payload[..]).map_err(|e| bad(e.to_string()))?;
            bytes += payload.len() as u64;
            replay(record, state, durable, identity).map_err(bad)?;
            from = index + 1;
        }
    }
    Ok(bytes)
}

/// Bytes of a snapshot encoded after a commit: `step`, and when `scaled` by the commit's
/// bytes and the quiet before it, at least twice those bytes (so that a snapshot is whole
/// before the journal has grown by half its size, however large the commits) and 64 KiB per
/// millisecond of quiet (a shard that commits now and then finishes its snapshot in a few
/// commits).
fn step_budget(step: usize, scaled: Option<(usize, std::time::Duration)>) -> usize {
    let Some((commit_bytes, quiet)) = scaled else {
        return step;
    };
    let quiet_ms = usize::try_from(quiet.as_millis()).unwrap_or(usize::MAX);
    step.max(commit_bytes.saturating_mul(2))
        .max(quiet_ms.saturating_mul(64 * 1024))
}

/// Appends the frame of one snapshot row: `[key len u32 LE][key][value]`, the value
/// encoded by `value` (see [`Value::encode`]).
pub(super) fn push_row(
    out: &mut Vec<u8>,
    key: &[u8],
    value: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FrameTooLarge> {
    // A key is at most an entry's size, far below 4 GiB; its frame is checked whole.
    push_frame_with(out, |out| {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        value(out);
    })
}

/// What a snapshot holds: the state, its bookkeeping, the first journal index it does not
/// contain, and its size.
type Snapshot = (State, Durable, Identity, u64, u64);

/// Reads and checks the snapshot at `path` (`None`: there is none).
fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, JournalError> {
    let bytes = match crate::disk::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let bad = |offset: usize, reason: &str| JournalError::Snapshot {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if !bytes.starts_with(SNAPSHOT_MAGIC) {
        return Err(bad(0, "not a shard snapshot (bad magic)"));
    }
    let mut frames = Frames {
        bytes: &bytes,
        at: SNAPSHOT_MAGIC.len(),
    };
    let (at, first) = frames.next().ok_or_else(|| bad(frames.at, "no header"))?;
    let header = SnapshotHeader::decode(first.map_err(|r| bad(at, r))?)
        .map_err(|e| bad(at, &format!("header: {e}")))?;
    let mut state = State::new();
    for (at, frame) in &mut frames {
        let row = frame.map_err(|r| bad(at, r))?;
        let (key, value) = split_row(row).ok_or_else(|| bad(at, "row shorter than its key"))?;
        let value = Value::decode(value).map_err(|e| bad(at, &e.to_string()))?;
        state.insert(Key::from_slice(key), value);
    }
    if state.len() as u64 != header.keys {
        return Err(bad(
            bytes.len(),
            &format!(
                "holds {} keys, its header says {}",
                state.len(),
                header.keys
            ),
        ));
    }
    let durable = Durable {
        applied: header.applied,
        highest_epoch: header.highest_epoch,
        fingerprint: header.fingerprint,
    };
    let identity = header
        .identity
        .map(Identity::try_from)
        .transpose()
        .map_err(|reason| bad(at, &reason))?
        .unwrap_or_default();
    Ok(Some((
        state,
        durable,
        identity,
        header.next_record,
        bytes.len() as u64,
    )))
}

fn split_row(row: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(row.get(..4)?.try_into().ok()?) as usize;
    let rest = &row[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The checked frames of a snapshot, each with its offset.
struct Frames<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, Result<&'a [u8], &'static str>);

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let rest = &self.bytes[at..];
        if rest.is_empty() {
            return None;
        }
        let frame = || -> Result<(&'a [u8], usize), &'static str> {
            let head = rest.get(..8).ok_or("truncated frame header")?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let payload = rest.get(8..8 + len).ok_or("truncated frame")?;
            if crc32c::crc32c(payload) != crc {
                return Err("checksum mismatch");
            }
            Ok((payload, 8 + len))
        };
        match frame() {
            Ok((payload, used)) => {
                self.at += used;
                Some((at, Ok(payload)))
            }
            Err(reason) => {
                self.at = self.bytes.len();
                Some((at, Err(reason)))
            }
        }
    }
}

impl ShardStore for JournalStore {
    fn load(&self) -> Result<Durable, StoreError> {
        Ok(self.durable)
    }

    fn identity(&self) -> Result<Identity, StoreError> {
        Ok(self.identity.clone())
    }

    fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        self.write(
            Record {
                identity: Some(identity.into()),
                ..Default::default()
            },
            true,
        )?;
        self.identity = identity.clone();
        Ok(())
    }

    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.write(
            Record {
                highest_epoch: Some(epoch),
                ..Default::default()
            },
            true,
        )?;
        self.durable.highest_epoch = epoch;
        Ok(())
    }

    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
        if crate::mutations::on(crate::mutations::Mutation::ShardSplitCommit) {
            self.split_commit(entries, applied)?;
        } else {
            self.encode_commit(entries, Some(applied));
            self.append(self.fsync)?;
            self.apply(entries);
            self.durable.applied = applied;
            self.durable.fingerprint = super::fingerprint_at(entries, applied);
        }
        self.maybe_snapshot()
    }

    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError> {
        for (k, v) in &self.state {
            visit(k, v);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
