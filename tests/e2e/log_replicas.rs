//! Scenario l: the demo's log replicas scaled 3 → 5 → 3 by patching
//! `spec.logStore.managed.replicas`. The operator grows the StatefulSet and adds each new
//! replica to the Raft group (a learner first, then a voter), then removes the two from the
//! group before their pods go; `status.logStore` follows each step; every replica serves the
//! same log, and delivery stays exactly-once under load throughout.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use serde_json::Value;

use super::{DEMO_NS, Harness, SECOND, demo_log, get_json, log_replicas};
use crate::cluster::wait_for;

/// `kubectl patch` of the demo's log replica count.
fn patch_log_replicas(h: &Harness, n: i32) -> anyhow::Result<()> {
    let patch = format!(r#"{{"spec":{{"logStore":{{"managed":{{"replicas":{n}}}}}}}}}"#);
    h.cp.kubectl(&[
        "-n",
        DEMO_NS,
        "patch",
        "logplayer",
        "demo",
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    Ok(())
}

/// Waits until `n` replicas vote, a leader is known, and the StatefulSet runs `n` pods.
async fn wait_voters(h: &Harness, n: i64) -> anyhow::Result<()> {
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), DEMO_NS);
    wait_for(
        &format!("{n} voting log replicas and {n} pods"),
        180 * SECOND,
        SECOND,
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            let log = lp.pointer("/status/logStore").cloned().unwrap_or_default();
            let voters = log.get("voters").and_then(Value::as_i64);
            let leader = log.get("leader").and_then(Value::as_str);
            let sts = sets.get("demo-logstore").await.map_err(|e| e.to_string())?;
            let pods = sts.spec.as_ref().and_then(|s| s.replicas);
            let have = sts.status.as_ref().map(|s| s.replicas);
            if voters == Some(n)
                && leader.is_some()
                && pods == Some(n as i32)
                && have == Some(n as i32)
            {
                Ok(Some(()))
            } else {
                Err(format!(
                    "status.logStore {log}; StatefulSet replicas {pods:?}, pods {have:?}"
                ))
            }
        },
    )
    .await
}

pub async fn log_replicas_scaled(h: &Harness) -> anyhow::Result<()> {
    use logplayer::harness::bench::{LoadSpec, drive};
    let (log, map) = demo_log(h).await?;
    let spec = LoadSpec {
        rate: 200,
        duration: Duration::from_secs(40),
        count: 0,
        concurrency: 8,
        keys_per_txn: 4,
        key_space: 200,
        txn_bytes: 200,
        seed: 7,
    };
    let l2 = log.clone();
    let running = tokio::spawn(async move { drive(&l2, &spec, None).await });

    patch_log_replicas(h, 5)?;
    wait_voters(h, 5).await?;
    let five = logplayer::client::Log::connect(&log_replicas(5)).await?;
    let (_, last) = five.bounds().await?;
    for i in 0..5 {
        let one = logplayer::client::Log::connect(&format!(
            "demo-logstore-{i}.demo-logstore.{DEMO_NS}.svc:7000"
        ))
        .await
        .with_context(|| format!("replica {}", i + 1))?;
        let first = one.bounds().await?.0;
        wait_for(
            &format!("replica {} to serve index {last}", i + 1),
            30 * SECOND,
            SECOND / 2,
            || async {
                let (_, l) = one.bounds().await.map_err(|e| e.to_string())?;
                if l >= last {
                    Ok(Some(()))
                } else {
                    Err(format!("at {l}"))
                }
            },
        )
        .await?;
        let from = first.max(last.saturating_sub(50)).max(1);
        ensure!(
            one.read_range(from, last).await? == log.read_range(from, last).await?,
            "replica {} serves another log",
            i + 1
        );
    }
    eprintln!("[e2e] five log replicas vote and serve the same log up to {last}");

    patch_log_replicas(h, 3)?;
    wait_voters(h, 3).await?;
    eprintln!("[e2e] back to three log replicas");

    let report = running.await?;
    ensure!(report.failed == 0, "{} appends failed", report.failed);
    let result = logplayer::harness::check::check(&log, &map, Duration::from_secs(60)).await?;
    eprintln!("[e2e] {} entries checked:\n{result}", result.entries);
    ensure!(result.pass, "exactly-once violated:\n{result}");
    Ok(())
}
