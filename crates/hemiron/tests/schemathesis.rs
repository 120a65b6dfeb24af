#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Schemathesis (from PyPI, installed by the test command) against the served OpenAPI
//! document of a real server: no 5xx, every answer's status, content type, headers and body
//! as documented, unauthenticated calls refused, required headers enforced, unsupported
//! methods refused. The store holds a tenant, a plan and a placeable template so that
//! generated requests reach past the 404s.

mod common;

use std::process::Command;

use common::control::{seed_placeable, store_url, Backend, Server};
use serde_json::json;

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(Backend::Sqlite, dir.path());
    seed_placeable(&url, 1000);
    let server = Server::start_in(
        dir,
        None,
        Backend::Sqlite,
        &["--workers", "0", "--reconcile-interval", "1h"],
    );
    // An API token: a session token would end at the generated logout.
    let token = server
        .admin()
        .post("/tokens", &json!({"name": "schemathesis"}))
        .expect(201)["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let report = tempfile::tempdir().unwrap();
    // Run in a scratch directory: schemathesis keeps a cache in its working directory.
    let out = Command::new("st")
        .current_dir(report.path())
        .args(["--no-color", "--config-file", config, "run"])
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,ignored_auth,\
             missing_required_header,unsupported_method",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "2",
            "--report-dir",
        ])
        .arg(report.path())
        .output()
        .expect("schemathesis (`st`) is installed by ./scripts/deps --test");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // The server stayed up and healthy.
    assert_eq!(
        server.anon().get("/healthz").status,
        200,
        "{}",
        server.output()
    );
}
