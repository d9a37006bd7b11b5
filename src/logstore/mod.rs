//! The LogStore: the durable write-ahead log that transaction managers append to and
//! players read from.
//!
//! It owns the append path — validation (including the entry-size limit), per-writer
//! sequence deduplication, group commit (one writer thread takes every append that is
//! waiting, writes them, and fsyncs once, pipelined: `writer`), publication of the durable
//! head — the read path
//! (the `tail` cache of recent entries in front of the WAL, so tailing readers never touch
//! the disk), and the log's identity ([`log_id`]). Record storage, checksums and recovery
//! belong to [`crate::wal`]; the gRPC edge is [`service`].

pub mod dedupe;
pub mod log_id;
pub mod raft;
pub mod released;
pub mod served;
pub mod service;
mod stored;
pub(crate) mod tail;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto::{EncodedEntry, Mutation, StoredEntry};
use crate::wal::{Wal, WalConfig, WalError, WalReader};
use tail::TailCache;

/// Appends waiting for the writer thread. Past this, appenders wait (back-pressure) instead
/// of queueing without bound.
const APPEND_QUEUE: usize = 16 * 1024;
/// Most entries fsynced as one group: bounds the latency of the first append of a group.
pub(crate) const MAX_GROUP_ENTRIES: usize = 4096;
/// Most payload bytes in one group.
pub(crate) const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Recent entries kept in memory for tailing readers.
pub(crate) const TAIL_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the LogStore.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("invalid append: {0}")]
    Invalid(String),
    /// A membership call naming a replica no group can have (id 0, an address no one can
    /// dial).
    #[error("invalid replica: {0}")]
    InvalidMember(String),
    /// A setting the LogStore cannot start with (a flag, or a data directory of another
    /// kind); never the answer to a client's call.
    #[error("invalid LogStore setting: {0}")]
    Config(String),
    #[error(
        "entry of {size} bytes exceeds the limit of {limit} bytes (--max-entry-bytes); split the transaction or raise the limit on every component"
    )]
    TooLarge { size: usize, limit: usize },
    #[error(
        "writer {writer:?} reused sequence {sequence} for different mutations; the original append is index {index}"
    )]
    SequenceReused {
        writer: String,
        sequence: u64,
        index: u64,
    },
    #[error("append not durable: {0}; the LogStore refuses appends and stops, to be restarted")]
    NotDurable(String),
    #[error(transparent)]
    LogId(#[from] log_id::LogIdError),
    #[error(
        "writer {writer:?} sent sequence {sequence}, below its last sequence {last} (index {index}) and not one of its recent appends; sequences of one writer must increase"
    )]
    StaleSequence {
        writer: String,
        sequence: u64,
        last: u64,
        index: u64,
    },
    #[error(
        "writer {writer:?} sent sequence {sequence} after {follows} on its append stream, and {follows} was not written; nothing after it on that stream is written: resend from the first unanswered append on a new stream"
    )]
    Gap {
        writer: String,
        sequence: u64,
        follows: u64,
    },
    #[error(
        "writer {writer:?} is new and the writer table is full: {max} writers (--max-writers) each have appends above the retention point; nothing was written. Try again once retention releases some (the players' --retain-log), or raise --max-writers"
    )]
    TooManyWriters { writer: String, max: usize },
    #[error("the log writer has stopped after an earlier IO error; restart the LogStore")]
    Stopped,
    #[error("record {index} does not decode: {reason}")]
    Decode { index: u64, reason: String },
    #[error("this replica does not lead the log{}; nothing was written", .leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_else(|| ": no leader is known yet".into()))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "outcome unknown: {0}; a retry with the same (writer_id, sequence) returns the original index if it was written"
    )]
    Unknown(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error(transparent)]
    Released(#[from] released::ReleasedError),
}

/// Resolves with the reason once `failed` holds one; pending forever if its sender goes
/// away without failing (nothing will ever fail then).
pub(crate) async fn failure(mut failed: watch::Receiver<Option<String>>) -> String {
    let reason = failed
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone());
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

/// A guard that reports a panic of the thread holding it (a WAL writer's or syncer's, the
/// single node's or a replica's) as a WAL failure on `failed`, so that the LogStore stops
/// and its supervisor restarts it, instead of staying up with no writer: every append
/// refused, and [`failure`] waiting for ever.
pub(crate) struct FailOnPanic {
    failed: std::sync::Arc<watch::Sender<Option<String>>>,
    thread: &'static str,
}

impl FailOnPanic {
    pub(crate) fn new(
        failed: std::sync::Arc<watch::Sender<Option<String>>>,
        thread: &'static str,
    ) -> FailOnPanic {
        FailOnPanic { failed, thread }
    }
}

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fail_wal(
                &self.failed,
                &format!("the WAL's {} thread panicked", self.thread),
            );
        }
    }
}

/// Publishes the first WAL failure on `failed` (later ones are only its consequences): the
/// LogStore refuses appends from then on, and stops.
pub(crate) fn fail_wal(failed: &watch::Sender<Option<String>>, reason: &str) {
    if failed.borrow().is_none() {
        tracing::error!(error = %reason, "WAL write failed; the LogStore refuses appends and stops");
        failed.send_replace(Some(reason.to_owned()));
    }
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub index: u64,
    pub duplicate: bool,
}

pub(crate) enum Job {
    Append {
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        /// The sequence its writer sent just before on the same stream (see `dedupe`).
        follows: u64,
        start_micros: u64,
        reply: oneshot::Sender<Result<Appended, LogStoreError>>,
    },
    Retain {
        below: u64,
        reply: oneshot::Sender<Result<(u64, usize), LogStoreError>>,
    },
}

/// What opening the log found, for the startup log line.
#[derive(Debug, Clone)]
pub struct OpenSummary {
    pub first: u64,
    pub last: u64,
    pub torn_bytes_truncated: u64,
    pub writers: usize,
    pub log_id: String,
    /// The id was created by this open (a new log, or one from before log ids existed).
    pub log_id_created: bool,
}

/// A handle to a running LogStore (cheap to clone).
#[derive(Clone)]
pub struct LogStore {
    jobs: mpsc::Sender<Job>,
    reader: WalReader,
    head: watch::Receiver<u64>,
    cache: Arc<RwLock<TailCache<EncodedEntry>>>,
    log_id: Arc<str>,
    max_entry_bytes: usize,
    /// Why the WAL failed, once it has (see [`LogStore::wal_failed`]).
    failed: watch::Receiver<Option<String>>,
    /// How many writers the writer table holds (the writer thread's count, for `Bounds`).
    writers: Arc<std::sync::atomic::AtomicUsize>,
}

/// How to open a LogStore.
#[derive(Debug, Clone)]
pub struct LogStoreConfig {
    pub dir: PathBuf,
    /// WAL segment size (`None`: the WAL's default).
    pub segment_bytes: Option<u64>,
    /// Largest entry accepted (see [`crate::limits`]).
    pub max_entry_bytes: usize,
    /// Keep the WAL's active segment zero-filled ahead of the writer (see
    /// [`crate::wal::WalConfig::preallocate`]).
    pub preallocate: bool,
}

impl LogStoreConfig {
    pub fn new(dir: PathBuf) -> Self {
        LogStoreConfig {
            dir,
            segment_bytes: None,
            max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES,
            preallocate: true,
        }
    }
}

/// Longest accepted writer id.
pub const MAX_WRITER_ID_BYTES: usize = 256;

use dedupe::{Writers, digest};

/// Validates an append's mutations and writer, naming the first problem.
pub fn validate(
    mutations: &[Mutation],
    writer: Option<&(String, u64)>,
    max_entry_bytes: usize,
) -> Result<(), LogStoreError> {
    if let Some((id, _)) = writer
        && id.len() > MAX_WRITER_ID_BYTES
    {
        return Err(LogStoreError::Invalid(format!(
            "writer id of {} bytes is longer than {MAX_WRITER_ID_BYTES}",
            id.len()
        )));
    }
    // 0 is "no earlier append on this stream" to the gap check (`StoredEntry.follows`): an
    // append following a sequence 0 that was lost in a leader change would be written, and
    // the resend of 0 refused as stale. Refused on receipt only, never when an entry is
    // applied, so replicas still apply what an older leader accepted.
    if let Some((id, 0)) = writer {
        return Err(LogStoreError::Invalid(format!(
            "writer {id:?} sent sequence 0: a writer's sequences start at 1 (an empty writer id \
             appends without deduplication)"
        )));
    }
    let size = crate::limits::entry_bytes(mutations);
    if size > max_entry_bytes {
        return Err(LogStoreError::TooLarge {
            size,
            limit: max_entry_bytes,
        });
    }
    if mutations.is_empty() {
        return Err(LogStoreError::Invalid(
            "a transaction needs at least one mutation".into(),
        ));
    }
    for (i, m) in mutations.iter().enumerate() {
        if m.key.is_empty() {
            return Err(LogStoreError::Invalid(format!(
                "mutation {i} has an empty key"
            )));
        }
        if m.op.is_none() {
            return Err(LogStoreError::Invalid(format!(
                "mutation {i} (key {:?}) has no op; expected put, delete, add or append",
                String::from_utf8_lossy(&m.key)
            )));
        }
    }
    Ok(())
}

fn decode_stored(index: u64, bytes: &[u8]) -> Result<StoredEntry, LogStoreError> {
    let stored = StoredEntry::decode(bytes).map_err(|e| LogStoreError::Decode {
        index,
        reason: e.to_string(),
    })?;
    match &stored.entry {
        Some(e) if e.index == index => Ok(stored),
        Some(e) => Err(LogStoreError::Decode {
            index,
            reason: format!("record says it is index {}", e.index),
        }),
        None => Err(LogStoreError::Decode {
            index,
            reason: "record holds no entry".into(),
        }),
    }
}

/// The writer table and the tail cache of the log in `dir`, rebuilt at open: what retention
/// removed, from its file (see [`released`]), then every record's writer and sequence
/// (checking each record decodes).
fn replay(
    dir: &Path,
    reader: &WalReader,
) -> Result<(Writers, TailCache<EncodedEntry>), LogStoreError> {
    let mut writers = Writers::new();
    let mut cache = TailCache::new(TAIL_CACHE_BYTES);
    let (first, last) = (reader.first_index(), reader.last_index());
    released::load(dir, first, &mut writers)?;
    let mut pos = first;
    while pos <= last {
        let chunk = reader.read_range(pos, last, 8 * 1024 * 1024)?;
        for (index, bytes) in chunk {
            let stored = decode_stored(index, &bytes)?;
            if !stored.writer_id.is_empty() {
                let mutations = stored.entry.as_ref().map(|e| &e.mutations[..]);
                let d = digest(mutations.unwrap_or_default());
                let writer = (stored.writer_id, stored.sequence);
                dedupe::record(&mut writers, Some(&writer), index, d);
            }
            cache.push_entry(stored::entry(index, bytes)?);
            pos = index + 1;
        }
    }
    dedupe::release(&mut writers, first);
    Ok((writers, cache))
}

/// Refuses a directory that holds another server's data: a log replica's, a shard's store,
/// or a shard's journal (a segment WAL too).
fn refuse_foreign(dir: &Path) -> Result<(), LogStoreError> {
    let replica = [raft::storage::STATE_FILE, raft::dir::REPLICA_ID_FILE];
    if let Some(marker) = crate::disk::holds_any(dir, &replica) {
        let marker = dir.join(marker);
        return Err(LogStoreError::Config(format!(
            "{} holds a log replica of a replicated LogStore ({} exists); run it with the --id and --peers it was created with",
            dir.display(),
            marker.display()
        )));
    }
    if let Some(m) = crate::disk::holds_any(dir, &crate::disk::SHARD_MARKERS) {
        return Err(LogStoreError::Config(format!(
            "{} holds a shard's store ({m}), not a log; give the LogStore its own directory",
            dir.display()
        )));
    }
    // A shard's journal is a segment WAL too: opened as a log, its last segment would be
    // preallocated before its records failed to decode. A log's segments come with its
    // id file.
    let journal = std::ffi::OsStr::new(crate::disk::SHARD_MARKERS[0]);
    if dir.file_name() == Some(journal)
        && crate::wal::holds_segments(dir)
        && crate::disk::holds_any(dir, &[log_id::LOG_ID_FILE]).is_none()
    {
        return Err(LogStoreError::Config(format!(
            "{} is a shard's journal, not a log (WAL segments named `journal` without a \
             log-id file); give the LogStore its own directory (a log of a version before \
             log ids in a directory of that name: rename the directory)",
            dir.display()
        )));
    }
    Ok(())
}

impl LogStore {
    /// Opens the log in `config.dir` (recovering a torn tail, creating the log id of a new
    /// log) and starts the writer thread.
    pub fn open(config: LogStoreConfig) -> Result<(LogStore, OpenSummary), LogStoreError> {
        crate::limits::validate(config.max_entry_bytes).map_err(LogStoreError::Config)?;
        refuse_foreign(&config.dir)?;
        let mut wal_config = WalConfig::new(config.dir.clone());
        if let Some(b) = config.segment_bytes {
            wal_config.segment_bytes = b;
        }
        // A record is an entry plus its writer id and sequence; never refuse to read back a
        // record an earlier, larger limit accepted (whatever `--max-entry-bytes` was then:
        // a lowered limit must not make a healthy log read as corrupt). Appends are held to
        // the current limit before they reach the WAL.
        let record_limit = crate::limits::message_limit(crate::limits::MAX_MAX_ENTRY_BYTES);
        wal_config.max_record_bytes = u32::try_from(record_limit)
            .unwrap_or(u32::MAX)
            .min(crate::wal::MAX_RECORD_BYTES);
        wal_config.marks = true;
        wal_config.sync = !crate::mutations::on(crate::mutations::Mutation::LogSkipsFsync);
        wal_config.preallocate = config.preallocate;
        let (wal, report) = Wal::open(wal_config)?;
        let empty = wal.last_index() == 0 && wal.first_index() <= 1;
        let reader = wal.reader();
        let (first, last) = (reader.first_index(), reader.last_index());
        // Records that do not decode as entries (not a log) fail here, before an id is
        // written into the directory.
        let (writers, cache) = replay(&config.dir, &reader)?;
        let (log_id, created) = log_id::load_or_create(&config.dir, empty)?;
        let summary = OpenSummary {
            first,
            last,
            torn_bytes_truncated: report.torn_bytes_truncated,
            writers: writers.len(),
            log_id: log_id.clone(),
            log_id_created: created,
        };
        let (jobs_tx, jobs_rx) = mpsc::channel(APPEND_QUEUE);
        let (head_tx, head_rx) = watch::channel(last);
        let cache = Arc::new(RwLock::new(cache));
        let (failed_tx, failed_rx) = watch::channel(None);
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(writers.len()));
        let writer = writer::Writer {
            wal,
            writers,
            publish: writer::Publish {
                cache: cache.clone(),
                head: Arc::new(head_tx),
                failed: Arc::new(failed_tx),
            },
            synced: None,
            in_flight: Default::default(),
            released: 0,
            scanned: Default::default(),
            count: count.clone(),
        };
        if crate::blocking::inline() {
            tokio::spawn(writer.run_inline(jobs_rx));
        } else {
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || writer.run(jobs_rx))
                .map_err(|source| {
                    LogStoreError::Wal(WalError::Io {
                        path: PathBuf::from("wal-writer thread"),
                        source,
                    })
                })?;
        }
        Ok((
            LogStore {
                jobs: jobs_tx,
                reader,
                head: head_rx,
                failed: failed_rx,
                cache,
                log_id: log_id.into(),
                max_entry_bytes: config.max_entry_bytes,
                writers: count,
            },
            summary,
        ))
    }

    /// Appends one transaction; returns once it is durable.
    pub async fn append(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        start_micros: u64,
    ) -> Result<Appended, LogStoreError> {
        self.submit(mutations, writer, 0, start_micros)
            .await?
            .await
            .map_err(|_| LogStoreError::Stopped)?
    }

    /// Queues one transaction for the writer and returns at once with a receiver for its
    /// outcome, so a stream of appends can be pipelined: submissions are written in the
    /// order they are submitted.
    pub async fn submit(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        follows: u64,
        start_micros: u64,
    ) -> Result<oneshot::Receiver<Result<Appended, LogStoreError>>, LogStoreError> {
        validate(&mutations, writer.as_ref(), self.max_entry_bytes)?;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Append {
                mutations,
                writer,
                follows,
                start_micros,
                reply,
            })
            .await
            .map_err(|_| LogStoreError::Stopped)?;
        Ok(rx)
    }

    /// Removes whole segments below `below`; returns the new first index and how many
    /// segments went.
    pub async fn retain(&self, below: u64) -> Result<(u64, usize), LogStoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Retain { below, reply })
            .await
            .map_err(|_| LogStoreError::Stopped)?;
        rx.await.map_err(|_| LogStoreError::Stopped)?
    }

    /// The log's id (see [`log_id`]).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Resolves with the reason once a WAL write has failed. From then on the WAL's state on
    /// disk is unknown and every append is refused; only reopening (recovery) goes on, so a
    /// server stops when this resolves. Pending forever if the WAL never fails.
    pub fn wal_failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        failure(self.failed.clone())
    }

    /// The largest entry this log accepts.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// `(first, last)` durable indexes.
    pub fn bounds(&self) -> (u64, u64) {
        (self.reader.first_index(), *self.head.borrow())
    }

    /// How many writers the writer table holds.
    pub fn writers(&self) -> usize {
        self.writers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A watch of the durable head.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Entries `[from, to]` (to clamped to the head), at least one when `from <= head`,
    /// and no more once the next would take the total past `max_bytes`.
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<EncodedEntry>, LogStoreError> {
        let head = *self.head.borrow();
        let to = to.min(head);
        if from > to {
            return Ok(Vec::new());
        }
        if let Ok(cache) = self.cache.read()
            && let Some(hit) = cache.read(from, to, max_bytes)
        {
            return Ok(hit);
        }
        // The budget counts whole stored records, each its entry framed as in a response
        // (field 1 of `StoredEntry`, as of `ReadResponse`) and more: the response stays
        // within it.
        let records = self.reader.read_range(from, to, max_bytes)?;
        records
            .into_iter()
            .map(|(index, record)| stored::entry(index, record))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mutation::Op;

    /// Opens `dir` again once the dropped handle's writer thread has let go of its lock.
    fn reopen(dir: &std::path::Path) -> (LogStore, OpenSummary) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match LogStore::open(LogStoreConfig::new(dir.to_path_buf())) {
                Err(LogStoreError::Wal(WalError::InUse { .. }))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    fn add(key: &str) -> Vec<Mutation> {
        vec![Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(Op::Add(1)),
        }]
    }

    /// The writer writes the next group while the previous one syncs, and the WAL's reader
    /// sees written records at once: a read must stop at the durable head, or a shard could
    /// apply an entry a power loss then takes from the log (and the log give its index to
    /// another entry).
    #[test]
    fn a_read_stops_at_the_durable_head_whatever_the_wal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let record = |index| {
            StoredEntry {
                entry: Some(crate::proto::Entry {
                    index,
                    mutations: add("k"),
                    append_start_micros: 0,
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        wal.append_batch(&[&record(1)]).unwrap();
        wal.append_batch_unsynced(&[&record(2), &record(3)])
            .unwrap();
        let (head_tx, head) = watch::channel(1);
        let log = LogStore {
            jobs: mpsc::channel(1).0,
            reader: wal.reader(),
            head,
            cache: Arc::new(RwLock::new(TailCache::new(TAIL_CACHE_BYTES))),
            log_id: "00000000-0000-4000-8000-0000000000aa".into(),
            max_entry_bytes: crate::limits::DEFAULT_MAX_ENTRY_BYTES,
            failed: watch::channel(None).1,
            writers: Default::default(),
        };
        let indexes = |from, to| -> Vec<u64> {
            let read = log.read(from, to, usize::MAX).unwrap();
            read.iter().map(|e| e.index).collect()
        };
        assert_eq!(indexes(1, u64::MAX), [1]);
        assert_eq!(indexes(2, 3), Vec::<u64>::new());
        head_tx.send_replace(3);
        assert_eq!(indexes(1, u64::MAX), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_retried_append_with_the_same_sequence_returns_the_original_index() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogStore::open(LogStoreConfig::new(dir.path().to_path_buf())).unwrap();
        let w = |s| Some(("tm-1".to_string(), s));
        let a = log.append(add("k"), w(2), 0).await.unwrap();
        let b = log.append(add("k"), w(2), 0).await.unwrap();
        assert_eq!((a.index, a.duplicate), (1, false));
        assert_eq!((b.index, b.duplicate), (1, true));
        let c = log.append(add("k"), w(3), 0).await.unwrap();
        assert_eq!(c.index, 2);
        // A retry of an earlier append still in flight when its stream broke.
        let older = log.append(add("k"), w(2), 0).await.unwrap();
        assert_eq!((older.index, older.duplicate), (1, true));
        let stale = log.append(add("k"), w(1), 0).await.unwrap_err();
        assert!(
            matches!(stale, LogStoreError::StaleSequence { .. }),
            "{stale}"
        );
        assert_eq!(log.bounds(), (1, 2));
        drop(log);
        // The writer table survives a restart.
        let (log, summary) = reopen(dir.path());
        assert_eq!(summary.writers, 1);
        let again = log.append(add("k"), w(3), 0).await.unwrap();
        assert_eq!((again.index, again.duplicate), (2, true));
    }

    /// Retention removes records the writer table was rebuilt from: what it remembered of
    /// them survives a restart (it used to be forgotten, and a retry of an append below the
    /// retention point was written a second time).
    #[tokio::test]
    async fn the_writer_table_survives_retention_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let small = || {
            let mut c = LogStoreConfig::new(dir.path().to_path_buf());
            c.segment_bytes = Some(crate::wal::MIN_SEGMENT_BYTES);
            c
        };
        let (log, _) = LogStore::open(small()).unwrap();
        let w = |id: &str, s| Some((id.to_string(), s));
        // `once` wrote long ago; `later` wrote 1 long ago and 2 recently.
        assert_eq!(
            log.append(add("k"), w("once", 7), 0).await.unwrap().index,
            1
        );
        assert_eq!(
            log.append(add("k"), w("later", 1), 0).await.unwrap().index,
            2
        );
        for i in 0..200 {
            log.append(add(&format!("fill-{i}")), None, 0)
                .await
                .unwrap();
        }
        let recent = log.append(add("k"), w("later", 2), 0).await.unwrap().index;
        let (first, removed) = log.retain(recent).await.unwrap();
        assert!(removed > 0 && first > 2, "first {first}, removed {removed}");
        let check = |log: LogStore| async move {
            let again = log.append(add("k"), w("once", 7), 0).await.unwrap();
            assert_eq!(
                (again.index, again.duplicate),
                (1, true),
                "a retry of once/7"
            );
            let stale = log.append(add("k"), w("once", 5), 0).await.unwrap_err();
            assert!(
                matches!(stale, LogStoreError::StaleSequence { .. }),
                "{stale}"
            );
            let early = log.append(add("k"), w("later", 1), 0).await.unwrap();
            assert_eq!(
                (early.index, early.duplicate),
                (2, true),
                "a retry of later/1"
            );
            log
        };
        let log = check(log).await;
        drop(log);
        let (log, _) = loop {
            match LogStore::open(small()) {
                Err(LogStoreError::Wal(WalError::InUse { .. })) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => break other.unwrap(),
            }
        };
        let log = check(log).await;
        assert_eq!(log.bounds().1, recent, "nothing was written again");
    }

    /// A record whose entry names another index than its place in the log (a file copied
    /// from another log, or a bug in the writer) stops the open, naming both indexes: the
    /// player would otherwise deliver it under the wrong index. So does a record without
    /// an entry.
    #[tokio::test]
    async fn a_record_that_names_another_index_than_its_place_is_refused_at_open() {
        use crate::proto::Entry;
        for (case, entry) in [
            (
                "misplaced",
                Some(Entry {
                    index: 2,
                    mutations: add("k"),
                    append_start_micros: 0,
                }),
            ),
            ("empty", None),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = LogStore::open(LogStoreConfig::new(dir.path().to_path_buf())).unwrap();
            log.append(add("a"), None, 0).await.unwrap();
            log.append(add("b"), None, 0).await.unwrap();
            drop(log);
            // Once the writer thread has let go of the log, write index 3 by hand.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut wal = loop {
                match Wal::open(WalConfig::new(dir.path())) {
                    Err(WalError::InUse { .. }) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    other => break other.unwrap().0,
                }
            };
            let record = StoredEntry {
                entry,
                writer_id: String::new(),
                sequence: 0,
                follows: 0,
            }
            .encode_to_vec();
            assert_eq!(wal.append_batch(&[&record]).unwrap(), 3);
            drop(wal);
            let err = LogStore::open(LogStoreConfig::new(dir.path().to_path_buf()))
                .err()
                .unwrap_or_else(|| panic!("{case}: a misplaced record was accepted"));
            let want = match case {
                "misplaced" => "record 3 does not decode: record says it is index 2",
                _ => "record 3 does not decode: record holds no entry",
            };
            assert_eq!(err.to_string(), want, "{case}");
        }
    }

    /// An entry a larger `--max-entry-bytes` accepted is read back after a restart with a
    /// smaller one (larger than the WAL's default record bound, 64 MiB): the log opened as
    /// "corrupt" before.
    #[tokio::test]
    async fn an_entry_a_larger_limit_accepted_opens_under_a_smaller_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogStoreConfig::new(dir.path().to_path_buf());
        config.max_entry_bytes = 80 * 1024 * 1024;
        let (log, _) = LogStore::open(config).unwrap();
        let big = vec![Mutation {
            key: b"k".to_vec().into(),
            op: Some(Op::Put(vec![7u8; 65 * 1024 * 1024].into())),
        }];
        assert_eq!(log.append(big, None, 0).await.unwrap().index, 1);
        drop(log);
        let (log, summary) = reopen(dir.path());
        assert_eq!((summary.first, summary.last), (1, 1));
        let back = log.read(1, 1, usize::MAX).unwrap();
        assert_eq!(back.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_appends_get_dense_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogStore::open(LogStoreConfig::new(dir.path().to_path_buf())).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(add(&format!("k{i}")), None, 0).await })
            })
            .collect();
        let mut indexes = Vec::new();
        for t in tasks {
            indexes.push(t.await.unwrap().unwrap().index);
        }
        indexes.sort();
        assert_eq!(indexes, (1..=200).collect::<Vec<_>>());
        let all = log.read(1, 0, usize::MAX).unwrap();
        assert!(all.is_empty(), "to=0 is clamped, not 'forever', in read()");
        let all = log.read(1, 200, usize::MAX).unwrap();
        assert_eq!(all.len(), 200);
        assert!(all.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1));
    }

    #[tokio::test]
    async fn invalid_appends_name_the_bad_mutation() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogStore::open(LogStoreConfig::new(dir.path().to_path_buf())).unwrap();
        let e = log.append(vec![], None, 0).await.unwrap_err();
        assert!(e.to_string().contains("at least one mutation"), "{e}");
        let mut m = add("k");
        m.push(Mutation {
            key: b"x".to_vec().into(),
            op: None,
        });
        let e = log.append(m, None, 0).await.unwrap_err();
        assert!(e.to_string().contains("mutation 1"), "{e}");
        let mut m = add("k");
        m.push(Mutation {
            key: Vec::new().into(),
            op: Some(crate::proto::mutation::Op::Add(1)),
        });
        let e = log.append(m, None, 0).await.unwrap_err();
        assert!(e.to_string().contains("mutation 1 has an empty key"), "{e}");
        let long = "w".repeat(MAX_WRITER_ID_BYTES + 1);
        let e = log.append(add("k"), Some((long, 1)), 0).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("writer id of 257 bytes is longer than 256"),
            "{e}"
        );
        assert_eq!(log.bounds(), (1, 0), "nothing was written");
        let longest = "w".repeat(MAX_WRITER_ID_BYTES);
        assert_eq!(
            log.append(add("k"), Some((longest, 1)), 0)
                .await
                .unwrap()
                .index,
            1
        );
    }
}
