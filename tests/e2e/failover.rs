//! Scenarios e and f: the leading player frozen (SIGSTOP) past its lease, and the failover
//! time through the real Lease over repeated SIGKILLs. Both run load through the LogStore the
//! whole time and end with the exactly-once check over the whole log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kube::ResourceExt;
use kube::api::Api;
use logplayer::client::{Log, ShardConn};
use logplayer::routing::ShardMap;
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{
    DEMO_NS, Harness, SECOND, condition, demo_log, get_json, lease_of, new_leader, ready_pods,
    wait_ready_pods,
};
use crate::cluster::wait_for;

const PLAYERS: &str = "app.kubernetes.io/instance=demo,app.kubernetes.io/component=player";
/// The players' metrics port (the LogPlayer's default `metricsPort`).
const METRICS_PORT: u16 = 9090;
/// The demo's lease duration (the LogPlayer default).
const LEASE: Duration = Duration::from_secs(2);

/// Load that runs until stopped: `drive` in 2 s rounds at 300 appends/s.
struct Background {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Background {
    fn start(log: &Log, seed: u64) -> Background {
        use logplayer::harness::bench::{LoadSpec, drive};
        let stop = Arc::new(AtomicBool::new(false));
        let (log, s) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut appended, mut failed) = (0, 0);
            let mut round = 0;
            while !s.load(Ordering::SeqCst) {
                let spec = LoadSpec {
                    rate: 300,
                    duration: 2 * SECOND,
                    count: 0,
                    concurrency: 16,
                    keys_per_txn: 4,
                    key_space: 200,
                    txn_bytes: 200,
                    seed: seed * 1000 + round,
                };
                let r = drive(&log, &spec, None).await;
                appended += r.appended;
                failed += r.failed;
                round += 1;
            }
            (appended, failed)
        });
        Background { stop, task }
    }

    /// Stops after the current round; (appended, failed).
    async fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        let (appended, failed) = self.task.await.context("the load task")?;
        ensure!(
            failed == 0,
            "{failed} of {} appends failed",
            appended + failed
        );
        ensure!(appended > 0, "nothing appended");
        Ok((appended, failed))
    }
}

/// Direct connections to every shard server of the map.
struct Shards {
    conns: Vec<(String, ShardConn)>,
}

impl Shards {
    async fn connect(map: &ShardMap) -> anyhow::Result<Shards> {
        let mut conns = Vec::new();
        for s in &map.shards {
            let c = ShardConn::connect(&s.addr, None)
                .await
                .with_context(|| format!("connecting to shard {} at {}", s.id, s.addr))?;
            conns.push((s.id.clone(), c));
        }
        Ok(Shards { conns })
    }

    /// Every shard's (applied index, highest epoch seen), in map order.
    async fn applied(&self) -> Result<Vec<(u64, u64)>, String> {
        let all = futures::future::join_all(self.conns.iter().map(|(_, c)| c.applied())).await;
        all.into_iter()
            .zip(&self.conns)
            .map(|(r, (id, _))| {
                r.map(|a| (a.applied_index, a.highest_epoch))
                    .map_err(|e| format!("shard {id}: {e}"))
            })
            .collect()
    }

    fn id(&self, i: usize) -> &str {
        &self.conns[i].0
    }

    fn len(&self) -> usize {
        self.conns.len()
    }
}

/// One metric's value from pod `name`'s `/metrics` (plain HTTP/1.1 on the pod IP).
async fn metric(h: &Harness, name: &str, metric: &str) -> Result<f64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ip = h
        .node
        .pod_ip(DEMO_NS, name)
        .ok_or_else(|| format!("no IP for pod {name}"))?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect((ip, METRICS_PORT)).await?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {ip}:{METRICS_PORT}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(2 * SECOND, fetch)
        .await
        .map_err(|_| format!("GET http://{ip}:{METRICS_PORT}/metrics timed out"))?
        .map_err(|e| format!("GET http://{ip}:{METRICS_PORT}/metrics: {e}"))?;
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == metric).then(|| v.trim().parse::<f64>().ok())?
        })
        .ok_or_else(|| format!("no {metric} in the metrics of {name}"))
}

async fn restart_count(h: &Harness, name: &str) -> anyhow::Result<i32> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(h.client.clone(), DEMO_NS);
    let p = pods.get(name).await?;
    Ok(p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count))
}

/// The exactly-once check over the whole log.
async fn exactly_once(log: &Log, map: &ShardMap, appended: u64) -> anyhow::Result<()> {
    let result = logplayer::harness::check::check(log, map, Duration::from_secs(60)).await?;
    eprintln!("[e2e] {} entries checked:\n{result}", result.entries);
    ensure!(result.pass, "exactly-once violated:\n{result}");
    ensure!(
        result.entries >= appended,
        "the log holds {} entries, {appended} were appended in this scenario alone",
        result.entries
    );
    Ok(())
}

/// Waits until the LogPlayer status names `leader` at `epoch`.
async fn wait_status_leader(h: &Harness, leader: &str, epoch: i32) -> anyhow::Result<()> {
    wait_for(
        &format!("the LogPlayer status to name the leader {leader} at epoch {epoch}"),
        60 * SECOND,
        Duration::from_millis(200),
        || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            let l = lp.pointer("/status/leader").and_then(Value::as_str);
            let e = lp.pointer("/status/epoch").and_then(Value::as_i64);
            if l == Some(leader) && e == Some(i64::from(epoch)) {
                Ok(Some(()))
            } else {
                Err(format!("status.leader {l:?} epoch {e:?}"))
            }
        },
    )
    .await
}

// ---- e. frozen leader --------------------------------------------------------------------

/// Waits (up to 30 s) until the player pod `name` is Ready per the API server if `ready`,
/// or not Ready if not.
async fn wait_player_readiness(
    h: &Harness,
    what: &str,
    name: &str,
    ready: bool,
) -> anyhow::Result<()> {
    wait_for(what, 30 * SECOND, SECOND / 2, || async {
        let pods = ready_pods(&h.client, DEMO_NS, PLAYERS).await?;
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        if names.iter().any(|n| n == name) == ready {
            Ok(Some(()))
        } else {
            Err(format!("ready players {names:?}"))
        }
    })
    .await
}

pub(crate) async fn frozen_leader(h: &Harness) -> anyhow::Result<()> {
    let (log, map) = demo_log(h).await?;
    let shards = Shards::connect(&map).await?;
    wait_ready_pods(h, DEMO_NS, PLAYERS, 3, 60 * SECOND).await?;
    let load = Background::start(&log, 5);
    tokio::time::sleep(2 * SECOND).await;

    let (old, old_epoch) = lease_of(h).await?;
    ensure!(!old.is_empty(), "the Lease demo-player has no holder");
    let restarts = restart_count(h, &old).await?;
    let t = Instant::now();
    h.node.signal(DEMO_NS, &old, Signal::SIGSTOP)?;
    // Whatever happens while it is frozen, resume it before returning.
    let frozen = async {
        let what = format!("a standby to take the Lease from the frozen {old} (epoch {old_epoch})");
        let (new, new_epoch) = new_leader(h, &what, &old, old_epoch).await?;
        eprintln!(
            "[e2e] Lease: frozen {old} (epoch {old_epoch}) -> {new} (epoch {new_epoch}) after {:.1?}",
            t.elapsed()
        );
        // The new leader delivers while the old one is still frozen: every shard applies
        // entries stamped with the new epoch.
        every_shard_applies_at(&shards, &new, new_epoch, 30 * SECOND).await?;
        wait_status_leader(h, &new, new_epoch).await?;
        // Frozen, it fails its readiness probe: stay frozen until the API server shows it
        // not Ready, so that its return to Ready below is the resumed process's doing.
        let what = format!("the frozen {old} to be not Ready");
        wait_player_readiness(h, &what, &old, false).await?;
        Ok::<_, anyhow::Error>((new, new_epoch))
    }
    .await;
    h.node
        .signal(DEMO_NS, &old, Signal::SIGCONT)
        .context("resuming the frozen leader")?;
    let (new, new_epoch) = frozen?;
    eprintln!("[e2e] {old} resumed {:.1?} after SIGSTOP", t.elapsed());

    // Resumed, the old leader finds its lease gone: it must not take it back. Watch the
    // Lease for a few lease durations.
    let watch = Instant::now();
    while watch.elapsed() < 3 * LEASE {
        let (holder, epoch) = lease_of(h).await?;
        ensure!(
            holder == new && epoch == new_epoch,
            "{:.1?} after SIGCONT of {old}, the Lease is held by {holder:?} at epoch {epoch}, \
             not {new} at epoch {new_epoch}",
            watch.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It is a Ready standby again (per the API server: its readiness probe passes again),
    // and says so itself.
    let what = format!("the resumed {old} to be a Ready pod");
    wait_player_readiness(h, &what, &old, true).await?;
    wait_for(
        &format!("the resumed {old} to report logplayer_player_leader 0"),
        10 * SECOND,
        SECOND / 2,
        || async {
            let v = metric(h, &old, "logplayer_player_leader").await?;
            if v == 0.0 {
                Ok(Some(()))
            } else {
                Err(format!("logplayer_player_leader {v}"))
            }
        },
    )
    .await?;
    wait_status_leader(h, &new, new_epoch).await?;
    let lp = get_json(h, "logplayer", "demo")
        .await
        .map_err(anyhow::Error::msg)?;
    let ready = condition(&lp, "Ready");
    ensure!(
        ready.as_ref().is_some_and(|c| c["status"] == "True"),
        "LogPlayer demo Ready after the frozen leader resumed: {ready:?}"
    );
    eprintln!(
        "[e2e] {old}: restartCount {restarts} before SIGSTOP, {} now",
        restart_count(h, &old).await?
    );

    frozen_log_follower(h).await?;
    let (appended, _) = load.finish().await?;
    exactly_once(&log, &map, appended).await?;
    // Nothing the resumed leader sent got through: no shard saw an epoch above the new one,
    // and none applies at an older one.
    let after = shards.applied().await.map_err(anyhow::Error::msg)?;
    for (i, (_, e)) in after.iter().enumerate() {
        ensure!(
            *e == new_epoch as u64,
            "shard {} has seen epoch {e}, the Lease is at {new_epoch}",
            shards.id(i)
        );
    }
    Ok(())
}

const LOG_REPLICAS: &str = "app.kubernetes.io/instance=demo,app.kubernetes.io/component=logstore";

/// The demo LogPlayer's `status.problems`, as (reason, message).
async fn problems(h: &Harness) -> Result<Vec<(String, String)>, String> {
    Ok(problems_in(&get_json(h, "logplayer", "demo").await?))
}

/// `status.problems` of a LogPlayer read as JSON, as (reason, message).
fn problems_in(lp: &Value) -> Vec<(String, String)> {
    lp.pointer("/status/problems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let field = |f: &str| p[f].as_str().unwrap_or_default().to_owned();
            (field("reason"), field("message"))
        })
        .collect()
}

/// A log follower frozen under load (pod 0 unless it leads: the first replica the operator
/// dials): its pod is not Ready (its probes are the process's own HTTP answers; a TCP
/// connect, which its kernel accepts for it, kept it Ready), `status.problems` names it
/// `LogReplicaDown` and, at no poll, `LogStoreUnreachable` or `NoLogLeader` (the two others
/// serve the log; asked one replica after the other, the frozen first one took the
/// question's whole time), nor `Ready` False for it (a majority appends and delivers);
/// resumed, it is Ready again and no longer down.
async fn frozen_log_follower(h: &Harness) -> anyhow::Result<()> {
    let leader = super::log_leader(h, 0).await?.0;
    let follower = (0..3)
        .map(|i| format!("demo-logstore-{i}"))
        .find(|p| *p != leader)
        .context("no log follower")?;
    let named = format!("(pod {follower})");
    let t = Instant::now();
    h.node.signal(DEMO_NS, &follower, Signal::SIGSTOP)?;
    // What must never show while only a follower is frozen: the log served by the two
    // others read as unreachable, or as leaderless, or not Ready for it.
    let wrong = std::sync::Mutex::new(Vec::new());
    let note_wrong = |lp: &Value| {
        let problems = problems_in(lp);
        let mut seen: Vec<(String, String)> = problems
            .into_iter()
            .filter(|(r, _)| r == "LogStoreUnreachable" || r == "NoLogLeader")
            .collect();
        if let Some(ready) = condition(lp, "Ready") {
            let reason = ready["reason"].as_str().unwrap_or_default();
            if ready["status"] == "False" && reason.starts_with("Log") {
                seen.push((
                    format!("Ready False: {reason}"),
                    ready["message"].to_string(),
                ));
            }
        }
        wrong
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(seen);
    };
    if follower != "demo-logstore-0" {
        eprintln!("[e2e] demo-logstore-0 leads the log: freezing {follower} instead");
    }
    let frozen = async {
        let what = format!("the frozen log follower {follower} to be not Ready");
        wait_for(&what, 30 * SECOND, SECOND / 2, || async {
            note_wrong(&get_json(h, "logplayer", "demo").await?);
            let pods = ready_pods(&h.client, DEMO_NS, LOG_REPLICAS).await?;
            let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            if names.contains(&follower) {
                Err(format!("ready log replicas {names:?}"))
            } else {
                Ok(Some(()))
            }
        })
        .await?;
        let what = format!("status.problems: LogReplicaDown naming {follower}");
        wait_for(&what, 30 * SECOND, SECOND / 2, || async {
            let lp = get_json(h, "logplayer", "demo").await?;
            note_wrong(&lp);
            let problems = problems_in(&lp);
            let down = problems
                .iter()
                .any(|(r, m)| r == "LogReplicaDown" && m.contains(&named));
            if down {
                Ok(Some(()))
            } else {
                Err(format!("problems {problems:?}"))
            }
        })
        .await?;
        eprintln!(
            "[e2e] frozen log follower {follower}: not Ready and named in status.problems after {:.1?}",
            t.elapsed()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    h.node
        .signal(DEMO_NS, &follower, Signal::SIGCONT)
        .context("resuming the frozen log follower")?;
    frozen?;
    let wrong = wrong
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ensure!(
        wrong.is_empty(),
        "while only the log follower {follower} was frozen, status.problems said {wrong:?}"
    );
    let what = format!("the resumed log follower {follower} to be Ready and no longer down");
    wait_for(&what, 60 * SECOND, SECOND / 2, || async {
        let pods = ready_pods(&h.client, DEMO_NS, LOG_REPLICAS).await?;
        let ready = pods.iter().any(|p| p.name_any() == follower);
        let problems = problems(h).await?;
        let down = problems
            .iter()
            .any(|(r, m)| r == "LogReplicaDown" && m.contains(&named));
        if ready && !down {
            Ok(Some(()))
        } else {
            Err(format!("ready {ready}, problems {problems:?}"))
        }
    })
    .await
}

/// The players' Lease deleted by hand under load (`kubectl delete lease`): made again from
/// epoch 1, every player it elects is fenced by the shards (which saw epoch `epoch`) and
/// stops. The status says `LeaseEpochBehind` with the epoch to raise it to; raised by hand
/// (`kubectl patch lease`), a player leads above it and every shard applies again.
async fn deleted_lease(h: &Harness, shards: &Shards, epoch: i32) -> anyhow::Result<()> {
    wait_for(
        &format!("every Shard's ackedEpoch to reach {epoch}"),
        30 * SECOND,
        SECOND / 2,
        || async {
            let mut seen = Vec::new();
            for i in 0..shards.len() {
                let v = get_json(h, "shard", shards.id(i)).await?;
                seen.push(v.pointer("/status/ackedEpoch").and_then(Value::as_i64));
            }
            if seen.iter().all(|e| *e == Some(i64::from(epoch))) {
                Ok(Some(()))
            } else {
                Err(format!("ackedEpoch {seen:?}"))
            }
        },
    )
    .await?;
    // Each player fenced stops and is restarted: hold that for a while, so that the crash
    // loop does not climb past the shards' epoch by itself before the status is read.
    for p in ready_pods(&h.client, DEMO_NS, PLAYERS)
        .await
        .map_err(anyhow::Error::msg)?
    {
        h.node
            .hold_next_restart(DEMO_NS, &p.name_any(), 20 * SECOND)?;
    }
    h.cp.kubectl(&["-n", DEMO_NS, "delete", "lease", "demo-player"])?;
    let raise = wait_for(
        "status.problems: LeaseEpochBehind, with the epoch to raise the Lease to",
        60 * SECOND,
        SECOND / 2,
        || async {
            let problems = problems(h).await?;
            let said = problems
                .iter()
                .find(|(r, _)| r == "LeaseEpochBehind")
                .and_then(|(_, m)| m.split("spec.leaseTransitions to ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<i32>().ok());
            match said {
                Some(n) => Ok(Some(n)),
                None => Err(format!("problems {problems:?}")),
            }
        },
    )
    .await?;
    ensure!(
        raise == epoch + 1,
        "LeaseEpochBehind says raise to {raise}, the shards acknowledged {epoch}"
    );
    let patch = format!("{{\"spec\":{{\"leaseTransitions\":{raise}}}}}");
    h.cp.kubectl(&[
        "-n",
        DEMO_NS,
        "patch",
        "lease",
        "demo-player",
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    leads_and_delivers_above(h, shards, raise, "a player").await?;
    wait_for(
        "LeaseEpochBehind to clear",
        60 * SECOND,
        SECOND / 2,
        || async {
            let problems = problems(h).await?;
            if problems.iter().any(|(r, _)| r == "LeaseEpochBehind") {
                Err(format!("problems {problems:?}"))
            } else {
                Ok(Some(()))
            }
        },
    )
    .await
}

/// Waits (up to `wait`) until every shard applies entries past what it had applied, at
/// `epoch`: the leader `holder` delivers.
async fn every_shard_applies_at(
    shards: &Shards,
    holder: &str,
    epoch: i32,
    wait: Duration,
) -> anyhow::Result<()> {
    let base = shards.applied().await.map_err(anyhow::Error::msg)?;
    wait_for(
        &format!("every shard to apply entries from {holder} at epoch {epoch}"),
        wait,
        Duration::from_millis(100),
        || async {
            let now = shards.applied().await?;
            let behind: Vec<String> = now
                .iter()
                .zip(&base)
                .enumerate()
                .filter(|(_, ((a, e), (b, _)))| a <= b || *e != epoch as u64)
                .map(|(i, ((a, e), (b, _)))| {
                    format!("{}: applied {a} (was {b}) epoch {e}", shards.id(i))
                })
                .collect();
            if behind.is_empty() {
                Ok(Some(()))
            } else {
                Err(behind.join("; "))
            }
        },
    )
    .await
}

/// Waits until `who` holds the players' Lease above `epoch` and every shard applies
/// entries at that epoch; returns (holder, epoch).
async fn leads_and_delivers_above(
    h: &Harness,
    shards: &Shards,
    epoch: i32,
    who: &str,
) -> anyhow::Result<(String, i32)> {
    let (holder, new_epoch) = wait_for(
        &format!("{who} to lead above epoch {epoch}"),
        120 * SECOND,
        SECOND / 2,
        || async {
            let (holder, e) = lease_of(h).await.map_err(|e| e.to_string())?;
            if !holder.is_empty() && e > epoch {
                Ok(Some((holder, e)))
            } else {
                Err(format!("holder {holder:?} at epoch {e}"))
            }
        },
    )
    .await?;
    every_shard_applies_at(shards, &holder, new_epoch, 60 * SECOND).await?;
    Ok((holder, new_epoch))
}

/// The players' ServiceAccount deleted by hand under load (`kubectl delete sa`): the
/// operator makes it again, with a new uid, which invalidates every token the players hold
/// (the Lease with them) until their kubelet refreshes it, up to an hour. The new uid rolls
/// the players instead: one of the new pods leads at a higher epoch and every shard
/// applies again.
async fn deleted_service_account(h: &Harness, shards: &Shards) -> anyhow::Result<()> {
    let (_, epoch) = lease_of(h).await?;
    let t = Instant::now();
    h.cp.kubectl(&["-n", DEMO_NS, "delete", "serviceaccount", "demo-player"])?;
    let who = "a player with a token of the new ServiceAccount";
    let (holder, new_epoch) = leads_and_delivers_above(h, shards, epoch, who).await?;
    eprintln!(
        "[e2e] ServiceAccount deleted: {holder} leads at epoch {new_epoch} and delivers after {:.1?}",
        t.elapsed()
    );
    Ok(())
}

// ---- f. failover time -----------------------------------------------------------------------

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[u128], p: f64) -> u128 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(crate) async fn failover_times(h: &Harness) -> anyhow::Result<()> {
    let kills: usize = std::env::var("LOGPLAYER_E2E_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (log, map) = demo_log(h).await?;
    let shards = Shards::connect(&map).await?;
    wait_ready_pods(h, DEMO_NS, PLAYERS, 3, 60 * SECOND).await?;
    let load = Background::start(&log, 6);
    tokio::time::sleep(SECOND).await;

    let (_, mut epoch) = lease_of(h).await?;
    let mut epochs = vec![epoch];
    let mut to_lease = Vec::new();
    let mut to_delivery = Vec::new();
    let poll = Duration::from_millis(20);
    for i in 1..=kills {
        // A leader that Kubernetes sees Ready, and a Ready standby to take over.
        let leader = wait_for(
            &format!("kill {i}/{kills}: the Lease held by a Ready player, with a Ready standby"),
            60 * SECOND,
            Duration::from_millis(100),
            || async {
                let (holder, e) = lease_of(h).await.map_err(|e| e.to_string())?;
                let ready = ready_pods(&h.client, DEMO_NS, PLAYERS).await?;
                let names: Vec<String> = ready.iter().map(|p| p.name_any()).collect();
                if e != epoch {
                    // Reported as the failure below.
                    return Ok(Some(Err(format!(
                        "the Lease moved to {holder:?} at epoch {e} without a kill (was epoch {epoch})"
                    ))));
                }
                if names.contains(&holder) && names.len() >= 2 {
                    Ok(Some(Ok(holder)))
                } else {
                    Err(format!("holder {holder:?}; ready players {names:?}"))
                }
            },
        )
        .await?
        .map_err(anyhow::Error::msg)?;

        // Restarted at once, the killed pod would take its own lease back as a new term
        // before any standby may; hold its restart past the lease duration.
        h.node.hold_next_restart(DEMO_NS, &leader, LEASE + SECOND)?;
        let t0 = Instant::now();
        h.node.signal(DEMO_NS, &leader, Signal::SIGKILL)?;
        let (new, new_epoch, lease_ms) = wait_for(
            &format!("kill {i}/{kills}: a standby to take the Lease from {leader} (epoch {epoch})"),
            20 * SECOND,
            poll,
            || async {
                let (holder, e) = lease_of(h).await.map_err(|e| e.to_string())?;
                if !holder.is_empty() && holder != leader && e > epoch {
                    Ok(Some((holder, e, t0.elapsed().as_millis())))
                } else {
                    Err(format!("holder {holder:?} leaseTransitions {e}"))
                }
            },
        )
        .await?;
        // What the killed leader had sent was applied long ago (a lease duration passed):
        // from here on, a rising applied index is the new leader's delivery.
        let base = shards.applied().await.map_err(anyhow::Error::msg)?;
        let (first_ms, shard, seen_epoch) = wait_for(
            &format!("kill {i}/{kills}: a shard to apply an entry from {new} (epoch {new_epoch})"),
            20 * SECOND,
            poll,
            || async {
                let now = shards.applied().await?;
                match now.iter().zip(&base).position(|((a, _), (b, _))| a > b) {
                    Some(j) => Ok(Some((
                        t0.elapsed().as_millis(),
                        shards.id(j).to_owned(),
                        now[j].1,
                    ))),
                    None => Err(format!("applied {now:?} (at the Lease change {base:?})")),
                }
            },
        )
        .await?;
        eprintln!(
            "[e2e] kill {i}/{kills}: {leader} (epoch {epoch}) -> {new} (epoch {new_epoch}): \
             Lease after {lease_ms} ms, first entry applied (shard {shard}) after {first_ms} ms"
        );
        ensure!(
            seen_epoch == new_epoch as u64,
            "kill {i}: shard {shard} applied an entry after the Lease moved to epoch \
             {new_epoch}, but its highest epoch is {seen_epoch}"
        );
        ensure!(
            new_epoch > epoch,
            "kill {i}: epoch {new_epoch} after {epoch}"
        );
        epoch = new_epoch;
        epochs.push(epoch);
        to_lease.push(lease_ms);
        to_delivery.push(first_ms);
    }
    ensure!(
        epochs.windows(2).all(|w| w[1] > w[0]),
        "epochs not strictly increasing: {epochs:?}"
    );
    let (leader, e) = lease_of(h).await?;
    wait_status_leader(h, &leader, e).await?;
    deleted_lease(h, &shards, e).await?;
    deleted_service_account(h, &shards).await?;

    let (appended, _) = load.finish().await?;
    exactly_once(&log, &map, appended).await?;

    to_lease.sort_unstable();
    to_delivery.sort_unstable();
    let line = |v: &[u128]| {
        format!(
            "p50 {} ms p99 {} ms max {} ms",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v[v.len() - 1]
        )
    };
    eprintln!("[e2e] epochs over the kills: {epochs:?}");
    eprintln!(
        "[e2e] kill to Lease change over {kills} kills: {}",
        line(&to_lease)
    );
    eprintln!(
        "e2e failover over {kills} kills: {} (kill to the first entry a shard applies from \
         the new leader, polled every {} ms)",
        line(&to_delivery),
        poll.as_millis()
    );
    Ok(())
}
