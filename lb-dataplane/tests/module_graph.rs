//! The library crates' top-level modules depend on each other without a
//! cycle, so each can be read, tested and replaced knowing only the
//! modules below it (ARCHITECTURE.md). A new `crate::x` that closes a loop
//! fails here, with the loop.
//!
//! An edge is a `crate::x` path (in `use` or in code) in a module's
//! non-test source. Comments and test code (`tests.rs`, `*_tests.rs`,
//! files under a `tests/` directory, a trailing `#[cfg(test)] mod tests`)
//! do not count: a test may reach across.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The crate's top-level modules (files and directories under `src/`,
/// without `lib.rs`, `main.rs` and `bin/`) and their source files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).expect("src/ lists") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            if name != "bin" {
                let mut files = Vec::new();
                rust_files(&path, &mut files);
                out.insert(name, files);
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                out.insert(stem.to_owned(), vec![path]);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("directory lists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().expect("name").to_string_lossy();
            if !name.ends_with("tests.rs") {
                out.push(path);
            }
        }
    }
}

/// A file's code without comments and without its trailing test module.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level module names that `crate::` paths in `code` start with,
/// including each name in a `crate::{a, b::{..}}` group.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before_ok = rest[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut expect_name = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && is_ident(c) => name.push(c),
                    _ => {}
                }
                if expect_name && !name.is_empty() && !is_ident(c) {
                    refs.insert(std::mem::take(&mut name));
                    expect_name = c == ',';
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            refs.insert(name);
        }
    }
    refs
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut g = Graph::new();
    for (name, files) in &mods {
        let edges = g.entry(name.clone()).or_default();
        for file in files {
            let text = fs::read_to_string(file).expect("source reads");
            for r in crate_refs(&code(&text)) {
                if &r != name && mods.contains_key(&r) {
                    edges.insert(r);
                }
            }
        }
    }
    g
}

/// A cycle in `g`, as the modules along it, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        path.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|p| p == m).expect("on the path");
                    let mut found = path[from..].to_vec();
                    found.push(m.clone());
                    return Some(found);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(g, n, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn assert_acyclic(krate: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let g = graph(&src);
    assert!(
        g.len() > 3,
        "{krate}: modules found under {}",
        src.display()
    );
    if let Some(c) = cycle(&g) {
        panic!(
            "{krate}: module cycle {}\nthe graph: {g:#?}",
            c.join(" -> ")
        );
    }
}

#[test]
fn lb_dataplane_modules_have_no_cycle() {
    assert_acyclic("lb-dataplane");
}

#[test]
fn lb_core_modules_have_no_cycle() {
    assert_acyclic("lb-core");
}

#[test]
fn lb_config_modules_have_no_cycle() {
    assert_acyclic("lb-config");
}

#[test]
fn the_check_sees_cycles_and_groups() {
    let refs = crate_refs(&code(
        "use crate::{a::{X, Y}, b, c::Z};\nlet v = crate::d::f(); // crate::e\nlb_crate::g",
    ));
    let names: Vec<_> = refs.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).expect("a cycle").join(" -> "), "a -> b -> c -> a");
}
