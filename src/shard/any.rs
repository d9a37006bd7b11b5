//! The two built-in stores behind one type, and which one a data directory holds: the
//! journal ([`super::journal`], the default) or redb ([`super::store`], for data larger than
//! memory). A directory's existing data decides; a store that contradicts it is refused by
//! name, so an upgrade or a wrong flag never starts a shard empty beside its real data.

use std::path::Path;

use super::journal::{JOURNAL_DIR, JournalStore};
use super::store::{DB_FILE, RedbStore};
use super::{Durable, Identity, ShardStore, StoreError};
use crate::model::Value;
use crate::proto::ShardEntry;

/// Which built-in store a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreKind {
    /// Whichever the data directory holds; the journal for a new one.
    #[default]
    Auto,
    /// Commits appended to a journal, the state in memory, snapshots now and then.
    Journal,
    /// A redb B-tree file: data may be larger than memory, but each commit rewrites pages.
    Redb,
}

/// One of the built-in stores.
pub enum AnyStore {
    Journal(Box<JournalStore>),
    Redb(RedbStore),
}

/// What `dir` holds already.
fn found(dir: &Path) -> Result<Option<StoreKind>, StoreError> {
    let redb =
        crate::disk::exists(&dir.join(DB_FILE)).map_err(|e| StoreError::Backend(e.into()))?;
    match (JournalStore::is_in(dir), redb) {
        (true, true) => Err(StoreError::Backend(
            format!(
                "{} holds both a journal and a redb store ({DB_FILE}); keep the one the shard ran on",
                dir.display()
            )
            .into(),
        )),
        (true, false) => Ok(Some(StoreKind::Journal)),
        (false, true) => Ok(Some(StoreKind::Redb)),
        (false, false) => Ok(None),
    }
}

impl AnyStore {
    /// Opens (or creates) the store of `kind` in `dir`.
    pub fn open(dir: &Path, kind: StoreKind) -> Result<AnyStore, StoreError> {
        if let Some(m) = crate::disk::holds_any(dir, &crate::disk::LOG_MARKERS) {
            return Err(StoreError::Backend(
                format!(
                    "{} holds a LogStore's data ({m}), not a shard's; give the shard its own directory",
                    dir.display()
                )
                .into(),
            ));
        }
        let there = found(dir)?;
        if there.is_none() && crate::wal::holds_segments(dir) {
            // A new store is never made beside a WAL's segments: this is a shard's journal
            // (its parent is the shard's directory) or a log's, given by mistake.
            return Err(StoreError::Backend(
                format!(
                    "{} holds WAL segments but no shard store: it is a journal or a log, not a \
                     shard's directory (a shard's directory holds `{JOURNAL_DIR}`); give the \
                     shard its own directory",
                    dir.display()
                )
                .into(),
            ));
        }
        let kind = match (kind, there) {
            (StoreKind::Auto, Some(k)) => k,
            (StoreKind::Auto, None) => StoreKind::Journal,
            (asked, Some(there)) if asked != there => {
                return Err(StoreError::Backend(
                    format!(
                        "{} holds a {} store, not a {} one: run with --store {} (or auto)",
                        dir.display(),
                        name(there),
                        name(asked),
                        name(there)
                    )
                    .into(),
                ));
            }
            (asked, _) => asked,
        };
        Ok(match kind {
            StoreKind::Redb => AnyStore::Redb(RedbStore::open(dir)?),
            _ => AnyStore::Journal(Box::new(JournalStore::open(dir)?)),
        })
    }

    /// Opens the store `dir` already holds (offline `shard dump`, `shard reset-log`).
    pub fn open_existing(dir: &Path) -> Result<AnyStore, StoreError> {
        match found(dir)? {
            Some(kind) => Self::open(dir, kind),
            None => Err(StoreError::Backend(
                format!(
                    "no shard store in {} (neither a journal nor {DB_FILE})",
                    dir.display()
                )
                .into(),
            )),
        }
    }

    /// Which store this is.
    pub fn kind(&self) -> StoreKind {
        match self {
            AnyStore::Journal(_) => StoreKind::Journal,
            AnyStore::Redb(_) => StoreKind::Redb,
        }
    }

    /// With `false`, commits skip the fsync (for benchmarks; see each store).
    pub fn set_fsync(&mut self, fsync: bool) {
        match self {
            AnyStore::Journal(s) => s.set_fsync(fsync),
            AnyStore::Redb(s) => s.set_fsync(fsync),
        }
    }

    /// See [`RedbStore::reset_log`].
    pub fn reset_log(&mut self, log_id: &str, applied: u64) -> Result<(), StoreError> {
        match self {
            AnyStore::Journal(s) => s.reset_log(log_id, applied),
            AnyStore::Redb(s) => s.reset_log(log_id, applied),
        }
    }

    /// How many keys the shard holds.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        match self {
            AnyStore::Journal(s) => s.key_count(),
            AnyStore::Redb(s) => s.key_count(),
        }
    }

    fn inner(&self) -> &dyn ShardStore {
        match self {
            AnyStore::Journal(s) => s.as_ref(),
            AnyStore::Redb(s) => s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn ShardStore {
        match self {
            AnyStore::Journal(s) => s.as_mut(),
            AnyStore::Redb(s) => s,
        }
    }
}

/// The flag's spelling of a kind.
pub fn name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Auto => "auto",
        StoreKind::Journal => "journal",
        StoreKind::Redb => "redb",
    }
}

impl ShardStore for AnyStore {
    fn load(&self) -> Result<Durable, StoreError> {
        self.inner().load()
    }
    fn identity(&self) -> Result<Identity, StoreError> {
        self.inner().identity()
    }
    fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        self.inner_mut().set_identity(identity)
    }
    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.inner_mut().set_epoch(epoch)
    }
    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
        self.inner_mut().commit(entries, applied)
    }
    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError> {
        self.inner().dump(visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_journal_and_keeps_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            AnyStore::open(dir.path(), StoreKind::Auto).unwrap().kind(),
            StoreKind::Journal
        );
        assert_eq!(
            AnyStore::open_existing(dir.path()).unwrap().kind(),
            StoreKind::Journal
        );
        let err = AnyStore::open(dir.path(), StoreKind::Redb)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("holds a journal store, not a redb one")
                && err.contains("--store journal"),
            "{err}"
        );
    }

    #[test]
    fn a_redb_directory_stays_redb_under_auto_and_refuses_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        drop(RedbStore::open(dir.path()).unwrap());
        assert_eq!(
            AnyStore::open(dir.path(), StoreKind::Auto).unwrap().kind(),
            StoreKind::Redb
        );
        let err = AnyStore::open(dir.path(), StoreKind::Journal)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds a redb store"), "{err}");
        assert!(
            !JournalStore::is_in(dir.path()),
            "nothing was created beside it"
        );
    }

    #[test]
    fn a_directory_holding_both_stores_is_refused_whatever_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        drop(AnyStore::open(dir.path(), StoreKind::Journal).unwrap());
        drop(RedbStore::open(dir.path()).unwrap());
        for kind in [StoreKind::Auto, StoreKind::Journal, StoreKind::Redb] {
            let err = AnyStore::open(dir.path(), kind).err().unwrap().to_string();
            assert!(
                err.contains("holds both a journal and a redb store"),
                "{kind:?}: {err}"
            );
        }
        let err = AnyStore::open_existing(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds both"), "{err}");
    }

    #[test]
    fn an_empty_directory_has_nothing_to_dump() {
        let dir = tempfile::tempdir().unwrap();
        let err = AnyStore::open_existing(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no shard store in"), "{err}");
    }
}
