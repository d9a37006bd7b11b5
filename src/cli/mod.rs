//! The `logplayer` command line: one clap definition per component, each run by its own
//! module. `anyhow` lives here, at the edge, and nowhere else.
//!
//! - [`servers`]: `logstore`, `shard`, `shard dump`, `shard reset-log`.
//! - [`player`]: `player` (its flags are [`crate::player::args::PlayerArgs`]).
//! - [`operator`]: `operator`, `crd`.
//! - [`status`]: `status` (an operator's view of the log and every shard).
//! - [`tools`]: `demo`, `load`, `bench`, `failover-bench`.

pub mod members;
pub mod operator;
pub mod player;
pub mod servers;
pub mod status;
pub mod tools;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::grpc;

use crate::player::args::PlayerArgs;
use operator::{CrdArgs, OperatorArgs};
use servers::{LogstoreArgs, ShardArgs};
use status::StatusArgs;
use tools::{BenchArgs, DemoArgs, FailoverBenchArgs, LoadArgs};

#[derive(Parser)]
#[command(
    name = "logplayer",
    version,
    about = "Exactly-once, in-order delivery of a write-ahead log to storage shards",
    long_about = "LogPlayer delivers every entry of a write-ahead log to the shards that own its \
keys, exactly once and in log order per shard, through shard crashes, player crashes and \
disconnects.\n\nStart here: `logplayer demo` runs everything on this machine and checks it.",
    after_long_help = "Environment: LOGPLAYER_RUNTIME=current-thread runs the process on one \
thread (default multi-thread, one worker per core; TOKIO_WORKER_THREADS=N sets the count)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` (colours only on a terminal) or `json` (one object per
    /// line, for collectors).
    #[arg(
        long,
        global = true,
        env = "LOGPLAYER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How a command's gRPC connections are secured (every command that serves or dials).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// This process's certificate chain (PEM, leaf first). Its roles are `logplayer://ROLE/NAME`
    /// URI subject alternative names: writer, player, replica (every LogStore), admin, shard
    /// (`shard/ID`, each shard server). It must verify against --tls-ca and name what the
    /// process is. The three files are read again when they change: new connections use the
    /// new ones.
    #[arg(long, global = true, env = "LOGPLAYER_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, global = true, env = "LOGPLAYER_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<std::path::PathBuf>,
    /// The CA certificate(s) (PEM) every peer's certificate must chain to.
    #[arg(long, global = true, env = "LOGPLAYER_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<std::path::PathBuf>,
    /// Plaintext gRPC: nobody is authenticated and anyone who reaches a port may make every
    /// call (append, deliver, retain, dump). Only for a network you trust entirely.
    #[arg(
        long,
        global = true,
        env = "LOGPLAYER_INSECURE",
        // `1`, `yes`, `on` as well as `true` (and their opposites), as in most tools. Not a
        // clap conflict with the TLS flags: clap counts `LOGPLAYER_INSECURE=false` as given;
        // `security` refuses the two together only when it is true.
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure: bool,
}

impl TlsArgs {
    /// The security these flags ask for; neither TLS files nor `--insecure` is refused.
    pub fn security(&self) -> anyhow::Result<crate::tls::Security> {
        use anyhow::Context as _;
        match (&self.tls_cert, &self.tls_key, &self.tls_ca, self.insecure) {
            (Some(cert), Some(key), Some(ca), false) => {
                let files = crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                };
                let tls = crate::tls::Tls::load(files)
                    .context("loading --tls-cert/--tls-key/--tls-ca")?;
                Ok(crate::tls::Security::Tls(tls))
            }
            (None, None, None, true) => Ok(crate::tls::Security::Insecure),
            (cert, key, ca, true) if cert.is_some() || key.is_some() || ca.is_some() => {
                anyhow::bail!(
                    "--insecure (or LOGPLAYER_INSECURE) cannot be used with --tls-cert, \
                     --tls-key or --tls-ca: give the TLS files, or plaintext, not both"
                )
            }
            _ => anyhow::bail!(
                "no TLS configured: give --tls-cert, --tls-key and --tls-ca (PEM files; the \
                 CA verifies every peer, roles come from the certificates), or --insecure \
                 for plaintext with no authentication"
            ),
        }
    }

    /// Sets this process's security from the flags (see [`crate::tls::install`]); plaintext
    /// is warned about once.
    pub fn install(&self) -> anyhow::Result<()> {
        let security = self.security()?;
        if matches!(security, crate::tls::Security::Insecure) {
            tracing::warn!(
                "--insecure: gRPC is plaintext and unauthenticated; anyone who reaches a port \
                 may append, deliver, retain and read everything"
            );
        }
        crate::tls::install(security);
        Ok(())
    }

    /// Whether `--insecure` was given.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// Whether any of the TLS files was given.
    pub fn files_given(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the LogStore: the durable write-ahead log server.
    Logstore(LogstoreArgs),
    /// Run a shard server (a delivery target), `shard dump` its state, or `shard reset-log`
    /// it to another log.
    Shard(ShardArgs),
    /// Run the player: read the log, deliver to the shards.
    Player(PlayerArgs),
    /// Show the log (id, first and last index) and every shard (id, applied index, epoch,
    /// lag, log, reachability); exit 1 when something is wrong.
    Status(StatusArgs),
    /// Run everything on this machine with faults injected, and check exactly-once.
    Demo(DemoArgs),
    /// Append generated transactions to a running LogStore.
    Load(LoadArgs),
    /// Measure delivery delays and throughput over shard counts and transaction sizes, each
    /// beside the machine's floor probed in the same run (F: a 10 KB append + fdatasync; H:
    /// one loopback gRPC hop) and what each component cost (CPU per 1,000 transactions, disk
    /// bytes per payload byte, context switches per transaction; the line on stderr after
    /// each run, and the CSV/JSON columns).
    Bench(BenchArgs),
    /// Measure failover: take the leader replica down repeatedly under load and report the
    /// time to the new leader's first delivery (p50/p99), with the default lease settings.
    FailoverBench(FailoverBenchArgs),
    /// Print the LogPlayer and Shard CustomResourceDefinitions as YAML, or write them into
    /// directories (`logplayer crd --write crds --write charts/logplayer-operator/files/crds`
    /// regenerates the committed copies).
    Crd(CrdArgs),
    /// Run the Kubernetes operator: reconcile LogPlayer and Shard resources (one replica
    /// leads behind a Lease; the others stand by).
    Operator(OperatorArgs),
}

/// What is logged when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info,openraft::core::heartbeat=error";

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    // openraft warns at every failed heartbeat (every 50 ms while a replica is down); the
    // log replica says it once every 10 s instead (`logstore::raft::network`).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The most `TOKIO_WORKER_THREADS`: tokio's own limit on blocking threads, and far more
/// workers than any machine has cores.
const MAX_WORKER_THREADS: usize = 512;

/// The async runtime every command runs on: tokio's multi-threaded one (one worker per
/// core, or `TOKIO_WORKER_THREADS`), or with `LOGPLAYER_RUNTIME=current-thread` a single
/// thread (fsync-bound work keeps its own threads either way; see `blocking`). Read from
/// the environment, not a flag, because the runtime exists before the flags are parsed.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // tokio panics on a worker count it cannot use, and aborts on one too large to start
    // (each thread reserves its stack); say which variable instead.
    if let Ok(n) = std::env::var("TOKIO_WORKER_THREADS")
        && !n
            .parse::<usize>()
            .is_ok_and(|n| (1..=MAX_WORKER_THREADS).contains(&n))
    {
        return Err(format!(
            "TOKIO_WORKER_THREADS is {n:?}: a number of worker threads, 1 to {MAX_WORKER_THREADS} (or unset: one per core)"
        ));
    }
    let mut builder = match std::env::var("LOGPLAYER_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("multi-thread") => tokio::runtime::Builder::new_multi_thread(),
        Ok("current-thread") => tokio::runtime::Builder::new_current_thread(),
        Ok(other) => {
            return Err(format!(
                "LOGPLAYER_RUNTIME is {other:?}: use multi-thread (the default) or current-thread"
            ));
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

/// Runs the command line and turns an error into one line on stderr (its causes joined,
/// never a backtrace, whatever `RUST_BACKTRACE` says) and exit code 1.
pub async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line (see [`crate::grpc::one_line`]).
fn one_line(e: &anyhow::Error) -> String {
    crate::grpc::one_line(e.as_ref())
}

/// Refuses to run over TLS with a certificate that does not name what this process is
/// (see [`crate::tls::Tls::require`]); nothing to check in plaintext.
pub(crate) fn require(needed: crate::tls::identity::Fit) -> anyhow::Result<()> {
    match crate::tls::process() {
        Some(tls) => Ok(tls.require(needed)?),
        None => Ok(()),
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub(crate) fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        grpc::shutdown_signal().await;
        t.cancel();
    });
    token
}

/// This process's identity when none is given: `HOST-PID`.
pub(crate) fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "logplayer".into());
    format!("{host}-{}", std::process::id())
}

/// A number that must be at least 1 (epochs, snapshot intervals), refused in the words of
/// the tools' counts.
pub(crate) fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses the command line. A value refused that came from an environment variable rather
/// than the command line is named with its variable too (clap names only the flag, and the
/// flag is nowhere in the command a user typed).
fn parse_cli() -> Cli {
    use clap::CommandFactory as _;
    let e = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    // The flag refused and, for two that conflict, the one before it.
    let mut flags = Vec::new();
    for kind in [
        clap::error::ContextKind::InvalidArg,
        clap::error::ContextKind::PriorArg,
    ] {
        match e.get(kind) {
            Some(clap::error::ContextValue::String(s)) => flags.push(s.clone()),
            Some(clap::error::ContextValue::Strings(v)) => flags.extend(v.iter().cloned()),
            _ => {}
        }
    }
    let notes: Vec<String> = flags
        .iter()
        .filter_map(|f| {
            let flag = f.split_whitespace().next().unwrap_or_default();
            let typed = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            let var = flag
                .strip_prefix("--")
                .filter(|_| !typed)
                .and_then(|long| env_of(&Cli::command(), long))
                .filter(|var| std::env::var_os(var).is_some())?;
            Some(format!(
                "note: the value of {flag} came from the environment variable {var}"
            ))
        })
        .collect();
    if notes.is_empty() {
        e.exit()
    }
    let _ = e.print();
    for note in notes {
        eprintln!("{note}");
    }
    std::process::exit(e.exit_code())
}

/// The environment variable of the flag `--long` in `cmd` or any of its subcommands.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
}

/// Parses the command line and runs the command.
pub async fn run() -> anyhow::Result<()> {
    let cli = parse_cli();
    init_tracing(cli.log_format);
    // Every command that serves or dials gRPC runs TLS or, explicitly, plaintext. `demo`,
    // `bench` and `failover-bench` issue their own certificates; the operator issues each
    // LogPlayer's (its `spec.tls`) and dials with that LogPlayer's admin certificate, so the
    // flags would do nothing there: refused rather than ignored.
    if matches!(cli.command, Command::Operator(_) | Command::Crd(_))
        && (cli.tls.files_given() || cli.tls.insecure())
    {
        anyhow::bail!(
            "--tls-cert, --tls-key, --tls-ca and --insecure (or their LOGPLAYER_* variables) \
             do nothing for this command: the operator issues each LogPlayer's certificates \
             (its spec.tls) and dials with them; leave them out"
        );
    }
    let dials = match &cli.command {
        Command::Logstore(_) | Command::Player(_) | Command::Status(_) | Command::Load(_) => true,
        Command::Shard(a) => a.dials(),
        _ => false,
    };
    if dials {
        cli.tls.install()?;
    }
    match cli.command {
        Command::Logstore(a) => servers::run_logstore(a).await,
        Command::Shard(a) => servers::run_shard(a).await,
        Command::Player(a) => player::run_player(a).await,
        Command::Status(a) => status::run_status(a).await,
        Command::Demo(a) => tools::run_demo(a, &cli.tls).await,
        Command::Load(a) => tools::run_load(a).await,
        Command::Bench(a) => tools::run_bench(a, &cli.tls).await,
        Command::FailoverBench(a) => tools::run_failover_bench(a, &cli.tls).await,
        Command::Crd(a) => operator::run_crd(a),
        Command::Operator(a) => operator::run_operator(a).await,
    }
}
