//! Promises through a power loss, on turmoil's simulated disk (the `sim-disk` feature, as CI
//! builds it), where a crash loses every write not yet synced. SIGKILL cannot show these (the
//! kernel keeps a killed process's writes), so the real-process fault tests would stay green
//! with the syncs gone:
//! - a shard keeps what it acknowledged (its applied index, the data with it) and the highest
//!   epoch it welcomed: its store, behind the real protocol rules (`ShardCore`), is crashed as
//!   a host whose power went out, and reopened;
//! - a log replica keeps its vote and every entry it reported flushed to openraft (its
//!   storage, syncing inline as under the simulation).
//!
//! ```sh
//! cargo test --release --features mutations,sim-disk --test power_loss
//! ```
//!
//! With the `mutations` feature, the `..._skipping_fsync_forgets_...` tests turn the syncs off
//! (`shard-skips-fsync`, `log-skips-fsync`) and show the tests above failing.
#![cfg(feature = "sim-disk")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logplayer::proto::{Mutation, ShardEntry, mutation::Op};
use logplayer::shard::journal::JournalStore;
use logplayer::shard::store::RedbStore;
use logplayer::shard::{HelloInfo, ShardCore, ShardError, ShardSelf, ShardStore};

type HostResult = Result<(), Box<dyn std::error::Error>>;

const LOG_ID: &str = "log-power-loss";

/// The simulated disk's power switch is one per process: one simulation at a time.
static POWER: Mutex<()> = Mutex::new(());
const EPOCH: u64 = 5;
const ENTRIES: u64 = 10;
/// How many power losses each test goes through, one per seed of the simulation's random
/// number generator. At a crash the simulated disk keeps a random number of blocks of each
/// write not yet synced (a torn write, possibly all of it), so one crash of a store that
/// skips its syncs keeps everything now and then: about one time in 40 for the shard's
/// journal, enough for a mutation test to pass by luck. Fixed seeds make each test's result
/// the same in every run, and over all of them a store that skips its syncs is caught.
const SEEDS: u64 = 16;

fn hello(epoch: u64) -> HelloInfo {
    HelloInfo {
        epoch,
        log_id: LOG_ID.into(),
        shard_id: "s0".into(),
        max_entry_bytes: logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
        slots: vec![logplayer::routing::SlotRange::new(0, 16383)],
    }
}

fn entry(index: u64) -> ShardEntry {
    ShardEntry {
        index,
        prev_index: index - 1,
        mutations: vec![Mutation {
            key: b"c-000000".to_vec().into(),
            op: Some(Op::Add(1)),
        }],
        ..Default::default()
    }
}

/// What the reopened shard says after the power loss.
#[derive(Debug, Default)]
struct After {
    applied: u64,
    highest_epoch: u64,
    log_id: Option<String>,
    /// The counter every acknowledged entry added 1 to.
    counter: Option<String>,
    /// What a Hello of the epoch before got.
    stale_hello: Option<String>,
    /// Why the store did not open again, if it did not.
    reopen_error: Option<String>,
}

/// The shard's software on its host: before the crash, welcome epoch [`EPOCH`] and apply
/// [`ENTRIES`] entries (each acknowledged when `apply` returns), then wait to lose power;
/// after it, reopen and report.
async fn shard<S: ShardStore>(
    open: fn(&std::path::Path) -> Result<S, logplayer::shard::StoreError>,
    dir: std::path::PathBuf,
    acknowledged: Arc<AtomicBool>,
    after: Arc<Mutex<Option<After>>>,
) -> HostResult {
    let me = ShardSelf {
        id: "s0".into(),
        addr: "s0:7001".into(),
        max_entry_bytes: logplayer::limits::DEFAULT_MAX_ENTRY_BYTES as u64,
    };
    if !acknowledged.load(Ordering::SeqCst) {
        let mut core = ShardCore::open(open(&dir)?, me.clone())?;
        core.hello(&hello(EPOCH))?;
        for i in 1..=ENTRIES {
            core.apply(EPOCH, &[entry(i)])?;
        }
        acknowledged.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    let reopened = open(&dir)
        .map_err(ShardError::from)
        .and_then(|store| ShardCore::open(store, me));
    let mut core = match reopened {
        Ok(core) => core,
        Err(e) => {
            let reopen_error = Some(e.to_string());
            *after.lock().unwrap_or_else(|p| p.into_inner()) = Some(After {
                reopen_error,
                ..After::default()
            });
            return Ok(());
        }
    };
    let durable = core.durable();
    let mut counter = None;
    core.store().dump(&mut |k, v| {
        if k == b"c-000000" {
            counter = Some(format!("{v:?}"));
        }
    })?;
    let stale_hello = match core.hello(&hello(EPOCH - 1)) {
        Ok(d) => Some(format!("welcomed ({d:?})")),
        Err(ShardError::Fenced { .. }) => None,
        Err(e) => Some(format!("refused otherwise: {e}")),
    };
    *after.lock().unwrap_or_else(|p| p.into_inner()) = Some(After {
        applied: durable.applied,
        highest_epoch: durable.highest_epoch,
        log_id: core.identity().log_id.clone(),
        counter,
        stale_hello,
        reopen_error: None,
    });
    Ok(())
}

/// Runs `software` on a simulated host with a data directory, with the simulation's random
/// numbers from `seed`; once it has set its `acknowledged` flag, cuts the host's power,
/// restarts it, and returns what the second run put in `after`.
fn through_power_loss<A, F, Fut>(seed: u64, software: F) -> A
where
    A: Default + 'static,
    F: Fn(std::path::PathBuf, Arc<AtomicBool>, Arc<Mutex<Option<A>>>) -> Fut + 'static,
    Fut: std::future::Future<Output = HostResult> + 'static,
{
    let _one = POWER.lock().unwrap_or_else(|p| p.into_inner());
    logplayer::disk::power_cut(false);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut builder = turmoil::Builder::new();
    builder
        .simulation_duration(Duration::from_secs(60))
        .rng_seed(seed);
    builder.fs().block_size(512);
    let mut sim = builder.build();
    let acknowledged = Arc::new(AtomicBool::new(false));
    let after = Arc::new(Mutex::new(None));
    let (a, r, path) = (acknowledged.clone(), after.clone(), dir.path().join("data"));
    sim.host("host", move || software(path.clone(), a.clone(), r.clone()));
    while !acknowledged.load(Ordering::SeqCst) {
        sim.step().expect("the host runs");
    }
    logplayer::disk::power_cut(true);
    sim.crash("host");
    logplayer::disk::power_cut(false);
    sim.bounce("host");
    while after.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
        sim.step().expect("the host restarts");
    }
    // The disk exists only inside the simulation: no teardown may reach for it after.
    logplayer::disk::power_cut(true);
    drop(sim);
    let got = after.lock().unwrap_or_else(|p| p.into_inner()).take();
    got.unwrap_or_default()
}

/// The shard through a power loss ([`through_power_loss`]) with each of the [`SEEDS`],
/// and what it said after each.
fn through_power_losses<S: ShardStore>(
    open: fn(&std::path::Path) -> Result<S, logplayer::shard::StoreError>,
) -> Vec<(u64, After)> {
    (0..SEEDS)
        .map(|seed| {
            let after = through_power_loss(seed, move |dir, a, r| shard(open, dir, a, r));
            (seed, after)
        })
        .collect()
}

fn keeps_its_promises(afters: &[(u64, After)]) {
    for (seed, after) in afters {
        keeps_its_promises_at(*seed, after);
    }
}

fn keeps_its_promises_at(seed: u64, after: &After) {
    if let Some(e) = &after.reopen_error {
        panic!(
            "the shard forgot everything: its store does not open after the power loss \
             (seed {seed}): {e}"
        );
    }
    assert_eq!(
        (after.applied, after.highest_epoch, after.log_id.as_deref()),
        (ENTRIES, EPOCH, Some(LOG_ID)),
        "the shard forgot what it acknowledged or the epoch it welcomed (seed {seed}): {after:?}"
    );
    assert_eq!(
        after.stale_hello, None,
        "a stale sender got in (seed {seed}): {after:?}"
    );
    assert!(
        after
            .counter
            .as_deref()
            .is_some_and(|c| c.contains(&ENTRIES.to_string())),
        "the acknowledged data is not all there (seed {seed}): {after:?}"
    );
}

#[test]
fn the_journal_keeps_what_it_acknowledged_and_its_epoch_through_a_power_loss() {
    keeps_its_promises(&through_power_losses(JournalStore::open));
}

#[test]
fn redb_keeps_what_it_acknowledged_and_its_epoch_through_a_power_loss() {
    keeps_its_promises(&through_power_losses(RedbStore::open));
}

/// With the shard's syncs off, the tests above fail: a power loss takes back an applied
/// index the player was told, and the epoch that fenced the last stale leader.
#[cfg(feature = "mutations")]
#[test]
fn a_shard_skipping_fsync_forgets_through_a_power_loss() {
    forgets_with(
        "shard-skips-fsync",
        &[
            "the_journal_keeps_what_it_acknowledged_and_its_epoch_through_a_power_loss",
            "redb_keeps_what_it_acknowledged_and_its_epoch_through_a_power_loss",
        ],
        "the shard forgot",
    );
}

/// With the log's syncs off (`log-skips-fsync`), the replica's test fails.
#[cfg(feature = "mutations")]
#[test]
fn a_log_replica_skipping_fsync_forgets_through_a_power_loss() {
    forgets_with(
        "log-skips-fsync",
        &[
            "a_log_replica_keeps_its_vote_and_what_it_flushed_through_a_power_loss",
            "a_log_replica_keeps_its_vote_through_a_power_loss",
        ],
        "the log replica forgot",
    );
}

/// Runs each of `tests` in a child with `mutation` on, and requires it to fail saying `why`
/// (in such a child, does nothing).
#[cfg(feature = "mutations")]
fn forgets_with(mutation: &str, tests: &[&str], why: &str) {
    if std::env::var_os(logplayer::mutations::ENV).is_some() {
        return; // a child: only the test it was started for runs
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    for test in tests {
        let out = std::process::Command::new(&exe)
            .args(["--exact", test, "--nocapture"])
            .env(logplayer::mutations::ENV, mutation)
            .output()
            .expect("the test binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.contains(why),
            "{test} passed with {mutation} on:\n{text}"
        );
    }
}

/// What a reopened log replica's storage says after the power loss.
#[derive(Debug, Default)]
struct ReplicaAfter {
    vote: Option<String>,
    last_index: Option<u64>,
    reopen_error: Option<String>,
}

const VOTE_TERM: u64 = 3;
const VOTED_FOR: u64 = 2;
const RAFT_ENTRIES: u64 = 10;

fn raft_entry(index: u64) -> logplayer::logstore::raft::Entry {
    logplayer::logstore::raft::Entry {
        log_id: openraft::LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: VOTE_TERM,
                node_id: VOTED_FOR,
            },
            index,
        ),
        payload: openraft::EntryPayload::Normal(logplayer::logstore::raft::Command::Retain {
            below: index,
        }),
    }
}

/// A log replica's storage on its host: before the crash, save a vote and append `entries`
/// entries, each acknowledged once openraft is told they are flushed; after
/// it, reopen and report.
async fn replica_log(
    entries: u64,
    dir: std::path::PathBuf,
    acknowledged: Arc<AtomicBool>,
    after: Arc<Mutex<Option<ReplicaAfter>>>,
) -> HostResult {
    use logplayer::logstore::raft::TypeConfig;
    use logplayer::logstore::raft::storage::LogStorage;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::type_config::TypeConfigExt;
    use openraft::{RaftLogReader, Vote};
    logplayer::blocking::run_inline();
    let config = logplayer::wal::WalConfig::new(dir.clone());
    if !acknowledged.load(Ordering::SeqCst) {
        let mut log = LogStorage::open(config.clone())?;
        log.save_vote(&Vote::new(VOTE_TERM, VOTED_FOR)).await?;
        for i in 0..entries {
            let (tx, rx) = TypeConfig::oneshot();
            log.append(vec![raft_entry(i)], IOFlushed::signal(tx))
                .await?;
            rx.await??;
        }
        acknowledged.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    let report = match LogStorage::open(config) {
        Ok(mut log) => ReplicaAfter {
            vote: log.read_vote().await?.map(|v| format!("{v}")),
            last_index: log.get_log_state().await?.last_log_id.map(|l| l.index),
            reopen_error: None,
        },
        Err(e) => ReplicaAfter {
            reopen_error: Some(e.to_string()),
            ..ReplicaAfter::default()
        },
    };
    *after.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    Ok(())
}

/// A log replica's storage with `entries` appended, through a power loss with each of the
/// [`SEEDS`], and what it said after each.
fn replica_through_power_losses(entries: u64) -> Vec<(u64, ReplicaAfter)> {
    (0..SEEDS)
        .map(|seed| {
            let after = through_power_loss(seed, move |dir, a, r| replica_log(entries, dir, a, r));
            (seed, after)
        })
        .collect()
}

fn keeps(afters: &[(u64, ReplicaAfter)], last_index: Option<u64>) {
    let want_vote = format!(
        "{}",
        logplayer::logstore::raft::Vote::new(VOTE_TERM, VOTED_FOR)
    );
    for (seed, got) in afters {
        assert!(
            got.reopen_error.is_none()
                && got.vote.as_deref() == Some(want_vote.as_str())
                && got.last_index == last_index,
            "the log replica forgot its vote or what it flushed (seed {seed}): {got:?} (want \
             vote {want_vote}, last index {last_index:?})"
        );
    }
}

/// A log replica keeps its vote and every entry it reported flushed through a power loss:
/// one that forgot entries it acknowledged could let a leader without them be elected.
#[test]
fn a_log_replica_keeps_its_vote_and_what_it_flushed_through_a_power_loss() {
    keeps(
        &replica_through_power_losses(RAFT_ENTRIES),
        Some(RAFT_ENTRIES - 1),
    );
}

/// The vote alone (its own file): one that forgot it could vote twice in a term.
#[test]
fn a_log_replica_keeps_its_vote_through_a_power_loss() {
    keeps(&replica_through_power_losses(0), None);
}
