//! How a shard groups the batches of one `Deliver` stream into commits.
//!
//! A commit takes every batch that has already arrived (those that came in while the
//! previous commit was syncing). When that is all, it may also wait, up to the **commit
//! delay** counted from its first batch's arrival, for more — but only when waiting pays:
//! - the stream is busy (its previous batch arrived less than a commit delay before this
//!   commit's first one), so more is likely to come within the delay; an isolated batch is
//!   committed at once;
//! - and the pages the commit would write would be less than three quarters full. A commit's
//!   `fdatasync` writes whole pages (the journal starts each commit on a fresh page), so a
//!   stream of small commits writes a page for each: at 10 shards x 10 KB x 2,000/s a shard
//!   receives ~2 MB/s and, committing as soon as each batch arrived, wrote 2-3 bytes to disk
//!   per byte delivered.
//!
//! This is PostgreSQL's `commit_delay` (wait for siblings only when there are some), with
//! the page as the measure of "enough". A commit delay of zero commits whatever has arrived.

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::grpc::Reason;
use crate::proto::ShardEntry;

/// The default commit delay (see the module doc): at the bench's busiest shape a shard's
/// commit fills most of a page in about that time.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
/// The most a commit may wait: longer adds delay without saving writes (a page fills far
/// sooner at any rate where waiting pays).
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);
/// Most entries coalesced into one durable commit: bounds a commit's size and latency.
const MAX_COALESCED_ENTRIES: usize = 4096;
/// Bytes of entries past which a group takes no more batches: with the batch that crossed
/// it, a commit stays below the journal's largest record (2 GiB - 1) even at the largest
/// entry limit (1 GiB, one batch holding about that). Without it, two batches of 1 GiB made
/// one record the journal refused, the store failed, the shard restarted and was sent the
/// same batches again.
pub(super) const MAX_COALESCED_BYTES: usize = 512 * 1024 * 1024;
/// The page a commit's `fdatasync` writes whole (the journal's).
const PAGE: usize = super::journal::PAGE as usize;
/// Bytes a journal commit adds to its entries' (its group's mark, the record's WAL header,
/// the applied index and its entry's fingerprint, field tags).
const RECORD_OVERHEAD: usize = 57;

/// What the reader task hands the committer.
pub enum Inbound {
    /// A batch, the wall-clock time it arrived (µs, for the delay histograms) and the same
    /// moment on the runtime's clock (for the commit delay).
    Batch(Vec<ShardEntry>, u64, Instant),
    /// A Hello (or an empty message) after the first message, said as `what`: a protocol
    /// error.
    NotABatch(&'static str),
    /// A message this shard refuses to read (above its size limit).
    Refused(Status),
    /// End of stream or a broken connection.
    Closed,
}

/// What follows a group.
#[derive(Debug)]
pub enum End {
    /// More may come: commit the group and gather the next.
    Open,
    /// The stream ended: commit the group and stop.
    Closed,
    /// The stream broke its contract: send this status and stop, committing nothing more.
    Stop(Status),
}

/// The batches of one commit.
#[derive(Debug)]
pub struct Group {
    pub entries: Vec<ShardEntry>,
    /// Each entry's arrival time (wall clock, µs).
    pub received: Vec<u64>,
    pub end: End,
}

/// Groups one stream's batches into commits (see the module doc).
pub struct Gatherer {
    rx: mpsc::Receiver<Inbound>,
    delay: Duration,
    /// When the last batch taken arrived.
    last_arrival: Option<Instant>,
    /// [`MAX_COALESCED_BYTES`] (tests lower it).
    max_bytes: usize,
}

/// Whether a commit of `bytes` of entries fills at least three quarters of the pages its
/// record spans (so padding adds at most a third to what it writes).
fn fills_its_pages(bytes: usize) -> bool {
    let record = bytes + RECORD_OVERHEAD;
    let pages = record.div_ceil(PAGE) * PAGE;
    record * 4 >= pages * 3
}

impl Gatherer {
    pub fn new(rx: mpsc::Receiver<Inbound>, delay: Duration) -> Self {
        Gatherer {
            rx,
            delay,
            last_arrival: None,
            max_bytes: MAX_COALESCED_BYTES,
        }
    }

    /// The next group to commit, or `None` once `shutdown` is cancelled while waiting for a
    /// first batch.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<Group> {
        let first = tokio::select! {
            m = self.rx.recv() => m.unwrap_or(Inbound::Closed),
            _ = shutdown.cancelled() => return None,
        };
        let mut group = Group {
            entries: Vec::new(),
            received: Vec::new(),
            end: End::Open,
        };
        // Bytes of the entries in the group.
        let mut bytes = 0;
        // Set by the group's first batch: until when it may wait, if waiting pays.
        let mut deadline: Option<Option<Instant>> = None;
        let mut next = Some(first);
        loop {
            while let Some(item) = next.take() {
                match item {
                    Inbound::Batch(batch, at, arrived) => {
                        if deadline.is_none() {
                            let busy = self
                                .last_arrival
                                .is_some_and(|last| arrived.duration_since(last) < self.delay);
                            deadline = Some(busy.then(|| arrived + self.delay));
                        }
                        self.last_arrival = Some(arrived);
                        bytes += batch.iter().map(Message::encoded_len).sum::<usize>();
                        group.received.extend(std::iter::repeat_n(at, batch.len()));
                        group.entries.extend(batch);
                    }
                    Inbound::NotABatch(what) => {
                        group.end = End::Stop(Reason::Invalid.status(format!(
                            "{what} after the Hello: only the first message of a Deliver \
                             stream may be a Hello; later messages must be Batches",
                        )));
                        return Some(group);
                    }
                    Inbound::Refused(status) => {
                        group.end = End::Stop(status);
                        return Some(group);
                    }
                    Inbound::Closed => {
                        group.end = End::Closed;
                        return Some(group);
                    }
                }
                if group.entries.len() >= MAX_COALESCED_ENTRIES || bytes >= self.max_bytes {
                    return Some(group);
                }
                next = self.rx.try_recv().ok();
            }
            // Everything that had arrived is in; wait for more only if it pays.
            let Some(Some(until)) = deadline else {
                return Some(group);
            };
            if fills_its_pages(bytes) {
                return Some(group);
            }
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(item) => next = Some(item.unwrap_or(Inbound::Closed)),
                Err(_) => return Some(group),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Mutation, mutation::Op};

    /// A batch of one entry whose encoding is about `bytes` long.
    fn batch(index: u64, bytes: usize) -> Vec<ShardEntry> {
        vec![ShardEntry {
            index,
            mutations: vec![Mutation {
                key: bytes::Bytes::from_static(b"k"),
                op: Some(Op::Put(vec![7; bytes].into())),
            }],
            ..Default::default()
        }]
    }

    fn send(tx: &mpsc::Sender<Inbound>, index: u64, bytes: usize) {
        let item = Inbound::Batch(batch(index, bytes), 0, Instant::now());
        assert!(tx.try_send(item).is_ok());
    }

    /// A gatherer with `delay`, the sender feeding it and a shutdown token.
    fn gatherer(delay: Duration) -> (mpsc::Sender<Inbound>, Gatherer, CancellationToken) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Gatherer::new(rx, delay), CancellationToken::new())
    }

    fn indexes(g: &Group) -> Vec<u64> {
        g.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn a_commit_fills_its_pages_when_they_are_three_quarters_full() {
        assert!(!fills_its_pages(100));
        assert!(!fills_its_pages(2000));
        assert!(fills_its_pages(3100));
        assert!(fills_its_pages(4000));
        // Just past one page (with the mark and the record's header): the second page is
        // nearly empty.
        assert!(!fills_its_pages(4060));
        assert!(!fills_its_pages(4200));
        assert!(fills_its_pages(7200));
        // A large commit's last page, nearly empty, is little beside the rest.
        assert!(fills_its_pages(40_960));
    }

    /// A group takes no more batches once its entries pass the byte bound (with the one that
    /// crossed it, a commit stays within the journal's largest record), however many have
    /// arrived.
    #[tokio::test]
    async fn a_group_stops_at_its_byte_bound() {
        let (tx, mut g, stop) = gatherer(Duration::ZERO);
        g.max_bytes = 2500;
        for i in 1..=5 {
            send(&tx, i, 1000);
        }
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1, 2, 3]);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![4, 5]);
        // The real bound: a commit of it plus one batch at the largest entry limit fits a
        // journal record.
        let largest_batch = crate::limits::message_limit(crate::limits::MAX_MAX_ENTRY_BYTES);
        assert!(
            MAX_COALESCED_BYTES + largest_batch + RECORD_OVERHEAD
                < crate::wal::MAX_RECORD_BYTES as usize
        );
    }

    /// Sends batches of ~500 bytes numbered `from..` every `every`.
    fn produce(
        tx: mpsc::Sender<Inbound>,
        from: u64,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for i in from.. {
                tokio::time::sleep(every).await;
                if tx
                    .try_send(Inbound::Batch(batch(i, 500), 0, Instant::now()))
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    /// On a busy stream of small batches, a commit waits for more until its pages are mostly
    /// full, so that several batches share them.
    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_of_small_batches_is_grouped_until_its_pages_fill() {
        let delay = Duration::from_millis(20);
        let (tx, mut g, stop) = gatherer(delay);
        send(&tx, 1, 500);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1]);
        let producer = produce(tx, 2, Duration::from_millis(1));
        let group = g.next(&stop).await.unwrap();
        // Six batches of ~510 bytes fill three quarters of a page.
        assert_eq!(indexes(&group), (2..=7).collect::<Vec<_>>());
        assert!(matches!(group.end, End::Open));
        let group = g.next(&stop).await.unwrap();
        assert_eq!(indexes(&group), (8..=13).collect::<Vec<_>>());
        producer.abort();
    }

    /// However busy the stream, no batch waits longer than the delay for others.
    #[tokio::test(start_paused = true)]
    async fn a_commit_waits_at_most_the_delay_from_its_first_batch() {
        let delay = Duration::from_millis(5);
        let (tx, mut g, stop) = gatherer(delay);
        send(&tx, 1, 500);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1]);
        let producer = produce(tx, 2, Duration::from_millis(3));
        let started = Instant::now();
        let group = g.next(&stop).await.unwrap();
        // Batch 2 arrives at 3 ms, batch 3 at 6 ms; the delay ends at 8 ms, before batch 4.
        assert_eq!(indexes(&group), vec![2, 3]);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(8) && waited < Duration::from_millis(9),
            "waited {waited:?}"
        );
        producer.abort();
    }

    /// A batch on a quiet stream is committed at once: nothing else is likely to come.
    #[tokio::test(start_paused = true)]
    async fn an_isolated_batch_is_committed_at_once() {
        let (tx, mut g, stop) = gatherer(Duration::from_millis(2));
        send(&tx, 1, 100);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&tx, 2, 100);
        let started = Instant::now();
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![2]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A commit that already fills its pages does not wait, however busy the stream.
    #[tokio::test(start_paused = true)]
    async fn a_commit_that_fills_its_pages_does_not_wait() {
        let (tx, mut g, stop) = gatherer(Duration::from_millis(2));
        send(&tx, 1, 100);
        send(&tx, 2, 3500);
        let started = Instant::now();
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1, 2]);
        send(&tx, 3, 3500);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![3]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// With a commit delay of zero, a commit takes what has arrived and never waits.
    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_never_waits() {
        let (tx, mut g, stop) = gatherer(Duration::ZERO);
        send(&tx, 1, 100);
        send(&tx, 2, 100);
        let started = Instant::now();
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![1, 2]);
        send(&tx, 3, 100);
        assert_eq!(indexes(&g.next(&stop).await.unwrap()), vec![3]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// The end of the stream while waiting ends the group: it is committed, then the loop
    /// stops; a protocol error stops it without a commit of what follows.
    #[tokio::test(start_paused = true)]
    async fn the_stream_ending_while_waiting_ends_the_group() {
        let (tx, mut g, stop) = gatherer(Duration::from_millis(2));
        send(&tx, 1, 100);
        g.next(&stop).await.unwrap();
        send(&tx, 2, 100);
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(300)).await;
            drop(tx);
        });
        let group = g.next(&stop).await.unwrap();
        assert_eq!(indexes(&group), vec![2]);
        assert!(matches!(group.end, End::Closed), "{:?}", group.end);
        closer.await.unwrap();

        let (tx, mut g, stop) = gatherer(Duration::from_millis(2));
        send(&tx, 1, 100);
        assert!(tx.try_send(Inbound::NotABatch("a second Hello")).is_ok());
        let group = g.next(&stop).await.unwrap();
        assert!(matches!(group.end, End::Stop(_)), "{:?}", group.end);
    }
}
