//! Why objects cannot be built: every error and the condition reason that names it.

use super::*;

/// Managed shards, one slot range each.
fn managed(shards: &[(&str, i32, i32)]) -> Vec<Shard> {
    shards
        .iter()
        .map(|&(name, start, end)| managed_shard(name, &[(start, end)]))
        .collect()
}

/// The error for the sample spec with `shards`, checked to carry `reason`.
fn shards_err(shards: &[Shard], reason: &str) -> DesiredError {
    let e = err(&logplayer(managed_spec()), shards);
    assert_eq!(e.reason(), reason, "{e}");
    e
}

/// The error for `lp` with the four sample shards, checked to be InvalidSpec.
fn spec_err(lp: &LogPlayer) -> DesiredError {
    let e = err(lp, &four_shards());
    assert_eq!(e.reason(), "InvalidSpec", "{e}");
    e
}

#[test]
fn overlapping_shards_are_slots_overlap_naming_both_and_the_slots() {
    let e = shards_err(
        &managed(&[("alpha", 0, 8191), ("beta", 8000, 16383)]),
        "SlotsOverlap",
    );
    assert!(
        matches!(&e, DesiredError::Coverage(Coverage(i))
                if i == &[CoverageIssue::Overlap { from: 8000, to: 8191, a: "alpha".into(), b: "beta".into() }]),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "shards do not own every slot exactly once: slots 8000-8191 are owned by both \
             shard \"alpha\" and shard \"beta\""
    );
}

#[test]
fn an_overlap_outranks_a_hole_and_both_are_named() {
    let shards = managed(&[("a", 0, 100), ("b", 50, 16000)]);
    let m = shards_err(&shards, "SlotsOverlap").to_string();
    assert!(
        m.contains("slots 50-100 are owned by both shard \"a\" and shard \"b\""),
        "{m}"
    );
    assert!(m.contains("slots 16001-16383 are owned by no shard"), "{m}");
}

#[test]
fn a_hole_is_slots_unowned_naming_the_missing_range() {
    let shards = managed(&[("s0", 0, 4095), ("s2", 8192, 16383)]);
    let e = shards_err(&shards, "SlotsUnowned");
    assert_eq!(
        e.to_string(),
        "shards do not own every slot exactly once: slots 4096-8191 are owned by no shard"
    );
}

#[test]
fn no_shards_is_no_shards() {
    let e = shards_err(&[], "NoShards");
    assert!(e.to_string().contains("no shards"), "{e}");
    assert!(e.to_string().contains("0-16383"), "{e}");
}

#[test]
fn a_shard_with_both_backends_is_invalid_shard_naming_it() {
    let mut shards = four_shards();
    shards[0] = shard(
        "s2",
        &[(8192, 12287)],
        json!({"external": {"endpoint": "x:1"}, "managed": {"storage": "1Gi"}}),
    );
    let e = shards_err(&shards, "InvalidShard");
    assert!(
        matches!(&e, DesiredError::Shard { shard, .. } if shard == "s2"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "Shard s2: Shard spec must set exactly one of `external` or `managed`, but sets both"
    );

    shards[0] = shard("s2", &[(8192, 12287)], json!({}));
    let e = shards_err(&shards, "InvalidShard");
    assert!(e.to_string().starts_with("Shard s2: "), "{e}");
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn a_shard_with_malformed_ranges_is_invalid_shard_naming_it() {
    let mut shards = four_shards();
    shards[0] = managed_shard("s2", &[(12287, 8192)]);
    let e = shards_err(&shards, "InvalidShard");
    assert_eq!(
        e.to_string(),
        "Shard s2: invalid slot ranges: slot range 12287-8192 starts after it ends"
    );
}

#[test]
fn bad_lease_timing_is_invalid_spec() {
    let lp = lp_with(|v| {
        v["lease"] = json!({"leaseDuration": "2s", "renewDeadline": "2s", "retryPeriod": "250ms"});
    });
    let e = spec_err(&lp);
    assert!(
        matches!(e, DesiredError::Spec(CrdError::LeaseTiming { .. })),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("invalid LogPlayer spec: "), "{e}");
    assert!(
        e.to_string().contains("renewDeadline < leaseDuration"),
        "{e}"
    );

    let lp = lp_with(|v| v["lease"]["leaseDuration"] = json!("soon"));
    let e = spec_err(&lp);
    assert!(e.to_string().contains("spec.lease.leaseDuration"), "{e}");

    let lp = lp_with(|v| v["checkpointInterval"] = json!("0s"));
    let e = spec_err(&lp);
    assert!(e.to_string().contains("spec.checkpointInterval"), "{e}");
}

#[test]
fn a_logstore_with_neither_or_both_backends_is_invalid_spec() {
    for (log_store, found) in [
        (json!({}), "neither"),
        (
            json!({"external": {"endpoint": "x:1"}, "managed": {"storage": "1Gi"}}),
            "both",
        ),
    ] {
        let lp = lp_with(|v| v["logStore"] = log_store);
        let e = spec_err(&lp);
        assert_eq!(
            e.to_string(),
            format!(
                "invalid LogPlayer spec: LogPlayer spec.logStore must set exactly one of \
                     `external` or `managed`, but sets {found}"
            )
        );
        assert_eq!(logstore_endpoint(&lp, "ns", &Defaults::default()), None);
    }
}

#[test]
fn a_spec_problem_is_reported_before_the_shards() {
    let lp = lp_with(|v| v["logStore"] = json!({}));
    assert_eq!(err(&lp, &[]).reason(), "InvalidSpec");
}

#[test]
fn no_namespace_is_no_namespace() {
    let mut lp = logplayer(managed_spec());
    lp.metadata.namespace = None;
    let e = err(&lp, &four_shards());
    assert_eq!(e.reason(), "NoNamespace");
    assert_eq!(e.to_string(), "LogPlayer demo has no namespace");

    let mut s0 = managed_shard("s0", &[(0, 16383)]);
    s0.metadata.namespace = None;
    let e = shard_objects_alone(&s0).expect_err("no namespace");
    assert_eq!(e.reason(), "NoNamespace");
    assert_eq!(e.to_string(), "Shard s0 has no namespace");
}

#[test]
fn reasons_of_the_remaining_errors() {
    let yaml = serde_yaml::from_str::<i32>("not a number").expect_err("not an i32");
    assert_eq!(DesiredError::Yaml(yaml).reason(), "Internal");
    let dup = DesiredError::Coverage(Coverage(vec![CoverageIssue::DuplicateShard {
        shard: "a".into(),
    }]));
    assert_eq!(dup.reason(), "InvalidShard");
    let no_shards_first = DesiredError::Coverage(Coverage(vec![
        CoverageIssue::Hole { from: 0, to: 1 },
        CoverageIssue::NoShards,
    ]));
    assert_eq!(no_shards_first.reason(), "NoShards");
}

/// An external endpoint the players could not dial is the Shard's (or the LogPlayer's) own
/// error, naming it: left to the players, it would make them refuse the whole shard map.
#[test]
fn an_external_endpoint_that_is_not_host_and_port_is_named() {
    let shards = vec![
        managed_shard("s0", &[(0, 8191)]),
        external_shard("s1", &[(8192, 16383)], "s1.example"),
    ];
    let e = shards_err(&shards, "InvalidShard");
    assert!(
        e.to_string().contains("Shard s1") && e.to_string().contains("\"s1.example\""),
        "{e}"
    );
    let lp = lp_with(|spec| {
        spec["logStore"] = serde_json::json!({"external": {"endpoint": "logs.example:0"}});
    });
    let e = err(&lp, &four_shards());
    assert_eq!(e.reason(), "InvalidSpec", "{e}");
    assert!(e.to_string().contains("logs.example:0"), "{e}");
}
