//! Scenarios g and h: invalid resources (refused by the API server, or accepted and reported
//! in the LogPlayer's status), and cleanup (garbage collection through owner references,
//! `helm uninstall` keeping the CRDs).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;

use super::{CRD_NAMES, DEMO_NS, Harness, OPERATOR_NS, SECOND, condition, output_text, run_helm};
use crate::cluster::wait_for;

/// The namespace of the LogPlayer whose Shard nobody serves.
const LONELY_NS: &str = "lonely";

/// Writes `yaml` into the control plane's directory and runs `kubectl -n NS apply -f` on it.
fn apply(h: &Harness, ns: &str, file: &str, yaml: &str) -> anyhow::Result<std::process::Output> {
    let path = h.cp.dir().join(file);
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    let path = path.display().to_string();
    h.cp.kubectl_raw(&["-n", ns, "apply", "-f", &path])
}

/// `apply`, failing with `failure` and kubectl's output unless it succeeds.
fn apply_ok(h: &Harness, ns: &str, file: &str, yaml: &str, failure: &str) -> anyhow::Result<()> {
    let out = apply(h, ns, file, yaml)?;
    ensure!(out.status.success(), "{failure}:\n{}", output_text(&out));
    Ok(())
}

/// Waits (up to a minute) until LogPlayer `ns/name` is Degraded=True for `reason`, naming
/// every one of `words`; returns the message.
async fn wait_degraded(
    h: &Harness,
    ns: &str,
    name: &str,
    reason: &str,
    words: &[&str],
) -> anyhow::Result<String> {
    let want = ("True", reason);
    wait_condition(h, ns, name, "Degraded", want, words, 60 * SECOND).await
}

/// Waits until the demo LogPlayer has condition `ty` with (status, reason) `want`.
async fn wait_demo(
    h: &Harness,
    ty: &str,
    want: (&str, &str),
    timeout: Duration,
) -> anyhow::Result<String> {
    wait_condition(h, DEMO_NS, "demo", ty, want, &[], timeout).await
}

/// `logplayer_yaml(name, extra)` and a Shard `<name>-s` owning every slot, at an address
/// nobody serves (so the LogPlayer has something to build its objects for).
fn logplayer_with_shard(name: &str, extra: &str) -> String {
    format!(
        "{}---\n{}",
        logplayer_yaml(name, extra),
        shard_yaml(
            &format!("{name}-s"),
            &format!("logplayer.io/instance: {name}"),
            &[(0, 16383)],
            "127.0.0.1:9"
        )
        .replace("logPlayer: demo", &format!("logPlayer: {name}"))
    )
}

/// A one-replica LogPlayer reading the demo's LogStore, selecting the Shards labelled with
/// its own name, with `extra` appended to its spec. Its certificates come from the demo's
/// CA (copied into its namespace by [`borrow_demo_ca`]), which the demo's LogStore trusts.
fn logplayer_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: 1\n  logStore:\n    external:\n      endpoint: \"demo-logstore.demo.svc:7000\"\n\
         \u{20} shardSelector:\n    matchLabels:\n      logplayer.io/instance: {name}\n\
         \u{20} tls:\n    caSecret: demo-ca\n{extra}"
    )
}

/// Copies the demo's CA Secret into `ns` (bring-your-own-CA: the LogPlayers there issue
/// their certificates from it, so the demo's servers accept them).
async fn borrow_demo_ca(h: &Harness, ns: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let demo = kube::api::Api::<Secret>::namespaced(h.client.clone(), DEMO_NS)
        .get("demo-ca")
        .await?;
    let copy = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("demo-ca".into()),
            ..Default::default()
        },
        type_: demo.type_,
        data: demo.data,
        ..Default::default()
    };
    kube::api::Api::<Secret>::namespaced(h.client.clone(), ns)
        .create(&Default::default(), &copy)
        .await?;
    Ok(())
}

fn shard_yaml(name: &str, labels: &str, slots: &[(i64, i64)], endpoint: &str) -> String {
    let slots: String = slots
        .iter()
        .map(|(s, e)| format!("    - {{start: {s}, end: {e}}}\n"))
        .collect();
    format!(
        "apiVersion: logplayer.io/v1alpha1\nkind: Shard\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n\
         spec:\n  logPlayer: demo\n  slots:\n{slots}  external:\n    endpoint: \"{endpoint}\"\n"
    )
}

/// A child process, killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl get KIND NAME -n NS -o json`, parsed.
fn get(h: &Harness, ns: &str, kind: &str, name: &str) -> Result<Value, String> {
    let mut args = vec!["get", kind, name, "-o", "json"];
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    let out = h.cp.kubectl(&args).map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

/// Waits until LogPlayer `ns/name` has condition `ty` with `status` and `reason`, and its
/// message contains every one of `words`; returns the message.
async fn wait_condition(
    h: &Harness,
    ns: &str,
    name: &str,
    ty: &str,
    (status, reason): (&str, &str),
    words: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let what = format!("LogPlayer {ns}/{name} {ty}={status} reason {reason} naming {words:?}");
    wait_for(&what, timeout, SECOND / 2, || async {
        let lp = get(h, ns, "logplayer", name)?;
        let c = condition(&lp, ty).unwrap_or_default();
        let msg = c["message"].as_str().unwrap_or_default().to_owned();
        if c["status"] == status && c["reason"] == reason && words.iter().all(|w| msg.contains(w)) {
            Ok(Some(msg))
        } else {
            Err(format!("{ty}: {c}"))
        }
    })
    .await
}

// ---- g. invalid resources ------------------------------------------------------------------

pub(crate) async fn invalid_resources(h: &Harness) -> anyhow::Result<()> {
    let ep = "nobody.invalid:1";
    let zero = "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata:\n  name: zero\n\
                spec:\n  replicas: 0\n  logStore:\n    external:\n      endpoint: \"x:1\"\n";
    // Refused by the schema or its CEL rules: (what, file, yaml, words of kubectl's error).
    let refused: Vec<(&str, &str, String, &[&str])> = vec![
        (
            "a LogPlayer with replicas 0",
            "zero.yaml",
            zero.to_owned(),
            &["spec.replicas", "greater than or equal to 1"],
        ),
        (
            "a Shard whose range ends before it starts",
            "bad-reversed.yaml",
            shard_yaml("bad-reversed", "", &[(100, 50)], ep),
            &["spec.slots[0]", "start must not be after end"],
        ),
        (
            "a Shard starting past slot 16383",
            "bad-bounds.yaml",
            shard_yaml("bad-bounds", "", &[(16384, 16390)], ep),
            &["spec.slots[0].start", "less than or equal to 16383"],
        ),
        (
            "a Shard with unordered ranges",
            "bad-order.yaml",
            shard_yaml("bad-order", "", &[(200, 300), (0, 99)], ep),
            &["spec.slots", "ascending order of start"],
        ),
        (
            "a Shard with overlapping ranges",
            "bad-overlap.yaml",
            shard_yaml("bad-overlap", "", &[(0, 100), (50, 150)], ep),
            &["spec.slots", "must not overlap"],
        ),
        (
            "a Shard whose commit may wait 200ms",
            "bad-delay.yaml",
            shard_yaml("bad-delay", "", &[(0, 99)], ep).replace(
                "  external:\n    endpoint: \"nobody.invalid:1\"\n",
                "  managed:\n    storage: 1Gi\n  commitDelay: 200ms\n",
            ),
            &["spec.commitDelay", "at most 100ms"],
        ),
        (
            "an external Shard with a commit delay",
            "bad-external-delay.yaml",
            shard_yaml("bad-external-delay", "", &[(0, 99)], ep) + "  commitDelay: 5ms\n",
            &["spec", "commitDelay applies to a managed shard only"],
        ),
        (
            "a LogPlayer whose players request `lots` of CPU",
            "bad-cpu.yaml",
            logplayer_yaml("bad-cpu", "  resources:\n    requests:\n      cpu: lots\n"),
            &["spec.resources.requests.cpu", "should match"],
        ),
        (
            "a LogPlayer with a managed LogStore of size 0",
            "bad-storage.yaml",
            zero.replace("replicas: 0", "replicas: 1")
                .replace("name: zero", "name: bad-storage")
                .replace(
                    "external:\n      endpoint: \"x:1\"",
                    "managed:\n      storage: \"0\"",
                ),
            &["spec.logStore.managed.storage", "should match"],
        ),
        (
            "a LogPlayer with two log replicas",
            "even-log.yaml",
            zero.replace("replicas: 0", "replicas: 1")
                .replace("name: zero", "name: even-log")
                .replace(
                    "external:\n      endpoint: \"x:1\"",
                    "managed:\n      storage: 1Gi\n      replicas: 2",
                ),
            &["spec.logStore.managed", "must be odd"],
        ),
        (
            "a LogPlayer in CertManager mode without an issuer",
            "no-issuer.yaml",
            logplayer_yaml("no-issuer", "    mode: CertManager\n"),
            &["spec.tls", "needs tls.issuerRef"],
        ),
        (
            "a LogPlayer with an issuer but not in CertManager mode",
            "stray-issuer.yaml",
            logplayer_yaml("stray-issuer", "    issuerRef:\n      name: corp-ca\n"),
            &["spec.tls", "used only with tls.mode CertManager"],
        ),
        (
            "a LogPlayer of an external LogStore whose name is 49 characters",
            "long-name.yaml",
            logplayer_yaml(&"l".repeat(49), ""),
            &["48 with an external one", "NAME-player-metrics"],
        ),
        (
            "a LogPlayer of a managed LogStore whose name is 44 characters",
            "long-managed.yaml",
            zero.replace("replicas: 0", "replicas: 1")
                .replace("name: zero", &format!("name: {}", "l".repeat(44)))
                .replace(
                    "external:\n      endpoint: \"x:1\"",
                    "managed:\n      storage: 1Gi",
                ),
            &[
                "at most 43 characters with a managed LogStore",
                "NAME-logstore-HASH",
            ],
        ),
        (
            "a LogPlayer whose name starts with a digit (no Service can be named after it)",
            "digit.yaml",
            logplayer_yaml("1digit", ""),
            &["starts with a letter"],
        ),
        (
            "a managed Shard whose name is 47 characters",
            "long-shard.yaml",
            shard_yaml(&"s".repeat(47), "", &[(0, 99)], ep).replace(
                "  external:\n    endpoint: \"nobody.invalid:1\"\n",
                "  managed:\n    storage: 1Gi\n",
            ),
            &["at most 46 characters when managed", "NAME-shard-HASH"],
        ),
        (
            "a Shard naming a LogPlayer no name can be",
            "bad-owner.yaml",
            shard_yaml("bad-owner", "", &[(0, 99)], ep)
                .replace("logPlayer: demo", "logPlayer: Demo"),
            &["spec.logPlayer", "should match"],
        ),
        (
            "a LogPlayer whose CA Secret is named `Bad Name`",
            "bad-ca.yaml",
            logplayer_yaml("bad-ca", "").replace("caSecret: demo-ca", "caSecret: \"Bad Name\""),
            &["spec.tls.caSecret", "should match"],
        ),
        (
            "a LogPlayer granting the writer id `a b` (no URI can name it)",
            "bad-writer.yaml",
            logplayer_yaml("bad-writer", "    writerIds: [\"a b\"]\n"),
            &["spec.tls.writerIds[0]", "should match"],
        ),
        (
            "a LogPlayer whose writers list is empty (no pod could append)",
            "no-writers.yaml",
            logplayer_yaml("no-writers", "  networkPolicy:\n    writers: []\n"),
            &[
                "spec.networkPolicy.writers",
                "an empty list lets no pod append",
            ],
        ),
        (
            "a LogPlayer whose lease lasts 2h",
            "bad-lease.yaml",
            logplayer_yaml(
                "bad-lease",
                "  lease:\n    leaseDuration: 2h\n    renewDeadline: 1s\n    retryPeriod: 250ms\n",
            ),
            &["spec.lease", "leaseDuration is at most 1h"],
        ),
        (
            "a LogPlayer that saves its cursors every 2h",
            "slow-checkpoint.yaml",
            logplayer_yaml("slow-checkpoint", "  checkpointInterval: 2h\n"),
            &[
                "spec.checkpointInterval",
                "checkpointInterval must be greater than zero and at most 1h",
            ],
        ),
        (
            "a LogPlayer whose lease lasts 99999999h (past any duration the API server reads)",
            "huge-lease.yaml",
            logplayer_yaml(
                "huge-lease",
                "  lease:\n    leaseDuration: 99999999h\n    renewDeadline: 1s\n    retryPeriod: 250ms\n",
            ),
            &["spec.lease.leaseDuration", "should match"],
        ),
        (
            "a LogPlayer taking entries of 2 GiB",
            "huge-entry-limit.yaml",
            logplayer_yaml("huge-entry-limit", "  maxEntryBytes: 2147483648\n"),
            &["spec.maxEntryBytes", "less than or equal to 1073741824"],
        ),
        (
            "a LogPlayer taking entries of 300 MB (more than a log replica carries)",
            "bad-entry-limit.yaml",
            logplayer_yaml("bad-entry-limit", "  maxEntryBytes: 300000000\n").replace(
                "external:\n      endpoint: \"demo-logstore.demo.svc:7000\"",
                "managed:\n      storage: 1Gi",
            ),
            &[
                "spec",
                "maxEntryBytes is at most 266076160 with a managed LogStore",
            ],
        ),
        (
            "a LogPlayer whose queue per shard is 2 GiB",
            "bad-queue.yaml",
            logplayer_yaml("bad-queue", "  delivery:\n    queueBytes: 2147483648\n"),
            &[
                "spec.delivery.queueBytes",
                "less than or equal to 1073741824",
            ],
        ),
    ];
    for (what, file, yaml, words) in &refused {
        let out = apply(h, DEMO_NS, file, yaml)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "the API server accepted {what}:\n{}\n{yaml}",
            output_text(&out)
        );
        for w in *words {
            ensure!(
                stderr.contains(w),
                "kubectl's error for {what} does not name {w:?}:\n{stderr}"
            );
        }
        eprintln!("[e2e] refused {what}: {}", stderr.trim());
    }
    let names =
        h.cp.kubectl(&["-n", DEMO_NS, "get", "logplayers,shards", "-o", "name"])?;
    ensure!(
        !names.contains("/zero")
            && !names.contains("/bad-")
            && !names.contains("/lll")
            && !names.contains("/1digit"),
        "a refused object exists:\n{names}"
    );
    // A name fit for an external LogStore only: accepted so, refused when switched to a
    // managed one (whose pods' labels it would not fit). Paused: only its name matters.
    let external = zero.replace("replicas: 0", "replicas: 1").replace(
        "name: zero",
        &format!(
            "name: {}\n  annotations:\n    logplayer.io/paused: \"true\"",
            "l".repeat(44)
        ),
    );
    apply_ok(
        h,
        DEMO_NS,
        "long-external.yaml",
        &external,
        "an external LogPlayer of 44 characters was refused",
    )?;
    let managed = external.replace(
        "external:\n      endpoint: \"x:1\"",
        "managed:\n      storage: 1Gi",
    );
    let out = apply(h, DEMO_NS, "long-external.yaml", &managed)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("at most 43 characters with a managed LogStore"),
        "a LogPlayer of 44 characters was switched to a managed LogStore:\n{}",
        output_text(&out)
    );
    eprintln!(
        "[e2e] refused switching a long-named LogPlayer to a managed LogStore: {}",
        stderr.trim()
    );
    h.cp.kubectl(&["-n", DEMO_NS, "delete", "logplayer", &"l".repeat(44)])?;
    status_tells_the_truth(h).await?;
    pods_the_api_server_refuses(h).await?;

    // Accepted, but it owns slots of s0: the LogPlayer is Degraded naming both shards.
    let t = Instant::now();
    let yaml = shard_yaml(
        "twin",
        "logplayer.io/instance: demo",
        &[(100, 200)],
        "s0-shard.demo.svc:7100",
    );
    apply_ok(
        h,
        DEMO_NS,
        "twin.yaml",
        &yaml,
        "a Shard overlapping another was refused",
    )?;
    let msg = wait_degraded(h, DEMO_NS, "demo", "SlotsOverlap", &["twin", "s0"]).await?;
    eprintln!(
        "[e2e] Degraded SlotsOverlap after {:.1?}: {msg}",
        t.elapsed()
    );
    // The players keep the last valid map, which does not have the twin: it is not Ready,
    // naming the map, whatever its address answers.
    let ready = wait_for(
        "Shard twin: Ready False, NotInShardMap",
        60 * SECOND,
        SECOND,
        || async {
            let twin = get(h, DEMO_NS, "shard", "twin")?;
            let ready = condition(&twin, "Ready").unwrap_or_default();
            if ready["status"] == "False" && ready["reason"] == "NotInShardMap" {
                Ok(Some(ready))
            } else {
                Err(ready.to_string())
            }
        },
    )
    .await?;
    ensure!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("demo-shard-map")),
        "{ready}"
    );
    // Its slots may shrink, never grow: a slot it gained would lack what s0 applied of it.
    let patch_slots = |slots: &str| {
        let patch = format!(r#"{{"spec":{{"slots":{slots}}}}}"#);
        h.cp.kubectl_raw(&[
            "-n", DEMO_NS, "patch", "shard", "twin", "--type", "merge", "-p", &patch,
        ])
    };
    let out = patch_slots(r#"[{"start":100,"end":300}]"#)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("slots can only shrink"),
        "a Shard's slots grew:\n{}",
        output_text(&out)
    );
    eprintln!("[e2e] refused growing a Shard's slots: {}", stderr.trim());
    // Split, then merged again (the same slots), then shrunk: each accepted.
    for slots in [
        r#"[{"start":100,"end":150},{"start":151,"end":200}]"#,
        r#"[{"start":100,"end":200}]"#,
        r#"[{"start":100,"end":150},{"start":180,"end":200}]"#,
    ] {
        let out = patch_slots(slots)?;
        ensure!(
            out.status.success(),
            "a Shard's slots could not become {slots}:\n{}",
            output_text(&out)
        );
    }
    // A slot freed a moment ago is gone for good: it may have been given to another shard.
    let out = patch_slots(r#"[{"start":100,"end":160},{"start":180,"end":200}]"#)?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("slots can only shrink"),
        "a Shard took back a slot it had freed:\n{}",
        output_text(&out)
    );
    h.cp.kubectl(&["-n", DEMO_NS, "delete", "shard", "twin"])?;
    wait_demo(h, "Degraded", ("False", "AsExpected"), 60 * SECOND).await?;
    wait_demo(h, "Ready", ("True", "Delivering"), 60 * SECOND).await?;

    // A Shard nobody listens for, in a LogPlayer of its own (reading the demo's LogStore;
    // it never trims it: retainLog is false).
    h.cp.kubectl(&["create", "namespace", LONELY_NS])?;
    borrow_demo_ca(h, LONELY_NS).await?;
    let lonely = "apiVersion: logplayer.io/v1alpha1\nkind: LogPlayer\nmetadata:\n  name: lonely\n\
                  spec:\n  replicas: 1\n  retainLog: false\n  logStore:\n    external:\n      \
                  endpoint: \"demo-logstore.demo.svc:7000\"\n  shardSelector:\n    matchLabels:\n      \
                  logplayer.io/instance: lonely\n  tls:\n    caSecret: demo-ca\n---\n"
        .to_owned()
        + &shard_yaml(
            "far",
            "logplayer.io/instance: lonely",
            &[(0, 16383)],
            "127.0.0.1:9",
        )
        .replace("logPlayer: demo", "logPlayer: lonely");
    apply_ok(
        h,
        LONELY_NS,
        "lonely.yaml",
        &lonely,
        "applying the lonely LogPlayer",
    )?;
    let msg = wait_degraded(h, LONELY_NS, "lonely", "ShardUnreachable", &["far"]).await?;
    eprintln!("[e2e] Degraded ShardUnreachable: {msg}");
    let far = get(h, LONELY_NS, "shard", "far").map_err(anyhow::Error::msg)?;
    let ready = condition(&far, "Ready").unwrap_or_default();
    ensure!(
        ready["status"] == "False" && ready["reason"] == "ShardUnreachable",
        "Shard lonely/far Ready: {ready}"
    );
    entry_limits_that_disagree(h).await?;
    h.cp.kubectl(&["delete", "namespace", LONELY_NS, "--wait=false"])?;
    wait_for(
        &format!("the namespace {LONELY_NS} to be deleted"),
        90 * SECOND,
        SECOND,
        || async {
            let out =
                h.cp.kubectl_raw(&["get", "namespace", LONELY_NS, "-o", "json"])
                    .map_err(|e| e.to_string())?;
            if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound") {
                return Ok(Some(()));
            }
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Err(format!("status {}", v["status"]))
        },
    )
    .await?;
    // The demo is untouched.
    wait_demo(h, "Ready", ("True", "Delivering"), 30 * SECOND).await?;
    Ok(())
}

/// A LogPlayer whose players take smaller entries than the log it reads (the demo's, 4 MiB)
/// says so: `EntryLimitMismatch`, from what the LogStore reports, and its crash-looping
/// player's last words; its managed shard, made with the same smaller limit, is not Ready
/// for it; and its limit cannot then be made smaller still.
async fn entry_limits_that_disagree(h: &Harness) -> anyhow::Result<()> {
    let t = Instant::now();
    let yaml = logplayer_with_shard("narrow", "  maxEntryBytes: 2097152\n").replace(
        "  external:\n    endpoint: \"127.0.0.1:9\"\n",
        "  managed:\n    storage: 1Gi\n",
    );
    apply_ok(
        h,
        LONELY_NS,
        "narrow.yaml",
        &yaml,
        "applying a LogPlayer with a 2 MiB entry limit",
    )?;
    let words = [
        (
            "EntryLimitMismatch",
            "accepts entries of up to 4194304 bytes, more than spec.maxEntryBytes 2097152",
        ),
        (
            "EntryLimitMismatch",
            "shard narrow-s takes entries of up to 2097152 bytes, less than the LogStore's \
             4194304",
        ),
        (
            "CrashLoopBackOff",
            "accepts entries up to 4194304 bytes but this player was started with \
             --max-entry-bytes 2097152",
        ),
    ];
    let problems = wait_for(
        "LogPlayer lonely/narrow: the mismatch and its player's last words",
        90 * SECOND,
        SECOND,
        || async {
            let lp = get(h, LONELY_NS, "logplayer", "narrow")?;
            let problems = lp["status"]["problems"].clone();
            let has = |(reason, says): &(&str, &str)| {
                problems.as_array().into_iter().flatten().any(|p| {
                    p["reason"] == *reason
                        && p["message"].as_str().is_some_and(|m| m.contains(says))
                })
            };
            if words.iter().all(has) {
                Ok(Some(problems))
            } else {
                Err(problems.to_string())
            }
        },
    )
    .await?;
    eprintln!(
        "[e2e] entry limits disagree, said after {:.1?}: {problems}",
        t.elapsed()
    );
    let ready = wait_for(
        "Shard lonely/narrow-s Ready=False EntryLimitMismatch",
        30 * SECOND,
        SECOND / 2,
        || async {
            let c =
                condition(&get(h, LONELY_NS, "shard", "narrow-s")?, "Ready").unwrap_or_default();
            let says = "up to 2097152 bytes, less than its LogStore's 4194304";
            if c["status"] == "False"
                && c["reason"] == "EntryLimitMismatch"
                && c["message"].as_str().is_some_and(|m| m.contains(says))
            {
                Ok(Some(c))
            } else {
                Err(format!("Ready: {c}"))
            }
        },
    )
    .await?;
    eprintln!("[e2e] Shard lonely/narrow-s: {ready}");
    let out = h.cp.kubectl_raw(&[
        "-n",
        LONELY_NS,
        "patch",
        "logplayer",
        "narrow",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"maxEntryBytes":1048576}}"#,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("maxEntryBytes cannot shrink"),
        "a smaller maxEntryBytes was not refused:\n{}",
        output_text(&out)
    );
    eprintln!("[e2e] refused a smaller maxEntryBytes: {}", stderr.trim());
    // A managed server's volume stays as made: its StatefulSet's claims cannot change.
    let out = h.cp.kubectl_raw(&[
        "-n",
        LONELY_NS,
        "patch",
        "shard",
        "narrow-s",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"managed":{"storage":"2Gi"}}}"#,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("managed.storage and storageClassName cannot change"),
        "a managed Shard's storage changed:\n{}",
        output_text(&out)
    );
    eprintln!(
        "[e2e] refused a managed Shard's new storage: {}",
        stderr.trim()
    );
    Ok(())
}

/// Pods the API server refuses (a ResourceQuota of no pods) never exist, so no pod can name
/// the cause: the LogPlayer is Degraded `PodsNotCreated` with the quota's words, from its
/// Deployment's `ReplicaFailure` and its log's StatefulSet's `FailedCreate` Event (it used to
/// say only "0 of 1 pods ready" and "not running"). Scaled down then, its log's StatefulSet
/// shrinks at once (it kept its pods while nobody could tell the membership, even though no
/// group ever formed).
async fn pods_the_api_server_refuses(h: &Harness) -> anyhow::Result<()> {
    const NS: &str = "capped";
    h.cp.kubectl(&["create", "namespace", NS])?;
    h.cp.kubectl(&["create", "quota", "no-pods", "--hard=pods=0", "-n", NS])?;
    borrow_demo_ca(h, NS).await?;
    let t = Instant::now();
    let capped = logplayer_with_shard("capped", "").replace(
        "external:\n      endpoint: \"demo-logstore.demo.svc:7000\"",
        "managed:\n      storage: 1Gi\n      replicas: 3",
    );
    apply_ok(h, NS, "capped.yaml", &capped, "applying LogPlayer capped")?;
    let msg = wait_condition(
        h,
        NS,
        "capped",
        "Degraded",
        ("True", "PodsNotCreated"),
        &["cannot create its pods", "quota"],
        60 * SECOND,
    )
    .await?;
    eprintln!(
        "[e2e] Degraded PodsNotCreated after {:.1?}: {msg}",
        t.elapsed()
    );
    // The StatefulSet's Event triggers no reconciliation: it shows by the next resync (15 s).
    wait_for(
        "status.problems of capped to name the Deployment and the StatefulSet",
        40 * SECOND,
        SECOND,
        || async {
            let lp = get(h, NS, "logplayer", "capped")?;
            let problems = lp["status"]["problems"].to_string();
            if problems.contains("Deployment capped/capped-player")
                && problems.contains("StatefulSet capped/capped-logstore")
            {
                Ok(Some(()))
            } else {
                Err(problems)
            }
        },
    )
    .await?;
    // Scaled down before its group ever formed (no pod ran, no log id): the StatefulSet
    // shrinks at once; there is no voter whose pod it could take away.
    h.cp.kubectl(&[
        "patch",
        "logplayer",
        "capped",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"logStore":{"managed":{"replicas":1}}}}"#,
    ])?;
    wait_for(
        "StatefulSet capped-logstore to shrink to 1 (its group never formed)",
        30 * SECOND,
        SECOND,
        || async {
            let sts = get(h, NS, "statefulset", "capped-logstore")?;
            match sts["spec"]["replicas"].as_i64() {
                Some(1) => Ok(Some(())),
                other => Err(format!("spec.replicas {other:?}")),
            }
        },
    )
    .await?;
    h.cp.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

/// Status that tells the truth when something goes wrong: an apply only the API server can
/// refuse, pods that cannot be scheduled, a switch from a managed to an external LogStore,
/// and a Shard created before its LogPlayer.
async fn status_tells_the_truth(h: &Harness) -> anyhow::Result<()> {
    const NS: &str = "truth";
    h.cp.kubectl(&["create", "namespace", NS])?;
    borrow_demo_ca(h, NS).await?;

    // Requests above limits: the CRD cannot see it, the API server refuses the Deployment.
    let t = Instant::now();
    let strict = logplayer_with_shard(
        "strict",
        "  resources:\n    requests:\n      cpu: \"2\"\n    limits:\n      cpu: \"1\"\n",
    );
    apply_ok(h, NS, "strict.yaml", &strict, "applying LogPlayer strict")?;
    let msg = wait_condition(
        h,
        NS,
        "strict",
        "Degraded",
        ("True", "ApplyFailed"),
        &["Deployment strict-player", "cpu"],
        5 * SECOND,
    )
    .await?;
    eprintln!(
        "[e2e] Degraded ApplyFailed after {:.1?}: {msg}",
        t.elapsed()
    );
    let lp = get(h, NS, "logplayer", "strict").map_err(anyhow::Error::msg)?;
    let generation = lp["metadata"]["generation"].clone();
    ensure!(
        lp["status"]["observedGeneration"] == generation
            && condition(&lp, "Ready").unwrap_or_default()["status"] == "False",
        "status of LogPlayer strict: {}",
        lp["status"]
    );
    wait_for(
        "a Warning Event ApplyFailed on LogPlayer strict",
        10 * SECOND,
        SECOND / 2,
        || async {
            let events =
                h.cp.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"])
                    .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&events).map_err(|e| e.to_string())?;
            let found = v["items"].as_array().into_iter().flatten().any(|e| {
                e["type"] == "Warning"
                    && e["reason"] == "ApplyFailed"
                    && e["regarding"]["name"] == "strict"
            });
            if found {
                Ok(Some(()))
            } else {
                Err("no such event yet".into())
            }
        },
    )
    .await?;
    // Fixed: the status follows the new generation.
    apply_ok(
        h,
        NS,
        "strict.yaml",
        &strict.replace("cpu: \"2\"", "cpu: \"1\""),
        "fixing LogPlayer strict",
    )?;
    wait_for(
        "LogPlayer strict to stop reporting ApplyFailed",
        20 * SECOND,
        SECOND / 2,
        || async {
            let lp = get(h, NS, "logplayer", "strict")?;
            let c = condition(&lp, "Degraded").unwrap_or_default();
            if c["reason"] != "ApplyFailed"
                && lp["status"]["observedGeneration"] == lp["metadata"]["generation"]
            {
                Ok(Some(()))
            } else {
                Err(format!("Degraded: {c}"))
            }
        },
    )
    .await?;

    // More CPU than any node has: the player pod stays Pending, and the status names it.
    let big = logplayer_with_shard("big", "  resources:\n    requests:\n      cpu: \"1000\"\n");
    apply_ok(h, NS, "big.yaml", &big, "applying LogPlayer big")?;
    let msg = wait_condition(
        h,
        NS,
        "big",
        "Degraded",
        ("True", "PodsPending"),
        &["big-player-", "Insufficient cpu"],
        60 * SECOND,
    )
    .await?;
    eprintln!("[e2e] Degraded PodsPending: {msg}");

    // A managed LogStore, then a switch to an external one: its StatefulSet and Service go.
    let switch = logplayer_with_shard("switch", "").replace(
        "external:\n      endpoint: \"demo-logstore.demo.svc:7000\"",
        "managed:\n      storage: 1Gi",
    );
    apply_ok(h, NS, "switch.yaml", &switch, "applying LogPlayer switch")?;
    wait_for(
        "the managed LogStore of switch",
        30 * SECOND,
        SECOND / 2,
        || async { get(h, NS, "statefulset", "switch-logstore").map(Some) },
    )
    .await?;
    let external = switch.replace(
        "managed:\n      storage: 1Gi",
        "external:\n      endpoint: \"demo-logstore.demo.svc:7000\"",
    );
    apply_ok(
        h,
        NS,
        "switch.yaml",
        &external,
        "switching LogPlayer switch to external",
    )?;
    wait_for(
        "the managed LogStore's StatefulSet and Service to be deleted",
        30 * SECOND,
        SECOND / 2,
        || async {
            let sts = get(h, NS, "statefulset", "switch-logstore").is_ok();
            let svc = get(h, NS, "service", "switch-logstore").is_ok();
            if sts || svc {
                Err(format!("still there: statefulset {sts}, service {svc}"))
            } else {
                Ok(Some(()))
            }
        },
    )
    .await?;

    // A Shard before its LogPlayer: not Ready (LogPlayerNotFound), then ShardMapPending
    // within 2 s of the (paused) LogPlayer appearing, then Ready within 2 s of its map. Its endpoint is a plaintext shard server this test runs (the
    // demo's servers take only certificates of the demo's CA, and the paused LogPlayer issues
    // none); no player of it ever delivers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = h.cp.dir().join("early-shard");
    let _server = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_logplayer"))
            .env("LOGPLAYER_INSECURE", "true")
            .args([
                "shard",
                "--id",
                "early",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--data")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let early = shard_yaml(
        "early",
        "logplayer.io/instance: late",
        &[(0, 16383)],
        &format!("127.0.0.1:{port}"),
    )
    .replace("logPlayer: demo", "logPlayer: late");
    apply_ok(h, NS, "early.yaml", &early, "applying Shard early")?;
    let shard_ready = |want: &'static str| async move {
        let s = get(h, NS, "shard", "early")?;
        let c = condition(&s, "Ready").unwrap_or_default();
        if c["reason"] == want {
            Ok(Some(()))
        } else {
            Err(format!("Ready: {c}"))
        }
    };
    wait_for(
        "Shard early Ready=False LogPlayerNotFound",
        30 * SECOND,
        SECOND / 2,
        || shard_ready("LogPlayerNotFound"),
    )
    .await?;
    let late = logplayer_yaml("late", "").replace(
        "metadata:\n  name: late\n",
        "metadata:\n  name: late\n  annotations:\n    logplayer.io/paused: \"true\"\n",
    );
    let t = Instant::now();
    apply_ok(h, NS, "late.yaml", &late, "applying LogPlayer late")?;
    // Paused, LogPlayer late writes no shard map: nothing is delivered to early yet.
    wait_for(
        "Shard early ShardMapPending within 2 s of its LogPlayer",
        2 * SECOND,
        SECOND / 10,
        || shard_ready("ShardMapPending"),
    )
    .await?;
    eprintln!(
        "[e2e] Shard early ShardMapPending {:.1?} after its LogPlayer appeared",
        t.elapsed()
    );
    // The players' map written (here by hand, as the operator writes it when not paused)
    // wakes the Shard: Ready within 2 s.
    let uid = get(h, NS, "logplayer", "late").map_err(anyhow::Error::msg)?["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late-shard-map\n  labels:\n    \
         app.kubernetes.io/managed-by: logplayer-operator\n  ownerReferences:\n  - apiVersion: \
         logplayer.io/v1alpha1\n    kind: LogPlayer\n    name: late\n    uid: {uid}\ndata:\n  \
         shard-map.yaml: |\n    version: 1\n    shards:\n    - id: early\n      addr: \
         127.0.0.1:{port}\n      slots: [0-16383]\n"
    );
    let t = Instant::now();
    apply_ok(
        h,
        NS,
        "late-map.yaml",
        &map,
        "writing LogPlayer late's shard map",
    )?;
    wait_for(
        "Shard early Ready=True within 2 s of its map",
        2 * SECOND,
        SECOND / 10,
        || shard_ready("Serving"),
    )
    .await?;
    eprintln!(
        "[e2e] Shard early Ready {:.1?} after its map was written",
        t.elapsed()
    );

    h.cp.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

// ---- h. cleanup ----------------------------------------------------------------------------

/// (kind, name, uid) of every object of `kinds` in `ns` (all namespaces for cluster-scoped
/// kinds with `ns` empty) that `keep` selects.
fn objects(
    h: &Harness,
    ns: &str,
    kinds: &str,
    selector: Option<&str>,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<(String, String, String)>, String> {
    let mut args = vec!["get", kinds, "-o", "json"];
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    if let Some(s) = selector {
        args.extend(["-l", s]);
    }
    let out = h.cp.kubectl(&args).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| keep(o))
        .map(|o| {
            let s = |p: &str| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            (s("/kind"), s("/metadata/name"), s("/metadata/uid"))
        })
        .collect())
}

/// Waits until none of `objs` (by uid) is listed any more.
async fn wait_gone(
    h: &Harness,
    what: &str,
    ns: &str,
    kinds: &str,
    objs: &[(String, String, String)],
) -> anyhow::Result<()> {
    wait_for(what, 90 * SECOND, SECOND, || async {
        let now = objects(h, ns, kinds, None, |_| true)?;
        let left: Vec<String> = objs
            .iter()
            .filter(|o| now.iter().any(|n| n.2 == o.2))
            .map(|(k, n, _)| format!("{k}/{n}"))
            .collect();
        if left.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("still there: {}", left.join(", ")))
        }
    })
    .await
}

fn kinds_of(objs: &[(String, String, String)]) -> Vec<&str> {
    let mut k: Vec<&str> = objs.iter().map(|o| o.0.as_str()).collect();
    k.sort_unstable();
    k.dedup();
    k
}

pub(crate) async fn cleanup(h: &Harness) -> anyhow::Result<()> {
    // What the operator made for the demo: everything owned by the LogPlayer or a Shard.
    let kinds = "deployments,replicasets,statefulsets,services,configmaps,poddisruptionbudgets,\
                 roles,rolebindings,serviceaccounts,pods";
    let owned = objects(h, DEMO_NS, kinds, None, |o| {
        o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| {
                r["apiVersion"] == "logplayer.io/v1alpha1"
                    && (r["kind"] == "LogPlayer" || r["kind"] == "Shard")
            })
    })
    .map_err(anyhow::Error::msg)?;
    let pods = objects(h, DEMO_NS, "pods", None, |_| true).map_err(anyhow::Error::msg)?;
    let got = kinds_of(&owned);
    for want in [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ] {
        ensure!(
            got.contains(&want),
            "no {want} owned by the LogPlayer or a Shard; owned: {owned:?}"
        );
    }
    eprintln!(
        "[e2e] {} objects owned by LogPlayer demo and its Shards, {} pods",
        owned.len(),
        pods.len()
    );
    let t = Instant::now();
    h.cp.kubectl(&["-n", DEMO_NS, "delete", "logplayer", "demo"])?;
    h.cp.kubectl(&[
        "-n",
        DEMO_NS,
        "delete",
        "shards",
        "-l",
        "logplayer.io/instance=demo",
    ])?;
    let mut all = owned;
    all.extend(pods);
    wait_gone(
        h,
        "the garbage collector to delete what the operator made for the demo, and its pods",
        DEMO_NS,
        kinds,
        &all,
    )
    .await?;
    eprintln!(
        "[e2e] the demo's objects were collected {:.1?} after the delete",
        t.elapsed()
    );

    // The chart's objects.
    let sel = "app.kubernetes.io/instance=logplayer-operator";
    let ns_kinds =
        "deployments,serviceaccounts,services,poddisruptionbudgets,pods,roles,rolebindings,leases";
    let cluster_kinds = "clusterroles,clusterrolebindings";
    let in_ns =
        objects(h, OPERATOR_NS, ns_kinds, Some(sel), |_| true).map_err(anyhow::Error::msg)?;
    let cluster = objects(h, "", cluster_kinds, Some(sel), |_| true).map_err(anyhow::Error::msg)?;
    let mut chart = in_ns.clone();
    chart.extend(cluster.clone());
    let got = kinds_of(&chart);
    for want in [
        "ClusterRole",
        "Deployment",
        "Lease",
        "Pod",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ] {
        ensure!(
            got.contains(&want),
            "no {want} of the release before helm uninstall: {chart:?}"
        );
    }
    let t = Instant::now();
    let out = run_helm(h, &["uninstall", "logplayer-operator", "-n", OPERATOR_NS])?;
    let text = output_text(&out);
    ensure!(out.status.success(), "helm uninstall failed:\n{text}");
    eprintln!("[e2e] helm uninstall: {}", text.trim());
    for crd in CRD_NAMES {
        ensure!(
            text.contains(&format!("[CustomResourceDefinition] {crd}")),
            "helm uninstall does not list {crd} as kept by the resource policy:\n{text}"
        );
    }
    wait_gone(
        h,
        "helm uninstall to remove the operator's namespaced objects and pods",
        OPERATOR_NS,
        ns_kinds,
        &in_ns,
    )
    .await?;
    wait_gone(
        h,
        "helm uninstall to remove the operator's ClusterRole and ClusterRoleBinding",
        "",
        cluster_kinds,
        &cluster,
    )
    .await?;
    eprintln!(
        "[e2e] the release's objects were gone {:.1?} after helm uninstall",
        t.elapsed()
    );

    // The CRDs carry helm.sh/resource-policy: keep (the chart's default, adopted in b):
    // they and the API they serve remain.
    for crd in CRD_NAMES {
        let v = get(h, "", "crd", crd).map_err(anyhow::Error::msg)?;
        ensure!(
            v["metadata"]["deletionTimestamp"].is_null(),
            "CRD {crd} is being deleted after helm uninstall"
        );
    }
    h.cp.kubectl(&["get", "logplayers,shards", "-A"])
        .context("the LogPlayer API after helm uninstall")?;
    Ok(())
}
