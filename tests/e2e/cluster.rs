//! The control-plane fixture: `tests/e2e/control-plane.sh up` into a temporary directory
//! (etcd, kube-apiserver with RBAC, kube-controller-manager; no kubelet, no scheduler), and
//! `down` when the [`ControlPlane`] is dropped, also on panic.
//!
//! When the binaries are not installed (neither `KUBEBUILDER_ASSETS` with all four nor a
//! cache under `~/.cache/logplayer/k8s/*/bin`), [`ControlPlane::start`] returns `Ok(None)`
//! and the scenarios skip, unless `LOGPLAYER_REQUIRE_E2E=1`, which turns that into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use kube::config::{KubeConfigOptions, Kubeconfig};

const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// Where the scripts live.
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn has_all(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// A directory holding all four binaries, if they are installed.
pub fn installed_binaries() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from)
        && has_all(&d)
    {
        return Some(d);
    }
    // Where tests/e2e/install.sh puts them: ${LOGPLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer}.
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = match var("LOGPLAYER_CACHE") {
        Some(dir) => dir,
        None => var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))?
            .join("logplayer"),
    };
    let cache = base.join("k8s");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|d| has_all(d))
        .collect();
    dirs.sort();
    dirs.pop()
}

/// True when `LOGPLAYER_REQUIRE_E2E=1`: a missing control plane fails instead of skipping.
/// Whether the control-plane binaries are installed (`tests/e2e/install.sh`).
pub fn installed() -> bool {
    installed_binaries().is_some()
}

pub fn required() -> bool {
    std::env::var("LOGPLAYER_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// A running control plane; `down` on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    /// Where kubectl and friends are.
    pub bin: PathBuf,
    /// The admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    down: bool,
}

impl ControlPlane {
    /// Starts the control plane, or `Ok(None)` when the binaries are not installed.
    pub fn start() -> anyhow::Result<Option<ControlPlane>> {
        if installed_binaries().is_none() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("logplayer-e2e-cp-")
            .tempdir()
            .context("creating the control-plane directory")?;
        let script = e2e_dir().join("control-plane.sh");
        let t = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {} up", script.display()))?;
        let mut cp = ControlPlane {
            bin: PathBuf::new(),
            kubeconfig: dir.path().join("kubeconfig"),
            server: String::new(),
            ca_pem: String::new(),
            dir,
            down: false,
        };
        if !out.status.success() {
            bail!(
                "{} up {} failed ({}); stdout: {}",
                script.display(),
                cp.dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        eprintln!("[e2e] control plane up in {:.1?}", t.elapsed());
        let env = std::fs::read_to_string(cp.dir.path().join("env"))
            .context("reading the control plane's env file")?;
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .with_context(|| format!("{k} missing from the env file:\n{env}"))
        };
        cp.bin = PathBuf::from(var("KUBEBUILDER_ASSETS")?);
        cp.server = var("APISERVER_URL")?;
        cp.ca_pem = std::fs::read_to_string(cp.dir.path().join("pki/ca.crt"))
            .context("reading pki/ca.crt")?;
        ensure!(
            cp.bin.join("kubectl").is_file(),
            "no kubectl in {}",
            cp.bin.display()
        );
        Ok(Some(cp))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs kubectl as admin; fails with its output when it exits non-zero.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_raw(args)?;
        ensure!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl as admin and returns its output whatever the exit status.
    pub fn kubectl_raw(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))
    }

    /// The last `n` lines of each component's log.
    pub fn log_tails(&self, n: usize) -> String {
        let mut s = String::new();
        for c in ["kube-apiserver", "kube-controller-manager"] {
            let p = self.dir.path().join(format!("{c}.log"));
            s.push_str(&format!("---- {} (last {n} lines)\n", p.display()));
            s.push_str(&tail(&p, n));
        }
        s
    }

    /// Stops the control plane (also done on drop).
    pub fn down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let t = std::time::Instant::now();
        let status = Command::new("bash")
            .arg(e2e_dir().join("control-plane.sh"))
            .arg("down")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => eprintln!("[e2e] control plane down in {:.1?}", t.elapsed()),
            other => eprintln!("[e2e] control-plane.sh down failed: {other:?}"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.down();
        if std::env::var_os("LOGPLAYER_E2E_KEEP").is_some() {
            let kept = self.dir.path().to_owned();
            eprintln!("[e2e] keeping {}", kept.display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        }
    }
}

/// The last `n` lines of a file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
    s.push('\n');
    s
}

/// Polls `f` every `every` until it returns `Ok(Some(_))`, or fails after `timeout` naming
/// `what` and the last thing `f` reported (`Ok(None)` keeps the previous report; `Err` is
/// a report, not a failure).
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let start = std::time::Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match f().await {
            Ok(Some(v)) => {
                eprintln!("[e2e] {what}: after {:.1?}", start.elapsed());
                return Ok(v);
            }
            Ok(None) => {}
            Err(seen) => last = seen,
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}
