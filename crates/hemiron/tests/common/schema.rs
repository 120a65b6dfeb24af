//! Checks API answers against the `returns` schemas of Proxmox VE's API dump
//! (`shared/reference/pve-api-subset.json`). Where the dump is not present, says so loudly
//! once and checks nothing.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

struct Schema {
    /// (method, regex of the path, returns schema)
    routes: Vec<(String, regex::Regex, Value)>,
}

fn locate() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HEMIRON_PVE_SCHEMA") {
        return Some(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../../../shared/reference/pve-api-subset.json"),
        PathBuf::from("/work/shared/reference/pve-api-subset.json"),
    ];
    candidates.into_iter().find(|p| p.exists())
}

fn load() -> Option<Schema> {
    let Some(path) = locate() else {
        eprintln!(
            "\n*** WARNING: pve-api-subset.json not found (set HEMIRON_PVE_SCHEMA): \
             API answers are NOT being checked against the Proxmox schema ***\n"
        );
        return None;
    };
    let raw = std::fs::read(&path).expect("read schema");
    let doc: Value = serde_json::from_slice(&raw).expect("parse schema");
    let mut routes = Vec::new();
    let placeholder = regex::Regex::new(r"\\\{[^}]+\\\}").expect("re");
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        let re = format!(
            "^{}$",
            placeholder.replace_all(&regex::escape(path), "[^/]+")
        );
        let re = regex::Regex::new(&re).expect("path regex");
        for (method, info) in methods.as_object().expect("methods") {
            routes.push((method.clone(), re.clone(), info["returns"].clone()));
        }
    }
    Some(Schema { routes })
}

fn schema() -> Option<&'static Schema> {
    static S: OnceLock<Option<Schema>> = OnceLock::new();
    S.get_or_init(load).as_ref()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => false,
    }
}

/// Validates `v` against a PVE return schema; collects problems with their JSON path.
pub fn validate(v: &Value, s: &Value, at: &str, errors: &mut Vec<String>) {
    if v.is_null() && (truthy(&s["optional"]) || s["type"] == "null") {
        return;
    }
    let ty = s["type"].as_str().unwrap_or("");
    let ok = match ty {
        "" | "any" => true,
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        // PVE booleans come as 0/1 as often as true/false.
        "boolean" => v.is_boolean() || v.as_i64().is_some_and(|i| i == 0 || i == 1),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: expected {ty}, got {v}"));
        return;
    }
    if let Some(options) = s["enum"].as_array() {
        if !options.contains(v) {
            errors.push(format!("{at}: {v} not in enum {options:?}"));
        }
    }
    if let (Some(min), Some(x)) = (s["minimum"].as_f64(), v.as_f64()) {
        if x < min {
            errors.push(format!("{at}: {x} below minimum {min}"));
        }
    }
    if let (Some(pattern), Some(text)) = (s["pattern"].as_str(), v.as_str()) {
        if let Ok(re) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            if !re.is_match(text) {
                errors.push(format!("{at}: '{text}' does not match {pattern}"));
            }
        }
    }
    match ty {
        "array" => {
            if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
                for (i, item) in arr.iter().enumerate() {
                    validate(item, items, &format!("{at}[{i}]"), errors);
                }
            }
        }
        "object" => {
            let obj = v.as_object().expect("checked object");
            if let Some(props) = s["properties"].as_object() {
                for (name, ps) in props {
                    match obj.get(name) {
                        Some(pv) => validate(pv, ps, &format!("{at}.{name}"), errors),
                        None if truthy(&ps["optional"]) => {}
                        None => errors.push(format!("{at}.{name}: missing")),
                    }
                }
                let closed = s
                    .get("additionalProperties")
                    .is_some_and(|a| !truthy(a) && !a.is_object());
                if closed {
                    for k in obj.keys() {
                        if !props.contains_key(k) {
                            errors.push(format!("{at}.{k}: not allowed by the schema"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Checks the `data` of a successful answer; panics listing every mismatch.
pub fn check_response(method: &str, path: &str, data: &Value) {
    let Some(schema) = schema() else {
        return;
    };
    let path = path.split('?').next().unwrap_or(path);
    let Some((_, _, returns)) = schema
        .routes
        .iter()
        .find(|(m, re, _)| m == method && re.is_match(path))
    else {
        return;
    };
    let mut errors = Vec::new();
    validate(data, returns, "data", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path}: answer does not match the Proxmox schema:\n  {}\nanswer: {data}",
        errors.join("\n  ")
    );
}

/// Whether the schema dump is present (tests that need it say so when it is not).
pub fn available() -> bool {
    schema().is_some()
}
