//! The `logplayer` command line: one clap definition per component, each run by its own
//! module. `anyhow` lives here, at the edge, and nowhere else.
//!
//! - [`servers`]: `logstore`, `shard`, `shard dump`.
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
disconnects.\n\nStart here: `logplayer demo` runs everything on this machine and checks it."
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
    /// Run a shard server (a delivery target), or `shard dump` its state.
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

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
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

/// An error and its causes on one line, each cause once: a cause whose text an outer
/// message already includes (errors that print their source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
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

/// Parses the command line and runs the command.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Logstore(a) => servers::run_logstore(a).await,
        Command::Shard(a) => servers::run_shard(a).await,
        Command::Player(a) => player::run_player(a).await,
        Command::Status(a) => status::run_status(a).await,
        Command::Demo(a) => tools::run_demo(a).await,
        Command::Load(a) => tools::run_load(a).await,
        Command::Bench(a) => tools::run_bench(a).await,
        Command::FailoverBench(a) => tools::run_failover_bench(a).await,
        Command::Crd(a) => operator::run_crd(a),
        Command::Operator(a) => operator::run_operator(a).await,
    }
}
