//! The exactly-once checker: replays the whole log into the state each shard should hold
//! and compares it, key by key, with what each shard actually holds. Counters must be exact
//! and append lists in log order, so a duplicate, a gap or a reorder fails the check.

use std::time::{Duration, Instant};

use crate::client::{ClientError, Log, ShardConn};
use crate::model::{State, apply_all, json_line};
use crate::routing::ShardMap;

/// Errors of the checker (not a failed check: that is a [`Report`] with `pass == false`).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the log starts at {0}, not 1: the full expected state cannot be rebuilt")]
    Truncated(u64),
}

/// One shard's result.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub id: String,
    pub applied: u64,
    /// Last log index that touched this shard.
    pub last_touching: u64,
    pub keys: usize,
    pub mismatches: Vec<String>,
}

/// The whole result.
#[derive(Debug, Clone)]
pub struct Report {
    pub entries: u64,
    pub shards: Vec<ShardReport>,
    pub pass: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.shards {
            writeln!(
                f,
                "  shard {:<8} applied {:>8}  keys {:>6}  {}",
                s.id,
                s.applied,
                s.keys,
                if s.mismatches.is_empty() {
                    "ok".to_string()
                } else {
                    format!("{} MISMATCHES", s.mismatches.len())
                }
            )?;
            for m in s.mismatches.iter().take(5) {
                writeln!(f, "    {m}")?;
            }
        }
        Ok(())
    }
}

/// Waits (up to `wait`) for every shard to apply the last entry that touches it, then
/// compares states. The log must be quiet: if it grew while the shards were read (appends
/// still landing), the comparison would be against a stale expectation, so the check is
/// repeated until the log's end is the same before and after.
pub async fn check(log: &Log, map: &ShardMap, wait: Duration) -> Result<Report, CheckError> {
    let mut attempt = 0;
    loop {
        let report = check_once(log, map, wait).await?;
        let (_, last) = log.bounds().await?;
        let grew =
            last != report.entries || report.shards.iter().any(|s| s.applied > report.entries);
        if !grew || attempt >= 20 {
            return Ok(report);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn check_once(log: &Log, map: &ShardMap, wait: Duration) -> Result<Report, CheckError> {
    let (first, last) = log.bounds().await?;
    if first > 1 {
        return Err(CheckError::Truncated(first));
    }
    let entries = log.read_range(1, last).await?;
    let mut expected: Vec<State> = vec![State::new(); map.len()];
    let mut last_touching = vec![0u64; map.len()];
    for e in &entries {
        let mut parts: Vec<Vec<crate::proto::Mutation>> = vec![Vec::new(); map.len()];
        for m in &e.mutations {
            parts[map.shard_of(&m.key)].push(m.clone());
        }
        for (t, p) in parts.into_iter().enumerate() {
            if !p.is_empty() {
                apply_all(&mut expected[t], &p);
                last_touching[t] = e.index;
            }
        }
    }
    let deadline = Instant::now() + wait;
    let mut shards = Vec::new();
    for (t, spec) in map.shards.iter().enumerate() {
        let conn = loop {
            match ShardConn::connect(&spec.addr).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let applied = loop {
            let a = conn.applied().await.map(|a| a.applied_index);
            match a {
                Ok(a) if a >= last_touching[t] || Instant::now() > deadline => break a,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let actual = conn.dump().await?;
        let want: Vec<String> = expected[t].iter().map(|(k, v)| json_line(k, v)).collect();
        let mut mismatches = Vec::new();
        if applied < last_touching[t] {
            mismatches.push(format!(
                "applied index {applied} is below {} (the last entry for this shard)",
                last_touching[t]
            ));
        }
        let (mut i, mut j) = (0, 0);
        while i < want.len() || j < actual.len() {
            match (want.get(i), actual.get(j)) {
                (Some(w), Some(a)) if w == a => {
                    i += 1;
                    j += 1;
                }
                (Some(w), Some(a)) if key_of(w) == key_of(a) => {
                    mismatches.push(format!("expected {w}, found {a}"));
                    i += 1;
                    j += 1;
                }
                (Some(w), Some(a)) if key_of(w) < key_of(a) => {
                    mismatches.push(format!("missing {w}"));
                    i += 1;
                }
                (Some(w), None) => {
                    mismatches.push(format!("missing {w}"));
                    i += 1;
                }
                (_, Some(a)) => {
                    mismatches.push(format!("unexpected {a}"));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        shards.push(ShardReport {
            id: spec.id.clone(),
            applied,
            last_touching: last_touching[t],
            keys: actual.len(),
            mismatches,
        });
    }
    let pass = shards.iter().all(|s| s.mismatches.is_empty());
    Ok(Report {
        entries: last,
        shards,
        pass,
    })
}

/// The key of a JSON line, for merging sorted lists (keys sort the same as JSON strings
/// for the workload's UTF-8 keys; a non-UTF-8 key only costs a less precise message).
fn key_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("key").map(|k| k.to_string()))
        .unwrap_or_default()
}
