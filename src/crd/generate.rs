//! The generated CRD YAML: what `logplayer crd` prints and `crd --write` commits under
//! `crds/` and the chart.

use super::{CrdError, GENERATED_HEADER, LogPlayer, Shard};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use std::path::{Path, PathBuf};

/// The CRDs, in a stable order: LogPlayer, then Shard, with the quantity checks the
/// generated schema lacks (see `check_resource_quantities`).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![LogPlayer::crd(), Shard::crd()]
        .into_iter()
        .map(check_resource_quantities)
        .collect()
}

/// Adds [`super::RESOURCE_QUANTITY_PATTERN`] to every `resources.limits` and
/// `resources.requests` value in `crd`'s schema. The schema of Kubernetes'
/// `ResourceRequirements` types quantities as int-or-string without a format, so
/// `cpu: lots` would pass the CRD and then make the API server refuse every apply of the
/// pods; a pattern on strings (integers still pass) refuses it at `kubectl apply`.
fn check_resource_quantities(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        let Some(obj) = v.as_object_mut() else {
            if let Some(items) = v.as_array_mut() {
                items.iter_mut().for_each(walk);
            }
            return;
        };
        if let Some(props) = obj
            .get_mut("properties")
            .and_then(|p| p.get_mut("resources"))
            .and_then(|r| r.get_mut("properties"))
        {
            for key in ["limits", "requests"] {
                if let Some(values) = props
                    .get_mut(key)
                    .and_then(|l| l.get_mut("additionalProperties"))
                    .and_then(|a| a.as_object_mut())
                {
                    values.insert("pattern".into(), super::RESOURCE_QUANTITY_PATTERN.into());
                }
            }
        }
        obj.values_mut().for_each(walk);
    }
    let mut json = match serde_json::to_value(&crd) {
        Ok(j) => j,
        Err(_) => return crd,
    };
    walk(&mut json);
    serde_json::from_value(json).unwrap_or(crd)
}

fn crd_name(crd: &CustomResourceDefinition) -> Result<&str, CrdError> {
    crd.metadata
        .name
        .as_deref()
        .ok_or_else(|| CrdError::UnnamedCrd {
            kind: crd.spec.names.kind.clone(),
        })
}

fn crd_to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    serde_yaml::to_string(crd).map_err(|source| CrdError::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// All CRDs as one multi-document YAML stream (`---` before each), in the order of
/// [`all_crds`], after a "generated" comment.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::from(GENERATED_HEADER);
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&crd_to_yaml(&crd)?);
    }
    Ok(out)
}

/// The file name and contents of each CRD file: `<plural>.<group>.yaml`.
pub fn crd_files() -> Result<Vec<(String, String)>, CrdError> {
    all_crds()
        .iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd_name(crd)?);
            Ok((name, format!("{GENERATED_HEADER}{}", crd_to_yaml(crd)?)))
        })
        .collect()
}

/// Writes one file per CRD into `dir` (created if missing): `logplayers.logplayer.io.yaml`
/// and `shards.logplayer.io.yaml`. Returns the paths written.
pub fn write_crds(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    std::fs::create_dir_all(dir).map_err(|source| CrdError::Io {
        path: dir.to_owned(),
        source,
    })?;
    crd_files()?
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| CrdError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}
