//! What wakes a reconciliation: the changes of each watched kind that can change what the
//! operator does or reports, without the churn of live numbers.
//!
//! Under load a LogPlayer's status changes at every look (each shard's `ackedIndex` and lag,
//! the log's commit index), and the leading player writes every Shard's cursor once per
//! checkpoint. Woken by every such write, the controllers would chase their own status writes
//! and the players' in a loop: each LogPlayer status write wakes its Shards, each Shard
//! write wakes its LogPlayer, every look probing every server and applying every object. So
//! each watch passes an object on only when the part of it the operator acts on changed
//! ([`spec_and_meta`], [`shard_as_member`]), and always when it is deleted while watched;
//! the live numbers are refreshed on the resync (`RESYNC`).
//!
//! Written here rather than with kube's `predicate_filter`: that filter works on objects
//! after the event is decoded, so an unchanged deleted object is filtered out and a deleted
//! Shard would stay in its LogPlayer's status until the resync.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt, stream};
use kube::Resource;
use kube::runtime::watcher;

use crate::crd::Shard;

fn hash<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// An object's identity across its events (a recreated object is another one).
type Id = (Option<String>, Option<String>, Option<String>);

fn id<K: Resource>(o: &K) -> Id {
    let m = o.meta();
    (m.namespace.clone(), m.name.clone(), m.uid.clone())
}

/// What the operator acts on in any object it reconciles: its spec (through the
/// generation), its labels and annotations (selectors, the pause annotation), its finalizers
/// and whether it is being deleted. Not its status.
pub fn spec_and_meta<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    hash(&(
        m.generation,
        &m.labels,
        &m.annotations,
        &m.finalizers,
        m.deletion_timestamp.is_some(),
    ))
}

/// What the Shards take from a ConfigMap the operator owns: its data (a shard map's text)
/// and whether it is being deleted. ConfigMaps have no generation.
pub fn config_map_data(cm: &k8s_openapi::api::core::v1::ConfigMap) -> u64 {
    hash(&(&cm.data, cm.metadata.deletion_timestamp.is_some()))
}

/// The LogPlayer whose players' shard map `cm` is (`<logplayer>-shard-map`, owned by that
/// LogPlayer); `None` for any other ConfigMap.
pub fn shard_map_owner(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Option<String> {
    let name = cm.metadata.name.as_deref()?;
    cm.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "LogPlayer" && name == super::names::shard_map_name_of(&o.name))
        .map(|o| o.name.clone())
}

/// What a LogPlayer's status takes from one of its Shards: [`spec_and_meta`], the Shard's
/// conditions (a Shard degraded by its own objects degrades its LogPlayer), its address and
/// readiness, and the epoch and log of the cursor the leading player wrote (a new epoch is
/// a new leader). Not the cursor's index, nor the lag.
pub fn shard_as_member(s: &Shard) -> u64 {
    let status = s.status.as_ref().map(|st| {
        let conditions: Vec<_> = st
            .conditions
            .iter()
            .map(|c| (&c.type_, &c.status, &c.reason, &c.message))
            .collect();
        (
            conditions,
            &st.endpoint,
            st.ready,
            st.acked_epoch,
            &st.acked_log_id,
        )
    });
    hash(&(spec_and_meta(s), status))
}

/// The objects of a watch worth waking a reconciliation for: one whose `key` changed since
/// it was last passed on (or that is new), and every one deleted while watched. Errors pass
/// through (the controller backs off on them). A relist's changed objects are passed on
/// together when it is complete, as the reflector's store takes them then (passed on one by
/// one, a reconciliation could run against the store before the relist); objects that did
/// not come back are forgotten, and what they were in is corrected on its resync.
pub fn changes<K, S>(
    events: S,
    key: impl Fn(&K) -> u64 + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut seen: HashMap<Id, u64> = HashMap::new();
    let mut listed: HashSet<Id> = HashSet::new();
    let mut relisted: Vec<K> = Vec::new();
    events.flat_map(move |event| {
        let out: Vec<Result<K, watcher::Error>> = match event {
            Err(e) => vec![Err(e)],
            Ok(watcher::Event::Init) => {
                listed.clear();
                relisted.clear();
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => {
                seen.retain(|k, _| listed.contains(k));
                listed.clear();
                relisted.drain(..).map(Ok).collect()
            }
            Ok(watcher::Event::InitApply(o)) => {
                listed.insert(id(&o));
                relisted.extend(changed(&mut seen, o, &key));
                Vec::new()
            }
            Ok(watcher::Event::Apply(o)) => {
                changed(&mut seen, o, &key).map(Ok).into_iter().collect()
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&id(&o));
                vec![Ok(o)]
            }
        };
        stream::iter(out)
    })
}

fn changed<K: Resource>(seen: &mut HashMap<Id, u64>, o: K, key: impl Fn(&K) -> u64) -> Option<K> {
    let k = key(&o);
    (seen.insert(id(&o), k) != Some(k)).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ShardSpec, ShardStatus};
    use futures::executor::block_on;
    use watcher::Event;

    fn shard(name: &str, generation: i64, acked: i64, epoch: i64) -> Shard {
        let spec = ShardSpec {
            log_player: "lp".into(),
            slots: Vec::new(),
            external: None,
            managed: None,
            commit_delay: None,
        };
        let mut s = Shard::new(name, spec);
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.generation = Some(generation);
        s.status = Some(ShardStatus {
            acked_index: Some(acked),
            acked_epoch: Some(epoch),
            lag: Some(acked),
            ..ShardStatus::default()
        });
        s
    }

    fn passed(events: Vec<Event<Shard>>, key: fn(&Shard) -> u64) -> Vec<(String, i64)> {
        let out =
            block_on(changes(stream::iter(events.into_iter().map(Ok)), key).collect::<Vec<_>>());
        out.into_iter()
            .map(|r| {
                let s = r.unwrap();
                let acked = s.status.and_then(|st| st.acked_index).unwrap_or(0);
                (s.metadata.name.unwrap_or_default(), acked)
            })
            .collect()
    }

    #[test]
    fn live_numbers_do_not_wake_and_spec_changes_and_deletions_do() {
        let events = vec![
            Event::Init,
            Event::InitApply(shard("a", 1, 1, 1)),
            Event::InitApply(shard("b", 1, 1, 1)),
            Event::InitDone,
            // Cursor and lag writes: nothing the operator acts on.
            Event::Apply(shard("a", 1, 2, 1)),
            Event::Apply(shard("a", 1, 3, 1)),
            // A spec change.
            Event::Apply(shard("a", 2, 4, 1)),
            Event::Apply(shard("b", 1, 5, 1)),
            // Deleted unchanged: still passed on.
            Event::Delete(shard("b", 1, 5, 1)),
        ];
        assert_eq!(
            passed(events, spec_and_meta::<Shard>),
            [("a", 1), ("b", 1), ("a", 4), ("b", 5)].map(|(n, i)| (n.to_owned(), i))
        );
    }

    #[test]
    fn a_shard_wakes_its_logplayer_on_a_new_epoch_or_condition_but_not_on_its_index() {
        let mut degraded = shard("a", 1, 4, 2);
        if let Some(st) = degraded.status.as_mut() {
            st.ready = Some(false);
        }
        let events = vec![
            Event::Apply(shard("a", 1, 1, 1)),
            Event::Apply(shard("a", 1, 2, 1)),
            // A new leader's first cursor.
            Event::Apply(shard("a", 1, 3, 2)),
            Event::Apply(degraded),
        ];
        assert_eq!(
            passed(events, shard_as_member),
            [("a", 1), ("a", 3), ("a", 4)].map(|(n, i)| (n.to_owned(), i))
        );
    }

    #[test]
    fn a_relists_changes_are_passed_on_when_it_is_complete() {
        let events = vec![
            Ok(Event::Apply(shard("a", 1, 1, 1))),
            Ok(Event::Init),
            Ok(Event::InitApply(shard("a", 2, 1, 1))),
            Ok(Event::InitApply(shard("b", 1, 1, 1))),
            Ok(Event::InitDone),
        ];
        let mut out = changes(stream::iter(events), spec_and_meta::<Shard>);
        let mut names = Vec::new();
        block_on(async {
            while let Some(r) = out.next().await {
                names.push(r.unwrap().metadata.name.unwrap_or_default());
            }
        });
        assert_eq!(names, ["a", "a", "b"]);
        // Nothing of the relist before its end: the first item is the plain Apply's, and
        // the relist's two come after InitDone (checked by order of a stream cut short).
        let events = vec![Ok(Event::Init), Ok(Event::InitApply(shard("a", 1, 1, 1)))];
        let passed = block_on(changes(stream::iter(events), spec_and_meta::<Shard>).count());
        assert_eq!(
            passed, 0,
            "a relist's objects were passed on before InitDone"
        );
    }

    #[test]
    fn a_relist_forgets_what_did_not_come_back_and_a_recreated_object_is_new() {
        let mut again = shard("a", 1, 9, 1);
        again.metadata.uid = Some("uid-a2".into());
        let events = vec![
            Event::Apply(shard("a", 1, 1, 1)),
            Event::Apply(shard("b", 1, 1, 1)),
            Event::Init,
            Event::InitApply(shard("a", 1, 2, 1)),
            Event::InitDone,
            // b was deleted while the watch was down: back later, it is new.
            Event::Apply(shard("b", 1, 7, 1)),
            Event::Apply(again),
        ];
        assert_eq!(
            passed(events, spec_and_meta::<Shard>),
            [("a", 1), ("b", 1), ("b", 7), ("a", 9)].map(|(n, i)| (n.to_owned(), i))
        );
    }

    /// A shard map wakes the Shards of the LogPlayer that owns it, by its name and owner
    /// together; its data changing passes it on, a label alone does not.
    #[test]
    fn a_shard_map_is_told_by_its_name_and_owner_and_passed_on_when_its_text_changes() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let map = |name: &str, owner_kind: &str, text: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            cm.metadata.owner_references = Some(vec![OwnerReference {
                kind: owner_kind.into(),
                name: "demo".into(),
                ..OwnerReference::default()
            }]);
            cm.data = Some([("shard-map.yaml".to_owned(), text.to_owned())].into());
            cm
        };
        assert_eq!(
            shard_map_owner(&map("demo-shard-map", "LogPlayer", "a")),
            Some("demo".into())
        );
        assert_eq!(shard_map_owner(&map("demo-other", "LogPlayer", "a")), None);
        assert_eq!(
            shard_map_owner(&map("demo-shard-map", "Deployment", "a")),
            None
        );
        let before = map("demo-shard-map", "LogPlayer", "a");
        let mut labelled = before.clone();
        labelled.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        assert_eq!(config_map_data(&before), config_map_data(&labelled));
        assert_ne!(
            config_map_data(&before),
            config_map_data(&map("demo-shard-map", "LogPlayer", "b"))
        );
    }
}
