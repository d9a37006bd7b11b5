//! The one entry-size limit and everything sized from it; and the bounds and defaults of
//! the player's delivery settings, which its flags, its config and the CRD share.
//!
//! An **entry's size** is the encoded size of one append's mutations (the `mutations` field
//! of `AppendRequest`, which is also what a log `Entry` and a `ShardEntry` carry). The
//! LogStore refuses an append above `--max-entry-bytes` with `RESOURCE_EXHAUSTED`; the
//! LogStore, the player and the shards take the same flag, and derive their gRPC message
//! limits and batch sizes from it here, so that every entry the log accepted can be read
//! and delivered: one entry of exactly the limit travels alone in a message of at most
//! [`message_limit`] bytes, and batches of smaller entries never grow past that either.
//!
//! The parts check each other instead of trusting the configuration: `Bounds` reports the
//! log's limit, the player refuses to run with a smaller one, and a shard refuses a `Hello`
//! announcing a larger limit than its own (`entry-limit`).

use prost::Message;

use crate::proto::Mutation;

/// Default `--max-entry-bytes`: 4 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;
/// Smallest accepted `--max-entry-bytes`.
pub const MIN_MAX_ENTRY_BYTES: usize = 1024;
/// Largest accepted `--max-entry-bytes` (a WAL record's length is a u32, and a gRPC
/// message above 1 GiB is not something any of our peers should have to buffer).
pub const MAX_MAX_ENTRY_BYTES: usize = 1024 * 1024 * 1024;
/// Room in one gRPC message beyond the entries' mutations: per-entry fields (index,
/// previous index, timestamps, fingerprint), the log id, and framing. Generous on purpose: a batch of
/// many small entries has a few dozen bytes of framing per entry, and batches are cut at
/// a byte budget below the limit (see [`batch_budget`]).
pub const ENVELOPE_BYTES: usize = 256 * 1024;

/// The size of an entry: the encoded size of its mutations as one message field.
pub fn entry_bytes(mutations: &[Mutation]) -> usize {
    mutations
        .iter()
        .map(|m| {
            let len = m.encoded_len();
            1 + prost::encoding::encoded_len_varint(len as u64) + len
        })
        .sum()
}

/// The defaults of the delivery settings: the player's flags, `PlayerConfig::new` and the
/// CRD's `delivery.*` take them from here. Batches in flight per shard (`--window`).
pub const DEFAULT_WINDOW: usize = 64;
/// Bytes in flight per shard (`--window-bytes`): 16 MiB.
pub const DEFAULT_WINDOW_BYTES: usize = 16 << 20;
/// Entries per batch (`--batch-entries`).
pub const DEFAULT_BATCH_ENTRIES: usize = 512;
/// Bytes per batch (`--batch-bytes`): 1 MiB.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;
/// Bytes a shard's queue holds (`--queue-bytes`): 8 MiB.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

/// The most batches in flight per shard (`--window`, the CRD's `delivery.window`).
pub const MAX_WINDOW: usize = 1024;
/// The most bytes in flight per shard (`--window-bytes`, `delivery.windowBytes`): 1 GiB.
pub const MAX_WINDOW_BYTES: usize = 1 << 30;
/// The most bytes in a batch (`--batch-bytes`, `delivery.batchBytes`): 8 MiB.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// The least and the most bytes a shard's queue holds (`--queue-bytes`,
/// `delivery.queueBytes`): 64 KiB to 1 GiB.
pub const MIN_QUEUE_BYTES: usize = 64 << 10;
/// See [`MIN_QUEUE_BYTES`].
pub const MAX_QUEUE_BYTES: usize = 1 << 30;

/// How fast an entry reaches a log replica's follower here at best (measured on a 2-core
/// VM, three replicas on one disk: 48 MB entries were replicated without an election, 64 MB
/// ones moved the leadership). A log replica warns at start when an entry at its limit
/// takes longer than its followers' shortest election timeout ([`heartbeat_for`]).
pub const ENTRY_BYTES_PER_SEC: u64 = 256 * 1024 * 1024;
/// A log replica's default `--heartbeat`.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(50);
/// A log replica's shortest election timeout, in heartbeats.
pub const ELECTION_MIN_HEARTBEATS: u32 = 3;

/// How long an entry of `bytes` takes to reach a follower at best ([`ENTRY_BYTES_PER_SEC`]).
pub fn carry_time(bytes: usize) -> std::time::Duration {
    std::time::Duration::from_millis(bytes as u64 * 1000 / ENTRY_BYTES_PER_SEC)
}

/// The shortest heartbeat with which an entry of `max_entry_bytes` reaches the followers
/// within their shortest election timeout (so that the replica does not warn at start),
/// and never below [`DEFAULT_HEARTBEAT`]: about 38 MiB at the default, 84 ms at 64 MiB,
/// 331 ms at the most a log replica carries. The operator runs its log replicas with it;
/// a longer heartbeat delays the election after a crash as much (a follower stands 9-12
/// heartbeats after the last it heard).
pub fn heartbeat_for(max_entry_bytes: usize) -> std::time::Duration {
    let carry = u64::try_from(carry_time(max_entry_bytes).as_millis()).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(carry.div_ceil(u64::from(ELECTION_MIN_HEARTBEATS)))
        .max(DEFAULT_HEARTBEAT)
}

/// The largest gRPC message a LogStore, player or shard sends or accepts with this limit.
pub fn message_limit(max_entry_bytes: usize) -> usize {
    max_entry_bytes.saturating_add(ENVELOPE_BYTES)
}

/// The most entry bytes to put in one batch or read response when asked for `wanted`
/// (0 = `default`): never above the entry limit, so a batch fits [`message_limit`].
pub fn batch_budget(wanted: usize, default: usize, max_entry_bytes: usize) -> usize {
    let wanted = if wanted == 0 { default } else { wanted };
    wanted.clamp(1, max_entry_bytes)
}

/// Checks a `--max-entry-bytes` value, naming the bounds.
pub fn validate(max_entry_bytes: usize) -> Result<(), String> {
    if (MIN_MAX_ENTRY_BYTES..=MAX_MAX_ENTRY_BYTES).contains(&max_entry_bytes) {
        Ok(())
    } else {
        Err(format!(
            "--max-entry-bytes {max_entry_bytes} is outside {MIN_MAX_ENTRY_BYTES}..={MAX_MAX_ENTRY_BYTES}"
        ))
    }
}

/// Parses a `--max-entry-bytes` flag value.
pub fn parse_flag(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    validate(n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AppendRequest, Entry, ShardEntry, mutation::Op};

    fn append(key: &str, bytes: usize) -> Mutation {
        Mutation {
            key: key.as_bytes().to_vec().into(),
            op: Some(Op::Append(vec![b'x'; bytes].into())),
        }
    }

    #[test]
    fn an_entry_is_measured_as_its_mutations_field_in_every_message() {
        let m = vec![append("a", 10), append("b", 100_000)];
        let n = entry_bytes(&m);
        let req = AppendRequest {
            mutations: m.clone(),
            ..Default::default()
        };
        assert_eq!(req.encoded_len(), n);
        let entry = Entry {
            index: u64::MAX,
            mutations: m.clone(),
            append_start_micros: u64::MAX,
        };
        assert!(entry.encoded_len() <= n + 32);
        let part = ShardEntry {
            index: u64::MAX,
            prev_index: u64::MAX,
            mutations: m,
            append_start_micros: u64::MAX,
            dispatch_micros: u64::MAX,
            fingerprint: u64::MAX,
        };
        assert!(part.encoded_len() <= n + 64);
    }

    #[test]
    fn batches_never_exceed_the_entry_limit() {
        assert_eq!(batch_budget(0, 1 << 20, 4 << 20), 1 << 20);
        assert_eq!(batch_budget(8 << 20, 1 << 20, 4 << 20), 4 << 20);
        assert_eq!(batch_budget(0, 1 << 20, 4096), 4096);
        assert!(validate(DEFAULT_MAX_ENTRY_BYTES).is_ok());
        assert!(validate(10).unwrap_err().contains("--max-entry-bytes 10"));
        // Both ends: a limit above the largest would make gRPC messages past what every
        // layer is built for; each bound is itself allowed.
        assert!(validate(MIN_MAX_ENTRY_BYTES).is_ok() && validate(MAX_MAX_ENTRY_BYTES).is_ok());
        assert!(validate(MIN_MAX_ENTRY_BYTES - 1).is_err());
        assert!(validate(MAX_MAX_ENTRY_BYTES + 1).is_err());
        assert!(parse_flag(&(MAX_MAX_ENTRY_BYTES + 1).to_string()).is_err());
    }
}
