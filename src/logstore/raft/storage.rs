//! openraft's log storage on our segment WAL: each Raft entry is one WAL record (written and
//! fsynced once, with the WAL's checksums and torn-tail recovery), the vote and the purge
//! point live in a small file replaced durably, and a follower's conflicting suffix is cut
//! with [`Wal::truncate_from`].
//!
//! An append writes its records on the blocking pool, keeps the entries in a tail cache
//! (`RAFT_TAIL_BYTES`) and returns: openraft reads them back at once, to replicate them and
//! to apply them, and finds them in memory instead of reading and decoding the WAL again (a
//! follower that fell further behind is served from the WAL). The fsync runs on a thread of
//! its own (`sync_loop`), one for every append waiting at that moment (group commit), while
//! the next appends are written, and each append's [`IOFlushed`] is reported only once its
//! records are durable (under a simulation, `crate::blocking::inline`, each append syncs
//! before it returns).
//! After any WAL failure every later call fails: the replica must restart (crash-only), and
//! the reason is published for the server to stop on.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Entry, LogId, TypeConfig, Vote, raft_index, wal_index};
use crate::logstore::tail::{Indexed, TailCache};
use crate::wal::{Wal, WalConfig, WalError, WalReader};

/// The file holding the vote and the purge point. Its presence also marks the directory as
/// a replica's (a directory with WAL segments and no such file holds a single-node log).
pub const STATE_FILE: &str = "raft-state";

/// Most bytes of entries one AppendEntries carries (a catch-up batch stays small enough to
/// be received and fsynced well within an election timeout; a single larger entry still goes
/// alone).
pub(super) const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;
/// What [`LogReader`]'s `entries_stream` reads ahead of the state machine.
const APPLY_READ_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of just-written Raft entries kept in memory: at 2,000 appends of 10 KB a second
/// that is about 0.8 s of the log, far more than a healthy follower or the state machine lags;
/// one further behind reads the WAL. It bounds the leader's memory however long a follower is
/// away.
const RAFT_TAIL_BYTES: usize = 16 * 1024 * 1024;

impl Indexed for Entry {
    fn index(&self) -> u64 {
        self.log_id.index
    }
}

/// The Raft log's tail cache, shared by the storage and its readers.
type Tail = Arc<RwLock<TailCache<Entry>>>;

/// What must survive a restart besides the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Durable {
    vote: Option<Vote>,
    purged: Option<LogId>,
}

/// Errors opening a replica's log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "{} holds a single-node log (WAL segments without {STATE_FILE}); a replica of a Raft group cannot adopt it. Run it without --peers, or give this replica an empty directory",
        .0.display()
    )]
    SingleNodeLog(PathBuf),
    #[error("{}: {reason}", .path.display())]
    State { path: PathBuf, reason: String },
}

fn read_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("reading the Raft log: {e}"))
}

/// Reads Raft entries from the tail cache or else the WAL (cloned into each replication
/// task), and the vote.
#[derive(Clone)]
pub struct LogReader {
    reader: WalReader,
    tail: Tail,
    vote: Arc<Mutex<Option<Vote>>>,
}

impl LogReader {
    fn entries(&self, from: u64, to_inclusive: u64) -> Result<Vec<Entry>, io::Error> {
        self.entries_within(from, to_inclusive, usize::MAX)
    }

    /// Entries `[from, to_inclusive]`, stopping once `max_bytes` of records were read (at
    /// least one entry).
    fn entries_within(
        &self,
        from: u64,
        to_inclusive: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, io::Error> {
        let cached = self
            .tail
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .read(from, to_inclusive, max_bytes);
        // The cache ends where the log does; a hit short of `to_inclusive` that no budget cut
        // short goes to the WAL rather than be trusted.
        if let Some(hit) = cached
            && (max_bytes != usize::MAX || hit.last().map(|e| e.log_id.index) == Some(to_inclusive))
        {
            return Ok(hit);
        }
        self.wal_entries_within(from, to_inclusive, max_bytes)
    }

    /// [`LogReader::entries_within`], from the WAL.
    fn wal_entries_within(
        &self,
        from: u64,
        to_inclusive: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, io::Error> {
        let mut out = Vec::new();
        let mut at = from;
        let mut bytes = 0usize;
        while at <= to_inclusive && (out.is_empty() || bytes < max_bytes) {
            let budget = max_bytes.saturating_sub(bytes).clamp(1, 16 << 20);
            let records = self
                .reader
                .read_range(wal_index(at), wal_index(to_inclusive), budget)
                .map_err(read_error)?;
            if records.is_empty() {
                break;
            }
            for (wal, record) in records {
                bytes += record.len();
                let e = super::decode_entry(&record).map_err(read_error)?;
                if e.log_id.index != raft_index(wal) {
                    return Err(read_error(format!(
                        "WAL record {wal} holds Raft entry {}, expected {}",
                        e.log_id.index,
                        raft_index(wal)
                    )));
                }
                at = e.log_id.index + 1;
                out.push(e);
            }
        }
        Ok(out)
    }

    fn last(&self) -> Result<Option<LogId>, io::Error> {
        let (first, last) = (self.reader.first_index(), self.reader.last_index());
        if last < first {
            return Ok(None);
        }
        Ok(self
            .entries(raft_index(last), raft_index(last))?
            .pop()
            .map(|e| e.log_id))
    }
}

impl LogReader {
    /// `range` as `[from, to]` (`to < from`: empty).
    fn span<RB: RangeBounds<u64>>(&self, range: &RB) -> (u64, u64) {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => raft_index(self.reader.first_index()),
        };
        let to = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return (1, 0),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => raft_index(self.reader.last_index()),
        };
        (from, to)
    }

    /// Entries `[from, to]` as a stream that reads `budget` bytes at a time when polled.
    fn stream_within(
        &self,
        from: u64,
        to: u64,
        budget: usize,
    ) -> impl futures::Stream<Item = Result<Entry, io::Error>> + use<> {
        use futures::StreamExt;
        let reader = self.clone();
        futures::stream::unfold(Some(from), move |at| {
            let reader = reader.clone();
            async move {
                let at = at.filter(|at| *at <= to)?;
                let chunk = match reader.entries_within(at, to, budget) {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let Some(last) = chunk.last().map(|e| e.log_id.index) else {
                    let gone = read_error(format!("Raft entries {at}..={to} are not in the log"));
                    return Some((vec![Err(gone)], None));
                };
                Some((chunk.into_iter().map(Ok).collect(), Some(last + 1)))
            }
        })
        .flat_map(futures::stream::iter)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (from, to) = self.span(&range);
        if to < from {
            return Ok(Vec::new());
        }
        self.entries(from, to)
    }

    /// The entries to apply, read 8 MiB at a time as the state machine takes
    /// them. openraft's default reads the whole range first: a replica restarted without a
    /// base applies its whole log in one range, and held all of it in memory at once (1.1 GB
    /// for a 1.8 GB log in a 20-minute soak).
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = Result<Entry, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let (from, to) = self.span(&range);
        self.stream_within(from, to, APPLY_READ_BYTES)
    }

    /// What one AppendEntries carries: at most `REPLICATION_BATCH_BYTES` of `[start, end)`.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        if end <= start {
            return Ok(Vec::new());
        }
        self.entries_within(start, end - 1, REPLICATION_BATCH_BYTES)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(*self.vote.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One append waiting for its records to be durable.
struct Flush {
    callback: IOFlushed<TypeConfig>,
}

/// Syncs the WAL for every append waiting (one `sync_data` for all of them), then reports
/// each flushed. Runs on a thread of its own so that a sync never holds the writer's lock:
/// the next appends are written meanwhile. After a failed sync every append is refused.
fn sync_loop(
    wal: Arc<Mutex<Wal>>,
    waiting: std::sync::mpsc::Receiver<Flush>,
    failed: Arc<watch::Sender<Option<String>>>,
) {
    let _failing = crate::logstore::FailOnPanic::new(failed.clone(), "Raft log sync");
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        sync_batch(&wal, batch, &failed);
    }
}

/// One sync for every append in `batch`, then each reported flushed (or failed).
fn sync_batch(wal: &Mutex<Wal>, batch: Vec<Flush>, failed: &watch::Sender<Option<String>>) {
    let point = wal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sync_point();
    let started = std::time::Instant::now();
    let result = match failed.borrow().clone() {
        Some(reason) => Err(reason),
        None => point.sync().map_err(|e| format!("syncing the log: {e}")),
    };
    tracing::debug!(
        micros = started.elapsed().as_micros() as u64,
        appends = batch.len(),
        "synced the Raft log"
    );
    if let Err(reason) = &result {
        crate::logstore::fail_wal(failed, reason);
    }
    for f in batch {
        let r = result.clone().map_err(io::Error::other);
        f.callback.io_completed(r);
    }
}

/// A replica's Raft log.
pub struct LogStorage {
    wal: Arc<Mutex<Wal>>,
    reader: LogReader,
    /// The entries just written, shared with [`LogStorage::reader`]: kept a suffix of the WAL
    /// (pushed after each write, cut before a truncation returns, dropped below a purge).
    tail: Tail,
    dir: PathBuf,
    durable: Durable,
    failed: Arc<watch::Sender<Option<String>>>,
    /// Appends waiting for [`sync_loop`].
    flushes: std::sync::mpsc::Sender<Flush>,
    /// The Raft index of the state machine's saved base (see [`LogStorage::purge`]).
    saved_base: Option<watch::Receiver<Option<u64>>>,
}

impl LogStorage {
    /// Opens the replica's log in `config.dir` (a new directory becomes a replica's).
    pub fn open(mut config: WalConfig) -> Result<LogStorage, OpenError> {
        config.sync &= !crate::mutations::on(crate::mutations::Mutation::LogSkipsFsync);
        let dir = config.dir.clone();
        crate::disk::create_dir_all(&dir).map_err(|source| WalError::Io {
            path: dir.clone(),
            source,
        })?;
        let state_path = dir.join(STATE_FILE);
        let durable = match crate::disk::read(&state_path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(|e| OpenError::State {
                path: state_path.clone(),
                reason: format!("does not decode: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Durable::default(),
            Err(source) => {
                return Err(WalError::Io {
                    path: state_path,
                    source,
                }
                .into());
            }
        };
        let marked = crate::disk::exists(&state_path).unwrap_or(false);
        let (mut wal, report) = Wal::open(config)?;
        if !marked {
            if report.last_index >= report.first_index {
                return Err(OpenError::SingleNodeLog(dir));
            }
            save(&dir, &durable)?;
        }
        // A purge past the last entry leaves an empty WAL that must go on after the purge
        // point (a crash can fall between removing the old segments and starting anew).
        // A crash inside a purge past the end can also leave old records that all lie at or
        // below the purge point: start after it too.
        if let Some(p) = durable.purged
            && wal.last_index() <= wal_index(p.index)
            && wal.first_index() != wal_index(p.index) + 1
        {
            wal.restart_at(wal_index(p.index) + 1)?;
        }
        let tail: Tail = Arc::new(RwLock::new(TailCache::new(RAFT_TAIL_BYTES)));
        let reader = LogReader {
            reader: wal.reader(),
            tail: tail.clone(),
            vote: Arc::new(Mutex::new(durable.vote)),
        };
        let failed = Arc::new(watch::channel(None).0);
        let wal = Arc::new(Mutex::new(wal));
        let (flushes, waiting) = std::sync::mpsc::channel();
        // Under a simulation each append syncs inline instead (see `crate::blocking`).
        if !crate::blocking::inline() {
            let (w, f) = (wal.clone(), failed.clone());
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(w, waiting, f))
                .map_err(|source| WalError::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(LogStorage {
            wal,
            reader,
            tail,
            dir,
            durable,
            failed,
            flushes,
            saved_base: None,
        })
    }

    /// The state machine's saved-base watch: [`LogStorage::purge`] waits for it.
    pub fn set_saved_base(&mut self, saved: watch::Receiver<Option<u64>>) {
        self.saved_base = Some(saved);
    }

    /// The WAL's reader, for the state machine's reads of client entries.
    pub fn wal_reader(&self) -> WalReader {
        self.reader.reader.clone()
    }

    /// A watch that holds why the log failed, once it has.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) -> io::Error {
        let reason = format!("{what}: {e}");
        crate::logstore::fail_wal(&self.failed, &reason);
        io::Error::other(reason)
    }

    /// Runs `f` on the WAL on the blocking pool (or inline under simulation).
    async fn with_wal<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Wal) -> Result<T, WalError> + Send + 'static,
    ) -> Result<T, io::Error> {
        if let Some(reason) = self.failed.borrow().clone() {
            return Err(io::Error::other(reason));
        }
        let wal = self.wal.clone();
        let out = crate::blocking::run(move || {
            let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut wal)
        })
        .await;
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(what, &e)),
            Err(e) => Err(self.fail(what, &e)),
        }
    }

    fn tail(&self) -> std::sync::RwLockWriteGuard<'_, TailCache<Entry>> {
        self.tail.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn save_durable(&self) -> Result<(), io::Error> {
        save(&self.dir, &self.durable).map_err(|e| self.fail("saving the vote", &e))
    }
}

fn save(dir: &Path, durable: &Durable) -> Result<(), OpenError> {
    let path = dir.join(STATE_FILE);
    let bytes = postcard::to_allocvec(durable).map_err(|e| OpenError::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let written = if crate::mutations::on(crate::mutations::Mutation::LogSkipsFsync) {
        crate::disk::write_unsynced(&path, &bytes)
    } else {
        crate::disk::write_durably(&path, &bytes)
    };
    written.map_err(|source| WalError::Io { path, source }.into())
}

impl RaftLogReader<TypeConfig> for LogStorage {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.durable.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStorage {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged = self.durable.purged;
        let last = match self.reader.last()? {
            Some(l) if Some(l) > purged => Some(l),
            _ => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.durable.vote = Some(*vote);
        self.save_durable()?;
        *self
            .reader
            .vote
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        for e in &entries {
            records.push(super::encode_entry(e).map_err(|e| self.fail("encoding an entry", &e))?);
        }
        let lens: Vec<usize> = records.iter().map(Vec::len).collect();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let expected = wal_index(first);
        let started = std::time::Instant::now();
        let count = records.len();
        let result = self
            .with_wal("appending", move |wal| {
                if wal.last_index() + 1 != expected {
                    return Err(WalError::InvalidConfig(format!(
                        "Raft appends at WAL index {expected}, but the WAL ends at {}",
                        wal.last_index()
                    )));
                }
                let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                wal.append_batch_unsynced(&refs).map(|_| ())
            })
            .await;
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            entries = count,
            "wrote Raft entries"
        );
        match result {
            Ok(()) => {
                // Before returning: openraft may read them the moment this returns.
                let mut tail = self.tail();
                for (e, len) in entries.into_iter().zip(lens) {
                    tail.push(e, len);
                }
                drop(tail);
                if crate::blocking::inline() {
                    sync_batch(&self.wal, vec![Flush { callback }], &self.failed);
                    return Ok(());
                }
                if self.flushes.send(Flush { callback }).is_err() {
                    return Err(self.fail("appending", &"the log's sync thread is gone"));
                }
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        tracing::info!(from, "cutting a conflicting suffix of the log");
        let at = wal_index(from);
        // Cut the cache first: once this returns, no reader may see the cut entries, and the
        // entries appended next at the same indexes must not meet them there.
        self.tail().cut_from(from);
        self.with_wal("truncating", move |wal| wal.truncate_from(at))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // openraft purges a follower's log as soon as it hands an installed snapshot to the
        // state machine, without waiting for it to be saved: purge only once the saved base
        // covers the point, or a crash in between would leave a log with neither.
        if let Some(saved) = &mut self.saved_base
            && saved
                .wait_for(|b| b.is_some_and(|b| b >= log_id.index))
                .await
                .is_err()
        {
            return Err(self.fail("purging", &"the state machine is gone"));
        }
        self.durable.purged = Some(log_id);
        self.save_durable()?;
        let below = wal_index(log_id.index) + 1;
        self.tail().drop_below(log_id.index + 1);
        let removed = self
            .with_wal("purging", move |wal| {
                if wal.last_index() < below {
                    wal.restart_at(below)
                } else {
                    wal.remove_below(below)
                }
            })
            .await?;
        tracing::info!(upto = log_id.index, removed, "purged the log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
                index,
            ),
            payload: EntryPayload::Normal(super::super::Command::Retain { below: term }),
        }
    }

    fn terms(entries: Vec<Entry>) -> Vec<(u64, u64)> {
        entries
            .into_iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    async fn read_from(r: &LogReader, from: u64) -> Vec<(u64, u64)> {
        terms(r.clone().try_get_log_entries(from..).await.unwrap())
    }

    async fn append(log: &mut LogStorage, entries: Vec<Entry>) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    /// What the tail cache serves must be what the WAL holds: a follower's cut suffix is
    /// gone from both the moment the cut returns, before new entries take its indexes, and
    /// a purge drops it from both.
    #[tokio::test]
    async fn the_tail_cache_follows_every_cut_and_purge_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStorage::open(WalConfig::new(dir.path())).unwrap();
        append(&mut log, (0..6).map(|i| entry(1, i)).collect()).await;
        let mut reader = log.get_log_reader().await;
        assert_eq!(read_from(&reader, 0).await.len(), 6);

        // A new leader's log disagrees from index 3: cut there.
        log.truncate_after(Some(entry(1, 2).log_id)).await.unwrap();
        assert_eq!(
            terms(reader.try_get_log_entries(0..6).await.unwrap()),
            vec![(0, 1), (1, 1), (2, 1)],
            "a reader must not see the cut entries"
        );
        append(&mut log, (3..5).map(|i| entry(2, i)).collect()).await;
        let expected = vec![(0, 1), (1, 1), (2, 1), (3, 2), (4, 2)];
        assert_eq!(read_from(&reader, 0).await, expected);
        assert_eq!(
            terms(reader.limited_get_log_entries(3, 5).await.unwrap()),
            vec![(3, 2), (4, 2)]
        );
        // A purge drops the prefix from the cache too (openraft reads above the purge point
        // only; the WAL drops whole segments).
        log.set_saved_base(watch::channel(Some(4)).1);
        log.purge(entry(1, 1).log_id).await.unwrap();
        assert_eq!(log.tail().first(), Some(2));
        let expected = vec![(2, 1), (3, 2), (4, 2)];
        assert_eq!(read_from(&reader, 2).await, expected);
        // The same from the WAL alone (the cache emptied).
        log.tail().clear();
        assert_eq!(read_from(&reader, 2).await, expected);
    }

    /// The entries the state machine applies come a budget at a time, all of them in order
    /// (from the cache and from the WAL); a range the log does not hold ends in an error,
    /// never short.
    #[tokio::test]
    async fn the_apply_stream_reads_a_budget_at_a_time_and_never_ends_short() {
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStorage::open(WalConfig::new(dir.path())).unwrap();
        append(&mut log, (0..300).map(|i| entry(1, i)).collect()).await;
        let mut reader = log.get_log_reader().await;
        let all: Vec<u64> = (0..300).collect();
        for cached in [true, false] {
            if !cached {
                log.tail().clear();
            }
            let got: Vec<Entry> = reader
                .stream_within(0, 299, 64)
                .try_collect()
                .await
                .unwrap();
            let got: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            assert_eq!(got, all, "cached {cached}");
            let got: Vec<Entry> = reader
                .entries_stream(10..20)
                .await
                .try_collect()
                .await
                .unwrap();
            assert_eq!(got.len(), 10);
        }
        let past: Result<Vec<Entry>, _> = reader.stream_within(295, 310, 64).try_collect().await;
        let past = past.unwrap_err().to_string();
        assert!(
            past.contains("Raft entries 300..=310 are not in the log"),
            "{past}"
        );
    }

    /// A crash between saving a purge point past the log's end (an installed snapshot) and
    /// starting the WAL anew leaves old records all at or below that point: reopened, the
    /// log goes on right after the point, so the next entry the leader sends fits.
    #[tokio::test]
    async fn a_log_reopened_after_a_purge_past_its_end_goes_on_after_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStorage::open(WalConfig::new(dir.path())).unwrap();
        append(&mut log, (0..3).map(|i| entry(1, i)).collect()).await;
        log.durable.purged = Some(entry(1, 10).log_id);
        log.save_durable().unwrap();
        drop(log);
        // The sync thread lets the directory go once it sees the log dropped.
        let mut reopened = None;
        for _ in 0..500 {
            match LogStorage::open(WalConfig::new(dir.path())) {
                Ok(l) => {
                    reopened = Some(l);
                    break;
                }
                Err(OpenError::Wal(WalError::InUse { .. })) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut log = reopened.expect("the directory is let go within 10 s");
        append(&mut log, vec![entry(1, 11)]).await;
        let reader = log.get_log_reader().await;
        assert_eq!(read_from(&reader, 11).await, vec![(11, 1)]);
    }

    /// openraft purges a follower's log as soon as it hands an installed snapshot to the state
    /// machine: the purge waits until the state machine has saved a base that covers it, or
    /// a crash in between would leave a replica with neither the entries nor the base.
    #[tokio::test]
    async fn a_purge_waits_for_the_saved_base_to_cover_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStorage::open(WalConfig::new(dir.path())).unwrap();
        append(&mut log, (0..6).map(|i| entry(1, i)).collect()).await;
        let (saved, base) = watch::channel(Some(1));
        log.set_saved_base(base);
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            log.purge(entry(1, 4).log_id),
        )
        .await;
        assert!(early.is_err(), "purged past the saved base: {early:?}");
        assert_eq!(log.tail().first(), Some(0), "nothing was purged meanwhile");
        saved.send_replace(Some(4));
        log.purge(entry(1, 4).log_id).await.unwrap();
        assert_eq!(log.tail().first(), Some(5));
    }

    /// The Raft log is the WAL record for record: an entry handed over for any index but the
    /// WAL's next is refused, with nothing written and the log stopped (a replica whose
    /// indexes drifted from Raft's would serve one entry as another), and nothing is synced
    /// or written after that; a record that holds another Raft entry than its position says
    /// is refused when read, not served.
    #[tokio::test]
    async fn an_entry_out_of_place_is_refused_when_written_and_when_read() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStorage::open(WalConfig::new(dir.path())).unwrap();
        append(&mut log, (0..3).map(|i| entry(1, i)).collect()).await;
        let reader = log.get_log_reader().await;
        let (tx, rx) = TypeConfig::oneshot();
        let refused = log
            .append(vec![entry(1, 5)], IOFlushed::signal(tx))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("Raft appends at WAL index 6"),
            "{refused}"
        );
        assert!(rx.await.unwrap().is_err(), "its flush is refused too");
        assert!(log.failed.borrow().is_some(), "the log stops");
        // A sync planned before the failure and run after it reports no flush.
        let (tx, rx) = TypeConfig::oneshot();
        sync_batch(
            &log.wal,
            vec![Flush {
                callback: IOFlushed::signal(tx),
            }],
            &log.failed,
        );
        assert!(!matches!(rx.await, Ok(Ok(()))), "a flush after the failure");
        // The next entry in its place is refused too: nothing is written after a failure.
        let (tx, rx) = TypeConfig::oneshot();
        let after = log.append(vec![entry(1, 3)], IOFlushed::signal(tx)).await;
        assert!(after.is_err(), "an append after the failure was taken");
        assert!(!matches!(rx.await, Ok(Ok(()))), "flushed after the failure");
        assert_eq!(read_from(&reader, 0).await, vec![(0, 1), (1, 1), (2, 1)]);

        // Raft entry 5 in the record of Raft index 3 (as a WAL bug would leave it).
        let record = super::super::encode_entry(&entry(1, 5)).unwrap();
        log.wal
            .lock()
            .unwrap()
            .append_batch(&[record.as_slice()])
            .unwrap();
        log.tail().clear();
        let refused = reader.clone().try_get_log_entries(3..4).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("WAL record 4 holds Raft entry 5, expected 3"),
            "{refused}"
        );
    }
}
