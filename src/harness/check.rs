//! The exactly-once checker: replays the whole log into the state each shard should hold
//! and compares it, key by key, with what each shard actually holds. Counters must be exact
//! and append lists in log order, so a duplicate, a gap or a reorder fails the check. The
//! log itself is read for one thing the shards cannot show: a transaction of the workload
//! written into it twice (a retried append the LogStore did not recognise as one), which
//! the shards then faithfully apply twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::{ClientError, Log, ShardConn};
use crate::harness::workload::{parse_token, token_of};
use crate::model::{State, apply_all, json_line};
use crate::proto::{Entry, Mutation};
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
    /// Transactions the log holds more than once, one line each.
    pub written_twice: Vec<String>,
    pub shards: Vec<ShardReport>,
    pub pass: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.written_twice.is_empty() {
            writeln!(
                f,
                "  log: {} transactions written twice",
                self.written_twice.len()
            )?;
            for m in self.written_twice.iter().take(5) {
                writeln!(f, "    {m}")?;
            }
        }
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
    let (expected, last_touching) = expected_states(&entries, map);
    let deadline = Instant::now() + wait;
    let mut shards = Vec::new();
    for (t, spec) in map.shards.iter().enumerate() {
        let conn = connect_until(&spec.addr, &spec.id, deadline).await?;
        let applied = applied_at_least(&conn, last_touching[t], deadline).await?;
        let actual = conn.dump().await?;
        let mut mismatches = Vec::new();
        if applied < last_touching[t] {
            mismatches.push(format!(
                "applied index {applied} is below {} (the last entry for this shard)",
                last_touching[t]
            ));
        }
        mismatches.extend(compare(&expected[t], &actual));
        shards.push(ShardReport {
            id: spec.id.clone(),
            applied,
            last_touching: last_touching[t],
            keys: actual.len(),
            mismatches,
        });
    }
    let written_twice = written_twice(&entries);
    let pass = written_twice.is_empty() && shards.iter().all(|s| s.mismatches.is_empty());
    Ok(Report {
        entries: last,
        written_twice,
        shards,
        pass,
    })
}

/// The workload's transactions found at two indexes of the log (by the token of their first
/// mutation, unique to a run and a transaction: see [`crate::harness::workload`]); entries
/// of other writers are not read.
fn written_twice(entries: &[Entry]) -> Vec<String> {
    let mut first_at = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in entries {
        let Some(crate::proto::mutation::Op::Append(v)) =
            e.mutations.first().and_then(|m| m.op.as_ref())
        else {
            continue;
        };
        let Some(token) = parse_token(v) else {
            continue;
        };
        if let Some(at) = first_at.insert(token.to_owned(), e.index) {
            out.push(format!(
                "entries {at} and {} are one transaction (token {token}): an append written twice",
                e.index
            ));
        }
    }
    out
}

/// The state each shard should hold after `entries`, and the last index that touched it.
fn expected_states(entries: &[Entry], map: &ShardMap) -> (Vec<State>, Vec<u64>) {
    let mut expected: Vec<State> = vec![State::new(); map.len()];
    let mut last_touching = vec![0u64; map.len()];
    for e in entries {
        let mut parts: Vec<Vec<Mutation>> = vec![Vec::new(); map.len()];
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
    (expected, last_touching)
}

async fn connect_until(addr: &str, id: &str, deadline: Instant) -> Result<ShardConn, CheckError> {
    loop {
        match ShardConn::connect(addr, Some(id)).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The shard's applied index once it reaches `want` (or whatever it is at the deadline).
async fn applied_at_least(
    conn: &ShardConn,
    want: u64,
    deadline: Instant,
) -> Result<u64, CheckError> {
    loop {
        match conn.applied().await.map(|a| a.applied_index) {
            Ok(a) if a >= want || Instant::now() > deadline => return Ok(a),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Key (as its JSON text) to the rest of a dump line.
type Lines = BTreeMap<String, serde_json::Value>;

fn parse_lines(lines: impl IntoIterator<Item = String>) -> Lines {
    lines
        .into_iter()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(serde_json::Value::Object(mut obj)) => {
                    let key = obj.remove("key").map(|k| k.to_string()).unwrap_or_default();
                    (key, serde_json::Value::Object(obj))
                }
                _ => (line, serde_json::Value::Null),
            },
        )
        .collect()
}

/// Every difference between the expected state and a shard's dump, one line each, saying
/// what it means (a counter off by a delta, a token twice, a list out of order).
fn compare(want: &State, actual: &[String]) -> Vec<String> {
    let want = parse_lines(want.iter().map(|(k, v)| json_line(k, v)));
    let actual = parse_lines(actual.iter().cloned());
    let mut out = Vec::new();
    for (key, w) in &want {
        match actual.get(key) {
            None => out.push(format!("key {key}: missing (expected {})", short(w))),
            Some(a) if a != w => out.push(format!("key {key}: {}", describe(w, a))),
            Some(_) => {}
        }
    }
    for (key, a) in &actual {
        if !want.contains_key(key) {
            out.push(format!("key {key}: unexpected {}", short(a)));
        }
    }
    out
}

/// How an actual value differs from the expected one.
fn describe(want: &serde_json::Value, actual: &serde_json::Value) -> String {
    if let (Some(w), Some(a)) = (want["counter"].as_i64(), actual["counter"].as_i64()) {
        return format!(
            "counter is {a}, expected {w} (off by {:+}: a duplicate or a gap)",
            a.wrapping_sub(w)
        );
    }
    let (Some(w), Some(a)) = (want["list"].as_array(), actual["list"].as_array()) else {
        return format!("expected {}, found {}", short(want), short(actual));
    };
    let tokens = |items: &[serde_json::Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) => String::from_utf8_lossy(token_of(s.as_bytes())).into_owned(),
                None => i.to_string(),
            })
            .collect()
    };
    let (w, a) = (tokens(w), tokens(a));
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = a.iter().find(|t| !seen.insert(*t)) {
        return format!("token {dup} appears twice (a duplicate delivery)");
    }
    let at = w.iter().zip(&a).position(|(x, y)| x != y);
    match at {
        Some(i) => format!(
            "list differs at item {i}: expected token {}, found {} ({} items, expected {})",
            w[i],
            a[i],
            a.len(),
            w.len()
        ),
        None => format!(
            "list has {} items, expected {} (a gap or an extra entry at the end)",
            a.len(),
            w.len()
        ),
    }
}

/// A value shortened for a message.
fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    fn state(items: &[(&str, Value)]) -> State {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect()
    }

    fn dump(s: &State) -> Vec<String> {
        s.iter().map(|(k, v)| json_line(k, v)).collect()
    }

    #[test]
    fn equal_states_have_no_differences() {
        let s = state(&[
            ("c-1", Value::Counter(3)),
            ("l-1", Value::List(vec![b"t1".to_vec()])),
        ]);
        assert!(compare(&s, &dump(&s)).is_empty());
    }

    #[test]
    fn a_repeated_token_is_named_as_a_duplicate() {
        let want = state(&[("l-1", Value::List(vec![b"t1~~".to_vec(), b"t2~~".to_vec()]))]);
        let got = state(&[(
            "l-1",
            Value::List(vec![b"t1~~".to_vec(), b"t1~~".to_vec(), b"t2~~".to_vec()]),
        )]);
        let d = compare(&want, &dump(&got));
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("token t1 appears twice"), "{d:?}");
    }

    #[test]
    fn counters_missing_keys_and_extra_keys_are_each_reported() {
        let want = state(&[("c-1", Value::Counter(3)), ("c-2", Value::Counter(1))]);
        let got = state(&[("c-1", Value::Counter(5)), ("c-3", Value::Counter(1))]);
        let d = compare(&want, &dump(&got));
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("off by +2"), "{d:?}");
        assert!(d[1].contains("missing"), "{d:?}");
        assert!(d[2].contains("unexpected"), "{d:?}");
    }

    #[test]
    fn a_reordered_list_names_the_first_difference() {
        let want = state(&[("l-1", Value::List(vec![b"a".to_vec(), b"b".to_vec()]))]);
        let got = state(&[("l-1", Value::List(vec![b"b".to_vec(), b"a".to_vec()]))]);
        let d = compare(&want, &dump(&got));
        assert!(d[0].contains("differs at item 0"), "{d:?}");
    }

    #[test]
    fn a_transaction_at_two_indexes_of_the_log_is_named_and_other_writers_are_not_read() {
        use crate::harness::workload::Workload;
        let mut w = Workload::new(3, 20, 100, 1);
        let (a, b) = (w.next_txn(), w.next_txn());
        let other = vec![Mutation {
            key: b"x".to_vec().into(),
            op: Some(crate::proto::mutation::Op::Append(b"same".to_vec().into())),
        }];
        let log: Vec<Entry> = [&a, &other, &b, &other, &a]
            .into_iter()
            .enumerate()
            .map(|(i, m)| Entry {
                index: i as u64 + 1,
                mutations: m.clone(),
                append_start_micros: 0,
            })
            .collect();
        let found = written_twice(&log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("entries 1 and 5 are one transaction"),
            "{found:?}"
        );
        assert!(written_twice(&log[..4]).is_empty());
    }
}
