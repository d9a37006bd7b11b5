//! The shape of the source tree, checked: no source file over 1,000 lines, no non-test
//! function over 100 lines, no function with more than 7 parameters, every module opening
//! with a `//!` doc, and the product's folders never importing the tooling that drives
//! them (`src/harness/`). See ARCHITECTURE.md for why each rule exists.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FILE_LINES: usize = 1000;
const MAX_FN_LINES: usize = 100;
const MAX_PARAMS: usize = 7;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// `#[test]`, `#[tokio::test]` or `#[cfg(test)]`.
fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().segments.last().is_some_and(|s| s.ident == "test")
            || match &a.meta {
                syn::Meta::List(l) if a.path().is_ident("cfg") => {
                    l.tokens.to_string().contains("test")
                }
                _ => false,
            }
    })
}

struct Functions<'a> {
    file: &'a Path,
    in_test: bool,
    problems: Vec<String>,
}

impl Functions<'_> {
    fn check(&mut self, name: &syn::Ident, sig: &syn::Signature, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        if !self.in_test && lines > MAX_FN_LINES {
            self.problems.push(format!(
                "{}:{}: fn {name} has {lines} lines (at most {MAX_FN_LINES})",
                self.file.display(),
                span.start().line
            ));
        }
        if sig.inputs.len() > MAX_PARAMS {
            self.problems.push(format!(
                "{}:{}: fn {name} has {} parameters (at most {MAX_PARAMS})",
                self.file.display(),
                span.start().line,
                sig.inputs.len()
            ));
        }
    }

    /// Runs `visit` inside an item with `attrs`: counted as test code from there on if they
    /// make it a test, as before once it returns.
    fn within(&mut self, attrs: &[syn::Attribute], visit: impl FnOnce(&mut Self)) {
        let was = self.in_test;
        self.in_test |= is_test_attr(attrs);
        visit(self);
        self.in_test = was;
    }
}

impl<'ast> Visit<'ast> for Functions<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.within(&m.attrs, |v| syn::visit::visit_item_mod(v, m));
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.within(&f.attrs, |v| {
            v.check(&f.sig.ident, &f.sig, f.span());
            syn::visit::visit_item_fn(v, f);
        });
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.within(&f.attrs, |v| {
            v.check(&f.sig.ident, &f.sig, f.span());
            syn::visit::visit_impl_item_fn(v, f);
        });
    }
}

/// Files that hold only unit tests (a module's sibling `tests.rs`, or a `tests/` folder).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

/// Fails unless `bad` picks out no source file (path, text); it says how to list a file it
/// picks, and those are listed under `heading`.
#[track_caller]
fn assert_no_source(heading: &str, bad: impl Fn(&Path, &str) -> Option<String>) {
    let found: Vec<String> = sources()
        .iter()
        .filter_map(|(p, text)| bad(p, text))
        .collect();
    assert!(found.is_empty(), "{heading}:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    assert_no_source(&format!("files over {MAX_FILE_LINES} lines"), |p, text| {
        let lines = text.lines().count();
        (lines > MAX_FILE_LINES).then(|| format!("{}: {lines} lines", p.display()))
    });
}

#[test]
fn functions_stay_short_and_take_few_parameters() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut v = Functions {
            file: &path,
            in_test: is_test_file(&path),
            problems: Vec::new(),
        };
        v.visit_file(&file);
        problems.extend(v.problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_module_opens_with_a_doc_saying_what_it_owns() {
    assert_no_source("modules without a //! doc", |p, text| {
        (!text.trim_start().starts_with("//!")).then(|| p.display().to_string())
    });
}

#[test]
fn the_product_never_imports_the_harness() {
    assert_no_source("product modules that import src/harness/", |p, text| {
        let name = p.to_string_lossy();
        let product = !name.contains("/src/harness/")
            && !name.ends_with("/src/main.rs")
            && !name.contains("/src/cli/");
        let imports = text.contains("crate::harness") || text.contains("harness::");
        (product && imports).then(|| p.display().to_string())
    });
}

/// What the shared edge must not import (of `logstore`, two bounds are allowed: see
/// ARCHITECTURE.md).
const EDGE_BANS: &[&str] = &["crate::shard", "crate::player", "crate::operator"];

/// The layers ARCHITECTURE.md says a folder of `src/` must not import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "/src/logstore/",
        &[
            "crate::shard",
            "crate::player",
            "crate::operator",
            "crate::lease",
        ],
    ),
    (
        "/src/shard/",
        &[
            "crate::logstore",
            "crate::player",
            "crate::operator",
            "crate::lease",
        ],
    ),
    (
        "/src/lease/",
        &[
            "crate::player",
            "crate::operator",
            "crate::shard",
            "crate::logstore",
        ],
    ),
    (
        "/src/routing/",
        &[
            "crate::player",
            "crate::operator",
            "crate::crd",
            "crate::lease",
        ],
    ),
    (
        "/src/player/",
        &["crate::shard", "crate::logstore", "crate::operator"],
    ),
    ("/src/operator/", &["crate::shard", "crate::logstore"]),
    // The shared edge (`disk.rs` is left out: its test checks the names the servers write).
    ("/src/grpc.rs", EDGE_BANS),
    ("/src/serving.rs", EDGE_BANS),
    ("/src/limits.rs", EDGE_BANS),
    ("/src/client.rs", EDGE_BANS),
    ("/src/blocking.rs", EDGE_BANS),
    ("/src/metrics.rs", EDGE_BANS),
    ("/src/mutations.rs", EDGE_BANS),
    ("/src/tls/", EDGE_BANS),
    (
        "/src/wal/",
        &[
            "crate::shard",
            "crate::logstore",
            "crate::player",
            "crate::operator",
            "crate::proto",
            "crate::grpc",
        ],
    ),
];

#[test]
fn layers_import_only_what_architecture_md_allows() {
    assert_no_source(
        "imports across layers ARCHITECTURE.md forbids",
        |p, text| {
            let name = p.to_string_lossy();
            let (_, banned) = FORBIDDEN.iter().find(|(dir, _)| name.contains(dir))?;
            let found: Vec<&str> = banned
                .iter()
                .copied()
                .filter(|b| text.contains(b))
                .collect();
            (!found.is_empty()).then(|| format!("{}: {}", p.display(), found.join(", ")))
        },
    );
}
