//! Safety checks deliberately broken, to show which test notices: each switch disables or
//! damages one rule the exactly-once guarantee rests on. They exist only in builds with the
//! cargo feature `mutations` (never in a release: without it [`on`] is a constant `false`
//! and the compiler removes every use), and one is turned on per process by the environment
//! variable `LOGPLAYER_MUTATION=<name>`, so a test can run real processes with a switch on
//! (`tests/mutations.rs`).

/// One broken rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The shard accepts any epoch (no fencing).
    ShardIgnoresEpochs,
    /// The shard applies an entry whose previous index it has not applied (a gap).
    ShardAcceptsGaps,
    /// The shard applies again an entry at or below its applied index.
    ShardReapplies,
    /// The shard commits the data and the applied index in two transactions, and may crash
    /// between them.
    ShardSplitCommit,
    /// The player's queue accepts catch-up pushes of an expired term (and a recovery of an
    /// expired term goes on retrying its reads, as it did before it stopped on one).
    QueueIgnoresTerms,
    /// Retention ignores one shard's cursor.
    RetentionIgnoresCursor,
    /// The WAL acknowledges appends without syncing them, and a log replica saves its vote
    /// without syncing it (only a power loss shows it: the simulated disk of `tests/sim.rs`
    /// and `tests/power_loss.rs`).
    LogSkipsFsync,
    /// A log replica takes replication messages from a replica of another log.
    ReplicaIgnoresLogId,
    /// A log replica takes replication messages from two processes that speak as one
    /// replica id.
    ReplicaIgnoresIncarnations,
    /// The LogStore appends an append that names another log (`AppendRequest.log_id`).
    LogIgnoresAppendLogId,
    /// The LogStore writes a retried append again: a `(writer_id, sequence)` it has written
    /// is taken as new (the writer table's retry verdict is skipped).
    LogForgetsRetries,
    /// The shard store acknowledges commits, epochs and its identity without syncing them
    /// (only a power loss shows it: the simulated disk of `tests/power_loss.rs`).
    ShardSkipsFsync,
    /// The shard takes a Hello that gives it slots it does not own after it has applied
    /// entries (it never received their earlier entries).
    ShardIgnoresSlots,
}

impl Mutation {
    pub const ALL: [Mutation; 13] = [
        Mutation::ShardIgnoresEpochs,
        Mutation::ShardAcceptsGaps,
        Mutation::ShardReapplies,
        Mutation::ShardSplitCommit,
        Mutation::QueueIgnoresTerms,
        Mutation::RetentionIgnoresCursor,
        Mutation::LogSkipsFsync,
        Mutation::ReplicaIgnoresLogId,
        Mutation::ReplicaIgnoresIncarnations,
        Mutation::LogIgnoresAppendLogId,
        Mutation::LogForgetsRetries,
        Mutation::ShardSkipsFsync,
        Mutation::ShardIgnoresSlots,
    ];

    /// The value of `LOGPLAYER_MUTATION` that turns it on.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::ShardIgnoresEpochs => "shard-ignores-epochs",
            Mutation::ShardAcceptsGaps => "shard-accepts-gaps",
            Mutation::ShardReapplies => "shard-reapplies",
            Mutation::ShardSplitCommit => "shard-split-commit",
            Mutation::QueueIgnoresTerms => "queue-ignores-terms",
            Mutation::RetentionIgnoresCursor => "retention-ignores-cursor",
            Mutation::LogSkipsFsync => "log-skips-fsync",
            Mutation::ReplicaIgnoresLogId => "replica-ignores-log-id",
            Mutation::ReplicaIgnoresIncarnations => "replica-ignores-incarnations",
            Mutation::LogIgnoresAppendLogId => "log-ignores-append-log-id",
            Mutation::LogForgetsRetries => "log-forgets-retries",
            Mutation::ShardSkipsFsync => "shard-skips-fsync",
            Mutation::ShardIgnoresSlots => "shard-ignores-slots",
        }
    }
}

/// The environment variable naming the switch that is on.
pub const ENV: &str = "LOGPLAYER_MUTATION";

/// Whether `m` is on in this process.
#[cfg(feature = "mutations")]
pub fn on(m: Mutation) -> bool {
    static ACTIVE: std::sync::OnceLock<Option<Mutation>> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let name = std::env::var(ENV).ok()?;
        let found = Mutation::ALL.into_iter().find(|m| m.name() == name);
        match found {
            Some(m) => tracing::warn!(
                mutation = m.name(),
                "a safety check is deliberately broken in this process"
            ),
            None => tracing::error!(%name, "unknown {ENV}; no mutation is on"),
        }
        found
    }) == Some(m)
}

/// Whether `m` is on in this process: never, without the `mutations` feature.
#[cfg(not(feature = "mutations"))]
pub const fn on(_m: Mutation) -> bool {
    false
}
