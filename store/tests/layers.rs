//! The store's modules form layers without circles: `src/lib.rs` lists them from the bottom up,
//! and each may use only the modules listed before it. A new `use crate::…` that points up a
//! layer fails here, with the module and the line.

use std::path::Path;

/// The module names of `mod x;` lines in lib.rs, in their order.
fn layers(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned))
        .collect()
}

/// `source` without its `//` comments, line for line.
fn code(source: &str) -> String {
    source.lines().map(|line| line.find("//").map_or(line, |at| &line[..at])).collect::<Vec<_>>().join("\n")
}

/// The top-level items of the `{…}` group that `group` starts inside of (after its `{`), which may
/// span lines and nest: `a::{b, c}, d}` gives `a::{b, c}` and `d`.
fn group_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// The modules of `modules` that the code (comments aside) of `source` names as `crate::x` or,
/// from a module directly under the crate root, `super::x`, with the line number of each use.
fn used<'a>(source: &str, modules: &'a [String]) -> Vec<(&'a str, usize)> {
    let code = code(source);
    let mut found = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let line = code[..at].matches('\n').count() + 1;
            let items = match rest.strip_prefix('{') {
                Some(group) => group_items(group),
                None => vec![rest],
            };
            for item in items {
                let name = item.trim_start().split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
                if let Some(module) = modules.iter().find(|m| m.as_str() == name) {
                    found.push((module.as_str(), line));
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let modules = layers(&lib);
    assert!(modules.len() >= 10, "lib.rs lists the modules: {modules:?}");
    let mut upward = Vec::new();
    for (level, module) in modules.iter().enumerate() {
        let source = std::fs::read_to_string(src.join(format!("{module}.rs"))).expect("a module file");
        for (target, line) in used(&source, &modules) {
            let target_level = modules.iter().position(|m| m == target).expect("listed");
            if target_level >= level && target != module {
                upward.push(format!("{module} uses {target}: src/{module}.rs line {line}"));
            }
        }
    }
    assert!(upward.is_empty(), "modules using a layer above them:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_grouped_nested_multiline_and_super_uses() {
    let modules: Vec<String> = ["hot", "cold", "scan", "rows", "table"].map(String::from).to_vec();
    let source = "use crate::{hot::{Row, Key}, cold};\n// crate::scan in a comment\nlet x = crate::scan::f(); // crate::table\nuse crate::{\n    rows::Row,\n};\nuse super::table::TableRef;";
    let found: Vec<(&str, usize)> = used(source, &modules);
    assert_eq!(found, [("cold", 1), ("hot", 1), ("rows", 4), ("scan", 3), ("table", 7)]);
}
