//! The log's identity: a random id (a UUID v4) created when a data directory is first
//! initialised and kept in the file `log-id` beside the WAL segments.
//!
//! Indexes only mean something within one log: a recreated LogStore (an empty directory)
//! or a different one starts again at 1. The id travels with every `Read` response, with
//! `Bounds`, and in each delivery stream's `Hello`, so a shard that applied entries of one
//! log refuses another one instead of skipping its "already applied" indexes. A restored
//! backup that includes the `log-id` file is the same log and keeps its id.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file holding the id, inside the LogStore's data directory.
pub const LOG_ID_FILE: &str = "log-id";

/// Errors reading or creating the id.
#[derive(Debug, thiserror::Error)]
pub enum LogIdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds {found:?}, which is not a log id (a UUID); restore the file or move the directory aside"
    )]
    Invalid { path: PathBuf, found: String },
}

/// Checks that `text` is a log id (a UUID in its hyphenated form) and returns it normalised.
pub fn parse(text: &str) -> Option<String> {
    uuid::Uuid::try_parse(text.trim())
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// A fresh random id.
pub fn generate() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Reads the id of the log in `dir`, or creates one (durably: written to a temporary file,
/// fsynced, renamed, directory fsynced) when there is none. Returns the id and whether it
/// was created now. `empty` says whether the WAL holds no entries; a non-empty log without
/// an id (written before ids existed) gets one too, with a warning.
pub fn load_or_create(dir: &Path, empty: bool) -> Result<(String, bool), LogIdError> {
    let path = dir.join(LOG_ID_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogIdError::Io { path, source }
    };
    match crate::disk::read_to_string(&path) {
        Ok(text) => match parse(&text) {
            Some(id) => Ok((id, false)),
            None => Err(LogIdError::Invalid {
                path,
                found: text.chars().take(80).collect(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate();
            if !empty {
                tracing::warn!(log_id = %id, dir = %dir.display(), "this log has entries but no id file; assigning a new id. Shards that applied from it before log ids existed adopt it; shards bound to an earlier id of this log (if the file was removed) refuse it until `shard reset-log`");
            }
            let tmp = dir.join(format!("{LOG_ID_FILE}.tmp"));
            let mut f = crate::disk::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(format!("{id}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io(&tmp))?;
            crate::disk::rename(&tmp, &path).map_err(io(&path))?;
            crate::disk::sync_dir(dir).map_err(io(dir))?;
            Ok((id, true))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_created_once_and_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path(), true).unwrap();
        assert!(created);
        assert_eq!(parse(&a).as_deref(), Some(a.as_str()));
        let (b, created) = load_or_create(dir.path(), false).unwrap();
        assert_eq!((a, created), (b, false));
        let other = tempfile::tempdir().unwrap();
        let (c, _) = load_or_create(other.path(), true).unwrap();
        assert_ne!(c, load_or_create(dir.path(), false).unwrap().0);
    }

    #[test]
    fn a_damaged_id_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_ID_FILE), "not an id").unwrap();
        let err = load_or_create(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("log-id") && err.contains("not an id"), "{err}");
    }
}
