//! Scenario i: operator failover. The chart runs two operator replicas behind the Lease
//! `logplayer-operator`; the leading one is SIGKILLed and its restart held past the lease, the
//! standby takes the Lease, and a change to the LogPlayer made after the takeover is
//! reconciled (the player Deployment follows `spec.replicas`, the status catches up with the
//! generation and Ready is True). The change is then undone so that scenario h finds the
//! example as scenario c left it.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{DEMO_NS, Harness, OPERATOR_NS, SECOND, condition, get_json, ready_pods};
use crate::cluster::wait_for;

/// The operator's Lease (the chart's `leaseName`), in the release namespace.
const OPERATOR_LEASE: &str = "logplayer-operator";
const OPERATORS: &str =
    "app.kubernetes.io/instance=logplayer-operator,app.kubernetes.io/name=logplayer-operator";
const PLAYERS: &str = "app.kubernetes.io/instance=demo,app.kubernetes.io/component=player";
/// How much longer than the operator's lease the killed leader's restart is held.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// Holder, leaseTransitions and leaseDurationSeconds of the operator Lease.
async fn operator_lease(h: &Harness) -> Result<(String, i32, i32), String> {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), OPERATOR_NS);
    let l = leases
        .get_opt(OPERATOR_LEASE)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no Lease {OPERATOR_NS}/{OPERATOR_LEASE}"))?;
    let s = l.spec.unwrap_or_default();
    Ok((
        s.holder_identity.unwrap_or_default(),
        s.lease_transitions.unwrap_or(0),
        s.lease_duration_seconds.unwrap_or(0),
    ))
}

/// `kubectl -n demo patch logplayer demo` to `replicas` player pods; returns the generation
/// the patch made.
fn patch_replicas(h: &Harness, replicas: i32) -> anyhow::Result<i64> {
    let patch = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
    let out = h.cp.kubectl(&[
        "-n",
        DEMO_NS,
        "patch",
        "logplayer",
        "demo",
        "--type",
        "merge",
        "-p",
        &patch,
        "-o",
        "json",
    ])?;
    let lp: Value = serde_json::from_str(&out).context("parsing the patched LogPlayer")?;
    ensure!(
        lp.pointer("/spec/replicas").and_then(Value::as_i64) == Some(i64::from(replicas)),
        "LogPlayer demo after patching replicas to {replicas}: spec {}",
        lp.get("spec").cloned().unwrap_or_default()
    );
    lp.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .context("the patched LogPlayer has no metadata.generation")
}

/// Waits until the operator has reconciled LogPlayer demo at `generation` (or later) with
/// `replicas` player pods: the Deployment asks for them, they exist and are ready, the status
/// describes the current generation and Ready is True.
async fn wait_reconciled(
    h: &Harness,
    replicas: i32,
    generation: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), DEMO_NS);
    let what = format!(
        "LogPlayer demo reconciled at generation >= {generation} with {replicas} ready players \
         (Deployment demo-player spec.replicas {replicas}, status.observedGeneration = \
         metadata.generation, Ready=True)"
    );
    wait_for(&what, timeout, SECOND / 2, || async {
        let d = deployments
            .get("demo-player")
            .await
            .map_err(|e| e.to_string())?;
        let d_replicas = d.spec.as_ref().and_then(|s| s.replicas);
        let lp = get_json(h, "logplayer", "demo").await?;
        let gen_ = lp.pointer("/metadata/generation").and_then(Value::as_i64);
        let observed = lp
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        let st_replicas = lp.pointer("/status/replicas").and_then(Value::as_i64);
        let st_ready = lp.pointer("/status/readyReplicas").and_then(Value::as_i64);
        let ready = condition(&lp, "Ready");
        let ready_pods = ready_pods(&h.client, DEMO_NS, PLAYERS).await?.len();
        let want = Some(i64::from(replicas));
        if d_replicas == Some(replicas)
            && gen_ >= Some(generation)
            && observed == gen_
            && st_replicas == want
            && st_ready == want
            && ready_pods == replicas as usize
            && ready.as_ref().is_some_and(|c| c["status"] == "True")
        {
            Ok(Some(()))
        } else {
            Err(format!(
                "Deployment spec.replicas {d_replicas:?}; LogPlayer generation {gen_:?} \
                 observedGeneration {observed:?} status.replicas {st_replicas:?} \
                 readyReplicas {st_ready:?}; {ready_pods} ready player pods; Ready {ready:?}"
            ))
        }
    })
    .await
}

pub(crate) async fn operator_failover(h: &Harness) -> anyhow::Result<()> {
    // The normal state: two Ready operator pods, one of which holds the Lease.
    let (old, old_transitions, lease_secs) = wait_for(
        "the operator Lease held by a Ready operator pod, with a Ready standby",
        60 * SECOND,
        SECOND / 2,
        || async {
            let (holder, transitions, secs) = operator_lease(h).await?;
            let ready = ready_pods(&h.client, OPERATOR_NS, OPERATORS).await?;
            let names: Vec<String> = ready.iter().map(|p| p.name_any()).collect();
            if names.contains(&holder) && names.len() >= 2 {
                Ok(Some((holder, transitions, secs)))
            } else {
                Err(format!(
                    "holder {holder:?} leaseTransitions {transitions}; ready operators {names:?}"
                ))
            }
        },
    )
    .await?;
    ensure!(
        lease_secs > 0,
        "the operator Lease has leaseDurationSeconds {lease_secs}"
    );
    let lease = Duration::from_secs(lease_secs as u64);
    let generation = get_json(h, "logplayer", "demo")
        .await
        .map_err(anyhow::Error::msg)?
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .context("LogPlayer demo has no metadata.generation")?;
    wait_reconciled(h, 3, generation, 60 * SECOND).await?;

    // Restarted at once, the killed leader would renew its own unexpired Lease (same
    // identity, its pod name) before the standby may take it; hold its restart past it.
    let hold = lease + HOLD_MARGIN;
    h.node.hold_next_restart(OPERATOR_NS, &old, hold)?;
    let t0 = Instant::now();
    h.node.signal(OPERATOR_NS, &old, Signal::SIGKILL)?;
    let (new, new_transitions, takeover) = wait_for(
        &format!(
            "the standby operator to take the Lease {OPERATOR_NS}/{OPERATOR_LEASE} from the \
             killed {old} (leaseTransitions {old_transitions}, lease {lease_secs}s)"
        ),
        lease + 10 * SECOND,
        Duration::from_millis(100),
        || async {
            let (holder, transitions, _) = operator_lease(h).await?;
            if !holder.is_empty() && holder != old && transitions > old_transitions {
                Ok(Some((holder, transitions, t0.elapsed())))
            } else {
                Err(format!("holder {holder:?} leaseTransitions {transitions}"))
            }
        },
    )
    .await?;
    eprintln!(
        "[e2e] operator takeover: {old} SIGKILLed -> {new} holds the Lease {OPERATOR_LEASE} \
         (leaseTransitions {old_transitions} -> {new_transitions}) after {takeover:.1?} \
         (lease {lease_secs}s, restart held {hold:?})"
    );
    ensure!(
        takeover < hold,
        "the Lease moved to {new} only {takeover:.1?} after the kill, after the killed {old} \
         was restarted ({hold:?})"
    );

    // A change only a leading operator reconciles.
    let t = Instant::now();
    let generation = patch_replicas(h, 2)?;
    wait_reconciled(h, 2, generation, 60 * SECOND).await?;
    eprintln!(
        "[e2e] replicas 3 -> 2 reconciled by {new} {:.1?} after the patch ({:.1?} after the kill)",
        t.elapsed(),
        t0.elapsed()
    );

    // Back to the normal state for scenario h.
    let generation = patch_replicas(h, 3)?;
    wait_reconciled(h, 3, generation, 60 * SECOND).await?;

    // The killed operator came back as a Ready standby; the Lease stayed with the new leader.
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), OPERATOR_NS);
    wait_for(
        &format!("the killed {old} to be restarted and Ready, as a standby to {new}"),
        hold + 30 * SECOND,
        SECOND / 2,
        || async {
            let (holder, transitions, _) = operator_lease(h).await?;
            if holder != new || transitions != new_transitions {
                // Reported as the failure below.
                return Ok(Some(Err(format!(
                    "the Lease moved to {holder:?} (leaseTransitions {transitions}) after \
                     {new} took it (leaseTransitions {new_transitions})"
                ))));
            }
            let p = pods.get(&old).await.map_err(|e| e.to_string())?;
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map_or(0, |c| c.restart_count);
            let ready = ready_pods(&h.client, OPERATOR_NS, OPERATORS).await?;
            let names: Vec<String> = ready.iter().map(|p| p.name_any()).collect();
            if restarts >= 1 && names.contains(&old) {
                Ok(Some(Ok(())))
            } else {
                Err(format!(
                    "{old} restartCount {restarts}; ready operators {names:?}"
                ))
            }
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Scenario k: the namespace-scoped install. `helm upgrade --set watchNamespaces={demo}`
/// replaces the operator's ClusterRole by a Role in `demo`; the operator then still
/// reconciles the demo, and its ServiceAccount can do nothing outside `demo` (and its own
/// Lease).
pub(crate) async fn namespaced_install(h: &Harness) -> anyhow::Result<()> {
    let out = super::run_helm(
        h,
        &[
            "upgrade",
            "logplayer-operator",
            "charts/logplayer-operator",
            "-n",
            OPERATOR_NS,
            "--reuse-values",
            "--set",
            &format!("watchNamespaces={{{DEMO_NS}}}"),
            "--wait=false",
        ],
    )?;
    ensure!(
        out.status.success(),
        "helm upgrade to watchNamespaces={{{DEMO_NS}}} failed:\n{}",
        super::output_text(&out)
    );
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), OPERATOR_NS);
    wait_for(
        "the operator pods restarted with --watch-namespace and ready",
        120 * SECOND,
        SECOND,
        || async {
            let d = deployments
                .get("logplayer-operator")
                .await
                .map_err(|e| e.to_string())?;
            let args = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|s| s.containers[0].args.clone().unwrap_or_default())
                .unwrap_or_default();
            let st = d.status.unwrap_or_default();
            let settled = st.updated_replicas == st.replicas && st.ready_replicas == st.replicas;
            if args.iter().any(|a| a == "--watch-namespace") && settled && st.replicas == Some(2) {
                Ok(Some(()))
            } else {
                Err(format!("args {args:?}; status {st:?}"))
            }
        },
    )
    .await?;
    for (args, want) in [
        (&["create", "deployments", "-n", DEMO_NS][..], true),
        (
            &[
                "patch",
                "logplayers.logplayer.io",
                "--subresource=status",
                "-n",
                DEMO_NS,
            ][..],
            true,
        ),
        (
            &["update", "leases/logplayer-operator", "-n", OPERATOR_NS][..],
            true,
        ),
        (&["create", "deployments", "-n", "default"][..], false),
        (&["list", "logplayers.logplayer.io", "-A"][..], false),
        (&["get", "leases", "-n", "kube-system"][..], false),
        (&["update", "leases", "-n", "kube-system"][..], false),
        // Secrets by name in the watched namespace (the LogPlayers' certificates), none
        // elsewhere, and never listed.
        (&["get", "secrets", "-n", DEMO_NS][..], true),
        (&["get", "secrets", "-n", "default"][..], false),
        (&["list", "secrets", "-n", DEMO_NS][..], false),
    ] {
        let got = super::can_i(h, args)?;
        ensure!(
            got == want,
            "namespace-scoped: kubectl auth can-i {} --as=<operator>: got {got}, want {want}",
            args.join(" ")
        );
    }
    // It still does its job in demo: a change of replicas is reconciled, then undone.
    let t = Instant::now();
    let generation = patch_replicas(h, 2)?;
    wait_reconciled(h, 2, generation, 90 * SECOND).await?;
    eprintln!(
        "[e2e] namespace-scoped operator reconciled replicas 2 in {:.1?}",
        t.elapsed()
    );
    let generation = patch_replicas(h, 3)?;
    wait_reconciled(h, 3, generation, 90 * SECOND).await?;
    Ok(())
}
