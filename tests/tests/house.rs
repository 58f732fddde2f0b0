//! The house rules of the source tree, checked without Redis or a build of
//! the services:
//! - no `.rs` file under `gateway/src`, `fanout-worker/src` or `shared/src`
//!   is longer than [`MAX_LINES`] lines (split by stage or noun, not by
//!   cutting in the middle);
//! - no crate has an import cycle between its modules.
//!
//! The import graph has one node per module file (`a.rs` or `a/mod.rs` is
//! module `a`, `a/b.rs` is `a::b`) and an edge wherever a file names an item
//! of another module by path: `crate::a::…`, `super::…` or `self::…`, in
//! `use` trees (braces expanded) and in expressions and types. A path goes to
//! the deepest module file it names. Comments and string literals are
//! skipped, inline modules (`mod tests { … }`) resolve `super::` from where
//! they are, and `$crate::` (macros) and `pub(in crate::…)` (visibility) are
//! not imports. Edges between a module and its own ancestor (a child using
//! its parent's items, a parent using its children) are the module tree
//! itself and are left out: a cycle is between modules neither of which
//! contains the other, like `state.rs` ↔ `server.rs`.
//!
//! `HOUSE_ROOT=<checkout>` checks another checkout (e.g. an older commit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 450;

/// The crates' source folders, relative to the workspace root.
const CRATES: [&str; 3] = ["gateway/src", "fanout-worker/src", "shared/src"];

fn root() -> PathBuf {
    match std::env::var_os("HOUSE_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_source_file_is_longer_than_450_lines() {
    let root = root();
    let mut long = Vec::new();
    for krate in CRATES {
        for file in rust_files(&root.join(krate)) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            let lines = text.lines().count();
            if lines > MAX_LINES {
                let name = file.strip_prefix(&root).unwrap_or(&file).display();
                long.push(format!("{name}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "source files longer than {MAX_LINES} lines (split them by stage or noun):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn no_crate_has_an_import_cycle() {
    let root = root();
    let mut cycles = Vec::new();
    for krate in CRATES {
        let mut graph = import_graph(&root.join(krate));
        // Every cycle, not only the first: each found is cut at its last
        // edge and the search goes on.
        while let Some(cycle) = find_cycle(&graph) {
            cycles.push(format!("{krate}: {}", cycle.join(" -> ")));
            let (from, to) = (&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]);
            graph.get_mut(from).expect("a node").remove(to);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules (move the shared items into a module below both):\n  {}",
        cycles.join("\n  ")
    );
}

/// A module's path from the crate root (`[]` is the root itself).
type ModPath = Vec<String>;

/// Module path → the modules it imports from (ancestors and descendants left out).
type Graph = BTreeMap<String, BTreeSet<String>>;

fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// The module a file holds: `lib.rs` is the root, `a/mod.rs` and `a.rs` are `a`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Builds the import graph of the crate in `src` (its library: `main.rs`
/// and `bin/` are other crates, which use the library by name).
fn import_graph(src: &Path) -> Graph {
    let files: Vec<(ModPath, PathBuf)> = rust_files(src)
        .into_iter()
        .filter(|f| {
            let rel = f.strip_prefix(src).unwrap();
            rel != Path::new("main.rs") && !rel.starts_with("bin")
        })
        .map(|f| (module_of(src, &f), f))
        .collect();
    let modules: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let names: Vec<(ModPath, Names)> = files
        .iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).expect("readable source");
            (
                module.clone(),
                referenced_paths(&strip(&text), module, &modules),
            )
        })
        .collect();
    let reexports: BTreeMap<&ModPath, &BTreeMap<String, ModPath>> =
        names.iter().map(|(m, n)| (m, &n.reexports)).collect();
    // Modules compiled only for tests (`#[cfg(test)] mod tests;`) and below.
    let test_only: Vec<ModPath> = names
        .iter()
        .flat_map(|(module, n)| {
            n.test_children.iter().map(move |child| {
                let mut path = module.clone();
                path.push(child.clone());
                path
            })
        })
        .collect();
    let mut graph = Graph::new();
    for (module, n) in &names {
        if test_only.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        let targets = graph.entry(display(module)).or_default();
        for path in &n.paths {
            let Some(target) = resolve(path, &modules, &reexports) else {
                continue;
            };
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                targets.insert(display(&target));
            }
        }
    }
    graph
}

/// The module file that defines what `path` names: the deepest module file
/// on the path, followed through that module's `pub use` re-exports (so
/// `crate::a::Item`, re-exported by `a/mod.rs` from `a/b.rs`, is `a::b`).
fn resolve(
    path: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &BTreeMap<&ModPath, &BTreeMap<String, ModPath>>,
) -> Option<ModPath> {
    let mut path = path.to_vec();
    // A few hops at most; the bound only guards against a re-export loop.
    for _ in 0..8 {
        let k = (0..=path.len())
            .rev()
            .find(|&k| modules.contains(&path[..k].to_vec()))?;
        let module = path[..k].to_vec();
        let Some(target) = path
            .get(k)
            .and_then(|name| reexports.get(&module)?.get(name))
        else {
            return Some(module);
        };
        let mut next = target.clone();
        next.extend_from_slice(&path[k + 1..]);
        if next == path {
            return Some(module);
        }
        path = next;
    }
    None
}

/// A cycle of `graph` as the path of modules around it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// The source with comments removed and string and char literals emptied
/// (their quotes stay), so neither paths nor braces inside them count.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            // Raw strings: r"…", r#"…"#, br#"…"#.
            'r' if raw_start(&c, i) && matches!(c.get(i + 1), Some('"' | '#')) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '\u{1F600}'), else a lifetime.
            '\'' => {
                if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 2;
                    while j < c.len() && c[j] != '\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push_str("' '");
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Whether the `r` at `c[i]` starts a raw string (`r"`, `r#"`, `br#"`)
/// rather than ending an identifier.
fn raw_start(c: &[char], i: usize) -> bool {
    let free = |j: usize| j == 0 || !is_ident(c[j - 1]);
    free(i) || (c[i - 1] == 'b' && free(i - 1))
}

/// A small tokenizer over stripped source: identifiers, `::` and single
/// punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else {
            out.push(ch.to_string());
            i += 1;
        }
    }
    out
}

/// What one file names: the absolute module paths it reaches with
/// `crate::`, `super::` or `self::` (`use` groups expanded; in a `use`, a
/// child module's name too), what it re-exports (`pub use`), and its child
/// modules declared `#[cfg(test)]` in a file of their own.
#[derive(Debug, Default)]
struct Names {
    paths: Vec<ModPath>,
    /// Name exported by this module → the path it stands for.
    reexports: BTreeMap<String, ModPath>,
    test_children: Vec<String>,
}

/// Whether `toks[..i]` ends with `#[cfg(test)]`.
fn after_cfg_test(toks: &[String], i: usize) -> bool {
    const ATTR: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    i >= ATTR.len()
        && toks[i - ATTR.len()..i]
            .iter()
            .zip(ATTR)
            .all(|(t, a)| t == a)
}

/// Whether the `use` at `toks[i]` is public (`pub use`, `pub(crate) use`, …).
fn is_pub_use(toks: &[String], i: usize) -> bool {
    match i.checked_sub(1).map(|j| toks[j].as_str()) {
        Some("pub") => true,
        Some(")") => toks[..i].iter().rev().take(5).any(|t| t == "pub"),
        _ => false,
    }
}

/// The names `code` (of module `module`, in a crate of `modules`) uses; the
/// paths inside `#[cfg(test)]` modules are left out (tests may reach
/// anywhere).
fn referenced_paths(code: &str, module: &[String], modules: &BTreeSet<ModPath>) -> Names {
    let toks = tokens(code);
    let mut out = Names::default();
    // Inline modules open: (name, brace depth inside, test-only).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        let next = |n: usize| toks.get(i + n).map(String::as_str);
        let mut here: ModPath = module.to_vec();
        here.extend(inline.iter().map(|m| m.0.clone()));
        let in_test = inline.iter().any(|m| m.2);
        let path_start = match t {
            "crate" | "super" | "self" if next(1) == Some("::") => {
                let prev = i.checked_sub(1).map(|j| toks[j].as_str());
                // `$crate::` (macros), `pub(in crate::…)`, `a::self::…`.
                !matches!(prev, Some("$" | "in" | "::"))
            }
            // `use child::…`: a child module of this one, by its name.
            _ if i > 0 && toks[i - 1] == "use" && next(1) == Some("::") => {
                let mut child = here.clone();
                child.push(t.to_owned());
                modules.contains(&child)
            }
            _ => false,
        };
        if path_start {
            let (leaves, after) = use_tree(&toks, i, &here);
            if !in_test {
                if i > 0 && toks[i - 1] == "use" && is_pub_use(&toks, i - 1) {
                    for (path, name) in &leaves {
                        if name != "*" && name != "self" {
                            out.reexports.insert(name.clone(), path.clone());
                        }
                    }
                }
                out.paths.extend(leaves.into_iter().map(|(p, _)| p));
            }
            i = after;
            continue;
        }
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if next(2) == Some("{") => {
                let test = after_cfg_test(&toks, i) || in_test;
                inline.push((toks[i + 1].clone(), depth + 1, test));
            }
            "mod" if next(2) == Some(";") && after_cfg_test(&toks, i) => {
                out.test_children.push(toks[i + 1].clone());
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// A path (or one leaf of a `use` tree) and the name it is known by here
/// (its last segment, or its `as` alias).
type Leaf = (ModPath, String);

/// Parses the path (or `use` tree) starting at `toks[i]` as seen from module
/// `here`; returns its leaves and the index after it.
fn use_tree(toks: &[String], mut i: usize, here: &[String]) -> (Vec<Leaf>, usize) {
    let mut base: ModPath = Vec::new();
    // The leading `crate` / `self` / `super`s, or a child module's name.
    match toks[i].as_str() {
        "crate" => i += 2,
        "self" => {
            base = here.to_vec();
            i += 2;
        }
        "super" => {
            base = here.to_vec();
            while toks.get(i).map(String::as_str) == Some("super")
                && toks.get(i + 1).map(String::as_str) == Some("::")
            {
                base.pop();
                i += 2;
            }
        }
        _ => base = here.to_vec(),
    }
    tree(toks, i, base)
}

/// Continues a path below `base` at `toks[i]`: identifiers joined by `::`,
/// possibly ending in a `{…}` group of sub-trees.
fn tree(toks: &[String], mut i: usize, mut base: ModPath) -> (Vec<Leaf>, usize) {
    let tok = |i: usize| toks.get(i).map(String::as_str);
    loop {
        match tok(i) {
            Some("{") => {
                let mut out = Vec::new();
                i += 1;
                loop {
                    match tok(i) {
                        None => return (out, i),
                        Some("}") => return (out, i + 1),
                        Some(",") => i += 1,
                        Some("self") => {
                            let name = base.last().cloned().unwrap_or_default();
                            out.push((base.clone(), name));
                            i += 1;
                        }
                        Some(_) => {
                            let (leaves, next) = tree(toks, i, base.clone());
                            out.extend(leaves);
                            i = next.max(i + 1);
                        }
                    }
                }
            }
            Some(t) if t.chars().next().is_some_and(is_ident) && t != "as" => {
                base.push(t.to_owned());
                i += 1;
                if tok(i) == Some("::") {
                    i += 1;
                    continue;
                }
                let mut name = t.to_owned();
                if tok(i) == Some("as") {
                    if let Some(alias) = tok(i + 1) {
                        name = alias.to_owned();
                        i += 2;
                    }
                }
                return (vec![(base, name)], i);
            }
            // `*`, or the path ended: it names `base` itself.
            Some("*") => return (vec![(base, "*".to_owned())], i + 1),
            _ => {
                let name = base.last().cloned().unwrap_or_default();
                return (vec![(base, name)], i);
            }
        }
    }
}

/// The checker itself, on small sources: paths, groups, inline modules,
/// literals and comments.
#[test]
fn the_checker_finds_paths_and_skips_the_rest() {
    let here = vec!["a".to_owned(), "b".to_owned()];
    let code = strip(
        r##"
        use crate::x::{y::{self, Z}, w};
        pub use crate::x::w as Renamed;
        use super::sibling::Item;
        // use crate::commented::Out;
        /* crate::block::Out */
        const LUA: &str = r#"crate::lua::Out { "#;
        const S: &str = "crate::string::Out }";
        pub(in crate::vis) fn f<'a>(c: char) -> bool { c == '{' && crate::expr::call() }
        macro_rules! m { () => { $crate::mac::Out } }
        mod inner {
            use super::*;
            use super::super::up::Item;
        }
        fn g() { self::child::h() }
        #[cfg(test)]
        mod tests {
            use crate::only::InTests;
        }
        #[cfg(test)]
        mod unit;
        "##,
    );
    let modules: BTreeSet<ModPath> = [vec![], here.clone()].into();
    let names = referenced_paths(&code, &here, &modules);
    assert_eq!(names.test_children, ["unit"]);
    let x_w = vec!["x".to_owned(), "w".to_owned()];
    assert_eq!(names.reexports.get("Renamed"), Some(&x_w));
    let found: BTreeSet<String> = names.paths.iter().map(|p| display(p)).collect();
    let want: BTreeSet<String> = [
        "x::y",
        "x::y::Z",
        "x::w",
        "a::sibling::Item",
        "expr::call",
        "a::b",
        "a::up::Item",
        "a::b::child::h",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, want);
}

#[test]
fn the_checker_reports_a_cycle_with_its_path() {
    let mut g = Graph::new();
    g.entry("state".into()).or_default().insert("server".into());
    g.entry("server".into())
        .or_default()
        .insert("listener".into());
    g.entry("listener".into())
        .or_default()
        .insert("state".into());
    g.entry("config".into()).or_default();
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    g.get_mut("listener").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn the_checker_follows_reexports_to_the_defining_file() {
    let p = |s: &str| -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let modules: BTreeSet<ModPath> = [p(""), p("a"), p("a::b"), p("c")].into();
    let a_exports: BTreeMap<String, ModPath> = [("Item".to_owned(), p("a::b::Item"))].into();
    let root_exports: BTreeMap<String, ModPath> = [("short".to_owned(), p("a"))].into();
    let (root, a) = (p(""), p("a"));
    let reexports: BTreeMap<&ModPath, &BTreeMap<String, ModPath>> =
        [(&root, &root_exports), (&a, &a_exports)].into();
    assert_eq!(
        resolve(&p("a::Item"), &modules, &reexports),
        Some(p("a::b"))
    );
    assert_eq!(
        resolve(&p("short::Item"), &modules, &reexports),
        Some(p("a::b"))
    );
    assert_eq!(resolve(&p("a::Other"), &modules, &reexports), Some(p("a")));
    assert_eq!(resolve(&p("c::x::y"), &modules, &reexports), Some(p("c")));
}
