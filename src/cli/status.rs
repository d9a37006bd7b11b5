//! `logplayer status`: an operator's view of a running system from the command line — the
//! log's id, bounds and entry limit, each log replica's role, Raft term and progress (for a
//! replicated LogStore: an unreachable replica or no leader is a problem), and for each shard in the map its reported id, applied
//! index, highest epoch, lag, log and reachability — as a table or `--json`. Exits non-zero
//! (one `error:` line after the table) when something is wrong: an unreachable part, a
//! shard that reports another id or another log, a shard whose entry limit is below the
//! log's, or (with `--lease-epoch`) a shard fenced by an epoch the lease never gave.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::client::{Log, ShardConn};
use crate::proto::{AppliedResponse, BoundsResponse};
use crate::routing::ShardMap;

#[derive(Args)]
pub struct StatusArgs {
    /// LogStore address; for a replicated LogStore, every replica's, comma-separated (each
    /// is asked where it stands in the group).
    #[arg(long, env = "LOGPLAYER_LOGSTORE", default_value = "127.0.0.1:7000")]
    logstore: String,
    /// The shard map file (as the player takes it).
    #[arg(long, env = "LOGPLAYER_SHARD_MAP", conflicts_with = "shards")]
    shard_map: Option<PathBuf>,
    /// A shard as `ID=ADDR[@LO-HI,...]` (repeat for each shard).
    #[arg(long = "shard", value_name = "SPEC")]
    shards: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The lease's current epoch: a shard that has seen a higher one was fenced by an epoch
    /// no lease holder was given, which is reported as a problem.
    #[arg(long)]
    lease_epoch: Option<u64>,
    /// How long to wait for each part to answer (above 0).
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    timeout: Duration,
}

/// A duration above zero (`status --timeout 0s` would report every part unreachable).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The log as `Bounds` reports it.
#[derive(Debug, Serialize)]
struct LogView {
    addr: String,
    reachable: bool,
    log_id: String,
    first: u64,
    last: u64,
    max_entry_bytes: u64,
    /// Writer ids the log remembers, and the most it holds (`--max-writers`).
    writers: u64,
    max_writers: u64,
    error: Option<String>,
}

/// One shard as it reports itself, and what is wrong with it.
#[derive(Debug, Serialize)]
struct ShardView {
    id: String,
    addr: String,
    reachable: bool,
    reported_id: Option<String>,
    applied: Option<u64>,
    epoch: Option<u64>,
    lag: Option<u64>,
    log_id: Option<String>,
    problems: Vec<String>,
}

/// One replica of a replicated LogStore as it reports itself.
#[derive(Debug, Serialize)]
struct ReplicaView {
    addr: String,
    reachable: bool,
    id: Option<u64>,
    role: Option<String>,
    raft_term: Option<u64>,
    /// The last index it serves (applied).
    last: Option<u64>,
    /// Its Raft log's last index and the last it applied.
    raft_last: Option<u64>,
    raft_applied: Option<u64>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct View {
    log: LogView,
    /// Empty for a single-node LogStore.
    replicas: Vec<ReplicaView>,
    shards: Vec<ShardView>,
    ok: bool,
}

/// Each address of a replicated LogStore, asked on its own.
async fn gather_replicas(a: &StatusArgs, log: &LogView) -> Vec<ReplicaView> {
    let addrs: Vec<&str> = a
        .logstore
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let answers =
        futures::future::join_all(addrs.iter().map(|addr| ask_log(addr, a.timeout))).await;
    if addrs.len() < 2
        && answers
            .iter()
            .all(|r| r.as_ref().is_ok_and(|b| b.replica.is_none()))
    {
        return Vec::new();
    }
    let mut views: Vec<ReplicaView> = addrs
        .iter()
        .zip(answers)
        .map(|(addr, answer)| match answer {
            Ok(b) => {
                let r = b.replica.unwrap_or_default();
                let mut problems = Vec::new();
                if log.reachable && b.log_id != log.log_id {
                    problems.push(format!("serves log {}, not {}", b.log_id, log.log_id));
                }
                ReplicaView {
                    addr: addr.to_string(),
                    reachable: true,
                    id: Some(r.id),
                    role: Some(r.role),
                    raft_term: Some(r.raft_term),
                    last: Some(b.last),
                    raft_last: Some(r.last_log),
                    raft_applied: Some(r.applied),
                    problems,
                }
            }
            Err(e) => ReplicaView {
                addr: addr.to_string(),
                reachable: false,
                id: None,
                role: None,
                raft_term: None,
                last: None,
                raft_last: None,
                raft_applied: None,
                problems: vec![format!("unreachable: {e}")],
            },
        })
        .collect();
    let leaders = views
        .iter()
        .filter(|v| v.role.as_deref() == Some("leader"))
        .count();
    if leaders == 0
        && let Some(first) = views.first_mut()
    {
        first.problems.push("no replica leads the log".into());
    }
    views
}

/// `ask` against the server at `addr`, as text on failure, within `wait`.
async fn ask<T>(
    wait: Duration,
    ask: impl std::future::Future<Output = Result<T, crate::client::ClientError>>,
) -> Result<T, String> {
    match tokio::time::timeout(wait, ask).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

async fn ask_log(addr: &str, wait: Duration) -> Result<BoundsResponse, String> {
    ask(wait, async { Log::connect(addr).await?.describe().await }).await
}

async fn ask_shard(addr: &str, id: &str, wait: Duration) -> Result<AppliedResponse, String> {
    ask(wait, async {
        ShardConn::connect(addr, Some(id)).await?.applied().await
    })
    .await
}

/// What is wrong with a shard's answer, given the log's.
fn shard_problems(
    id: &str,
    r: &AppliedResponse,
    log: &LogView,
    lease_epoch: Option<u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if r.shard_id != id {
        problems.push(format!(
            "wrong shard: reports id {:?}, the map says {id:?}",
            r.shard_id
        ));
    }
    if log.reachable && !r.log_id.is_empty() && r.log_id != log.log_id {
        problems.push(format!(
            "wrong log: bound to log {}, the LogStore serves {}",
            r.log_id, log.log_id
        ));
    }
    if log.reachable && r.max_entry_bytes > 0 && r.max_entry_bytes < log.max_entry_bytes {
        problems.push(format!(
            "entry limit {} is below the log's {}",
            r.max_entry_bytes, log.max_entry_bytes
        ));
    }
    if !r.refused_reason.is_empty() {
        problems.push(format!(
            "refuses its players ({}): {}",
            r.refused_reason, r.refused_message
        ));
    }
    if let Some(lease) = lease_epoch
        && r.highest_epoch > lease
    {
        problems.push(format!(
            "fenced by unknown epoch {} (the lease is at {lease})",
            r.highest_epoch
        ));
    }
    problems
}

async fn gather(a: &StatusArgs, map: &ShardMap) -> View {
    let log = match ask_log(&a.logstore, a.timeout).await {
        Ok(b) => LogView {
            addr: a.logstore.clone(),
            reachable: true,
            log_id: b.log_id,
            first: b.first,
            last: b.last,
            max_entry_bytes: b.max_entry_bytes,
            writers: b.writers,
            max_writers: b.max_writers,
            error: None,
        },
        Err(e) => LogView {
            addr: a.logstore.clone(),
            reachable: false,
            log_id: String::new(),
            first: 0,
            last: 0,
            max_entry_bytes: 0,
            writers: 0,
            max_writers: 0,
            error: Some(e),
        },
    };
    let replicas = gather_replicas(a, &log).await;
    let answers = futures::future::join_all(
        map.shards
            .iter()
            .map(|s| ask_shard(&s.addr, &s.id, a.timeout)),
    )
    .await;
    let shards: Vec<ShardView> = map
        .shards
        .iter()
        .zip(answers)
        .map(|(s, answer)| match answer {
            Ok(r) => ShardView {
                problems: shard_problems(&s.id, &r, &log, a.lease_epoch),
                id: s.id.clone(),
                addr: crate::routing::bare_addr(&s.addr).to_owned(),
                reachable: true,
                lag: log
                    .reachable
                    .then(|| log.last.saturating_sub(r.applied_index)),
                reported_id: Some(r.shard_id),
                applied: Some(r.applied_index),
                epoch: Some(r.highest_epoch),
                log_id: Some(r.log_id).filter(|l| !l.is_empty()),
            },
            Err(e) => ShardView {
                id: s.id.clone(),
                addr: crate::routing::bare_addr(&s.addr).to_owned(),
                reachable: false,
                reported_id: None,
                applied: None,
                epoch: None,
                lag: None,
                log_id: None,
                problems: vec![format!("unreachable: {e}")],
            },
        })
        .collect();
    let ok = log.reachable
        && shards.iter().all(|s| s.problems.is_empty())
        && replicas.iter().all(|r| r.problems.is_empty());
    View {
        log,
        replicas,
        shards,
        ok,
    }
}

fn opt(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn print_table(v: &View) {
    let l = &v.log;
    if l.reachable {
        println!(
            "log {}  first {}  last {}  max entry {} bytes  writers {}  (LogStore at {})",
            l.log_id,
            l.first,
            l.last,
            l.max_entry_bytes,
            // An older server reports neither.
            if l.max_writers == 0 {
                "-".to_string()
            } else {
                format!("{} of {}", l.writers, l.max_writers)
            },
            l.addr
        );
    } else {
        println!(
            "log UNREACHABLE at {}: {}",
            l.addr,
            l.error.as_deref().unwrap_or("")
        );
    }
    if !v.replicas.is_empty() {
        let rows: Vec<Vec<String>> = v
            .replicas
            .iter()
            .map(|r| {
                vec![
                    opt(r.id),
                    r.addr.clone(),
                    opt(r.role.as_ref()),
                    opt(r.raft_term),
                    opt(r.last),
                    opt(r.raft_last),
                    opt(r.raft_applied),
                    state(&r.problems),
                ]
            })
            .collect();
        let header = [
            "REPLICA",
            "ADDRESS",
            "ROLE",
            "RAFT TERM",
            "LAST",
            "RAFT LAST",
            "RAFT APPLIED",
            "STATE",
        ];
        print_rows(&header, &rows);
    }
    let rows: Vec<Vec<String>> = v
        .shards
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.addr.clone(),
                opt(s.reported_id.as_ref()),
                opt(s.applied),
                opt(s.epoch),
                opt(s.lag),
                opt(s.log_id.as_ref()),
                state(&s.problems),
            ]
        })
        .collect();
    let header = [
        "SHARD", "ADDRESS", "REPORTS", "APPLIED", "EPOCH", "LAG", "LOG", "STATE",
    ];
    print_rows(&header, &rows);
}

fn state(problems: &[String]) -> String {
    if problems.is_empty() {
        "ok".into()
    } else {
        problems.join("; ")
    }
}

/// Prints a table with columns as wide as their widest cell.
fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Runs `logplayer status`.
pub async fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    let map = match (&a.shard_map, a.shards.is_empty()) {
        (Some(path), _) => ShardMap::from_file(path)?,
        (None, false) => ShardMap::from_specs(&a.shards)?,
        (None, true) => bail!("give the shards: --shard-map FILE or --shard ID=ADDR (repeat)"),
    };
    let view = gather(&a, &map).await;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).context("encoding the status as JSON")?
        );
    } else {
        print_table(&view);
    }
    if !view.ok {
        let mut problems: Vec<String> = Vec::new();
        if !view.log.reachable {
            problems.push(format!("LogStore at {} unreachable", view.log.addr));
        }
        for r in &view.replicas {
            problems.extend(
                r.problems
                    .iter()
                    .map(|p| format!("log replica at {}: {p}", r.addr)),
            );
        }
        for s in &view.shards {
            problems.extend(s.problems.iter().map(|p| format!("shard {}: {p}", s.id)));
        }
        bail!("{} problem(s): {}", problems.len(), problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> LogView {
        LogView {
            addr: "a".into(),
            reachable: true,
            log_id: "L".into(),
            first: 1,
            last: 10,
            max_entry_bytes: 100,
            writers: 0,
            max_writers: 0,
            error: None,
        }
    }

    #[test]
    fn each_kind_of_mismatch_is_a_problem() {
        let fine = AppliedResponse {
            applied_index: 10,
            highest_epoch: 3,
            shard_id: "s0".into(),
            log_id: "L".into(),
            max_entry_bytes: 100,
            ..Default::default()
        };
        assert!(shard_problems("s0", &fine, &log(), Some(3)).is_empty());
        let bad = AppliedResponse {
            shard_id: "s1".into(),
            log_id: "M".into(),
            max_entry_bytes: 99,
            highest_epoch: 9,
            refused_reason: "wrong-shard".into(),
            refused_message: "slots grew".into(),
            ..fine
        };
        let p = shard_problems("s0", &bad, &log(), Some(3)).join("\n");
        for want in [
            "wrong shard",
            "wrong log",
            "entry limit",
            "unknown epoch 9",
            "refuses its players (wrong-shard): slots grew",
        ] {
            assert!(p.contains(want), "{p}");
        }
    }
}
