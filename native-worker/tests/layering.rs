//! The module graph points one way (ARCHITECTURE.md, "Module order"): each top-level module of
//! the native worker imports only modules listed before it in [`ORDER`], so no two modules
//! import each other. Reads the source tree; comments (intra-doc links) don't count.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module, each after everything it may import.
const ORDER: &[&str] = &[
    "clock",
    "lockfile",
    "latency",
    "telemetry",
    "extract",
    "embed",
    "firehose",
    "corpus",
    "store",
    "ingest",
    "embedder",
    "turso",
    "flow",
    "backfill",
    "publish",
    "serve",
    "admin",
    "run",
    "cli",
];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in `src/` (a `name.rs` or a `name/` directory), crate roots aside.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(source_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_owned();
            (path.is_dir() || path.extension().is_some_and(|ext| ext == "rs")).then_some(name)
        })
        .filter(|name| name != "lib" && name != "main")
        .collect()
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules `source` names through `crate::…` paths, outside comments
/// (`crate::a::b`, `crate::{a, b::c}`).
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    names.extend(leading_identifier(item.trim()));
                }
            } else {
                names.extend(leading_identifier(rest));
            }
        }
    }
    names
}

fn leading_identifier(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

#[test]
fn every_module_imports_only_modules_before_it() {
    let found = modules();
    let listed: BTreeSet<String> = ORDER.iter().map(|name| name.to_string()).collect();
    assert_eq!(
        found, listed,
        "every top-level module has a place in ORDER (and ARCHITECTURE.md's module order)"
    );
    let mut violations = Vec::new();
    for (index, module) in ORDER.iter().enumerate() {
        let root = source_dir().join(module);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        rust_files(&root.with_extension("rs"), &mut files);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            for name in crate_references(&source) {
                let Some(target) = ORDER.iter().position(|listed| *listed == name) else {
                    continue;
                };
                if target > index {
                    violations.push(format!(
                        "{} imports crate::{name}, which comes after {module}",
                        file.strip_prefix(source_dir()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn references_are_found_in_paths_and_groups_but_not_in_comments() {
    let source = "use crate::store::{Batch, Mark};\nuse crate::{clock, ingest::Sink};\n\
                  let x = crate::publish::build(); // crate::admin\n/// [`crate::run`]\n";
    let found: Vec<String> = crate_references(source).into_iter().collect();
    assert_eq!(found, ["clock", "ingest", "publish", "store"]);
}
