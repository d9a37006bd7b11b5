//! Snapshots of what the operator creates for a sample LogPlayer with a managed LogStore
//! and four managed Shards: a change to any generated object shows as a reviewed diff
//! (`cargo insta review`, or `INSTA_UPDATE=always cargo test` then read `git diff`).

use super::*;

fn sample() -> (PlayerObjects, Vec<ServerObjects>) {
    let lp = logplayer(managed_spec());
    let shards = four_shards();
    let o = objects(&lp, &shards);
    let servers = shards
        .iter()
        .filter_map(|s| {
            shard_objects(
                s,
                &Defaults::default(),
                FromLogPlayer::default(),
                shard_tls(s, None),
            )
            .ok()
            .flatten()
        })
        .collect();
    (o, servers)
}

#[test]
fn the_players_deployment() {
    insta::assert_yaml_snapshot!(sample().0.deployment);
}

#[test]
fn the_players_account_role_and_bindings() {
    let PlayerObjects {
        service_account,
        operator_binding,
        role,
        role_binding,
        ..
    } = sample().0;
    insta::assert_yaml_snapshot!((service_account, operator_binding, role, role_binding));
}

#[test]
fn the_shard_map_config_map() {
    insta::assert_yaml_snapshot!(sample().0.shard_map);
}

#[test]
fn the_metrics_service_and_pdb() {
    let o = sample().0;
    insta::assert_yaml_snapshot!((o.metrics_service, o.pdb));
}

#[test]
fn the_managed_logstore() {
    let ls = sample().0.logstore.expect("a managed LogStore");
    insta::assert_yaml_snapshot!((
        ls.server.service,
        ls.server.stateful_set,
        ls.client_service,
        ls.pdb
    ));
}

#[test]
fn a_managed_shard_server() {
    let servers = sample().1;
    let first = servers.into_iter().next().expect("a managed shard");
    insta::assert_yaml_snapshot!((first.service, first.stateful_set));
}

#[test]
fn the_network_policies() {
    let lp = logplayer(managed_spec());
    let shards = four_shards();
    let shard = shard_network_policy(&shards[0], Some(&lp), &Defaults::default());
    insta::assert_yaml_snapshot!((objects(&lp, &shards).network_policies, shard));
}
