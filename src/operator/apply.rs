//! Applying what the operator wants: server-side apply of objects and status under
//! [`FIELD_MANAGER`], the players' RBAC in the order Kubernetes needs ([`apply_rbac`]), and
//! deleting what it no longer wants ([`prune`]).

use super::{FIELD_MANAGER, OperatorError};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

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

/// The players' RBAC, in the order Kubernetes needs: the operator's own binding to the
/// players' ClusterRole first (a Role may only be written by whoever holds its
/// permissions), then the players' Role, then their binding to it. One outcome per object.
pub(super) async fn apply_rbac(
    client: &Client,
    ns: &str,
    operator_binding: Option<&RoleBinding>,
    role: &Role,
    binding: &RoleBinding,
) -> Vec<Result<(), OperatorError>> {
    let mut outcomes = Vec::new();
    if let Some(b) = operator_binding {
        outcomes.push(apply_binding(client, ns, b).await);
    }
    outcomes.push(apply_role(client, ns, role).await);
    outcomes.push(apply_binding(client, ns, binding).await);
    outcomes
}

/// Applies a Role, asking again for about two seconds while the API server refuses it as an
/// escalation: the authorizer may not have seen the operator's just-made binding yet.
async fn apply_role(client: &Client, ns: &str, role: &Role) -> Result<(), OperatorError> {
    use backon::{ExponentialBuilder, Retryable};
    let forbidden = |e: &OperatorError| matches!(e, OperatorError::Apply { source: kube::Error::Api(s), .. } if s.code == 403);
    (|| async { apply(client, ns, role).await.map(drop) })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(5),
        )
        .sleep(tokio::time::sleep)
        .when(forbidden)
        .await
}

/// Applies a RoleBinding; one of ours whose `roleRef` differs (which Kubernetes never lets
/// change: the players' binding of an older operator, to the ClusterRole) is deleted and made
/// again. Somebody else's binding of that name is left alone (the refusal is reported).
async fn apply_binding(
    client: &Client,
    ns: &str,
    binding: &RoleBinding,
) -> Result<(), OperatorError> {
    let refused = match apply(client, ns, binding).await {
        Err(OperatorError::Apply {
            source: kube::Error::Api(s),
            name,
            kind,
        }) if s.code == 422 && s.message.contains("cannot change roleRef") => {
            (name, kind, kube::Error::Api(s))
        }
        other => return other.map(drop),
    };
    let (name, kind, source) = refused;
    let owner = binding
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let uid = match ours::<RoleBinding>(client, ns, &name, owner.map(|o| o.uid.as_str())).await {
        Ok(Some(uid)) => uid,
        Ok(None) => return Err(OperatorError::Apply { kind, name, source }),
        // The refusal is what the status should say; the lookup is tried again next time.
        Err(error) => {
            tracing::warn!(%error, %name, "could not tell whose the RoleBinding is");
            return Err(OperatorError::Apply { kind, name, source });
        }
    };
    tracing::info!(%name, role = %binding.role_ref.name, "our RoleBinding refers to another role: deleting it to make it again");
    // That very object (its uid), not one made in its place since it was looked at.
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    apply(client, ns, binding).await.map(drop)
}

/// The uid of the object `name` if it exists, carries the operator's managed-by label and is
/// controlled by `owner_uid` (listed by name: the operator has no `get` on what it applies).
async fn ours<K>(
    client: &Client,
    ns: &str,
    name: &str,
    owner_uid: Option<&str>,
) -> Result<Option<String>, OperatorError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let Some(owner_uid) = owner_uid else {
        return Ok(None);
    };
    let listed = named::<K>(
        client,
        ns,
        name,
        Some(super::reconcile::MANAGED_BY_SELECTOR),
    )
    .await?;
    Ok(listed
        .into_iter()
        .find(|m| {
            m.owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && r.uid == owner_uid)
        })
        .and_then(|m| m.uid))
}

/// The metadata of the object `name` if it exists (and carries `labels`), listed by name:
/// the operator has no `get` on what it applies.
async fn named<K>(
    client: &Client,
    ns: &str,
    name: &str,
    labels: Option<&str>,
) -> Result<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut params = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    if let Some(labels) = labels {
        params = params.labels(labels);
    }
    let listed = Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(&params)
        .await?;
    Ok(listed
        .items
        .into_iter()
        .map(|o| o.metadata)
        .filter(|m| m.name.as_deref() == Some(name))
        .collect())
}

/// The uid of the ServiceAccount `account` names, as it is on the API server, when its apply
/// was refused: listed by name (the operator has no `get` on what it applies), and `None`
/// when that fails too, so the refusal is still reported and every other object applied.
pub(super) async fn existing_uid(
    client: &Client,
    ns: &str,
    account: &k8s_openapi::api::core::v1::ServiceAccount,
) -> Option<String> {
    let name = account.metadata.name.clone().unwrap_or_default();
    match named::<k8s_openapi::api::core::v1::ServiceAccount>(client, ns, &name, None).await {
        Ok(listed) => listed.into_iter().find_map(|m| m.uid),
        Err(error) => {
            tracing::warn!(%error, account = %name, "could not list the players' ServiceAccount");
            None
        }
    }
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
