//! Delay histograms measured at a shard: the paper's LogPlayer delay (player dispatch to
//! shard receive), its apply delay (append start to shard receive) and our durable apply
//! delay (append start to the durable commit). All in microseconds, wall clock, so they are
//! only meaningful when the processes share a machine (or a well-synchronized clock).

use std::sync::Mutex;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::proto::{ShardEntry, StatsResponse};

/// Highest delay a histogram records exactly (60 s); larger values are clamped.
const MAX_MICROS: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    // Three significant digits; bounds are constants so this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// The three histograms plus counters, shared by every stream of one shard.
pub struct Stats {
    inner: Mutex<Inner>,
}

struct Inner {
    player: Histogram<u64>,
    apply: Histogram<u64>,
    durable: Histogram<u64>,
    applied: u64,
    skipped: u64,
    gaps: u64,
    epoch: u64,
    epoch_first_commit: u64,
    fenced: u64,
    stale_commits: u64,
    malformed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            inner: Mutex::new(Inner {
                player: histogram(),
                apply: histogram(),
                durable: histogram(),
                applied: 0,
                skipped: 0,
                gaps: 0,
                epoch: 0,
                epoch_first_commit: 0,
                fenced: 0,
                stale_commits: 0,
                malformed: 0,
            }),
        }
    }
}

fn rec(h: &mut Histogram<u64>, from: u64, to: u64) {
    if from > 0 {
        h.saturating_record(to.saturating_sub(from).clamp(1, MAX_MICROS));
    }
}

impl Stats {
    /// Records entries applied from a batch received at `received` and durable at `durable`.
    /// Watermarks (no mutations) are not transactions and are not measured.
    /// `applied` pairs each newly applied entry with the time its message arrived.
    pub fn record<'a>(
        &self,
        applied: impl Iterator<Item = (&'a ShardEntry, u64)>,
        durable: u64,
        skipped: usize,
    ) {
        let Ok(mut s) = self.inner.lock() else { return };
        for (e, received) in applied {
            s.applied += 1;
            if e.mutations.is_empty() {
                continue;
            }
            rec(&mut s.player, e.dispatch_micros, received);
            rec(&mut s.apply, e.append_start_micros, received);
            rec(&mut s.durable, e.append_start_micros, durable);
        }
        s.skipped += skipped as u64;
    }

    /// A commit under `epoch` that advanced the applied index became durable at `durable`.
    pub fn committed_under(&self, epoch: u64, durable: u64) {
        if let Ok(mut s) = self.inner.lock() {
            if epoch > s.epoch {
                s.epoch = epoch;
                s.epoch_first_commit = durable;
            } else if epoch < s.epoch {
                s.stale_commits += 1;
            }
        }
    }

    pub fn fenced(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.fenced += 1;
        }
    }

    pub fn gap(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.gaps += 1;
        }
    }

    /// A batch refused as malformed (see `StatsResponse.malformed_refused`).
    pub fn malformed(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.malformed += 1;
        }
    }

    /// Serializes the histograms (and clears them when `reset`).
    pub fn snapshot(&self, reset: bool) -> StatsResponse {
        let Ok(mut s) = self.inner.lock() else {
            return StatsResponse::default();
        };
        let ser = |h: &Histogram<u64>| {
            let mut out = Vec::new();
            let _ = V2Serializer::new().serialize(h, &mut out);
            out.into()
        };
        let resp = StatsResponse {
            player_delay: ser(&s.player),
            apply_delay: ser(&s.apply),
            durable_apply_delay: ser(&s.durable),
            entries_applied: s.applied,
            duplicates_skipped: s.skipped,
            gaps_refused: s.gaps,
            epoch: s.epoch,
            epoch_first_commit_micros: s.epoch_first_commit,
            fenced_refusals: s.fenced,
            stale_epoch_commits: s.stale_commits,
            malformed_refused: s.malformed,
        };
        if reset {
            s.player.reset();
            s.apply.reset();
            s.durable.reset();
        }
        resp
    }
}

/// Decodes a serialized histogram (an empty one on malformed input).
pub fn decode_histogram(bytes: &[u8]) -> Histogram<u64> {
    let mut cursor = bytes;
    Deserializer::new()
        .deserialize(&mut cursor)
        .unwrap_or_else(|_| histogram())
}

/// Adds `other` into `into` (for merging shards).
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    let _ = into.add(other);
}

/// A fresh, empty histogram with the shard's bounds.
pub fn empty() -> Histogram<u64> {
    histogram()
}
