//! The log a LogStore server serves: the single-node log ([`LogStore`], one process, one
//! disk) or a replica of a Raft group ([`Replica`]). The gRPC edge calls one API and does not
//! know which; only a replica can answer "not the leader" or "not yet established".

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::raft::node::{Replica, StreamOrder};
use super::{Appended, LogStore, LogStoreError};
use crate::proto::{EncodedEntry, Mutation};

/// What a LogStore server serves.
#[derive(Clone)]
pub enum ServedLog {
    Single(LogStore),
    Replica(Replica),
}

impl From<LogStore> for ServedLog {
    fn from(l: LogStore) -> Self {
        ServedLog::Single(l)
    }
}

impl From<Replica> for ServedLog {
    fn from(r: Replica) -> Self {
        ServedLog::Replica(r)
    }
}

pub type Pending = oneshot::Receiver<Result<Appended, LogStoreError>>;

/// Where an append stands on its append stream.
#[derive(Clone, Copy)]
pub struct OnStream<'a> {
    /// The stream's place in a replicated log's order (see [`StreamOrder`]).
    pub order: &'a Arc<StreamOrder>,
    /// The sequence its writer sent just before on this stream (0: none); it is written
    /// only if that one was (see `dedupe`).
    pub follows: u64,
}

impl ServedLog {
    /// Queues one append; the receiver gets its outcome once it is durable (single node) or
    /// committed and applied (replica). `stream` (none for a unary append) keeps one append
    /// stream's appends in order, with none missing, across a leader change.
    pub async fn submit(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        start_micros: u64,
        stream: Option<OnStream<'_>>,
    ) -> Result<Pending, LogStoreError> {
        match self {
            ServedLog::Single(l) => {
                let follows = stream.map_or(0, |s| s.follows);
                l.submit(mutations, writer, follows, start_micros).await
            }
            ServedLog::Replica(r) => r.submit(mutations, writer, start_micros, stream).await,
        }
    }

    /// Appends one transaction and waits for its outcome.
    pub async fn append(
        &self,
        mutations: Vec<Mutation>,
        writer: Option<(String, u64)>,
        start_micros: u64,
    ) -> Result<Appended, LogStoreError> {
        self.submit(mutations, writer, start_micros, None)
            .await?
            .await
            .map_err(|_| LogStoreError::Stopped)?
    }

    /// The log's id.
    pub fn log_id(&self) -> Result<String, LogStoreError> {
        match self {
            ServedLog::Single(l) => Ok(l.log_id().to_owned()),
            ServedLog::Replica(r) => r.log_id(),
        }
    }

    pub fn max_entry_bytes(&self) -> usize {
        match self {
            ServedLog::Single(l) => l.max_entry_bytes(),
            ServedLog::Replica(r) => r.max_entry_bytes(),
        }
    }

    /// How many writers the writer table holds.
    pub fn writers(&self) -> usize {
        match self {
            ServedLog::Single(l) => l.writers(),
            ServedLog::Replica(r) => r.machine().writers(),
        }
    }

    /// `(first, last)` indexes this server can serve.
    pub fn bounds(&self) -> (u64, u64) {
        match self {
            ServedLog::Single(l) => l.bounds(),
            ServedLog::Replica(r) => r.machine().bounds(),
        }
    }

    /// A watch of the last index readers may see.
    pub fn head(&self) -> watch::Receiver<u64> {
        match self {
            ServedLog::Single(l) => l.head(),
            ServedLog::Replica(r) => r.machine().head(),
        }
    }

    /// Entries `[from, to]`, encoded, bounded by `max_bytes` (at least one when any is
    /// available).
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<EncodedEntry>, LogStoreError> {
        match self {
            ServedLog::Single(l) => l.read(from, to, max_bytes),
            ServedLog::Replica(r) => r.machine().read(from, to, max_bytes),
        }
    }

    /// Releases entries below `below`: `(new first, segments removed here and now)`. A
    /// replica removes segments later, when its snapshot is taken.
    pub async fn retain(&self, below: u64) -> Result<(u64, usize), LogStoreError> {
        match self {
            ServedLog::Single(l) => l.retain(below).await,
            ServedLog::Replica(r) => r.retain(below).await.map(|first| (first, 0)),
        }
    }

    /// Resolves with the reason once the log can no longer be written (the server stops).
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let (single, replica) = match self {
            ServedLog::Single(l) => (Some(l.wal_failed()), None),
            ServedLog::Replica(r) => (None, Some(r.failed())),
        };
        async move {
            match (single, replica) {
                (Some(f), _) => f.await,
                (_, Some(f)) => f.await,
                _ => std::future::pending().await,
            }
        }
    }
}
