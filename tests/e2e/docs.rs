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

/// `documented` (in `table`) lists exactly what the code has (`verb` by the code).
fn assert_same(code: &BTreeSet<String>, documented: &BTreeSet<String>, table: &str, verb: &str) {
    let missing: Vec<_> = code.difference(documented).collect();
    let stale: Vec<_> = documented.difference(code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{table}: missing {missing:?}, not {verb} by the code {stale:?}"
    );
}

#[test]
fn api_md_lists_every_error_reason_the_code_can_return() {
    let documented = table_keys(&read_doc("api.md"), "Errors");
    let code: BTreeSet<String> = credential_broker::grpc::status::all_reasons()
        .map(str::to_owned)
        .collect();
    assert_same(&code, &documented, "docs/api.md Errors table", "produced");
}

#[test]
fn api_md_lists_every_audit_action_the_code_can_record() {
    let documented = table_keys(&read_doc("api.md"), "Audit");
    let code: BTreeSet<String> = cb_broker::audit::ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    assert_same(&code, &documented, "docs/api.md Audit table", "recorded");
}

/// One step of a configuration key path.
#[derive(Clone, Debug)]
enum Seg {
    /// `[a.b]`
    Table(String),
    /// `[[a]]`
    Array(String),
    /// A map of tables, `[providers.<id>]`.
    Map,
}

fn dotted(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Table(n) | Seg::Array(n) => n.as_str(),
            Seg::Map => "*",
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// TOML that puts `body` inside the table at `path` (array elements and map entries included).
fn probe_text(path: &[Seg], body: &str) -> String {
    let mut text = String::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, seg) in path.iter().enumerate() {
        names.push(match seg {
            Seg::Table(n) | Seg::Array(n) => n,
            Seg::Map => "probe-id",
        });
        let last = i + 1 == path.len();
        match seg {
            Seg::Array(_) => text += &format!("[[{}]]\n", names.join(".")),
            _ if last => text += &format!("[{}]\n", names.join(".")),
            _ => {}
        }
    }
    text + body
}

/// The fields serde expects where it met an unknown one, from the parser's own error.
fn expected_fields(error: &str) -> Option<Vec<String>> {
    let rest = error.split("unknown field `__probe`, expected ").nth(1)?;
    let rest = rest.lines().next()?;
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key path the configuration parser accepts, found by asking the parser itself.
fn accepted_keys(path: &[Seg], out: &mut BTreeSet<String>) {
    let parse = |text: String| {
        credential_broker::runtime::config::Config::parse(&text)
            .err()
            .unwrap_or_default()
    };
    let error = parse(probe_text(path, "__probe = 1\n"));
    let Some(fields) = expected_fields(&error) else {
        return;
    };
    for field in fields {
        let mut child = path.to_vec();
        child.push(Seg::Table(field.clone()));
        let as_table = parse(probe_text(&child, "__probe = 1\n"));
        if expected_fields(&as_table).is_some() {
            accepted_keys(&child, out);
            continue;
        }
        if as_table.contains("expected struct") {
            // A map of tables keyed by an id.
            child.push(Seg::Map);
            accepted_keys(&child, out);
            continue;
        }
        let mut as_array = path.to_vec();
        as_array.push(Seg::Array(field.clone()));
        if expected_fields(&parse(probe_text(&as_array, "__probe = 1\n"))).is_some() {
            accepted_keys(&as_array, out);
            continue;
        }
        let mut leaf = path.to_vec();
        leaf.push(Seg::Table(field));
        out.insert(dotted(&leaf));
    }
}

/// `section.key` for every `key = …` (commented or not) in the TOML blocks of the doc, with
/// `[providers.<anything>]` read as `providers.*`.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_toml = false;
    let mut section = String::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            in_toml = line == "```toml";
            section.clear();
            continue;
        }
        if !in_toml {
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_matches(|c| c == '[' || c == ']');
            let name = name.split(']').next().unwrap_or(name);
            section = name
                .split('.')
                .enumerate()
                .map(|(i, part)| {
                    if i == 1 && name.starts_with("providers.") {
                        "*"
                    } else {
                        part
                    }
                })
                .collect::<Vec<_>>()
                .join(".");
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        {
            continue;
        }
        keys.insert(if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        });
    }
    keys
}

#[test]
fn configuration_md_names_every_key_the_parser_accepts() {
    let mut accepted = BTreeSet::new();
    accepted_keys(&[], &mut accepted);
    assert!(
        accepted.contains("tokens.lease_seconds") && accepted.contains("callers.role"),
        "the probe no longer finds the keys: {accepted:?}"
    );
    let documented = documented_keys(&read_doc("configuration.md"));
    // A key whose value is an enum of tables (e.g. `custom_providers.account`) is documented by
    // its own section header, with the variant's keys inside.
    let named = |key: &String| {
        documented.contains(key) || documented.iter().any(|d| d.starts_with(&format!("{key}.")))
    };
    let missing: Vec<_> = accepted.iter().filter(|k| !named(k)).collect();
    let stale: Vec<_> = documented
        .iter()
        .filter(|d| {
            !accepted.contains(*d) && !accepted.iter().any(|k| d.starts_with(&format!("{k}.")))
        })
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/configuration.md: keys the parser accepts but the doc does not name {missing:?}; \
         keys the doc names but the parser refuses {stale:?}"
    );
}

#[test]
fn configuration_md_names_every_environment_override() {
    let source = include_str!("../../crates/server/src/runtime/config.rs");
    let doc = read_doc("configuration.md");
    let mut names = BTreeSet::new();
    for (prefix, marker) in [("CREDENTIAL_BROKER_", "var(\""), ("", "env.get(\"")] {
        for part in source.split(marker).skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                names.insert(format!("{prefix}{name}"));
            }
        }
    }
    assert!(names.contains("CREDENTIAL_BROKER_LISTEN"), "{names:?}");
    let missing: Vec<_> = names.iter().filter(|n| !doc.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not name {missing:?}"
    );
}

/// The broker configurations shipped in deploy/ are accepted by the broker itself: only the
/// deliberate placeholders (service-token hashes to fill in) may be refused.
#[test]
fn deploy_configs_pass_the_brokers_own_validation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let compose = std::fs::read_to_string(root.join("compose/broker.toml")).unwrap();
    let configmap = std::fs::read_to_string(root.join("kubernetes/configmap.yaml")).unwrap();
    let embedded: String = configmap
        .split("broker.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    for (name, text) in [
        ("compose/broker.toml", compose),
        ("configmap.yaml", embedded),
    ] {
        let config = credential_broker::runtime::config::Config::parse(&text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = config.validate() {
            for problem in &e.0 {
                assert!(
                    problem.contains("token_sha256: must be 64 hex"),
                    "{name}: {problem}"
                );
            }
        }
    }
}
