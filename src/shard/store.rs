//! The built-in shard storage: redb, an embedded, pure-Rust, ACID key-value store.
//!
//! Why redb: one file, copy-on-write B-trees with checksummed commits (crash-safe without a
//! WAL of its own), a plain synchronous API, `Durability::Immediate` commits that fsync
//! before returning, and no C toolchain. Each delivered batch is one write transaction that
//! updates the keys and the `applied_index` together, so the index is durable exactly when
//! the data is.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Durable, Identity, ShardStore, StoreError};
use crate::model::Value;
use crate::proto::ShardEntry;
use crate::routing::SlotSet;

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const APPLIED: &str = "applied_index";
const EPOCH: &str = "highest_epoch";
/// The fingerprint of the entry at [`FINGERPRINT_AT`]: it counts only while that is the
/// applied index (an older binary, rolled back to, moves the applied index alone).
const FINGERPRINT: &str = "applied_fingerprint";
const FINGERPRINT_AT: &str = "applied_fingerprint_index";
const SHARD_ID: &str = "shard_id";
const LOG_ID: &str = "log_id";
/// The slots the shard owns, in [`SlotSet`]'s text form.
const SLOTS: &str = "slots";

/// File name of the shard database inside its data directory.
pub const DB_FILE: &str = "shard.redb";

/// A shard's redb database.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// Whether commits fsync (see [`RedbStore::set_fsync`]).
    fsync: bool,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(e.into()))
}

/// A write transaction, durable when it commits (unless `durable` is false, or the
/// `shard-skips-fsync` mutation is on).
fn begin(db: &Database, durable: bool) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    if !durable || crate::mutations::on(crate::mutations::Mutation::ShardSkipsFsync) {
        txn.set_durability(redb::Durability::None)
            .map_err(backend)?;
    }
    Ok(txn)
}

fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        txn.open_table(DATA).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.open_table(IDENTITY).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// Creates the database at `path` as one step: built under a temporary name, its tables
/// committed (synced), closed, and only then renamed into place. A first start cut short by
/// a crash or a disk error leaves no half-written database that would never open again
/// (redb refuses a file without its header), only a temporary file the next start replaces.
fn create(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Backend(Box::new(e));
    let tmp = dir.join(format!("{DB_FILE}.creating"));
    // Left by an interrupted creation, if anything; if it cannot be removed, creating over
    // it fails below with the reason.
    let _ = crate::disk::remove_file(&tmp);
    {
        let db = crate::disk::open_redb(&tmp).map_err(backend)?;
        create_tables(&db)?;
    }
    crate::disk::rename(&tmp, path).map_err(io)?;
    crate::disk::sync_dir(dir).map_err(io)
}

impl RedbStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        crate::disk::create_dir_all(dir).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let path = dir.join(DB_FILE);
        if !crate::disk::exists(&path).map_err(|e| StoreError::Backend(Box::new(e)))? {
            create(dir, &path)?;
        }
        let db = crate::disk::open_redb(&path).map_err(backend)?;
        create_tables(&db)?;
        Ok(RedbStore {
            db,
            path,
            fsync: true,
        })
    }

    /// With `false`, data commits skip the fsync (redb `Durability::None`). Still atomic
    /// and still exactly-once: a crash rolls the data and the applied index back together
    /// to the last synced commit, and the player redelivers from there (if the log still
    /// holds those entries). For benchmarks that isolate the player's cost; not for
    /// production, where an acknowledged index must not go back.
    pub fn set_fsync(&mut self, fsync: bool) {
        self.fsync = fsync;
    }

    /// Opens an existing database for reading only (offline `shard dump`).
    pub fn open_existing(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Backend(
                format!("no shard database at {}", path.display()).into(),
            ));
        }
        Self::open(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The admin's deliberate move to another log (`logplayer shard reset-log`): binds the
    /// shard to `log_id` and sets its applied index to `applied` (the index in the new log
    /// from which this shard's state continues; 0 for a new log), in one durable write. The
    /// data and the highest epoch are kept.
    pub fn reset_log(&mut self, log_id: &str, applied: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut ids = txn.open_table(IDENTITY).map_err(backend)?;
            ids.insert(LOG_ID, log_id).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(APPLIED, applied).map_err(backend)?;
            // The entry at `applied` of the new log was never delivered here.
            meta.insert(FINGERPRINT, 0).map_err(backend)?;
            meta.insert(FINGERPRINT_AT, applied).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    /// How many keys the shard holds.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        data.len().map_err(backend)
    }
}

/// The `shard-split-commit` mutation: the data in one transaction, the applied index in a
/// second, with a crash between them one time in 50 (what a one-transaction commit rules out).
fn split_commit(
    db: &Database,
    data: redb::WriteTransaction,
    applied: u64,
    fingerprint: u64,
) -> Result<(), StoreError> {
    data.commit().map_err(backend)?;
    if rand::random::<u8>() < 5 {
        tracing::warn!(
            applied,
            "mutation shard-split-commit: crashing between the data and the applied index"
        );
        std::process::abort();
    }
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(APPLIED, applied).map_err(backend)?;
        meta.insert(FINGERPRINT, fingerprint).map_err(backend)?;
        meta.insert(FINGERPRINT_AT, applied).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Value, StoreError> {
    Value::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

impl ShardStore for RedbStore {
    fn load(&self) -> Result<Durable, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let get = |k| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0))
        };
        let applied = get(APPLIED)?;
        let fingerprint = match get(FINGERPRINT_AT)? {
            at if at == applied => get(FINGERPRINT)?,
            _ => 0,
        };
        Ok(Durable {
            applied,
            highest_epoch: get(EPOCH)?,
            fingerprint,
        })
    }

    fn identity(&self) -> Result<Identity, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let ids = txn.open_table(IDENTITY).map_err(backend)?;
        let get = |k| -> Result<Option<String>, StoreError> {
            Ok(ids.get(k).map_err(backend)?.map(|g| g.value().to_owned()))
        };
        let slots = get(SLOTS)?
            .map(|text| text.parse::<SlotSet>())
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                key: SLOTS.into(),
                reason: e.to_string(),
            })?;
        Ok(Identity {
            shard_id: get(SHARD_ID)?,
            log_id: get(LOG_ID)?,
            slots,
        })
    }

    fn set_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        let txn = begin(&self.db, true)?;
        {
            let mut ids = txn.open_table(IDENTITY).map_err(backend)?;
            let slots = identity.slots.as_ref().map(ToString::to_string);
            for (key, value) in [
                (SHARD_ID, &identity.shard_id),
                (LOG_ID, &identity.log_id),
                (SLOTS, &slots),
            ] {
                match value {
                    Some(v) => ids.insert(key, v.as_str()).map(drop),
                    None => ids.remove(key).map(drop),
                }
                .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        let txn = begin(&self.db, true)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(EPOCH, epoch).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn commit(&mut self, entries: &[ShardEntry], applied: u64) -> Result<(), StoreError> {
        let fingerprint = super::fingerprint_at(entries, applied);
        let split = crate::mutations::on(crate::mutations::Mutation::ShardSplitCommit);
        let txn = begin(&self.db, self.fsync)?;
        {
            let mut data = txn.open_table(DATA).map_err(backend)?;
            for e in entries {
                for m in &e.mutations {
                    let Some(op) = &m.op else { continue };
                    let current = match data.get(&m.key[..]).map_err(backend)? {
                        Some(g) => Some(decode(&m.key, g.value())?),
                        None => None,
                    };
                    match Value::apply(current, op) {
                        Some(v) => {
                            data.insert(&m.key[..], &v.encode()[..]).map_err(backend)?;
                        }
                        None => {
                            data.remove(&m.key[..]).map_err(backend)?;
                        }
                    }
                }
            }
            if !split {
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert(APPLIED, applied).map_err(backend)?;
                meta.insert(FINGERPRINT, fingerprint).map_err(backend)?;
                meta.insert(FINGERPRINT_AT, applied).map_err(backend)?;
            }
        }
        if split {
            return split_commit(&self.db, txn, applied, fingerprint);
        }
        txn.commit().map_err(backend)
    }

    fn dump(&self, visit: &mut dyn FnMut(&[u8], &Value)) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        for row in data.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            let value = decode(k.value(), v.value())?;
            visit(k.value(), &value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Mutation, mutation::Op};

    #[test]
    fn commits_survive_reopening_with_their_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.set_epoch(3).unwrap();
            let e = ShardEntry {
                index: 7,
                prev_index: 0,
                mutations: vec![
                    Mutation {
                        key: b"c".to_vec().into(),
                        op: Some(Op::Add(2)),
                    },
                    Mutation {
                        key: b"l".to_vec().into(),
                        op: Some(Op::Append(b"x".to_vec().into())),
                    },
                ],
                fingerprint: 0xf7,
                ..Default::default()
            };
            s.commit(std::slice::from_ref(&e), 7).unwrap();
            let next = ShardEntry {
                index: 8,
                fingerprint: 0xf8,
                ..e
            };
            s.commit(&[next], 8).unwrap();
        }
        let s = RedbStore::open_existing(dir.path()).unwrap();
        assert_eq!(
            s.load().unwrap(),
            Durable {
                applied: 8,
                highest_epoch: 3,
                fingerprint: 0xf8,
            }
        );
        // An older binary (rolled back to) moves the applied index alone: the fingerprint,
        // of another entry now, no longer counts.
        let txn = s.db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(APPLIED, 9).unwrap();
        txn.commit().unwrap();
        assert_eq!(s.load().unwrap().fingerprint, 0);
        let mut rows = Vec::new();
        s.dump(&mut |k, v| rows.push((k.to_vec(), v.clone())))
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (b"c".to_vec(), Value::Counter(4)),
                (
                    b"l".to_vec(),
                    Value::List(vec![b"x".to_vec(), b"x".to_vec()])
                )
            ]
        );
    }

    #[test]
    fn the_identity_survives_reopening_and_a_cleared_part_stays_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let both = Identity {
            shard_id: Some("s3".into()),
            log_id: Some("log-a".into()),
            slots: Some("0-99,200-300".parse().unwrap()),
        };
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            assert_eq!(s.identity().unwrap(), Identity::default(), "a new store");
            s.set_identity(&both).unwrap();
        }
        let mut s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.identity().unwrap(), both);
        let shard_only = Identity {
            log_id: None,
            slots: None,
            ..both
        };
        s.set_identity(&shard_only).unwrap();
        drop(s);
        let s = RedbStore::open_existing(dir.path()).unwrap();
        assert_eq!(s.identity().unwrap(), shard_only);
    }

    #[test]
    fn opening_a_missing_database_for_dump_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = RedbStore::open_existing(&dir.path().join("nope"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("shard.redb"), "{err}");
    }
}
