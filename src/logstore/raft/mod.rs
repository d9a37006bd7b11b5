//! The LogStore replicated as a Raft group (openraft 0.9, `storage-v2`): the types the group
//! agrees on, and the pieces that plug into openraft.
//!
//! - [`storage`]: the Raft log *is* our segment WAL (one record per Raft entry, written and
//!   fsynced once per replica), plus the vote and the purge point in small files.
//! - [`machine`]: the state machine. Applying a committed entry decides, deterministically
//!   and identically on every replica, each append's verdict (new, or a retry of an earlier
//!   append) and its dense client index; Raft's own entries (blank, membership) take no client
//!   index. Reads are served from applied entries only, so nothing uncommitted is ever
//!   delivered.
//! - [`network`]: replica-to-replica RPCs over tonic, each naming the log and the addressee so
//!   a replica of another log, or a misaddressed one, is refused.
//! - [`node`]: the replicated LogStore a server runs: groups waiting appends into one Raft
//!   entry (one flush per group on each replica), answers the service's calls.
//!
//! Why openraft 0.9 and not the 0.10 pre-release: 0.9 is the maintained stable line. Its core
//! waits for each log flush before going on, so appends are grouped *before* they reach
//! Raft: one `client_write` carries every append waiting at that moment, which keeps group
//! commit (one fsync per group per replica).

// openraft's `StorageError` is the error of the traits implemented here; the helpers pass it
// through as it is rather than boxing it twice.
#![allow(clippy::result_large_err)]

pub mod machine;
pub mod members;
pub mod network;
pub mod node;
pub mod storage;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The LogStore's Raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A replica's id (`--id`), stable for its life (a StatefulSet ordinal + 1).
pub type NodeId = u64;
/// What the group knows of a replica: its address.
pub type Node = openraft::BasicNode;
/// A Raft entry's id (term, leader and index).
pub type LogId = openraft::LogId<NodeId>;
/// A Raft entry as stored in the WAL.
pub type Entry = openraft::Entry<TypeConfig>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// The membership as the state machine stores it.
pub type Membership = openraft::StoredMembership<NodeId, Node>;

/// What the group agrees on: the application half of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appends waiting at the leader when it proposed, in order: an encoded
    /// [`crate::proto::AppendGroup`]. Each gets its verdict and index when applied.
    Appends(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Retention: client indexes below `below` (never past the head) are released; each
    /// replica then drops whole segments below its own copy of that point.
    Retain { below: u64 },
    /// The log's id, proposed by the first leader of a new log; the first one applied wins.
    Establish { log_id: String },
}

/// What applying a [`Command`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// One verdict per append of the group, in order.
    Appends(Vec<Verdict>),
    /// The first client index still held.
    Retained { first: u64 },
    /// The log's id (an earlier one if the log already had one).
    Established { log_id: String },
    /// Raft's own entries (blank, membership): nothing for a client.
    Internal,
}

/// The verdict on one append, decided when applied (see [`crate::logstore::dedupe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Written at this client index.
    New(u64),
    /// A retry of the append at this index: not written again.
    Duplicate(u64),
    /// The writer's last sequence with different mutations; the original is at `index`.
    Reused { index: u64 },
    /// Below the writer's last sequence `last` (at `index`).
    Stale { last: u64, index: u64 },
}

/// Raft index → WAL index: the WAL numbers from 1, openraft from 0.
pub fn wal_index(raft_index: u64) -> u64 {
    raft_index + 1
}

/// WAL index → Raft index.
pub fn raft_index(wal_index: u64) -> u64 {
    wal_index.saturating_sub(1)
}

/// Encodes a Raft entry as a WAL record (postcard: compact, serde).
pub fn encode_entry(e: &Entry) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(e)
}

/// Decodes a WAL record back into a Raft entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, postcard::Error> {
    postcard::from_bytes(bytes)
}
