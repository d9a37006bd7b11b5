//! The slot model, in one place: every key hashes to one of [`SLOTS`] slots
//! (`slot(key) = crc32c(key) % 16384`: CRC-32C, the Castagnoli polynomial, as in
//! iSCSI and ext4); a shard owns inclusive [`SlotRange`]s, written `LO-HI` (or `N`); and the
//! shards together must own every slot exactly once ([`check_coverage`], which names every
//! overlap and hole). The command line's shard map, the map file and the operator's check
//! of `Shard` resources all use these.
//!
//! [`SlotRange`] is also the `Shard` CRD's schema for a range, so its derive carries the
//! API server's CEL rule; the Rust checks say the same things with names and numbers.

use std::fmt;
use std::str::FromStr;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Number of hash slots.
pub const SLOTS: u16 = 16384;
/// Number of hash slots, as the CRD's integer type.
pub const SLOT_COUNT: i32 = SLOTS as i32;
/// Highest slot number.
pub const MAX_SLOT: i32 = SLOT_COUNT - 1;
/// Most slot ranges one Shard may list. The bound keeps the API server's CEL cost estimate
/// for the pairwise overlap rule (quadratic in the list length) far below its limit.
pub const MAX_SLOT_RANGES: usize = 64;

/// The slot of a key.
pub fn slot(key: &[u8]) -> u16 {
    (crc32c::crc32c(key) % u32::from(SLOTS)) as u16
}

/// A problem with the slot ranges of one Shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// No ranges at all.
    #[error("the shard lists no slot ranges; it needs at least one")]
    Empty,
    /// More ranges than [`MAX_SLOT_RANGES`].
    #[error("the shard lists {count} slot ranges, more than the {max} allowed")]
    TooMany {
        /// Ranges listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A range reaches outside `0..=16383`.
    #[error("slot range {range} is out of bounds: slots go from 0 to {MAX_SLOT}")]
    OutOfBounds {
        /// The range.
        range: SlotRange,
    },
    /// A range starts after it ends.
    #[error("slot range {range} starts after it ends")]
    Reversed {
        /// The range.
        range: SlotRange,
    },
    /// A range is listed after one that starts later.
    #[error("slot range {next} is listed after {prev}: list ranges in ascending order")]
    Unordered {
        /// The earlier entry.
        prev: SlotRange,
        /// The later entry, which starts first.
        next: SlotRange,
    },
    /// Two ranges of the same shard share slots.
    #[error("slot ranges {a} and {b} overlap on slots {from}-{to}")]
    Overlap {
        /// The earlier entry.
        a: SlotRange,
        /// The later entry.
        b: SlotRange,
        /// First shared slot.
        from: i32,
        /// Last shared slot.
        to: i32,
    },
}

/// One way a set of Shards fails to own every slot exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageIssue {
    /// There are no shards at all.
    #[error("no shards: all slots 0-{MAX_SLOT} are owned by no shard")]
    NoShards,
    /// Two entries have the same name.
    #[error("shard {shard:?} appears more than once")]
    DuplicateShard {
        /// The repeated name.
        shard: String,
    },
    /// One shard's own ranges are malformed.
    #[error("shard {shard:?}: {error}")]
    InvalidShard {
        /// The shard.
        shard: String,
        /// What is wrong with its ranges.
        error: SlotError,
    },
    /// Slots owned by two shards.
    #[error("slots {from}-{to} are owned by both shard {a:?} and shard {b:?}")]
    Overlap {
        /// First slot.
        from: i32,
        /// Last slot.
        to: i32,
        /// The shard listed first.
        a: String,
        /// The shard listed later.
        b: String,
    },
    /// Slots owned by no shard.
    #[error("slots {from}-{to} are owned by no shard")]
    Hole {
        /// First slot.
        from: i32,
        /// Last slot.
        to: i32,
    },
}

/// Most coverage issues spelled out in one error message.
pub const COVERAGE_ISSUES_SHOWN: usize = 10;

/// Every way a set of shards fails to own every slot exactly once; its message lists the
/// first [`COVERAGE_ISSUES_SHOWN`] of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage(pub Vec<CoverageIssue>);

impl std::error::Error for Coverage {}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shards do not own every slot exactly once: ")?;
        for (i, issue) in self.0.iter().take(COVERAGE_ISSUES_SHOWN).enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{issue}")?;
        }
        if self.0.len() > COVERAGE_ISSUES_SHOWN {
            write!(f, "; and {} more", self.0.len() - COVERAGE_ISSUES_SHOWN)?;
        }
        Ok(())
    }
}

/// An inclusive range of hash slots, `start` to `end`.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start <= self.end").message("start must not be after end"))]
pub struct SlotRange {
    /// First slot of the range, 0 to 16383.
    #[schemars(range(min = 0, max = 16383))]
    pub start: i32,
    /// Last slot of the range (inclusive), `start` to 16383.
    #[schemars(range(min = 0, max = 16383))]
    pub end: i32,
}

impl fmt::Display for SlotRange {
    /// `start-end`, the form `routing` uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl SlotRange {
    /// A range from `start` to `end`, inclusive (not checked).
    pub const fn new(start: i32, end: i32) -> Self {
        SlotRange { start, end }
    }

    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: i32) -> bool {
        self.start <= slot && slot <= self.end
    }

    fn check_alone(&self) -> Result<(), SlotError> {
        if self.start < 0 || self.end < 0 || self.start > MAX_SLOT || self.end > MAX_SLOT {
            return Err(SlotError::OutOfBounds { range: *self });
        }
        if self.start > self.end {
            return Err(SlotError::Reversed { range: *self });
        }
        Ok(())
    }
}

/// Checks one shard's ranges: 1 to [`MAX_SLOT_RANGES`] of them, each within `0..=16383`
/// with `start <= end`, listed in ascending order, none overlapping. Reports the first
/// problem, naming the ranges.
pub fn validate_ranges(ranges: &[SlotRange]) -> Result<(), SlotError> {
    if ranges.is_empty() {
        return Err(SlotError::Empty);
    }
    if ranges.len() > MAX_SLOT_RANGES {
        return Err(SlotError::TooMany {
            count: ranges.len(),
            max: MAX_SLOT_RANGES,
        });
    }
    for r in ranges {
        r.check_alone()?;
    }
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (from, to) = (a.start.max(b.start), a.end.min(b.end));
        if from <= to {
            return Err(SlotError::Overlap { a, b, from, to });
        }
        if b.start < a.start {
            return Err(SlotError::Unordered { prev: a, next: b });
        }
    }
    Ok(())
}

/// A range that does not parse as `LO-HI` or `N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("slot range {text:?}: {reason}")]
pub struct ParseRangeError {
    /// The text as written.
    pub text: String,
    /// Why it does not parse.
    pub reason: String,
}

impl FromStr for SlotRange {
    type Err = ParseRangeError;

    /// `LO-HI` (inclusive) or a single slot `N`; bounds are checked by [`validate_ranges`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let num = |s: &str| {
            s.trim().parse::<i32>().map_err(|e| ParseRangeError {
                text: text.to_owned(),
                reason: format!("{s:?} is not a slot number: {e}"),
            })
        };
        let (start, end) = match text.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(text)?;
                (n, n)
            }
        };
        Ok(SlotRange { start, end })
    }
}

/// A set of slots, kept as sorted, disjoint, non-touching inclusive ranges: what a shard
/// records it owns (`shard::Identity::slots`), so that a map giving it a slot whose earlier
/// entries it never received is refused. Its text form is the ranges joined by commas
/// (`0-99,200-16383`), which [`SlotSet::from_str`] reads back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotSet(Vec<SlotRange>);

impl SlotSet {
    /// The slots of `ranges`, given in any order, overlapping or touching or not. Each range
    /// must be within `0..=16383` with `start <= end`.
    pub fn from_ranges(ranges: impl IntoIterator<Item = SlotRange>) -> Result<SlotSet, SlotError> {
        let mut ranges: Vec<SlotRange> = ranges.into_iter().collect();
        for r in &ranges {
            r.check_alone()?;
        }
        ranges.sort_unstable();
        let mut merged: Vec<SlotRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end + 1 => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        Ok(SlotSet(merged))
    }

    /// The set's ranges, in slot order, none touching another.
    pub fn ranges(&self) -> &[SlotRange] {
        &self.0
    }

    /// Whether the set holds `slot`.
    pub fn contains(&self, slot: u16) -> bool {
        let slot = i32::from(slot);
        let at = self.0.partition_point(|r| r.end < slot);
        self.0.get(at).is_some_and(|r| r.start <= slot)
    }

    /// Whether the set holds no slot.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots of this set that `other` lacks.
    pub fn minus(&self, other: &SlotSet) -> SlotSet {
        let mut out = Vec::new();
        // Both sets are sorted: `first` is the first range of `other` that does not end
        // before the current range of this set (nor, then, before any later one).
        let mut first = 0;
        for r in &self.0 {
            while other.0.get(first).is_some_and(|o| o.end < r.start) {
                first += 1;
            }
            let mut start = r.start;
            for o in other.0[first..].iter().take_while(|o| o.start <= r.end) {
                if o.start > start {
                    out.push(SlotRange::new(start, o.start - 1));
                }
                start = start.max(o.end + 1);
            }
            if start <= r.end {
                out.push(SlotRange::new(start, r.end));
            }
        }
        SlotSet(out)
    }
}

impl fmt::Display for SlotSet {
    /// The ranges joined by commas (`0-99,200-16383`); `none` for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for SlotSet {
    type Err = ParseRangeError;

    /// Comma-separated `LO-HI` or `N` ranges, each within bounds, or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "none" {
            return Ok(SlotSet::default());
        }
        let ranges = text
            .split(',')
            .map(str::parse::<SlotRange>)
            .collect::<Result<Vec<_>, _>>()?;
        SlotSet::from_ranges(ranges).map_err(|e| ParseRangeError {
            text: text.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// Checks that the named shards together own every slot `0..=16383` exactly once. Reports
/// every problem found, each with the shard names and slot numbers: duplicate names,
/// malformed ranges, slots owned twice, and slots owned by no one.
pub fn check_coverage(shards: &[(String, Vec<SlotRange>)]) -> Result<(), Coverage> {
    if shards.is_empty() {
        return Err(Coverage(vec![CoverageIssue::NoShards]));
    }
    let mut issues = Vec::new();
    for (i, (name, ranges)) in shards.iter().enumerate() {
        if shards[..i].iter().any(|(other, _)| other == name) {
            issues.push(CoverageIssue::DuplicateShard {
                shard: name.clone(),
            });
        }
        if let Err(error) = validate_ranges(ranges) {
            issues.push(CoverageIssue::InvalidShard {
                shard: name.clone(),
                error,
            });
        }
    }

    // Every in-bounds span as (first slot, last slot, shard index), in slot order. Malformed
    // ranges are reported above; what part of them is in bounds still counts.
    let mut spans: Vec<(i32, i32, usize)> = shards
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ranges))| {
            ranges
                .iter()
                .map(move |r| (r.start.max(0), r.end.min(MAX_SLOT), i))
        })
        .filter(|&(lo, hi, _)| lo <= hi)
        .collect();
    spans.sort_unstable();

    // Slots shared by two different shards, as (from, to, first listed, second listed).
    let mut doubles: Vec<(i32, i32, usize, usize)> = Vec::new();
    for (k, &(_, hi, i)) in spans.iter().enumerate() {
        for &(lo2, hi2, j) in spans[k + 1..].iter().take_while(|s| s.0 <= hi) {
            if i != j {
                doubles.push((lo2, hi.min(hi2), i.min(j), i.max(j)));
            }
        }
    }
    // Join touching runs of the same pair, then report in slot order.
    doubles.sort_unstable_by_key(|&(from, to, a, b)| (a, b, from, to));
    let mut merged: Vec<(i32, i32, usize, usize)> = Vec::with_capacity(doubles.len());
    for d in doubles {
        match merged.last_mut() {
            Some(m) if m.2 == d.2 && m.3 == d.3 && m.1 + 1 >= d.0 => m.1 = m.1.max(d.1),
            _ => merged.push(d),
        }
    }
    merged.sort_unstable();
    issues.extend(
        merged
            .into_iter()
            .map(|(from, to, a, b)| CoverageIssue::Overlap {
                from,
                to,
                a: shards[a].0.clone(),
                b: shards[b].0.clone(),
            }),
    );

    // Slots below `next` are owned by someone.
    let mut next = 0;
    for &(lo, hi, _) in &spans {
        if lo > next {
            issues.push(CoverageIssue::Hole {
                from: next,
                to: lo - 1,
            });
        }
        next = next.max(hi + 1);
    }
    if next <= MAX_SLOT {
        issues.push(CoverageIssue::Hole {
            from: next,
            to: MAX_SLOT,
        });
    }

    if issues.is_empty() {
        Ok(())
    } else {
        Err(Coverage(issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i32, end: i32) -> SlotRange {
        SlotRange::new(start, end)
    }

    #[test]
    fn validate_ranges_accepts_ordered_disjoint_ranges() {
        validate_ranges(&[r(0, 16383)]).expect("one full range");
        validate_ranges(&[r(0, 0), r(1, 99), r(200, 16383)]).expect("adjacent and gapped ranges");
        validate_ranges(&(0..64).map(|i| r(i * 2, i * 2)).collect::<Vec<_>>()).expect("64 ranges");
    }

    #[test]
    fn validate_ranges_names_each_problem() {
        let msg = |slots: Vec<SlotRange>| validate_ranges(&slots).unwrap_err().to_string();
        assert!(msg(vec![]).contains("no slot ranges"));
        let m = msg((0..65).map(|i| r(i, i)).collect());
        assert!(m.contains("65 slot ranges") && m.contains("64"), "{m}");
        let m = msg(vec![r(0, 16384)]);
        assert!(
            m.contains("0-16384 is out of bounds") && m.contains("0 to 16383"),
            "{m}"
        );
        let m = msg(vec![r(-1, 5)]);
        assert!(m.contains("-1-5 is out of bounds"), "{m}");
        let m = msg(vec![r(10, 5)]);
        assert!(m.contains("10-5 starts after it ends"), "{m}");
        let m = msg(vec![r(100, 200), r(0, 50)]);
        assert!(m.contains("0-50 is listed after 100-200"), "{m}");
        let m = msg(vec![r(0, 100), r(50, 200)]);
        assert!(
            m.contains("0-100 and 50-200 overlap on slots 50-100"),
            "{m}"
        );
        let m = msg(vec![r(0, 10), r(0, 10)]);
        assert!(m.contains("overlap on slots 0-10"), "{m}");
        let m = msg(vec![r(50, 60), r(0, 100)]);
        assert!(m.contains("overlap on slots 50-60"), "{m}");
    }

    fn set(ranges: &[(i32, i32)]) -> SlotSet {
        SlotSet::from_ranges(ranges.iter().map(|&(a, b)| r(a, b))).expect("valid ranges")
    }

    #[test]
    fn a_slot_set_merges_its_ranges_and_reads_back_its_text() {
        let s = set(&[(200, 300), (0, 99), (100, 150), (250, 400), (402, 402)]);
        assert_eq!(s.ranges(), &[r(0, 150), r(200, 400), r(402, 402)]);
        assert_eq!(s.to_string(), "0-150,200-400,402-402");
        assert_eq!(s.to_string().parse::<SlotSet>(), Ok(s.clone()));
        assert_eq!("7".parse::<SlotSet>(), Ok(set(&[(7, 7)])));
        assert!("".parse::<SlotSet>().is_err());
        let e = "0-99,50-16384".parse::<SlotSet>().unwrap_err().to_string();
        assert!(e.contains("out of bounds"), "{e}");
        let e = SlotSet::from_ranges([r(9, 3)]).unwrap_err().to_string();
        assert!(e.contains("starts after it ends"), "{e}");
        assert_eq!(SlotSet::default().to_string(), "none");
        assert_eq!("none".parse::<SlotSet>(), Ok(SlotSet::default()));
        assert!(s.contains(0) && s.contains(150) && s.contains(402));
        assert!(!s.contains(151) && !s.contains(401) && !s.contains(403));
    }

    #[test]
    fn a_slot_set_minus_another_is_what_only_it_holds() {
        let ours = set(&[(0, 99), (200, 299)]);
        assert!(set(&[(10, 20), (250, 299)]).minus(&ours).is_empty());
        assert!(ours.minus(&ours).is_empty());
        assert_eq!(
            set(&[(0, 400)]).minus(&ours).ranges(),
            &[r(100, 199), r(300, 400)]
        );
        assert_eq!(
            ours.minus(&set(&[(50, 250)])).ranges(),
            &[r(0, 49), r(251, 299)]
        );
        assert_eq!(ours.minus(&SlotSet::default()), ours);
        assert_eq!(
            set(&[(0, MAX_SLOT)]).minus(&set(&[(5, 5)])).ranges(),
            &[r(0, 4), r(6, MAX_SLOT)]
        );
        // Every slot's membership agrees with a brute-force count.
        let a = set(&[(0, 10), (20, 30), (35, 35), (40, 100)]);
        let b = set(&[(5, 22), (25, 25), (30, 41), (99, 200)]);
        let left = a.minus(&b);
        for slot in 0..=210u16 {
            assert_eq!(
                left.contains(slot),
                a.contains(slot) && !b.contains(slot),
                "slot {slot}"
            );
        }
    }

    fn shards(list: &[(&str, &[(i32, i32)])]) -> Vec<(String, Vec<SlotRange>)> {
        list.iter()
            .map(|(n, rs)| (n.to_string(), rs.iter().map(|&(a, b)| r(a, b)).collect()))
            .collect()
    }

    fn coverage_issues(list: &[(&str, &[(i32, i32)])]) -> (Vec<CoverageIssue>, String) {
        match check_coverage(&shards(list)) {
            Err(e) => {
                let text = e.to_string();
                (e.0, text)
            }
            other => panic!("expected a coverage error, got {other:?}"),
        }
    }

    #[test]
    fn check_coverage_accepts_an_exact_cover() {
        check_coverage(&shards(&[("a", &[(0, 16383)])])).expect("one shard");
        check_coverage(&shards(&[
            ("s0", &[(0, 4095), (8192, 12287)]),
            ("s1", &[(4096, 8191)]),
            ("s2", &[(12288, 16383)]),
        ]))
        .expect("interleaved");
    }

    #[test]
    fn check_coverage_reports_overlaps_between_shards() {
        let (issues, text) = coverage_issues(&[("a", &[(0, 8191)]), ("b", &[(8000, 16383)])]);
        assert_eq!(
            issues,
            [CoverageIssue::Overlap {
                from: 8000,
                to: 8191,
                a: "a".into(),
                b: "b".into()
            }]
        );
        assert!(
            text.contains("slots 8000-8191 are owned by both shard \"a\" and shard \"b\""),
            "{text}"
        );
        // Overlap across two of b's ranges is reported as one run.
        let (issues, _) = coverage_issues(&[("a", &[(0, 16383)]), ("b", &[(10, 19), (20, 29)])]);
        assert_eq!(
            issues,
            [CoverageIssue::Overlap {
                from: 10,
                to: 29,
                a: "a".into(),
                b: "b".into()
            }]
        );
    }

    #[test]
    fn check_coverage_reports_each_pair_of_a_three_way_overlap() {
        let (issues, _) =
            coverage_issues(&[("a", &[(0, 16383)]), ("b", &[(0, 9)]), ("c", &[(5, 14)])]);
        let pair = |from, to, a: &str, b: &str| CoverageIssue::Overlap {
            from,
            to,
            a: a.into(),
            b: b.into(),
        };
        assert_eq!(
            issues,
            [
                pair(0, 9, "a", "b"),
                pair(5, 9, "b", "c"),
                pair(5, 14, "a", "c")
            ]
        );
    }

    /// Compares `check_coverage` with a slot-by-slot count on seeded random shard maps.
    #[test]
    fn check_coverage_agrees_with_a_slot_by_slot_count() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as i32
        };
        for _ in 0..100 {
            let list: Vec<(String, Vec<SlotRange>)> = (0..1 + next(4))
                .map(|i| {
                    let ranges = (0..1 + next(3))
                        .map(|_| {
                            let a = next(SLOT_COUNT as u64);
                            r(a, (a + next(9000)).min(MAX_SLOT))
                        })
                        .collect();
                    (format!("s{i}"), ranges)
                })
                .collect();
            let mut owners = vec![Vec::new(); SLOT_COUNT as usize];
            for (i, (_, ranges)) in list.iter().enumerate() {
                for rg in ranges {
                    for slot in rg.start..=rg.end {
                        if !owners[slot as usize].contains(&i) {
                            owners[slot as usize].push(i);
                        }
                    }
                }
            }
            let mut want_holes = Vec::new();
            let mut want_pairs = Vec::new();
            for (slot, o) in owners.iter().enumerate() {
                if o.is_empty() {
                    want_holes.push(slot as i32);
                }
                for (x, &a) in o.iter().enumerate() {
                    for &b in &o[x + 1..] {
                        want_pairs.push((
                            slot as i32,
                            list[a.min(b)].0.clone(),
                            list[a.max(b)].0.clone(),
                        ));
                    }
                }
            }
            let issues = match check_coverage(&list) {
                Ok(()) => vec![],
                Err(e) => e.0,
            };
            let mut got_holes = Vec::new();
            let mut got_pairs = Vec::new();
            for issue in issues {
                match issue {
                    CoverageIssue::Hole { from, to } => got_holes.extend(from..=to),
                    CoverageIssue::Overlap { from, to, a, b } => {
                        got_pairs.extend((from..=to).map(|s| (s, a.clone(), b.clone())))
                    }
                    CoverageIssue::InvalidShard { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            got_pairs.sort();
            want_pairs.sort();
            let before = got_pairs.len();
            got_pairs.dedup();
            assert_eq!(
                before,
                got_pairs.len(),
                "a slot is reported twice for one pair"
            );
            assert_eq!(got_holes, want_holes);
            assert_eq!(got_pairs, want_pairs);
        }
    }

    #[test]
    fn check_coverage_reports_holes() {
        let (issues, text) = coverage_issues(&[("a", &[(0, 99)]), ("b", &[(200, 16000)])]);
        assert_eq!(
            issues,
            [
                CoverageIssue::Hole { from: 100, to: 199 },
                CoverageIssue::Hole {
                    from: 16001,
                    to: 16383
                }
            ]
        );
        assert!(
            text.contains("slots 100-199 are owned by no shard"),
            "{text}"
        );
        assert!(text.contains("slots 16001-16383"), "{text}");
        let (issues, text) = coverage_issues(&[]);
        assert_eq!(issues, [CoverageIssue::NoShards]);
        assert!(text.contains("0-16383"), "{text}");
    }

    #[test]
    fn check_coverage_reports_bad_shards_and_duplicate_names() {
        let (issues, text) = coverage_issues(&[
            ("a", &[(0, 8191)]),
            ("b", &[(8192, 16384)]),
            ("a", &[(5, 4)]),
        ]);
        assert!(
            text.contains("shard \"b\": slot range 8192-16384 is out of bounds"),
            "{text}"
        );
        assert!(
            text.contains("shard \"a\" appears more than once"),
            "{text}"
        );
        assert!(
            text.contains("shard \"a\": slot range 5-4 starts after it ends"),
            "{text}"
        );
        // The in-bounds part of b still counts: nothing is missing.
        assert!(
            !issues
                .iter()
                .any(|i| matches!(i, CoverageIssue::Hole { .. })),
            "{issues:?}"
        );
    }

    #[test]
    fn check_coverage_bounds_its_message() {
        // 100 single-slot shards with a gap after each: 100 holes.
        let list: Vec<(String, Vec<SlotRange>)> = (0..100)
            .map(|i| (format!("s{i}"), vec![r(i * 2, i * 2)]))
            .collect();
        let e = check_coverage(&list).unwrap_err();
        let issues = &e.0;
        assert_eq!(issues.len(), 100);
        let text = e.to_string();
        assert!(text.contains("and 90 more"), "{text}");
        assert!(text.len() < 1000, "{}", text.len());
    }
}
