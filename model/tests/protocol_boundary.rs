//! The protocol boundary stays where it is: generated wire types (`modelgw-proto`) are named
//! only by `model`'s conversion module, the two transport files, and the tests that play a
//! peer on the wire. Everything else speaks the domain messages of `modelgw_model::protocol`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::path::{Path, PathBuf};

/// Files allowed to name generated types, relative to the workspace root, with why.
const ALLOWED: [(&str, &str); 8] = [
    ("model/src/wire.rs", "the conversion module"),
    ("control-plane/src/distribution/grpc.rs", "transport: the gRPC server"),
    ("data-plane/src/control_plane_client.rs", "transport: the data plane's client"),
    ("control-plane/tests/distribution.rs", "plays data planes against the real server"),
    ("data-plane/tests/control_plane.rs", "plays a control plane against a real data plane"),
    ("admin-api/tests/api/health.rs", "plays data planes reporting health"),
    ("console/tests/console/data_planes.rs", "plays a data plane the console's page shows"),
    ("bench/src/fanout.rs", "plays 1,000 data planes against the real server (fan-out benchmark)"),
];

/// Crates allowed to depend on `modelgw-proto`, with why.
const ALLOWED_DEPENDENTS: [(&str, &str); 4] = [
    ("model/Cargo.toml", "the conversions (optional `wire` feature)"),
    ("control-plane/Cargo.toml", "the pre-encoded frames server of the transport"),
    ("admin-api/Cargo.toml", "dev-dependency of the test that plays data planes"),
    ("console/Cargo.toml", "dev-dependency of the test that plays a data plane"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("model/ has a parent").to_path_buf()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            // The generated crate itself is the one place its types live.
            let generated = path == workspace_root().join("proto");
            if !generated && !matches!(name, "target" | ".git" | "node_modules") {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// Whether a line of Rust names a generated type or the generated crate.
fn names_wire_type(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.contains("modelgw_proto")
        || code.contains("wire::cfg")
        || code.match_indices("cfg::").any(|(i, _)| {
            // `cfg::` as a path segment, not the tail of another identifier.
            code[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

#[test]
fn only_the_conversion_module_the_transports_and_wire_peer_tests_name_generated_types() {
    let mut all = Vec::new();
    files(&workspace_root(), &mut all);
    let mut offenders = Vec::new();
    let mut seen_allowed = Vec::new();
    for path in all.iter().filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let rel = relative(path);
        let text = std::fs::read_to_string(path).expect("utf-8 source");
        let hits: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| names_wire_type(l))
            .map(|(n, _)| n + 1)
            .collect();
        if hits.is_empty() || rel == "model/tests/protocol_boundary.rs" {
            continue;
        }
        if ALLOWED.iter().any(|(allowed, _)| *allowed == rel) {
            seen_allowed.push(rel);
        } else {
            offenders.push(format!("{rel}: lines {hits:?}"));
        }
    }
    assert!(offenders.is_empty(), "generated types named outside the boundary:\n{offenders:#?}");
    // The allowlist stays honest: every entry still needs its exception.
    for (allowed, why) in ALLOWED {
        assert!(seen_allowed.iter().any(|s| s == allowed), "{allowed} ({why}) no longer needs it");
    }
}

#[test]
fn only_the_listed_crates_depend_on_the_generated_crate() {
    let mut all = Vec::new();
    files(&workspace_root(), &mut all);
    let dependents: Vec<String> = all
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "Cargo.toml"))
        .filter(|p| relative(p) != "Cargo.toml")
        .filter(|p| {
            std::fs::read_to_string(p).expect("readable").lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("modelgw-proto") || l.contains("\"dep:modelgw-proto\"")
            })
        })
        .map(|p| relative(p))
        .collect();
    for d in &dependents {
        assert!(
            ALLOWED_DEPENDENTS.iter().any(|(allowed, _)| allowed == d),
            "{d} depends on modelgw-proto; speak modelgw_model::protocol instead"
        );
    }
}

#[test]
fn the_detector_sees_what_it_must() {
    assert!(names_wire_type("use modelgw_proto::cfg;"));
    assert!(names_wire_type("    let m = cfg::Snapshot::default();"));
    assert!(names_wire_type("fn f(x: &wire::cfg::Hello) {}"));
    assert!(names_wire_type("use modelgw_model::wire::cfg;"));
    assert!(!names_wire_type("#[cfg(test)]"));
    assert!(!names_wire_type("let mycfg::x = 1; // not a path segment"));
    assert!(!names_wire_type("// cfg::Snapshot in a comment"));
}
