//! `logplayer logstore` and `logplayer shard` (and `shard dump`): the servers of the data
//! plane, each bound, announced (`listening on ADDR`) and run until SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::on_signal;
use crate::{client, grpc, logstore, shard};

#[derive(Args)]
pub struct LogstoreArgs {
    /// Directory of the WAL segments.
    #[arg(long, env = "LOGPLAYER_DATA")]
    data: PathBuf,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Segment size in bytes before a new segment file is started.
    #[arg(long, env = "LOGPLAYER_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShardArgs {
    #[command(subcommand)]
    action: Option<ShardAction>,
    /// Shard id (as in the player's shard map).
    #[arg(long, env = "LOGPLAYER_SHARD_ID", required = true)]
    id: Option<String>,
    /// Directory of the shard's database.
    #[arg(long, env = "LOGPLAYER_DATA", required = true)]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, env = "LOGPLAYER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: String,
    /// UNSAFE, for benchmarks: commit without fsync. Still atomic and exactly-once, but a
    /// crash can roll the applied index back (the player then redelivers from the log).
    #[arg(long)]
    no_fsync: bool,
}

#[derive(Subcommand)]
pub enum ShardAction {
    /// Print a shard's state as JSON lines: offline from --data, or online from --addr.
    Dump {
        /// A stopped shard's data directory.
        #[arg(long, conflicts_with = "addr", required_unless_present = "addr")]
        data: Option<PathBuf>,
        /// A running shard's address.
        #[arg(long)]
        addr: Option<String>,
    },
}

/// Runs the LogStore.
pub async fn run_logstore(a: LogstoreArgs) -> anyhow::Result<()> {
    let (log, summary) = logstore::LogStore::open(a.data.clone(), Some(a.segment_bytes))
        .with_context(|| format!("opening the log in {}", a.data.display()))?;
    tracing::info!(
        first = summary.first,
        last = summary.last,
        torn_bytes = summary.torn_bytes_truncated,
        writers = summary.writers,
        "log opened"
    );
    let (listener, addr) = grpc::bind(&a.listen).await?;
    println!("listening on {addr}");
    logstore::service::serve(log, listener, on_signal()).await?;
    Ok(())
}

/// Runs a shard server, or prints a shard's state.
pub async fn run_shard(a: ShardArgs) -> anyhow::Result<()> {
    match a.action {
        Some(ShardAction::Dump {
            data: Some(dir), ..
        }) => {
            let store = shard::store::RedbStore::open_existing(&dir)?;
            let mut out = std::io::stdout().lock();
            let mut err = None;
            shard::ShardStore::dump(&store, &mut |k, v| {
                if err.is_none() {
                    err = std::io::Write::write_all(
                        &mut out,
                        format!("{}\n", crate::model::json_line(k, v)).as_bytes(),
                    )
                    .err();
                }
            })?;
            if let Some(e) = err {
                return Err(e.into());
            }
        }
        Some(ShardAction::Dump { addr, .. }) => {
            let addr = addr.context("give --data DIR or --addr ADDR")?;
            for line in client::ShardConn::connect(&addr).await?.dump().await? {
                println!("{line}");
            }
        }
        None => {
            let (Some(id), Some(data)) = (a.id, a.data) else {
                bail!("shard needs --id and --data");
            };
            let mut store = shard::store::RedbStore::open(&data)
                .with_context(|| format!("opening shard store in {}", data.display()))?;
            if a.no_fsync {
                tracing::warn!("--no-fsync: commits are not durable until a later sync");
                store.set_fsync(false);
            }
            let core = shard::ShardCore::open(store)?;
            let d = core.durable();
            tracing::info!(shard = %id, applied = d.applied, highest_epoch = d.highest_epoch, "shard opened");
            let (listener, addr) = grpc::bind(&a.listen).await?;
            println!("listening on {addr}");
            shard::service::serve(id, core, listener, on_signal()).await?;
        }
    }
    Ok(())
}
