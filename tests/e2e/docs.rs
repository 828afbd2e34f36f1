//! The docs are part of the product: lists in docs/ that must match the code.

use std::collections::BTreeSet;

fn read_doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first-column code spans of the tables in the section headed `heading`.
fn table_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn api_md_lists_every_error_reason_the_code_can_return() {
    let documented = table_keys(&read_doc("api.md"), "Errors");
    let code: BTreeSet<String> = credential_broker::grpc::status::all_reasons()
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/api.md Errors table: missing {missing:?}, not produced by the code {stale:?}"
    );
}
