//! The objects for a LogPlayer: the players' Deployment (with its args rendered from
//! [`PlayerArgs`]), ServiceAccount, Role and RoleBinding, the operator's own RoleBinding
//! that lets it write that Role, the shard-map ConfigMap, the metrics Service, the
//! PodDisruptionBudget, and the managed LogStore's objects.

use super::PodTls;
use super::servers::{ServerSpec, entry_limit_args};
use super::{
    DATA_DIR, Defaults, DesiredError, LOGSTORE_PORT, LogStoreObjects, PlayerObjects, SHARD_MAP_DIR,
    SHARD_MAP_FILE, SHARD_MAP_HASH_ANNOTATION, ServerKind, container_security, http_probe, labels,
    log_replica_addr, log_replicas, logstore_client_name, logstore_endpoint, logstore_name, meta,
    metrics_service_name, operator_binding_name, owner_of, player_name, pod_env, pod_security,
    pull_policy_name, selector_labels, server_objects, shard_endpoint, shard_map_name,
    spread_over_nodes, tls_secret,
};
use crate::crd::{Backend, CrdError, LogPlayer, ManagedStorage, Shard};
use crate::player::args::PlayerArgs;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSpec, PodTemplateSpec, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The shard map YAML for the selected shards (sorted by name), after checking that every
/// shard's spec is valid and that together they own every slot exactly once.
pub fn shard_map_yaml(shards: &[Shard], defaults: &Defaults) -> Result<String, DesiredError> {
    let mut sorted: Vec<&Shard> = shards.iter().collect();
    sorted.sort_by_key(|s| s.name_any());
    let mut entries = Vec::with_capacity(sorted.len());
    for s in &sorted {
        let shard = s.name_any();
        s.spec
            .validate_slots()
            .map_err(|source| DesiredError::Shard {
                shard: shard.clone(),
                source,
            })?;
        s.spec.backend().map_err(|source| DesiredError::Shard {
            shard: shard.clone(),
            source,
        })?;
        let addr = shard_endpoint(s, defaults).unwrap_or_default();
        entries.push(crate::routing::MapEntry {
            id: shard,
            addr,
            slots: s.spec.slots.iter().map(|r| r.to_string()).collect(),
        });
    }
    let coverage: Vec<_> = sorted
        .iter()
        .map(|s| (s.name_any(), s.spec.slots.clone()))
        .collect();
    crate::routing::slots::check_coverage(&coverage).map_err(DesiredError::Coverage)?;
    // The players refuse a map with two shards at one address; say which, here.
    crate::routing::check_addrs(&entries).map_err(DesiredError::SharedAddress)?;
    Ok(serde_yaml::to_string(&crate::routing::MapFile {
        version: 1,
        shards: entries,
    })?)
}

/// The players refuse a shard at one of the LogStore's addresses (its slots would wait
/// forever); say which Shard, here, rather than roll out players that crash-loop.
fn no_shard_at_the_logstore(
    shards: &[Shard],
    logstore: &str,
    defaults: &Defaults,
) -> Result<(), DesiredError> {
    for addr in logstore.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let key = crate::routing::addr_key(addr);
        let at = |s: &&Shard| {
            shard_endpoint(s, defaults).is_some_and(|e| crate::routing::addr_key(&e) == key)
        };
        if let Some(s) = shards.iter().find(at) {
            return Err(DesiredError::ShardAtLogStore {
                shard: s.name_any(),
                addr: addr.to_owned(),
            });
        }
    }
    Ok(())
}

/// A short, stable hash of the shard map (FNV-1a, hex), put on the pod template so that a
/// changed map rolls the players.
pub(super) fn map_hash(text: &str) -> String {
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    h.write(text.as_bytes());
    format!("{:016x}", h.finish())
}

/// The player container's args: the LogPlayer's settings as [`PlayerArgs`], rendered by
/// the one function that also round-trips them through the player's own parser.
fn player_args(
    lp: &LogPlayer,
    ns: &str,
    logstore: String,
    timing: &crate::crd::LeaseTiming,
    checkpoint: std::time::Duration,
) -> Result<Vec<String>, DesiredError> {
    let spec = &lp.spec;
    let d = &spec.delivery;
    let count = |field: &'static str, v: i64| {
        usize::try_from(v).map_err(|_| DesiredError::Spec(CrdError::Negative { field, value: v }))
    };
    let mut a = PlayerArgs::parse_without_env([
        "--shard-map",
        &format!("{SHARD_MAP_DIR}/{SHARD_MAP_FILE}"),
    ])
    .map_err(|e| DesiredError::Args(e.to_string()))?;
    a.logstore = logstore;
    a.lease_name = Some(player_name(lp));
    a.lease_namespace = ns.to_owned();
    a.lease_duration = timing.lease_duration;
    a.renew_deadline = timing.renew_deadline;
    a.retry_period = timing.retry_period;
    a.cursor_shard_status = true;
    a.checkpoint_interval = checkpoint;
    a.retain_log = spec.retain_log;
    a.metrics_listen = Some(format!("0.0.0.0:{}", spec.metrics_port));
    a.window = count("spec.delivery.window", i64::from(d.window))?;
    a.window_bytes = count("spec.delivery.windowBytes", d.window_bytes)?;
    a.batch_entries = count("spec.delivery.batchEntries", i64::from(d.batch_entries))?;
    a.batch_bytes = count("spec.delivery.batchBytes", d.batch_bytes)?;
    a.queue_bytes = count("spec.delivery.queueBytes", d.queue_bytes)?;
    a.max_entry_bytes = count("spec.maxEntryBytes", spec.max_entry_bytes)?;
    let mut args = vec!["player".to_owned()];
    args.extend(a.to_args());
    Ok(args)
}

/// What every object of one LogPlayer is built from: names, labels, owner and image.
struct PlayerContext<'a> {
    lp: &'a LogPlayer,
    ns: String,
    /// The players' Deployment, ServiceAccount, Role, RoleBinding, PDB and Lease name.
    player: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    owner: OwnerReference,
    image: String,
    /// Whether the LogPlayer runs mutual TLS (`spec.tls.mode`).
    tls: bool,
}

impl PlayerContext<'_> {
    /// How the pods of `what` (player, logstore) are secured.
    fn pod_tls(&self, what: &str) -> PodTls {
        if self.tls {
            PodTls::Secret(tls_secret(self.lp, what))
        } else {
            PodTls::Insecure
        }
    }

    fn meta(&self, name: String) -> ObjectMeta {
        meta(name, &self.ns, self.labels.clone(), &self.owner)
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector.clone()),
            ..LabelSelector::default()
        }
    }
}

/// The objects for a LogPlayer that drives `shards` (already selected: same namespace,
/// naming it, matching its selector).
pub fn player_objects(
    lp: &LogPlayer,
    shards: &[Shard],
    defaults: &Defaults,
) -> Result<PlayerObjects, DesiredError> {
    let name = lp.name_any();
    let ns = lp.namespace().ok_or_else(|| DesiredError::NoNamespace {
        kind: "LogPlayer",
        name: name.clone(),
    })?;
    let spec = &lp.spec;
    let timing = spec.lease.timing().map_err(DesiredError::Spec)?;
    let checkpoint = spec.checkpoint_interval().map_err(DesiredError::Spec)?;
    let backend = spec.log_store.backend().map_err(DesiredError::Spec)?;
    let map = shard_map_yaml(shards, defaults)?;
    let logstore = logstore_endpoint(lp, &ns, defaults).unwrap_or_default();
    no_shard_at_the_logstore(shards, &logstore, defaults)?;
    let args = player_args(lp, &ns, logstore, &timing, checkpoint)?;
    let cx = PlayerContext {
        lp,
        player: player_name(lp),
        labels: labels(&name, "player"),
        selector: selector_labels(&name, "player"),
        owner: owner_of(lp),
        image: spec.image.clone().unwrap_or_else(|| defaults.image.clone()),
        ns,
        tls: spec.tls.mode != crate::crd::TlsMode::Insecure,
    };
    let logstore = match backend {
        Backend::External(_) => None,
        Backend::Managed(storage) => Some(managed_logstore(&cx, storage, defaults)),
    };
    Ok(PlayerObjects {
        service_account: ServiceAccount {
            metadata: cx.meta(cx.player.clone()),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        },
        operator_binding: operator_binding(&cx, defaults),
        role: player_role(&cx, shards),
        role_binding: role_binding(&cx),
        shard_map: ConfigMap {
            metadata: cx.meta(shard_map_name(lp)),
            data: Some(BTreeMap::from([(SHARD_MAP_FILE.to_owned(), map.clone())])),
            ..ConfigMap::default()
        },
        metrics_service: metrics_service(&cx),
        logstore,
        deployment: deployment(&cx, args, &map),
        pdb: (spec.replicas > 1).then(|| pdb(&cx)),
        network_policies: super::player_network_policies(lp, &cx.ns, defaults),
    })
}

/// The players' Role: [`player_rules`] narrowed to this LogPlayer. Its Lease by name
/// (`create` cannot be narrowed: RBAC cannot name what does not exist yet, and creating a
/// Lease changes no existing one), and the status of the selected Shards by name (their
/// ack cursors; with no Shard selected that rule is left out, as a rule naming nothing
/// would mean every Shard). Listing Shards cannot be narrowed either (a list has no name).
fn player_role(cx: &PlayerContext, shards: &[Shard]) -> Role {
    let rule = |group: &str, resource: &str, verbs: &[&str], names: Vec<String>| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: (!names.is_empty()).then_some(names),
        ..PolicyRule::default()
    };
    let mut names: Vec<String> = shards.iter().map(|s| s.name_any()).collect();
    names.sort();
    names.dedup();
    let lease = "coordination.k8s.io";
    let mut rules = vec![
        rule(lease, "leases", &["get", "update"], vec![cx.player.clone()]),
        rule(lease, "leases", &["create"], Vec::new()),
        rule(crate::crd::GROUP, "shards", &["list"], Vec::new()),
    ];
    if !names.is_empty() {
        rules.push(rule(crate::crd::GROUP, "shards/status", &["patch"], names));
    }
    Role {
        metadata: cx.meta(cx.player.clone()),
        rules: Some(rules),
    }
}

/// Binds the players' Role to their ServiceAccount.
fn role_binding(cx: &PlayerContext) -> RoleBinding {
    RoleBinding {
        metadata: cx.meta(cx.player.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: cx.player.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: cx.player.clone(),
            namespace: Some(cx.ns.clone()),
            ..Subject::default()
        }]),
    }
}

/// Binds the operator itself ([`Defaults::operator_user`]) to the players' ClusterRole in
/// the LogPlayer's namespace: Kubernetes lets it write the players' Role only while it
/// holds every permission in it.
fn operator_binding(cx: &PlayerContext, defaults: &Defaults) -> Option<RoleBinding> {
    let user = defaults.operator_user.as_deref()?;
    Some(RoleBinding {
        metadata: cx.meta(operator_binding_name(cx.lp)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: defaults.player_cluster_role.clone(),
        },
        subjects: Some(vec![subject_of(user)]),
    })
}

/// The RBAC subject of a username: a ServiceAccount for `system:serviceaccount:NS:NAME`,
/// else a User.
pub fn subject_of(user: &str) -> Subject {
    let account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    match account {
        Some((ns, name)) => Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        },
        None => Subject {
            kind: "User".to_owned(),
            name: user.to_owned(),
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            ..Subject::default()
        },
    }
}

/// The Service in front of the players' `/metrics`.
fn metrics_service(cx: &PlayerContext) -> Service {
    Service {
        metadata: cx.meta(metrics_service_name(cx.lp)),
        spec: Some(ServiceSpec {
            selector: Some(cx.selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                port: cx.lp.spec.metrics_port,
                target_port: Some(IntOrString::String("metrics".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The player container.
fn player_container(cx: &PlayerContext, args: Vec<String>) -> Container {
    let spec = &cx.lp.spec;
    Container {
        name: "player".to_owned(),
        image: Some(cx.image.clone()),
        image_pull_policy: pull_policy_name(spec.image_pull_policy),
        args: Some(args),
        env: Some(pod_env(&cx.pod_tls("player"))),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: spec.metrics_port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", "metrics", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", "metrics", 2, 2)),
        resources: spec.resources.clone(),
        security_context: Some(container_security()),
        termination_message_policy: Some(super::TERMINATION_MESSAGE_POLICY.to_owned()),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "shard-map".to_owned(),
                mount_path: SHARD_MAP_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            })
            .chain(cx.pod_tls("player").volume().map(|(_, m)| m))
            .collect(),
        ),
        ..Container::default()
    }
}

/// The players' Deployment; its pods carry a hash of the shard map, so a new map rolls them.
fn deployment(cx: &PlayerContext, args: Vec<String>, map: &str) -> Deployment {
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(cx.labels.clone()),
            annotations: Some(BTreeMap::from([(
                SHARD_MAP_HASH_ANNOTATION.to_owned(),
                map_hash(map),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(cx.player.clone()),
            security_context: Some(pod_security()),
            affinity: Some(spread_over_nodes(&cx.selector)),
            // The leader releases its lease on SIGTERM; a few seconds covers the drain.
            termination_grace_period_seconds: Some(10),
            containers: vec![player_container(cx, args)],
            volumes: Some(
                std::iter::once(Volume {
                    name: "shard-map".to_owned(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: shard_map_name(cx.lp),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                })
                .chain(cx.pod_tls("player").volume().map(|(v, _)| v))
                .collect(),
            ),
            ..PodSpec::default()
        }),
    };
    Deployment {
        metadata: cx.meta(cx.player.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(cx.lp.spec.replicas),
            selector: cx.selector(),
            template,
            // Set, so that a `kubectl rollout pause` is undone at the next apply: paused, a
            // changed shard map would never reach the players (and `Progressing` would say
            // it rolls out for ever).
            paused: Some(false),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// At most one player pod down at a time (only with more than one replica).
fn pdb(cx: &PlayerContext) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: cx.meta(cx.player.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(cx.selector()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A log replica's `--heartbeat` for the LogPlayer's `maxEntryBytes`: long enough that an
/// entry at the limit reaches the followers within their shortest election timeout (none
/// up to about 38 MiB, where the default is).
fn heartbeat_args(max_entry_bytes: i64) -> Vec<String> {
    use crate::limits::{DEFAULT_HEARTBEAT, heartbeat_for};
    let heartbeat = heartbeat_for(usize::try_from(max_entry_bytes).unwrap_or(0));
    if heartbeat == DEFAULT_HEARTBEAT {
        Vec::new()
    } else {
        vec![
            "--heartbeat".into(),
            humantime::format_duration(heartbeat).to_string(),
        ]
    }
}

/// The managed LogStore: `logStore.managed.replicas` log replicas. Each gets its id from its
/// pod's name and runs with `--join`; the operator seeds replica 1 (named in `--peers`)
/// and adds the others.
fn managed_logstore(
    cx: &PlayerContext,
    storage: &ManagedStorage,
    defaults: &Defaults,
) -> LogStoreObjects {
    let instance = cx.lp.name_any();
    let labels = labels(&instance, "logstore");
    let selector = selector_labels(&instance, "logstore");
    let server = server_objects(
        &ServerSpec {
            kind: ServerKind::LogStore,
            name: logstore_name(cx.lp),
            ns: &cx.ns,
            labels: labels.clone(),
            selector: selector.clone(),
            owner: &cx.owner,
            storage,
            image: cx.image.clone(),
            image_pull_policy: pull_policy_name(cx.lp.spec.image_pull_policy),
            pods: log_replicas(cx.lp).max(1),
            replicated: true,
            tls: cx.pod_tls("logstore"),
        },
        vec![
            "logstore".into(),
            "--data".into(),
            DATA_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{LOGSTORE_PORT}"),
            "--peers".into(),
            format!("1={}", log_replica_addr(cx.lp, &cx.ns, defaults, 1)),
            // No replica seeds a group by itself: a pod 0 back on an empty volume would
            // start a second one. The operator seeds replica 1 once, when no group exists.
            "--join".into(),
        ]
        .into_iter()
        .chain(entry_limit_args(cx.lp.spec.max_entry_bytes))
        .chain(heartbeat_args(cx.lp.spec.max_entry_bytes))
        .collect(),
    );
    let client_service = Service {
        metadata: meta(
            logstore_client_name(cx.lp),
            &cx.ns,
            labels.clone(),
            &cx.owner,
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: LOGSTORE_PORT,
                target_port: Some(IntOrString::String("grpc".to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("kubernetes.io/h2c".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(logstore_name(cx.lp), &cx.ns, labels, &cx.owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    LogStoreObjects {
        server,
        client_service,
        pdb,
    }
}

/// The players' permissions, the rules of the ClusterRole `deploy/rbac.yaml` and the chart
/// ship (`tests/chart.rs` checks they are these): their leader-election Lease (create, get,
/// update) and their Shards' ack cursors. A ClusterRole cannot name each LogPlayer's Lease
/// or Shards, so nobody's players are bound to it: the operator binds itself to it in each
/// namespace where it runs players, which lets it write each LogPlayer's Role (`PlayerObjects::role`),
/// these rules narrowed to that LogPlayer's names.
pub fn player_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
        // The cursor store lists the Shards and patches their status; nothing else.
        rule(crate::crd::GROUP, "shards", &["list"]),
        rule(crate::crd::GROUP, "shards/status", &["patch"]),
    ]
}
