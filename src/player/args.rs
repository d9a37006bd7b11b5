//! The player's flags, defined once: what `logplayer player` parses (clap derive) and what
//! the operator renders into a player pod's args ([`PlayerArgs::to_args`]), so no flag is
//! spelled out by hand anywhere else. [`PlayerArgs::player_config`] and
//! [`PlayerArgs::lease_config`] turn the flags into the settings the player and the elector
//! take.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory as _};
use serde::Serialize;

use super::PlayerConfig;
use crate::lease::LeaseConfig;
use crate::routing::{RoutingError, ShardMap};

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct PlayerArgs {
    /// LogStore address; for a replicated LogStore, every replica's, comma-separated (reads
    /// spread over them, retention follows the leader).
    #[arg(long, env = "LOGPLAYER_LOGSTORE", default_value = "127.0.0.1:7000")]
    pub logstore: String,
    /// A shard: ID=ADDR, or ID=ADDR@LO-HI[,LO-HI...] to name its slots (of 16384).
    /// Repeat per shard, or give several separated by spaces (as LOGPLAYER_SHARDS does);
    /// without slots, slots are split evenly in the order given.
    #[arg(
        long = "shard",
        env = "LOGPLAYER_SHARDS",
        value_delimiter = ' ',
        conflicts_with = "shard_map"
    )]
    pub shards: Vec<String>,
    /// A YAML shard map file instead of --shard (see the README).
    #[arg(long, env = "LOGPLAYER_SHARD_MAP")]
    pub shard_map: Option<PathBuf>,
    /// Leader epoch sent to shards (fencing token) when running without a lease. With
    /// --lease-file or --lease-name, the epoch comes from the lease each time it is won.
    /// Epochs start at 1 (a lease's first holder has 1).
    #[arg(long, env = "LOGPLAYER_EPOCH", default_value_t = 1, value_parser = crate::cli::at_least_one, conflicts_with_all = ["lease_file", "lease_name"])]
    pub epoch: u64,
    /// Run as one of several replicas behind a file lease at this path (single machine).
    #[arg(long, env = "LOGPLAYER_LEASE_FILE", conflicts_with = "lease_name")]
    pub lease_file: Option<PathBuf>,
    /// Run as one of several replicas behind this Kubernetes Lease (coordination.k8s.io/v1)
    /// in --lease-namespace, using the in-cluster or kubeconfig credentials.
    #[arg(long, env = "LOGPLAYER_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Namespace of the Kubernetes Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the lease (default: the pod name, else host-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a lease lasts without renewal; a standby takes over after this.
    #[arg(long, env = "LOGPLAYER_LEASE_DURATION", default_value = "2s", value_parser = crate::lease::parse_lease_duration)]
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops sending (must be below
    /// --lease-duration, leaving margin for clock skew and scheduling).
    #[arg(long, env = "LOGPLAYER_RENEW_DEADLINE", default_value = "1500ms", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Duration,
    /// How often replicas try to acquire or renew the lease (at least 10ms; below
    /// --renew-deadline).
    #[arg(long, env = "LOGPLAYER_RETRY_PERIOD", default_value = "250ms", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub retry_period: Duration,
    /// Save the shards' ack cursors in this JSON file every checkpoint interval.
    #[arg(
        long,
        env = "LOGPLAYER_CURSOR_FILE",
        conflicts_with = "cursor_shard_status"
    )]
    pub cursor_file: Option<PathBuf>,
    /// Save the ack cursors in each Shard resource's status (`ackedIndex`) in
    /// --lease-namespace instead (in a cluster; shard ids are the Shard resource names).
    #[arg(long, env = "LOGPLAYER_CURSOR_SHARD_STATUS")]
    pub cursor_shard_status: bool,
    /// How often the leader saves the ack cursors (and, with --retain-log, lets the LogStore
    /// drop what every shard acknowledged); at most 1h.
    #[arg(long, env = "LOGPLAYER_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// After each checkpoint, let the LogStore remove segments every shard has acknowledged
    /// (needs --cursor-file or --cursor-shard-status). A shard added later can then only
    /// start from what is left. The removal is for every reader of the log: not when
    /// another player group, with shards of its own, reads the same LogStore.
    #[arg(long, env = "LOGPLAYER_RETAIN_LOG")]
    pub retain_log: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "LOGPLAYER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Most entries per batch.
    #[arg(long, env = "LOGPLAYER_BATCH_ENTRIES", default_value_t = crate::limits::DEFAULT_BATCH_ENTRIES)]
    pub batch_entries: usize,
    /// Most bytes per batch, up to 8 MiB (never above --max-entry-bytes; one larger entry
    /// goes alone).
    #[arg(long, env = "LOGPLAYER_BATCH_BYTES", default_value_t = crate::limits::DEFAULT_BATCH_BYTES)]
    pub batch_bytes: usize,
    /// Largest transaction, in bytes: the same value as the LogStore's and every shard's
    /// --max-entry-bytes (the player checks both when it connects).
    #[arg(long, env = "LOGPLAYER_MAX_ENTRY_BYTES", default_value_t = crate::limits::DEFAULT_MAX_ENTRY_BYTES, value_parser = crate::limits::parse_flag)]
    pub max_entry_bytes: usize,
    /// Most unacknowledged batches per shard, 1 to 1024 (a shard acknowledges once a commit
    /// is durable; with small batches, a window of few batches stalls delivery behind one
    /// slow commit).
    #[arg(long, env = "LOGPLAYER_WINDOW", default_value_t = crate::limits::DEFAULT_WINDOW)]
    pub window: usize,
    /// Most unacknowledged bytes of entries per shard, up to 1 GiB (a batch still goes when
    /// nothing is in flight).
    #[arg(long, env = "LOGPLAYER_WINDOW_BYTES", default_value_t = crate::limits::DEFAULT_WINDOW_BYTES)]
    pub window_bytes: usize,
    /// Per-shard queue limit in bytes, 64 KiB to 1 GiB; past it the shard catches up from
    /// the log.
    #[arg(long, env = "LOGPLAYER_QUEUE_BYTES", default_value_t = crate::limits::DEFAULT_QUEUE_BYTES)]
    pub queue_bytes: usize,
    /// Watermark interval in entries for idle shards (1 to 1,000,000).
    #[arg(long, env = "LOGPLAYER_WATERMARK_EVERY", default_value_t = 1000)]
    pub watermark_every: u64,
    /// FAULT INJECTION, for tests only: keep delivering after the lease is lost, as a leader
    /// paused between its lease check and its send would. Only the shards' epoch fencing
    /// stops such a replica; tests use it to prove that fencing does.
    #[arg(long, hide = true)]
    pub fault_keep_leading: bool,
}

/// A `clap` command holding just the player's flags, for introspection and parsing.
#[derive(clap::Parser, Debug)]
#[command(name = "player")]
struct PlayerCommand {
    #[command(flatten)]
    args: PlayerArgs,
}

/// Errors turning flags into a shard map.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("give the shards with --shard ID=ADDR (repeat) or --shard-map FILE")]
    NoShards,
    #[error(transparent)]
    Routing(#[from] RoutingError),
}

impl PlayerArgs {
    /// Parses the flags ignoring the environment: what the operator starts from, since its
    /// own `POD_NAME` or `LOGPLAYER_*` variables must not leak into a player pod's args.
    pub fn parse_without_env<I, T>(args: I) -> Result<PlayerArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = PlayerCommand::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(argv(args))?;
        <PlayerArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The flags that reproduce these settings when parsed back: every flag whose value
    /// differs from its default, in the order they are declared. Unset options and false
    /// switches are left out, so environment defaults (`POD_NAME`, `POD_NAMESPACE`) still
    /// apply in a pod.
    pub fn to_args(&self) -> Vec<String> {
        // Field names are the clap argument ids, so the serialized struct maps each id to its
        // value. Serialization of these plain fields cannot fail.
        let values = serde_json::to_value(self).unwrap_or_default();
        let command = PlayerCommand::command();
        let mut out = Vec::new();
        for arg in command.get_arguments() {
            let (Some(long), Some(value)) = (arg.get_long(), values.get(arg.get_id().as_str()))
            else {
                continue;
            };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            let flag = format!("--{long}");
            match value {
                serde_json::Value::Null | serde_json::Value::Bool(false) => {}
                serde_json::Value::Bool(true) => out.push(flag),
                serde_json::Value::Array(items) => {
                    for item in items {
                        out.push(flag.clone());
                        out.push(plain(item));
                    }
                }
                other => {
                    let text = plain(other);
                    if !matches!(defaults.as_slice(), [d] if same_value(d, &text)) {
                        out.push(flag);
                        out.push(text);
                    }
                }
            }
        }
        out
    }

    /// The shard map the flags name (`--shard-map FILE` or `--shard` specs).
    pub fn shard_map(&self) -> Result<ShardMap, ArgsError> {
        match (&self.shard_map, self.shards.is_empty()) {
            (Some(path), _) => Ok(ShardMap::from_file(path)?),
            (None, false) => Ok(ShardMap::from_specs(&self.shards)?),
            (None, true) => Err(ArgsError::NoShards),
        }
    }

    /// The delivery settings, for a player identified as `identity`.
    pub fn player_config(&self, shards: ShardMap, identity: &str) -> PlayerConfig {
        let mut config = PlayerConfig::new(self.logstore.clone(), shards);
        config.epoch = self.epoch;
        config.batch_entries = self.batch_entries;
        config.batch_bytes = self.batch_bytes;
        config.max_entry_bytes = self.max_entry_bytes;
        config.window_batches = self.window;
        config.window_bytes = self.window_bytes;
        config.queue_bytes = self.queue_bytes;
        config.watermark_every = self.watermark_every;
        config.checkpoint_interval = self.checkpoint_interval;
        config.retain_log = self.retain_log;
        config.player_id = identity.to_owned();
        config
    }

    /// The lease timing, checked with or without a lease: a timing that could never work is
    /// refused the same way whether or not this run happens to lead alone.
    pub fn lease_config(&self) -> Result<LeaseConfig, crate::lease::LeaseError> {
        let config = LeaseConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The command line of `player` with these flags.
fn argv<I, T>(args: I) -> impl Iterator<Item = std::ffi::OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    std::iter::once(std::ffi::OsString::from("player")).chain(args.into_iter().map(Into::into))
}

/// Whether two flag values mean the same (`1500ms` and `1s 500ms` do).
fn same_value(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (humantime::parse_duration(a), humantime::parse_duration(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// A JSON scalar as a command-line value (strings without quotes).
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_args_parse_back_to_the_same_settings() {
        let mut a = PlayerArgs::parse_without_env(["--shard", "s0=h:1"]).unwrap();
        a.shards = vec!["s0=h:1@0-99".into(), "s1=h:2@100-16383".into()];
        a.lease_name = Some("demo-player".into());
        a.lease_namespace = "payments".into();
        a.lease_duration = Duration::from_millis(2500);
        a.cursor_shard_status = true;
        a.retain_log = true;
        a.window = 4;
        a.metrics_listen = Some("0.0.0.0:9090".into());
        let args = a.to_args();
        assert_eq!(PlayerArgs::parse_without_env(&args).unwrap(), a, "{args:?}");
    }

    #[test]
    fn parsing_without_env_ignores_the_environment() {
        let a = PlayerArgs::parse_without_env(["--window", "3"]).unwrap();
        assert_eq!(a.window, 3);
        assert_eq!(a.identity, None);
    }

    #[test]
    fn defaults_are_left_out_and_switches_appear_only_when_set() {
        let a = PlayerArgs::parse_without_env(["--shard-map", "/m.yaml"]).unwrap();
        assert_eq!(a.to_args(), ["--shard-map", "/m.yaml"]);
        let mut b = a.clone();
        b.lease_name = Some("l".into());
        // The epoch (default 1) conflicts with a lease: it must not be rendered.
        assert!(!b.to_args().contains(&"--epoch".to_owned()));
        assert_eq!(PlayerArgs::parse_without_env(b.to_args()).unwrap(), b);
    }
}
