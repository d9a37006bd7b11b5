//! The single-node LogStore's write path: group commit, pipelined.
//!
//! The writer thread takes every append waiting, decides each one's verdict (new, or a
//! retry of an earlier one), assigns indexes and writes the group to the WAL without
//! syncing it; it then goes straight on to the next group. The sync thread makes what has
//! been written durable with one `fdatasync` for all the groups written meanwhile, and only
//! then publishes them to readers (tail cache, durable head) and answers their appends, in
//! order. So the next group is written while the previous one syncs, and an fsync covers
//! as many groups as arrived during the last one (etcd's and Pebble's pipelined commit).
//!
//! A small group (under 32 entries) with nothing syncing is written, synced and answered by
//! the writer itself, as before pipelining: at the paper's 2,000 appends/s the hop to the
//! sync thread cost more (append p50 3.5 vs 2.9 ms, p99 9.9 vs 7.1) than the overlap saved.
//! Once a group is syncing, every group goes through the sync thread, a retry's too: a retry's original may be in a
//! group still syncing, and it must not be acknowledged before that group is durable.
//! Under simulation ([`crate::blocking::inline`]) there is no second thread: each group is
//! written and synced before the next, on the calling task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, RwLock};

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::dedupe::{self, Writers, digest};
use super::{Appended, Job, LogStoreError, MAX_GROUP_BYTES, MAX_GROUP_ENTRIES, TailCache};
use crate::proto::{EncodedEntry, Entry, StoredEntry};
use crate::wal::{SyncPoint, Wal};

/// Groups written and waiting for their sync: past this, the writer waits for the syncs.
const GROUPS_IN_FLIGHT: usize = 8;
/// A group of at least this many entries is handed to the sync thread even when nothing is
/// syncing; a smaller one, with nothing syncing, is synced and answered by the writer itself
/// (one thread hop less: at 2,000 appends/s a hop cost more than the overlap saved).
const PIPELINE_MIN_ENTRIES: usize = 32;

type AppendReply = oneshot::Sender<Result<Appended, LogStoreError>>;
/// A retention asked for: below which index, and where to answer.
type RetainAsk = (u64, oneshot::Sender<Result<(u64, usize), LogStoreError>>);

/// What a group leaves for the sync thread.
pub(super) struct Written {
    /// Makes the group durable (`None`: the group wrote nothing; its answers wait only for
    /// the groups before it).
    point: Option<SyncPoint>,
    /// The entries written, to publish once durable.
    entries: Vec<EncodedEntry>,
    replies: Vec<(AppendReply, Result<Appended, LogStoreError>)>,
}

/// Where the durable head and the tail cache are published, and a WAL failure reported.
#[derive(Clone)]
pub(super) struct Publish {
    pub cache: Arc<RwLock<TailCache<EncodedEntry>>>,
    pub head: Arc<watch::Sender<u64>>,
    pub failed: Arc<watch::Sender<Option<String>>>,
}

impl Publish {
    fn entries(&self, entries: Vec<EncodedEntry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        if let Ok(mut cache) = self.cache.write() {
            for e in entries {
                cache.push_entry(e);
            }
        }
        self.head.send_replace(last);
    }

    /// See [`super::FailOnPanic`].
    fn fail_on_panic(&self, thread: &'static str) -> super::FailOnPanic {
        super::FailOnPanic::new(self.failed.clone(), thread)
    }

    fn fail(&self, reason: &str) {
        super::fail_wal(&self.failed, reason);
    }
}

pub(super) struct Writer {
    pub wal: Wal,
    pub writers: Writers,
    pub publish: Publish,
    /// The sync thread's queue (`None`: each group is synced inline).
    pub synced: Option<SyncSender<Written>>,
    /// Groups handed to the sync thread and not yet published.
    pub in_flight: Arc<AtomicUsize>,
    /// The highest point `Retain` released below (segments go whole, so the WAL's first
    /// index can stay far below it): what the writer table counts as released. In memory
    /// only: after a restart, the WAL's first index (the records above it are read back).
    pub released: u64,
    /// See [`dedupe::NothingReleased`].
    pub scanned: dedupe::NothingReleased,
    /// `writers.len()`, for `Bounds` (read by other threads).
    pub count: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the sync thread and runs the writer on this thread until every sender of
    /// `jobs` is gone.
    pub fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let (tx, rx) = sync_channel(GROUPS_IN_FLIGHT);
        let publish = self.publish.clone();
        let in_flight = self.in_flight.clone();
        let _failing = self.publish.fail_on_panic("writer");
        let spawned = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                let _failing = publish.fail_on_panic("sync");
                sync_loop(rx, publish, &in_flight, |p| {
                    p.sync().map_err(|e| e.to_string())
                })
            });
        match spawned {
            Ok(_) => self.synced = Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no sync thread: each group syncs before the next")
            }
        }
        while let Some(job) = jobs.blocking_recv() {
            self.take_group(job, &mut jobs);
        }
    }

    /// The writer as a task on the caller's runtime (see [`crate::blocking`]).
    pub async fn run_inline(mut self, mut jobs: mpsc::Receiver<Job>) {
        let _failing = self.publish.fail_on_panic("writer");
        while let Some(job) = jobs.recv().await {
            self.take_group(job, &mut jobs);
        }
    }

    /// Commits `job` and whatever else is already waiting (group commit); after a WAL
    /// failure (published on `failed`), refuses them all.
    fn take_group(&mut self, job: Job, jobs: &mut mpsc::Receiver<Job>) {
        let mut group = vec![job];
        let mut bytes = 0usize;
        while group.len() < MAX_GROUP_ENTRIES && bytes < MAX_GROUP_BYTES {
            match jobs.try_recv() {
                Ok(j) => {
                    if let Job::Append { mutations, .. } = &j {
                        bytes += mutations.iter().map(|m| m.encoded_len()).sum::<usize>();
                    }
                    group.push(j)
                }
                Err(_) => break,
            }
        }
        if let Some(reason) = self.publish.failed.borrow().clone() {
            tracing::debug!(%reason, "refusing jobs after a WAL failure");
            for job in group {
                match job {
                    Job::Append { reply, .. } => {
                        let _ = reply.send(Err(LogStoreError::Stopped));
                    }
                    Job::Retain { reply, .. } => {
                        let _ = reply.send(Err(LogStoreError::Stopped));
                    }
                }
            }
            return;
        }
        if let Err(e) = self.commit_group(group) {
            self.publish.fail(&e.to_string());
        }
    }

    /// Decides each append's verdict and assigns indexes; returns the records to write,
    /// the entries they hold, the answers, and the retentions asked for.
    #[allow(clippy::type_complexity)]
    fn verdicts(
        &mut self,
        group: Vec<Job>,
    ) -> (
        Vec<Vec<u8>>,
        Vec<EncodedEntry>,
        Vec<(AppendReply, Result<Appended, LogStoreError>)>,
        Vec<RetainAsk>,
    ) {
        let mut next = self.wal.last_index() + 1;
        let released = self.released.max(self.wal.first_index());
        let max_writers = crate::serving::limits().max_writers;
        let (mut payloads, mut entries, mut replies, mut retains) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for job in group {
            match job {
                Job::Retain { below, reply } => retains.push((below, reply)),
                Job::Append {
                    mutations,
                    writer,
                    follows,
                    start_micros,
                    reply,
                } => {
                    // The table holds this group's earlier appends too, so a retry inside
                    // the same group also dedups.
                    if let Some(answer) =
                        dedupe::seen_before(&self.writers, writer.as_ref(), follows, &mutations)
                    {
                        replies.push((reply, answer));
                        continue;
                    }
                    if let Err(e) = dedupe::admit(
                        &mut self.writers,
                        &mut self.scanned,
                        writer.as_ref(),
                        released,
                        max_writers,
                    ) {
                        replies.push((reply, Err(e)));
                        continue;
                    }
                    let index = next;
                    next += 1;
                    let digest = writer.as_ref().map(|_| digest(&mutations));
                    dedupe::record(
                        &mut self.writers,
                        writer.as_ref(),
                        index,
                        digest.unwrap_or_default(),
                    );
                    let (writer_id, sequence) = writer.unwrap_or_default();
                    let entry = EncodedEntry::new(&Entry {
                        index,
                        mutations,
                        append_start_micros: start_micros,
                    });
                    payloads.push(stored_record(&entry, writer_id, sequence));
                    entries.push(entry);
                    let appended = Appended {
                        index,
                        duplicate: false,
                    };
                    replies.push((reply, Ok(appended)));
                }
            }
        }
        (payloads, entries, replies, retains)
    }

    /// Writes one group and hands it to the sync thread (or syncs, publishes and answers it
    /// here, inline); then runs the retentions asked for.
    fn commit_group(&mut self, group: Vec<Job>) -> Result<(), LogStoreError> {
        let first = self.wal.last_index() + 1;
        let (payloads, entries, mut replies, retains) = self.verdicts(group);
        self.count.store(self.writers.len(), Ordering::Relaxed);
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        // Handed over while anything is syncing (so answers keep their order), or when big.
        let hand_over = self.synced.is_some()
            && (self.in_flight.load(Ordering::Acquire) > 0
                || payloads.len() >= PIPELINE_MIN_ENTRIES);
        let written = if payloads.is_empty() {
            Ok(first)
        } else if hand_over {
            self.wal.append_batch_unsynced(&refs)
        } else {
            self.wal.append_batch(&refs)
        };
        let assigned = match written {
            Ok(a) => a,
            Err(e) => {
                let msg = e.to_string();
                for (reply, _) in replies.drain(..) {
                    let _ = reply.send(Err(LogStoreError::NotDurable(msg.clone())));
                }
                return Err(e.into());
            }
        };
        if assigned != first {
            return Err(LogStoreError::Invalid(format!(
                "WAL assigned index {assigned}, expected {first}"
            )));
        }
        let written = Written {
            point: (!payloads.is_empty()).then(|| self.wal.sync_point()),
            entries,
            replies,
        };
        match self.synced.as_ref().filter(|_| hand_over) {
            Some(tx) => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                if let Err(unsent) = tx.send(written) {
                    // The sync thread is gone (it only ends when this sender is dropped).
                    answer(unsent.0.replies, Some("the WAL sync thread stopped"));
                    return Err(LogStoreError::Stopped);
                }
            }
            None => {
                self.publish.entries(written.entries);
                answer(written.replies, None);
            }
        }
        self.retain(retains);
        Ok(())
    }

    fn retain(&mut self, retains: Vec<RetainAsk>) {
        for (below, reply) in retains {
            // What the writer table remembers of the records about to go is kept first
            // (see `released`): a restart cannot read it back from them.
            let first = self.wal.first_after_removing_below(below);
            let saved = if first > self.wal.first_index() {
                super::released::save(self.wal.dir(), &self.writers, first)
                    .map_err(LogStoreError::from)
            } else {
                Ok(())
            };
            let out = saved.and_then(|()| {
                self.wal
                    .remove_below(below)
                    .map(|n| (self.wal.first_index(), n))
                    .map_err(LogStoreError::from)
            });
            if let Ok((first, _)) = &out {
                // `below` was checked against the log's end by the service.
                self.released = self.released.max(below.min(self.wal.last_index() + 1));
                dedupe::release(&mut self.writers, self.released.max(*first));
            }
            if let Ok((first, removed)) = &out
                && *removed > 0
            {
                tracing::info!(below, first, removed, "removed old segments");
            }
            self.count.store(self.writers.len(), Ordering::Relaxed);
            let _ = reply.send(out);
        }
    }
}

/// The WAL record of an entry: its `StoredEntry`, built around the entry's encoding (the
/// entry is encoded once, for the record and the tail cache alike). Byte for byte what
/// encoding the whole `StoredEntry` gives: prost writes fields in tag order, the entry first.
pub(super) fn stored_record(entry: &EncodedEntry, writer_id: String, sequence: u64) -> Vec<u8> {
    let rest = StoredEntry {
        entry: None,
        writer_id,
        sequence,
        follows: 0,
    };
    let mut record = Vec::with_capacity(entry.bytes.len() + 16 + rest.encoded_len());
    prost::encoding::bytes::encode(1, &entry.bytes, &mut record);
    // Encoding into a Vec cannot fail (it grows as needed).
    let _ = rest.encode(&mut record);
    record
}

/// Sends each answer, or the failure instead of it.
fn answer(replies: Vec<(AppendReply, Result<Appended, LogStoreError>)>, failed: Option<&str>) {
    for (reply, result) in replies {
        let result = match failed {
            Some(reason) => Err(LogStoreError::NotDurable(reason.to_owned())),
            None => result,
        };
        let _ = reply.send(result);
    }
}

/// The sync thread: one `fdatasync` for every group written since the last one, then their
/// publication and answers, in order. After a failed sync, nothing more is published: each
/// later group is answered with the failure.
fn sync_loop(
    groups: Receiver<Written>,
    publish: Publish,
    in_flight: &AtomicUsize,
    sync: impl Fn(&SyncPoint) -> Result<(), String>,
) {
    while let Ok(first) = groups.recv() {
        let mut batch = vec![first];
        batch.extend(groups.try_iter());
        let failed = publish.failed.borrow().clone();
        let result = match (failed, batch.iter().rev().find_map(|w| w.point.as_ref())) {
            (Some(reason), _) => Err(reason),
            (None, Some(point)) => sync(point),
            (None, None) => Ok(()),
        };
        if let Err(reason) = &result {
            publish.fail(reason);
        }
        for w in batch {
            match &result {
                Ok(()) => {
                    publish.entries(w.entries);
                    answer(w.replies, None);
                }
                Err(reason) => answer(w.replies, Some(reason)),
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TAIL_CACHE_BYTES;
    use super::*;
    use crate::wal::WalConfig;
    use std::sync::mpsc::channel;

    fn setup() -> (tempfile::TempDir, Wal, Publish, watch::Receiver<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let (head, head_rx) = watch::channel(0);
        let publish = Publish {
            cache: Arc::new(RwLock::new(TailCache::new(TAIL_CACHE_BYTES))),
            head: Arc::new(head),
            failed: Arc::new(watch::channel(None).0),
        };
        (dir, wal, publish, head_rx)
    }

    /// A panic of the writer's or the sync thread is published as a WAL failure, so the
    /// LogStore stops; it used to stay up with no writer, refusing every append.
    #[test]
    fn a_panic_of_a_wal_thread_is_a_wal_failure() {
        let (_dir, _wal, publish, _head) = setup();
        let failed = publish.failed.subscribe();
        let p = publish.clone();
        let panicked = std::thread::spawn(move || {
            let _failing = p.fail_on_panic("sync");
            panic!("a bug");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(
            failed.borrow().as_deref(),
            Some("the WAL's sync thread panicked")
        );
        // A thread that ends without panicking reports nothing.
        let (_dir, _wal, publish, _head) = setup();
        let failed = publish.failed.subscribe();
        std::thread::spawn(move || drop(publish.fail_on_panic("writer")))
            .join()
            .unwrap();
        assert_eq!(*failed.borrow(), None);
    }

    fn group(
        wal: &mut Wal,
        index: u64,
    ) -> (Written, oneshot::Receiver<Result<Appended, LogStoreError>>) {
        wal.append_batch_unsynced(&[b"x"]).unwrap();
        let (reply, answer) = oneshot::channel();
        let appended = Appended {
            index,
            duplicate: false,
        };
        let entry = EncodedEntry::new(&Entry {
            index,
            ..Default::default()
        });
        let written = Written {
            point: Some(wal.sync_point()),
            entries: vec![entry],
            replies: vec![(reply, Ok(appended))],
        };
        (written, answer)
    }

    /// A record built around the entry's encoding is the whole `StoredEntry` encoded.
    #[test]
    fn a_record_is_its_stored_entry_encoded() {
        use crate::proto::{Mutation, mutation::Op};
        let entry = Entry {
            index: 42,
            mutations: vec![Mutation {
                key: bytes::Bytes::from_static(b"l-000001"),
                op: Some(Op::Append(bytes::Bytes::from(vec![7u8; 1000]))),
            }],
            append_start_micros: 1_700_000_000_000_000,
        };
        for (writer, sequence) in [("w-1", 9), ("", 0)] {
            let want = StoredEntry {
                entry: Some(entry.clone()),
                writer_id: writer.into(),
                sequence,
                follows: 0,
            }
            .encode_to_vec();
            let got = stored_record(&EncodedEntry::new(&entry), writer.into(), sequence);
            assert_eq!(got, want, "writer {writer:?}");
            assert_eq!(
                super::super::decode_stored(42, &got).unwrap().entry,
                Some(entry.clone())
            );
        }
    }

    /// After a failed sync, the writer refuses the next group: a small group with nothing
    /// in flight would otherwise be written and synced inline (a retried `fdatasync` can
    /// succeed) and published on top of the group whose sync failed.
    #[test]
    fn after_a_failed_sync_the_writer_writes_nothing_more() {
        use crate::proto::{Mutation, mutation::Op};
        let (_dir, wal, publish, head) = setup();
        let mut writer = Writer {
            wal,
            writers: Default::default(),
            publish: publish.clone(),
            synced: None,
            in_flight: Default::default(),
            released: 0,
            scanned: Default::default(),
            count: Default::default(),
        };
        let (_jobs_tx, mut jobs) = mpsc::channel(4);
        let append = || {
            let (reply, answer) = oneshot::channel();
            let job = Job::Append {
                mutations: vec![Mutation {
                    key: bytes::Bytes::from_static(b"c-000000"),
                    op: Some(Op::Add(1)),
                }],
                writer: None,
                follows: 0,
                start_micros: 0,
                reply,
            };
            (job, answer)
        };
        let (job, mut answer) = append();
        writer.take_group(job, &mut jobs);
        assert_eq!(answer.try_recv().unwrap().unwrap().index, 1);
        assert_eq!((writer.wal.last_index(), *head.borrow()), (1, 1));
        // The sync thread's verdict on a later group (see `sync_loop`).
        publish.fail("disk on fire");
        let (job, mut answer) = append();
        writer.take_group(job, &mut jobs);
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(LogStoreError::Stopped)
        ));
        assert_eq!(writer.wal.last_index(), 1, "written after a failed sync");
        assert_eq!(*head.borrow(), 1, "published after a failed sync");
    }

    /// Nothing is published or answered before its sync has returned.
    #[test]
    fn a_group_is_published_and_answered_only_after_its_sync() {
        let (_dir, mut wal, publish, head) = setup();
        let (tx, rx) = sync_channel(4);
        let (release_tx, release_rx) = channel::<()>();
        let (synced_tx, synced_rx) = channel::<()>();
        let release = std::sync::Mutex::new(release_rx);
        let p = publish.clone();
        let thread = std::thread::spawn(move || {
            sync_loop(rx, p, &AtomicUsize::new(1), |_| {
                synced_tx.send(()).unwrap();
                release.lock().unwrap().recv().unwrap();
                Ok(())
            })
        });
        let (written, mut answer) = group(&mut wal, 1);
        tx.send(written).unwrap();
        synced_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(*head.borrow(), 0, "published while its sync was running");
        assert!(
            answer.try_recv().is_err(),
            "answered while its sync was running"
        );
        release_tx.send(()).unwrap();
        drop(tx);
        thread.join().unwrap();
        assert_eq!(*head.borrow(), 1);
        assert_eq!(answer.try_recv().unwrap().unwrap().index, 1);
    }

    /// A failed sync publishes nothing, answers with the failure, and fails what follows.
    #[test]
    fn a_failed_sync_is_never_acknowledged() {
        let (_dir, mut wal, publish, head) = setup();
        let (tx, rx) = sync_channel(4);
        let (first, mut first_answer) = group(&mut wal, 1);
        let (second, mut second_answer) = group(&mut wal, 2);
        tx.send(first).unwrap();
        drop(tx);
        let p = publish.clone();
        sync_loop(rx, p, &AtomicUsize::new(1), |_| Err("disk on fire".into()));
        assert_eq!(*head.borrow(), 0);
        let err = first_answer.try_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("disk on fire"), "{err}");
        assert!(publish.failed.borrow().is_some());
        // A group after the failure is refused even if its own sync would succeed.
        let (tx, rx) = sync_channel(4);
        tx.send(second).unwrap();
        drop(tx);
        sync_loop(rx, publish, &AtomicUsize::new(1), |_| Ok(()));
        assert_eq!(*head.borrow(), 0);
        assert!(second_answer.try_recv().unwrap().is_err());
    }
}
