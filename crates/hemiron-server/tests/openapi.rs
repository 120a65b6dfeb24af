#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The OpenAPI document is an artefact: generated from the handlers, committed as
//! `openapi.json`, and this test fails when they drift (`HEMIRON_BLESS=1` rewrites it).

#[test]
fn the_committed_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = hemiron_server::api::openapi_json();
    if std::env::var("HEMIRON_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "openapi.json is out of date: run HEMIRON_BLESS=1 cargo nextest run -p hemiron-server \
         --test openapi and commit it"
    );
}

#[test]
fn every_operation_declares_its_errors_and_security() {
    let doc: serde_json::Value =
        serde_json::from_str(&hemiron_server::api::openapi_json()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let public = path == "/auth/login";
            if !public {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            } else {
                assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
            }
            if matches!(method.as_str(), "patch" | "delete")
                && path.contains('{')
                && !path.starts_with("/auth")
            {
                assert!(
                    responses.contains_key("412") && responses.contains_key("428"),
                    "{method} {path}"
                );
            }
        }
    }
}
