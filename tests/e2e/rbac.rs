//! What the players and the operator may do to each other's objects: the players' Role names
//! their own Lease and Shards, and the operator binds the players' ClusterRole to nobody but
//! itself and writes no Role beyond the players' rules (the admission policy).

use anyhow::ensure;

use super::{DEMO_NS, Harness, OPERATOR_SA, can_i_as};

/// The demo's players (their ServiceAccount, bound to their Role `demo-player`) may renew
/// their own Lease and write the ack cursors of their own Shards, and nothing of anyone
/// else's: not another Lease in their namespace (another LogPlayer's, or another program's
/// leader election), not a Shard of another LogPlayer, not a Shard's spec.
pub fn players_hold_only_their_own(h: &Harness) -> anyhow::Result<()> {
    let players = format!("system:serviceaccount:{DEMO_NS}:demo-player");
    let shard_status = |name: &str| -> Vec<String> {
        [
            "patch",
            &format!("shards.logplayer.io/{name}"),
            "--subresource=status",
            "-n",
            DEMO_NS,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let lease = |verb: &str, name: &str, ns: &str| -> Vec<String> {
        [verb, &format!("leases/{name}"), "-n", ns]
            .map(str::to_owned)
            .to_vec()
    };
    let checks: Vec<(Vec<String>, bool)> = vec![
        (lease("get", "demo-player", DEMO_NS), true),
        (lease("update", "demo-player", DEMO_NS), true),
        (shard_status("s0"), true),
        (shard_status("s3"), true),
        (
            ["list", "shards.logplayer.io", "-n", DEMO_NS]
                .map(str::to_owned)
                .to_vec(),
            true,
        ),
        // Nobody else's.
        (lease("update", "other-player", DEMO_NS), false),
        (lease("update", "kube-controller-manager", DEMO_NS), false),
        (lease("update", "demo-player", "kube-system"), false),
        (lease("delete", "demo-player", DEMO_NS), false),
        (shard_status("another-logplayers-shard"), false),
        (
            ["patch", "shards.logplayer.io/s0", "-n", DEMO_NS]
                .map(str::to_owned)
                .to_vec(),
            false,
        ),
        (
            ["list", "leases", "-n", DEMO_NS]
                .map(str::to_owned)
                .to_vec(),
            false,
        ),
    ];
    for (args, want) in checks {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = can_i_as(h, &players, &args)?;
        ensure!(
            got == want,
            "kubectl auth can-i {} --as={players}: got {}, want {}",
            args.join(" "),
            if got { "yes" } else { "no" },
            if want { "yes" } else { "no" }
        );
    }
    eprintln!("[e2e] the players may touch their own Lease and Shards only");
    Ok(())
}

/// With the operator's token, RBAC lets it bind the players' ClusterRole to anyone in any
/// namespace; the admission policy lets it bind it to itself only (so a leaked token cannot
/// hand a Lease-writing right to another account), and refuses the players' binding to
/// anyone but the players' ServiceAccount of the same name.
pub fn the_operator_binds_the_cluster_role_to_itself_only(
    h: &Harness,
    ns: &str,
) -> anyhow::Result<()> {
    let operator = OPERATOR_SA
        .rsplit(':')
        .next()
        .unwrap_or("logplayer-operator");
    let operator_ns = OPERATOR_SA
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split(':').next())
        .unwrap_or("logplayer-system");
    let why = "binds only the players' Role";
    for (name, subject_ns, subject, allowed) in [
        ("x-operator", operator_ns, operator, true),
        ("x-operator", ns, "someone", false),
        ("x-operator", "kube-system", "default", false),
    ] {
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "logplayer-operator"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "logplayer-operator-player"},
            "subjects": [{"kind": "ServiceAccount", "name": subject,
                          "namespace": subject_ns}]
        });
        let (created, text) = dry_run_as_operator(h, &format!("vap-binding-{subject}"), binding)?;
        ensure!(
            created == allowed && (allowed || text.contains(why)),
            "binding the players' ClusterRole to {subject_ns}/{subject} as the operator: want \
             {}, got: {text}",
            if allowed {
                "allowed"
            } else {
                "refused by the admission policy"
            }
        );
    }
    roles_hold_only_the_players_rules(h, ns)
}

/// A Role the operator writes holds only the players' rules, whatever else it holds itself
/// (RBAC would let it write a Role with any of its own rights, Secrets included, and bind it
/// to a ServiceAccount its Deployment then runs as).
fn roles_hold_only_the_players_rules(h: &Harness, ns: &str) -> anyhow::Result<()> {
    let why = "holds only the players' rules";
    let shards = serde_json::json!({"apiGroups": ["logplayer.io"], "resources": ["shards"],
                                    "verbs": ["list"]});
    let status = serde_json::json!({"apiGroups": ["logplayer.io"],
                                    "resources": ["shards/status"], "verbs": ["patch"],
                                    "resourceNames": ["s0"]});
    let secrets = serde_json::json!({"apiGroups": [""], "resources": ["secrets"],
                                     "verbs": ["get"]});
    let every_status = serde_json::json!({"apiGroups": ["logplayer.io"],
                                          "resources": ["shards/status"], "verbs": ["patch"]});
    let other = "is only the players' Role";
    for (what, name, rules, allowed, why) in [
        (
            "shaped like the players'",
            "x-player",
            vec![shards.clone(), status.clone()],
            true,
            why,
        ),
        (
            "with Secrets",
            "x-player",
            vec![shards.clone(), secrets],
            false,
            why,
        ),
        (
            "naming no Shard",
            "x-player",
            vec![shards.clone(), every_status],
            false,
            why,
        ),
        (
            "not named <logplayer>-player",
            "x",
            vec![shards, status],
            false,
            other,
        ),
    ] {
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "logplayer-operator"}},
            "rules": rules
        });
        let (created, text) = dry_run_as_operator(h, "vap-role", role)?;
        ensure!(
            created == allowed && (allowed || text.contains(why)),
            "a Role {what} as the operator: want {}, got: {text}",
            if allowed {
                "allowed"
            } else {
                "refused by the admission policy"
            }
        );
    }
    Ok(())
}

/// Creates `object` as the operator, server-side dry-run (written to `NAME.json` in the
/// control plane's directory): whether the API server took it, and what kubectl said.
fn dry_run_as_operator(
    h: &Harness,
    name: &str,
    object: serde_json::Value,
) -> anyhow::Result<(bool, String)> {
    let file = h.cp.dir().join(format!("{name}.json"));
    std::fs::write(&file, object.to_string())?;
    let as_operator = format!("--as={OPERATOR_SA}");
    let out = h.cp.kubectl_raw(&[
        "create",
        "-f",
        &file.display().to_string(),
        "--dry-run=server",
        &as_operator,
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}
