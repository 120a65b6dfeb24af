//! JSONSchema.pm's `check_prop`, `check_format` and `check_object` for the
//! subset PVE's API parameters and property strings use.

use std::collections::BTreeMap;

use super::perl::{intify, is_integer, is_number, numify, perl_num, schema_pattern_match};
use super::property_string::{parse_property_string_at, PropertyMap};
use super::{Format, ParamSpec, ParamType, PropertyFormat, Value};
use crate::text::{parse_boolean, split_list};

/// Errors by parameter path, as PVE collects them.
pub(crate) type ErrorMap = BTreeMap<String, String>;

/// PVE's `add_error`: a second error on the same path is appended after a
/// literal backslash-n (JSONSchema.pm joins with the single-quoted `'\n'`).
pub(crate) fn add_error(errors: &mut ErrorMap, path: &str, msg: impl Into<String>) {
    let path = if path.is_empty() { "_root" } else { path };
    let msg = msg.into();
    errors
        .entry(path.to_string())
        .and_modify(|old| {
            old.push_str("\\n");
            old.push_str(&msg);
        })
        .or_insert(msg);
}

/// How a boolean value is type-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolCheck {
    /// JSONSchema.pm's `check_type`: only `1` and `0`.
    Strict,
    /// `parse_boolean`: also `true`/`on`/`yes` and their negations.
    ParseBoolean,
}

/// `check_prop` for one scalar value: missing-ness, type, format, pattern,
/// lengths, bounds and enumeration, in PVE's order. Records an error and
/// returns `None` on the first failed check, otherwise the typed value.
pub(crate) fn check_prop(
    value: Option<&str>,
    spec: &ParamSpec,
    path: &str,
    errors: &mut ErrorMap,
    bools: BoolCheck,
) -> Option<Value> {
    let Some(value) = value else {
        if !spec.optional {
            add_error(errors, path, "property is missing and it is not optional");
        }
        return None;
    };

    let typed = match spec.ty {
        ParamType::Boolean => {
            let b = match bools {
                BoolCheck::Strict => match value {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                },
                BoolCheck::ParseBoolean => parse_boolean(value),
            };
            b.map(Value::Bool)
        }
        ParamType::Integer => is_integer(value).then(|| Value::Int(intify(value))),
        ParamType::Number => is_number(value).then(|| Value::Num(numify(value))),
        ParamType::String | ParamType::Array => Some(Value::Str(value.to_string())),
    };
    let Some(typed) = typed else {
        add_error(
            errors,
            path,
            format!("type check ('{}') failed - got '{value}'", spec.ty.as_str()),
        );
        return None;
    };

    if let Some(format) = &spec.format {
        if let Err(e) = check_format(format, value, path) {
            add_error(errors, path, format!("invalid format - {e}"));
            return None;
        }
    }

    if let Some(pattern) = spec.pattern {
        if !schema_pattern_match(pattern, value) {
            add_error(errors, path, "value does not match the regex pattern");
            return None;
        }
    }

    let len = value.chars().count();
    if let Some(max) = spec.max_length {
        if len > max {
            add_error(
                errors,
                path,
                format!("value may only be {max} characters long"),
            );
            return None;
        }
    }
    if let Some(min) = spec.min_length {
        if len < min {
            add_error(
                errors,
                path,
                format!("value must be at least {min} characters long"),
            );
            return None;
        }
    }

    if is_number(value) {
        let n = numify(value);
        if let Some(max) = spec.maximum {
            if n > max {
                let max = perl_num(max);
                add_error(
                    errors,
                    path,
                    format!("value must have a maximum value of {max}"),
                );
                return None;
            }
        }
        if let Some(min) = spec.minimum {
            if n < min {
                let min = perl_num(min);
                add_error(
                    errors,
                    path,
                    format!("value must have a minimum value of {min}"),
                );
                return None;
            }
        }
    }

    if let Some(allowed) = spec.enum_values {
        if !allowed.contains(&value) {
            add_error(
                errors,
                path,
                format!(
                    "value '{value}' does not have a value in the enumeration '{}'",
                    allowed.join(", ")
                ),
            );
            return None;
        }
    }

    Some(typed)
}

/// PVE's `check_format`: `Ok` or the text of the exception (`$@`), which
/// the caller prefixes with `invalid format - `.
pub(crate) fn check_format(format: &Format, value: &str, path: &str) -> Result<(), String> {
    match format {
        Format::Named(named) => named.check(value),
        Format::List(named) => split_list(value).iter().try_for_each(|v| named.check(v)),
        Format::Property(fmt) => {
            let path = (!path.is_empty()).then_some(path);
            parse_property_string_at(fmt, value, path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// PVE's `check_object` for a property-string map: every key of the format
/// is checked, `requires` is enforced, and unknown keys are reported unless
/// `additional` allows them.
pub(crate) fn check_object(
    path: Option<&str>,
    fmt: &PropertyFormat,
    data: &PropertyMap,
    additional: bool,
    errors: &mut ErrorMap,
    bools: BoolCheck,
) {
    let sub = |k: &str| match path {
        Some(p) => format!("{p}.{k}"),
        None => k.to_string(),
    };
    for key in fmt.all_keys() {
        let value = data.get(key.name).map(String::as_str);
        check_prop(value, key, &sub(key.name), errors, bools);
    }
    for k in data.keys() {
        if let Some(spec) = fmt.key(k) {
            if let Some(requires) = spec.requires {
                if !data.contains_key(requires) {
                    add_error(
                        errors,
                        &sub(requires),
                        format!("missing property - '{}' requires this property", sub(k)),
                    );
                }
            }
            continue;
        }
        if !additional {
            add_error(
                errors,
                &sub(k),
                "property is not defined in schema and the schema does not allow additional properties",
            );
        }
    }
}
