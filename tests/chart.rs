//! The Helm chart (`charts/logplayer-operator`) against `deploy/` and `crds/`.
//!
//! Always: the chart's copies of the CRDs (`files/crds/`) are byte-identical to `crds/`, and
//! the kustomizations list every manifest.
//!
//! With helm: `helm lint --strict` is clean; `helm template` with the release name and
//! namespace deploy/ uses renders the same objects as `kubectl apply -k deploy/` (same kinds and
//! names; equal ClusterRole rules, operator container, pod security context, replicas, Service,
//! PodDisruptionBudget; CRDs equal to crds/ but for the keep annotation); `crds.install=false`
//! renders no CRD; the values schema rejects wrong types and unknown keys.
//!
//! helm is `$LOGPLAYER_HELM`, else the binary `scripts/install-helm.sh` builds (in
//! `~/.cache/logplayer/bin`). Without it the helm tests print that they are skipped and pass,
//! unless `LOGPLAYER_REQUIRE_HELM=1` (as in CI), which makes them fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

const CHART: &str = "charts/logplayer-operator";
const CHART_CRDS: &str = "charts/logplayer-operator/files/crds";
/// Release name and namespace that give the names deploy/ uses.
const RELEASE: &str = "logplayer-operator";
const NAMESPACE: &str = "logplayer-system";
const KEEP_ANNOTATION: &str = "helm.sh/resource-policy";
const REGENERATE: &str = "regenerate with `cargo run -- crd --write crds \
     --write charts/logplayer-operator/files/crds`";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let path = root().join(rel.as_ref());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Prints past the test harness's output capture, so a skip is visible in `cargo test`.
fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The `.yaml` files of a directory (relative to the repository), sorted, without the
/// kustomization.
fn yaml_files(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// YAML objects and their comparison
// ---------------------------------------------------------------------------------------

/// Every non-empty document of a multi-document YAML stream.
fn parse_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("parsing {what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// `Kind name` or `Kind namespace/name`, to name an object in messages.
fn object_id(v: &Value) -> String {
    let kind = str_at(v, &["kind"]).unwrap_or("?");
    let name = str_at(v, &["metadata", "name"]).unwrap_or("?");
    match str_at(v, &["metadata", "namespace"]) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn by_id(objects: Vec<Value>, what: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let id = object_id(&o);
        assert!(
            map.insert(id.clone(), o).is_none(),
            "{what}: {id} appears twice"
        );
    }
    map
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// Every path under which `a` and `b` differ, with both sides. Numbers compare by value
/// (`1.0` equals `1`: Helm's `fromYaml`/`toYaml` turn the CRDs' float bounds into integers).
fn diff(
    path: &str,
    a: Option<&Value>,
    b: Option<&Value>,
    names: (&str, &str),
    out: &mut Vec<String>,
) {
    let (an, bn) = names;
    match (a, b) {
        (None, None) => {}
        (Some(a), None) => out.push(format!("{path}: only in {an}: {}", show(a))),
        (None, Some(b)) => out.push(format!("{path}: only in {bn}: {}", show(b))),
        (Some(Value::Mapping(a)), Some(Value::Mapping(b))) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for k in keys {
                let label = k.as_str().map(str::to_owned).unwrap_or_else(|| show(k));
                let sub = if path.is_empty() {
                    label
                } else {
                    format!("{path}.{label}")
                };
                diff(&sub, a.get(k), b.get(k), names, out);
            }
        }
        (Some(Value::Sequence(a)), Some(Value::Sequence(b))) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path}: {} items in {an}, {} in {bn}:\n      {an}: {}\n      {bn}: {}",
                    a.len(),
                    b.len(),
                    show(&Value::Sequence(a.clone())),
                    show(&Value::Sequence(b.clone()))
                ));
            } else {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    diff(&format!("{path}[{i}]"), Some(x), Some(y), names, out);
                }
            }
        }
        (Some(Value::Number(x)), Some(Value::Number(y))) if x.as_f64() == y.as_f64() => {}
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => out.push(format!(
            "{path}: {an} has {}, {bn} has {}",
            show(a),
            show(b)
        )),
    }
}

/// Asserts that `field` (a dotted path; empty for the whole value) of `object` is the same in
/// both, listing every difference under it.
fn assert_same(object: &str, field: &str, a: (&str, Option<&Value>), b: (&str, Option<&Value>)) {
    let mut out = Vec::new();
    diff(field, a.1, b.1, (a.0, b.0), &mut out);
    assert!(
        out.is_empty(),
        "{object}: {} differs between {} and {}:\n  {}",
        if field.is_empty() {
            "the object"
        } else {
            field
        },
        a.0,
        b.0,
        out.join("\n  ")
    );
}

/// The value at a dotted path (`spec.template.spec`), `None` if absent.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(v, |v, k| v.get(k))
}

// ---------------------------------------------------------------------------------------
// deploy/ and crds/
// ---------------------------------------------------------------------------------------

/// The `resources` of a kustomization.yaml in `dir` (relative to the repository), as paths
/// relative to the repository.
fn kustomization_resources(dir: &Path) -> Vec<PathBuf> {
    let text = read(dir.join("kustomization.yaml"));
    let k: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}/kustomization.yaml: {e}", dir.display()));
    at(&k, "resources")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{}/kustomization.yaml has no resources list", dir.display()))
        .iter()
        .map(|r| {
            let r = r.as_str().expect("a resource is a string");
            normalize(&dir.join(r))
        })
        .collect()
}

/// Resolves `..` and `.` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What `kubectl apply -k deploy/` applies: every object of the files the kustomization (and
/// the kustomizations of the directories it lists) names, by id.
fn deploy_objects() -> BTreeMap<String, (Value, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from("deploy")];
    while let Some(dir) = dirs.pop() {
        for r in kustomization_resources(&dir) {
            if root().join(&r).is_dir() {
                dirs.push(r);
            } else {
                files.push(r);
            }
        }
    }
    let mut objects = BTreeMap::new();
    for f in files {
        let name = f.display().to_string();
        for o in parse_documents(&read(&f), &name) {
            let id = object_id(&o);
            assert!(
                objects.insert(id.clone(), (o, name.clone())).is_none(),
                "deploy/: {id} appears twice"
            );
        }
    }
    objects
}

#[test]
fn chart_crds_are_byte_identical_to_crds() {
    let generated = yaml_files("crds");
    let copies = yaml_files(CHART_CRDS);
    assert!(!generated.is_empty(), "crds/ has no CRD");
    assert_eq!(
        copies, generated,
        "{CHART_CRDS}/ must hold exactly the files of crds/; {REGENERATE}"
    );
    for name in &generated {
        let a = std::fs::read(root().join("crds").join(name)).unwrap();
        let b = std::fs::read(root().join(CHART_CRDS).join(name)).unwrap();
        assert!(
            a == b,
            "{CHART_CRDS}/{name} differs from crds/{name} (the chart and `kubectl apply -k deploy/` \
             would install a stale CRD); {REGENERATE}"
        );
    }
}

#[test]
fn kustomizations_list_every_manifest() {
    // files/crds: every CRD file, nothing else.
    let listed: Vec<String> = kustomization_resources(Path::new(CHART_CRDS))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        yaml_files(CHART_CRDS),
        "{CHART_CRDS}/kustomization.yaml must list exactly the CRD files beside it"
    );
    // deploy/: every manifest of deploy/ itself (example/ is applied separately), and the CRDs.
    let resources = kustomization_resources(Path::new("deploy"));
    for f in yaml_files("deploy") {
        let p = PathBuf::from("deploy").join(&f);
        assert!(
            resources.contains(&p),
            "deploy/kustomization.yaml does not list {f}, so `kubectl apply -k deploy/` skips it"
        );
    }
    assert!(
        resources.contains(&PathBuf::from(CHART_CRDS)),
        "deploy/kustomization.yaml does not list ../{CHART_CRDS}, so the CRDs are not installed"
    );
    for r in &resources {
        assert!(
            root().join(r).exists(),
            "deploy/kustomization.yaml lists {} which does not exist",
            r.display()
        );
    }
    // Every CRD of crds/ arrives through deploy/.
    let objects = deploy_objects();
    for f in yaml_files("crds") {
        let crd: Value = serde_yaml::from_str(&read(Path::new("crds").join(&f))).unwrap();
        let id = object_id(&crd);
        assert!(
            objects.contains_key(&id),
            "`kubectl apply -k deploy/` does not install {id} (crds/{f})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// helm
// ---------------------------------------------------------------------------------------

struct Helm(PathBuf);

/// helm, or `None` after printing why the test is skipped (a panic when
/// `LOGPLAYER_REQUIRE_HELM=1`).
fn helm(test: &str) -> Option<Helm> {
    if let Some(p) = std::env::var_os("LOGPLAYER_HELM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LOGPLAYER_HELM={} does not exist", p.display());
        return Some(Helm(p));
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates = [
        env("LOGPLAYER_BIN_DIR"),
        env("XDG_CACHE_HOME").map(|c| c.join("logplayer/bin")),
        env("HOME").map(|h| h.join(".cache/logplayer/bin")),
    ];
    if let Some(p) = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
    {
        return Some(Helm(p));
    }
    let why = "helm not found (neither $LOGPLAYER_HELM nor ~/.cache/logplayer/bin/helm); \
               run scripts/install-helm.sh";
    if std::env::var("LOGPLAYER_REQUIRE_HELM").as_deref() == Ok("1") {
        panic!("{test}: {why} (LOGPLAYER_REQUIRE_HELM=1 makes this a failure)");
    }
    notice(&format!("chart::{test}: skipped: {why}"));
    None
}

impl Helm {
    /// Runs helm in the repository; Ok(stdout) on success, Err(stderr and stdout) otherwise.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.0)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.0.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{}\n{stderr}{stdout}", out.status))
        }
    }

    /// `helm template logplayer-operator CHART --namespace logplayer-system` with `--set`s,
    /// for an API server that has ValidatingAdmissionPolicy (Kubernetes 1.30 or later).
    fn template(&self, sets: &[&str]) -> Result<String, String> {
        let mut args = vec![
            "template",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--api-versions",
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        self.run(&args)
    }

    fn render(&self, sets: &[&str]) -> BTreeMap<String, Value> {
        let text = self
            .template(sets)
            .unwrap_or_else(|e| panic!("helm template {CHART} {sets:?} failed: {e}"));
        by_id(
            parse_documents(&text, "helm template output"),
            "helm template output",
        )
    }
}

fn of_kind<'a>(objects: &'a BTreeMap<String, Value>, kind: &str) -> Vec<&'a Value> {
    objects
        .values()
        .filter(|o| str_at(o, &["kind"]) == Some(kind))
        .collect()
}

/// The strings of the sequence `v`.
fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The ids (see `object_id`) of the objects of `kind`.
fn ids_of_kind(objects: &BTreeMap<String, Value>, kind: &str) -> Vec<String> {
    of_kind(objects, kind)
        .iter()
        .map(|o| object_id(o))
        .collect()
}

#[test]
fn helm_lint_strict_is_clean() {
    let Some(helm) = helm("helm_lint_strict_is_clean") else {
        return;
    };
    let out = helm
        .run(&["lint", "--strict", CHART])
        .unwrap_or_else(|e| panic!("helm lint --strict {CHART} failed:\n{e}"));
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint --strict {CHART} reports problems:\n{out}"
    );
    // And with every optional part switched off or on.
    for sets in [
        "crds.install=false,rbac.create=false,serviceAccount.create=false,serviceAccount.name=existing,replicaCount=1",
        "crds.keep=false,image.tag=1.2.3,defaultPlayerImage=example.org/player:1,metrics.port=9090",
    ] {
        helm.run(&["lint", "--strict", CHART, "--set", sets])
            .unwrap_or_else(|e| panic!("helm lint --strict {CHART} --set {sets} failed:\n{e}"));
    }
}

#[test]
fn helm_template_matches_deploy() {
    let Some(helm) = helm("helm_template_matches_deploy") else {
        return;
    };
    let chart = helm.render(&[]);
    let deploy = deploy_objects();
    let c = "chart";

    // The same objects, but for the Namespace (Helm installs into an existing one).
    let chart_ids: BTreeSet<&String> = chart.keys().collect();
    let deploy_ids: BTreeSet<&String> = deploy
        .iter()
        .filter(|(_, (o, _))| str_at(o, &["kind"]) != Some("Namespace"))
        .map(|(id, _)| id)
        .collect();
    let only_chart: Vec<&&String> = chart_ids.difference(&deploy_ids).collect();
    let only_deploy: Vec<&&String> = deploy_ids.difference(&chart_ids).collect();
    assert!(
        only_chart.is_empty() && only_deploy.is_empty(),
        "the chart (release {RELEASE} in {NAMESPACE}) and `kubectl apply -k deploy/` create \
         different objects:\n  only in the chart: {only_chart:?}\n  only in deploy/: {only_deploy:?}"
    );

    for (id, rendered) in &chart {
        let (expected, file) = &deploy[id];
        let d = file.as_str();
        let kind = str_at(rendered, &["kind"]).unwrap();
        match kind {
            "ClusterRole" | "Role" => {
                assert_same(
                    id,
                    "rules",
                    (c, at(rendered, "rules")),
                    (d, at(expected, "rules")),
                );
            }
            "ClusterRoleBinding" | "RoleBinding" | "ValidatingAdmissionPolicyBinding" => {
                for f in ["roleRef", "subjects", "spec"] {
                    assert_same(id, f, (c, at(rendered, f)), (d, at(expected, f)));
                }
            }
            "ValidatingAdmissionPolicy" => {
                assert_same(
                    id,
                    "spec",
                    (c, at(rendered, "spec")),
                    (d, at(expected, "spec")),
                );
            }
            "Lease" => {}          // name and namespace are in the id; no spec
            "ServiceAccount" => {} // name and namespace are in the id
            "Deployment" => {
                for f in [
                    "spec.replicas",
                    "spec.selector",
                    "spec.template.metadata.labels",
                    "spec.template.spec.serviceAccountName",
                    "spec.template.spec.securityContext",
                ] {
                    assert_same(id, f, (c, at(rendered, f)), (d, at(expected, f)));
                }
                let containers = |o: &Value| -> Vec<Value> {
                    at(o, "spec.template.spec.containers")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default()
                };
                let (rc, dc) = (containers(rendered), containers(expected));
                let names = |cs: &[Value]| -> Vec<String> {
                    cs.iter()
                        .map(|c| str_at(c, &["name"]).unwrap_or("?").to_owned())
                        .collect()
                };
                assert_eq!(
                    names(&rc),
                    names(&dc),
                    "{id}: the containers differ (left: chart, right: {d})"
                );
                for (x, y) in rc.iter().zip(&dc) {
                    let name = str_at(x, &["name"]).unwrap_or("?");
                    // Field by field (args, env, ports, probes, securityContext, resources, ...).
                    let keys: BTreeSet<String> = [x, y]
                        .iter()
                        .filter_map(|v| v.as_mapping())
                        .flat_map(|m| m.keys().filter_map(Value::as_str).map(str::to_owned))
                        .collect();
                    for k in keys {
                        assert_same(
                            id,
                            &format!("spec.template.spec.containers[{name}].{k}"),
                            (c, x.get(k.as_str())),
                            (d, y.get(k.as_str())),
                        );
                    }
                }
            }
            "Service" | "PodDisruptionBudget" => {
                assert_same(
                    id,
                    "spec",
                    (c, at(rendered, "spec")),
                    (d, at(expected, "spec")),
                );
            }
            "CustomResourceDefinition" => {} // below, against crds/
            other => panic!(
                "{id}: the chart renders a {other}, which this test does not compare with deploy/"
            ),
        }
        // deploy/'s labels are a subset of the chart's (which adds helm.sh/chart, managed-by, ...).
        if kind != "CustomResourceDefinition"
            && let Some(Value::Mapping(labels)) = at(expected, "metadata.labels")
        {
            for (k, v) in labels {
                let key = k.as_str().unwrap_or("?");
                assert_same(
                    id,
                    &format!("metadata.labels.{key}"),
                    (c, at(rendered, "metadata.labels").and_then(|l| l.get(k))),
                    (d, Some(v)),
                );
            }
        }
    }

    // The CRDs: those of crds/, plus the keep annotation (on by default).
    let crds = of_kind(&chart, "CustomResourceDefinition");
    assert_eq!(
        crds.len(),
        yaml_files("crds").len(),
        "the chart renders {} CRDs, crds/ has {}",
        crds.len(),
        yaml_files("crds").len()
    );
    for f in yaml_files("crds") {
        let source = format!("crds/{f}");
        let want: Value = serde_yaml::from_str(&read(&source)).unwrap();
        let id = object_id(&want);
        let mut got = chart
            .get(&id)
            .unwrap_or_else(|| panic!("the chart does not render {id} ({source})"))
            .clone();
        let annotations = got["metadata"]
            .get_mut("annotations")
            .and_then(Value::as_mapping_mut)
            .unwrap_or_else(|| {
                panic!(
                    "{id}: the chart renders no metadata.annotations (want {KEEP_ANNOTATION}: keep)"
                )
            });
        assert_eq!(
            annotations
                .remove(KEEP_ANNOTATION)
                .as_ref()
                .and_then(Value::as_str),
            Some("keep"),
            "{id}: metadata.annotations.{KEEP_ANNOTATION} must be \"keep\" with the default values (crds.keep=true)"
        );
        if annotations.is_empty() {
            got["metadata"]
                .as_mapping_mut()
                .unwrap()
                .remove("annotations");
        }
        assert_same(&id, "", (c, Some(&got)), (source.as_str(), Some(&want)));
    }
}

/// The chart installs on Kubernetes 1.30 or later, whose API servers serve the admission
/// policy and take the CRDs' ratcheting rules (`optionalOldSelf`; on 1.29 the CRDs are
/// refused); an older one is refused by helm, naming the version. The policy is rendered
/// whether or not the chart creates the RBAC (with `rbac.create=false` it was dropped
/// without a word).
#[test]
fn helm_template_renders_the_admission_policy_and_refuses_a_server_older_than_1_30() {
    let Some(helm) = helm("helm_template_renders_the_admission_policy") else {
        return;
    };
    for (kube, set) in [
        (None, None),
        (Some("1.30.0"), None),
        (None, Some("rbac.create=false")),
    ] {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
        args.extend(kube.iter().flat_map(|k| ["--kube-version", k]));
        args.extend(set.iter().flat_map(|s| ["--set", s]));
        let text = helm.run(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let objects = by_id(parse_documents(&text, "helm template"), "helm template");
        assert!(
            !of_kind(&objects, "ValidatingAdmissionPolicy").is_empty(),
            "helm {args:?}: no admission policy rendered"
        );
    }
    let old = [
        "template",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.29.9",
    ];
    match helm.run(&old) {
        Ok(_) => panic!("helm {old:?}: rendered for a server the CRDs need 1.30 for"),
        Err(e) => assert!(e.contains("kubeVersion") || e.contains(">=1.30"), "{e}"),
    }
}

#[test]
fn helm_template_crd_switches() {
    let Some(helm) = helm("helm_template_crd_switches") else {
        return;
    };
    let without = helm.render(&["crds.install=false"]);
    let crds = ids_of_kind(&without, "CustomResourceDefinition");
    assert!(
        crds.is_empty(),
        "with crds.install=false the chart still renders {crds:?}"
    );
    assert!(
        !without.is_empty(),
        "with crds.install=false the chart renders nothing at all"
    );

    let unkept = helm.render(&["crds.keep=false"]);
    let crds = of_kind(&unkept, "CustomResourceDefinition");
    assert_eq!(
        crds.len(),
        yaml_files("crds").len(),
        "with crds.keep=false the chart must still render every CRD"
    );
    for crd in crds {
        assert!(
            at(crd, "metadata.annotations")
                .and_then(|a| a.get(KEEP_ANNOTATION))
                .is_none(),
            "{}: metadata.annotations.{KEEP_ANNOTATION} is set although crds.keep=false",
            object_id(crd)
        );
    }
}

#[test]
fn helm_template_follows_values() {
    let Some(helm) = helm("helm_template_follows_values") else {
        return;
    };
    let objects = helm.render(&[
        "replicaCount=1",
        "image.tag=1.2.3",
        "metrics.port=9090",
        "leaseName=my-lease",
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
    ]);
    let id = format!("Deployment {NAMESPACE}/{RELEASE}");
    let deployment = objects
        .get(&id)
        .unwrap_or_else(|| panic!("no {id} rendered"));
    let container = &at(deployment, "spec.template.spec.containers").unwrap()[0];
    let args = strings(&container["args"]);
    assert_eq!(
        args,
        [
            "operator",
            "--metrics-listen",
            "0.0.0.0:9090",
            "--lease-name",
            "my-lease",
            "--default-image",
            "ghcr.io/logplayer/logplayer:1.2.3",
            "--player-cluster-role",
            "logplayer-operator-player"
        ],
        "{id}: container operator args do not follow image.tag, metrics.port and leaseName"
    );
    assert_eq!(
        container["image"].as_str(),
        Some("ghcr.io/logplayer/logplayer:1.2.3"),
        "{id}: container operator image"
    );
    assert_eq!(
        at(deployment, "spec.replicas").and_then(Value::as_u64),
        Some(1),
        "{id}: spec.replicas"
    );
    assert_eq!(
        at(deployment, "spec.template.spec.serviceAccountName").and_then(Value::as_str),
        Some("existing"),
        "{id}: spec.template.spec.serviceAccountName"
    );
    let service = &objects[&format!("Service {NAMESPACE}/{RELEASE}-metrics")];
    assert_eq!(
        at(service, "spec.ports").unwrap()[0]["port"].as_u64(),
        Some(9090),
        "Service {NAMESPACE}/{RELEASE}-metrics: spec.ports[0].port does not follow metrics.port"
    );
    for kind in [
        "PodDisruptionBudget",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    ] {
        let found = ids_of_kind(&objects, kind);
        assert!(
            found.is_empty(),
            "with replicaCount=1, rbac.create=false and serviceAccount.create=false the chart renders {found:?}"
        );
    }

    let image = helm.render(&["defaultPlayerImage=example.org/player:7"]);
    let deployment = &image[&id];
    let args = strings(&at(deployment, "spec.template.spec.containers").unwrap()[0]["args"]);
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    assert_eq!(
        after("--default-image"),
        Some("example.org/player:7"),
        "{id}: --default-image does not follow defaultPlayerImage"
    );

    let tuned = helm.render(&[
        "clusterDomain=cluster.local",
        "leaderElection.leaseDuration=30s",
        "leaderElection.renewDeadline=20s",
        "leaderElection.retryPeriod=3s",
    ]);
    let args = strings(&at(&tuned[&id], "spec.template.spec.containers").unwrap()[0]["args"]);
    assert_eq!(
        args[args.len() - 8..],
        [
            "--cluster-domain",
            "cluster.local",
            "--lease-duration",
            "30s",
            "--renew-deadline",
            "20s",
            "--retry-period",
            "3s"
        ],
        "{id}: args do not follow clusterDomain and leaderElection"
    );
}

#[test]
fn helm_schema_rejects_bad_values() {
    let Some(helm) = helm("helm_schema_rejects_bad_values") else {
        return;
    };
    for (set, why) in [
        ("replicaCount=abc", "replicaCount is not an integer"),
        ("replicaCount=-1", "replicaCount is negative"),
        ("noSuchKey=1", "an unknown top-level key"),
        ("image.noSuchKey=1", "an unknown key under image"),
        (
            "image.pullPolicy=Sometimes",
            "image.pullPolicy is not Always, IfNotPresent or Never",
        ),
        ("crds.install=maybe", "crds.install is not a boolean"),
        ("metrics.port=0", "metrics.port is out of range"),
        ("metrics.port=http", "metrics.port is not an integer"),
        ("leaseName=Not_A_Name", "leaseName is not a DNS subdomain"),
        (
            "leaderElection.leaseDuration=soon",
            "leaderElection.leaseDuration is not a duration",
        ),
        (
            "clusterDomain=Bad_Domain",
            "clusterDomain is not a DNS name",
        ),
        ("replicaCount=100", "replicaCount is above 16"),
        (
            "fullnameOverride=MyOperator",
            "fullnameOverride is not a DNS label",
        ),
        ("nameOverride=a.b", "nameOverride is not a DNS label"),
        (
            "fullnameOverride=abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij",
            "fullnameOverride leaves no room for the chart's suffixes",
        ),
        (
            "image.repository=ghcr.io/x/y@sha256:aa",
            "image.repository carries a digest (image.digest holds it)",
        ),
        (
            "image.repository=x/y@abc",
            "image.repository carries a digest",
        ),
        (
            "image.repository=ghcr.io/x/y:2.0",
            "image.repository carries a tag (image.tag holds it)",
        ),
        ("image.digest=latest", "image.digest is not sha256:<64 hex>"),
        (
            "leaderElection.leaseDuration=3000000h",
            "leaderElection.leaseDuration is over the bound the chart can add up",
        ),
    ] {
        match helm.template(&[set]) {
            Ok(_) => panic!(
                "helm template --set {set} rendered, but the values schema should reject it: {why}"
            ),
            Err(e) => assert!(
                e.contains("schema"),
                "helm template --set {set} failed, but not through the values schema ({why}):\n{e}"
            ),
        }
    }
}

#[test]
fn helm_template_namespaced_mode_has_roles_in_those_namespaces_only() {
    let Some(helm) = helm("helm_template_namespaced_mode_has_roles_in_those_namespaces_only")
    else {
        return;
    };
    let objects = helm.render(&["watchNamespaces={team-a,team-b}"]);
    let roles = ids_of_kind(&objects, "Role");
    assert_eq!(
        roles,
        [
            format!("Role {NAMESPACE}/{RELEASE}-lease"),
            format!("Role team-a/{RELEASE}"),
            format!("Role team-b/{RELEASE}"),
        ]
    );
    // The only ClusterRole left is the players', which the operator may bind but not use.
    assert_eq!(
        ids_of_kind(&objects, "ClusterRole"),
        [format!("ClusterRole {RELEASE}-player")]
    );
    assert!(ids_of_kind(&objects, "ClusterRoleBinding").is_empty());
    let id = format!("Deployment {NAMESPACE}/{RELEASE}");
    let args = strings(&at(&objects[&id], "spec.template.spec.containers").unwrap()[0]["args"]);
    let i = args.iter().position(|a| *a == "--watch-namespace");
    assert_eq!(
        i.and_then(|i| args.get(i + 1)).copied(),
        Some("team-a,team-b")
    );
}

#[test]
fn the_players_cluster_role_has_exactly_the_rules_the_operator_assumes() {
    let Some(helm) = helm("the_players_cluster_role_has_exactly_the_rules_the_operator_assumes")
    else {
        return;
    };
    let objects = helm.render(&[]);
    let role = &objects[&format!("ClusterRole {RELEASE}-player")];
    let rendered: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
        serde_yaml::from_value(at(role, "rules").unwrap().clone()).unwrap();
    assert_eq!(rendered, logplayer::operator::desired::player_rules());
    assert_eq!(
        format!("{RELEASE}-player"),
        logplayer::operator::desired::PLAYER_CLUSTER_ROLE
    );
}

#[test]
fn helm_and_the_operator_agree_on_leader_election_timing() {
    let Some(helm) = helm("helm_and_the_operator_agree_on_leader_election_timing") else {
        return;
    };
    let cases = [
        ("", "", ""),
        ("5s", "", ""),
        ("30s", "20s", "3s"),
        ("10s", "10s", "2s"),
        ("1m", "59s", "58s"),
        ("1m30s", "1m", "1500ms"),
        ("15s", "10s", "10s"),
        ("15s", "2s", "3s"),
        ("2s", "1500ms", "250ms"),
        ("2s", "1500ms", "9ms"),
        ("2s", "1500ms", "10ms"),
    ];
    for (lease, renew, retry) in cases {
        let or =
            |v: &str, d: &str| humantime::parse_duration(if v.is_empty() { d } else { v }).unwrap();
        let config = logplayer::lease::LeaseConfig {
            lease_duration: or(lease, "15s"),
            renew_deadline: or(renew, "10s"),
            retry_period: or(retry, "2s"),
        };
        let sets = [
            format!("leaderElection.leaseDuration={lease}"),
            format!("leaderElection.renewDeadline={renew}"),
            format!("leaderElection.retryPeriod={retry}"),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let chart = helm.template(&sets);
        match config.validate() {
            Ok(()) => assert!(
                chart.is_ok(),
                "{lease}/{renew}/{retry}: the chart refuses what the operator accepts: {chart:?}"
            ),
            Err(e) => {
                let err = chart.expect_err(&format!(
                    "{lease}/{renew}/{retry}: the chart accepts what the operator refuses ({e})"
                ));
                // The same words as the operator's own refusal.
                let words = e.to_string();
                let reason = [
                    "retry_period must be at least 10ms",
                    "retry_period must be shorter than renew_deadline",
                    "renew_deadline must be shorter than lease_duration",
                ]
                .into_iter()
                .find(|r| words.contains(r))
                .unwrap_or_else(|| panic!("unexpected refusal: {words}"));
                assert!(err.contains(reason), "{lease}/{renew}/{retry}: {err}");
            }
        }
    }
    // The operator's --lease-duration is at most 1h; the chart refuses a longer one with the
    // same words (it used to install an operator that could not start).
    for lease in ["1h", "61m", "2h", "999999h", "0s"] {
        let chart = helm.template(&[&format!("leaderElection.leaseDuration={lease}")]);
        match logplayer::lease::parse_lease_duration(lease) {
            Ok(_) => assert!(chart.is_ok(), "{lease}: the chart refuses it: {chart:?}"),
            Err(e) => {
                let err = chart.expect_err(&format!("{lease}: the chart accepts it ({e})"));
                assert!(
                    err.contains("must be above 0 and at most 1h"),
                    "{lease}: {err}"
                );
            }
        }
    }
}

/// Values the schema cannot judge alone: labels the chart sets itself, an image pinned by
/// digest, and a release name long enough that the names made from it would collide or
/// pass 63 characters.
#[test]
fn helm_refuses_what_would_break_the_install_and_keeps_names_apart() {
    let Some(helm) = helm("helm_refuses_what_would_break_the_install_and_keeps_names_apart") else {
        return;
    };
    let err = helm
        .template(&["podLabels.app\\.kubernetes\\.io/name=x"])
        .expect_err("a pod label replacing the selector's is refused");
    assert!(err.contains("podLabels: app.kubernetes.io/name"), "{err}");
    let digest = format!("sha256:{}", "a".repeat(64));
    let objects = helm.render(&[
        "image.repository=registry.local:5000/team/logplayer",
        &format!("image.digest={digest}"),
    ]);
    let deployment = of_kind(&objects, "Deployment")[0];
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        image,
        format!("registry.local:5000/team/logplayer@{digest}")
    );
    // A release name of 53 characters (Helm's longest).
    let release = "r".repeat(53);
    let text = helm
        .run(&["template", &release, CHART, "--namespace", NAMESPACE])
        .unwrap_or_else(|e| panic!("{e}"));
    let objects = parse_documents(&text, "helm template output");
    let mut seen = std::collections::BTreeSet::new();
    for o in &objects {
        let (kind, name) = (
            str_at(o, &["kind"]).unwrap_or_default(),
            str_at(o, &["metadata", "name"]).unwrap_or_default(),
        );
        assert!(name.len() <= 63, "{kind} {name} is longer than 63");
        assert!(seen.insert((kind, name)), "two {kind}s are named {name}");
    }
}
