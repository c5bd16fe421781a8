//! The module graph of the library stays layered: every `crate::` path in `src/` (in `use`
//! lines and inline) may only name a module of the same or a lower layer, and the graph of
//! top-level modules has no cycle. The layers are those of `docs/architecture.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top; a module may import from its own layer or one below.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "tensor_file"],
    &["checkpoint", "data", "image", "metrics"],
    &[
        "model", "energy", "sgld", "init", "loss", "lsd", "optim", "buffer", "recovery", "schedule",
    ],
    &["cnn_cpu"],
    &["engine"],
    &["config"],
    &["step"],
    &["eval"],
    &["train"],
    &["bench", "report"],
];

/// Items the crate root re-exports, and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Engine", "engine"),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source without comments and string literals (so that doc text naming a module does
/// not count as an import).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '{'
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first segment after `crate::` of every path in `code`, including each item of a
/// `use crate::{a, b::c}` group.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push(ident_at(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident_at(after));
        }
        rest = after;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module of each file under `src/` and the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.iter().next().unwrap().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        for r in crate_refs(&code) {
            let target = ROOT_REEXPORTS
                .iter()
                .find(|(item, _)| *item == r)
                .map_or(r.clone(), |(_, m)| m.to_string());
            if target != module {
                deps.insert(target);
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_go_down() {
    let graph = module_graph();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(own) = layer(module) else {
            wrong.push(format!(
                "{module} is in no layer (add it to LAYERS and docs/architecture.md)"
            ));
            continue;
        };
        for d in deps {
            match layer(d) {
                None => wrong.push(format!(
                    "{module} imports `crate::{d}`, which is no module of a layer"
                )),
                Some(l) if l > own => wrong.push(format!(
                    "{module} (layer {own}) imports {d} (layer {l}): imports only go down"
                )),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    // Depth-first search with colours: a grey node reached again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<String> {
        match colour.get(n) {
            Some(1) => {
                let from = path.iter().position(|p| *p == n).unwrap();
                return Some(format!("{} -> {n}", path[from..].join(" -> ")));
            }
            Some(2) => return None,
            _ => {}
        }
        colour.insert(n, 1);
        path.push(n);
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, colour, path) {
                return Some(c);
            }
        }
        path.pop();
        colour.insert(n, 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut colour, &mut Vec::new()) {
            panic!("import cycle: {cycle}");
        }
    }
}

/// The checker itself: it sees grouped and inline paths and ignores comments and strings.
#[test]
fn crate_references_are_found_in_code_only() {
    let code = code_only(
        "use crate::{a::B, c};\n// crate::d\nlet s = \"crate::e\";\nlet x = crate::f::g();\nuse crate::h::{i, j};",
    );
    assert_eq!(crate_refs(&code), ["a", "c", "f", "h"]);
}
