//! The layering invariant as a test: the modules of this crate import each
//! other without a cycle, and only the binary's modules import `cli` or
//! `run` (docs/architecture.md). Read from the source files, so a new
//! import that breaks it fails `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code names through
/// `crate::…` (comments and doc links excluded).
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let p = entry.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let list = files.entry(name).or_default();
        if p.is_dir() {
            let mut stack = vec![p];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let q = e.path();
                    if q.is_dir() {
                        stack.push(q);
                    } else if q.extension().is_some_and(|x| x == "rs") {
                        list.push(q);
                    }
                }
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            list.push(p);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (m, paths) in &files {
        let mut used = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for name in crate_paths(code) {
                    if name != *m && modules.contains(&name) {
                        used.insert(name);
                    }
                }
            }
        }
        graph.insert(m.clone(), used);
    }
    graph
}

/// First segments after `crate::` in one line, `crate::{a, b::c}` included.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.push(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

/// A cycle through `from`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(graph.len() > 15, "{graph:?}");
    assert!(graph["service"].contains("ptt"), "the parser sees imports");
    let cycles: Vec<Vec<String>> = graph.keys().filter_map(|m| cycle(&graph, m)).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
    for (m, used) in &graph {
        if m != "cli" {
            assert!(!used.contains("cli"), "{m} imports the command line");
        }
        if m != "cli" && m != "run" {
            assert!(!used.contains("run"), "{m} imports the binary's run");
        }
    }
}

#[test]
fn crate_paths_reads_groups_and_nesting() {
    assert_eq!(
        crate_paths("use crate::{a::{x, y}, b, c::d};  crate::e::f()"),
        ["a", "b", "c", "e"]
    );
}
