//! The module graph of the library stays layered: every `crate::` path in `src/` (in `use`
//! lines and inline) may only name a module of the same or a lower layer, and the graph of
//! top-level modules has no cycle. The layers are those of `docs/architecture.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top; a module may import from its own layer or one below.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "tensor_file"],
    &[
        "checkpoint",
        "data",
        "device",
        "image",
        "metrics",
        "weights",
    ],
    &[
        "model", "energy", "sgld", "init", "loss", "lsd", "optim", "buffer", "recovery", "schedule",
    ],
    &["cnn_cpu"],
    &["engine"],
    &["config"],
    &["step"],
    &["eval"],
    &["train", "predict", "export"],
    &["bench", "report"],
    &["sweep"],
];

/// Items the crate root re-exports, and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Engine", "engine"),
    ("default_device", "engine"),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source without comments and string literals (so that doc text naming a module does
/// not count as an import, and braces in text do not count as code); newlines are kept, so
/// line numbers stay those of the file.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // Skip to `end` (exclusive of what follows it), keeping the newlines passed over.
    let skip_to = |out: &mut Vec<u8>, from: usize, end: usize| {
        out.extend(b[from..end.min(b.len())].iter().filter(|&&c| c == b'\n'));
        end
    };
    while i < b.len() {
        let raw = b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'));
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = skip_to(&mut out, i, end);
        } else if raw && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let end = src[open + 1..]
                .find(&close)
                .map_or(b.len(), |e| open + 1 + e + close.len());
            i = skip_to(&mut out, i, end);
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = skip_to(&mut out, i, j + 1);
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = src[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1);
            i = skip_to(&mut out, i, end); // an escaped char literal such as '\n'
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '{'
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// `(name, first line, lines)` of every function with a body in `code`.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = code[at..].find("fn ") {
        let start = at + pos;
        at = start + 3;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let name = ident_at(&code[start + 3..]);
        if !boundary || name.is_empty() {
            continue;
        }
        let Some(open) = code[start..].find(['{', ';']).map(|o| start + o) else {
            break;
        };
        if b[open] == b';' {
            continue; // a declaration without a body
        }
        let mut depth = 0usize;
        let mut close = open;
        for (j, &c) in b.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let line = code[..start].matches('\n').count() + 1;
        let lines = code[start..=close].matches('\n').count() + 1;
        out.push((name, line, lines));
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

/// Longest a function may be outside the hand-tuned kernel (`cnn_cpu/`).
const MAX_FUNCTION_LINES: usize = 80;

#[test]
fn no_function_outside_the_kernel_is_longer_than_80_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("../jem-cli/src"), &mut files);
    let mut long = Vec::new();
    for f in files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "cnn_cpu"))
    {
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        for (name, line, lines) in functions(&code) {
            if lines > MAX_FUNCTION_LINES {
                long.push(format!("{}:{line} fn {name}: {lines} lines", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these functions:\n{}",
        long.join("\n")
    );
}

/// The function finder counts lines from `fn` to the closing brace, braces in strings and
/// raw strings aside.
#[test]
fn functions_are_measured_in_lines() {
    let code = code_only(
        "fn a() {\n    let s = \"}\";\n    let r = r#\"{\"#;\n}\nfn b();\npub fn c(x: u8) -> u8 {\n    x\n}\n",
    );
    let found: Vec<(String, usize, usize)> = functions(&code);
    assert_eq!(found, [("a".to_string(), 1, 4), ("c".to_string(), 6, 3)]);
}

#[test]
fn prediction_does_not_reach_the_training_loop_or_step() {
    let graph = module_graph();
    let mut seen = BTreeSet::new();
    let mut todo = vec!["predict".to_string()];
    while let Some(m) = todo.pop() {
        for d in graph.get(&m).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    assert!(seen.contains("eval"), "predict reaches {seen:?}");
    for training in ["train", "step", "bench", "report"] {
        assert!(
            !seen.contains(training),
            "predict reaches `{training}` (through {seen:?}): inference must not pull in training code"
        );
    }
}
