//! `logplayer logstore members [list|add|remove]`: the membership of a replicated LogStore,
//! listed from (and changed on) its leader.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Log;
use crate::logstore::raft::members::parse_member;
use crate::proto::MembersResponse;

#[derive(Args)]
pub struct MembersArgs {
    #[command(subcommand)]
    change: Option<Change>,
    /// The replicas' addresses, comma-separated (any reachable one will do: the call goes
    /// to the leader it names).
    #[arg(
        long,
        env = "LOGPLAYER_LOGSTORE",
        default_value = "127.0.0.1:7000",
        global = true
    )]
    logstore: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Change {
    /// List the replicas (the default): id, address, voter or learner, and how far each is.
    List,
    /// Add a replica: start it first (`logplayer logstore --id ID --peers ...`), then add it
    /// here. It catches up as a learner, then becomes a voter. Adding a voter again at the
    /// same address changes nothing.
    Add {
        /// The new replica as ID=HOST:PORT (the address the other replicas dial).
        #[arg(value_parser = parse_member)]
        member: (u64, String),
        /// How long to wait for it to catch up before giving up (it then stays a learner:
        /// add it again to go on waiting, or remove it); at most a day.
        #[arg(long, default_value = "60s", value_parser = crate::logstore::raft::members::parse_catch_up)]
        catch_up: Duration,
    },
    /// Remove a replica (voter or learner). Stop it and delete its data afterwards; removing
    /// one that is not a member changes nothing.
    Remove {
        /// The replica's id.
        id: u64,
    },
}

/// Refuses a `--logstore` list whose addresses reach more than one log (or a server that is
/// not a LogStore), naming each: a change would go to the leader of whichever log answered
/// first, so one mistyped address could remove a replica of another log.
/// Returns the log they reach (an address and the id it answered), if any said.
async fn one_log(addrs: &str) -> anyhow::Result<Option<(String, String)>> {
    if !addrs.contains(',') {
        return Ok(None);
    }
    let mut logs = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (addr, asked) in crate::client::log_ids_at(addrs).await {
        match asked {
            Ok(id) if !id.is_empty() => logs.entry(id).or_default().push(addr),
            Ok(_) => {}
            // A shard's address (under TLS, a certificate of another part).
            Err(status) if let Some(why) = crate::client::not_a_log_store(&status) => {
                anyhow::bail!(
                    "{addr} (one of --logstore {addrs}): {why}: is it a shard's address? \
                     Nothing was changed"
                )
            }
            Err(_) => {} // down, or a new replica with no log yet: the client passes over it
        }
    }
    if logs.len() > 1 {
        let found = logs
            .iter()
            .map(|(id, at)| format!("log {id} at {}", at.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        anyhow::bail!(
            "--logstore {addrs} reaches more than one log ({found}): give the replicas of \
             the log to change only. Nothing was changed"
        );
    }
    Ok(logs
        .into_iter()
        .next()
        .and_then(|(id, at)| Some((at.into_iter().next()?, id))))
}

/// Runs `logplayer logstore members`.
pub async fn run(a: MembersArgs) -> anyhow::Result<()> {
    let found = one_log(&a.logstore).await?;
    let log = Log::connect(&a.logstore)
        .await
        .with_context(|| format!("connecting to the LogStore at {}", a.logstore))?;
    // The log a change names, without asking again.
    if let Some((addr, id)) = found {
        log.admit("bounds", &addr, &id)?;
    }
    let members = match a.change.unwrap_or(Change::List) {
        Change::List => log.members().await?,
        Change::Add {
            member: (id, addr),
            catch_up,
        } => {
            eprintln!(
                "adding replica {id} at {addr}: it catches up as a learner (up to {catch_up:?}), then becomes a voter"
            );
            let m = log.add_member(id, &addr, catch_up).await?;
            eprintln!("replica {id} is a voter");
            m
        }
        Change::Remove { id } => {
            let m = log.remove_member(id).await?;
            eprintln!("replica {id} is not a member; stop it and delete its data directory");
            m
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json(&members))?);
    } else {
        print(&members);
    }
    Ok(())
}

fn json(m: &MembersResponse) -> serde_json::Value {
    serde_json::json!({
        "log_id": m.log_id,
        "leader": m.leader,
        "joint": m.joint,
        "last_log": m.last_log,
        "members": m.members.iter().map(|r| serde_json::json!({
            "id": r.id,
            "addr": r.addr,
            "voter": r.voter,
            "matched": r.matched,
        })).collect::<Vec<_>>(),
    })
}

fn print(m: &MembersResponse) {
    if !m.log_id.is_empty() {
        println!("log {}", m.log_id);
    }
    println!(
        "{:<4} {:<24} {:<8} {:<8} BEHIND",
        "ID", "ADDRESS", "ROLE", "MATCHED"
    );
    for r in &m.members {
        let role = match (r.id == m.leader, r.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        let (matched, behind) = if m.last_log == 0 {
            ("?".to_string(), "?".to_string())
        } else {
            (
                r.matched.to_string(),
                m.last_log.saturating_sub(r.matched).to_string(),
            )
        };
        println!(
            "{:<4} {:<24} {:<8} {:<8} {behind}",
            r.id, r.addr, role, matched
        );
    }
    if m.joint {
        println!("(a membership change is under way)");
    }
    if m.leader == 0 {
        println!("(no leader is known: progress is unknown)");
    }
}
