//! The LogStore replicated as a Raft group (openraft 0.10): the types the group
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
//! - [`dir`]: which replica a directory belongs to; [`members`]: membership changes.
//!
//! Why the openraft 0.10 pre-release (pinned exactly) and not the 0.9 line: 0.9's core waits
//! for each log flush before it sends the entries to the followers, so every append paid the
//! leader's fsync and then a follower's, in series; 0.10 submits the write and replicates at
//! once, with the flush reported later ([`storage`] syncs on a thread of its own). 0.10 also
//! has pre-vote: a replica whose log is behind no longer bumps the term and holds up the
//! election of one that is not. README "A replicated log" has the numbers of both.

pub mod dir;
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
);

/// A replica's id (`--id`), stable for its life (a StatefulSet ordinal + 1).
pub type NodeId = u64;
/// What the group knows of a replica: its address.
pub type Node = openraft::BasicNode;
/// A Raft entry's id (term, leader and index).
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A replica's vote (term, candidate, committed).
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A Raft entry as stored in the WAL.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A Raft entry's payload.
pub type Payload = openraft::type_config::alias::PayloadOf<TypeConfig>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig, machine::Machine>;
/// The membership as the state machine stores it.
pub type Membership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot is sent and installed as: the encoded [`machine::Base`].
pub type SnapshotData = Cursor<Vec<u8>>;

/// What the group agrees on: the application half of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appends waiting at the leader when it proposed, in order: an encoded
    /// [`crate::proto::AppendGroup`]. Each gets its verdict and index when applied. `Bytes`,
    /// so that the copies handed to each follower's replication and to the state machine
    /// share one buffer, and the client entries decoded from it point into it.
    Appends(#[serde(with = "shared_bytes")] bytes::Bytes),
    /// Retention: client indexes below `below` (never past the head) are released; each
    /// replica then drops whole segments below its own copy of that point.
    Retain { below: u64 },
    /// The log's id, proposed by the first leader of a new log; the first one applied wins.
    Establish { log_id: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Appends(b) => write!(f, "appends ({} bytes)", b.len()),
            Command::Retain { below } => write!(f, "retain below {below}"),
            Command::Establish { log_id } => write!(f, "establish log {log_id}"),
        }
    }
}

/// Serde for [`bytes::Bytes`] as a byte string: the encoding `serde_bytes` gives a
/// `Vec<u8>`, so WAL records and replication messages are the same bytes as before it was
/// `Bytes`. (The `bytes` crate's own `serde` feature encodes the same; enabling it would
/// rebuild every crate above `bytes` for two functions.)
mod shared_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&b[..], s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let buf: serde_bytes::ByteBuf = serde_bytes::deserialize(d)?;
        Ok(bytes::Bytes::from(buf.into_vec()))
    }
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
    /// Follows an append of its stream that was not written (see `dedupe`): not written.
    Gap { follows: u64 },
    /// A new writer while the writer table holds `max` writers, none of them wholly
    /// released (see `dedupe::admit`): not written.
    TooManyWriters { max: u64 },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of appends is stored as postcard's byte string (variant, length, bytes), as
    /// it was when the payload was a `Vec<u8>`: logs written before still read.
    #[test]
    fn a_group_of_appends_keeps_its_encoding() {
        let cmd = Command::Appends(bytes::Bytes::from_static(b"abc"));
        let encoded = postcard::to_allocvec(&cmd).unwrap();
        assert_eq!(encoded, vec![0, 3, b'a', b'b', b'c']);
        assert_eq!(postcard::from_bytes::<Command>(&encoded).unwrap(), cmd);
    }
}
