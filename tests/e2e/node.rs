//! The node stand-in: no kubelet runs in the e2e control plane, so the harness plays that
//! part, for our pods only (label `app.kubernetes.io/part-of=logplayer`, any namespace).
//!
//! - **Node.** It creates the Node `standin` with a Ready condition and keeps it fresh
//!   (status heartbeat and the `kube-node-lease` Lease every few seconds), so the
//!   controller manager's node lifecycle controller never marks it unreachable and never
//!   evicts our pods.
//! - **Scheduling.** Pending pods are bound to `standin` through `pods/binding` (except in the
//!   namespace `scale` of the operator benchmark, whose pods are left alone), unless their
//!   containers request more CPU than the node has (`NODE_CPU_MILLIS`): those stay Pending
//!   with `PodScheduled=False`, reason `Unschedulable` and the scheduler's message
//!   (`0/1 nodes are available: 1 Insufficient cpu.`), as kube-scheduler would leave them.
//! - **Networking.** Every pod gets a loopback IP. A pod selected by a headless Service
//!   (or, before the Service exists, a StatefulSet pod with `spec.subdomain`) gets that
//!   Service's IP, one per Service from 127.64.0.0/10, so `<svc>.<ns>.svc` names the pod;
//!   a StatefulSet pod past ordinal 0 under it (several log replicas) gets an IP of its own
//!   from the same range, so `<pod>.<svc>.<ns>.svc` names each one (ordinal 0 keeps the
//!   Service's); other pods get a fresh IP from 127.32.0.0/16. Headless Services are written into
//!   `/etc/hosts` as `IP <svc>.<ns>.svc <svc>.<ns>.svc.cluster.local  # <tag>` (glibc reads
//!   the file on every lookup, so the operator and players resolve them too); lines carry a
//!   per-run tag and are removed exactly on shutdown; ours come first, and lines of a run
//!   that was killed before its shutdown are dropped (they would shadow ours). Two live runs
//!   on one machine are not supported (they share names and addresses).
//! - **Containers.** Each container is a real process of our binary (the image's entrypoint
//!   `/usr/local/bin/logplayer`), with `command`/`args` from the pod spec, `0.0.0.0:` rewritten
//!   to `<podIP>:` and mount paths (in args and env values) rewritten to host directories: a
//!   configMap volume becomes files in a per-pod directory, a secret volume too (the pod
//!   waits for the Secret, and its files follow changes of it, as the kubelet's do), a persistentVolumeClaim (or volumeClaimTemplate) a
//!   directory per (namespace, pod name, volume) that survives pod restarts and re-creation.
//!   The environment is built from scratch: the container's `env` (values and the fieldRefs
//!   metadata.name, metadata.namespace, status.podIP), `PATH`, `RUST_LOG`, and, when the pod
//!   mounts a service-account token, `KUBECONFIG` pointing to a kubeconfig with a
//!   TokenRequest token of the pod's ServiceAccount, so each process has exactly that
//!   ServiceAccount's RBAC.
//! - **Status.** Phase Running, podIP(s), hostIP, startTime, containerStatuses and the
//!   conditions PodScheduled/Initialized/ContainersReady/Ready, Ready only while the
//!   readinessProbe passes (httpGet: HTTP GET expecting 2xx; grpc: `grpc.health.v1` Check
//!   expecting SERVING; tcpSocket: connect), probed every `periodSeconds` honouring
//!   `failureThreshold`/`successThreshold`. Liveness probes are not run.
//! - **Restarts.** A process that exits is recorded (lastState.terminated with its exit code,
//!   and with `FallbackToLogsOnError` the end of its log as its message,
//!   restartCount + 1, not ready, waiting `CrashLoopBackOff`) and restarted after a short
//!   backoff, like restartPolicy Always.
//! - **Deletion.** A pod with a deletionTimestamp gets SIGTERM, up to
//!   terminationGracePeriodSeconds, then SIGKILL; the pod object is then deleted with grace
//!   period 0. On shutdown (or drop) every process is killed.
//! - **Logs.** Each pod's stdout and stderr go to `<root>/logs/<ns>_<pod>.log`.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node as K8sNode, Pod, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The Node our pods run on.
pub const NODE_NAME: &str = "standin";
/// The label that selects the pods the stand-in runs.
pub const POD_SELECTOR: &str = "app.kubernetes.io/part-of=logplayer";
/// The image entrypoint our binary stands for.
const ENTRYPOINT: &str = "/usr/local/bin/logplayer";
/// Delay before restarting an exited container.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const HOSTS: &str = "/etc/hosts";

/// What the stand-in knows of one running pod.
struct PodEntry {
    ns: String,
    name: String,
    ip: Ipv4Addr,
    /// Pid of the current process, 0 between runs.
    pid: Arc<std::sync::atomic::AtomicI32>,
    /// Cancelled when the pod is being deleted.
    stop: CancellationToken,
    log: PathBuf,
    /// Overrides the backoff before the next restart (once).
    hold: Arc<Mutex<Option<Duration>>>,
}

impl PodEntry {
    /// Cancels the pod's `stop` and SIGKILLs its current process, if it has one.
    fn kill_now(&self) {
        self.stop.cancel();
        let pid = self.pid.load(std::sync::atomic::Ordering::SeqCst);
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[derive(Default)]
struct State {
    /// By pod uid.
    pods: HashMap<String, PodEntry>,
    /// (namespace, service) -> IP.
    service_ips: BTreeMap<(String, String), Ipv4Addr>,
    /// (namespace, service, pod hostname) -> IP of a StatefulSet pod under its headless
    /// Service (`<pod>.<svc>.<ns>.svc`); ordinal 0 has the Service's own IP.
    member_ips: BTreeMap<(String, String, String), Ipv4Addr>,
    next_service: u32,
    next_pod: u32,
}

impl State {
    /// The entry of pod `ns/name`.
    fn pod(&self, ns: &str, name: &str) -> anyhow::Result<&PodEntry> {
        self.pods
            .values()
            .find(|e| e.ns == ns && e.name == name)
            .with_context(|| format!("the stand-in runs no pod {ns}/{name}"))
    }
}

struct Inner {
    client: Client,
    bin: PathBuf,
    root: PathBuf,
    server: String,
    ca_pem: String,
    /// Tag of our /etc/hosts lines.
    tag: String,
    state: Mutex<State>,
    /// Serializes /etc/hosts rewrites.
    hosts_lock: Mutex<()>,
    shutdown: CancellationToken,
    rust_log: String,
}

/// The running stand-in. [`StandIn::shutdown`] (or drop) kills every process it started and
/// removes its /etc/hosts lines.
pub struct StandIn {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    closed: bool,
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Server-side applies `obj` (forcing, as the stand-in's field manager) to the object
/// named `NODE_NAME` in `api`.
async fn apply_as_standin<K, P>(api: &Api<K>, obj: &P) -> kube::Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    P: serde::Serialize + std::fmt::Debug,
{
    let pp = PatchParams::apply("logplayer-e2e-standin").force();
    api.patch(NODE_NAME, &pp, &Patch::Apply(obj)).await
}

impl StandIn {
    /// Registers the Node and starts watching pods. `root` receives logs, volumes and data.
    pub async fn start(
        client: Client,
        bin: PathBuf,
        root: PathBuf,
        server: String,
        ca_pem: String,
    ) -> anyhow::Result<StandIn> {
        std::fs::create_dir_all(root.join("logs"))?;
        let inner = Arc::new(Inner {
            client,
            bin,
            root,
            server,
            ca_pem,
            tag: format!("logplayer-e2e-{}", std::process::id()),
            state: Mutex::new(State::default()),
            hosts_lock: Mutex::new(()),
            shutdown: CancellationToken::new(),
            rust_log: std::env::var("LOGPLAYER_E2E_RUST_LOG")
                .unwrap_or_else(|_| "logplayer=info,warn".to_owned()),
        });
        inner.register_node().await?;
        let mut tasks = Vec::new();
        let i = inner.clone();
        tasks.push(tokio::spawn(async move { i.heartbeat().await }));
        let i = inner.clone();
        tasks.push(tokio::spawn(async move { i.watch_pods().await }));
        Ok(StandIn {
            inner,
            tasks,
            closed: false,
        })
    }

    /// Sends `sig` to the current process of pod `ns/name`; returns its pid.
    pub fn signal(&self, ns: &str, name: &str, sig: Signal) -> anyhow::Result<i32> {
        let st = self.inner.state.lock().unwrap();
        let e = st.pod(ns, name)?;
        let pid = e.pid.load(std::sync::atomic::Ordering::SeqCst);
        anyhow::ensure!(pid > 0, "pod {ns}/{name} has no process right now");
        kill(Pid::from_raw(pid), sig).with_context(|| format!("kill -{sig} {pid}"))?;
        eprintln!("[standin] sent {sig} to {ns}/{name} (pid {pid})");
        Ok(pid)
    }

    /// Makes the next restart of pod `ns/name` wait `backoff` instead of the default
    /// (a kubelet restarts a crashed container at once the first time; a scenario that
    /// wants a standby to take over holds the restart past the lease duration).
    pub fn hold_next_restart(&self, ns: &str, name: &str, backoff: Duration) -> anyhow::Result<()> {
        let st = self.inner.state.lock().unwrap();
        let e = st.pod(ns, name)?;
        *e.hold.lock().unwrap() = Some(backoff);
        Ok(())
    }

    /// The loopback IP of pod `ns/name`.
    pub fn pod_ip(&self, ns: &str, name: &str) -> Option<Ipv4Addr> {
        let st = self.inner.state.lock().unwrap();
        st.pods
            .values()
            .find(|e| e.ns == ns && e.name == name)
            .map(|e| e.ip)
    }

    /// The pid of pod `ns/name`'s current process (0 between runs).
    pub fn pid(&self, ns: &str, name: &str) -> Option<i32> {
        let st = self.inner.state.lock().unwrap();
        st.pods
            .values()
            .find(|e| e.ns == ns && e.name == name)
            .map(|e| e.pid.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The IP given to the headless Service `ns/svc`.
    pub fn service_ip(&self, ns: &str, svc: &str) -> Option<Ipv4Addr> {
        let st = self.inner.state.lock().unwrap();
        st.service_ips
            .get(&(ns.to_owned(), svc.to_owned()))
            .copied()
    }

    /// The last `n` lines of every pod's log.
    pub fn log_tails(&self, n: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.inner.root.join("logs"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        let mut s = String::new();
        for p in logs {
            s.push_str(&format!("---- {} (last {n} lines)\n", p.display()));
            s.push_str(&crate::cluster::tail(&p, n));
        }
        s
    }

    /// Kills every process, stops watching and removes the /etc/hosts lines.
    pub async fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.inner.shutdown.cancel();
        self.kill_all();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.inner.remove_hosts();
        self.closed = true;
    }

    fn kill_all(&self) {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        for e in st.pods.values() {
            e.kill_now();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if !self.closed {
            self.inner.shutdown.cancel();
            self.kill_all();
            for t in &self.tasks {
                t.abort();
            }
            self.inner.remove_hosts();
        }
    }
}

impl Inner {
    async fn register_node(&self) -> anyhow::Result<()> {
        let nodes: Api<K8sNode> = Api::all(self.client.clone());
        let node: K8sNode = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
        }))?;
        apply_as_standin(&nodes, &node)
            .await
            .context("creating the Node")?;
        self.node_heartbeat().await?;
        Ok(())
    }

    async fn node_heartbeat(&self) -> anyhow::Result<()> {
        let nodes: Api<K8sNode> = Api::all(self.client.clone());
        let t = now();
        let status = json!({"status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the e2e node stand-in is ready",
                "lastHeartbeatTime": t, "lastTransitionTime": t,
            }],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "standin", "containerRuntimeVersion": "standin://0",
                "kubeletVersion": "v0.0.0-standin", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        nodes
            .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .context("patching the Node status")?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = Lease {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(NODE_NAME.to_owned()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(NODE_NAME.to_owned()),
                lease_duration_seconds: Some(40),
                renew_time: Some(micro_now()),
                ..Default::default()
            }),
        };
        let mut lease_json = serde_json::to_value(&lease)?;
        lease_json["apiVersion"] = json!("coordination.k8s.io/v1");
        lease_json["kind"] = json!("Lease");
        apply_as_standin(&leases, &lease_json)
            .await
            .context("renewing the node Lease")?;
        Ok(())
    }

    async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if let Err(e) = self.node_heartbeat().await {
                eprintln!("[standin] node heartbeat: {e:#}");
            }
        }
    }

    async fn watch_pods(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().labels(POD_SELECTOR);
        let mut stream = watcher(pods, cfg).boxed();
        loop {
            let ev = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => {
                    eprintln!("[standin] pod watch: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    self.clone().on_pod(p);
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    // Gone without our final delete (force-deleted): kill at once.
                    let uid = p.uid().unwrap_or_default();
                    let st = self.state.lock().unwrap();
                    if let Some(e) = st.pods.get(&uid) {
                        e.kill_now();
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    fn on_pod(self: Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let mut st = self.state.lock().unwrap();
        if let Some(e) = st.pods.get(&uid) {
            if deleting {
                e.stop.cancel();
            }
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if deleting || matches!(phase, Some("Succeeded" | "Failed")) {
            if deleting {
                // Not ours (never started, or from an earlier harness): just remove it.
                let api: Api<Pod> =
                    Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let name = pod.name_any();
                tokio::spawn(async move {
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                });
            }
            return;
        }
        if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            && n != NODE_NAME
        {
            return;
        }
        if pod.namespace().as_deref() == Some(UNRUN_NAMESPACE) {
            // The operator benchmark's pods: the operator's work is what is measured, and a
            // hundred more processes on this machine would measure the machine instead.
            return;
        }
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some();
        if !bound && cpu_requested_millis(&pod) > NODE_CPU_MILLIS {
            drop(st);
            let me = self.clone();
            tokio::spawn(async move { me.unschedulable(&pod).await });
            return;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        // Placeholder IP until the task resolves the Service; fixed below before any use.
        let entry = PodEntry {
            ns: ns.clone(),
            name: name.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            pid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
            stop: CancellationToken::new(),
            log: self.root.join("logs").join(format!("{ns}_{name}.log")),
            hold: Arc::new(Mutex::new(None)),
        };
        let hold = entry.hold.clone();
        let stop = entry.stop.clone();
        let pid = entry.pid.clone();
        let log = entry.log.clone();
        st.pods.insert(uid.clone(), entry);
        drop(st);
        let me = self.clone();
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(me.client.clone(), &ns);
            let mut pod = pod;
            loop {
                let r = me
                    .clone()
                    .run_pod(pod, stop.clone(), pid.clone(), log.clone(), hold.clone())
                    .await;
                let Err(e) = r else { break };
                eprintln!("[standin] pod {ns}/{name}: {e:#}; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = me.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                match api.get_opt(&name).await {
                    Ok(Some(p)) if p.uid().as_deref() == Some(uid.as_str()) => pod = p,
                    Ok(_) => break,
                    Err(e) => {
                        eprintln!("[standin] re-reading pod {ns}/{name}: {e}");
                        break;
                    }
                }
            }
            if stop.is_cancelled() && !me.shutdown.is_cancelled() {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            me.state.lock().unwrap().pods.remove(&uid);
        });
    }

    /// The IP of a pod: its headless Service's, else a fresh one.
    async fn assign_ip(&self, pod: &Pod) -> anyhow::Result<(Ipv4Addr, Option<String>)> {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        let mut svc_name = None;
        for s in services.list(&ListParams::default()).await?.items {
            let Some(spec) = &s.spec else { continue };
            if spec.cluster_ip.as_deref() != Some("None") {
                continue;
            }
            let Some(sel) = &spec.selector else { continue };
            if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                svc_name = Some(s.name_any());
                break;
            }
        }
        if svc_name.is_none() {
            svc_name = pod.spec.as_ref().and_then(|s| s.subdomain.clone());
        }
        let hostname = pod.spec.as_ref().and_then(|s| s.hostname.clone());
        let mut st = self.state.lock().unwrap();
        if let Some(svc) = svc_name {
            // A StatefulSet pod past ordinal 0 gets an IP of its own (its own DNS name);
            // ordinal 0 and a lone pod get the Service's.
            let member = hostname.filter(|h| !h.ends_with("-0"));
            let key = (ns.clone(), svc.clone());
            if let Some(h) = member {
                let mkey = (ns, svc.clone(), h);
                if let Some(ip) = st.member_ips.get(&mkey) {
                    return Ok((*ip, Some(svc)));
                }
                st.next_service += 1;
                let n = st.next_service;
                let ip = Ipv4Addr::new(127, 64, (n >> 8) as u8, (n & 0xff) as u8);
                st.member_ips.insert(mkey, ip);
                drop(st);
                self.write_hosts();
                return Ok((ip, Some(svc)));
            }
            if let Some(ip) = st.service_ips.get(&key) {
                return Ok((*ip, Some(svc)));
            }
            st.next_service += 1;
            let n = st.next_service;
            let ip = Ipv4Addr::new(127, 64, (n >> 8) as u8, (n & 0xff) as u8);
            st.service_ips.insert(key, ip);
            drop(st);
            self.write_hosts();
            return Ok((ip, Some(svc)));
        }
        st.next_pod += 1;
        let n = st.next_pod;
        Ok((
            Ipv4Addr::new(127, 32, (n >> 8) as u8, (n & 0xff) as u8),
            None,
        ))
    }

    /// Rewrites /etc/hosts: the machine's lines, ours, then other live runs' lines.
    fn write_hosts(&self) {
        let _g = self.hosts_lock.lock().unwrap_or_else(|e| e.into_inner());
        let ours: Vec<String> = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let services = st.service_ips.iter().map(|((ns, svc), ip)| {
                // The Service's name, and ordinal 0's own name under it.
                format!(
                    "{ip} {svc}.{ns}.svc {svc}.{ns}.svc.cluster.local {svc}-0.{svc}.{ns}.svc \
                     {svc}-0.{svc}.{ns}.svc.cluster.local # {}",
                    self.tag
                )
            });
            let members = st.member_ips.iter().map(|((ns, svc, host), ip)| {
                format!(
                    "{ip} {host}.{svc}.{ns}.svc {host}.{svc}.{ns}.svc.cluster.local # {}",
                    self.tag
                )
            });
            services.chain(members).collect()
        };
        if let Err(e) = self.rewrite_hosts(&ours) {
            eprintln!("[standin] writing {HOSTS}: {e:#}");
        }
    }

    fn remove_hosts(&self) {
        let _g = self.hosts_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.rewrite_hosts(&[]) {
            eprintln!("[standin] cleaning {HOSTS}: {e:#}");
        }
    }

    fn rewrite_hosts(&self, ours: &[String]) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(HOSTS)?;
        // Ours first, after the machine's own lines: glibc answers a name with the first
        // line that has it. Lines left by a run that was killed before its shutdown (its
        // process is gone) would otherwise send our names to that run's addresses (a
        // replica's name to another replica): they are dropped. A live run's lines stay,
        // after ours.
        let mut out: Vec<&str> = Vec::new();
        let mut live_runs: Vec<&str> = Vec::new();
        for line in text.lines() {
            match hosts_line_run(line) {
                None => out.push(line),
                Some(pid) if pid == std::process::id() => {}
                Some(pid) if e2e_process_lives(pid) => live_runs.push(line),
                Some(pid) => eprintln!(
                    "[standin] dropping {HOSTS} line of a run that is gone (pid {pid}): {line}"
                ),
            }
        }
        out.extend(ours.iter().map(String::as_str));
        out.extend(live_runs);
        let mut new = out.join("\n");
        new.push('\n');
        if new == text {
            return Ok(());
        }
        // A rename would be atomic but /etc/hosts may be a bind mount; one write() of the
        // whole file keeps the window for a torn read small.
        let tmp = format!("{HOSTS}.{}", self.tag);
        if std::fs::write(&tmp, &new).is_ok() && std::fs::rename(&tmp, HOSTS).is_ok() {
            return Ok(());
        }
        let _ = std::fs::remove_file(&tmp);
        std::fs::write(HOSTS, new)?;
        Ok(())
    }
}

/// The process id in the tag of a line our stand-ins write into /etc/hosts
/// (`... # logplayer-e2e-PID`), or `None` for any other line.
fn hosts_line_run(line: &str) -> Option<u32> {
    let (_, tag) = line.rsplit_once("# logplayer-e2e-")?;
    tag.trim().parse().ok()
}

/// Whether process `pid` is alive and an e2e test binary (a reused pid of another program
/// does not keep a dead run's lines).
fn e2e_process_lives(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with("e2e"))
}

impl Inner {
    /// Leaves a pod that fits no node Pending, as kube-scheduler does, saying why.
    async fn unschedulable(&self, pod: &Pod) {
        let said = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False")
            });
        if said {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let status = json!({
            "apiVersion": "v1", "kind": "Pod",
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
                "lastTransitionTime": now(),
            }]}
        });
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::apply("standin-scheduler").force(),
                &Patch::Apply(&status),
            )
            .await
        {
            eprintln!(
                "[standin] marking pod {} unschedulable: {e}",
                pod.name_any()
            );
        }
    }

    async fn bind(&self, pod: &Pod) -> anyhow::Result<()> {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME) {
            return Ok(());
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod.name_any(), "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await
        .context("binding the pod")?;
        Ok(())
    }

    /// A kubeconfig with a token of the pod's ServiceAccount, if it mounts one.
    async fn service_account_kubeconfig(
        &self,
        pod: &Pod,
        dir: &Path,
    ) -> anyhow::Result<Option<(PathBuf, String)>> {
        let spec = pod.spec.as_ref().context("pod has no spec")?;
        let Some(sa) = spec.service_account_name.clone() else {
            return Ok(None);
        };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let automount = match spec.automount_service_account_token {
            Some(v) => v,
            None => api
                .get_opt(&sa)
                .await?
                .and_then(|s| s.automount_service_account_token)
                .unwrap_or(true),
        };
        if !automount {
            return Ok(None);
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: Some(
                    k8s_openapi::api::authentication::v1::BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.name_any()),
                        uid: pod.uid(),
                    },
                ),
            },
            ..TokenRequest::default()
        };
        let token = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {ns}/{sa}"))?
            .status
            .context("TokenRequest has no status")?
            .token;
        use base64_lite::encode;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {sa}\n    namespace: {ns}\ncurrent-context: e2e\n",
            self.server,
            encode(self.ca_pem.as_bytes()),
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig)?;
        Ok(Some((path, token)))
    }

    /// A secret volume, as the kubelet keeps it: the pod waits until the Secret exists
    /// (up to 2 minutes), then its keys are files, written again whenever the Secret changes
    /// (checked every 2 s while the directory exists), each file replaced whole.
    async fn secret_volume(&self, ns: &str, name: &str, d: &Path) -> anyhow::Result<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let write = |secret: &Secret, d: &Path| -> std::io::Result<()> {
            for (k, v) in secret.data.iter().flatten() {
                let tmp = d.join(format!(".{k}.tmp"));
                std::fs::write(&tmp, &v.0)?;
                std::fs::rename(&tmp, d.join(k))?;
            }
            Ok(())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let secret = loop {
            if let Some(s) = api.get_opt(name).await? {
                break s;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "Secret {ns}/{name} of a secret volume did not appear within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        write(&secret, d)?;
        let (d, mut version) = (d.to_owned(), secret.metadata.resource_version.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            while d.exists() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Ok(Some(s)) = api.get_opt(&name).await
                    && s.metadata.resource_version != version
                {
                    if write(&s, &d).is_ok() {
                        eprintln!(
                            "[standin] secret volume {}: Secret {name} changed",
                            d.display()
                        );
                    }
                    version = s.metadata.resource_version.clone();
                }
            }
        });
        Ok(())
    }

    /// Writes the pod's volumes; returns mount path -> host path for the container.
    async fn volumes(
        &self,
        pod: &Pod,
        c: &Container,
        dir: &Path,
        token: Option<&str>,
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.as_ref().context("pod has no spec")?;
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let vol = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .with_context(|| format!("volume {} not in the pod spec", m.name))?;
            let host = if let Some(cm) = &vol.config_map {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
                let data = api
                    .get(&cm.name)
                    .await
                    .with_context(|| format!("ConfigMap {ns}/{}", cm.name))?;
                let d = dir.join("volumes").join(&vol.name);
                std::fs::create_dir_all(&d)?;
                for (k, v) in data.data.iter().flatten() {
                    std::fs::write(d.join(k), v)?;
                }
                d
            } else if vol.persistent_volume_claim.is_some() {
                let d = self
                    .root
                    .join("data")
                    .join(&ns)
                    .join(pod.name_any())
                    .join(&vol.name);
                std::fs::create_dir_all(&d)?;
                d
            } else if let Some(proj) = &vol.projected {
                // The service-account volume (token, ca.crt, namespace): written for
                // fidelity; the process finds its credentials through KUBECONFIG.
                let d = dir.join("volumes").join(&vol.name);
                std::fs::create_dir_all(&d)?;
                for src in proj.sources.iter().flatten() {
                    if let Some(t) = &src.service_account_token {
                        std::fs::write(d.join(&t.path), token.unwrap_or_default())?;
                    }
                    if let Some(cm) = &src.config_map {
                        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
                        if let Some(data) = api.get_opt(&cm.name).await? {
                            for item in cm.items.iter().flatten() {
                                if let Some(v) = data.data.as_ref().and_then(|d| d.get(&item.key)) {
                                    std::fs::write(d.join(&item.path), v)?;
                                }
                            }
                        }
                    }
                    if let Some(api) = &src.downward_api {
                        for item in api.items.iter().flatten() {
                            if item.field_ref.as_ref().map(|f| f.field_path.as_str())
                                == Some("metadata.namespace")
                            {
                                std::fs::write(d.join(&item.path), &ns)?;
                            }
                        }
                    }
                }
                d
            } else if let Some(secret) = &vol.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                let d = dir.join("volumes").join(&vol.name);
                std::fs::create_dir_all(&d)?;
                self.secret_volume(&ns, &name, &d).await?;
                d
            } else if vol.empty_dir.is_some() {
                let d = dir.join("volumes").join(&vol.name);
                std::fs::create_dir_all(&d)?;
                d
            } else {
                anyhow::bail!(
                    "volume {} of pod {ns}/{}: only configMap, secret, persistentVolumeClaim and emptyDir are supported",
                    vol.name,
                    pod.name_any()
                );
            };
            mounts.push((m.mount_path.clone(), host));
        }
        // Longest mount path first, so nested mounts win.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(mounts)
    }

    async fn run_pod(
        self: Arc<Self>,
        pod: Pod,
        stop: CancellationToken,
        pid_slot: Arc<std::sync::atomic::AtomicI32>,
        log: PathBuf,
        hold: Arc<Mutex<Option<Duration>>>,
    ) -> anyhow::Result<()> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        self.bind(&pod).await?;
        let known = self
            .state
            .lock()
            .unwrap()
            .pods
            .get(&uid)
            .map(|e| e.ip)
            .filter(|ip| !ip.is_unspecified());
        let (ip, svc) = match known {
            Some(ip) => (ip, None),
            None => self.assign_ip(&pod).await?,
        };
        if let Some(e) = self.state.lock().unwrap().pods.get_mut(&uid) {
            e.ip = ip;
        }
        eprintln!(
            "[standin] pod {ns}/{name} bound to {NODE_NAME}, IP {ip}{}",
            svc.map(|s| format!(" (headless Service {s})"))
                .unwrap_or_default()
        );
        let spec = pod.spec.clone().context("pod has no spec")?;
        anyhow::ensure!(
            spec.containers.len() == 1,
            "the stand-in runs one container per pod, {ns}/{name} has {}",
            spec.containers.len()
        );
        let c = spec.containers[0].clone();
        let dir = self
            .root
            .join("pods")
            .join(format!("{ns}_{name}_{}", &uid[..8.min(uid.len())]));
        std::fs::create_dir_all(&dir)?;
        let sa = self.service_account_kubeconfig(&pod, &dir).await?;
        let mounts = self
            .volumes(&pod, &c, &dir, sa.as_ref().map(|(_, t)| t.as_str()))
            .await?;
        let kubeconfig = sa.map(|(p, _)| p);
        let argv = command_line(&c, ip, &mounts)?;
        let env = environment(&pod, &c, ip, kubeconfig.as_deref(), &self.rust_log)
            .into_iter()
            .map(|(k, v)| (k, under_mounts(&v, &mounts)))
            .collect::<Vec<_>>();
        let start_time = now();
        let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
        let mut status = ContainerState::new(&c);

        loop {
            // Start the process.
            let logf = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            use std::io::Write;
            writeln!(
                &logf,
                "==== [standin] {} starting: {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                argv.join(" ")
            )?;
            let mut child = tokio::process::Command::new(&self.bin)
                .args(&argv)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf)
                .kill_on_drop(true)
                .spawn()
                .context("starting the container process")?;
            let pid = child.id().map(|p| p as i32).unwrap_or(0);
            pid_slot.store(pid, std::sync::atomic::Ordering::SeqCst);
            status.started(now());
            self.patch_status(&api, &name, ip, &start_time, &status)
                .await;

            let probe = c.readiness_probe.clone();
            let mut successes = 0;
            let mut failures = 0;
            let exit = loop {
                let period = probe_setting(&probe, |p| p.period_seconds, 10).max(1) as u64;
                let wait = if probe.is_some() && !status.ready && successes == 0 {
                    // Probe quickly until the first success.
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(period)
                };
                tokio::select! {
                    r = child.wait() => break Some(r),
                    _ = stop.cancelled() => break None,
                    _ = tokio::time::sleep(wait) => {}
                }
                let ok = match &probe {
                    None => true,
                    Some(p) => run_probe(p, &c, ip).await,
                };
                let was = status.ready;
                if ok {
                    successes += 1;
                    failures = 0;
                    if successes >= probe_setting(&probe, |p| p.success_threshold, 1) {
                        status.ready = true;
                    }
                } else {
                    failures += 1;
                    successes = 0;
                    let need = probe_setting(&probe, |p| p.failure_threshold, 3);
                    if failures >= need || !status.ready {
                        status.ready = false;
                    }
                }
                if was != status.ready {
                    eprintln!("[standin] pod {ns}/{name} ready={}", status.ready);
                    self.patch_status(&api, &name, ip, &start_time, &status)
                        .await;
                }
            };
            match exit {
                None => {
                    // Deleted: SIGTERM, grace, SIGKILL.
                    eprintln!("[standin] pod {ns}/{name} deleted: SIGTERM (grace {grace}s)");
                    if pid > 0 {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    let code = tokio::select! {
                        r = child.wait() => r.ok(),
                        _ = tokio::time::sleep(Duration::from_secs(grace)) => {
                            eprintln!("[standin] pod {ns}/{name}: grace period over, SIGKILL");
                            let _ = child.kill().await;
                            child.wait().await.ok()
                        }
                    };
                    pid_slot.store(0, std::sync::atomic::Ordering::SeqCst);
                    eprintln!("[standin] pod {ns}/{name} stopped: {code:?}");
                    if !self.shutdown.is_cancelled() {
                        let _ = api
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                    }
                    return Ok(());
                }
                Some(r) => {
                    pid_slot.store(0, std::sync::atomic::Ordering::SeqCst);
                    let code = match r {
                        Ok(s) => exit_code(s),
                        Err(_) => 255,
                    };
                    let backoff = hold.lock().unwrap().take().unwrap_or(RESTART_BACKOFF);
                    eprintln!(
                        "[standin] pod {ns}/{name} exited with {code}; restarting in {backoff:?}"
                    );
                    status.exited(code, now(), &log);
                    self.patch_status(&api, &name, ip, &start_time, &status)
                        .await;
                    tokio::select! {
                        _ = stop.cancelled() => {
                            if !self.shutdown.is_cancelled() {
                                let _ = api.delete(&name, &DeleteParams::default().grace_period(0)).await;
                            }
                            return Ok(());
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    async fn patch_status(
        &self,
        api: &Api<Pod>,
        name: &str,
        ip: Ipv4Addr,
        start: &Time,
        c: &ContainerState,
    ) {
        let ready = if c.ready { "True" } else { "False" };
        let t = now();
        let body = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": start,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": start},
                {"type": "Initialized", "status": "True", "lastTransitionTime": start},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
                {"type": "Ready", "status": ready, "lastTransitionTime": t},
            ],
            "containerStatuses": [c.to_json()],
        }});
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            eprintln!("[standin] patching the status of pod {name}: {e}");
        }
    }
}

/// One container's status as the stand-in reports it.
struct ContainerState {
    name: String,
    image: String,
    ready: bool,
    restarts: i32,
    running_since: Option<Time>,
    waiting: bool,
    last: Option<(i32, Time, Time)>,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    logs_on_error: bool,
    /// The last termination's message.
    last_message: Option<String>,
}

impl ContainerState {
    fn new(c: &Container) -> Self {
        ContainerState {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ready: false,
            restarts: 0,
            running_since: None,
            waiting: false,
            last: None,
            logs_on_error: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
            last_message: None,
        }
    }

    fn started(&mut self, t: Time) {
        self.running_since = Some(t);
        self.waiting = false;
        self.ready = false;
    }

    /// Records an exit; with `FallbackToLogsOnError` and an error, the message is the end
    /// of the container's log as the kubelet takes it (at most 2,048 bytes and 80 lines).
    fn exited(&mut self, code: i32, t: Time, log: &Path) {
        let started = self.running_since.take().unwrap_or_else(|| t.clone());
        self.last = Some((code, started, t));
        self.last_message = (self.logs_on_error && code != 0)
            .then(|| std::fs::read(log).ok())
            .flatten()
            .map(|bytes| {
                let tail = &bytes[bytes.len().saturating_sub(2048)..];
                let text = String::from_utf8_lossy(tail);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(80)..].join("\n")
            });
        self.restarts += 1;
        self.ready = false;
        self.waiting = true;
    }

    fn to_json(&self) -> serde_json::Value {
        let state = match (&self.running_since, self.waiting) {
            (Some(t), false) => json!({"running": {"startedAt": t}}),
            _ => json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off {RESTART_BACKOFF:?} restarting failed container")}}),
        };
        let last = match &self.last {
            Some((code, s, f)) => json!({"terminated": {
                "exitCode": code,
                "reason": if *code == 0 { "Completed" } else { "Error" },
                "message": self.last_message,
                "startedAt": s, "finishedAt": f}}),
            None => json!({}),
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("standin://{}", self.image),
            "containerID": "standin://0",
            "ready": self.ready,
            "started": self.running_since.is_some(),
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        })
    }
}

/// Pods in this namespace are left alone (unbound, Pending): the operator benchmark's.
pub const UNRUN_NAMESPACE: &str = "scale";

/// CPU the stand-in node offers, in millicores.
const NODE_CPU_MILLIS: u64 = 64_000;

/// The CPU a pod's containers request, in millicores (unparsable values count as 0).
fn cpu_requested_millis(pod: &Pod) -> u64 {
    // The API server stores quantities in canonical form (`1000` comes back as `1k`).
    let quantity = |q: &str| -> u64 {
        let split = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(q.len());
        let (number, suffix) = q.split_at(split);
        let scale = match suffix {
            "" => 1.0,
            "m" => 0.001,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            _ => 0.0,
        };
        number
            .parse::<f64>()
            .map(|n| (n * scale * 1000.0) as u64)
            .unwrap_or(0)
    };
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
        .map(|q| quantity(&q.0))
        .sum()
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The process argv (without argv[0]): entrypoint check, `0.0.0.0:` and mount rewrites.
fn command_line(
    c: &Container,
    ip: Ipv4Addr,
    mounts: &[(String, PathBuf)],
) -> anyhow::Result<Vec<String>> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(cmd) = &c.command {
        let (first, rest) = cmd.split_first().context("empty command")?;
        anyhow::ensure!(
            first == ENTRYPOINT || first == "logplayer",
            "container {} runs {first}; the stand-in only runs {ENTRYPOINT}",
            c.name
        );
        argv.extend(rest.iter().cloned());
    }
    argv.extend(c.args.iter().flatten().cloned());
    Ok(argv
        .into_iter()
        .map(|a| under_mounts(&a.replace("0.0.0.0:", &format!("{ip}:")), mounts))
        .collect())
}

/// A path in the container (an argument or an environment value) as the host path of the
/// mount it is under; anything else unchanged.
fn under_mounts(a: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, host) in mounts {
        if let Some(rest) = a.strip_prefix(mount.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{}{rest}", host.display());
        }
    }
    a.to_owned()
}

fn environment(
    pod: &Pod,
    c: &Container,
    ip: Ipv4Addr,
    kubeconfig: Option<&Path>,
    rust_log: &str,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("RUST_LOG".to_owned(), rust_log.to_owned()),
        ("HOSTNAME".to_owned(), pod.name_any()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ];
    if let Some(k) = kubeconfig {
        env.push(("KUBECONFIG".to_owned(), k.display().to_string()));
    }
    for e in c.env.iter().flatten() {
        let v = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(f) = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match f.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => pod.namespace().unwrap_or_default(),
                "status.podIP" => ip.to_string(),
                "spec.nodeName" => NODE_NAME.to_owned(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                other => {
                    eprintln!("[standin] unsupported fieldRef {other} in env {}", e.name);
                    String::new()
                }
            }
        } else {
            eprintln!("[standin] unsupported valueFrom in env {}", e.name);
            String::new()
        };
        env.retain(|(k, _)| k != &e.name);
        env.push((e.name.clone(), v));
    }
    env
}

/// The container port a probe names.
fn probe_port(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => Some(*p as u16),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u16),
    }
}

/// The setting `field` of `probe`, or its `default` without a probe or a value.
fn probe_setting(probe: &Option<Probe>, field: fn(&Probe) -> Option<i32>, default: i32) -> i32 {
    probe.as_ref().and_then(field).unwrap_or(default)
}

async fn run_probe(p: &Probe, c: &Container, ip: Ipv4Addr) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            let port = probe_port(&h.port, c)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/standin\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                let k = s.read(&mut buf[n..]).await.ok()?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        } else if let Some(g) = &p.grpc {
            use tonic_health::pb::health_client::HealthClient;
            use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
            let server = match g.service.as_deref() {
                Some(s) if s.contains("Shard") => logplayer::grpc::Expected::AnyShard,
                _ => logplayer::grpc::Expected::Log,
            };
            let ch = logplayer::grpc::connect(&format!("{ip}:{}", g.port), &server)
                .await
                .ok()?;
            let r = HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: g.service.clone().unwrap_or_default(),
                })
                .await
                .ok()?;
            Some(r.into_inner().status == ServingStatus::Serving as i32)
        } else if let Some(t) = &p.tcp_socket {
            let port = probe_port(&t.port, c)?;
            Some(tokio::net::TcpStream::connect((ip, port)).await.is_ok())
        } else {
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)))
}

/// Base64 (standard alphabet, padded), for the kubeconfig's CA data.
mod base64_lite {
    pub fn encode(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
