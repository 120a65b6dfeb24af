//! Property strings: `virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1`.
//!
//! Parsing and printing follow `PVE::JSONSchema::parse_property_string` and
//! `print_property_string` step by step, including their quirks (which
//! duplicates are caught, how a bare value finds the default key, which keys
//! are printed first).

use std::collections::BTreeMap;
use std::fmt;

use super::check::{check_object, BoolCheck, ErrorMap};
use super::{Format, NamedFormat, ParamType, PropertyFormat};
use crate::size::format_size;
use crate::text::parse_boolean;

/// A parsed property string: canonical key → value. Aliases are resolved and
/// booleans normalised to `1`/`0`; other values are kept as written (as in
/// PVE, sizes stay `32G` until a caller converts them).
pub type PropertyMap = BTreeMap<String, String>;

/// A property string PVE would reject, carrying PVE's exception: a message
/// and, for per-key problems, the errors by key path. `Display` renders it
/// as PVE stringifies the exception (`format error\nnet0.tag: ...\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyStringError {
    /// The exception message, with PVE's trailing newline.
    pub message: String,
    /// Per-key errors (path → message), empty for whole-string errors.
    pub errors: BTreeMap<String, String>,
}

impl PropertyStringError {
    fn die(message: String) -> PropertyStringError {
        PropertyStringError {
            message,
            errors: BTreeMap::new(),
        }
    }
}

impl fmt::Display for PropertyStringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // PVE iterates a hash here (random order); sorted is the stable choice.
        for (k, v) in &self.errors {
            writeln!(f, "{k}: {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PropertyStringError {}

/// Parses `data` against `fmt` like PVE's `parse_property_string`.
pub fn parse_property_string(
    fmt: &PropertyFormat,
    data: &str,
) -> Result<PropertyMap, PropertyStringError> {
    parse_property_string_at(fmt, data, None)
}

/// `parse_property_string` with the parameter path PVE prefixes to per-key
/// errors (`net0.tag`).
pub(crate) fn parse_property_string_at(
    fmt: &PropertyFormat,
    data: &str,
    path: Option<&str>,
) -> Result<PropertyMap, PropertyStringError> {
    let mut res = PropertyMap::new();
    let mut default_key: Option<&str> = None;

    for part in data.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = split_key_value(part) {
            if res.contains_key(k) {
                return Err(PropertyStringError::die(format!(
                    "duplicate key in comma-separated list property: {k}\n"
                )));
            }
            let mut key = k;
            if let Some(alias) = fmt.alias(k) {
                if let Some(key_alias) = alias.key_alias {
                    if res.contains_key(key_alias) {
                        return Err(PropertyStringError::die(format!(
                            "key alias '{key_alias}' is already defined\n"
                        )));
                    }
                    res.insert(key_alias.to_string(), k.to_string());
                }
                key = alias.alias;
            }
            let Some(spec) = fmt.key(key) else {
                return Err(PropertyStringError::die(format!(
                    "invalid key in comma-separated list property: {key}\n"
                )));
            };
            let value = match (spec.ty, parse_boolean(v)) {
                (ParamType::Boolean, Some(b)) => if b { "1" } else { "0" }.to_string(),
                _ => v.to_string(),
            };
            res.insert(key.to_string(), value);
        } else if !part.contains('=') {
            if let Some(dk) = default_key {
                return Err(PropertyStringError::die(format!(
                    "duplicate key in comma-separated list property: {dk}\n"
                )));
            }
            let Some(dk) = fmt.default_key() else {
                return Err(PropertyStringError::die(
                    "value without key, but schema does not define a default key\n".to_string(),
                ));
            };
            default_key = Some(dk.name);
            // Perl tests truthiness: an existing "" or "0" is overwritten.
            let occupied = res.get(dk.name).is_some_and(|v| perl_true(v));
            if occupied {
                return Err(PropertyStringError::die(format!(
                    "duplicate key in comma-separated list property: {}\n",
                    dk.name
                )));
            }
            res.insert(dk.name.to_string(), part.to_string());
        } else {
            return Err(PropertyStringError::die(
                "missing key in comma-separated list property\n".to_string(),
            ));
        }
    }

    let mut errors = ErrorMap::new();
    check_object(path, fmt, &res, false, &mut errors, BoolCheck::Strict);
    if !errors.is_empty() {
        return Err(PropertyStringError {
            message: "format error\n".to_string(),
            errors,
        });
    }
    if let Some(validator) = fmt.validator {
        validator(&res).map_err(PropertyStringError::die)?;
    }
    Ok(res)
}

/// `$part =~ /^([^=]+)=(.+)$/`: the key runs to the first `=`, the value must
/// be non-empty and, like Perl's `.`, cannot span a newline (one trailing
/// newline is allowed by `$` and dropped).
fn split_key_value(part: &str) -> Option<(&str, &str)> {
    let (k, v) = part.split_once('=')?;
    let v = v.strip_suffix('\n').unwrap_or(v);
    if k.is_empty() || v.is_empty() || v.contains('\n') {
        return None;
    }
    Some((k, v))
}

fn perl_true(v: &str) -> bool {
    !v.is_empty() && v != "0"
}

/// Prints `data` like PVE's `print_property_string`: the default key's value
/// first without `key=` (combined as `model=macaddr` when a key alias links
/// them, e.g. `virtio=BC:24:11:...`), then the required keys, then the rest,
/// each group sorted. `disk-size` values given in bytes are printed with
/// [`format_size`].
pub fn print_property_string(
    fmt: &PropertyFormat,
    data: &PropertyMap,
) -> Result<String, PropertyStringError> {
    print_property_string_skip(fmt, data, &[])
}

/// [`print_property_string`] leaving out the keys in `skip` (qemu-server's
/// `print_drive` skips `index` and `interface`).
pub fn print_property_string_skip(
    fmt: &PropertyFormat,
    data: &PropertyMap,
    skip: &[&str],
) -> Result<String, PropertyStringError> {
    let mut errors = ErrorMap::new();
    check_object(None, fmt, data, true, &mut errors, BoolCheck::Strict);
    if !errors.is_empty() {
        return Err(PropertyStringError {
            message: "format error\n".to_string(),
            errors,
        });
    }
    if let Some(validator) = fmt.validator {
        validator(data).map_err(PropertyStringError::die)?;
    }

    print_ordered(fmt, data, skip, true)
}

/// Prints in PVE's order without validating first; values are not checked
/// for commas and keys outside the format are printed as `key=value`. The
/// typed views use this for `Display`, which must not fail.
pub(crate) fn print_unchecked(fmt: &PropertyFormat, data: &PropertyMap) -> String {
    print_ordered(fmt, data, &[], false).unwrap_or_default()
}

fn print_ordered(
    fmt: &PropertyFormat,
    data: &PropertyMap,
    skip: &[&str],
    strict: bool,
) -> Result<String, PropertyStringError> {
    let mut printer = Printer {
        fmt,
        data,
        strict,
        done: skip.iter().map(|s| s.to_string()).collect(),
        parts: Vec::new(),
    };
    if let Some(dk) = fmt.default_key() {
        printer.add(dk.name, true)?;
    }
    // PVE counts alias keys (no `optional` attribute) as required here.
    for key in data.keys() {
        if fmt
            .key(key)
            .map_or(fmt.alias(key).is_some(), |k| !k.optional)
        {
            printer.add(key, false)?;
        }
    }
    for key in data.keys() {
        printer.add(key, false)?;
    }
    let parts = printer.parts;
    Ok(parts.join(","))
}

/// The state of `print_property_string`'s `cond_add_key` loop.
struct Printer<'a> {
    fmt: &'a PropertyFormat,
    data: &'a PropertyMap,
    strict: bool,
    done: Vec<String>,
    parts: Vec<String>,
}

impl Printer<'_> {
    fn add(&mut self, key: &str, is_default: bool) -> Result<(), PropertyStringError> {
        if self.done.iter().any(|d| d == key) {
            return Ok(());
        }
        self.done.push(key.to_string());
        let Some(value) = self.data.get(key) else {
            return Ok(());
        };
        let fmt = self.fmt;
        if let Some(combine) = fmt.key_alias_target(key) {
            if let Some(combine_value) = self.data.get(combine) {
                let a = format_value(fmt, key, value, self.strict)?;
                let b = format_value(fmt, combine, combine_value, self.strict)?;
                self.parts.push(format!("{a}={b}"));
                self.done.push(combine.to_string());
                return Ok(());
            }
        }
        let real = fmt.alias(key).map_or(key, |a| a.alias);
        if self.strict && fmt.key(real).is_none() {
            return Err(PropertyStringError::die(format!("invalid key '{key}'\n")));
        }
        let text = format_value(fmt, real, value, self.strict)?;
        self.parts.push(if is_default {
            text
        } else {
            format!("{key}={text}")
        });
        Ok(())
    }
}

fn format_value(
    fmt: &PropertyFormat,
    key: &str,
    value: &str,
    strict: bool,
) -> Result<String, PropertyStringError> {
    let is_size = fmt
        .key(key)
        .is_some_and(|k| matches!(k.format, Some(Format::Named(NamedFormat::DiskSize))));
    if is_size {
        // PVE prints byte counts through format_size. It would numify any
        // other text ("32G" → 32); we print such text unchanged instead.
        if let Ok(bytes) = value.parse::<u64>() {
            return Ok(format_size(bytes));
        }
        return Ok(value.to_string());
    }
    if strict && value.contains(',') {
        return Err(PropertyStringError::die(format!(
            "illegal value with commas for {key}\n"
        )));
    }
    Ok(value.to_string())
}
