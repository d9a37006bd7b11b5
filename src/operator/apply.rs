//! Applying what the operator wants: server-side apply of objects and status under
//! [`FIELD_MANAGER`], and deleting what it no longer wants ([`prune`]).

use super::{FIELD_MANAGER, OperatorError};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Server-side applies `obj` (namespaced) under [`FIELD_MANAGER`].
pub(super) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|source| OperatorError::Apply {
            kind: K::kind(&Default::default()).into_owned(),
            name,
            source,
        })
}

/// Server-side applies the status of one of our resources under [`FIELD_MANAGER`].
pub(super) async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Deletes a namespaced object if it exists (for objects the spec no longer asks for).
pub(super) async fn delete_if_present<K>(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(), OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the objects of kind `K` that `owner_uid` controls, that carry the labels of
/// `selector`, and whose names are not in `keep`: what the desired set no longer contains
/// (a managed LogStore after a switch to `external`, a PodDisruptionBudget after scaling to
/// one replica). Returns the names deleted. PersistentVolumeClaims are never touched.
pub(super) async fn prune<K>(
    client: &Client,
    ns: &str,
    selector: &str,
    owner_uid: &str,
    keep: &[String],
) -> Result<Vec<String>, OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let listed = api
        .list_metadata(&kube::api::ListParams::default().labels(selector))
        .await?;
    let mut deleted = Vec::new();
    for obj in listed.items {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let ours = obj
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == owner_uid);
        if ours && !keep.contains(&name) {
            delete_if_present::<K>(client, ns, &name).await?;
            tracing::info!(kind = %K::kind(&Default::default()), %name, "deleted an object the spec no longer asks for");
            deleted.push(name);
        }
    }
    Ok(deleted)
}
