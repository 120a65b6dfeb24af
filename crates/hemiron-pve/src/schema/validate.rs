//! Validation of a request's parameters against an endpoint's specs, the way
//! `PVE::JSONSchema::validate` checks them before a handler runs.

use std::collections::BTreeMap;

use super::check::{add_error, check_prop, BoolCheck, ErrorMap};
use super::ParamSpec;

/// A validated parameter value, typed by its spec.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean parameter.
    Bool(bool),
    /// An integer parameter (saturated to `i64` where Perl would go to floats).
    Int(i64),
    /// A number parameter.
    Num(f64),
    /// A string parameter, verbatim (property strings are not expanded).
    Str(String),
}

impl Value {
    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value as a number (integers convert).
    pub fn as_num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// Parameters that passed validation, keyed by their actual name (`net0`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct ValidatedParams {
    values: BTreeMap<String, Value>,
}

impl ValidatedParams {
    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Whether `name` was given.
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_int)
    }

    /// A number parameter (integers convert).
    pub fn num(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_num)
    }

    /// All parameters in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Removes and returns `name`, for handlers that consume control
    /// parameters (`vmid`, `start`, ...) and keep the rest as config.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.values.remove(name)
    }

    /// The underlying map.
    pub fn into_inner(self) -> BTreeMap<String, Value> {
        self.values
    }
}

/// Rejected parameters, in the shape PVE returns them: HTTP 400 with message
/// `Parameter verification failed.` and `{"errors": {param: message}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("Parameter verification failed.")]
#[serde(transparent)]
pub struct ParamErrors {
    /// Message by parameter name, PVE's texts verbatim.
    pub errors: BTreeMap<String, String>,
}

impl ParamErrors {
    /// The single-error form PVE's `raise_param_exc({$p => $msg})` produces.
    pub fn single(param: impl Into<String>, msg: impl Into<String>) -> ParamErrors {
        ParamErrors {
            errors: BTreeMap::from([(param.into(), msg.into())]),
        }
    }
}

impl IntoIterator for ParamErrors {
    type Item = (String, String);
    type IntoIter = std::collections::btree_map::IntoIter<String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ParamErrors {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Something [`validate`] can check parameters against: a flat list of
/// specs, or specs in groups as [`crate::spec::EndpointSpec::params`] holds them.
pub trait SpecSource {
    /// The specs, as groups.
    fn groups(&self) -> Vec<&[ParamSpec]>;
}

impl SpecSource for [ParamSpec] {
    fn groups(&self) -> Vec<&[ParamSpec]> {
        vec![self]
    }
}

impl SpecSource for [&[ParamSpec]] {
    fn groups(&self) -> Vec<&[ParamSpec]> {
        self.to_vec()
    }
}

/// Validates raw string parameters against `spec` (a slice of specs, or of
/// spec groups). See [`validate_groups`].
pub fn validate<S: SpecSource + ?Sized>(
    spec: &S,
    input: &[(String, String)],
) -> Result<ValidatedParams, ParamErrors> {
    validate_groups(&spec.groups(), input)
}

/// Validates raw string parameters (as decoded from a query string or form
/// body) against specs given in groups, reporting every problem at once.
///
/// * Parameters not in the specs are rejected ("property is not defined in
///   schema and the schema does not allow additional properties"); indexed
///   specs accept `net0`..`net31` for `net[n]`, never `net01` or `net32`.
/// * A key given more than once is joined with NUL, as PVE's
///   `decode_urlencoded` does; such a value then only passes `-list` formats.
///   (Callers merge query over body parameters first, as PVE does.)
/// * Booleans accept everything `parse_boolean` accepts (`True`, `yes`,
///   `on`, ...). PVE's API checks only `1`/`0` here, but proxmoxer sends
///   Python booleans as `True`/`False`, so we accept them deliberately.
/// * Messages are JSONSchema.pm's, including the trailing newline PVE keeps
///   on messages that come from a format check.
pub fn validate_groups(
    groups: &[&[ParamSpec]],
    input: &[(String, String)],
) -> Result<ValidatedParams, ParamErrors> {
    let mut params: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in input {
        params
            .entry(k.as_str())
            .and_modify(|old| {
                old.push('\0');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }

    let lookup = |name: &str| {
        groups
            .iter()
            .flat_map(|g| g.iter())
            .find(|s| s.matches_key(name))
    };

    let mut errors = ErrorMap::new();
    let mut values = BTreeMap::new();
    for spec in groups.iter().flat_map(|g| g.iter()) {
        if spec.index_count == 0 {
            let value = params.get(spec.name).map(String::as_str);
            if let Some(v) =
                check_prop(value, spec, spec.name, &mut errors, BoolCheck::ParseBoolean)
            {
                values.insert(spec.name.to_string(), v);
            }
        } else {
            for (name, value) in params.iter().filter(|(k, _)| spec.matches_key(k)) {
                if let Some(v) = check_prop(
                    Some(value),
                    spec,
                    name,
                    &mut errors,
                    BoolCheck::ParseBoolean,
                ) {
                    values.insert((*name).to_string(), v);
                }
            }
        }
    }

    for name in params.keys() {
        match lookup(name) {
            Some(spec) => {
                if let Some(requires) = spec.requires {
                    if !params.contains_key(requires) {
                        add_error(
                            &mut errors,
                            requires,
                            format!("missing property - '{name}' requires this property"),
                        );
                    }
                }
            }
            None => add_error(
                &mut errors,
                name,
                "property is not defined in schema and the schema does not allow additional properties",
            ),
        }
    }

    if errors.is_empty() {
        Ok(ValidatedParams { values })
    } else {
        Err(ParamErrors { errors })
    }
}
