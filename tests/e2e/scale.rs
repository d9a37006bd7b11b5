//! Scenario j: the operator's footprint and reconcile latency at scale, an end-to-end
//! benchmark rather than a test (it asserts only that everything was reconciled). It runs
//! only with `LOGPLAYER_E2E_BENCH=1`:
//!
//! ```sh
//! LOGPLAYER_E2E_BENCH=1 cargo test --test e2e -- --nocapture e2e::j_operator_scale
//! ```
//!
//! It measures the leading operator process (resident memory from `/proc`, reconcile counts
//! and durations from its `/metrics`), and the latency of one spec change (from `kubectl
//! patch` to `status.observedGeneration` catching up), three times:
//! 1. as the earlier scenarios left it (the demo: one LogPlayer, four Shards);
//! 2. with 5,000 unrelated ConfigMaps in another namespace (watched by label, they should
//!    cost nothing);
//! 3. with 100 more LogPlayers x 10 external Shards each in the namespace `scale`, whose
//!    pods the stand-in node leaves Pending (their servers are a dead address, so every
//!    probe fails fast).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;

use super::{DEMO_NS, Harness, OPERATOR_NS, SECOND};
use crate::cluster::wait_for;
use crate::node::UNRUN_NAMESPACE;

const NOISE_NS: &str = "noise";
const LOGPLAYERS: usize = 100;
const SHARDS_EACH: usize = 10;
const CONFIGMAPS: usize = 5_000;

/// One measurement of the leading operator.
#[derive(Debug)]
pub(crate) struct Footprint {
    rss_mib: f64,
    peak_mib: f64,
    /// Reconciliations of every kind since the operator started.
    pub(crate) reconciles: f64,
    mean_reconcile_ms: f64,
}

fn leader(h: &Harness) -> anyhow::Result<String> {
    let holder = h.cp.kubectl(&[
        "-n",
        OPERATOR_NS,
        "get",
        "lease",
        "logplayer-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    ensure!(!holder.trim().is_empty(), "nobody holds the operator Lease");
    Ok(holder.trim().to_owned())
}

fn proc_kib(pid: i32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0))
}

/// A metric's value summed over its label sets, from a text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) async fn footprint(h: &Harness) -> anyhow::Result<Footprint> {
    let pod = leader(h)?;
    let pid = h
        .node
        .pid(OPERATOR_NS, &pod)
        .filter(|p| *p > 0)
        .with_context(|| format!("no process for the leading operator {pod}"))?;
    let ip = h
        .node
        .pod_ip(OPERATOR_NS, &pod)
        .with_context(|| format!("no IP for {pod}"))?;
    let text = reqwest_get(&format!("{ip}:8080"), "/metrics").await?;
    let count = metric(&text, "logplayer_operator_reconcile_duration_seconds_count");
    let sum = metric(&text, "logplayer_operator_reconcile_duration_seconds_sum");
    Ok(Footprint {
        rss_mib: proc_kib(pid, "VmRSS:")? / 1024.0,
        peak_mib: proc_kib(pid, "VmHWM:")? / 1024.0,
        reconciles: count,
        mean_reconcile_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
    })
}

/// `GET path` over HTTP/1.0.
async fn reqwest_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Median time from patching `ns/name`'s replicas to its status describing the new
/// generation, over `n` patches alternating between 1 and 2 replicas.
async fn change_latency(h: &Harness, ns: &str, name: &str, n: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let replicas = 1 + (i % 2);
        let t = Instant::now();
        let out = h.cp.kubectl(&[
            "-n",
            ns,
            "patch",
            "logplayer",
            name,
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#),
            "-o",
            "jsonpath={.metadata.generation}",
        ])?;
        let generation: i64 = out.trim().parse().context("the patched generation")?;
        wait_for(
            &format!("LogPlayer {ns}/{name} observing generation {generation}"),
            60 * SECOND,
            SECOND / 50,
            || async {
                let seen =
                    h.cp.kubectl(&[
                        "-n",
                        ns,
                        "get",
                        "logplayer",
                        name,
                        "-o",
                        "jsonpath={.status.observedGeneration}",
                    ])
                    .map_err(|e| e.to_string())?;
                if seen.trim().parse::<i64>().ok() >= Some(generation) {
                    Ok(Some(()))
                } else {
                    Err(format!("observedGeneration {seen}"))
                }
            },
        )
        .await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn report(what: &str, f: &Footprint, latency: Duration) {
    eprintln!(
        "[e2e bench] {what}: operator RSS {:.1} MiB (peak {:.1} MiB), {} reconciliations so far, \
         mean {:.2} ms each; a spec change is in the status after {:.0} ms (median of 5)",
        f.rss_mib,
        f.peak_mib,
        f.reconciles,
        f.mean_reconcile_ms,
        latency.as_secs_f64() * 1000.0
    );
}

fn write_and_apply(h: &Harness, file: &str, text: &str) -> anyhow::Result<()> {
    let path = h.cp.dir().join(file);
    std::fs::write(&path, text)?;
    let out =
        h.cp.kubectl_raw(&["apply", "--server-side", "-f", &path.display().to_string()])?;
    ensure!(
        out.status.success(),
        "applying {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub(crate) async fn operator_scale(h: &Harness) -> anyhow::Result<()> {
    if std::env::var("LOGPLAYER_E2E_BENCH").as_deref() != Ok("1") {
        eprintln!("[e2e] operator scale benchmark skipped (set LOGPLAYER_E2E_BENCH=1 to run it)");
        return Ok(());
    }
    let base = footprint(h).await?;
    let latency = change_latency(h, DEMO_NS, "demo", 5).await?;
    report("the demo (1 LogPlayer, 4 Shards)", &base, latency);
    // Leave the demo as the later scenarios expect it.
    let out = h.cp.kubectl(&[
        "-n",
        DEMO_NS,
        "patch",
        "logplayer",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    out.context("restoring the demo's replicas")?;

    // 5,000 ConfigMaps nobody asked the operator about.
    h.cp.kubectl(&["create", "namespace", NOISE_NS])?;
    let mut noise = String::new();
    for i in 0..CONFIGMAPS {
        noise.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: noise-{i}\n  namespace: {NOISE_NS}\ndata:\n  payload: \"{}\"\n",
            "x".repeat(200)
        ));
    }
    let t = Instant::now();
    write_and_apply(h, "noise.yaml", &noise)?;
    eprintln!(
        "[e2e bench] created {CONFIGMAPS} ConfigMaps in {:.1?}",
        t.elapsed()
    );
    tokio::time::sleep(5 * SECOND).await;
    let f = footprint(h).await?;
    let latency = change_latency(h, DEMO_NS, "demo", 5).await?;
    report(
        &format!("with {CONFIGMAPS} unrelated ConfigMaps"),
        &f,
        latency,
    );

    // 100 LogPlayers x 10 Shards.
    h.cp.kubectl(&["create", "namespace", UNRUN_NAMESPACE])?;
    let mut objs = String::new();
    for l in 0..LOGPLAYERS {
        objs.push_str(&format!(
            "---\napiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata:\n  name: lp{l}\n  namespace: {UNRUN_NAMESPACE}\n\
             spec:\n  replicas: 1\n  logStore:\n    external:\n      endpoint: \"127.0.0.1:9\"\n  shardSelector:\n    matchLabels:\n      lp: lp{l}\n"
        ));
        let width = 16384 / SHARDS_EACH;
        for s in 0..SHARDS_EACH {
            let start = s * width;
            let end = if s + 1 == SHARDS_EACH {
                16383
            } else {
                start + width - 1
            };
            objs.push_str(&format!(
                "---\napiVersion: logplayer.io/v1alpha1\nkind: Shard\nmetadata:\n  name: lp{l}-s{s}\n  namespace: {UNRUN_NAMESPACE}\n  labels: {{lp: lp{l}}}\n\
                 spec:\n  logPlayer: lp{l}\n  slots: [{{start: {start}, end: {end}}}]\n  external:\n    endpoint: \"127.0.0.1:9\"\n"
            ));
        }
    }
    let t = Instant::now();
    write_and_apply(h, "scale.yaml", &objs)?;
    let applied = t.elapsed();
    wait_for(
        &format!("all {LOGPLAYERS} LogPlayers with a status for their generation"),
        600 * SECOND,
        SECOND,
        || async {
            let out =
                h.cp.kubectl(&["-n", UNRUN_NAMESPACE, "get", "logplayers", "-o", "json"])
                    .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            let done = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|lp| {
                    lp["status"]["observedGeneration"] == lp["metadata"]["generation"]
                        && lp["status"]["problems"].is_array()
                })
                .count();
            if done == LOGPLAYERS {
                Ok(Some(()))
            } else {
                Err(format!("{done} of {LOGPLAYERS}"))
            }
        },
    )
    .await?;
    eprintln!(
        "[e2e bench] {LOGPLAYERS} LogPlayers x {SHARDS_EACH} Shards applied in {applied:.1?}, all with a status {:.1?} after the apply",
        t.elapsed()
    );
    tokio::time::sleep(20 * SECOND).await; // one resync of everything
    let f = footprint(h).await?;
    let latency = change_latency(h, UNRUN_NAMESPACE, "lp7", 5).await?;
    report(
        &format!("with {LOGPLAYERS} LogPlayers x {SHARDS_EACH} Shards more"),
        &f,
        latency,
    );
    for ns in [UNRUN_NAMESPACE, NOISE_NS] {
        h.cp.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    }
    Ok(())
}
