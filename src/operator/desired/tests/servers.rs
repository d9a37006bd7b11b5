//! Managed servers: the LogStore's and the shards' Services and StatefulSets.

use super::*;

#[test]
fn a_managed_logstore_is_a_statefulset_of_three_replicas_behind_a_headless_service() {
    let o = demo();
    let ls = o.logstore.as_ref().expect("managed LogStore objects");
    let svc = ls.server.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        svc.publish_not_ready_addresses,
        Some(true),
        "replicas must reach each other before any is ready"
    );
    let ports = svc.ports.as_deref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 7000);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("grpc".into()))
    );
    let sts = ls
        .server
        .stateful_set
        .spec
        .as_ref()
        .expect("statefulset spec");
    assert_eq!(sts.replicas, Some(3), "the default: three log replicas");
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    let spread = sts
        .template
        .spec
        .as_ref()
        .and_then(|p| p.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("log replicas are spread over nodes");
    assert_eq!(
        spread[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert_eq!(sts.service_name.as_deref(), Some("demo-logstore"));
    let selector = sts.selector.match_labels.as_ref().expect("selector");
    assert_eq!(svc.selector.as_ref(), Some(selector));
    assert_eq!(
        selector
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("logstore")
    );
    assert_pods_carry(sts, selector);
    let claims = sts.volume_claim_templates.as_deref().expect("claims");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let claim = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(claim.access_modes, Some(s(&["ReadWriteOnce"])));
    assert_eq!(requested_storage(claim), Some(&Quantity("10Gi".into())));
    let c = sts_container(&ls.server.stateful_set);
    assert_eq!(c.name, "logstore");
    // Each replica's id comes from its pod name (POD_NAME); none seeds a group by itself.
    assert_eq!(
        c.args,
        Some(s(&[
            "logstore",
            "--data",
            "/data",
            "--listen",
            "0.0.0.0:7000",
            "--peers",
            "1=demo-logstore-0.demo-logstore.ns.svc:7000",
            "--join",
            "--health-listen",
            "0.0.0.0:8080",
        ]))
    );
    assert!(
        c.env.iter().flatten().any(|e| e.name == "POD_NAME"),
        "the replica id comes from the pod name"
    );
    // Writers use the client Service; one replica down at a time.
    let client = ls
        .client_service
        .spec
        .as_ref()
        .expect("client service spec");
    assert_eq!(
        client.cluster_ip, None,
        "a virtual IP in front of the ready replicas"
    );
    assert_eq!(client.selector.as_ref(), Some(selector));
    assert_eq!(
        ls.client_service.metadata.name.as_deref(),
        Some("demo-logstore-client")
    );
    let pdb = ls.pdb.spec.as_ref().expect("pdb spec");
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.as_ref().and_then(|s| s.match_labels.as_ref()),
        Some(selector)
    );
    assert_eq!(c.image.as_deref(), Some(Defaults::default().image.as_str()));
    assert_eq!(
        c.volume_mounts
            .as_ref()
            .map(|v| (v[0].name.as_str(), v[0].mount_path.as_str())),
        Some(("data", "/data"))
    );
    assert_eq!(
        c.ports
            .as_ref()
            .map(|p| (p[0].name.as_deref(), p[0].container_port)),
        Some((Some("grpc"), 7000))
    );
    // The kubelet's gRPC probe cannot speak TLS, and a TCP connect passes on a frozen
    // process: the server's own HTTP probes, on a port of their own.
    assert_eq!(
        c.ports
            .as_ref()
            .map(|p| (p[1].name.as_deref(), p[1].container_port)),
        Some((Some("health"), 8080))
    );
    let args = c.args.as_deref().unwrap_or_default();
    let at = args.iter().position(|a| a == "--health-listen");
    assert_eq!(
        at.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("0.0.0.0:8080")
    );
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
        assert_eq!(
            get.map(|g| (g.path.as_deref(), g.port.clone())),
            Some((Some(path), IntOrString::String("health".into())))
        );
    }
    assert_eq!(
        c.security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
}

#[test]
fn an_external_shard_has_no_objects() {
    let s0 = external_shard("s0", &[(0, 16383)], "shard0.example:7100");
    assert!(
        shard_objects(
            &s0,
            &Defaults::default(),
            FromLogPlayer {
                image: Some("img:1"),
                ..FromLogPlayer::default()
            },
            shard_tls(&s0, None)
        )
        .expect("valid")
        .is_none()
    );
}

#[test]
fn a_managed_shard_is_a_one_pod_statefulset_owned_by_its_shard() {
    let s0 = shard(
        "s0",
        &[(0, 16383)],
        json!({"managed": {"storage": "5Gi", "storageClassName": "ssd"}}),
    );
    let o = shard_objects_alone(&s0)
        .expect("valid")
        .expect("managed shard objects");
    let sts = &o.stateful_set;
    for m in [&sts.metadata, &o.service.metadata] {
        assert_eq!(m.name.as_deref(), Some("s0-shard"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        let owners = m.owner_references.as_deref().expect("owner");
        assert_eq!(owners.len(), 1);
        let r = &owners[0];
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("logplayer.io/v1alpha1", "Shard", "s0", "uid-s0")
        );
        assert_eq!(r.controller, Some(true));
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(labels.get(SHARD_LABEL).map(String::as_str), Some("s0"));
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some("shard")
        );
    }
    assert_eq!(shard_server_name(&s0), "s0-shard");
    let spec = sts.spec.as_ref().expect("statefulset spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("s0-shard"));
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    assert_eq!(selector.get(SHARD_LABEL).map(String::as_str), Some("s0"));
    assert_pods_carry(spec, selector);
    let svc = o.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.selector.as_ref(), Some(selector));
    assert_eq!(
        svc.ports.as_ref().map(|p| (p.len(), p[0].port)),
        Some((1, 7100))
    );
    let c = sts_container(sts);
    assert_eq!(c.name, "shard");
    assert_eq!(
        c.args,
        Some(s(&[
            "shard",
            "--id",
            "s0",
            "--data",
            "/data",
            "--listen",
            "0.0.0.0:7100",
            "--health-listen",
            "0.0.0.0:8080"
        ]))
    );
    assert_eq!(c.image.as_deref(), Some(Defaults::default().image.as_str()));
    let claim = spec
        .volume_claim_templates
        .as_ref()
        .and_then(|c| c[0].spec.as_ref())
        .expect("claim");
    assert_eq!(claim.storage_class_name.as_deref(), Some("ssd"));
    assert_eq!(requested_storage(claim), Some(&Quantity("5Gi".into())));

    // Two shards' pods are told apart by their selectors.
    let s1 = managed_shard("s1", &[(0, 16383)]);
    let o1 = shard_objects_alone(&s1).expect("valid").expect("managed");
    assert_ne!(
        o1.stateful_set.spec.as_ref().map(|s| &s.selector),
        Some(&spec.selector)
    );
}

#[test]
fn the_image_argument_overrides_the_default_shard_image() {
    let s0 = managed_shard("s0", &[(0, 16383)]);
    let defaults = default_image("example/default:1");
    let image = |arg| {
        let o = shard_objects(
            &s0,
            &defaults,
            FromLogPlayer {
                image: arg,
                ..FromLogPlayer::default()
            },
            shard_tls(&s0, None),
        )
        .expect("valid")
        .expect("managed");
        sts_container(&o.stateful_set).image.clone()
    };
    assert_eq!(image(None).as_deref(), Some("example/default:1"));
    assert_eq!(image(Some("example/lp:7")).as_deref(), Some("example/lp:7"));
}

#[test]
fn a_shard_s_commit_delay_reaches_its_server_s_arguments() {
    let args = |backend: serde_json::Value| {
        let s0 = shard("s0", &[(0, 16383)], backend);
        shard_objects_alone(&s0).map(|o| {
            o.map(|o| {
                sts_container(&o.stateful_set)
                    .args
                    .clone()
                    .unwrap_or_default()
            })
        })
    };
    let delay = |args: &[String]| {
        args.iter()
            .position(|a| a == "--commit-delay")
            .map(|i| args[i + 1].clone())
    };
    let unset = args(json!({"managed": {"storage": "1Gi"}}))
        .expect("valid")
        .expect("managed");
    assert_eq!(delay(&unset), None, "unset leaves the server's default");
    for (written, passed) in [("5ms", "5ms"), ("0s", "0s"), ("1500us", "1ms 500us")] {
        let set = args(json!({"managed": {"storage": "1Gi"}, "commitDelay": written}))
            .expect("valid")
            .expect("managed");
        assert_eq!(delay(&set).as_deref(), Some(passed), "{written}");
    }
    for (bad, says) in [
        (
            "101ms",
            "spec.commitDelay = 101ms is above the most it may be (100ms)",
        ),
        ("soon", "spec.commitDelay = \"soon\" is not a duration"),
    ] {
        let e = args(json!({"managed": {"storage": "1Gi"}, "commitDelay": bad})).expect_err(bad);
        assert_eq!(e.reason(), "InvalidShard");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn a_shard_with_both_backends_has_no_objects_but_an_invalid_shard_error() {
    let both = shard(
        "s0",
        &[(0, 16383)],
        json!({"external": {"endpoint": "x:1"}, "managed": {"storage": "1Gi"}}),
    );
    let e = shard_objects_alone(&both).expect_err("both");
    assert_eq!(e.reason(), "InvalidShard");
    assert!(e.to_string().starts_with("Shard s0: "), "{e}");
}

#[test]
fn shard_endpoints() {
    let d = Defaults::default();
    assert_eq!(
        shard_endpoint(
            &external_shard("s0", &[(0, 1)], "http://shard0.example:7100"),
            &d
        )
        .as_deref(),
        Some("http://shard0.example:7100")
    );
    assert_eq!(
        shard_endpoint(&managed_shard("s0", &[(0, 1)]), &d).as_deref(),
        Some("s0-shard.ns.svc:7100")
    );
    let mut other_ns = managed_shard("s9", &[(0, 1)]);
    other_ns.metadata.namespace = Some("team-b".into());
    assert_eq!(
        shard_endpoint(&other_ns, &d).as_deref(),
        Some("s9-shard.team-b.svc:7100")
    );
    assert_eq!(shard_endpoint(&shard("s0", &[(0, 1)], json!({})), &d), None);
    let both = shard(
        "s0",
        &[(0, 1)],
        json!({"external": {"endpoint": "x:1"}, "managed": {"storage": "1Gi"}}),
    );
    assert_eq!(shard_endpoint(&both, &d), None);
}

/// `spec.tls.mode: Insecure` runs every pod plaintext, said in the environment, with the
/// kubelet's gRPC probe and no certificate volume; a Shard follows its LogPlayer.
#[test]
fn insecure_mode_runs_plaintext_pods_without_certificates() {
    let lp = lp_with(|s| s["tls"] = json!({"mode": "Insecure"}));
    let o = objects(&lp, &four_shards());
    let ls = o.logstore.as_ref().expect("managed");
    let pod = ls
        .server
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.volumes, None, "no certificate volume");
    let c = &pod.containers[0];
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"LOGPLAYER_INSECURE"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("LOGPLAYER_TLS")),
        "{env:?}"
    );
    // The same probes as with TLS: the server's own HTTP ones.
    assert!(
        c.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .is_some()
    );
    let s0 = managed_shard("s0", &[(0, 16383)]);
    assert_eq!(shard_tls(&s0, Some(&lp)), PodTls::Insecure);
    assert_eq!(shard_tls(&s0, None), PodTls::Secret("s0-shard-tls".into()));
}

#[test]
fn max_entry_bytes_reaches_the_players_the_log_replicas_and_the_managed_shards() {
    let value = |args: &[String]| {
        args.iter()
            .position(|a| a == "--max-entry-bytes")
            .map(|i| args[i + 1].clone())
    };
    let s0 = managed_shard("s0", &[(0, 16383)]);
    let rendered = |lp: &LogPlayer| {
        let o = objects(lp, std::slice::from_ref(&s0));
        let log = o.logstore.as_ref().expect("managed LogStore objects");
        let shard = shard_objects(
            &s0,
            &Defaults::default(),
            FromLogPlayer::of(Some(lp)),
            shard_tls(&s0, Some(lp)),
        )
        .expect("valid")
        .expect("managed");
        [
            value(&args(&o)),
            value(
                &sts_container(&log.server.stateful_set)
                    .args
                    .clone()
                    .unwrap_or_default(),
            ),
            value(
                &sts_container(&shard.stateful_set)
                    .args
                    .clone()
                    .unwrap_or_default(),
            ),
        ]
    };
    // The default is each server's own: nothing rendered, nothing rolled by an upgrade.
    assert_eq!(rendered(&logplayer(managed_spec())), [None, None, None]);
    let lp = lp_with(|s| s["maxEntryBytes"] = json!(8_388_608));
    assert_eq!(rendered(&lp), [(); 3].map(|()| Some("8388608".to_owned())));
    // Past what the default heartbeat carries, the log replicas beat slower (the replica
    // would warn of elections while a large entry replicates).
    let heartbeat = |lp: &LogPlayer| {
        let o = objects(lp, std::slice::from_ref(&s0));
        let log = o.logstore.expect("managed LogStore objects");
        let args = sts_container(&log.server.stateful_set)
            .args
            .clone()
            .unwrap_or_default();
        args.iter()
            .position(|a| a == "--heartbeat")
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(heartbeat(&lp), None);
    let big = lp_with(|s| s["maxEntryBytes"] = json!(64 << 20));
    assert_eq!(heartbeat(&big).as_deref(), Some("84ms"));
    assert_eq!(
        parsed_args(&objects(&lp, std::slice::from_ref(&s0))).max_entry_bytes,
        8_388_608
    );
    // A shard whose LogPlayer is not found runs at the default.
    let alone = shard_objects(
        &s0,
        &Defaults::default(),
        FromLogPlayer::of(None),
        shard_tls(&s0, None),
    )
    .expect("valid")
    .expect("managed");
    assert_eq!(
        value(
            &sts_container(&alone.stateful_set)
                .args
                .clone()
                .unwrap_or_default()
        ),
        None
    );
}
