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

/// The modules of `modules` that the code (comments aside) of `source` names as `crate::x`.
fn used<'a>(source: &str, modules: &'a [String]) -> Vec<(&'a str, String)> {
    let mut found = Vec::new();
    for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group[..group.find('}').unwrap_or(group.len())].split(',').map(|n| n.trim().split("::").next().unwrap_or("")).collect()
            } else {
                vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")]
            };
            for name in names {
                if let Some(module) = modules.iter().find(|m| m.as_str() == name) {
                    found.push((module.as_str(), line.trim().to_owned()));
                }
            }
        }
    }
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
                upward.push(format!("{module} uses {target}: {line}"));
            }
        }
    }
    assert!(upward.is_empty(), "modules using a layer above them:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_grouped_and_inline_uses() {
    let modules: Vec<String> = ["hot", "cold", "scan"].map(String::from).to_vec();
    let source = "use crate::{hot::Row, cold};\n// crate::scan in a comment\nlet x = crate::scan::f();";
    let found: Vec<&str> = used(source, &modules).into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, ["hot", "cold", "scan"]);
}
