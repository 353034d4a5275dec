//! The pinned dependency set holds: exactly one arrow (and one of each
//! arrow-* crate), one datafusion, lance 14.0.2.

use std::collections::BTreeMap;

#[test]
fn one_arrow_one_datafusion_one_lance() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("Cargo.lock at the workspace root");
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            versions
                .entry(n)
                .or_default()
                .push(v.trim_matches('"').to_string());
        }
    }
    assert_eq!(
        versions.get("arrow").map(Vec::len),
        Some(1),
        "{:?}",
        versions.get("arrow")
    );
    assert!(
        versions["arrow"][0].starts_with("58."),
        "{:?}",
        versions["arrow"]
    );
    for (n, v) in &versions {
        if n.starts_with("arrow-") || n.starts_with("datafusion") || n.starts_with("lance") {
            assert_eq!(v.len(), 1, "two versions of {n} in Cargo.lock: {v:?}");
        }
    }
    assert_eq!(versions["lance"], vec!["14.0.2".to_string()]);
    assert!(
        versions["datafusion"][0].starts_with("54."),
        "{:?}",
        versions["datafusion"]
    );
}
