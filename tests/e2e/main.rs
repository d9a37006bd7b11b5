//! End-to-end tests on a real Kubernetes control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager; see tests/e2e/README.md), with the harness standing in for the
//! kubelet (node.rs). The scenarios run in order, each asserting on what the API server
//! returns:
//!
//! a. the CRDs apply and `kubectl explain` shows their field descriptions;
//! b. the Helm chart installs over CRDs applied with kubectl (and takes them over when they
//!    are handed to it), its operator pods run with the chart's ServiceAccount, that
//!    ServiceAccount may do what the operator needs and nothing it must not, and the
//!    admission policy refuses what RBAC alone would allow;
//! c. the example (a LogPlayer with a managed LogStore of three log replicas and four
//!    managed Shards) comes up, the operator growing the log's Raft group to three voters:
//!    StatefulSets, Deployment, Services and PDB with owner references, the players' Lease, Ready=True,
//!    and `kubectl get logplayers,shards` shows the status columns; the players may touch
//!    only their own Lease and their own Shards' status (rbac.rs);
//! d. load through the LogStore, SIGKILL the leading player: a standby takes the Lease with
//!    a higher epoch, the status names it; then SIGKILL the log leader's pod: a log replica
//!    leads in a later Raft term and `status.logStore` shows it; and every shard holds
//!    exactly what the log implies;
//! l. the log replicas scaled 3 -> 5 -> 3 under load: the operator adds and removes
//!    replicas of the Raft group one at a time, `status.logStore` follows, every replica
//!    serves the same log, and delivery stays exactly-once (log_replicas.rs);
//! e. the leader SIGSTOPped past its lease under load: a standby takes over and delivers, and
//!    once SIGCONTed the old leader steps down to a Ready standby (failover.rs);
//! f. failover time over repeated SIGKILLs of the leader through the real Lease, from the kill
//!    to the first entry a shard applies from the new leader (failover.rs);
//! g. invalid LogPlayers and Shards rejected by the API server (malformed quantities
//!    included); Shards that overlap another or do not answer degrade the LogPlayer, and it
//!    recovers; an apply only the API server refuses is `ApplyFailed` within 5 s, pods that
//!    cannot be scheduled are `PodsPending` by name, a switch to an external LogStore removes
//!    the managed one, and a Shard made before its LogPlayer is Ready within 2 s of it
//!    (resources.rs);
//! i. the leading operator SIGKILLed and held down past its lease: the standby operator takes
//!    the operator Lease and reconciles a change of the LogPlayer's replicas (operator.rs);
//! j. (with `LOGPLAYER_E2E_BENCH=1` only) the operator's memory and reconcile latency with
//!    5,000 unrelated ConfigMaps and with 100 LogPlayers x 10 Shards (scale.rs);
//! k. `helm upgrade` to the namespace-scoped install: Roles in `demo` only, `can-i`
//!    boundaries, and the operator still reconciles the demo (operator.rs);
//! h. deleting the LogPlayer garbage-collects what the operator made; `helm uninstall` removes
//!    the operator and its Lease and keeps the CRDs (resources.rs).
//!
//! Each scenario is its own test, `e2e::a_crds` to `e2e::h_cleanup` (a libtest-mimic harness:
//! `cargo test --test e2e -- e2e::c` runs a to c), on one control plane started by the first
//! and stopped after the last. Without the control-plane binaries the scenarios are reported
//! as ignored, unless `LOGPLAYER_REQUIRE_E2E=1`, which fails. `LOGPLAYER_E2E_KEEP=1` keeps the
//! control plane's directory.

mod certs;
mod cluster;
mod failover;
mod log_replicas;
mod node;
mod operator;
mod rbac;
mod resources;
mod scale;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use nix::sys::signal::Signal;
use serde_json::Value;

use cluster::{ControlPlane, repo, wait_for};
use node::StandIn;

const OPERATOR_NS: &str = "logplayer-system";
const OPERATOR_SA: &str = "system:serviceaccount:logplayer-system:logplayer-operator";
const DEMO_NS: &str = "demo";
const SECOND: Duration = Duration::from_secs(1);

/// One scenario: runs against the shared harness.
type Scenario = fn(&Harness) -> futures::future::BoxFuture<'_, anyhow::Result<()>>;

/// The scenarios, in the order they build on each other. Each is its own test (named
/// `e2e::<letter>_<what>`); running one runs the ones before it first, on the same control
/// plane.
const SCENARIOS: [(&str, Scenario); 13] = [
    ("e2e::a_crds", |h| Box::pin(crds(h))),
    ("e2e::b_helm_chart_and_operator_rbac", |h| Box::pin(helm(h))),
    ("e2e::c_the_example_logplayer", |h| Box::pin(example(h))),
    ("e2e::d_leader_sigkilled_under_load", |h| {
        Box::pin(failover(h))
    }),
    ("e2e::l_log_replicas_scaled_3_5_3", |h| {
        Box::pin(log_replicas::log_replicas_scaled(h))
    }),
    ("e2e::e_frozen_leader", |h| {
        Box::pin(failover::frozen_leader(h))
    }),
    ("e2e::f_failover_time_over_repeated_kills", |h| {
        Box::pin(failover::failover_times(h))
    }),
    ("e2e::g_invalid_resources", |h| {
        Box::pin(resources::invalid_resources(h))
    }),
    ("e2e::m_cert_manager_certificates", |h| {
        Box::pin(certs::cert_manager_certificates(h))
    }),
    ("e2e::i_operator_failover", |h| {
        Box::pin(operator::operator_failover(h))
    }),
    ("e2e::j_operator_scale", |h| {
        Box::pin(scale::operator_scale(h))
    }),
    ("e2e::k_namespaced_install", |h| {
        Box::pin(operator::namespaced_install(h))
    }),
    ("e2e::h_cleanup", |h| Box::pin(resources::cleanup(h))),
];

struct Harness {
    cp: ControlPlane,
    node: StandIn,
    client: Client,
    _root: tempfile::TempDir,
}

/// The suite's shared state: the harness once started, and how far the scenarios got.
#[derive(Default)]
struct Suite {
    harness: Option<Harness>,
    /// Scenarios that passed, by index into [`SCENARIOS`].
    passed: Vec<usize>,
    /// The scenario that failed (later ones are not run) or why setup failed.
    failed: Option<String>,
}

fn main() -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    // What this process's own clients (the load driver, the checker) say when a call is
    // refused or retried; RUST_LOG overrides.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("logplayer=info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // The scenarios build on each other on one control plane: one at a time, in order.
    args.test_threads = Some(1);
    let installed = cluster::installed();
    if !installed {
        let msg = "control plane not installed; run tests/e2e/install.sh";
        if cluster::required() {
            eprintln!("LOGPLAYER_REQUIRE_E2E=1 but {msg}");
            return std::process::ExitCode::FAILURE;
        }
        eprintln!("e2e scenarios ignored: {msg}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => std::sync::Arc::new(rt),
        Err(e) => {
            eprintln!("starting a tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let suite = std::sync::Arc::new(std::sync::Mutex::new(Suite::default()));
    let trials = SCENARIOS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let (rt, suite) = (rt.clone(), suite.clone());
            libtest_mimic::Trial::test(*name, move || run_through(&rt, &suite, i))
                .with_ignored_flag(!installed)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut suite = suite.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut h) = suite.harness.take() {
        rt.block_on(h.node.shutdown());
        // Dropping the control plane stops etcd, the API server and the controller manager.
    }
    conclusion.exit_code()
}

/// Runs scenario `last` on the shared control plane, first starting it and running every
/// earlier scenario that has not run (a filtered run of one scenario still sets it up).
fn run_through(
    rt: &tokio::runtime::Runtime,
    suite: &std::sync::Mutex<Suite>,
    last: usize,
) -> Result<(), libtest_mimic::Failed> {
    let mut suite = suite.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(failed) = &suite.failed {
        return Err(format!("not run: {failed}").into());
    }
    if suite.harness.is_none() {
        let started = rt.block_on(async {
            let cp = ControlPlane::start()?.context("control plane not installed")?;
            setup(cp).await
        });
        match started {
            Ok(h) => suite.harness = Some(h),
            Err(e) => {
                suite.failed = Some(format!("the control plane did not start: {e:#}"));
                return Err(format!("starting the control plane: {e:#}").into());
            }
        }
    }
    for (i, &(name, scenario)) in SCENARIOS.iter().enumerate().take(last + 1) {
        if suite.passed.contains(&i) {
            continue;
        }
        let Some(h) = suite.harness.as_ref() else {
            return Err("no harness".into());
        };
        eprintln!("[e2e] ===== scenario {name}");
        let s = Instant::now();
        if let Err(e) = rt.block_on(scenario(h)) {
            eprintln!("{}", h.node.log_tails(40));
            eprintln!("{}", h.cp.log_tails(20));
            eprintln!(
                "{}",
                h.cp.kubectl(&["get", "pods,events", "-A", "-o", "wide"])
                    .unwrap_or_default()
            );
            suite.failed = Some(format!("scenario {name} failed earlier"));
            return Err(format!("scenario {name} failed after {:.1?}: {e:#}", s.elapsed()).into());
        }
        eprintln!("[e2e] ===== scenario {name} passed in {:.1?}", s.elapsed());
        suite.passed.push(i);
    }
    Ok(())
}

async fn setup(cp: ControlPlane) -> anyhow::Result<Harness> {
    let client = cp.client().await?;
    let root = tempfile::Builder::new()
        .prefix("logplayer-e2e-node-")
        .tempdir()?;
    let node = StandIn::start(
        client.clone(),
        PathBuf::from(env!("CARGO_BIN_EXE_logplayer")),
        root.path().to_owned(),
        cp.server.clone(),
        cp.ca_pem.clone(),
    )
    .await?;
    Ok(Harness {
        cp,
        node,
        client,
        _root: root,
    })
}

// ---- a. CRDs ---------------------------------------------------------------------------

async fn crds(h: &Harness) -> anyhow::Result<()> {
    h.cp.kubectl(&["apply", "-f", "crds/"])?;
    h.cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/logplayers.logplayer.io",
        "crd/shards.logplayer.io",
    ])?;
    // Discovery may lag the Established condition by a moment.
    let out = wait_for(
        "kubectl explain logplayer.spec",
        30 * SECOND,
        SECOND,
        || async {
            match h.cp.kubectl(&["explain", "logplayer.spec"]) {
                Ok(o) => Ok(Some(o)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    for want in ["Number of player pods", "logStore", "shardSelector"] {
        ensure!(
            out.contains(want),
            "`kubectl explain logplayer.spec` lacks {want:?}:\n{out}"
        );
    }
    let out = h.cp.kubectl(&["explain", "shard.spec"])?;
    ensure!(
        out.contains("slots"),
        "`kubectl explain shard.spec`:\n{out}"
    );
    Ok(())
}

// ---- b. Helm chart ---------------------------------------------------------------------

fn helm_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LOGPLAYER_HELM") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/install-helm.sh"))
        .output()
        .context("running scripts/install-helm.sh")?;
    ensure!(
        out.status.success(),
        "scripts/install-helm.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Pods matching `selector` in `ns` that are Ready per the API server.
async fn ready_pods(client: &Client, ns: &str, selector: &str) -> Result<Vec<Pod>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect())
}

fn pod_summary(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            let st = p.status.as_ref();
            format!(
                "{} phase={:?} node={:?} ip={:?}",
                p.name_any(),
                st.and_then(|s| s.phase.clone()),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                st.and_then(|s| s.pod_ip.clone())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn wait_ready_pods(
    h: &Harness,
    ns: &str,
    selector: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    let what = format!("{n} ready pods {selector} in {ns}");
    wait_for(&what, timeout, SECOND, || async {
        let ready = ready_pods(&h.client, ns, selector).await?;
        if ready.len() >= n {
            return Ok(Some(ready));
        }
        let all: Api<Pod> = Api::namespaced(h.client.clone(), ns);
        let all = all
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| e.to_string())?;
        Err(format!(
            "{} ready; pods: {}",
            ready.len(),
            pod_summary(&all.items)
        ))
    })
    .await
}

fn can_i(h: &Harness, args: &[&str]) -> anyhow::Result<bool> {
    can_i_as(h, OPERATOR_SA, args)
}

/// `kubectl auth can-i ARGS --as=WHO`.
fn can_i_as(h: &Harness, who: &str, args: &[&str]) -> anyhow::Result<bool> {
    let as_flag = format!("--as={who}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&as_flag);
    let out = h.cp.kubectl_raw(&all)?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match text.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl {} said {text:?} ({}): {}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs helm against the control plane, with its caches in the control plane's directory.
fn run_helm(h: &Harness, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let helm = helm_bin()?;
    std::process::Command::new(&helm)
        .args(args)
        .env("KUBECONFIG", &h.cp.kubeconfig)
        .env("HELM_CACHE_HOME", h.cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", h.cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", h.cp.dir().join("helm/data"))
        .current_dir(repo())
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running helm {}", args.join(" ")))
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// With `crds.keep=false` the CRDs lose the keep annotation; an upgrade with
/// `crds.install=false` would then make Helm delete them, and every LogPlayer and Shard with
/// them: the chart refuses it, naming the CRD, and they stay. `crds.keep=true` is restored.
fn crds_outlive_an_upgrade_that_stops_installing_them(h: &Harness) -> anyhow::Result<()> {
    let upgrade = |set: &str| {
        run_helm(
            h,
            &[
                "upgrade",
                "logplayer-operator",
                "charts/logplayer-operator",
                "-n",
                OPERATOR_NS,
                "--reuse-values",
                "--wait=false",
                "--set",
                set,
            ],
        )
    };
    let out = upgrade("crds.keep=false")?;
    ensure!(
        out.status.success(),
        "helm upgrade --set crds.keep=false failed:\n{}",
        output_text(&out)
    );
    let out = upgrade("crds.install=false")?;
    let text = output_text(&out);
    ensure!(
        !out.status.success()
            && text.contains("crds.install=false")
            && text.contains("crds.keep=true"),
        "helm upgrade --set crds.install=false over CRDs without the keep annotation was not \
         refused naming crds.keep ({}):\n{text}",
        out.status
    );
    for crd in CRD_NAMES {
        let v: Value = serde_json::from_str(&h.cp.kubectl(&["get", "crd", crd, "-o", "json"])?)?;
        ensure!(
            v["metadata"]["deletionTimestamp"].is_null(),
            "CRD {crd} is being deleted after the refused upgrade"
        );
    }
    let out = upgrade("crds.keep=true")?;
    ensure!(
        out.status.success(),
        "helm upgrade --set crds.keep=true failed:\n{}",
        output_text(&out)
    );
    Ok(())
}

/// The CRDs of the chart.
const CRD_NAMES: [&str; 2] = ["logplayers.logplayer.io", "shards.logplayer.io"];

async fn helm(h: &Harness) -> anyhow::Result<()> {
    // Scenario a applied crds/ with kubectl, as `kubectl apply -k deploy/` does. A user who
    // then installs the chart with its default `crds.install=true` gets a working install:
    // the chart sees CRDs that belong to no release and leaves them alone, and NOTES says so
    // and how to hand them to Helm (annotate and label them, then `helm upgrade`), which we
    // then do, so that scenario h can test the chart's `helm.sh/resource-policy: keep`.
    let install = [
        "install",
        "logplayer-operator",
        "charts/logplayer-operator",
        "-n",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        "image.repository=e2e.invalid/logplayer",
        "--set",
        "image.tag=standin",
        "--wait=false",
    ];
    let t = Instant::now();
    let out = run_helm(h, &install)?;
    let text = output_text(&out);
    ensure!(
        out.status.success(),
        "helm install after kubectl apply -f crds/ failed ({}):\n{text}",
        out.status
    );
    eprintln!("[e2e] helm install took {:.1?}", t.elapsed());
    ensure!(
        text.contains("applied outside Helm") && text.contains("meta.helm.sh/release-name"),
        "NOTES do not say that the CRDs were left alone and how to hand them over:\n{text}"
    );
    for crd in CRD_NAMES {
        let v: Value = serde_json::from_str(&h.cp.kubectl(&["get", "crd", crd, "-o", "json"])?)?;
        ensure!(
            v["metadata"]["annotations"]["meta.helm.sh/release-name"].is_null(),
            "helm install took CRD {crd} over without being asked: {}",
            v["metadata"]
        );
    }
    // What NOTES says to run to let Helm manage the CRDs.
    for crd in CRD_NAMES {
        h.cp.kubectl(&[
            "annotate",
            "crd",
            crd,
            "meta.helm.sh/release-name=logplayer-operator",
            &format!("meta.helm.sh/release-namespace={OPERATOR_NS}"),
        ])?;
        h.cp.kubectl(&["label", "crd", crd, "app.kubernetes.io/managed-by=Helm"])?;
    }
    let out = run_helm(
        h,
        &[
            "upgrade",
            "logplayer-operator",
            "charts/logplayer-operator",
            "-n",
            OPERATOR_NS,
            "--reuse-values",
            "--wait=false",
        ],
    )?;
    ensure!(
        out.status.success(),
        "helm upgrade after handing the CRDs over failed ({}):\n{}",
        out.status,
        output_text(&out)
    );
    for crd in CRD_NAMES {
        let v: Value = serde_json::from_str(&h.cp.kubectl(&["get", "crd", crd, "-o", "json"])?)?;
        let ann = &v["metadata"]["annotations"];
        ensure!(
            ann["helm.sh/resource-policy"] == "keep"
                && ann["meta.helm.sh/release-name"] == "logplayer-operator",
            "CRD {crd} after the hand-over and helm upgrade: annotations {ann}"
        );
    }
    crds_outlive_an_upgrade_that_stops_installing_them(h)?;

    let sel =
        "app.kubernetes.io/instance=logplayer-operator,app.kubernetes.io/name=logplayer-operator";
    let pods = wait_ready_pods(h, OPERATOR_NS, sel, 2, 90 * SECOND).await?;
    for p in &pods {
        let sa = p.spec.as_ref().and_then(|s| s.service_account_name.clone());
        ensure!(
            sa.as_deref() == Some("logplayer-operator"),
            "operator pod {} runs as {sa:?}",
            p.name_any()
        );
    }
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    // One of them leads: it holds the operator Lease (written with its ServiceAccount token).
    let holder = wait_lease_held(
        h,
        "the operator Lease held by an operator pod",
        OPERATOR_NS,
        "logplayer-operator",
        &names,
    )
    .await?;
    eprintln!("[e2e] operator leader: {holder}");

    for (args, want) in [
        (&["patch", "statefulsets", "-n", "some-other-ns"][..], true),
        (&["create", "deployments", "-n", DEMO_NS][..], true),
        (&["delete", "statefulsets", "-n", DEMO_NS][..], true),
        (
            &["update", "leases/logplayer-operator", "-n", OPERATOR_NS][..],
            true,
        ),
        (&["get", "leases", "-n", DEMO_NS][..], true),
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
            &[
                "bind",
                "clusterroles.rbac.authorization.k8s.io/logplayer-operator-player",
            ][..],
            true,
        ),
        (&["list", "pods", "-A"][..], true),
        // The boundaries: no Lease but its own (until it runs players in a namespace and
        // binds itself to their ClusterRole there: none yet), no Role deleted or escalated,
        // no other ClusterRole to bind, no Secrets listed, no pods deleted or watched,
        // nothing read that it only applies, no spec of a LogPlayer changed.
        (&["watch", "pods", "-A"][..], false),
        (&["get", "services", "-n", DEMO_NS][..], false),
        (
            &["watch", "networkpolicies.networking.k8s.io", "-A"][..],
            false,
        ),
        (&["update", "leases", "-n", "kube-system"][..], false),
        (&["update", "leases", "-n", DEMO_NS][..], false),
        (&["update", "leases/other", "-n", OPERATOR_NS][..], false),
        // The players' Roles: written, never escalated (RBAC lets it write only what it
        // holds, and it holds the players' rights only where it binds itself to them).
        (
            &["create", "roles.rbac.authorization.k8s.io", "-n", DEMO_NS][..],
            true,
        ),
        (
            &["delete", "roles.rbac.authorization.k8s.io", "-n", DEMO_NS][..],
            false,
        ),
        (
            &[
                "bind",
                "clusterroles.rbac.authorization.k8s.io/cluster-admin",
            ][..],
            false,
        ),
        (&["delete", "nodes"][..], false),
        // The players' Deployment goes only with its LogPlayer (owner references).
        (&["delete", "deployments", "-n", DEMO_NS][..], false),
        // Secrets only by name (the LogPlayers' CAs and certificates): never listed,
        // watched or deleted.
        (&["get", "secrets", "-n", DEMO_NS][..], true),
        (&["list", "secrets", "-n", DEMO_NS][..], false),
        (&["watch", "secrets", "-A"][..], false),
        (&["delete", "secrets", "-n", DEMO_NS][..], false),
        (&["delete", "pods", "-n", DEMO_NS][..], false),
        (
            &["patch", "logplayers.logplayer.io", "-n", DEMO_NS][..],
            false,
        ),
        (&["create", "clusterrolebindings"][..], false),
        (
            &["escalate", "roles.rbac.authorization.k8s.io", "-n", DEMO_NS][..],
            false,
        ),
    ] {
        let got = can_i(h, args)?;
        ensure!(
            got == want,
            "kubectl auth can-i {} --as={OPERATOR_SA}: got {}, want {}",
            args.join(" "),
            if got { "yes" } else { "no" },
            if want { "yes" } else { "no" }
        );
    }
    admission_policy_holds(h)?;
    Ok(())
}

/// RBAC lets the operator create Deployments anywhere; the chart's ValidatingAdmissionPolicy
/// refuses, for the operator's ServiceAccount, one in kube-system, one that would run as
/// another ServiceAccount, and pods that could reach the node (privilege escalation, root, a
/// capability added, a host path, the host's network), and still admits one shaped like the
/// operator's own. It also refuses to label someone else's object as the operator's, or to
/// delete one.
fn admission_policy_holds(h: &Harness) -> anyhow::Result<()> {
    use serde_json::json;
    // Shaped like the operator's pods (`desired::pod_security`, `container_security`), with
    // `pod` merged into the pod's spec and `container` into its container's securityContext.
    let deployment =
        |ns: &str, name: &str, sa: &str, pod: &serde_json::Value, container: &serde_json::Value| {
            let mut c = json!({"name": "c", "image": "e2e.invalid/x",
                           "securityContext": {"allowPrivilegeEscalation": false,
                                               "capabilities": {"drop": ["ALL"]}}});
            let mut spec = json!({"serviceAccountName": sa,
                              "securityContext": {"runAsNonRoot": true}});
            for (to, from) in [(&mut c["securityContext"], container), (&mut spec, pod)] {
                for (k, v) in from.as_object().into_iter().flatten() {
                    to[k] = v.clone();
                }
            }
            // A pod's "ports" are its container's (where a host port would be).
            if let Some(ports) = spec.as_object_mut().and_then(|o| o.remove("ports")) {
                c["ports"] = ports;
            }
            spec["containers"] = json!([c]);
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns,
                             "labels": {"app.kubernetes.io/managed-by": "logplayer-operator"}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}
            })
            .to_string()
        };
    let as_operator = format!("--as={OPERATOR_SA}");
    let dry = "--dry-run=server";
    const PROBE_NS: &str = "vap-probe";
    h.cp.kubectl(&["create", "namespace", PROBE_NS])?;
    let none = json!({});
    let escalates = json!({"allowPrivilegeEscalation": true});
    let root_container = json!({"runAsUser": 0});
    let adds = json!({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}});
    let host_path = json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]});
    let host_network = json!({"hostNetwork": true});
    let as_root = json!({"securityContext": {"runAsNonRoot": false}});
    let host_pid = json!({"hostPID": true});
    let host_ipc = json!({"hostIPC": true});
    let init = json!({"initContainers": [{"name": "i", "image": "e2e.invalid/x"}]});
    let host_port = json!({"ports": [{"containerPort": 80, "hostPort": 80}]});
    let probe = |pod, container, why| {
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (pod, container),
            false,
            why,
        )
    };
    let more = [
        probe(&host_pid, &none, "shares no host namespace"),
        probe(&host_ipc, &none, "shares no host namespace"),
        probe(&init, &none, "has no init containers"),
        probe(&host_port, &none, "uses no host port"),
    ];
    for (ns, name, sa, (pod, container), allowed, why) in [
        (
            "kube-system",
            "evil-player",
            "evil-player",
            (&none, &none),
            false,
            "never writes into kube-system",
        ),
        (
            PROBE_NS,
            "evil-player",
            "default",
            (&none, &none),
            false,
            "runs only as the players' ServiceAccount",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&none, &escalates),
            false,
            "without privilege escalation",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&none, &root_container),
            false,
            "runs as non-root",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&none, &adds),
            false,
            "add none",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&as_root, &none),
            false,
            "runs as non-root",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&host_path, &none),
            false,
            "mounts only Secrets and ConfigMaps",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&host_network, &none),
            false,
            "shares no host namespace",
        ),
        (
            PROBE_NS,
            "probe-player",
            "probe-player",
            (&none, &none),
            true,
            "",
        ),
    ]
    .into_iter()
    .chain(more)
    {
        let file = h.cp.dir().join(format!("vap-{ns}-{name}-{sa}.json"));
        std::fs::write(&file, deployment(ns, name, sa, pod, container))?;
        let path = file.display().to_string();
        let out =
            h.cp.kubectl_raw(&["create", "-f", &path, dry, &as_operator])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if allowed {
            ensure!(
                out.status.success(),
                "the policy refused the operator's own kind of Deployment: {text}"
            );
        } else {
            ensure!(
                !out.status.success() && text.contains(why),
                "a Deployment {ns}/{name} as {sa} (pod {pod}, container {container}) with the operator's token was not refused by the admission policy for {why:?}: {text}"
            );
        }
    }
    // Someone else's object cannot be taken over by adding the label, nor deleted; one of
    // the operator's own (labelled when it was made) still can.
    h.cp.kubectl(&["create", "configmap", "theirs", "-n", PROBE_NS])?;
    h.cp.kubectl(&[
        "create",
        "service",
        "clusterip",
        "theirs",
        "--tcp=80",
        "-n",
        PROBE_NS,
    ])?;
    h.cp.kubectl(&[
        "create",
        "service",
        "clusterip",
        "ours",
        "--tcp=80",
        "-n",
        PROBE_NS,
    ])?;
    h.cp.kubectl(&[
        "label",
        "service",
        "ours",
        "app.kubernetes.io/managed-by=logplayer-operator",
        "-n",
        PROBE_NS,
    ])?;
    let takeover = h.cp.dir().join("vap-takeover.json");
    std::fs::write(
        &takeover,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "theirs", "namespace": PROBE_NS,
                         "labels": {"app.kubernetes.io/managed-by": "logplayer-operator"}}
        })
        .to_string(),
    )?;
    let takeover = takeover.display().to_string();
    let why = "only changes or deletes objects that already carry";
    for (args, allowed) in [
        // A server-side apply, as the operator's writes are (`kubectl label` or `patch`
        // would read the object first, which the operator may not).
        (
            &[
                "apply",
                "--server-side",
                "--field-manager=logplayer-operator",
                "-f",
                &takeover,
            ][..],
            false,
        ),
        (&["delete", "service", "theirs"][..], false),
        (&["delete", "service", "ours"][..], true),
    ] {
        let mut call = args.to_vec();
        call.extend(["-n", PROBE_NS, dry, &as_operator]);
        let out = h.cp.kubectl_raw(&call)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success() == allowed && (allowed || text.contains(why)),
            "kubectl {} as the operator: want {}, got: {text}",
            args.join(" "),
            if allowed {
                "allowed"
            } else {
                "refused by the admission policy"
            }
        );
    }
    the_operator_writes_only_certificates_and_cluster_services(h, PROBE_NS)?;
    rbac::the_operator_binds_the_cluster_role_to_itself_only(h, PROBE_NS)?;
    h.cp.kubectl(&["delete", "namespace", PROBE_NS, "--wait=false"])?;
    Ok(())
}

/// The operator's token may write Secrets and Services, labelled as its own; the policy
/// holds them to what the operator makes: a Secret of a ServiceAccount token (the API server
/// would fill it with another account's token, which the operator may read) and a Service
/// reachable from outside the cluster are refused; a certificate's Secret and a ClusterIP
/// Service are not.
fn the_operator_writes_only_certificates_and_cluster_services(
    h: &Harness,
    ns: &str,
) -> anyhow::Result<()> {
    use serde_json::json;
    let labels = json!({"app.kubernetes.io/managed-by": "logplayer-operator"});
    let secret = |name: &str, type_: &str, annotations: serde_json::Value, data| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": type_, "data": data,
               "metadata": {"name": name, "namespace": ns, "labels": labels,
                            "annotations": annotations}})
    };
    let service = |name: &str, spec: serde_json::Value| {
        let mut spec = spec;
        spec["ports"] = json!([{"port": 80}]);
        json!({"apiVersion": "v1", "kind": "Service", "spec": spec,
               "metadata": {"name": name, "namespace": ns, "labels": labels}})
    };
    let certificate = "only a certificate";
    let inside = "only reachable inside the cluster";
    for (object, why) in [
        (
            secret(
                "vap-token",
                "kubernetes.io/service-account-token",
                json!({"kubernetes.io/service-account.name": "default"}),
                json!({}),
            ),
            Some(certificate),
        ),
        (
            secret("vap-opaque", "Opaque", json!({}), json!({"k": "dg=="})),
            Some(certificate),
        ),
        (
            secret(
                "vap-cert",
                "kubernetes.io/tls",
                json!({}),
                json!({"tls.crt": "", "tls.key": ""}),
            ),
            None,
        ),
        (
            service("vap-lb", json!({"type": "LoadBalancer"})),
            Some(inside),
        ),
        (service("vap-np", json!({"type": "NodePort"})), Some(inside)),
        (
            service("vap-ext", json!({"externalIPs": ["192.0.2.1"]})),
            Some(inside),
        ),
        (service("vap-cluster", json!({})), None),
        (service("vap-headless", json!({"clusterIP": "None"})), None),
    ] {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("x")
            .to_owned();
        let file = h.cp.dir().join(format!("{name}.json"));
        std::fs::write(&file, object.to_string())?;
        let path = file.display().to_string();
        let out = h.cp.kubectl_raw(&[
            "create",
            "-f",
            &path,
            "--dry-run=server",
            &format!("--as={OPERATOR_SA}"),
        ])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match why {
            None => ensure!(
                out.status.success(),
                "the policy refused the operator's own kind of object {name}: {text}"
            ),
            Some(why) => ensure!(
                !out.status.success() && text.contains(why),
                "{name} with the operator's token was not refused by the admission policy for {why:?}: {text}"
            ),
        }
    }
    Ok(())
}

/// Waits (up to a minute) until one of the pods `names` holds the Lease `ns`/`lease`;
/// returns the holder.
async fn wait_lease_held(
    h: &Harness,
    what: &str,
    ns: &str,
    lease: &str,
    names: &[String],
) -> anyhow::Result<String> {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), ns);
    wait_for(what, 60 * SECOND, SECOND, || async {
        let l = leases.get_opt(lease).await.map_err(|e| e.to_string())?;
        let holder = l
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone());
        match holder {
            Some(x) if names.contains(&x) => Ok(Some(x)),
            other => Err(format!("holder {other:?}, pods {names:?}")),
        }
    })
    .await
}

// ---- c. the example ----------------------------------------------------------------------

fn owned_by(meta: &kube::api::ObjectMeta, kind: &str, name: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.kind == kind && o.name == name && o.controller == Some(true) && !o.uid.is_empty()
    })
}

async fn wait_owned<K>(h: &Harness, name: &str, owner_kind: &str, owner: &str) -> anyhow::Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(h.client.clone(), DEMO_NS);
    let what = format!(
        "{} {DEMO_NS}/{name} owned by {owner_kind} {owner}",
        K::kind(&())
    );
    wait_for(&what, 60 * SECOND, SECOND, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(o) if owned_by(o.meta(), owner_kind, owner) => Ok(Some(o)),
            Some(o) => Err(format!("exists, owners {:?}", o.meta().owner_references)),
            None => Err("absent".into()),
        }
    })
    .await
}

/// Labels `ns` to enforce the `restricted` Pod Security Standard, then checks the API
/// server's PodSecurity admission refuses there a pod that breaks it (so that every pod the
/// operator's workloads create in `ns` afterwards is known to satisfy it).
fn restricted_namespace(h: &Harness, ns: &str) -> anyhow::Result<()> {
    h.cp.kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ])?;
    let file = h.cp.dir().join("unrestricted-pod.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "unrestricted", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "e2e.invalid/x"}]}
        })
        .to_string(),
    )?;
    let path = file.display().to_string();
    let out =
        h.cp.kubectl_raw(&["create", "-f", &path, "--dry-run=server"])?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && text.contains("violates PodSecurity \"restricted"),
        "namespace {ns} admitted a pod that breaks the restricted Pod Security Standard: {text}"
    );
    Ok(())
}

fn condition(obj: &Value, ty: &str) -> Option<Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

async fn get_json(h: &Harness, kind: &str, name: &str) -> Result<Value, String> {
    let out =
        h.cp.kubectl(&["-n", DEMO_NS, "get", kind, name, "-o", "json"])
            .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

async fn example(h: &Harness) -> anyhow::Result<()> {
    h.cp.kubectl(&["create", "namespace", DEMO_NS])?;
    restricted_namespace(h, DEMO_NS)?;
    h.cp.kubectl(&["-n", DEMO_NS, "apply", "-f", "deploy/example/"])?;

    for s in [
        "demo-logstore",
        "s0-shard",
        "s1-shard",
        "s2-shard",
        "s3-shard",
    ] {
        let owner = if s == "demo-logstore" {
            ("LogPlayer", "demo")
        } else {
            ("Shard", s.trim_end_matches("-shard"))
        };
        let sts: StatefulSet = wait_owned(h, s, owner.0, owner.1).await?;
        // Three log replicas (the default), one pod per shard server.
        let pods = if s == "demo-logstore" { 3 } else { 1 };
        ensure!(
            sts.spec.as_ref().and_then(|s| s.replicas) == Some(pods),
            "StatefulSet {s}: {:?}",
            sts.spec.as_ref().map(|s| s.replicas)
        );
        let svc: Service = wait_owned(h, s, owner.0, owner.1).await?;
        ensure!(
            svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
            "Service {s} is not headless"
        );
    }
    let _: Service = wait_owned(h, "demo-logstore-client", "LogPlayer", "demo").await?;
    let _: PodDisruptionBudget = wait_owned(h, "demo-logstore", "LogPlayer", "demo").await?;
    let d: Deployment = wait_owned(h, "demo-player", "LogPlayer", "demo").await?;
    ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(3));
    let _: PodDisruptionBudget = wait_owned(h, "demo-player", "LogPlayer", "demo").await?;
    let _: ConfigMap = wait_owned(h, "demo-shard-map", "LogPlayer", "demo").await?;
    let _: Service = wait_owned(h, "demo-player-metrics", "LogPlayer", "demo").await?;

    // Pods come up through the stand-in; each carries its controller's owner reference.
    wait_ready_pods(
        h,
        DEMO_NS,
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component=shard",
        4,
        90 * SECOND,
    )
    .await?;
    wait_ready_pods(
        h,
        DEMO_NS,
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component=logstore",
        3,
        90 * SECOND,
    )
    .await?;
    // Replica 1 seeded the group alone; the operator added the other two.
    wait_for(
        "the LogStore's three replicas to vote, with a leader",
        90 * SECOND,
        SECOND,
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            let log = lp.pointer("/status/logStore").cloned().unwrap_or_default();
            let voters = log.get("voters").and_then(Value::as_i64);
            let leader = log.get("leader").and_then(Value::as_str);
            if voters == Some(3) && leader.is_some_and(|l| l.starts_with("demo-logstore-")) {
                Ok(Some(()))
            } else {
                Err(format!("status.logStore {log}"))
            }
        },
    )
    .await?;
    let players = wait_ready_pods(
        h,
        DEMO_NS,
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component=player",
        3,
        90 * SECOND,
    )
    .await?;
    for p in &players {
        ensure!(
            p.owner_references().iter().any(|o| o.kind == "ReplicaSet"),
            "player pod {} has no ReplicaSet owner",
            p.name_any()
        );
    }
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), DEMO_NS);
    let s0 = pods.get("s0-shard-0").await?;
    ensure!(owned_by(&s0.metadata, "StatefulSet", "s0-shard"));
    let s0_ip = s0.status.as_ref().and_then(|s| s.pod_ip.clone());
    let want = h
        .node
        .pod_ip(DEMO_NS, "s0-shard-0")
        .map(|ip| ip.to_string());
    ensure!(
        s0_ip.is_some() && s0_ip == want,
        "s0-shard-0 podIP {s0_ip:?}, the stand-in gave it {want:?}"
    );

    // The players' Lease: created by a player (its ServiceAccount may create Leases).
    let names: Vec<String> = players.iter().map(|p| p.name_any()).collect();
    wait_lease_held(
        h,
        "the Lease demo-player held by a player pod",
        DEMO_NS,
        "demo-player",
        &names,
    )
    .await?;

    let lp = wait_for(
        "LogPlayer demo Ready=True",
        120 * SECOND,
        SECOND,
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            match condition(&lp, "Ready") {
                Some(c) if c["status"] == "True" => Ok(Some(lp)),
                other => Err(format!(
                    "Ready {other:?}; conditions {}",
                    lp.pointer("/status/conditions")
                        .cloned()
                        .unwrap_or_default()
                )),
            }
        },
    )
    .await?;
    let leader = lp
        .pointer("/status/leader")
        .and_then(Value::as_str)
        .context("status.leader missing")?;
    ensure!(
        leader.starts_with("demo-player-"),
        "status.leader is {leader}"
    );

    let shards_ready = wait_for("every Shard ready", 60 * SECOND, SECOND, || async {
        let mut seen = Vec::new();
        for s in ["s0", "s1", "s2", "s3"] {
            let v = get_json(h, "shard", s).await?;
            if v.pointer("/status/ready").and_then(Value::as_bool) != Some(true) {
                seen.push(format!(
                    "{s}: {}",
                    v.get("status").cloned().unwrap_or_default()
                ));
            }
        }
        if seen.is_empty() {
            Ok(Some(()))
        } else {
            Err(seen.join("; "))
        }
    });
    shards_ready.await?;
    rbac::players_hold_only_their_own(h)?;

    let table = h.cp.kubectl(&["-n", DEMO_NS, "get", "logplayers,shards"])?;
    eprintln!("{table}");
    for col in ["LEADER", "EPOCH", "ACKED", "LAG"] {
        ensure!(table.contains(col), "no {col} column in:\n{table}");
    }
    ensure!(
        table.contains(leader),
        "the leader {leader} is not in:\n{table}"
    );
    demo_tls(h, &lp).await
}

/// The demo runs mutual TLS with certificates the operator issued: `CertificatesReady`, a
/// `kubernetes.io/tls` Secret per component and role signed by `demo-ca`, no pod plaintext,
/// and a client without a certificate gets nothing from the LogStore. The test process then
/// dials the demo with a certificate of its own from that CA (writer of any id, admin), as
/// an operator of the cluster holding the CA could.
async fn demo_tls(h: &Harness, lp: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    // Who may connect: the log replicas, each shard server and the players' metrics.
    let _: NetworkPolicy = wait_owned(h, "demo-logstore", "LogPlayer", "demo").await?;
    let _: NetworkPolicy = wait_owned(h, "demo-player", "LogPlayer", "demo").await?;
    let _: NetworkPolicy = wait_owned(h, "s0-shard", "Shard", "s0").await?;
    let c = condition(lp, "CertificatesReady").context("no CertificatesReady condition")?;
    ensure!(c["status"] == "True", "CertificatesReady {c}");
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), DEMO_NS);
    let text = |s: &Secret, k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let ca = secrets.get("demo-ca").await?;
    for name in [
        "demo-player-tls",
        "demo-logstore-tls",
        "demo-writer-tls",
        "demo-admin-tls",
        "s0-shard-tls",
    ] {
        let s = secrets.get(name).await?;
        ensure!(
            s.type_.as_deref() == Some("kubernetes.io/tls")
                && text(&s, "ca.crt") == text(&ca, "tls.crt"),
            "Secret {name} is not a certificate from demo-ca"
        );
    }
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), DEMO_NS);
    for p in pods.list(&ListParams::default()).await? {
        let env: Vec<String> = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .map(|e| e.name.clone())
            .collect();
        ensure!(
            env.iter().any(|e| e == "LOGPLAYER_TLS_CERT")
                && !env.iter().any(|e| e == "LOGPLAYER_INSECURE"),
            "pod {} does not run mutual TLS: env {env:?}",
            p.name_any()
        );
    }
    let stranger = async {
        let log = logplayer::client::Log::connect_with(&log_replicas(1), None).await?;
        log.bounds().await
    };
    let refused = tokio::time::timeout(10 * SECOND, stranger).await;
    ensure!(
        !matches!(refused, Ok(Ok(_))),
        "a plaintext client without a certificate read the LogStore's bounds"
    );
    let issuer = logplayer::tls::issue::Ca::from_pem(logplayer::tls::issue::Pem {
        cert: text(&ca, "tls.crt"),
        key: text(&ca, "tls.key"),
    })?;
    use logplayer::tls::identity::Role;
    let me = issuer.leaf(
        "e2e",
        &[(Role::Writer, "*"), (Role::Admin, "e2e")],
        &[],
        Duration::from_secs(24 * 3600),
    )?;
    let tls = logplayer::tls::Tls::from_pem("e2e", &me.cert, &me.key, &text(&ca, "tls.crt"))?;
    logplayer::tls::install(logplayer::tls::Security::Tls(tls.clone()));
    certs::a_certificate_nearing_expiry_is_renewed_and_served(h, &issuer, &tls).await
}

// ---- d. failover -------------------------------------------------------------------------

async fn lease_of(h: &Harness) -> anyhow::Result<(String, i32)> {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), DEMO_NS);
    let l = leases.get("demo-player").await?;
    let s = l.spec.unwrap_or_default();
    Ok((
        s.holder_identity.unwrap_or_default(),
        s.lease_transitions.unwrap_or(0),
    ))
}

/// Waits until a player other than `old` holds the players' Lease at an epoch above
/// `old_epoch`; returns (holder, epoch).
async fn new_leader(
    h: &Harness,
    what: &str,
    old: &str,
    old_epoch: i32,
) -> anyhow::Result<(String, i32)> {
    wait_for(what, 30 * SECOND, Duration::from_millis(100), || async {
        let (holder, epoch) = lease_of(h).await.map_err(|e| e.to_string())?;
        if !holder.is_empty() && holder != old && epoch > old_epoch {
            Ok(Some((holder, epoch)))
        } else {
            Err(format!("holder {holder:?} leaseTransitions {epoch}"))
        }
    })
    .await
}

/// The demo LogStore's first `n` replicas' addresses, comma-separated.
fn log_replicas(n: usize) -> String {
    (0..n)
        .map(|i| format!("demo-logstore-{i}.demo-logstore.{DEMO_NS}.svc:7000"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pod that leads the demo's log and the Raft term, as `status.logStore` names them,
/// once the term is above `after`.
pub(crate) async fn log_leader(h: &Harness, after: i64) -> anyhow::Result<(String, i64)> {
    wait_for(
        "a log leader in status.logStore",
        60 * SECOND,
        SECOND / 2,
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            let leader = lp
                .pointer("/status/logStore/leader")
                .and_then(Value::as_str);
            let term = lp
                .pointer("/status/logStore/raftTerm")
                .and_then(Value::as_i64);
            match (leader, term) {
                (Some(l), Some(t)) if t > after => Ok(Some((l.to_owned(), t))),
                other => Err(format!("status.logStore (leader, raftTerm) {other:?}")),
            }
        },
    )
    .await
}

/// A client of the demo's LogStore (every replica by name, as the players reach them) and
/// the shard map the operator wrote for the players.
async fn demo_log(
    h: &Harness,
) -> anyhow::Result<(logplayer::client::Log, logplayer::routing::ShardMap)> {
    use logplayer::client::Log;
    let ip = h
        .node
        .service_ip(DEMO_NS, "demo-logstore")
        .context("no IP for the LogStore")?;
    let addr = format!("{ip}:7000");
    // Every log replica by its own name, as the players reach them.
    let log = Log::connect(&log_replicas(3))
        .await
        .context("connecting to the LogStore's replicas by their names")?;
    Log::connect(&addr).await?;
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), DEMO_NS);
    let map_text = cms
        .get("demo-shard-map")
        .await?
        .data
        .and_then(|d| d.get("shard-map.yaml").cloned())
        .context("no shard-map.yaml in the ConfigMap")?;
    let map_file = h.cp.dir().join("shard-map.yaml");
    std::fs::write(&map_file, &map_text)?;
    let map = logplayer::routing::ShardMap::from_file(&map_file)?;

    Ok((log, map))
}

/// Under steady load nothing about the example changes but its live numbers (cursors, lag,
/// the log's commit index): the operator refreshes them on its resync and does not chase its
/// own status writes, nor the players' cursor writes, in a loop.
async fn operator_at_rest_under_load(h: &Harness) -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(10);
    // One LogPlayer and four Shards, each resynced every 15 s, plus slack for a Deployment
    // or a pod still settling: a loop runs several a second.
    const MOST: f64 = 10.0;
    let before = scale::footprint(h).await?.reconciles;
    tokio::time::sleep(WINDOW).await;
    let ran = scale::footprint(h).await?.reconciles - before;
    eprintln!("[e2e] reconciliations in {WINDOW:?} of steady load: {ran}");
    ensure!(
        ran <= MOST,
        "the operator ran {ran} reconciliations in {WINDOW:?} of steady load (at most {MOST}): \
         it chases status writes"
    );
    Ok(())
}

async fn failover(h: &Harness) -> anyhow::Result<()> {
    use logplayer::harness::bench::{LoadSpec, drive};

    let (log, map) = demo_log(h).await?;

    let spec = |seconds, seed| LoadSpec {
        rate: 300,
        duration: Duration::from_secs(seconds),
        count: 0,
        concurrency: 16,
        keys_per_txn: 4,
        key_space: 200,
        txn_bytes: 200,
        seed,
    };
    let l2 = log.clone();
    let running = tokio::spawn(async move { drive(&l2, &spec(30, 1), None).await });
    tokio::time::sleep(3 * SECOND).await;
    operator_at_rest_under_load(h).await?;

    let (old, old_epoch) = lease_of(h).await?;
    ensure!(!old.is_empty(), "the Lease demo-player has no holder");
    let t = Instant::now();
    // Restarted at once, the killed pod would renew its own unexpired Lease (same
    // identity) before any standby may take it; hold its restart past the lease duration.
    h.node.hold_next_restart(DEMO_NS, &old, 6 * SECOND)?;
    h.node.signal(DEMO_NS, &old, Signal::SIGKILL)?;
    let (new, new_epoch) = new_leader(
        h,
        "a standby to take the Lease demo-player",
        &old,
        old_epoch,
    )
    .await?;
    eprintln!(
        "[e2e] Lease: {old} (epoch {old_epoch}) -> {new} (epoch {new_epoch}) in {:.1?}",
        t.elapsed()
    );
    wait_for(
        "the LogPlayer status to name the new leader",
        60 * SECOND,
        SECOND,
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            let leader = lp.pointer("/status/leader").and_then(Value::as_str);
            let epoch = lp.pointer("/status/epoch").and_then(Value::as_i64);
            if leader == Some(new.as_str()) && epoch >= Some(i64::from(new_epoch)) {
                Ok(Some(()))
            } else {
                Err(format!("leader {leader:?} epoch {epoch:?}"))
            }
        },
    )
    .await?;

    // The log leader's pod is killed under the same load: another replica leads, the
    // client resends what was not answered, and nothing is lost or applied twice.
    // (The killed pod restarts within seconds and may win the next election itself: the
    // status must show a later term, whoever leads it.)
    let (log_old, term) = log_leader(h, 0).await?;
    let t = Instant::now();
    h.node.signal(DEMO_NS, &log_old, Signal::SIGKILL)?;
    let (log_new, new_term) = log_leader(h, term).await?;
    eprintln!(
        "[e2e] log leader: {log_old} (term {term}) -> {log_new} (term {new_term}) in {:.1?} \
         (as the status shows it)",
        t.elapsed()
    );

    let report = running.await?;
    ensure!(report.failed == 0, "{} appends failed", report.failed);
    ensure!(report.appended > 0, "nothing appended");
    let result = logplayer::harness::check::check(&log, &map, Duration::from_secs(60)).await?;
    eprintln!("[e2e] {} entries checked:\n{result}", result.entries);
    ensure!(result.pass, "exactly-once violated:\n{result}");
    ensure!(result.entries >= report.appended);

    // The leader saved its cursors into the Shards' status (with its own ServiceAccount):
    // each reaches the last entry its shard applied. The LogPlayer's lag is measured
    // against the log's head, which a shard that no late entry touches never reaches
    // (a quiet log keeps lag = head - last entry touching it), so only bound it.
    let want: Vec<(String, i64)> = result
        .shards
        .iter()
        .map(|s| (s.id.clone(), s.applied as i64))
        .collect();
    let bound = result.entries as i64 - want.iter().map(|(_, a)| *a).min().unwrap_or(0);
    wait_for(
        "every Shard's ackedIndex to reach its applied index",
        60 * SECOND,
        SECOND,
        || async {
            let mut seen = Vec::new();
            for (s, applied) in &want {
                let v = get_json(h, "shard", s).await?;
                let acked = v.pointer("/status/ackedIndex").and_then(Value::as_i64);
                if acked != Some(*applied) {
                    seen.push(format!("{s}: ackedIndex {acked:?}, applied {applied}"));
                }
            }
            let lp = get_json(h, "logplayer", "demo").await?;
            let lag = lp.pointer("/status/lag").and_then(Value::as_i64);
            if lag.is_none_or(|l| l > bound) {
                seen.push(format!("LogPlayer lag {lag:?} (want <= {bound})"));
            }
            if seen.is_empty() {
                Ok(Some(()))
            } else {
                Err(seen.join("; "))
            }
        },
    )
    .await?;

    // The killed pod was restarted by the stand-in and is a standby again.
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), DEMO_NS);
    let p = pods.get(&old).await?;
    let restarts = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count);
    ensure!(restarts >= Some(1), "restartCount of {old}: {restarts:?}");
    Ok(())
}
