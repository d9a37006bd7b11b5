//! The retried-append rule, in one place for the single-node writer and the replicated state
//! machine: what the writer table remembers of each writer's recent appends, and the verdict
//! on an append whose `(writer_id, sequence)` was seen before.
//!
//! A writer may have many appends in flight (a pipelined `AppendStream`); when its stream
//! breaks — a leader change of a replicated log — it sends every unanswered one again. So the
//! table remembers each writer's last [`WINDOW`] appends, not just the last: a retry of any
//! of them gets its original index. Once all of a writer's appends are below the retention
//! point, only its last is kept.
//!
//! A stream's appends must also be written in the order sent, with none missing: were a
//! later one written while an earlier one was not, the client's resend from its first
//! unanswered append would find that earlier sequence below the writer's last, refused as
//! stale — lost. A replicated log can get there: its leader refuses one group (its lease ran
//! out while its followers were slow) and accepts the next in the same term, or loses a group
//! with its term while the next goes to a later one. So each append of a stream names the
//! sequence its writer sent just before on it (`follows`), and is written only if that one
//! was ([`LogStoreError::Gap`] otherwise). The replicated log decides this when it applies
//! the entry, the same on every replica, so no race between proposing and Raft's own refusals
//! can break the order.
//!
//! The table holds at most `--max-writers` writers ([`admit`]): a writer id is not forgotten
//! because it went quiet, only when the table is full, and then only if all its appends were
//! released by retention (delivered everywhere), those released longest ago first; with
//! none such, a new writer is refused. So a client minting writer ids cannot grow the
//! log's memory without bound, nor push out the writers whose appends are still retained.

use std::collections::{HashMap, VecDeque};

use prost::Message;
use serde::{Deserialize, Serialize};

use super::{Appended, LogStoreError};
use crate::proto::Mutation;

/// What the writer table remembers of a writer's last append: its sequence, its index, and
/// a digest of its mutations (to tell a retry from a reused sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAppend {
    pub sequence: u64,
    pub index: u64,
    pub digest: u64,
}

/// How many of a writer's last appends a retry is recognized for (the most a client should
/// have in flight per writer id).
pub const WINDOW: usize = 4096;

/// The most `--max-writers`: as many as the largest snapshot a replica takes can hold at
/// the worst (each writer with [`WINDOW`] remembered appends of three varints of up to 10
/// bytes, and an id of the longest), so that a replica behind the purge point can always be
/// brought up by one. About 139,000; the default is 100,000.
pub const MAX_WRITERS: usize = crate::logstore::raft::network::MAX_SNAPSHOT_BYTES
    / (WINDOW * 30 + super::MAX_WRITER_ID_BYTES + 16);

/// A writer's last appends, oldest first, sequences increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent(VecDeque<LastAppend>);

impl Recent {
    /// The writer's last append.
    pub fn last(&self) -> Option<&LastAppend> {
        self.0.back()
    }

    /// The writer's remembered appends, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &LastAppend> {
        self.0.iter()
    }
}

/// The writer table: each writer's recent appends.
pub type Writers = HashMap<String, Recent>;

/// A digest of an append's mutations: XXH3 over their encoding. It only has to tell a
/// retry from a mistake (a different transaction under a reused sequence), not resist an
/// adversary; it runs on every append of every replica, so it must be cheap (FNV-1a, byte
/// by byte over a fresh encoding, took a tenth of a log replica's CPU at 20 MB/s).
pub fn digest(mutations: &[Mutation]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = Vec::new();
    for m in mutations {
        buf.clear();
        // Encoding into a Vec cannot fail (it grows as needed).
        let _ = m.encode(&mut buf);
        h.update(&buf);
    }
    h.digest()
}

/// The answer for an append whose `(writer, sequence)` was seen before: the original index
/// for a retry of a recent sequence, a refusal for an older one or for a recent sequence
/// with different mutations. For a new sequence: a refusal if it `follows` (non-zero) a
/// sequence of its stream that was not written, else `None` — it is written. No writer id:
/// `None`.
pub fn seen_before(
    writers: &Writers,
    writer: Option<&(String, u64)>,
    follows: u64,
    mutations: &[Mutation],
) -> Option<Result<Appended, LogStoreError>> {
    let (id, seq) = writer?;
    let gap = || {
        Some(Err(LogStoreError::Gap {
            writer: id.clone(),
            sequence: *seq,
            follows,
        }))
    };
    let Some(recent) = writers.get(id) else {
        return if follows == 0 { None } else { gap() };
    };
    let Some(last) = recent.last().copied() else {
        return if follows == 0 { None } else { gap() };
    };
    if *seq > last.sequence {
        return if follows == 0 || written(recent, follows) {
            None
        } else {
            gap()
        };
    }
    if crate::mutations::on(crate::mutations::Mutation::LogForgetsRetries) {
        return None;
    }
    let found = recent
        .0
        .binary_search_by_key(seq, |a| a.sequence)
        .ok()
        .and_then(|i| recent.0.get(i));
    Some(match found {
        Some(a) if digest(mutations) == a.digest => Ok(Appended {
            index: a.index,
            duplicate: true,
        }),
        Some(a) => Err(LogStoreError::SequenceReused {
            writer: id.clone(),
            sequence: *seq,
            index: a.index,
        }),
        None => Err(LogStoreError::StaleSequence {
            writer: id.clone(),
            sequence: *seq,
            last: last.sequence,
            index: last.index,
        }),
    })
}

/// Whether the writer's append with `sequence` was written: one of its recent appends, or
/// below them all (older than the window, or released by retention).
fn written(recent: &Recent, sequence: u64) -> bool {
    match recent.0.front() {
        Some(oldest) if sequence < oldest.sequence => true,
        _ => recent
            .0
            .binary_search_by_key(&sequence, |a| a.sequence)
            .is_ok(),
    }
}

/// Records a new append of `writer` at `index` (no-op without a writer id).
pub fn record(writers: &mut Writers, writer: Option<&(String, u64)>, index: u64, digest: u64) {
    if let Some((id, sequence)) = writer
        && !id.is_empty()
    {
        let recent = &mut writers.entry(id.clone()).or_default().0;
        // A sequence at or below the last one recorded: a writer the table forgot, back
        // under the same id, seen again when a restart reads back what was kept of it. Its
        // new life replaces the old one (the appends stay in increasing order).
        if recent.back().is_some_and(|l| l.sequence >= *sequence) {
            recent.clear();
        }
        // Room made before the push: a full window stays at its capacity (pushing first
        // would double it, for good, to twice the window).
        if recent.len() >= WINDOW {
            recent.pop_front();
        }
        recent.push_back(LastAppend {
            sequence: *sequence,
            index,
            digest,
        });
    }
}

/// Retention released every index below `first`: a writer whose appends are all below it
/// keeps only its last (enough to refuse an older sequence), and its memory goes with the
/// rest (a full window held 4,096 appends).
pub fn release(writers: &mut Writers, first: u64) {
    for recent in writers.values_mut() {
        if recent.0.len() > 1
            && let Some(last) = recent.last().copied().filter(|l| l.index < first)
        {
            recent.0 = VecDeque::from([last]);
        }
    }
}

/// Writers forgotten at once when the table is full: a share of it, so that the scan that
/// finds them (the whole table) runs once per that many new writers, not once per append.
const FORGET_SHARE: usize = 16;

/// The retention point at which [`admit`]'s last scan left no released writer in the table:
/// until the point moves, no writer can be released (a writer recorded since has its last
/// append above it, and a writer's last append only moves up), so a full table refuses a
/// new writer without scanning again. A cache of what the table already says: two tables
/// that differ only in it are equal, and it is never saved (a replica without it scans once
/// and finds the same).
#[derive(Debug, Clone, Copy, Default)]
pub struct NothingReleased(Option<u64>);

impl PartialEq for NothingReleased {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NothingReleased {}

/// Makes room in the table for the first append of a writer it does not hold, when it holds
/// `max` writers already: it forgets the writers whose appends are all below the retention
/// point `first`, those whose last append is oldest first (a share of `max` at once). A writer
/// only forgotten this way is one whose every append was delivered and released, and which
/// wrote nothing while that many others did; were it to send a retry of one of those
/// appends, it would be written again (the table is what recognizes a retry). If the table
/// is still full the new writer is refused, and nothing of it is written.
///
/// Deterministic (the order is the appends' indexes, each held by one writer), so every
/// replica of a replicated log forgets the same writers when it applies the same entry.
pub fn admit(
    writers: &mut Writers,
    scanned: &mut NothingReleased,
    writer: Option<&(String, u64)>,
    first: u64,
    max: usize,
) -> Result<(), LogStoreError> {
    let Some((id, _)) = writer else {
        return Ok(());
    };
    if id.is_empty() || writers.len() < max || writers.contains_key(id) {
        return Ok(());
    }
    if scanned.0 != Some(first) {
        forget_released(writers, scanned, first, max);
    }
    if writers.len() < max {
        Ok(())
    } else {
        say_full(max);
        Err(LogStoreError::TooManyWriters {
            writer: id.clone(),
            max,
        })
    }
}

/// Warns that new writers are refused, at most once a minute (a refusal can come with every
/// append of every new writer).
fn say_full(max: usize) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60)) {
        *last = Some(now);
        tracing::warn!(
            max,
            "the writer table is full and none of its writers' appends are all released: \
             appends of new writer ids are refused (busy) until retention releases some \
             (the players' --retain-log) or --max-writers is raised"
        );
    }
}

/// [`admit`]'s scan: forgets the writers released longest ago, and notes when none is left.
fn forget_released(writers: &mut Writers, scanned: &mut NothingReleased, first: u64, max: usize) {
    let mut released: Vec<(u64, &String)> = writers
        .iter()
        .filter_map(|(w, recent)| {
            recent
                .last()
                .filter(|l| l.index < first)
                .map(|l| (l.index, w))
        })
        .collect();
    let want = (writers.len() + 1)
        .saturating_sub(max)
        .max(max / FORGET_SHARE)
        .max(1);
    let forget: Vec<String> = if released.len() > want {
        released.select_nth_unstable(want - 1);
        released[..want].iter().map(|(_, w)| (*w).clone()).collect()
    } else {
        scanned.0 = Some(first);
        released.into_iter().map(|(_, w)| w.clone()).collect()
    };
    for w in &forget {
        writers.remove(w);
    }
    if !forget.is_empty() {
        tracing::info!(
            forgotten = forget.len(),
            max,
            "the writer table was full: forgot the writers whose appends were all released \
             longest ago (--max-writers)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mutation::Op;

    fn m(i: u64) -> Vec<Mutation> {
        vec![Mutation {
            key: format!("k{i}").into_bytes().into(),
            op: Some(Op::Add(1)),
        }]
    }

    #[test]
    fn a_retry_of_any_append_in_the_window_gets_its_index_and_older_ones_are_stale() {
        let mut w = Writers::new();
        let id = |s| Some(("w".to_string(), s));
        let n = WINDOW as u64 + 10;
        for s in 1..=n {
            assert!(seen_before(&w, id(s).as_ref(), 0, &m(s)).is_none());
            record(&mut w, id(s).as_ref(), s * 10, digest(&m(s)));
        }
        let last_in = n - WINDOW as u64 + 1;
        for s in [last_in, n / 2 + 7, n] {
            let a = seen_before(&w, id(s).as_ref(), 0, &m(s)).unwrap().unwrap();
            assert_eq!((a.index, a.duplicate), (s * 10, true));
        }
        let e = seen_before(&w, id(last_in).as_ref(), 0, &m(0))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, LogStoreError::SequenceReused { index, .. } if index == last_in * 10),
            "{e}"
        );
        let e = seen_before(&w, id(last_in - 1).as_ref(), 0, &m(last_in - 1))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, LogStoreError::StaleSequence { last, .. } if last == n),
            "{e}"
        );
        assert!(
            seen_before(&w, id(n + 1).as_ref(), 0, &m(n + 1)).is_none(),
            "a new sequence"
        );
    }

    #[test]
    fn an_append_that_follows_one_not_written_is_refused_as_a_gap() {
        let mut w = Writers::new();
        let a = |s: u64| Some(("a".to_string(), s));
        // A first append following one never written: refused, whatever the table holds.
        let e = seen_before(&w, a(5).as_ref(), 4, &m(5))
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, LogStoreError::Gap { follows: 4, .. }), "{e}");
        for s in 1..=3 {
            record(&mut w, a(s).as_ref(), s, digest(&m(s)));
        }
        assert!(
            seen_before(&w, a(4).as_ref(), 3, &m(4)).is_none(),
            "3 was written"
        );
        assert!(
            seen_before(&w, a(4).as_ref(), 0, &m(4)).is_none(),
            "first of its stream"
        );
        let e = seen_before(&w, a(6).as_ref(), 5, &m(6))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                e,
                LogStoreError::Gap {
                    sequence: 6,
                    follows: 5,
                    ..
                }
            ),
            "{e}"
        );
        // A retry is answered as one, whatever it follows.
        let d = seen_before(&w, a(2).as_ref(), 9, &m(2)).unwrap().unwrap();
        assert_eq!((d.index, d.duplicate), (2, true));
        // Older than the window counts as written.
        for s in 4..=(WINDOW as u64 + 10) {
            record(&mut w, a(s).as_ref(), s, digest(&m(s)));
        }
        let n = WINDOW as u64 + 11;
        assert!(seen_before(&w, a(n).as_ref(), 1, &m(n)).is_none());
    }

    #[test]
    fn a_full_table_forgets_the_writers_released_longest_ago_and_refuses_when_none_is() {
        let mut w = Writers::new();
        let mut memo = NothingReleased::default();
        let id = |n: u64| Some((format!("w{n}"), 1));
        // 32 writers, writer n's one append at index n.
        for n in 1..=32 {
            admit(&mut w, &mut memo, id(n).as_ref(), 1, 32).unwrap();
            record(&mut w, id(n).as_ref(), n, digest(&m(n)));
        }
        // Full, nothing released: a new writer is refused and nothing is forgotten.
        let e = admit(&mut w, &mut memo, id(33).as_ref(), 1, 32).unwrap_err();
        assert!(
            matches!(e, LogStoreError::TooManyWriters { max: 32, .. }),
            "{e}"
        );
        assert_eq!(w.len(), 32);
        // A known writer is never refused.
        admit(&mut w, &mut memo, id(7).as_ref(), 1, 32).unwrap();
        // Indexes below 10 released: a new writer forgets the two released longest ago
        // (a sixteenth of 32), not the others.
        release(&mut w, 10);
        admit(&mut w, &mut memo, id(33).as_ref(), 10, 32).unwrap();
        let mut gone: Vec<u64> = (1..=32)
            .filter(|n| !w.contains_key(&format!("w{n}")))
            .collect();
        gone.sort();
        assert_eq!(gone, vec![1, 2]);
        // Writers with retained appends are never forgotten.
        for n in 33..=34 {
            admit(&mut w, &mut memo, id(n).as_ref(), 10, 32).unwrap();
            record(&mut w, id(n).as_ref(), 100 + n, digest(&m(n)));
        }
        for n in 35..=41 {
            admit(&mut w, &mut memo, id(n).as_ref(), 10, 32).unwrap();
            record(&mut w, id(n).as_ref(), 100 + n, digest(&m(n)));
        }
        assert!((10..=32).all(|n| w.contains_key(&format!("w{n}"))));
        let e = admit(&mut w, &mut memo, id(42).as_ref(), 10, 32).unwrap_err();
        assert!(matches!(e, LogStoreError::TooManyWriters { .. }), "{e}");
        // Once retention moves, the table is scanned again.
        release(&mut w, 20);
        admit(&mut w, &mut memo, id(42).as_ref(), 20, 32).unwrap();
        assert!(!w.contains_key("w10") && !w.contains_key("w11") && w.contains_key("w12"));
    }

    #[test]
    fn a_forgotten_writer_back_under_its_id_starts_a_new_window() {
        let mut w = Writers::new();
        let a = |s: u64| Some(("a".to_string(), s));
        record(&mut w, a(1000).as_ref(), 5, digest(&m(1000)));
        // Read back at a restart: its old last append, then its new life from 1.
        record(&mut w, a(1).as_ref(), 900, digest(&m(1)));
        record(&mut w, a(2).as_ref(), 901, digest(&m(2)));
        let d = seen_before(&w, a(1).as_ref(), 0, &m(1)).unwrap().unwrap();
        assert_eq!((d.index, d.duplicate), (900, true));
        assert!(seen_before(&w, a(3).as_ref(), 2, &m(3)).is_none());
    }

    #[test]
    fn a_full_window_keeps_its_capacity_and_release_frees_it() {
        let mut w = Writers::new();
        let a = |s: u64| Some(("a".to_string(), s));
        for s in 1..=(2 * WINDOW as u64) {
            record(&mut w, a(s).as_ref(), s, 0);
        }
        assert_eq!(w["a"].0.len(), WINDOW);
        assert!(w["a"].0.capacity() < 2 * WINDOW, "{}", w["a"].0.capacity());
        release(&mut w, u64::MAX);
        assert!(w["a"].0.capacity() < 8, "{}", w["a"].0.capacity());
    }

    #[test]
    fn release_keeps_only_the_last_append_of_writers_wholly_below_retention() {
        let mut w = Writers::new();
        for s in 1..=5 {
            record(&mut w, Some(&("a".to_string(), s)), s, digest(&m(s)));
            record(&mut w, Some(&("b".to_string(), s)), 100 + s, digest(&m(s)));
        }
        release(&mut w, 50);
        assert_eq!(w["a"].0.len(), 1, "a's appends are all released");
        assert_eq!(w["a"].last().map(|l| l.sequence), Some(5));
        assert_eq!(w["b"].0.len(), 5, "b's are retained");
    }
}
