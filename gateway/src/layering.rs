//! Checks, from the source, two invariants ARCHITECTURE.md states: the
//! top-level modules import only downward in [`LAYERS`], and the clouds'
//! header names are spelled only where fngate speaks a cloud's wire.
//! (Test code may reach anywhere: only non-test code is read.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The gateway's top-level modules, bottom first: each may import only
/// the ones before it. The groups are ARCHITECTURE.md's layer diagram.
const LAYERS: &[&[&str]] = &[
    // Leaf types: ids, the runtime threads, metric registration,
    // credentials, where callers stand, limiters, errors, usage records.
    &[
        "ids", "shards", "families", "auth", "ingress", "throttle", "error", "metering",
    ],
    &["config"],
    // Clients and plumbing: bodies, the instance hop, the worker API, cloud
    // clients and signers, the task stores.
    &["body", "upstream", "workers", "backend", "asynchronous"],
    // The doors: decode a request, render an answer.
    &["api"],
    &["metrics"],
    // A registry of functions (configuration, limiters, metric handles).
    &["functions"],
    &["scheduler"],
    // Stage 9: the executors.
    &["execute"],
    &["pipeline"],
    &["dispatch"],
    &["fleet"],
    &["connection"],
    // Configuration reload: swaps what the layers below read.
    &["reload"],
    &["admin"],
    &["run"],
];

/// Literal prefixes of the clouds' header names.
const CLOUD_HEADERS: &[&str] = &[
    "\"x-fc-",
    "\"x-amz-",
    "\"x-acs-",
    "\"x-functions-",
    "\"x-ms-",
];

/// Where a cloud's header names may be spelled: the doors, the clients
/// and requests to cloud backends, and the instance contract (Function
/// Compute's custom-runtime header names, whatever door a call came in by).
const CLOUD_WIRE: &[&str] = &["api/", "backend/", "execute/cloud.rs", "execute/mod.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every non-test source file, with its path relative to `src/`.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    walk(&path, root, out);
                }
            } else if rel.ends_with(".rs") && !rel.ends_with("tests.rs") {
                out.push((rel, without_tests(&std::fs::read_to_string(&path).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &src(), &mut out);
    out
}

/// The text without comments and without an inline `mod tests { .. }`.
fn without_tests(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .map(|l| match l.find("//") {
            // A `//` in a string literal (a URL) ends the line early: the
            // check then sees less, never something that is not there.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`None`: the crate root).
fn module_of(rel: &str) -> Option<&str> {
    let first = rel.split('/').next()?;
    let m = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(m, "lib" | "main" | "layering")).then_some(m)
}

/// The top-level modules `code` names through `crate::`.
fn imports(code: &str, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the names at the group's first level.
            let (mut depth, mut start) = (0, 0);
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..].trim_start()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| modules.contains(m.as_str()));
    out
}

#[test]
fn top_level_modules_import_only_downward() {
    let rank = |m: &str| LAYERS.iter().flat_map(|l| l.iter()).position(|x| *x == m);
    let files = sources();
    let modules: BTreeSet<&str> = files.iter().filter_map(|(r, _)| module_of(r)).collect();
    for m in &modules {
        assert!(
            rank(m).is_some(),
            "module {m} is in no layer: add it to LAYERS"
        );
    }
    let mut upward = Vec::new();
    for (rel, code) in &files {
        let Some(from) = module_of(rel) else { continue };
        for to in imports(code, &modules) {
            if to != from && rank(&to) > rank(from) {
                upward.push(format!("{rel}: {from} imports {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_plain_imports() {
    let modules: BTreeSet<&str> = ["api", "config", "metrics"].into();
    let code = "use crate::{api::Api, config::{A, B}};\nlet x = crate::metrics::f();";
    let want: BTreeSet<String> = ["api", "config", "metrics"].map(String::from).into();
    assert_eq!(imports(code, &modules), want);
    assert_eq!(without_tests("a // crate::api\nb"), "a \nb");
}

#[test]
fn cloud_header_names_are_spelled_only_where_a_cloud_is_spoken() {
    let mut stray = Vec::new();
    for (rel, code) in sources() {
        if rel == "layering.rs" || CLOUD_WIRE.iter().any(|w| rel.starts_with(w)) {
            continue;
        }
        for p in CLOUD_HEADERS {
            if code.to_ascii_lowercase().contains(p) {
                stray.push(format!("{rel}: {p}"));
            }
        }
    }
    assert!(
        stray.is_empty(),
        "cloud header names outside the doors: {stray:?}"
    );
}
