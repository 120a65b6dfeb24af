//! Hand-written parameter specs of the PVE endpoints Hemiron serves, and of
//! every VM config property with its property-string format.
//!
//! The tables follow PVE 9.1's API schema; `tests/schema_fixture.rs` checks
//! them against the official schema dump (names, types, optionality,
//! defaults, enums, bounds, patterns, formats, key by key).

pub mod device;
pub mod drive;
mod endpoints;
pub mod limits;
pub mod qm;
pub mod vm_config;

pub use endpoints::{ENDPOINTS, NODE, VMID};
pub use vm_config::{config_api_spec, config_file_spec};

use crate::schema::{validate_groups, ParamErrors, ParamSpec, ValidatedParams};

/// One API method: its parameters, path parameters included (as in PVE).
#[derive(Debug)]
pub struct EndpointSpec {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The path template, e.g. `/nodes/{node}/qemu/{vmid}/config`.
    pub path: &'static str,
    /// The parameters, in groups shared between endpoints.
    pub params: &'static [&'static [ParamSpec]],
}

impl EndpointSpec {
    /// All parameter specs.
    pub fn param_specs(&self) -> impl Iterator<Item = &'static ParamSpec> + '_ {
        self.params.iter().flat_map(|g| g.iter())
    }

    /// The spec of parameter `name` (`net3` finds `net[n]`).
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.param_specs().find(|p| p.matches_key(name))
    }

    /// Validates all parameters (path parameters included).
    pub fn validate(&self, input: &[(String, String)]) -> Result<ValidatedParams, ParamErrors> {
        validate_groups(self.params, input)
    }

    /// Validates a request the way PVE's HTTP server and REST handler do:
    /// the cache-buster `_dc` is dropped; a parameter that repeats a path
    /// parameter with a different value is refused on its own ("duplicate
    /// parameter (already defined in URI) with conflicting values!", the
    /// first such key in sorted order), one with the same value is merged;
    /// then path and request parameters are validated together.
    pub fn validate_request(
        &self,
        path_params: &[(String, String)],
        params: &[(String, String)],
    ) -> Result<ValidatedParams, ParamErrors> {
        let mut sorted: Vec<&(String, String)> =
            params.iter().filter(|(k, _)| k != "_dc").collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut all: Vec<(String, String)> = path_params.to_vec();
        for (k, v) in sorted {
            match path_params.iter().find(|(p, _)| p == k) {
                Some((_, pv)) if pv != v => {
                    return Err(ParamErrors::single(
                        k.clone(),
                        "duplicate parameter (already defined in URI) with conflicting values!",
                    ));
                }
                Some(_) => {}
                None => all.push((k.clone(), v.clone())),
            }
        }
        self.validate(&all)
    }

    /// Matches a concrete path (below `/api2/json`) against this endpoint's
    /// template, returning the path parameters. A template segment `{x}`
    /// matches any segment without whitespace, like PVE's `\S+`.
    pub fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let template: Vec<&str> = self.path.split('/').filter(|s| !s.is_empty()).collect();
        let actual: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if template.len() != actual.len() {
            return None;
        }
        let mut params = Vec::new();
        for (t, a) in template.iter().zip(&actual) {
            match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => {
                    if a.chars().any(char::is_whitespace) {
                        return None;
                    }
                    params.push((name.to_string(), (*a).to_string()));
                }
                None if t == a => {}
                None => return None,
            }
        }
        Some(params)
    }
}

/// The endpoint with this method and path template
/// (`endpoint("PUT", "/nodes/{node}/qemu/{vmid}/config")`).
pub fn endpoint(method: &str, path_template: &str) -> Option<&'static EndpointSpec> {
    ENDPOINTS
        .iter()
        .find(|e| e.method.eq_ignore_ascii_case(method) && e.path == path_template)
}

/// Finds the endpoint serving a concrete request path and extracts its path
/// parameters (`/nodes/pve1/qemu/100/config` → `node=pve1`, `vmid=100`).
pub fn route(method: &str, path: &str) -> Option<(&'static EndpointSpec, Vec<(String, String)>)> {
    ENDPOINTS
        .iter()
        .filter(|e| e.method.eq_ignore_ascii_case(method))
        .find_map(|e| e.match_path(path).map(|p| (e, p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{pattern_compiles, Format, PropertyFormat};

    fn all_specs() -> Vec<&'static ParamSpec> {
        let mut specs: Vec<&'static ParamSpec> =
            ENDPOINTS.iter().flat_map(|e| e.param_specs()).collect();
        specs.extend(vm_config::SNAPSHOT_PROPS.iter());
        specs.extend(vm_config::CONFIG_DRIVES_FILE.iter());
        specs.extend([&drive::ALL_DRIVE_FORMAT].iter().flat_map(|f| f.all_keys()));
        let mut i = 0;
        while i < specs.len() {
            if let Some(Format::Property(f)) = specs[i].format {
                let f: &'static PropertyFormat = f;
                for k in f.all_keys() {
                    if !specs.iter().any(|s| std::ptr::eq(*s, k)) {
                        specs.push(k);
                    }
                }
            }
            i += 1;
        }
        specs
    }

    #[test]
    fn every_pattern_compiles() {
        for spec in all_specs() {
            if let Some(p) = spec.pattern {
                assert!(pattern_compiles(p), "{}: {p}", spec.name);
            }
        }
    }

    #[test]
    fn routes_and_paths() {
        let (ep, params) = route("PUT", "/nodes/pve1/qemu/100/config").unwrap();
        assert_eq!(ep.path, "/nodes/{node}/qemu/{vmid}/config");
        assert_eq!(
            params,
            [
                ("node".to_string(), "pve1".to_string()),
                ("vmid".into(), "100".into())
            ]
        );
        let (ep, _) = route(
            "GET",
            "/nodes/pve1/tasks/UPID:pve1:00000001:00000002:00000003:qmstart:100:root@pam:/status",
        )
        .unwrap();
        assert_eq!(ep.path, "/nodes/{node}/tasks/{upid}/status");
        assert!(route("GET", "/nodes/pve1/qemu/100/nonexistent").is_none());
        assert!(endpoint("post", "/nodes/{node}/qemu").is_some());
        assert_eq!(ENDPOINTS.len(), 50);
    }

    #[test]
    fn duplicate_uri_parameter() {
        let ep = endpoint("GET", "/nodes/{node}/qemu/{vmid}/config").unwrap();
        let path = [
            ("node".to_string(), "pve1".to_string()),
            ("vmid".into(), "100".into()),
        ];
        let err = ep
            .validate_request(&path, &[("vmid".into(), "101".into())])
            .unwrap_err();
        assert_eq!(
            err.errors["vmid"],
            "duplicate parameter (already defined in URI) with conflicting values!"
        );
        assert!(ep
            .validate_request(&path, &[("vmid".into(), "100".into())])
            .is_ok());
        assert!(ep
            .validate_request(
                &path,
                &[("current".into(), "1".into()), ("_dc".into(), "1".into())]
            )
            .is_ok());
    }
}
