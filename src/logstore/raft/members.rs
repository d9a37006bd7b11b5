//! The group's membership at runtime: listing the replicas, adding one (it catches up as a
//! learner, then becomes a voter) and removing one, both through openraft's joint consensus
//! on the leader. `logplayer logstore members` and the `Members` / `AddMember` /
//! `RemoveMember` RPCs come here.
//!
//! Every change is idempotent: adding a voter again at the same address, or removing a
//! replica that is not a member, changes nothing and answers the membership. So a client
//! may send a change again after losing the answer.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver as _;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use super::NodeId;
use super::node::Replica;
use crate::logstore::LogStoreError;

/// One replica of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    /// A voter counts toward the majority; a learner only receives the log.
    pub voter: bool,
    /// The last Raft index the leader knows this replica holds (on the leader only).
    pub matched: Option<u64>,
}

/// The membership as one replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub members: Vec<Member>,
    pub leader: Option<NodeId>,
    /// A change is under way (joint consensus: two voter sets).
    pub joint: bool,
    /// The leader's last Raft index, when this replica is the leader.
    pub last_log: Option<u64>,
    /// This replica's Raft term.
    pub raft_term: u64,
    /// The last Raft index this replica applied (the commit index, on the leader).
    pub applied: Option<u64>,
    /// The log's id, once established.
    pub log_id: Option<String>,
}

impl Members {
    fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

fn refused(what: String) -> LogStoreError {
    LogStoreError::Membership(what)
}

/// How long the leader waits for a server to say what it is before adding it.
const NEWCOMER_WAIT: Duration = Duration::from_secs(2);

/// Asks the server at `addr` what it is before it is added as replica `id` of log `log_id`,
/// and refuses a server that is not that replica: another kind of server (a shard's address,
/// a single-node LogStore), a replica of another log, or one of this log that is another
/// replica (its `--id`).
/// Each would otherwise be added as a learner that never catches up, and the change would
/// end only at its catch-up deadline with nothing named. A server that does not answer in
/// time may still be starting: the catch-up wait decides.
async fn newcomer(id: NodeId, addr: &str, log_id: &str) -> Result<(), LogStoreError> {
    use crate::proto::BoundsRequest;
    use crate::proto::log_store_client::LogStoreClient;
    let ask = async {
        let channel = crate::grpc::connect(addr, &crate::grpc::Expected::Log)
            .await
            .map_err(|e| crate::tls::client::wrong_server(&e).map(ToString::to_string))?;
        let mut request = tonic::Request::new(BoundsRequest {});
        request.set_timeout(NEWCOMER_WAIT);
        // Another kind of server says so. A new replica has no log id yet and says so
        // (UNAVAILABLE); one that is down or still starting: the catch-up wait decides (a
        // new replica started with another --id refuses what the leader sends, naming the
        // id it was sent).
        LogStoreClient::new(channel)
            .bounds(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| crate::client::not_a_log_store(&s))
    };
    let what = match tokio::time::timeout(NEWCOMER_WAIT, ask).await {
        Ok(Ok(b)) => match b.replica {
            None => format!(
                "it is a single-node LogStore (log {}), not a replica",
                b.log_id
            ),
            Some(_) if !b.log_id.is_empty() && !log_id.is_empty() && b.log_id != log_id => format!(
                "it is a replica of log {}, and this group is log {log_id}",
                b.log_id
            ),
            Some(r) if r.id != id => format!("it is replica {} (its --id), not {id}", r.id),
            Some(_) => return Ok(()),
        },
        Ok(Err(Some(why))) => why,
        Ok(Err(None)) | Err(_) => return Ok(()),
    };
    Err(refused(format!(
        "not adding replica {id} at {addr}: {what}. Nothing was changed"
    )))
}

/// How long a replica goes without a known leader before it says so, and again after.
const LEADERLESS_NOTICE: Duration = Duration::from_secs(30);

impl Replica {
    /// Says at WARN, every [`LEADERLESS_NOTICE`] while no leader is known, what this
    /// replica waits for: a new replica that does not seed waits, silently otherwise, for
    /// the group's lowest id to seed it or for a leader to add it, and a group that lost its
    /// majority elects nobody. Ends with the replica.
    pub(super) async fn say_while_leaderless(self) {
        let mut metrics = self.raft().metrics();
        let mut since = tokio::time::Instant::now();
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader.is_some() {
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= LEADERLESS_NOTICE {
                let members: Vec<String> = self
                    .members()
                    .members
                    .iter()
                    .map(|m| format!("{}={}", m.id, m.addr))
                    .collect();
                let seeder = self.peers().iter().next();
                tracing::warn!(
                    replica = self.id(),
                    seconds = since.elapsed().as_secs(),
                    ?members,
                    "no leader known: a group elects one among a majority of its voters; a new \
                     replica waits for the lowest id of --peers to seed the group{} or for a \
                     leader to add it (`logstore members add`). Check that the others run and \
                     that --peers names their addresses",
                    seeder
                        .map(|(id, addr)| format!(" (replica {id} at {addr})"))
                        .unwrap_or_default()
                );
                since = tokio::time::Instant::now();
            }
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                _ = tick => {}
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The membership this replica follows.
    pub fn members(&self) -> Members {
        let m = self.raft().metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let is_leader = m.current_leader == Some(self.id());
        Members {
            members: membership
                .nodes()
                .map(|(id, n)| Member {
                    id: *id,
                    addr: n.addr.clone(),
                    voter: voters.contains(id),
                    matched: if *id == self.id() && is_leader {
                        m.last_log_index
                    } else {
                        matched.get(id).copied().flatten().map(|l| l.index)
                    },
                })
                .collect(),
            leader: m.current_leader,
            joint: membership.get_joint_config().len() > 1,
            last_log: if is_leader { m.last_log_index } else { None },
            raft_term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            log_id: self.machine().log_id(),
        }
    }

    /// Adds replica `id` at `addr`: as a learner first, until it holds the leader's log
    /// (waiting up to `catch_up`), then as a voter. A replica that does not catch up in
    /// time stays a learner (add it again to go on waiting, or remove it).
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        catch_up: Duration,
    ) -> Result<Members, LogStoreError> {
        self.lead()?;
        if id == 0 {
            return Err(LogStoreError::InvalidMember(
                "replica ids start at 1".into(),
            ));
        }
        check_addr(&addr).map_err(LogStoreError::InvalidMember)?;
        let now = self.members();
        if let Some(other) = now.members.iter().find(|m| m.addr == addr && m.id != id) {
            return Err(refused(format!(
                "{addr} is replica {}'s address; one address serves one replica",
                other.id
            )));
        }
        match now.get(id) {
            Some(m) if m.addr != addr => {
                return Err(refused(format!(
                    "replica {id} is already a member at {}; remove it first to move it to {addr}",
                    m.addr
                )));
            }
            Some(m) if m.voter => return Ok(now),
            _ => {}
        }
        // The probe counts toward the catch-up wait, which a caller's deadline bounds.
        let asked = tokio::time::Instant::now();
        if now.get(id).is_none() {
            newcomer(id, &addr, &self.machine().log_id().unwrap_or_default()).await?;
        }
        let catch_up = catch_up.saturating_sub(asked.elapsed());
        tracing::info!(replica = id, %addr, "adding a replica: it catches up as a learner first");
        self.raft()
            .add_learner(id, BasicNode::new(addr.clone()), false)
            .await
            .map_err(|e| self.change_error(e))?;
        self.wait_caught_up(id, &addr, catch_up).await?;
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.change_error(e))?;
        tracing::info!(replica = id, %addr, "the replica is a voter");
        Ok(self.members())
    }

    /// Waits until the leader knows `id` holds its log up to where it was when asked.
    async fn wait_caught_up(
        &self,
        id: NodeId,
        addr: &str,
        catch_up: Duration,
    ) -> Result<(), LogStoreError> {
        let target = self
            .raft()
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        let deadline = tokio::time::Instant::now() + catch_up;
        let mut metrics = self.raft().metrics();
        loop {
            let matched = self.members().get(id).and_then(|m| m.matched).unwrap_or(0);
            if matched >= target {
                return Ok(());
            }
            self.lead()?;
            let changed = tokio::time::timeout_at(deadline, metrics.changed()).await;
            match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LogStoreError::Stopped),
                Err(_) => {
                    return Err(refused(format!(
                        "replica {id} at {addr} has not caught up within {catch_up:?} (it holds \
                         Raft index {matched} of {target}); it stays a learner. Check that it \
                         runs with --id {id}, that {addr} reaches it, and its log; then add it \
                         again to go on, or remove it"
                    )));
                }
            }
        }
    }

    /// Removes replica `id` from the group (voter or learner). Refuses to remove the last
    /// voter.
    pub async fn remove_member(&self, id: NodeId) -> Result<Members, LogStoreError> {
        self.lead()?;
        let now = self.members();
        let Some(m) = now.get(id) else {
            return Ok(now);
        };
        let change = if m.voter {
            let voters = now.members.iter().filter(|m| m.voter).count();
            if voters == 1 {
                return Err(refused(format!(
                    "replica {id} is the group's only voter; a group needs one"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(replica = id, "removing a replica");
        self.raft()
            .change_membership(change, false)
            .await
            .map_err(|e| self.change_error(e))?;
        Ok(self.members())
    }

    /// Starts a new group of this replica alone (see `Seed` in the proto). Changes nothing
    /// on a replica already in a group; refused on one whose `--peers` already form a group
    /// (a replica that lost its directory, seeded by a caller that took the group for gone,
    /// would start a second log beside the first, as the lowest id at start would).
    pub async fn seed(&self) -> Result<Members, LogStoreError> {
        if self.raft().is_initialized().await.unwrap_or(true) {
            return Ok(self.members());
        }
        // Its peers' answers decide (a peer that is not a replica of a group, or another
        // replica than `--peers` says, is refused by name).
        let elsewhere = super::node::joined_elsewhere(self.id(), self.peers())
            .await
            .map_err(|e| refused(e.to_string()))?;
        if elsewhere {
            return Err(refused(format!(
                "replica {}'s peers already form a group: not seeding a second one; add this \
                 replica to it with `logstore members add`",
                self.id()
            )));
        }
        let Some(addr) = self.own_addr() else {
            return Err(refused(format!(
                "replica {} has no address of its own in --peers to seed a group at",
                self.id()
            )));
        };
        tracing::info!(replica = self.id(), %addr, "seeding a new group of this one replica");
        let members = std::collections::BTreeMap::from([(self.id(), BasicNode::new(addr))]);
        if let Err(e) = self.raft().initialize(members).await {
            // Two Seeds at once: the other one seeded it.
            if self.raft().is_initialized().await.unwrap_or(false) {
                return Ok(self.members());
            }
            return Err(refused(format!("seeding: {e}")));
        }
        Ok(self.members())
    }

    fn lead(&self) -> Result<(), LogStoreError> {
        let m = self.raft().metrics();
        let leads = m.borrow_watched().current_leader == Some(self.id());
        if leads {
            Ok(())
        } else {
            Err(LogStoreError::NotLeader {
                leader: self.leader_addr(),
            })
        }
    }

    fn change_error(
        &self,
        e: RaftError<super::TypeConfig, ClientWriteError<super::TypeConfig>>,
    ) -> LogStoreError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LogStoreError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
                ChangeMembershipError::InProgress(p) => refused(format!(
                    "another membership change is under way ({p}); try again once it is done"
                )),
                other => refused(other.to_string()),
            },
            other => LogStoreError::Unknown(other.to_string()),
        }
    }
}

/// Checks that `addr` is `HOST:PORT` that a replica can dial: no scheme (the replicas put
/// `http://` in front: `http://h:7000` became `http://http://h:7000`, host `http`), an IPv6
/// host in brackets, no path or space, as the players' addresses are checked
/// ([`crate::routing::check_addr`]). Such an address was taken, and then failed at every
/// dial without naming it; the group never formed.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.contains("://") {
        return Err(format!(
            "{addr:?}: give HOST:PORT without a scheme (the replicas speak http://, or https:// with TLS)"
        ));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
            Ok(0) => Err(format!(
                "{addr:?}: port 0 cannot be dialed (a replica's address is where the others reach it)"
            )),
            Ok(_) => crate::routing::check_addr(addr).map_err(|e| format!("{addr:?}: {e}")),
            Err(_) => Err(format!("{addr:?} is not HOST:PORT")),
        },
        _ => Err(format!("{addr:?} is not HOST:PORT")),
    }
}

/// How long `AddMember` waits for a new replica to catch up when the request does not say.
pub const DEFAULT_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest `AddMember` waits for a new replica to catch up (`members add --catch-up`):
/// a day. A replica that needs longer is better brought up again (`add` again goes on
/// waiting).
pub const MAX_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Parses `members add --catch-up`: a duration above zero and at most [`MAX_CATCH_UP`].
pub fn parse_catch_up(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() || d > MAX_CATCH_UP {
        return Err(format!(
            "must be above zero and at most {}",
            humantime::format_duration(MAX_CATCH_UP)
        ));
    }
    Ok(d)
}

/// Parses one replica as `ID=HOST:PORT` (an item of `--peers`, or `members add`).
pub fn parse_member(item: &str) -> Result<(NodeId, String), String> {
    let Some((id, addr)) = item.split_once('=') else {
        return Err(format!("{item:?} is not ID=HOST:PORT"));
    };
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("{item:?}: the id {id:?} is not a number"))?;
    if id == 0 {
        return Err(format!("{item:?}: replica ids start at 1"));
    }
    let addr = addr.trim();
    check_addr(addr).map_err(|e| format!("{item:?}: {e}"))?;
    Ok((id, addr.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's address is one the others can dial: an unbracketed IPv6 host, a scheme, a
    /// path or a space is refused when parsed, naming the item (each was taken, and then
    /// failed at every dial without a word).
    #[test]
    fn a_replica_address_that_cannot_be_dialed_is_refused_when_parsed() {
        assert_eq!(parse_member("2=h:7001"), Ok((2, "h:7001".into())));
        assert_eq!(parse_member("2=[::1]:7001"), Ok((2, "[::1]:7001".into())));
        for bad in [
            "2=::1:7001",
            "2=http://h:7001",
            "2=h:7001/x",
            "2=my host:7001",
            "2=h:0",
            "2=h",
        ] {
            let e = parse_member(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        assert!(
            parse_member("2=http://h:7001")
                .unwrap_err()
                .contains("scheme")
        );
    }
}
