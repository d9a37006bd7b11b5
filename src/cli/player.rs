//! `logplayer player`: one player, alone (a fixed epoch) or as a replica behind a lease,
//! with its cursor store and metrics endpoint. The flags are [`PlayerArgs`].

use anyhow::{Context, bail};

use super::{default_identity, on_signal};
use crate::player::{self, args::PlayerArgs};

/// Runs a player until SIGTERM.
pub async fn run_player(a: PlayerArgs) -> anyhow::Result<()> {
    // A player without the role would take the lease and deliver nothing: every log and
    // shard call it makes needs it.
    super::require(crate::tls::identity::Fit::Act(
        crate::tls::identity::Role::Player,
    ))?;
    let identity = a.identity.clone().unwrap_or_else(default_identity);
    let config = a.player_config(a.shard_map()?, &identity);
    // Before the metrics port and the lease: a setting that cannot work stops it here.
    config.validate()?;
    let stats = std::sync::Arc::new(player::PlayerStats::default());
    let shutdown = on_signal();
    if let Some(addr) = &a.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        println!("metrics listening on {}", listener.local_addr()?);
        let (m, s) = (stats.metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(m, listener, s).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    if a.retain_log && a.cursor_file.is_none() && !a.cursor_shard_status {
        bail!("--retain-log needs a cursor store: --cursor-file or --cursor-shard-status");
    }
    let cursors = cursor_store(&a).await?;
    let lease_config = a.lease_config()?;
    let backend: Option<std::sync::Arc<dyn crate::lease::LeaseBackend>> =
        match (&a.lease_file, &a.lease_name) {
            (Some(path), _) => Some(std::sync::Arc::new(crate::lease::FileLease::new(
                path.clone(),
                identity.clone(),
                a.lease_duration,
            )?)),
            (None, Some(name)) => {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to Kubernetes for the lease")?;
                Some(std::sync::Arc::new(crate::lease::KubeLease::new(
                    client,
                    &a.lease_namespace,
                    name,
                    &identity,
                    a.lease_duration,
                )?))
            }
            (None, None) => None,
        };
    match backend {
        Some(backend) => {
            lease_config.validate()?;
            let replica = player::replica::ReplicaConfig {
                player: config,
                lease: lease_config,
                cursors,
                keep_leading_after_loss: a.fault_keep_leading,
            };
            player::replica::run(replica, backend, stats, shutdown).await?;
        }
        None => {
            stats.metrics.leader.set(1);
            stats.metrics.epoch.set(config.epoch as i64);
            stats.metrics.set_ready(true);
            let mut p = match player::Player::start(config, stats, shutdown).await {
                Ok(p) => p,
                // SIGTERM while it waited for the LogStore: a clean stop, exit 0.
                Err(player::PlayerError::Stopped) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if let Some(c) = cursors {
                p = p.with_cursors(c);
            }
            p.run().await?;
        }
    }
    Ok(())
}

/// The cursor store the flags name (`--cursor-file`, `--cursor-shard-status`), checked.
async fn cursor_store(
    a: &PlayerArgs,
) -> anyhow::Result<Option<std::sync::Arc<dyn crate::player::cursor::CursorStore>>> {
    Ok(match (&a.cursor_file, a.cursor_shard_status) {
        (Some(p), _) => {
            // Read once now: a file that does not parse would otherwise only warn at
            // every checkpoint, while the player delivers without saving a cursor.
            let file = crate::player::cursor::FileCursors::new(p);
            crate::player::cursor::CursorStore::load(&file)
                .await
                .with_context(|| format!("reading the cursor file {}", p.display()))?;
            file.check_writable()
                .with_context(|| format!("writing the cursor file {}", p.display()))?;
            Some(std::sync::Arc::new(file))
        }
        (None, true) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes for the cursor store")?;
            Some(std::sync::Arc::new(
                crate::player::cursor::KubeCursors::new(client, &a.lease_namespace),
            ))
        }
        (None, false) => None,
    })
}
