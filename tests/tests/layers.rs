//! The house rules, checked against the source (`docs/architecture.md`,
//! "Layers"): what may import what. No KVM needed.
//!
//! Imports are read from `use` statements and inline `crate::…` paths. A
//! folder's `mod.rs` is the folder's face: its imports of its own children
//! (re-exports, the device registry) are not edges; everything else is.
//! Unit tests (`#[cfg(test)]` and `tests.rs`) are not part of the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    duet_tests::root()
}

/// Every `.rs` file under `dir`, as (module path, file).
fn modules(dir: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).unwrap().with_extension("");
                let mut m: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if m.last()
                    .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
                {
                    m.pop();
                }
                out.insert(m, p);
            }
        }
    }
    out
}

/// Source text without comments and string literals (so a path in a doc
/// comment or a message is not an import).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
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
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n'); lifetimes have no closing quote.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into full paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let mut depth = 0;
        let mut start = 0;
        let mut base = prefix.to_vec();
        base.extend(head);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let mut p = prefix.to_vec();
        let t = tree.split(" as ").next().unwrap();
        p.extend(t.split("::").map(|s| s.trim().to_string()));
        out.push(p);
    }
}

/// The paths a file names: `crate::…`, `super::…` and `self::…`, made
/// absolute (relative to the crate root).
fn imports(module: &[String], text: &str) -> Vec<Vec<String>> {
    let text = code(text);
    let mut raw = Vec::new();
    // `use` statements (braces expanded).
    for stmt in text.split(';') {
        let s = stmt.trim_start();
        let s = s.strip_prefix("pub ").unwrap_or(s);
        let s = s
            .strip_prefix("pub(crate) ")
            .or_else(|| s.strip_prefix("pub(super) "))
            .unwrap_or(s);
        if let Some(rest) = s.strip_prefix("use ") {
            expand(rest, &[], &mut raw);
        }
    }
    // Inline paths (not preceded by an identifier character or `::`).
    for root in ["crate::", "super::"] {
        for (i, _) in text.match_indices(root) {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = text[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            raw.push(tail.split("::").map(String::from).collect());
        }
    }
    // `self::`/`super::` are relative to the file's module (a mod.rs is its
    // folder's module, any other file a module of its own).
    let here: Vec<String> = module.to_vec();
    let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
    raw.into_iter()
        .filter_map(|p| match p.first().map(String::as_str) {
            Some("crate") => Some(p[1..].to_vec()),
            Some("super") => {
                let mut base = parent.clone();
                base.extend(p[1..].iter().cloned());
                Some(base)
            }
            Some("self") => {
                let mut base = here.clone();
                base.extend(p[1..].iter().cloned());
                Some(base)
            }
            _ => None,
        })
        .collect()
}

/// The module file a path lands in (its longest prefix that is a file).
fn resolve(mods: &BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains_key(p))
}

/// The monitor library's import graph: module → modules it imports.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = root().join("monitor/src");
    let mods = modules(&src);
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        if file.ends_with("main.rs") && m.is_empty() {
            continue; // the binary's entry, not the library's root
        }
        if m.first().is_some_and(|f| f == "bin" || f == "cli") {
            continue; // binaries: the top floor
        }
        // Unit tests are not part of the layering (they may build a VM).
        if m.last().is_some_and(|l| l == "tests") {
            continue;
        }
        let is_mod = file.ends_with("mod.rs");
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        let mut edges = BTreeSet::new();
        for p in imports(m, text) {
            let Some(t) = resolve(&mods, &p) else {
                continue;
            };
            // Itself, the crate root, or (a folder's face) its own children.
            if &t == m || t.is_empty() || (is_mod && t.starts_with(m)) {
                continue;
            }
            edges.insert(t);
        }
        g.insert(m.clone(), edges);
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

/// A cycle in `g`, if any.
fn find_cycle<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        g: &BTreeMap<N, BTreeSet<N>>,
        state: &mut BTreeMap<N, u8>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                return Some(stack[at..].to_vec());
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycle_among_the_monitors_files_or_top_level_modules() {
    let g = graph();
    assert!(g.len() > 40, "read only {} modules", g.len());
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle: {}",
            c.iter().map(|m| name(m)).collect::<Vec<_>>().join(" -> ")
        );
    }
    // Folders as one module each.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, edges) in &g {
        let from = m.first().cloned().unwrap_or_default();
        let entry = top.entry(from.clone()).or_default();
        for e in edges {
            let to = e.first().cloned().unwrap_or_default();
            if to != from {
                entry.insert(to);
            }
        }
    }
    if let Some(c) = find_cycle(&top) {
        panic!("import cycle between top-level modules: {}", c.join(" -> "));
    }
}

/// Files whose imports, by top-level module, intersect `banned`.
fn offenders(prefixes: &[&str], banned: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (m, edges) in graph() {
        if !m.first().is_some_and(|f| prefixes.contains(&f.as_str())) {
            continue;
        }
        for e in edges {
            if e.first().is_some_and(|f| banned.contains(&f.as_str())) {
                bad.push(format!("{} imports {}", name(&m), name(&e)));
            }
        }
    }
    bad
}

#[test]
fn memory_and_devices_know_nothing_of_snapshots_migrations_or_the_vmm() {
    let bad = offenders(
        &["memory", "devices"],
        &["snapshot", "migration", "vmm", "api", "runner", "statefile"],
    );
    assert!(bad.is_empty(), "{bad:#?}");
    let bad = offenders(&["memory"], &["devices", "cpu", "paging", "heap", "vm"]);
    assert!(bad.is_empty(), "memory/ is the bottom layer: {bad:#?}");
}

#[test]
fn snapshots_and_migrations_reach_components_only_through_persist_and_the_device_trait() {
    // The components' own modules are off limits: the Vmm's capture and
    // assemble (built on Persist) and the Device trait are the doors.
    let bad = offenders(
        &["snapshot", "migration"],
        &[
            "cpu",
            "paging",
            "heap",
            "clock",
            "identity",
            "loader",
            "hypercall",
            "call",
        ],
    );
    assert!(bad.is_empty(), "{bad:#?}");
    // No concrete device type or device-kind match either.
    for dir in ["snapshot", "migration"] {
        for (_, file) in modules(&root().join("monitor/src").join(dir)) {
            let text = code(&std::fs::read_to_string(&file).unwrap());
            for word in ["BlockDevice", "NetDevice", "DeviceState::"] {
                assert!(
                    !text.contains(word),
                    "{} names {word}: go through the Device trait",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_debugger_sits_above_the_vmm_and_nothing_below_knows_it() {
    // The run loop knows it only as a `vmm::DebugHooks` object it owns;
    // only the control plane (api/, runner) starts and serves it.
    let bad = offenders(
        &[
            "vmm",
            "vm",
            "memory",
            "devices",
            "cpu",
            "paging",
            "heap",
            "clock",
            "identity",
            "loader",
            "hypercall",
            "vmem",
            "backtrace",
            "coredump",
            "snapshot",
            "migration",
        ],
        &["debug"],
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

fn path_deps(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some(i) = l.find("path = \"") {
                let rest = &l[i + 8..];
                out.push(rest[..rest.find('"').unwrap()].to_string());
            }
        }
    }
    out
}

#[test]
fn crates_depend_only_on_the_abi() {
    let abi = std::fs::read_to_string(root().join("abi/Cargo.toml")).unwrap();
    let deps = abi.split("[dependencies]").nth(1).unwrap_or("");
    let deps = deps.split('[').next().unwrap_or("");
    assert!(
        deps.lines()
            .all(|l| l.trim().is_empty() || l.trim().starts_with('#')),
        "abi/ must depend on nothing: {deps}"
    );
    for c in ["monitor", "unikernel"] {
        let d = path_deps(&root().join(c).join("Cargo.toml"));
        assert_eq!(d, vec!["../abi".to_string()], "{c} depends on {d:?}");
    }
}

#[test]
fn tests_and_xtask_use_only_the_monitors_public_contract() {
    for dir in ["tests", "xtask/src"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = code(&std::fs::read_to_string(&p).unwrap());
                for (i, _) in text.match_indices("duet_monitor::") {
                    let rest = &text[i + "duet_monitor::".len()..];
                    assert!(
                        rest.starts_with("contract"),
                        "{} uses duet_monitor::{}: tests and xtask may use only duet_monitor::contract",
                        p.display(),
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap()
                    );
                }
            }
        }
    }
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut g: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
    g.insert(1, [2].into());
    g.insert(2, [3].into());
    g.insert(3, [1].into());
    assert_eq!(find_cycle(&g).map(|c| c.len()), Some(3));
    g.insert(3, BTreeSet::new());
    assert!(find_cycle(&g).is_none());
    let mut out = Vec::new();
    expand("crate::{a, b::{c, d as e}}", &[], &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2], ["crate", "b", "d"]);
}
