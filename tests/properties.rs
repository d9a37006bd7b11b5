//! Hostile input as properties (proptest): the WAL's recovery under arbitrary truncation,
//! damage and garbage, with and without a zero-filled tail (never a panic, never a record
//! whose checksum fails, a torn tail cut exactly), and with marks under power losses (every
//! synced record kept whatever unsynced pages were lost; damage to a synced group with a group
//! after it refused), the shard map parser and the slot
//! coverage rule against a plain oracle, and every RPC of each server fed arbitrary bytes
//! over a real socket (a clear status, and the server keeps serving).

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use logplayer::routing::ShardMap;
use logplayer::routing::slots::{SlotRange, check_coverage, validate_ranges};
use logplayer::wal::{Wal, WalConfig};
use proptest::prelude::*;

const SEGMENT_HEADER: u64 = 8;
const RECORD_HEADER: u64 = 8;
/// The mark a log with marks leaves after its records once they are synced and it is idle
/// (`wal::segment::vouch`), written over by the next group.
const TAIL_MARK: u64 = 16;

fn config(dir: &Path) -> WalConfig {
    let mut c = WalConfig::new(dir);
    c.segment_bytes = 1 << 30; // one segment: the damage is always in the last one
    c.max_record_bytes = 1 << 20;
    c.sync = false;
    c
}

/// Writes `payloads` into a fresh WAL in `dir`; returns the segment file.
fn write_wal(dir: &Path, payloads: &[Vec<u8>]) -> std::path::PathBuf {
    let (mut wal, _) = Wal::open(config(dir)).expect("a fresh WAL opens");
    if !payloads.is_empty() {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        wal.append_batch(&refs).expect("appends");
    }
    drop(wal);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files.pop().expect("a segment file")
}

/// The log's format: groups start with marks, and appends sync (the LogStore's).
fn marked(dir: &Path) -> WalConfig {
    let mut c = config(dir);
    c.marks = true;
    c.sync = true;
    c
}

/// Writes each of `groups` into a fresh WAL in `dir` (with marks) as one append, the first
/// `synced` of them synced and the rest only written (as the LogStore's pipelined writer
/// leaves them until their sync); returns the segment file and where each group ended.
fn write_groups(
    dir: &Path,
    groups: &[Vec<Vec<u8>>],
    synced: usize,
) -> (std::path::PathBuf, Vec<u64>) {
    let (mut wal, _) = Wal::open(marked(dir)).expect("a fresh WAL opens");
    let path = dir.join("00000000000000000001.wal");
    let mut ends = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let refs: Vec<&[u8]> = group.iter().map(Vec::as_slice).collect();
        let len = if i < synced {
            wal.append_batch(&refs).expect("appends");
            std::fs::metadata(&path).unwrap().len() - TAIL_MARK
        } else {
            wal.append_batch_unsynced(&refs).expect("appends");
            std::fs::metadata(&path).unwrap().len()
        };
        ends.push(len);
    }
    (path, ends)
}

/// `read` opened and holds at least `at_least` of `written`: an unaltered prefix of it.
fn an_unaltered_prefix(
    read: Result<Vec<Vec<u8>>, String>,
    at_least: usize,
    written: &[Vec<u8>],
) -> Result<(), TestCaseError> {
    prop_assert!(read.is_ok(), "{:?}", read);
    let read = read.unwrap_or_default();
    prop_assert!(read.len() >= at_least && read.len() <= written.len());
    prop_assert_eq!(&read[..], &written[..read.len()]);
    Ok(())
}

/// Groups of 1..8 payloads.
fn groups() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..8),
        1..7,
    )
}

/// Every payload the WAL in `dir` holds, in index order (or the open error).
fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    read_with(config(dir))
}

fn read_with(config: WalConfig) -> Result<Vec<Vec<u8>>, String> {
    let (wal, report) = Wal::open(config).map_err(|e| e.to_string())?;
    if report.last_index < report.first_index {
        return Ok(Vec::new());
    }
    let reader = wal.reader();
    let records = reader
        .read_range(report.first_index, report.last_index, usize::MAX)
        .map_err(|e| e.to_string())?;
    Ok(records.into_iter().map(|(_, p)| p).collect())
}

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..25)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Cutting the file anywhere (a torn write) keeps exactly the records that end at or
    /// before the cut, byte for byte, and nothing else.
    #[test]
    fn a_torn_tail_is_cut_exactly(payloads in payloads(), cut_frac in 0.0f64..=1.0) {
        let dir = tempfile::tempdir().unwrap();
        let file = write_wal(dir.path(), &payloads);
        let len = std::fs::metadata(&file).unwrap().len();
        let cut = SEGMENT_HEADER + ((len - SEGMENT_HEADER) as f64 * cut_frac) as u64;
        OpenOptions::new().write(true).open(&file).unwrap().set_len(cut).unwrap();
        let mut end = SEGMENT_HEADER;
        let kept: Vec<Vec<u8>> = payloads
            .iter()
            .take_while(|p| {
                end += RECORD_HEADER + p.len() as u64;
                end <= cut
            })
            .cloned()
            .collect();
        prop_assert_eq!(read_all(dir.path()), Ok(kept));
    }

    /// Damage anywhere (a flipped byte) is refused, or cut as a torn tail: what is read back
    /// is always an unaltered prefix of what was written, never a record whose checksum
    /// fails.
    #[test]
    fn damage_never_yields_an_altered_record(
        payloads in payloads(),
        at_frac in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = write_wal(dir.path(), &payloads);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = (bytes.len() as f64 * at_frac) as usize;
        bytes[at] ^= mask;
        std::fs::write(&file, &bytes).unwrap();
        if let Ok(read) = read_all(dir.path()) {
            prop_assert!(read.len() <= payloads.len());
            prop_assert_eq!(&read[..], &payloads[..read.len()]);
        }
    }

    /// A preallocated segment (zeros after the records, as `WalConfig::preallocate` keeps
    /// them) torn anywhere, its bytes from the tear on zeros again (the write did not reach
    /// them): it opens, with every record that ended before the tear, unaltered.
    #[test]
    fn a_write_torn_over_a_zero_filled_tail_is_cut(
        payloads in payloads(),
        cut_frac in 0.0f64..=1.0,
        zeros in 0usize..5000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = write_wal(dir.path(), &payloads);
        let mut bytes = std::fs::read(&file).unwrap();
        let len = bytes.len() as u64;
        let cut = SEGMENT_HEADER + ((len - SEGMENT_HEADER) as f64 * cut_frac) as u64;
        bytes[cut as usize..].fill(0);
        bytes.resize(bytes.len() + zeros, 0);
        std::fs::write(&file, &bytes).unwrap();
        let mut end = SEGMENT_HEADER;
        let whole = payloads
            .iter()
            .take_while(|p| {
                end += RECORD_HEADER + p.len() as u64;
                end <= cut
            })
            .count();
        an_unaltered_prefix(read_all(dir.path()), whole, &payloads)?;
    }

    /// Damage anywhere in a segment with a zero-filled tail is refused, or cut as a torn
    /// tail: never an altered record.
    #[test]
    fn damage_over_a_zero_filled_tail_never_yields_an_altered_record(
        payloads in payloads(),
        zeros in 1usize..5000,
        at_frac in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = write_wal(dir.path(), &payloads);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.resize(bytes.len() + zeros, 0);
        let at = (bytes.len() as f64 * at_frac) as usize;
        bytes[at] ^= mask;
        std::fs::write(&file, &bytes).unwrap();
        if let Ok(read) = read_all(dir.path()) {
            prop_assert!(read.len() <= payloads.len());
            prop_assert_eq!(&read[..], &payloads[..read.len()]);
        }
    }

    /// A power loss keeps what was synced and may lose any pages written after it, in any
    /// order (later ones kept, earlier ones lost): the log opens, with every synced record
    /// and then an unaltered prefix of the rest.
    #[test]
    fn a_power_loss_keeps_every_synced_record(
        groups in groups(),
        synced_frac in 0.0f64..=1.0,
        losses in prop::collection::vec((0.0f64..1.0, 1u64..600), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let synced = (groups.len() as f64 * synced_frac) as usize;
        let (path, ends) = write_groups(dir.path(), &groups, synced);
        let synced_end = if synced == 0 { SEGMENT_HEADER } else { ends[synced - 1] };
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len() as u64;
        for (at_frac, n) in losses {
            let at = synced_end + ((len - synced_end) as f64 * at_frac) as u64;
            let to = (at + n).min(len);
            bytes[at as usize..to as usize].fill(0);
        }
        std::fs::write(&path, &bytes).unwrap();
        let all: Vec<Vec<u8>> = groups.iter().flatten().cloned().collect();
        let kept: usize = groups[..synced].iter().map(Vec::len).sum();
        an_unaltered_prefix(read_with(marked(dir.path())), kept, &all)?;
    }

    /// A flipped byte in a group that was synced, with a group written after it (whose mark
    /// says so): never cut as a power loss's, always refused.
    #[test]
    fn damage_to_a_synced_group_with_a_group_after_it_is_refused(
        groups in groups(),
        synced_frac in 0.0f64..=1.0,
        at_frac in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        prop_assume!(groups.len() >= 2);
        let dir = tempfile::tempdir().unwrap();
        let synced = 1 + ((groups.len() - 1) as f64 * synced_frac) as usize;
        let (path, ends) = write_groups(dir.path(), &groups, synced.min(groups.len()));
        // Damage in a synced group that is not the last one written.
        let last_damaged = synced.min(groups.len() - 1);
        let from = SEGMENT_HEADER;
        let to = ends[last_damaged - 1];
        let at = from + ((to - from) as f64 * at_frac) as u64;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] ^= mask;
        std::fs::write(&path, &bytes).unwrap();
        let read = read_with(marked(dir.path()));
        prop_assert!(read.is_err(), "damage at byte {} read as {:?}", at, read.map(|r| r.len()));
    }

    /// Arbitrary bytes as a segment: opening never panics; whatever is accepted reads back.
    #[test]
    fn garbage_segments_never_panic(garbage in prop::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        let mut f = std::fs::File::create(&path).unwrap();
        if magic {
            // Past the magic, so the records themselves are garbage.
            let fresh = tempfile::tempdir().unwrap();
            let header = std::fs::read(write_wal(fresh.path(), &[])).unwrap();
            f.write_all(&header[..SEGMENT_HEADER as usize]).unwrap();
        }
        f.write_all(&garbage).unwrap();
        drop(f);
        let _ = read_all(dir.path());
    }
}

// ---- the shard map and the coverage rule against a plain oracle ----------------------------

/// Whether `shards`' ranges own every slot exactly once (and each shard's ranges are
/// individually valid), computed the dumb way.
fn oracle(shards: &[Vec<(i32, i32)>]) -> bool {
    if shards.is_empty() {
        return false;
    }
    let mut owners = vec![0u32; 16384];
    for ranges in shards {
        if ranges.is_empty() || ranges.len() > 64 {
            return false;
        }
        for pair in ranges.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return false; // unordered or overlapping within one shard
            }
        }
        for &(s, e) in ranges {
            if s < 0 || e > 16383 || s > e {
                return false;
            }
            for slot in s..=e {
                owners[slot as usize] += 1;
            }
        }
    }
    owners.iter().all(|&n| n == 1)
}

/// Shards as range lists: usually a valid partition of the slots, sometimes perturbed.
fn shard_ranges() -> impl Strategy<Value = Vec<Vec<(i32, i32)>>> {
    (
        prop::collection::btree_set(1i32..16384, 0..12),
        1usize..5,
        prop::option::weighted(0.5, (0usize..64, -3i32..=3, any::<bool>())),
    )
        .prop_map(|(cuts, n, perturb)| {
            let mut bounds: Vec<i32> = std::iter::once(0).chain(cuts).chain([16384]).collect();
            bounds.dedup();
            let mut ranges: Vec<(i32, i32)> = bounds.windows(2).map(|w| (w[0], w[1] - 1)).collect();
            if let Some((i, delta, start)) = perturb {
                let i = i % ranges.len();
                if start {
                    ranges[i].0 += delta;
                } else {
                    ranges[i].1 += delta;
                }
            }
            // Deal the ranges to n shards round-robin (each shard's ranges stay ordered).
            let mut shards = vec![Vec::new(); n.min(ranges.len()).max(1)];
            let count = shards.len();
            for (k, r) in ranges.into_iter().enumerate() {
                shards[k % count].push(r);
            }
            shards
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    /// The map parser and the CRD-side rules (`validate_ranges` per Shard, `check_coverage`
    /// across them) accept exactly the maps in which every slot has one owner.
    #[test]
    fn the_coverage_rule_agrees_with_the_oracle(shards in shard_ranges()) {
        let want = oracle(&shards);
        let specs: Vec<String> = shards
            .iter()
            .enumerate()
            .map(|(i, rs)| {
                let rs: Vec<String> = rs.iter().map(|(s, e)| format!("{s}-{e}")).collect();
                format!("s{i}=127.0.0.1:{}@{}", 7100 + i, rs.join(","))
            })
            .collect();
        let parsed = ShardMap::from_specs(&specs);
        prop_assert_eq!(parsed.is_ok(), want, "from_specs {:?}: {:?}", specs, parsed.err());
        let typed: Vec<(String, Vec<SlotRange>)> = shards
            .iter()
            .enumerate()
            .map(|(i, rs)| (format!("s{i}"), rs.iter().map(|&(s, e)| SlotRange::new(s, e)).collect()))
            .collect();
        let crd_side = typed.iter().all(|(_, rs)| validate_ranges(rs).is_ok())
            && check_coverage(&typed).is_ok();
        prop_assert_eq!(crd_side, want);
    }

    /// Arbitrary text as a shard map file or a `--shard` spec: an error or a map, never a
    /// panic.
    #[test]
    fn arbitrary_map_text_never_panics(text in ".{0,200}", spec in "[ -~]{0,60}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yaml");
        std::fs::write(&path, &text).unwrap();
        let _ = ShardMap::from_file(&path);
        let _ = ShardMap::from_specs(&[spec]);
    }
}

// ---- every RPC of each server, fed arbitrary bytes over a real socket ----------------------

/// The codes a refusal of bad input may carry: never INTERNAL, UNKNOWN or UNAVAILABLE (a
/// crash, a hang or a server fault).
fn clear_refusal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Ok | InvalidArgument
            | ResourceExhausted
            | FailedPrecondition
            | OutOfRange
            | AlreadyExists
            | Aborted
    )
}

/// Sends `body` as the one request message of `method` and returns the status (Ok when the
/// bytes happened to be a valid request). Streams are read to their first message or end.
async fn raw_call(
    channel: tonic::transport::Channel,
    method: &'static str,
    kind: Kind,
    body: Vec<u8>,
) -> tonic::Status {
    use tonic::codegen::http::uri::PathAndQuery;
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = PathAndQuery::from_static(method);
    let outcome = match kind {
        Kind::Unary => grpc
            .unary(tonic::Request::new(body), path, common::Raw)
            .await
            .map(drop),
        Kind::ServerStream => match grpc
            .server_streaming(tonic::Request::new(body), path, common::Raw)
            .await
        {
            Ok(r) => {
                let mut s = r.into_inner();
                tokio::time::timeout(std::time::Duration::from_secs(2), s.message())
                    .await
                    .unwrap_or(Ok(None))
                    .map(drop)
            }
            Err(e) => Err(e),
        },
        Kind::Bidi => {
            let request = tonic::Request::new(tokio_stream::once(body));
            match grpc.streaming(request, path, common::Raw).await {
                Ok(r) => {
                    let mut s = r.into_inner();
                    tokio::time::timeout(std::time::Duration::from_secs(2), s.message())
                        .await
                        .unwrap_or(Ok(None))
                        .map(drop)
                }
                Err(e) => Err(e),
            }
        }
    };
    match outcome {
        Ok(()) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Unary,
    ServerStream,
    Bidi,
}

const LOGSTORE_RPCS: [(&str, Kind); 4] = [
    ("/logplayer.v1.LogStore/Append", Kind::Unary),
    ("/logplayer.v1.LogStore/Bounds", Kind::Unary),
    ("/logplayer.v1.LogStore/Read", Kind::ServerStream),
    ("/logplayer.v1.LogStore/AppendStream", Kind::Bidi),
];
const SHARD_RPCS: [(&str, Kind); 4] = [
    ("/logplayer.v1.Shard/Deliver", Kind::Bidi),
    ("/logplayer.v1.Shard/Applied", Kind::Unary),
    ("/logplayer.v1.Shard/Stats", Kind::Unary),
    ("/logplayer.v1.Shard/Dump", Kind::ServerStream),
];

#[test]
fn every_rpc_answers_arbitrary_bytes_with_a_clear_status_and_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, c, _log) = rt.block_on(common::servers(1));
    let (log_addr, shard_addr) = (c.logstore.addr().to_owned(), c.shards[0].addr().to_owned());
    let channels = rt.block_on(async {
        (
            logplayer::grpc::connect(&log_addr, &logplayer::grpc::Expected::Log)
                .await
                .unwrap(),
            logplayer::grpc::connect(&shard_addr, &logplayer::grpc::Expected::AnyShard)
                .await
                .unwrap(),
        )
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..300),
        0usize..LOGSTORE_RPCS.len() + SHARD_RPCS.len(),
    );
    runner
        .run(&strategy, |(body, which)| {
            let (channel, (method, kind)) = if which < LOGSTORE_RPCS.len() {
                (channels.0.clone(), LOGSTORE_RPCS[which])
            } else {
                (channels.1.clone(), SHARD_RPCS[which - LOGSTORE_RPCS.len()])
            };
            let status = rt.block_on(raw_call(channel, method, kind, body.clone()));
            prop_assert!(
                clear_refusal(status.code()),
                "{method} with {body:?}: {status:?}"
            );
            Ok(())
        })
        .unwrap();
    // Both still serve.
    rt.block_on(async {
        let log = logplayer::client::Log::connect(&log_addr).await.unwrap();
        log.bounds().await.unwrap();
        let shard = logplayer::client::ShardConn::connect(&shard_addr, None)
            .await
            .unwrap();
        shard.applied().await.unwrap();
    });
}
