//! What the single-node LogStore's writer table remembers of appends whose records retention
//! removed: kept in a file (`writers-released`), written durably before the segments go.
//!
//! The writer table is otherwise rebuilt at open from the WAL's records, and a record
//! retention removed cannot be read back: without this file, a restart forgot every append
//! below the retention point, and a writer's retry of one was written a second time (a
//! retried transaction applied twice), a stale sequence was taken as new, and a retry of an
//! append partly below retention was refused as stale instead of answered as a duplicate.
//! The replicated log keeps its whole table in its state machine's saved base instead.
//!
//! The file holds, for each writer, its remembered appends below the retention point it was
//! written for (`first`); at open, those below the WAL's first index are recorded before
//! the records are replayed (an entry at or above it is still in the WAL: the file may have
//! been written for a removal a crash then cut short).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dedupe::{LastAppend, Writers};

/// The file, in the log's directory.
pub const FILE: &str = "writers-released";

/// The file's content.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Released {
    /// The retention point it was written for: every append here is below it.
    first: u64,
    /// Each writer's remembered appends below `first`, oldest first.
    writers: Vec<(String, Vec<LastAppend>)>,
}

/// Errors reading or writing the file.
#[derive(Debug, thiserror::Error)]
pub enum ReleasedError {
    #[error(
        "{path}: the writer table kept at retention does not read ({reason}); without it a retry of an append below the retention point would be written again. Restore the file from a backup of this directory"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: encoding the writer table kept at retention: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes, durably, what `writers` remembers of appends below `first` (about to be removed):
/// a writer whose appends are all below it keeps only its last, as [`super::dedupe::release`]
/// leaves it in memory.
pub fn save(dir: &Path, writers: &Writers, first: u64) -> Result<(), ReleasedError> {
    let mut kept: Vec<(String, Vec<LastAppend>)> = writers
        .iter()
        .filter_map(|(id, recent)| {
            let last = recent.last()?;
            let below: Vec<LastAppend> = if last.index < first {
                vec![*last]
            } else {
                recent.iter().filter(|a| a.index < first).copied().collect()
            };
            (!below.is_empty()).then(|| (id.clone(), below))
        })
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join(FILE);
    let bytes = postcard::to_allocvec(&Released {
        first,
        writers: kept,
    })
    .map_err(|e| ReleasedError::Encode {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::disk::write_durably(&path, &bytes).map_err(|source| ReleasedError::Io { path, source })
}

/// Records into `writers` (empty, before the WAL's records are replayed) the appends the
/// file keeps below `wal_first`, the WAL's first index. No file and nothing removed: a new
/// log. A log whose records were removed without the file keeping them (by a version
/// before it, or by hand) is opened with a warning naming what retries are not recognized.
pub fn load(dir: &Path, wal_first: u64, writers: &mut Writers) -> Result<(), ReleasedError> {
    let path = dir.join(FILE);
    let bytes = match crate::disk::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if wal_first > 1 {
                unkept(&path, 1, wal_first);
            }
            return Ok(());
        }
        Err(source) => return Err(ReleasedError::Io { path, source }),
    };
    let released: Released = postcard::from_bytes(&bytes).map_err(|e| ReleasedError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if released.first < wal_first {
        unkept(&path, released.first, wal_first);
    }
    for (id, appends) in released.writers {
        let writer = |a: &LastAppend| Some((id.clone(), a.sequence));
        for a in appends.iter().filter(|a| a.index < wal_first) {
            super::dedupe::record(writers, writer(a).as_ref(), a.index, a.digest);
        }
    }
    Ok(())
}

/// Warns that the records of `[from, to)` were removed and the file does not keep what the
/// writer table knew of them.
fn unkept(path: &Path, from: u64, to: u64) {
    tracing::warn!(
        file = %path.display(),
        from,
        to,
        "records {from} to {} were removed without {FILE} keeping their writers' sequences \
         (removed by a version before it, or by hand): a retry of one of those appends, from \
         a writer with no later append in the log, is not recognized and would be written \
         again",
        to - 1
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logstore::dedupe::record;

    #[test]
    fn what_retention_removes_is_read_back_and_what_the_wal_still_holds_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writers::new();
        let rec = |w: &mut Writers, id: &str, seq: u64, index: u64| {
            record(w, Some(&(id.to_string(), seq)), index, seq * 7)
        };
        // `a` is wholly below 10, `b` partly.
        for (s, i) in [(1, 1), (2, 3), (3, 5)] {
            rec(&mut w, "a", s, i);
        }
        for (s, i) in [(1, 2), (2, 8), (3, 12)] {
            rec(&mut w, "b", s, i);
        }
        save(dir.path(), &w, 10).unwrap();
        // The WAL's first index is 10: all of it was removed.
        let mut back = Writers::new();
        load(dir.path(), 10, &mut back).unwrap();
        let seqs = |w: &Writers, id: &str| -> Vec<u64> {
            w.get(id)
                .map(|r| r.iter().map(|a| a.sequence).collect())
                .unwrap_or_default()
        };
        assert_eq!(seqs(&back, "a"), [3], "only a's last");
        assert_eq!(seqs(&back, "b"), [1, 2], "b's below 10");
        assert_eq!(
            back["b"].iter().map(|a| a.index).collect::<Vec<_>>(),
            [2, 8]
        );
        // A removal cut short: the WAL still starts at 4, so 5 and 8 are replayed from it.
        let mut back = Writers::new();
        load(dir.path(), 4, &mut back).unwrap();
        assert!(!back.contains_key("a"), "a's last (index 5) is in the WAL");
        assert_eq!(seqs(&back, "b"), [1]);
        // A damaged file refuses the open, naming it.
        std::fs::write(dir.path().join(FILE), [0xff; 3]).unwrap();
        let e = load(dir.path(), 10, &mut Writers::new()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }
}
