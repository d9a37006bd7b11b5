//! Which replica a directory belongs to: the replica id written at its first start
//! (`raft-replica-id`), checked at every start after, before the storage opens.

use super::NodeId;
use crate::logstore::LogStoreError;

/// The file naming the replica whose vote and log a directory holds.
pub const REPLICA_ID_FILE: &str = "raft-replica-id";

/// Which replica's vote and log `dir` holds (`None`: none yet, or a directory from before
/// the file existed). Checked before the replica opens anything there and written once it
/// has ([`bind_replica_id`]). Raft's safety rests on each voter keeping its own vote and
/// log; two replicas restarted on each other's directories (or one with another `--id`)
/// would run on another's promises, and nothing else notices: the messages they get are
/// addressed to the id they now claim.
pub(super) fn replica_id_of(
    dir: &std::path::Path,
    id: NodeId,
) -> Result<Option<u64>, LogStoreError> {
    crate::disk::data_dir_not_a_file(dir).map_err(LogStoreError::Config)?;
    let path = dir.join(REPLICA_ID_FILE);
    match crate::disk::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(held) if held == id => Ok(Some(held)),
            Ok(held) => Err(LogStoreError::Config(format!(
                "{} holds the vote and log of replica {held} ({}), not of replica {id} (--id {id}): a replica must keep its own. Start replica {held} on it, and replica {id} on its own directory (or on an empty one, to be added anew)",
                dir.display(),
                path.display()
            ))),
            Err(_) => Err(LogStoreError::Config(format!(
                "{} does not name a replica (found {:?}); it holds the id of the replica this directory belongs to",
                path.display(),
                text.chars().take(40).collect::<String>()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogStoreError::Config(format!("{}: {e}", path.display()))),
    }
}

/// Binds `dir` to replica `id` (see [`replica_id_of`]), once the replica's storage opened.
pub(super) fn bind_replica_id(dir: &std::path::Path, id: NodeId) -> Result<(), LogStoreError> {
    let path = dir.join(REPLICA_ID_FILE);
    crate::disk::write_durably(&path, format!("{id}\n").as_bytes())
        .map_err(|e| LogStoreError::Config(format!("{}: {e}", path.display())))
}
