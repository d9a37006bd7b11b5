//! The players' objects: Deployment, args, shard map, RBAC, PDB, metrics Service.

use super::*;

#[test]
fn every_player_object_has_its_name_namespace_and_one_controller_owner() {
    let o = demo();
    let names: Vec<(&str, Option<&str>)> = all_meta(&o)
        .iter()
        .map(|(what, m)| (*what, m.name.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("ServiceAccount", Some("demo-player")),
            ("RoleBinding", Some("demo-player")),
            ("ConfigMap", Some("demo-shard-map")),
            ("metrics Service", Some("demo-player-metrics")),
            ("Deployment", Some("demo-player")),
            ("LogStore Service", Some("demo-logstore")),
            ("LogStore client Service", Some("demo-logstore-client")),
            ("LogStore StatefulSet", Some("demo-logstore")),
            ("LogStore PodDisruptionBudget", Some("demo-logstore")),
            ("PodDisruptionBudget", Some("demo-player")),
        ]
    );
    let lp = logplayer(managed_spec());
    assert_eq!(player_name(&lp), "demo-player");
    assert_eq!(shard_map_name(&lp), "demo-shard-map");
    assert_eq!(metrics_service_name(&lp), "demo-player-metrics");
    assert_eq!(logstore_name(&lp), "demo-logstore");
    for (what, m) in all_meta(&o) {
        assert_eq!(m.namespace.as_deref(), Some("ns"), "{what}");
        let owners = m.owner_references.as_deref().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{what}: {owners:?}");
        let r = &owners[0];
        assert_eq!(r.api_version, "logplayer.io/v1alpha1", "{what}");
        assert_eq!(r.kind, "LogPlayer", "{what}");
        assert_eq!(r.name, "demo", "{what}");
        assert_eq!(r.uid, UID, "{what}");
        assert_eq!(r.controller, Some(true), "{what}");
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some("demo"),
            "{what}"
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(crate::operator::FIELD_MANAGER),
            "{what}"
        );
    }
}

/// The module doc promises owner references that block deletion, so that foreground
/// deletion of a LogPlayer waits for its objects.
#[test]
fn owner_references_block_owner_deletion() {
    let o = demo();
    for (what, m) in all_meta(&o) {
        assert_eq!(
            m.owner_references.as_deref(),
            Some(&[expected_owner()][..]),
            "{what}"
        );
    }
    let s0 = managed_shard("s0", &[(0, 16383)]);
    let server = shard_objects_alone(&s0).expect("valid").expect("managed");
    for m in [&server.service.metadata, &server.stateful_set.metadata] {
        assert_eq!(
            m.owner_references
                .as_ref()
                .map(|r| r[0].block_owner_deletion),
            Some(Some(true))
        );
    }
}

#[test]
fn deployment_runs_the_players_with_the_spec_settings() {
    let o = demo();
    let d = &o.deployment;
    let spec = d.spec.as_ref().expect("deployment spec");
    assert_eq!(spec.replicas, Some(3));
    let selector = selector_of(d);
    assert_eq!(
        selector,
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "logplayer".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), "demo".to_owned()),
            (
                "app.kubernetes.io/component".to_owned(),
                "player".to_owned()
            ),
        ])
    );
    let template_meta = spec.template.metadata.as_ref().expect("template metadata");
    let pod_labels = template_meta.labels.as_ref().expect("pod labels");
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "selector label {k} on the pods");
    }
    assert_eq!(
        player_pod_selector(&logplayer(managed_spec())),
        "app.kubernetes.io/component=player,app.kubernetes.io/instance=demo,\
             app.kubernetes.io/name=logplayer"
    );

    let pod = pod_spec(d);
    assert_eq!(pod.service_account_name.as_deref(), Some("demo-player"));
    let c = player_container(&o);
    assert_eq!(c.name, "player");
    assert_eq!(c.image.as_deref(), Some(Defaults::default().image.as_str()));
    assert_eq!(c.image_pull_policy, None);
    let env = c.env.as_deref().expect("env");
    assert_eq!(env.len(), 5, "{env:?}");
    let field = |i: usize| {
        env[i]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str())
    };
    assert_eq!(
        (env[0].name.as_str(), field(0), env[0].value.as_deref()),
        ("POD_NAME", Some("metadata.name"), None)
    );
    assert_eq!(
        (env[1].name.as_str(), field(1), env[1].value.as_deref()),
        ("POD_NAMESPACE", Some("metadata.namespace"), None)
    );
    // Mutual TLS by default, with the certificate the operator issues, mounted.
    let tls: Vec<(&str, Option<&str>)> = env[2..]
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(
        tls,
        [
            ("LOGPLAYER_TLS_CERT", Some("/etc/logplayer-tls/tls.crt")),
            ("LOGPLAYER_TLS_KEY", Some("/etc/logplayer-tls/tls.key")),
            ("LOGPLAYER_TLS_CA", Some("/etc/logplayer-tls/ca.crt")),
        ]
    );
    let secret = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.as_deref());
    assert_eq!(secret, Some("demo-player-tls"));
    // The args are the player's own flags, parsed back by the player's parser.
    assert_eq!(args(&o)[0], "player");
    let p = parsed_args(&o);
    assert_eq!(
        p.logstore,
        "demo-logstore-0.demo-logstore.ns.svc:7000,demo-logstore-1.demo-logstore.ns.svc:7000,\
         demo-logstore-2.demo-logstore.ns.svc:7000",
        "every log replica: the client follows the leader among them"
    );
    assert_eq!(
        p.shard_map.as_deref(),
        Some(std::path::Path::new("/etc/logplayer/shard-map.yaml"))
    );
    assert_eq!(p.lease_name.as_deref(), Some("demo-player"));
    assert_eq!(p.lease_namespace, "ns");
    assert_eq!(p.lease_duration, std::time::Duration::from_secs(4));
    assert_eq!(p.renew_deadline, std::time::Duration::from_secs(3));
    assert_eq!(p.retry_period, std::time::Duration::from_millis(500));
    assert!(p.cursor_shard_status);
    assert_eq!(p.checkpoint_interval, std::time::Duration::from_secs(2));
    assert_eq!(p.metrics_listen.as_deref(), Some("0.0.0.0:9090"));
    assert_eq!(
        (
            p.window,
            p.window_bytes,
            p.batch_entries,
            p.batch_bytes,
            p.queue_bytes
        ),
        (32, 4_194_304, 256, 2_097_152, 16_777_216)
    );
    assert_eq!(p.identity, None, "the pod's POD_NAME names it");
    assert_eq!(
        args(&o)[1..],
        p.to_args()[..],
        "rendered by PlayerArgs::to_args"
    );

    // The metrics port, its probes and its Service.
    assert_eq!(
        c.ports,
        Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: 9090,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }])
    );
    let probe = |p: &Option<Probe>| {
        let h = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        (h.path.clone(), h.port.clone())
    };
    let named = IntOrString::String("metrics".into());
    assert_eq!(
        probe(&c.liveness_probe),
        (Some("/healthz".into()), named.clone())
    );
    assert_eq!(
        probe(&c.readiness_probe),
        (Some("/readyz".into()), named.clone())
    );
    let svc = o.metrics_service.spec.as_ref().expect("service spec");
    assert_eq!(svc.selector.as_ref(), Some(&selector));
    let ports = svc.ports.as_deref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].port,
            ports[0].target_port.clone(),
            ports[0].name.as_deref()
        ),
        (9090, Some(named), Some("metrics"))
    );

    // Spread over nodes, preferred.
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("pod anti-affinity");
    assert_eq!(
        anti.required_during_scheduling_ignored_during_execution,
        None
    );
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
        .expect("preferred anti-affinity");
    assert_eq!(preferred.len(), 1);
    assert_eq!(preferred[0].weight, 100);
    let term = &preferred[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector
            .as_ref()
            .and_then(|l| l.match_labels.as_ref()),
        Some(&selector)
    );

    // Locked down.
    let sc = c.security_context.as_ref().expect("container security");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(s(&["ALL"]))
    );
    let psc = pod.security_context.as_ref().expect("pod security");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(RUN_AS));

    // The shard map is mounted from the ConfigMap, and its hash is on the template.
    assert_eq!(
        c.volume_mounts,
        Some(vec![
            VolumeMount {
                name: "shard-map".into(),
                mount_path: "/etc/logplayer".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tls".into(),
                mount_path: "/etc/logplayer-tls".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }
        ])
    );
    let volumes = pod.volumes.as_deref().expect("volumes");
    assert_eq!(volumes.len(), 2, "the shard map and the certificate");
    assert_eq!(volumes[0].name, "shard-map");
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some("demo-shard-map")
    );
    let h = hash(&o);
    assert_eq!(h, map_hash(&map_text(&o)));
    assert_eq!(h.len(), 16, "{h}");
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()), "{h}");
}

#[test]
fn default_lease_timings_reach_the_players_as_parseable_durations() {
    let o = objects(&logplayer(external_spec()), &four_shards());
    let p = parsed_args(&o);
    assert_eq!(p.lease_duration, std::time::Duration::from_secs(2));
    assert_eq!(p.renew_deadline, std::time::Duration::from_millis(1500));
    assert_eq!(p.retry_period, std::time::Duration::from_millis(250));
    assert_eq!(p.checkpoint_interval, std::time::Duration::from_secs(1));
    assert_eq!(
        (
            p.window,
            p.window_bytes,
            p.batch_entries,
            p.batch_bytes,
            p.queue_bytes
        ),
        (64, 16_777_216, 512, 1_048_576, 8_388_608)
    );
    assert_eq!(
        o.deployment.spec.as_ref().and_then(|s| s.replicas),
        Some(3),
        "default replicas"
    );
}

/// (id, address, slot ranges) of every shard in `map`.
fn map_rows(map: &ShardMap) -> Vec<(&str, &str, Vec<String>)> {
    map.shards
        .iter()
        .map(|s| (s.id.as_str(), s.addr.as_str(), s.slots.clone()))
        .collect()
}

/// Checks that `map` routes 2000 sample keys to the shard `want` names for their slot.
fn assert_routes(map: &ShardMap, mut want: impl FnMut(u16) -> usize) {
    for k in 0..2000 {
        let key = format!("key-{k}");
        let want = want(slot(key.as_bytes()));
        assert_eq!(map.shard_of(key.as_bytes()), want, "{key}");
    }
}

#[test]
fn the_shard_map_loads_and_routes_every_slot_to_its_shard() {
    let o = demo();
    let map = load_map(&map_text(&o));
    assert_eq!(map.version, 1);
    assert_eq!(
        map_rows(&map),
        [
            ("s0", "http://s0-shard.ns.svc:7100", s(&["0-4095"])),
            ("s1", "http://s1-shard.ns.svc:7100", s(&["4096-8191"])),
            ("s2", "http://s2-shard.ns.svc:7100", s(&["8192-12287"])),
            ("s3", "http://s3-shard.ns.svc:7100", s(&["12288-16383"])),
        ]
    );
    let mut seen = [false; 4];
    assert_routes(&map, |slot| {
        let want = usize::from(slot / 4096);
        seen[want] = true;
        want
    });
    assert_eq!(seen, [true; 4], "every shard got some keys");
}

#[test]
fn the_shard_map_keeps_external_addresses_and_several_ranges() {
    let shards = vec![
        external_shard("b", &[(100, 199)], "http://b.example:7100"),
        managed_shard("a", &[(0, 99), (200, 16383)]),
    ];
    let o = objects(&logplayer(managed_spec()), &shards);
    let map = load_map(&map_text(&o));
    assert_eq!(
        map_rows(&map),
        [
            ("a", "http://a-shard.ns.svc:7100", s(&["0-99", "200-16383"])),
            ("b", "http://b.example:7100", s(&["100-199"])),
        ]
    );
    assert_routes(&map, |slot| usize::from((100..=199).contains(&slot)));
}

#[test]
fn the_map_hash_follows_slots_and_endpoints_only() {
    let lp = logplayer(managed_spec());
    let base = hash(&objects(&lp, &four_shards()));

    // Stable: same map again, shards in another order, other non-map settings.
    assert_eq!(hash(&objects(&lp, &four_shards())), base);
    let mut reversed = four_shards();
    reversed.reverse();
    assert_eq!(hash(&objects(&lp, &reversed)), base);
    let other = lp_with(|v| {
        v["replicas"] = json!(5);
        v["image"] = json!("example/lp:2");
        v["delivery"]["window"] = json!(8);
        v["retainLog"] = json!(true);
    });
    assert_eq!(hash(&objects(&other, &four_shards())), base);
    let mut relabeled = four_shards();
    relabeled[0].metadata.uid = Some("another-uid".into());
    relabeled[0]
        .metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "a".into());
    assert_eq!(hash(&objects(&lp, &relabeled)), base);

    // Moved boundary between s0 and s1.
    let mut moved = four_shards();
    for sh in &mut moved {
        match sh.name_any().as_str() {
            "s0" => sh.spec.slots = vec![SlotRange::new(0, 4000)],
            "s1" => sh.spec.slots = vec![SlotRange::new(4001, 8191)],
            _ => {}
        }
    }
    let moved_hash = hash(&objects(&lp, &moved));
    assert_ne!(moved_hash, base);

    // s2 moves to an external server.
    let mut external = four_shards();
    external[0] = external_shard("s2", &[(8192, 12287)], "s2.example:7100");
    let external_hash = hash(&objects(&lp, &external));
    assert_ne!(external_hash, base);
    assert_ne!(external_hash, moved_hash);
    // ... and to another external address.
    external[0] = external_shard("s2", &[(8192, 12287)], "s2.example:7101");
    assert_ne!(hash(&objects(&lp, &external)), external_hash);

    // A cluster domain changes every managed address.
    assert_ne!(hash(&objects_with(&lp, &cluster_local())), base);
}

#[test]
fn a_pdb_exists_only_with_more_than_one_replica() {
    for replicas in [3, 2] {
        let o = objects(
            &lp_with(|v| v["replicas"] = json!(replicas)),
            &four_shards(),
        );
        let pdb = o.pdb.as_ref().expect("a PDB with replicas > 1");
        assert_eq!(pdb.metadata.name.as_deref(), Some("demo-player"));
        let spec = pdb.spec.as_ref().expect("pdb spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(selector_of(&o.deployment))
        );
    }
    let o = objects(&lp_with(|v| v["replicas"] = json!(1)), &four_shards());
    assert!(o.pdb.is_none(), "{:?}", o.pdb);
    assert_eq!(o.deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
}

#[test]
fn an_external_logstore_gets_no_objects_and_is_dialed_directly() {
    let lp = logplayer(external_spec());
    let o = objects(&lp, &four_shards());
    assert!(o.logstore.is_none());
    assert_eq!(arg_value(&args(&o), "--logstore"), "logstore.logs.svc:7000");
    assert_eq!(
        logstore_endpoint(&lp, "ns", &Defaults::default()).as_deref(),
        Some("logstore.logs.svc:7000")
    );
    let names: Vec<_> = all_meta(&o)
        .iter()
        .filter_map(|(_, m)| m.name.clone())
        .collect();
    assert!(!names.iter().any(|n| n == "demo-logstore"), "{names:?}");
}

#[test]
fn retain_log_adds_its_flag() {
    let o = demo();
    assert!(
        !args(&o).iter().any(|a| a == "--retain-log"),
        "{:?}",
        args(&o)
    );
    let o = objects(&lp_with(|v| v["retainLog"] = json!(true)), &four_shards());
    let a = args(&o);
    assert_eq!(
        a.iter().filter(|a| *a == "--retain-log").count(),
        1,
        "{a:?}"
    );
    // The players refuse --retain-log without a cursor store.
    assert!(a.iter().any(|a| a == "--cursor-shard-status"), "{a:?}");
}

#[test]
fn image_and_pull_policy_from_the_spec_override_the_defaults() {
    let defaults = default_image("example/operator-default:9");
    let o = objects_with(&logplayer(managed_spec()), &defaults);
    let ls = o.logstore.as_ref().expect("managed");
    assert_eq!(
        player_container(&o).image.as_deref(),
        Some("example/operator-default:9")
    );
    assert_eq!(
        sts_container(&ls.server.stateful_set).image.as_deref(),
        Some("example/operator-default:9")
    );

    let lp = lp_with(|v| {
        v["image"] = json!("registry.example/lp:1.2");
        v["imagePullPolicy"] = json!("IfNotPresent");
    });
    let o = objects_with(&lp, &defaults);
    let c = player_container(&o);
    assert_eq!(c.image.as_deref(), Some("registry.example/lp:1.2"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let ls = sts_container(&o.logstore.as_ref().expect("managed").server.stateful_set);
    assert_eq!(ls.image.as_deref(), Some("registry.example/lp:1.2"));
    assert_eq!(ls.image_pull_policy.as_deref(), Some("IfNotPresent"));

    for (policy, want) in [("Always", "Always"), ("Never", "Never")] {
        let lp = lp_with(|v| v["imagePullPolicy"] = json!(policy));
        let o = objects_with(&lp, &defaults);
        assert_eq!(
            player_container(&o).image_pull_policy.as_deref(),
            Some(want)
        );
    }
}

#[test]
fn a_cluster_domain_is_appended_to_service_addresses() {
    let defaults = cluster_local();
    let lp = logplayer(managed_spec());
    let o = objects_with(&lp, &defaults);
    assert_eq!(
        arg_value(&args(&o), "--logstore").split(',').next(),
        Some("demo-logstore-0.demo-logstore.ns.svc.cluster.local:7000")
    );
    assert_eq!(
        logstore_endpoint(&lp, "ns", &defaults)
            .as_deref()
            .and_then(|l| l.split(',').nth(2)),
        Some("demo-logstore-2.demo-logstore.ns.svc.cluster.local:7000")
    );
    let map = load_map(&map_text(&o));
    assert_eq!(
        map.shards[0].addr,
        "http://s0-shard.ns.svc.cluster.local:7100"
    );
    assert_eq!(
        shard_endpoint(&managed_shard("s0", &[(0, 16383)]), &defaults).as_deref(),
        Some("s0-shard.ns.svc.cluster.local:7100")
    );
}

#[test]
fn the_players_role_names_their_lease_and_shards_and_the_operator_holds_the_cluster_role() {
    let o = demo();
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(s(&[group])),
        resources: Some(s(&[resource])),
        resource_names: None,
        verbs: s(verbs),
        non_resource_urls: None,
    };
    assert_eq!(
        player_rules(),
        vec![
            rule(
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update"]
            ),
            rule("logplayer.io", "shards", &["list"]),
            rule("logplayer.io", "shards/status", &["patch"]),
        ]
    );
    // The players are bound to their own Role, never to the ClusterRole.
    assert_eq!(
        o.role_binding.role_ref,
        RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "demo-player".into(),
        }
    );
    assert_eq!(o.role.metadata.name.as_deref(), Some("demo-player"));
    assert_eq!(
        o.role_binding.subjects,
        Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: "demo-player".into(),
            namespace: Some("ns".into()),
        }])
    );
    // Their Role is the ClusterRole's rules narrowed to their own Lease and Shards by name.
    let named = |group: &str, resource: &str, verbs: &[&str], names: &[&str]| PolicyRule {
        resource_names: Some(s(names)),
        ..rule(group, resource, verbs)
    };
    assert_eq!(
        o.role.rules,
        Some(vec![
            named(
                "coordination.k8s.io",
                "leases",
                &["get", "update"],
                &["demo-player"]
            ),
            rule("coordination.k8s.io", "leases", &["create"]),
            rule("logplayer.io", "shards", &["list"]),
            named(
                "logplayer.io",
                "shards/status",
                &["patch"],
                &["s0", "s1", "s2", "s3"]
            ),
        ])
    );
    // The operator holds the ClusterRole in this namespace (so that it may write the Role).
    let operator = o.operator_binding.as_ref().expect("an operator binding");
    assert_eq!(operator.metadata.name.as_deref(), Some("demo-player-grant"));
    assert_eq!(
        operator.role_ref,
        RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: PLAYER_CLUSTER_ROLE.into(),
        }
    );
    assert_eq!(
        operator.subjects,
        Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: "logplayer-operator".into(),
            namespace: Some("logplayer-system".into()),
        }])
    );
    assert_eq!(
        o.service_account.metadata.name,
        o.role_binding.metadata.name
    );
    assert_eq!(
        pod_spec(&o.deployment).service_account_name,
        o.service_account.metadata.name
    );
    assert_eq!(
        o.service_account.automount_service_account_token,
        Some(true)
    );
}

/// Two Shards at one address (two external endpoints that name one server) make a map
/// every player refuses to load; the operator says so, naming both, instead of rolling
/// out players that crash-loop.
#[test]
fn two_shards_at_one_address_are_an_invalid_shard() {
    let shards = [
        external_shard("s0", &[(0, 8191)], "shards.example:7100"),
        external_shard("s1", &[(8192, 16383)], "http://shards.example:7100"),
    ];
    let e = err(&logplayer(external_spec()), &shards);
    assert_eq!(e.reason(), "InvalidShard");
    let text = e.to_string();
    assert!(
        text.contains("\"s0\"") && text.contains("\"s1\"") && text.contains("same address"),
        "{text}"
    );
}

/// A Shard whose endpoint is the LogStore's address makes a map every player refuses; the
/// operator says which, naming the address, instead of rolling out players that crash-loop.
#[test]
fn a_shard_at_the_logstores_address_is_an_invalid_shard() {
    let shards = [
        external_shard("s0", &[(0, 8191)], "shards.example:7100"),
        external_shard("s1", &[(8192, 16383)], "http://LogStore.logs.svc:7000/"),
    ];
    let e = err(&logplayer(external_spec()), &shards);
    assert_eq!(e.reason(), "InvalidShard");
    let text = e.to_string();
    assert!(
        text.contains("Shard s1") && text.contains("logstore.logs.svc:7000"),
        "{text}"
    );
}

#[test]
fn the_operator_binds_itself_as_the_api_server_knows_it_or_not_at_all() {
    assert_eq!(
        subject_of("system:serviceaccount:ops:lp-operator"),
        Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: "lp-operator".into(),
            namespace: Some("ops".into()),
        }
    );
    // Run by a person (outside the cluster): a User.
    assert_eq!(
        subject_of("kubernetes-admin"),
        Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: "kubernetes-admin".into(),
            namespace: None,
        }
    );
    let unknown = Defaults {
        operator_user: None,
        ..Defaults::default()
    };
    let o = objects_with(&logplayer(managed_spec()), &unknown);
    assert!(o.operator_binding.is_none());
    assert_eq!(o.role_binding.role_ref.kind, "Role");
}
