//! The replicated LogStore's state machine: what applying the committed Raft log decides,
//! and the client's view of the log (dense client indexes, reads, bounds) built from it.
//!
//! Applying is deterministic over the Raft log, so every replica decides the same: an
//! append's verdict (new, or a retry answered with its original index — see
//! [`crate::logstore::dedupe`]), its client index (the next one; Raft's blank and membership
//! entries take none), the retention point and the log's id. Reads see applied entries only:
//! an entry is deliverable once it is committed, never while it could still be cut.
//!
//! The state is small ([`Base`]: indexes, the writer table, the membership, the log id) and
//! lives in memory; what a restart needs is the [`Base`] at the last purge point (a file,
//! which is also the snapshot openraft sends a replica that fell behind the purge) plus the
//! WAL after it, which openraft applies again. The snapshot is taken *at the purge point*,
//! not at the last applied entry, so that a replica brought up by it holds every entry that
//! is still retained elsewhere.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::{FutureExt, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Command, Entry, LogId, Membership, Reply, SnapshotData, TypeConfig, Verdict};
use crate::logstore::dedupe::{self, Writers};
use crate::logstore::{LogStoreError, TAIL_CACHE_BYTES, TailCache};
use crate::proto::{AppendGroup, EncodedEntry, Entry as LogEntry};
use crate::wal::{WalError, WalReader};

/// The file holding the [`Base`] (written whole, fsynced, renamed into place).
const BASE_FILE: &str = "raft-base";
/// The log's id once applied, so that a restarted replica knows which log it belongs to
/// before it has applied anything again (and refuses another log's replicas at once).
const LOG_ID_FILE: &str = "raft-log-id";

/// The state machine's state after some prefix of the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The last Raft entry applied.
    pub applied: Option<LogId>,
    pub membership: Membership,
    /// The client index the next new append gets.
    pub next: u64,
    /// The first client index retained (everything below was released by `Retain`).
    pub first: u64,
    pub writers: Writers,
    /// The log's id, once its first leader established it.
    pub log_id: Option<String>,
    /// A cache of the writer table's (see [`dedupe::NothingReleased`]); never saved.
    #[serde(skip)]
    pub scanned: dedupe::NothingReleased,
}

impl Default for Base {
    fn default() -> Self {
        Base {
            applied: None,
            membership: Membership::default(),
            next: 1,
            first: 1,
            writers: Writers::new(),
            log_id: None,
            scanned: dedupe::NothingReleased::default(),
        }
    }
}

/// Where client entries come from: Raft entry `raft_index` holds the group whose new
/// appends are client indexes `first..first + count` (members at `skipped` positions were
/// retries or refusals and took no index).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    first: u64,
    count: u64,
    raft_index: u64,
    skipped: Vec<u32>,
}

/// What applying one Raft entry produced.
struct Applied {
    reply: Reply,
    run: Option<Run>,
    entries: Vec<LogEntry>,
}

/// A snapshot as openraft sees it.
type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;

fn apply_error(log_id: LogId, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("applying Raft entry {log_id}: {e}"))
}

impl Base {
    /// Applies one Raft entry: the one rule every replica follows.
    fn apply(&mut self, entry: &Entry) -> Result<Applied, std::io::Error> {
        self.applied = Some(entry.log_id);
        let mut out = Applied {
            reply: Reply::Internal,
            run: None,
            entries: Vec::new(),
        };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                self.membership = Membership::new(Some(entry.log_id), m.clone());
            }
            EntryPayload::Normal(Command::Appends(bytes)) => {
                // Decoded from the shared buffer: the mutations' keys and values point into it.
                let group = AppendGroup::decode(bytes.clone())
                    .map_err(|e| apply_error(entry.log_id, format!("append group: {e}")))?;
                let first = self.next;
                // 0: proposed by a leader of a version without the bound, which applied it
                // with none; so must every replica, or they would decide differently.
                let max_writers = match group.max_writers {
                    0 => usize::MAX,
                    m => usize::try_from(m).unwrap_or(usize::MAX),
                };
                let mut verdicts = Vec::with_capacity(group.appends.len());
                let mut skipped = Vec::new();
                for (pos, stored) in group.appends.into_iter().enumerate() {
                    let writer = (!stored.writer_id.is_empty())
                        .then(|| (stored.writer_id.clone(), stored.sequence));
                    let e = stored.entry.unwrap_or_default();
                    let verdict = match dedupe::seen_before(
                        &self.writers,
                        writer.as_ref(),
                        stored.follows,
                        &e.mutations,
                    ) {
                        Some(Ok(original)) => Verdict::Duplicate(original.index),
                        Some(Err(LogStoreError::Gap { follows, .. })) => Verdict::Gap { follows },
                        Some(Err(LogStoreError::SequenceReused { index, .. })) => {
                            Verdict::Reused { index }
                        }
                        Some(Err(LogStoreError::StaleSequence { last, index, .. })) => {
                            Verdict::Stale { last, index }
                        }
                        Some(Err(other)) => return Err(apply_error(entry.log_id, other)),
                        None if dedupe::admit(
                            &mut self.writers,
                            &mut self.scanned,
                            writer.as_ref(),
                            self.first,
                            max_writers,
                        )
                        .is_err() =>
                        {
                            Verdict::TooManyWriters {
                                max: max_writers as u64,
                            }
                        }
                        None => {
                            let index = self.next;
                            self.next += 1;
                            let d = dedupe::digest(&e.mutations);
                            dedupe::record(&mut self.writers, writer.as_ref(), index, d);
                            out.entries.push(LogEntry { index, ..e });
                            Verdict::New(index)
                        }
                    };
                    if !matches!(verdict, Verdict::New(_)) {
                        skipped.push(pos as u32);
                    }
                    verdicts.push(verdict);
                }
                if self.next > first {
                    out.run = Some(Run {
                        first,
                        count: self.next - first,
                        raft_index: entry.log_id.index,
                        skipped,
                    });
                }
                out.reply = Reply::Appends(verdicts);
            }
            EntryPayload::Normal(Command::Retain { below }) => {
                self.first = self.first.max((*below).min(self.next));
                dedupe::release(&mut self.writers, self.first);
                out.reply = Reply::Retained { first: self.first };
            }
            EntryPayload::Normal(Command::Establish { log_id }) => {
                let id = self.log_id.get_or_insert_with(|| log_id.clone());
                out.reply = Reply::Established { log_id: id.clone() };
            }
        }
        Ok(out)
    }

    fn load(dir: &Path) -> Result<Option<Base>, std::io::Error> {
        let path = dir.join(BASE_FILE);
        match crate::disk::read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not decode: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), std::io::Error> {
        let bytes = postcard::to_allocvec(self).map_err(std::io::Error::other)?;
        crate::disk::write_durably(&dir.join(BASE_FILE), &bytes)
    }
}

/// The running state: the base at the purge point, the state now, and the client view.
struct State {
    base: Base,
    now: Base,
    runs: VecDeque<Run>,
    cache: TailCache<EncodedEntry>,
}

struct Shared {
    state: Mutex<State>,
    dir: PathBuf,
    reader: WalReader,
    head: watch::Sender<u64>,
    /// Raft entries whose client entries are all below `first` that trigger a new base
    /// (a snapshot, after which openraft purges the log up to it).
    rebase_every: u64,
    /// Raised when enough of the log is releasable for a new base: the node then asks
    /// openraft for a snapshot.
    rebase_wanted: watch::Sender<u64>,
    /// Held while the base moves (a snapshot built here, or one installed from the leader):
    /// openraft runs the two in different tasks, and the older must not overwrite the newer.
    moving: Mutex<()>,
    /// The Raft index of the base saved on disk: the log is purged only up to it, so that a
    /// crash never leaves a purged log behind the saved state.
    saved: watch::Sender<Option<u64>>,
}

/// The state machine (cheap to clone: every clone is the same machine).
#[derive(Clone)]
pub struct Machine {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn snapshot_of(base: &Base) -> Option<Snapshot> {
    let applied = base.applied?;
    let data = postcard::to_allocvec(base).ok()?;
    Some(Snapshot {
        meta: SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(applied),
            last_membership: base.membership.clone(),
        },
        snapshot: Cursor::new(data),
    })
}

impl Machine {
    /// The machine of the replica in `dir`: its base from the last purge (or a new log's).
    pub fn open(
        dir: &Path,
        reader: WalReader,
        rebase_every: u64,
    ) -> Result<Machine, LogStoreError> {
        let base = Base::load(dir)
            .map_err(|source| WalError::Io {
                path: dir.join(BASE_FILE),
                source,
            })?
            .unwrap_or_default();
        let mut now = base.clone();
        let id_path = dir.join(LOG_ID_FILE);
        match crate::disk::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => {
                now.log_id.get_or_insert_with(|| id.trim().to_owned());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WalError::Io {
                    path: id_path,
                    source,
                }
                .into());
            }
        }
        let (head, _) = watch::channel(base.next - 1);
        let (rebase_wanted, _) = watch::channel(0);
        let (saved, _) = watch::channel(base.applied.map(|l| l.index));
        Ok(Machine {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    now,
                    base,
                    runs: VecDeque::new(),
                    cache: TailCache::new(TAIL_CACHE_BYTES),
                }),
                dir: dir.to_path_buf(),
                reader,
                head,
                rebase_every: rebase_every.max(1),
                rebase_wanted,
                moving: Mutex::new(()),
                saved,
            }),
        })
    }

    /// The log's id, once established.
    pub fn log_id(&self) -> Option<String> {
        lock(&self.shared.state).now.log_id.clone()
    }

    /// A watch of the last applied client index.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// The Raft index of the base saved on disk (see `purge` in `super::storage::LogStorage`).
    pub fn saved_base(&self) -> watch::Receiver<Option<u64>> {
        self.shared.saved.subscribe()
    }

    /// Bumped each time enough of the log is releasable that a snapshot should be taken.
    pub fn rebase_wanted(&self) -> watch::Receiver<u64> {
        self.shared.rebase_wanted.subscribe()
    }

    /// `(first, last)` client indexes this replica can serve: retention's first, or the first
    /// it holds if it was brought up by a snapshot after that.
    pub fn bounds(&self) -> (u64, u64) {
        let st = lock(&self.shared.state);
        let held = st.runs.front().map_or(st.now.next, |r| r.first);
        (st.now.first.max(held), st.now.next - 1)
    }

    /// The first index `Retain` has not released (what a Retain at or below it answers).
    /// A base that is due is asked for again here: a Retain that releases nothing writes no
    /// entry, and on an idle log the one that made it due may have been missed (a build
    /// under way, or the signal sent before the snapshot task listened).
    pub fn retained_first(&self) -> u64 {
        let st = lock(&self.shared.state);
        let due = st.rebase_point(self.shared.rebase_every).is_some();
        let first = st.now.first;
        drop(st);
        if due {
            self.shared.rebase_wanted.send_modify(|n| *n += 1);
        }
        first
    }

    /// How many writers the writer table holds.
    pub fn writers(&self) -> usize {
        lock(&self.shared.state).now.writers.len()
    }

    /// The last applied Raft entry and the membership (for `status`).
    pub fn applied(&self) -> Option<LogId> {
        lock(&self.shared.state).now.applied
    }

    /// Client entries `[from, to]` (to clamped to the head), at least one when `from <= head`,
    /// and no more once the next would take the total past `max_bytes`.
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<EncodedEntry>, LogStoreError> {
        let (first, last) = self.bounds();
        let to = to.min(last);
        if from > to {
            return Ok(Vec::new());
        }
        if from < first {
            return Err(LogStoreError::Wal(WalError::Removed { index: from, first }));
        }
        let runs: Vec<Run> = {
            let st = lock(&self.shared.state);
            if let Some(hit) = st.cache.read(from, to, max_bytes) {
                return Ok(hit);
            }
            // The run holding `from`, and those after it up to `to`.
            let at = st.runs.partition_point(|r| r.first + r.count <= from);
            st.runs
                .range(at..)
                .take_while(|r| r.first <= to)
                .cloned()
                .collect()
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for run in runs {
            let wal = super::wal_index(run.raft_index);
            let records = self.shared.reader.read_range(wal, wal, usize::MAX)?;
            let Some((_, record)) = records.into_iter().next() else {
                break;
            };
            for e in client_entries(&run, &record)? {
                if e.index < from {
                    continue;
                }
                if e.index > to {
                    return Ok(out);
                }
                let e = EncodedEntry::new(&e);
                let len = e.framed_len();
                if bytes + len > max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                bytes += len;
                out.push(e);
            }
        }
        Ok(out)
    }

    fn save_base(&self, base: &Base) -> Result<(), std::io::Error> {
        base.save(&self.shared.dir)
            .map_err(|e| std::io::Error::other(format!("saving the log's base: {e}")))?;
        self.shared
            .saved
            .send_replace(base.applied.map(|l| l.index));
        Ok(())
    }
}

/// The client entries of one run, from its Raft entry's WAL record.
fn client_entries(run: &Run, record: &[u8]) -> Result<Vec<LogEntry>, LogStoreError> {
    let bad = |reason: String| LogStoreError::Decode {
        index: run.first,
        reason,
    };
    let entry = super::decode_entry(record).map_err(|e| bad(format!("raft entry: {e}")))?;
    let EntryPayload::Normal(Command::Appends(bytes)) = entry.payload else {
        return Err(bad(format!(
            "raft entry {} holds no appends",
            run.raft_index
        )));
    };
    let group = AppendGroup::decode(bytes).map_err(|e| bad(format!("append group: {e}")))?;
    let mut index = run.first;
    let mut out = Vec::with_capacity(run.count as usize);
    for (pos, stored) in group.appends.into_iter().enumerate() {
        if run.skipped.contains(&(pos as u32)) {
            continue;
        }
        let e = stored.entry.unwrap_or_default();
        out.push(LogEntry { index, ..e });
        index += 1;
    }
    Ok(out)
}

impl State {
    /// The Raft index up to which every client entry is released (the new base point), if
    /// that is at least `every` Raft entries past the current base.
    fn rebase_point(&self, every: u64) -> Option<u64> {
        let released = self
            .runs
            .iter()
            .take_while(|r| r.first + r.count <= self.now.first)
            .last()?;
        let base = self.base.applied.map_or(0, |l| l.index);
        (released.raft_index >= base + every).then_some(released.raft_index)
    }
}

/// Raft entries applied under one hold of the state's lock, at most.
const APPLY_SLICE_ENTRIES: usize = 256;
/// The appends' bytes a slice stops at (it goes past by one entry at most).
const APPLY_SLICE_BYTES: usize = 8 * 1024 * 1024;

/// The bytes of the appends an entry carries (what a slice holds in memory).
fn entry_bytes(e: &super::Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(Command::Appends(b)) => b.len(),
        _ => 0,
    }
}

impl Machine {
    /// Applies `slice` in order, answers its clients and publishes the new head; how many
    /// were answered.
    fn apply_slice(
        &self,
        slice: Vec<Result<EntryResponder<TypeConfig>, std::io::Error>>,
    ) -> Result<usize, std::io::Error> {
        let mut answers = Vec::with_capacity(slice.len());
        let mut st = lock(&self.shared.state);
        let had_id = st.now.log_id.is_some();
        let mut failed = None;
        for item in slice {
            let step = item.and_then(|(entry, r)| st.now.apply(&entry).map(|a| (a, r)));
            let (applied, responder) = match step {
                Ok(step) => step,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if let Some(run) = applied.run {
                st.runs.push_back(run);
            }
            for e in applied.entries {
                st.cache.push_entry(EncodedEntry::new(&e));
            }
            if let Some(r) = responder {
                answers.push((r, applied.reply));
            }
        }
        let head = st.now.next - 1;
        let rebase = st.rebase_point(self.shared.rebase_every);
        let new_id = st.now.log_id.clone().filter(|_| !had_id);
        drop(st);
        if let Some(id) = new_id {
            crate::disk::write_durably(&self.shared.dir.join(LOG_ID_FILE), id.as_bytes())?;
        }
        self.shared.head.send_replace(head);
        let answered = answers.len();
        for (r, reply) in answers {
            r.send(reply);
        }
        if rebase.is_some() {
            self.shared.rebase_wanted.send_modify(|n| *n += 1);
        }
        failed.map_or(Ok(answered), Err)
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Machine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), std::io::Error> {
        let st = lock(&self.shared.state);
        Ok((st.now.applied, st.now.membership.clone()))
    }

    async fn apply<S>(&mut self, entries: S) -> Result<(), std::io::Error>
    where
        S: futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        let started = std::time::Instant::now();
        // The entries come as they are read (a restarted replica's whole log, at times):
        // applied and answered a slice at a time (what is read already, up to a count and a
        // size), the state's lock let go between slices so that reads and the replication
        // gate are not held up for the whole range, and memory held to a slice.
        // Fused: a slice that reached the end polls once more to learn it.
        let mut entries = entries.fuse();
        let mut answered = 0;
        while let Some(first) = entries.next().await {
            let mut bytes = first.as_ref().map_or(0, |(e, _)| entry_bytes(e));
            let mut slice = vec![first];
            while slice.len() < APPLY_SLICE_ENTRIES && bytes < APPLY_SLICE_BYTES {
                let Some(Some(item)) = entries.next().now_or_never() else {
                    break;
                };
                bytes += item.as_ref().map_or(0, |(e, _)| entry_bytes(e));
                slice.push(item);
            }
            answered += self.apply_slice(slice)?;
        }
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            answered,
            "applied Raft entries"
        );
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Machine {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let base: Base = postcard::from_bytes(snapshot.get_ref()).map_err(|e| {
            std::io::Error::other(format!(
                "the snapshot at {:?} does not decode: {e}",
                meta.last_log_id
            ))
        })?;
        let _moving = self
            .shared
            .moving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.save_base(&base)?;
        tracing::info!(applied = ?base.applied, next = base.next, first = base.first, "installed a snapshot from the leader");
        let head = base.next - 1;
        {
            let mut st = lock(&self.shared.state);
            st.now = base.clone();
            st.base = base;
            st.runs.clear();
            st.cache.clear();
        }
        self.shared.head.send_replace(head);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        Ok(snapshot_of(&lock(&self.shared.state).base))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    type SnapshotData = SnapshotData;

    /// Moves the base to the rebase point (replaying the WAL from the old base through it),
    /// saves it, and offers it as the snapshot; openraft then purges the log up to it.
    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let _moving = self
            .shared
            .moving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (mut base, target) = {
            let st = lock(&self.shared.state);
            (st.base.clone(), st.rebase_point(1))
        };
        if let Some(target) = target {
            let from = base.applied.map_or(0, |l| l.index + 1);
            let read_err = |e: WalError| std::io::Error::other(format!("reading the log: {e}"));
            let mut at = from;
            while at <= target {
                let records = self
                    .shared
                    .reader
                    .read_range(super::wal_index(at), super::wal_index(target), 8 << 20)
                    .map_err(read_err)?;
                if records.is_empty() {
                    break;
                }
                for (wal, bytes) in records {
                    let entry = super::decode_entry(&bytes)
                        .map_err(|e| std::io::Error::other(format!("reading the log: {e}")))?;
                    base.apply(&entry)?;
                    at = super::raft_index(wal) + 1;
                }
            }
            self.save_base(&base)?;
            let mut st = lock(&self.shared.state);
            let point = base.applied.map_or(0, |l| l.index);
            while st.runs.front().is_some_and(|r| r.raft_index <= point) {
                st.runs.pop_front();
            }
            st.base = base;
            tracing::info!(
                point,
                first = st.base.first,
                "log base moved: entries up to it can be purged"
            );
        }
        let st = lock(&self.shared.state);
        snapshot_of(&st.base)
            .ok_or_else(|| std::io::Error::other("no base yet: nothing has been released"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Payload;
    use super::*;
    use crate::proto::{Mutation, StoredEntry, mutation::Op};
    use crate::wal::{Wal, WalConfig};

    fn add(key: &str) -> Vec<Mutation> {
        vec![Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(Op::Add(1)),
        }]
    }

    fn stored(writer: &str, seq: u64, key: &str) -> StoredEntry {
        StoredEntry {
            entry: Some(LogEntry {
                index: 0,
                mutations: add(key),
                append_start_micros: 0,
            }),
            writer_id: writer.into(),
            sequence: seq,
            follows: 0,
        }
    }

    /// The replies of applying `log` to `base`, in order.
    fn replies_of(base: &mut Base, log: &[Entry]) -> Vec<Reply> {
        log.iter().map(|e| base.apply(e).unwrap().reply).collect()
    }

    fn entry(index: u64, payload: Payload) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload,
        }
    }

    fn group(appends: Vec<StoredEntry>) -> Payload {
        EntryPayload::Normal(Command::Appends(
            AppendGroup {
                appends,
                max_writers: 0,
            }
            .encode_to_vec()
            .into(),
        ))
    }

    /// A Raft log in which a retried append landed twice (the first leader wrote it, lost
    /// leadership before answering, and the writer retried at the next one), plus Raft's
    /// own entries.
    fn log_with_a_retry() -> Vec<Entry> {
        vec![
            entry(0, EntryPayload::Blank),
            entry(1, group(vec![stored("w", 1, "a"), stored("", 0, "b")])),
            entry(2, EntryPayload::Blank),
            entry(
                3,
                group(vec![
                    stored("w", 1, "a"),
                    stored("w", 2, "c"),
                    stored("w", 2, "x"),
                ]),
            ),
            entry(4, group(vec![stored("w", 1, "a"), stored("w", 0, "z")])),
        ]
    }

    #[test]
    fn a_retry_that_landed_twice_gets_the_original_index_and_raft_entries_take_none() {
        let mut base = Base::default();
        let replies = replies_of(&mut base, &log_with_a_retry());
        assert_eq!(
            replies,
            vec![
                Reply::Internal,
                Reply::Appends(vec![Verdict::New(1), Verdict::New(2)]),
                Reply::Internal,
                Reply::Appends(vec![
                    Verdict::Duplicate(1),
                    Verdict::New(3),
                    Verdict::Reused { index: 3 },
                ]),
                // A retry of an older append of the window still gets its index; a
                // sequence the writer never used below its last is refused.
                Reply::Appends(vec![
                    Verdict::Duplicate(1),
                    Verdict::Stale { last: 2, index: 3 },
                ]),
            ]
        );
        assert_eq!(base.next, 4, "three entries, dense");
        // Every replica applying the same log decides the same.
        let mut again = Base::default();
        for e in log_with_a_retry() {
            again.apply(&e).unwrap();
        }
        assert_eq!(again, base);
    }

    /// Retention through the log never moves the first index back (a `Retain` below it,
    /// e.g. from a player whose cursor lags another's) nor past the head (a `Retain` beyond
    /// the last entry would release entries not yet written): every replica applies the same
    /// clamp, whatever the service checked before proposing it.
    #[test]
    fn retain_through_the_log_never_moves_back_nor_past_the_head() {
        let retain = |index, below| entry(index, EntryPayload::Normal(Command::Retain { below }));
        let mut base = Base::default();
        for e in log_with_a_retry() {
            base.apply(&e).unwrap();
        }
        assert_eq!(base.next, 4);
        let firsts: Vec<Reply> = [(5, 3), (6, 2), (7, 1000), (8, 0)]
            .into_iter()
            .map(|(index, below)| base.apply(&retain(index, below)).unwrap().reply)
            .collect();
        assert_eq!(
            firsts,
            vec![
                Reply::Retained { first: 3 },
                Reply::Retained { first: 3 },
                Reply::Retained { first: 4 },
                Reply::Retained { first: 4 },
            ]
        );
    }

    /// The first `Establish` applied names the log for good: a second one (two leaders of a
    /// new log each proposed theirs) is answered with the first id and changes nothing.
    /// Without the rule the later id would replace the earlier: the leader that proposed the
    /// first was told one id, and the log would go on under another.
    #[test]
    fn the_first_establish_applied_wins_and_a_later_one_is_answered_with_it() {
        let establish = |index, log_id: &str| {
            entry(
                index,
                EntryPayload::Normal(Command::Establish {
                    log_id: log_id.into(),
                }),
            )
        };
        let mut base = Base::default();
        let replies = replies_of(&mut base, &[establish(1, "log-a"), establish(2, "log-b")]);
        assert_eq!(
            replies,
            vec![
                Reply::Established {
                    log_id: "log-a".into()
                },
                Reply::Established {
                    log_id: "log-a".into()
                },
            ]
        );
        assert_eq!(base.log_id.as_deref(), Some("log-a"));
    }

    #[test]
    fn a_full_writer_table_is_decided_by_the_bound_the_entry_carries() {
        let capped = |appends, max_writers| {
            EntryPayload::Normal(Command::Appends(
                AppendGroup {
                    appends,
                    max_writers,
                }
                .encode_to_vec()
                .into(),
            ))
        };
        let log = [
            entry(1, capped(vec![stored("a", 1, "x"), stored("b", 1, "x")], 2)),
            // Full at 2, nothing released: c is refused, takes no index, b is still known.
            entry(2, capped(vec![stored("c", 1, "x"), stored("b", 2, "x")], 2)),
            // Retention releases a's append: c takes its place.
            entry(3, EntryPayload::Normal(Command::Retain { below: 2 })),
            entry(4, capped(vec![stored("c", 1, "x")], 2)),
            // A later entry under a larger bound (another leader's) takes d beside them.
            entry(5, capped(vec![stored("d", 1, "x")], 3)),
            // One without a bound (from a leader of a version before it, which applied it
            // with none) is applied with none.
            entry(6, capped(vec![stored("e", 1, "x")], 0)),
        ];
        let mut base = Base::default();
        let replies = replies_of(&mut base, &log);
        assert_eq!(
            replies,
            vec![
                Reply::Appends(vec![Verdict::New(1), Verdict::New(2)]),
                Reply::Appends(vec![Verdict::TooManyWriters { max: 2 }, Verdict::New(3)]),
                Reply::Retained { first: 2 },
                Reply::Appends(vec![Verdict::New(4)]),
                Reply::Appends(vec![Verdict::New(5)]),
                Reply::Appends(vec![Verdict::New(6)]),
            ]
        );
        let mut known: Vec<&String> = base.writers.keys().collect();
        known.sort();
        assert_eq!(known, ["b", "c", "d", "e"], "a was forgotten once released");
        let mut again = Base::default();
        for e in &log {
            again.apply(e).unwrap();
        }
        assert_eq!(again, base, "every replica decides the same");
    }

    #[tokio::test]
    async fn reads_serve_only_new_appends_in_order_from_the_cache_and_from_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let log = log_with_a_retry();
        let records: Vec<Vec<u8>> = log
            .iter()
            .map(|e| super::super::encode_entry(e).unwrap())
            .collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        wal.append_batch(&refs).unwrap();
        let mut m = Machine::open(dir.path(), wal.reader(), 10).unwrap();
        let stream = futures::stream::iter(log.into_iter().map(|e| Ok((e, None))));
        m.apply(stream).await.unwrap();
        let keys = |entries: Vec<EncodedEntry>| -> Vec<(u64, String)> {
            entries
                .into_iter()
                .map(|e| {
                    let e = e.decode().unwrap();
                    (
                        e.index,
                        String::from_utf8_lossy(&e.mutations[0].key).into_owned(),
                    )
                })
                .collect()
        };
        let want = vec![(1, "a".to_string()), (2, "b".into()), (3, "c".into())];
        assert_eq!(keys(m.read(1, 10, usize::MAX).unwrap()), want);
        assert_eq!(m.bounds(), (1, 3));
        // Without the cache, the same entries come back from the WAL records.
        lock(&m.shared.state).cache.clear();
        assert_eq!(keys(m.read(1, 10, usize::MAX).unwrap()), want);
        assert_eq!(keys(m.read(2, 2, usize::MAX).unwrap()), want[1..2].to_vec());
        assert_eq!(keys(m.read(3, 10, usize::MAX).unwrap()), want[2..].to_vec());
    }
}
