//! A Rust model of PVE's JSON-schema subset (`PVE::JSONSchema`).
//!
//! A [`ParamSpec`] describes one API parameter, one VM config property or one
//! key of a property string, with PVE's attributes: `type`, `optional`,
//! `default`, `minimum`/`maximum`, `enum`, `pattern`, `maxLength`, `format`,
//! `requires`, and for property-string keys `default_key`. A `format` is
//! either a named check implemented in code ([`NamedFormat`], optionally as a
//! `-list`), or a [`PropertyFormat`] (a property string such as `net[n]`).
//!
//! Constraints sit on the spec rather than inside [`ParamType`] because PVE
//! applies them to any type: `vmid` is an *integer* with the `pve-vmid`
//! format, and `pattern`/`enum` are checked on the textual value whatever
//! the type.
//!
//! [`validate`] checks a request's raw string parameters against a list of
//! specs and reports every problem at once, with JSONSchema.pm's messages;
//! [`parse_property_string`] and [`print_property_string`] mirror PVE's
//! functions of the same names.

mod check;
mod formats;
mod perl;
mod property_string;
mod validate;

pub use formats::NamedFormat;
pub use property_string::{
    parse_property_string, print_property_string, print_property_string_skip, PropertyMap,
    PropertyStringError,
};
pub use validate::{validate, validate_groups, ParamErrors, SpecSource, ValidatedParams, Value};

pub(crate) use check::check_format;
#[cfg(test)]
pub(crate) use perl::pattern_compiles;
pub(crate) use perl::{full_match, numify};
pub(crate) use property_string::print_unchecked;

/// The JSON-schema type of a parameter or property-string key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// `1|0` (the API also takes `true`/`on`/`yes`, see [`validate`]).
    Boolean,
    /// `^[+-]?\d+$`.
    Integer,
    /// Perl's `is_number`, e.g. `0.1`, `1e3`.
    Number,
    /// Any text.
    String,
    /// A list of strings: the parameter given once per item (the items arrive joined with
    /// NUL, see [`validate`]).
    Array,
}

impl ParamType {
    /// The name PVE uses in messages and schema dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Boolean => "boolean",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::String => "string",
            ParamType::Array => "array",
        }
    }
}

/// A schema `default`. Several PVE defaults are descriptive text even on
/// numeric types (`cpuunits`: "cgroup v1: 1024, cgroup v2: 100"); those are
/// kept verbatim as [`DefaultValue::Str`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultValue {
    /// A boolean default (PVE writes 0/1).
    Bool(bool),
    /// An integer default.
    Int(i64),
    /// A non-integer numeric default.
    Num(f64),
    /// A string default, or a descriptive text.
    Str(&'static str),
}

/// A `format` attribute.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// A named format checked in code, e.g. `pve-vmid`.
    Named(NamedFormat),
    /// `<name>-list`: every element of `split_list(value)` must pass `<name>`.
    List(NamedFormat),
    /// A property string, inline or registered under a name.
    Property(&'static PropertyFormat),
}

impl Format {
    /// The format's name as PVE's schema dump shows it, `None` for inline
    /// property-string formats (which the dump shows as an object).
    pub fn name(&self) -> Option<String> {
        match self {
            Format::Named(n) => Some(n.name().to_string()),
            Format::List(n) => Some(format!("{}-list", n.name())),
            Format::Property(p) => p.name.map(str::to_string),
        }
    }
}

/// One parameter, config property or property-string key.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The name; indexed properties use PVE's dump notation `net[n]`.
    pub name: &'static str,
    /// The type.
    pub ty: ParamType,
    /// Whether the value may be absent.
    pub optional: bool,
    /// The documented default, if any.
    pub default: Option<DefaultValue>,
    /// Inclusive lower bound, checked when the value is numeric.
    pub minimum: Option<f64>,
    /// Inclusive upper bound, checked when the value is numeric.
    pub maximum: Option<f64>,
    /// Allowed values.
    pub enum_values: Option<&'static [&'static str]>,
    /// A regex the whole value must match (Perl syntax made Rust-compatible).
    pub pattern: Option<&'static str>,
    /// Minimum length in characters.
    pub min_length: Option<usize>,
    /// Maximum length in characters.
    pub max_length: Option<usize>,
    /// A named or property-string format.
    pub format: Option<Format>,
    /// Another parameter that must be present when this one is.
    pub requires: Option<&'static str>,
    /// In a property string: the key a bare value (without `key=`) belongs to.
    pub default_key: bool,
    /// For `name[n]`: how many indices exist (`net[n]` has 32: `net0`..`net31`).
    pub index_count: u16,
}

impl ParamSpec {
    const fn new(name: &'static str, ty: ParamType) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            optional: false,
            default: None,
            minimum: None,
            maximum: None,
            enum_values: None,
            pattern: None,
            min_length: None,
            max_length: None,
            format: None,
            requires: None,
            default_key: false,
            index_count: 0,
        }
    }

    /// A required boolean.
    pub const fn boolean(name: &'static str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Boolean)
    }

    /// A required integer.
    pub const fn integer(name: &'static str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Integer)
    }

    /// A required number.
    pub const fn number(name: &'static str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Number)
    }

    /// A required string.
    pub const fn string(name: &'static str) -> ParamSpec {
        ParamSpec::new(name, ParamType::String)
    }

    /// A required list of strings.
    pub const fn array(name: &'static str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Array)
    }

    /// Marks the value optional.
    pub const fn optional(mut self) -> ParamSpec {
        self.optional = true;
        self
    }

    /// Sets a boolean default.
    pub const fn default_bool(mut self, v: bool) -> ParamSpec {
        self.default = Some(DefaultValue::Bool(v));
        self
    }

    /// Sets an integer default.
    pub const fn default_int(mut self, v: i64) -> ParamSpec {
        self.default = Some(DefaultValue::Int(v));
        self
    }

    /// Sets a non-integer numeric default.
    pub const fn default_num(mut self, v: f64) -> ParamSpec {
        self.default = Some(DefaultValue::Num(v));
        self
    }

    /// Sets a string (or descriptive) default.
    pub const fn default_str(mut self, v: &'static str) -> ParamSpec {
        self.default = Some(DefaultValue::Str(v));
        self
    }

    /// Sets an integral minimum.
    pub const fn min(mut self, v: i64) -> ParamSpec {
        self.minimum = Some(v as f64);
        self
    }

    /// Sets an integral maximum.
    pub const fn max(mut self, v: i64) -> ParamSpec {
        self.maximum = Some(v as f64);
        self
    }

    /// Sets a fractional minimum.
    pub const fn min_f(mut self, v: f64) -> ParamSpec {
        self.minimum = Some(v);
        self
    }

    /// Sets a fractional maximum.
    pub const fn max_f(mut self, v: f64) -> ParamSpec {
        self.maximum = Some(v);
        self
    }

    /// Restricts the value to an enumeration.
    pub const fn enums(mut self, v: &'static [&'static str]) -> ParamSpec {
        self.enum_values = Some(v);
        self
    }

    /// Sets the regex the whole value must match.
    pub const fn pattern(mut self, v: &'static str) -> ParamSpec {
        self.pattern = Some(v);
        self
    }

    /// Sets the maximum length.
    pub const fn max_len(mut self, v: usize) -> ParamSpec {
        self.max_length = Some(v);
        self
    }

    /// Sets the minimum length.
    pub const fn min_len(mut self, v: usize) -> ParamSpec {
        self.min_length = Some(v);
        self
    }

    /// Sets a named format.
    pub const fn named(mut self, v: NamedFormat) -> ParamSpec {
        self.format = Some(Format::Named(v));
        self
    }

    /// Sets a `<name>-list` format.
    pub const fn list(mut self, v: NamedFormat) -> ParamSpec {
        self.format = Some(Format::List(v));
        self
    }

    /// Sets a property-string format.
    pub const fn prop(mut self, v: &'static PropertyFormat) -> ParamSpec {
        self.format = Some(Format::Property(v));
        self
    }

    /// Declares that `other` must be present whenever this is.
    pub const fn requires(mut self, other: &'static str) -> ParamSpec {
        self.requires = Some(other);
        self
    }

    /// Makes this the property string's default key.
    pub const fn default_key(mut self) -> ParamSpec {
        self.default_key = true;
        self
    }

    /// Declares an indexed property `prefix[n]` with `count` indices.
    pub const fn indexed(mut self, count: u16) -> ParamSpec {
        self.index_count = count;
        self
    }

    /// For an indexed spec (`net[n]`), the prefix (`net`).
    pub fn index_prefix(&self) -> Option<&'static str> {
        if self.index_count == 0 {
            return None;
        }
        self.name.strip_suffix("[n]")
    }

    /// Whether `key` (e.g. `net3`) is an instance of this spec.
    pub fn matches_key(&self, key: &str) -> bool {
        match self.index_prefix() {
            None => self.name == key,
            Some(prefix) => key
                .strip_prefix(prefix)
                .and_then(parse_index)
                .is_some_and(|i| i < u32::from(self.index_count)),
        }
    }
}

/// Parses the decimal index of an indexed key the way PVE names them:
/// `net0`, `net12`, never `net01`.
pub(crate) fn parse_index(digits: &str) -> Option<u32> {
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// A property-string key that stands for another key (`volume` → `file`),
/// optionally storing its own name in a third key: with
/// `virtio => { alias => 'macaddr', keyAlias => 'model' }`, `virtio=MAC`
/// means `model=virtio,macaddr=MAC`.
#[derive(Debug, Clone, Copy)]
pub struct KeyAlias {
    /// The alias key as written.
    pub name: &'static str,
    /// The key that receives the value.
    pub alias: &'static str,
    /// The key that receives the alias's own name.
    pub key_alias: Option<&'static str>,
}

/// A check attached to a named property-string format; `Err` carries the
/// message PVE dies with.
pub type FormatValidator = fn(&PropertyMap) -> Result<(), String>;

/// A property-string format: `key=value` pairs separated by commas, with an
/// optional default key whose `key=` may be left out.
#[derive(Debug)]
pub struct PropertyFormat {
    /// The registered format name (`pve-qm-ipconfig`); `None` when the format
    /// is written inline in a property's schema (`net[n]`).
    pub name: Option<&'static str>,
    /// The keys, in groups so that formats can share them (all drive buses
    /// share the base drive keys).
    pub keys: &'static [&'static [ParamSpec]],
    /// Alias keys.
    pub aliases: &'static [KeyAlias],
    /// A check PVE attaches to a named format, run after the keys are valid.
    pub validator: Option<FormatValidator>,
}

impl PropertyFormat {
    /// All real (non-alias) keys.
    pub fn all_keys(&self) -> impl Iterator<Item = &'static ParamSpec> + '_ {
        self.keys.iter().flat_map(|group| group.iter())
    }

    /// The key named `name`.
    pub fn key(&self, name: &str) -> Option<&'static ParamSpec> {
        self.all_keys().find(|k| k.name == name)
    }

    /// The alias named `name`.
    pub fn alias(&self, name: &str) -> Option<&KeyAlias> {
        self.aliases.iter().find(|a| a.name == name)
    }

    /// The default key, if the format has one.
    pub fn default_key(&self) -> Option<&'static ParamSpec> {
        self.all_keys().find(|k| k.default_key)
    }

    /// For each key that aliases store their own name in (`model`), the key
    /// that receives the aliased value (`macaddr`).
    pub(crate) fn key_alias_target(&self, key: &str) -> Option<&'static str> {
        self.aliases
            .iter()
            .find(|a| a.key_alias == Some(key))
            .map(|a| a.alias)
    }
}
