//! The whole status (conditions and problems) for each failure reason, pinned by insta.

use super::*;

/// The whole status (conditions and problems) for each failure reason, pinned: a change of
/// wording, rank or lag handling shows up as a snapshot diff.
#[test]
fn the_status_of_each_failure_reason_is_pinned() {
    let pending = "pod demo-player-1 cannot be scheduled: Unschedulable: 0/1 nodes are \
                   available: 1 Insufficient cpu.";
    let cases: Vec<(&str, Observed)> = vec![
        (
            "apply_failed",
            healthy_with(|o| {
                o.apply_problems = vec![Problem::new(
                    "ApplyFailed",
                    "applying Deployment demo-player: Deployment.apps \"demo-player\" is \
                     invalid: spec.template.spec.containers[0].resources.requests: Invalid \
                     value: \"2\": must be less than or equal to cpu limit of 1",
                )]
            }),
        ),
        (
            "pods_pending_with_the_logstore_not_running",
            healthy_with(|o| {
                o.pod_problems = vec![Problem::new("PodsPending", pending)];
                o.logstore = Probe::NotRunning;
                o.head_index = None;
            }),
        ),
        (
            "image_pull_failed",
            healthy_with(|o| {
                o.pod_problems = vec![Problem::new(
                    "ImagePullFailed",
                    "pod demo-player-1 container player (bad:image): ImagePullBackOff",
                )]
            }),
        ),
        (
            "crash_loop",
            healthy_with(|o| {
                o.pod_problems = vec![Problem::new(
                    "CrashLoopBackOff",
                    "pod demo-player-1 container player (x): CrashLoopBackOff",
                )]
            }),
        ),
        (
            "logstore_unreachable_while_running",
            healthy_with(|o| {
                o.logstore = Probe::Unreachable(LOGSTORE_DOWN.into());
                o.head_index = None;
            }),
        ),
        (
            "shard_unreachable",
            healthy_with(|o| o.shards[1].probe = Probe::Unreachable(S1_DOWN.into())),
        ),
        (
            "invalid_selector",
            healthy_with(|o| {
                o.spec_problem = Some(Problem::new(
                    "InvalidSpec",
                    "invalid LogPlayer spec: shardSelector {\"matchExpressions\":[{\"key\":\"a\",\"operator\":\"Sometimes\"}]}: unknown operator",
                ))
            }),
        ),
        (
            "several_at_once",
            healthy_with(|o| {
                o.spec_problem = Some(Problem::new(
                    "SlotsUnowned",
                    "slots 0-9 are owned by no shard",
                ));
                o.pod_problems = vec![Problem::new("PodsPending", pending)];
                o.shards[1].probe = Probe::Unreachable(S1_DOWN.into());
            }),
        ),
    ];
    for (name, obs) in cases {
        let s = status(&obs);
        insta::assert_yaml_snapshot!(format!("logplayer_status_{name}"), s);
    }
    let shard = first_shard_status(&shard_obs_with(|o| {
        o.pod_problems = vec![Problem::new(
            "PodsPending",
            "pod s0-shard-0 cannot be scheduled: Unschedulable: 0/1 nodes are available: \
             pod has unbound immediate PersistentVolumeClaims.",
        )];
        o.probe = Probe::NotRunning;
        o.lag = None;
    }));
    insta::assert_yaml_snapshot!("shard_status_pods_pending", shard);
}
