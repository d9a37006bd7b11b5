//! Ack cursors: the highest index each shard has durably acknowledged to the leader, saved
//! every checkpoint interval. The shards' own applied index stays the truth (a new leader
//! asks them); cursors bound the LogStore's retention, show lag, and survive the player.
//!
//! [`CursorStore`] is the seam: [`FileCursors`] keeps them in a local JSON file (written to a
//! temporary file, fsynced and renamed, so a crash leaves the old or the new version whole);
//! the operator adds a backend that writes them into each Shard resource's status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of a cursor store.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cursor file {path} is not valid cursor JSON: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cursor store: {0}")]
    Backend(String),
}

/// What a checkpoint records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursors {
    /// Epoch of the leader that wrote them.
    pub epoch: u64,
    /// Shard id → highest durably acknowledged index.
    pub acked: BTreeMap<String, u64>,
    /// Shard id → the log index through which every entry for the shard is acknowledged,
    /// entries that do not touch it included (at least `acked`). Lag is measured from here:
    /// a shard that has everything routed to it has no lag even when the newest entries go
    /// elsewhere. Informational; retention uses `acked`.
    #[serde(default)]
    pub covered: BTreeMap<String, u64>,
    /// Shard id → the log (its id) that shard's cursor counts in. A cursor of another log
    /// (the LogStore was replaced, or the shard moved to a new log) is never merged with
    /// this log's, nor bounds its retention. Absent in files of older versions: such a
    /// cursor counts in no log until this log's next checkpoint replaces it.
    #[serde(default)]
    pub log_ids: BTreeMap<String, String>,
}

impl Cursors {
    /// The index below which every shard has acknowledged everything, if every shard in
    /// `shards` has a cursor in the log `log_id`: retention may remove entries up to it.
    pub fn lowest(&self, shards: &[String], log_id: &str) -> Option<u64> {
        let shards = if crate::mutations::on(crate::mutations::Mutation::RetentionIgnoresCursor) {
            // The slowest shard's cursor (a missing one counts as 0) is left out:
            // retention runs ahead of it.
            let mut sorted: Vec<(u64, &String)> = shards
                .iter()
                .map(|s| (self.acked.get(s).copied().unwrap_or(0), s))
                .collect();
            sorted.sort();
            sorted
                .iter()
                .skip(1)
                .map(|(_, s)| (*s).clone())
                .collect::<Vec<_>>()
        } else {
            shards.to_vec()
        };
        shards
            .iter()
            .map(|s| {
                let this_log = self.log_ids.get(s).is_some_and(|id| id == log_id);
                self.acked.get(s).copied().filter(|_| this_log)
            })
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .min()
    }
}

/// Where the leader keeps its cursors.
#[tonic::async_trait]
pub trait CursorStore: Send + Sync {
    /// The saved cursors (empty when none were saved yet).
    async fn load(&self) -> Result<Cursors, CursorError>;
    /// Saves `cursors`. A save never moves a shard's cursor backwards: the stored value is the
    /// maximum of the old and the new (acks are durable, so both are true lower bounds).
    async fn save(&self, cursors: &Cursors) -> Result<(), CursorError>;
}

/// Cursors in a local JSON file.
#[derive(Debug, Clone)]
pub struct FileCursors {
    path: PathBuf,
}

impl FileCursors {
    pub fn new(path: impl Into<PathBuf>) -> FileCursors {
        FileCursors { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> CursorError + '_ {
        |source| CursorError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self) -> Result<Cursors, CursorError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CursorError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursors::default()),
            Err(e) => Err(self.io()(e)),
        }
    }

    /// The directory the file is written in (created if missing).
    fn dir(&self) -> Result<PathBuf, CursorError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(self.io())?;
        Ok(dir)
    }

    /// Checks that the file can be written as [`CursorStore::save`] writes it (a temporary
    /// file beside it, renamed over it): checked at start, since a file that cannot be
    /// written only warned at every checkpoint while no cursor was saved, and retention
    /// (`--retain-log`) never ran. Temporary files a player killed between writing and
    /// renaming one left are removed here (by their name, which only this file's saves use,
    /// once [`crate::disk::STALE_TEMP_AGE`] old).
    pub fn check_writable(&self) -> Result<(), CursorError> {
        let dir = self.dir()?;
        let removed = crate::disk::remove_stale_temps(&dir, &self.temp_prefix());
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed cursor temporary files a killed player left");
        }
        self.temp_in(&dir).map(drop)
    }

    /// `.<file name>.tmp`: what this file's temporary files are named after.
    fn temp_prefix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        format!(".{}.tmp", name.unwrap_or_default())
    }

    fn temp_in(&self, dir: &std::path::Path) -> Result<tempfile::NamedTempFile, CursorError> {
        tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .tempfile_in(dir)
            .map_err(self.io())
    }

    fn write(&self, merged: &Cursors) -> Result<(), CursorError> {
        let dir = self.dir()?;
        let mut tmp = self.temp_in(&dir)?;
        let json = serde_json::to_vec_pretty(merged).map_err(|e| CursorError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        tmp.write_all(&json).map_err(self.io())?;
        tmp.as_file().sync_data().map_err(self.io())?;
        tmp.persist(&self.path).map_err(|e| self.io()(e.error))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io())?;
        Ok(())
    }
}

/// `old` with `new` merged in: per shard the higher cursor, and the higher epoch; a
/// shard whose cursor in `new` counts in another log than the one in `old` takes the new
/// one whole (indexes of two logs are not comparable).
pub fn merge(old: &Cursors, new: &Cursors) -> Cursors {
    let mut out = old.clone();
    out.epoch = old.epoch.max(new.epoch);
    for (shard, log_id) in &new.log_ids {
        if old.log_ids.get(shard) != Some(log_id) {
            out.acked.remove(shard);
            out.covered.remove(shard);
            out.log_ids.insert(shard.clone(), log_id.clone());
        }
    }
    for (shard, &index) in &new.acked {
        let e = out.acked.entry(shard.clone()).or_insert(0);
        *e = (*e).max(index);
    }
    for (shard, &index) in &new.covered {
        let e = out.covered.entry(shard.clone()).or_insert(0);
        *e = (*e).max(index);
    }
    out
}

#[tonic::async_trait]
impl CursorStore for FileCursors {
    async fn load(&self) -> Result<Cursors, CursorError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read())
            .await
            .map_err(|e| CursorError::Backend(e.to_string()))?
    }

    async fn save(&self, cursors: &Cursors) -> Result<(), CursorError> {
        let (me, new) = (self.clone(), cursors.clone());
        tokio::task::spawn_blocking(move || {
            let old = me.read()?;
            me.write(&merge(&old, &new))
        })
        .await
        .map_err(|e| CursorError::Backend(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary files of saves cut short by a kill go at the next start; a fresh one
    /// (a live player's save), and files of other names, stay.
    #[tokio::test]
    async fn a_killed_saves_temporary_files_go_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let aged = |name: &str, ago: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(ago))
                .unwrap();
        };
        aged(".c.json.tmpAbC123", 120);
        aged(".c.json.tmpXyZ789", 0);
        aged(".tmpOther", 120);
        let store = FileCursors::new(dir.path().join("c.json"));
        store.check_writable().unwrap();
        store.save(&Cursors::default()).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".c.json.tmpXyZ789", ".tmpOther", "c.json"]);
    }

    /// A cursor file whose directory cannot be written is found at start, naming the path.
    #[test]
    fn a_cursor_file_that_cannot_be_written_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            FileCursors::new(dir.path().join("c.json"))
                .check_writable()
                .is_ok()
        );
        assert!(
            FileCursors::new(dir.path().join("new/c.json"))
                .check_writable()
                .is_ok()
        );
        let e = FileCursors::new("/proc/logplayer-cursors.json")
            .check_writable()
            .unwrap_err();
        assert!(
            e.to_string().contains("/proc/logplayer-cursors.json"),
            "{e}"
        );
    }

    /// The log every cursor of [`cursors`] counts in.
    const LOG: &str = "log-1";

    fn cursors(epoch: u64, acked: &[(&str, u64)]) -> Cursors {
        in_log(LOG, epoch, acked)
    }

    fn in_log(log_id: &str, epoch: u64, acked: &[(&str, u64)]) -> Cursors {
        Cursors {
            covered: BTreeMap::new(),
            epoch,
            acked: acked.iter().map(|(s, i)| (s.to_string(), *i)).collect(),
            log_ids: acked
                .iter()
                .map(|(s, _)| (s.to_string(), log_id.to_string()))
                .collect(),
        }
    }

    /// Cursors saved for another log (the LogStore was replaced: its indexes start again
    /// from 1) are not merged with this log's, nor bound its retention: a shard of the old
    /// log at 150 says nothing about the new one, and would let retention remove entries
    /// another shard of the new log never received.
    #[tokio::test]
    async fn a_cursor_of_another_log_is_replaced_and_never_bounds_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCursors::new(dir.path().join("c.json"));
        store
            .save(&in_log("old", 3, &[("a", 150), ("b", 150)]))
            .await
            .unwrap();
        let shards = vec!["a".to_string(), "b".to_string()];
        let saved = store.load().await.unwrap();
        assert_eq!(
            saved.lowest(&shards, "new"),
            None,
            "b has no cursor in the new log"
        );
        // The new log's leader has heard from a only.
        store.save(&in_log("new", 4, &[("a", 3)])).await.unwrap();
        let saved = store.load().await.unwrap();
        assert_eq!(saved.acked.get("a"), Some(&3), "replaced, not max(150, 3)");
        assert_eq!(saved.lowest(&shards, "new"), None);
        store.save(&in_log("new", 4, &[("b", 2)])).await.unwrap();
        assert_eq!(store.load().await.unwrap().lowest(&shards, "new"), Some(2));
        // A file of an older version (no log ids) counts in no log.
        let mut old = cursors(1, &[("a", 10), ("b", 10)]);
        old.log_ids.clear();
        assert_eq!(old.lowest(&shards, LOG), None);
    }

    #[tokio::test]
    async fn saves_and_loads_and_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCursors::new(dir.path().join("c.json"));
        assert_eq!(store.load().await.unwrap(), Cursors::default());
        store
            .save(&cursors(2, &[("a", 10), ("b", 5)]))
            .await
            .unwrap();
        // A stale leader's checkpoint cannot pull a cursor or the epoch back.
        store
            .save(&cursors(1, &[("a", 7), ("b", 9)]))
            .await
            .unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            cursors(2, &[("a", 10), ("b", 9)])
        );
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = FileCursors::new(&path).load().await.unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
        // And a save refuses to overwrite it rather than resetting the cursors.
        assert!(
            FileCursors::new(&path)
                .save(&Cursors::default())
                .await
                .is_err()
        );
    }

    #[test]
    fn lowest_needs_every_shard() {
        let c = cursors(1, &[("a", 10), ("b", 5)]);
        let shards = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(c.lowest(&shards(&["a", "b"]), LOG), Some(5));
        assert_eq!(c.lowest(&shards(&["a", "b", "c"]), LOG), None);
        assert_eq!(c.lowest(&shards(&["a", "b"]), "another log"), None);
    }

    mod kube_mock {
        use super::super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use serde_json::{Value, json};
        use tower_test::mock;

        type Handle = mock::Handle<Request<Body>, Response<Body>>;
        const SHARDS: &str = "/apis/logplayer.io/v1alpha1/namespaces/ns/shards";

        fn shard(name: &str, acked: Option<i64>) -> Value {
            json!({
                "apiVersion": "logplayer.io/v1alpha1", "kind": "Shard",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"logPlayer": "lp", "slots": [{"start": 0, "end": 16383}],
                         "external": {"endpoint": "x:1"}},
                "status": {"ackedIndex": acked, "ackedLogId": super::LOG},
            })
        }

        fn reply(send: mock::SendResponse<Response<Body>>, body: &Value) {
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(body).unwrap()))
                    .unwrap(),
            );
        }

        async fn list(handle: &mut Handle, items: Vec<Value>) {
            let (req, send) = handle.next_request().await.expect("a list");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), SHARDS);
            reply(
                send,
                &json!({"apiVersion": "logplayer.io/v1alpha1", "kind": "ShardList",
                                "metadata": {}, "items": items}),
            );
        }

        #[tokio::test]
        async fn saves_advanced_cursors_by_server_side_apply_and_never_moves_one_back() {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let store = KubeCursors::new(kube::Client::new(service, "ns"), "ns");
            let new = super::cursors(4, &[("a", 7), ("b", 90)]);
            let server = async {
                // a is at 10 (ahead of 7: left alone), b at 50 (moves to 90).
                list(
                    &mut handle,
                    vec![shard("a", Some(10)), shard("b", Some(50))],
                )
                .await;
                let (req, send) = handle.next_request().await.expect("a patch");
                assert_eq!(req.method(), Method::PATCH);
                assert_eq!(req.uri().path(), format!("{SHARDS}/b/status"));
                let query = req.uri().query().unwrap_or_default().to_owned();
                assert!(query.contains("fieldManager=logplayer-player"), "{query}");
                assert!(query.contains("force=true"), "{query}");
                let body: Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                        .unwrap();
                assert_eq!(
                    body["status"],
                    json!({"ackedIndex": 90, "ackedEpoch": 4, "coveredIndex": 90,
                           "ackedLogId": super::LOG})
                );
                reply(send, &shard("b", Some(90)));
            };
            let (saved, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                tokio::join!(store.save(&new), server)
            })
            .await
            .expect("client and scripted server disagree");
            saved.unwrap();
            // Nothing else was sent.
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), handle.next_request())
                    .await
                    .is_err()
            );
        }

        /// A Shard the players' Role no longer names (deselected, the players not yet
        /// replaced): the others are still saved, and the save says which was refused.
        #[tokio::test]
        async fn a_shard_not_ours_to_write_does_not_stop_the_others() {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let store = KubeCursors::new(kube::Client::new(service, "ns"), "ns");
            let new = super::cursors(4, &[("a", 7), ("b", 90)]);
            let server = async {
                list(&mut handle, vec![shard("a", Some(1)), shard("b", Some(50))]).await;
                let (req, send) = handle.next_request().await.expect("a's patch");
                assert_eq!(req.uri().path(), format!("{SHARDS}/a/status"));
                send.send_response(
                    Response::builder()
                        .status(403)
                        .header("content-type", "application/json")
                        .body(Body::from(
                            serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1",
                                "metadata": {}, "status": "Failure", "reason": "Forbidden",
                                "code": 403, "message": "shards.logplayer.io \"a\" is forbidden"}))
                            .unwrap(),
                        ))
                        .unwrap(),
                );
                let (req, send) = handle.next_request().await.expect("b's patch");
                assert_eq!(req.uri().path(), format!("{SHARDS}/b/status"));
                reply(send, &shard("b", Some(90)));
            };
            let (saved, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                tokio::join!(store.save(&new), server)
            })
            .await
            .expect("client and scripted server disagree");
            let e = saved.unwrap_err().to_string();
            assert!(
                e.contains("Shard a") && e.contains("1 other cursor(s) saved"),
                "{e}"
            );
        }

        /// An API server whose Shard CRD predates `ackedLogId` drops it from the patch:
        /// the save fails naming what to do, instead of cursors that count in no log and
        /// a retention that waits forever without a word.
        #[tokio::test]
        async fn a_crd_without_the_log_id_field_is_an_error_naming_the_fix() {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let store = KubeCursors::new(kube::Client::new(service, "ns"), "ns");
            let new = super::cursors(4, &[("b", 90)]);
            let server = async {
                list(&mut handle, vec![shard("b", Some(50))]).await;
                let (_, send) = handle.next_request().await.expect("a patch");
                let mut old_crd = shard("b", Some(90));
                old_crd["status"] = json!({"ackedIndex": 90});
                reply(send, &old_crd);
            };
            let (saved, ()) = tokio::join!(store.save(&new), server);
            let e = saved.unwrap_err().to_string();
            assert!(e.contains("apply the CRDs again"), "{e}");
        }

        #[tokio::test]
        async fn loads_cursors_from_shard_status() {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let store = KubeCursors::new(kube::Client::new(service, "ns"), "ns");
            let (loaded, ()) = tokio::join!(store.load(), async {
                list(&mut handle, vec![shard("a", Some(3)), shard("b", None)]).await
            });
            assert_eq!(
                loaded.unwrap().acked,
                [("a".to_string(), 3)].into_iter().collect()
            );
        }
    }
}

/// Cursors in the cluster: each shard's cursor lives in its `Shard` resource's status
/// (`ackedIndex`, `ackedEpoch`), written by server-side apply under the player's own field
/// manager, so the player never fights the operator over the fields the operator writes.
/// Shard ids in the player's map are the `Shard` resource names.
#[derive(Clone)]
pub struct KubeCursors {
    api: kube::Api<crate::crd::Shard>,
}

/// The field manager the player writes Shard status with.
pub const PLAYER_FIELD_MANAGER: &str = "logplayer-player";

/// `e`, naming the Shards whose cursors were refused before it.
fn with_forbidden(e: CursorError, forbidden: &[String]) -> CursorError {
    if forbidden.is_empty() {
        return e;
    }
    CursorError::Backend(format!(
        "{e}; before it, not allowed to patch the status of Shard {}",
        forbidden.join(", ")
    ))
}

impl KubeCursors {
    pub fn new(client: kube::Client, namespace: &str) -> KubeCursors {
        KubeCursors {
            api: kube::Api::namespaced(client, namespace),
        }
    }

    fn err(e: kube::Error) -> CursorError {
        CursorError::Backend(format!("Shard status: {e}"))
    }
}

#[tonic::async_trait]
impl CursorStore for KubeCursors {
    async fn load(&self) -> Result<Cursors, CursorError> {
        let shards = self
            .api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(Self::err)?;
        let mut out = Cursors::default();
        for s in shards {
            let (Some(name), Some(status)) = (s.metadata.name.clone(), s.status.as_ref()) else {
                continue;
            };
            if let Some(index) = status.covered_index.and_then(|i| u64::try_from(i).ok()) {
                out.covered.insert(name.clone(), index);
            }
            if let Some(log_id) = &status.acked_log_id {
                out.log_ids.insert(name.clone(), log_id.clone());
            }
            if let Some(index) = status.acked_index.and_then(|i| u64::try_from(i).ok()) {
                out.acked.insert(name, index);
            }
            if let Some(epoch) = status.acked_epoch.and_then(|e| u64::try_from(e).ok()) {
                out.epoch = out.epoch.max(epoch);
            }
        }
        Ok(out)
    }

    async fn save(&self, cursors: &Cursors) -> Result<(), CursorError> {
        // Never move a cursor back: merge with what is stored, write only what advanced.
        let stored = self.load().await?;
        let merged = merge(&stored, cursors);
        let params = kube::api::PatchParams::apply(PLAYER_FIELD_MANAGER).force();
        let mut forbidden = Vec::new();
        let mut saved = 0usize;
        for (shard, &index) in &merged.acked {
            let covered = merged
                .covered
                .get(shard)
                .copied()
                .unwrap_or(index)
                .max(index);
            let stored_acked = stored.acked.get(shard).copied();
            let stored_covered = stored.covered.get(shard).copied().or(stored_acked);
            let log_id = merged.log_ids.get(shard);
            let unchanged = stored_acked == Some(index)
                && stored_covered == Some(covered)
                && stored.log_ids.get(shard) == log_id;
            if unchanged || !cursors.acked.contains_key(shard) {
                continue;
            }
            let mut status = serde_json::json!({
                "ackedIndex": index,
                "ackedEpoch": cursors.epoch,
                "coveredIndex": covered,
            });
            if let Some(log_id) = log_id {
                status["ackedLogId"] = log_id.clone().into();
            }
            let patch = serde_json::json!({
                "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
                "kind": "Shard",
                "status": status,
            });
            match self
                .api
                .patch_status(shard, &params, &kube::api::Patch::Apply(&patch))
                .await
            {
                // An API server whose Shard CRD predates `ackedLogId` drops the field
                // silently: every cursor would count in no log and retention would wait
                // forever without a word.
                Ok(applied)
                    if log_id.is_some()
                        && applied
                            .status
                            .as_ref()
                            .and_then(|s| s.acked_log_id.as_ref())
                            .is_none() =>
                {
                    return Err(CursorError::Backend(format!(
                        "Shard {shard}: the API server dropped status.ackedLogId, so its Shard \
                         CRD is older than this player; apply the CRDs again (`kubectl apply \
                         -f crds/`, or the chart's); until then log retention waits"
                    )));
                }
                Ok(_) => {}
                // A shard in the map without a resource (yet): nothing to record it in.
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    tracing::debug!(shard = %shard, "no Shard resource for this cursor")
                }
                // Not ours to write (any more): the players' Role names the Shards their
                // LogPlayer selects, and a deselected one leaves it before these players
                // are replaced with the new map. The other Shards' cursors are still saved;
                // the save then fails naming it (so retention waits for it).
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::warn!(shard = %shard, reason = %s.message, "not allowed to record this shard's cursor");
                    forbidden.push(shard.clone());
                    continue;
                }
                Err(e) => return Err(with_forbidden(Self::err(e), &forbidden)),
            }
            saved += 1;
        }
        if forbidden.is_empty() {
            return Ok(());
        }
        Err(CursorError::Backend(format!(
            "not allowed to patch the status of Shard {} (the players' Role names the Shards \
             their LogPlayer selects: deselected, or the Role not written yet?); {saved} other \
             cursor(s) saved",
            forbidden.join(", ")
        )))
    }
}
