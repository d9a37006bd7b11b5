//! The retried-append rule, in one place for the single-node writer and the replicated state
//! machine: what the writer table remembers of each writer's last append, and the verdict on
//! an append whose `(writer_id, sequence)` was seen before.

use std::collections::HashMap;

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

/// The writer table: each writer's last append.
pub type Writers = HashMap<String, LastAppend>;

/// A digest of an append's mutations: FNV-1a over their encoding. It only has to tell a
/// retry from a mistake (a different transaction under a reused sequence), not resist an
/// adversary.
pub fn digest(mutations: &[Mutation]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for m in mutations {
        h.write(&m.encode_to_vec());
    }
    h.finish()
}

/// The answer for an append whose `(writer, sequence)` was seen before: the original index
/// for a retry of the last sequence, a refusal for an older one or for the last sequence
/// with different mutations; `None` for a new sequence (or no writer id), which is written.
pub fn seen_before(
    writers: &Writers,
    writer: Option<&(String, u64)>,
    mutations: &[Mutation],
) -> Option<Result<Appended, LogStoreError>> {
    let (id, seq) = writer?;
    let last = *writers.get(id)?;
    if *seq == last.sequence {
        if digest(mutations) != last.digest {
            return Some(Err(LogStoreError::SequenceReused {
                writer: id.clone(),
                sequence: *seq,
                index: last.index,
            }));
        }
        return Some(Ok(Appended {
            index: last.index,
            duplicate: true,
        }));
    }
    (*seq < last.sequence).then(|| {
        Err(LogStoreError::StaleSequence {
            writer: id.clone(),
            sequence: *seq,
            last: last.sequence,
            index: last.index,
        })
    })
}

/// Records a new append of `writer` at `index` (no-op without a writer id).
pub fn record(writers: &mut Writers, writer: Option<&(String, u64)>, index: u64, digest: u64) {
    if let Some((id, sequence)) = writer
        && !id.is_empty()
    {
        writers.insert(
            id.clone(),
            LastAppend {
                sequence: *sequence,
                index,
                digest,
            },
        );
    }
}
