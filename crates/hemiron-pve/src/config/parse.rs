//! Reading a config file (`PVE::QemuServer::parse_vm_config`).

use super::{parse_pending_delete, PendingSection, Section, VmConfig};
use crate::schema::{check_format, full_match, NamedFormat, ParamSpec, ParamType};
use crate::spec::config_file_spec;
use crate::text::decode_text;

/// A line PVE would reject (strict mode) or warn about and skip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseConfigError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ParseConfigErrorKind,
}

/// What went wrong on a line (messages as qemu-server words them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseConfigErrorKind {
    /// A second `[PENDING]`.
    #[error("duplicate section: pending")]
    DuplicatePending,
    /// A second `[special:<name>]`.
    #[error("duplicate special section: {0}")]
    DuplicateSpecial(String),
    /// A second `[<snapshot>]`.
    #[error("duplicate snapshot section: {0}")]
    DuplicateSnapshot(String),
    /// A `[...]` header that is none of the above; its lines are skipped.
    #[error("skipping unknown section: '{0}'")]
    UnknownSection(String),
    /// `delete:` outside `[PENDING]`.
    #[error("property 'delete' is only allowed in [PENDING]")]
    DeleteOutsidePending,
    /// A value `check_type` rejects (unknown key, wrong type, bad format).
    #[error("unable to parse value of '{key}' - {message}")]
    CheckValue {
        /// The key.
        key: String,
        /// qemu-server's message.
        message: String,
    },
    /// A line that is no comment, header or `key: value`.
    #[error("unable to parse config: {0}")]
    ParseLine(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Current {
    Main,
    Pending,
    Special(String),
    Snapshot(String),
}

/// Parses a config file, failing on the first line PVE's strict mode
/// rejects. Never panics, whatever the input.
pub fn parse(raw: &str) -> Result<VmConfig, ParseConfigError> {
    let mut errors = Vec::new();
    let conf = parse_impl(raw, &mut |e| {
        errors.push(e);
        false
    });
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(conf),
    }
}

/// Parses like PVE's default (non-strict) mode: problems are reported and
/// the offending lines skipped.
pub fn parse_lenient(raw: &str) -> (VmConfig, Vec<ParseConfigError>) {
    let mut errors = Vec::new();
    let conf = parse_impl(raw, &mut |e| {
        errors.push(e);
        true
    });
    (conf, errors)
}

struct Parser<'a> {
    conf: VmConfig,
    current: Option<Current>,
    descr: Option<String>,
    /// Returns whether to continue after an error.
    on_error: &'a mut dyn FnMut(ParseConfigError) -> bool,
    stopped: bool,
}

impl Parser<'_> {
    fn section_mut(&mut self) -> Option<&mut Section> {
        match self.current.as_ref()? {
            Current::Main => Some(&mut self.conf.main),
            Current::Pending => self.conf.pending.as_mut().map(|p| &mut p.section),
            Current::Special(n) => self.conf.special.get_mut(n),
            Current::Snapshot(n) => self.conf.snapshots.get_mut(n),
        }
    }

    /// `$finish_description`: the collected comment lines, trailing
    /// whitespace removed, become the description of the section they
    /// were read in.
    fn finish_description(&mut self) {
        if let Some(mut d) = self.descr.take() {
            d.truncate(d.trim_end().len());
            if let Some(s) = self.section_mut() {
                s.description = Some(d);
            }
        }
    }

    fn error(&mut self, line: usize, kind: ParseConfigErrorKind) {
        if !(self.on_error)(ParseConfigError { line, kind }) {
            self.stopped = true;
        }
    }
}

fn parse_impl(raw: &str, on_error: &mut dyn FnMut(ParseConfigError) -> bool) -> VmConfig {
    let mut p = Parser {
        conf: VmConfig::default(),
        current: Some(Current::Main),
        descr: None,
        on_error,
        stopped: false,
    };
    for (idx, line) in raw.split('\n').enumerate() {
        if p.stopped {
            break;
        }
        let lineno = idx + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(header) = section_header(line) {
            // The description belongs to the section it was read in.
            p.finish_description();
            match header {
                Header::Pending => {
                    if p.conf.pending.is_some() {
                        p.error(lineno, ParseConfigErrorKind::DuplicatePending);
                    }
                    p.conf.pending = Some(PendingSection::default());
                    p.current = Some(Current::Pending);
                }
                Header::Special(name) => {
                    if p.conf.special.contains_key(&name) {
                        p.error(lineno, ParseConfigErrorKind::DuplicateSpecial(name.clone()));
                    }
                    p.conf.special.insert(name.clone(), Section::default());
                    p.current = Some(Current::Special(name));
                }
                Header::Snapshot(name) => {
                    if p.conf.snapshots.contains_key(&name) {
                        p.error(
                            lineno,
                            ParseConfigErrorKind::DuplicateSnapshot(name.clone()),
                        );
                    }
                    p.conf.snapshots.insert(name.clone(), Section::default());
                    p.current = Some(Current::Snapshot(name));
                }
                Header::Unknown(name) => {
                    p.current = None;
                    p.error(lineno, ParseConfigErrorKind::UnknownSection(name));
                }
            }
            continue;
        }
        let Some(current) = p.current.clone() else {
            continue;
        };
        parse_line(&mut p, &current, lineno, line);
    }
    p.finish_description();
    // qemu-server drops a snapstate of the main section "just to be sure".
    p.conf.main.props.remove("snapstate");
    p.conf
}

fn parse_line(p: &mut Parser<'_>, current: &Current, lineno: usize, line: &str) {
    if let Some(comment) = line.strip_prefix('#') {
        let d = p.descr.get_or_insert_with(String::new);
        d.push_str(&decode_text(comment));
        d.push('\n');
        return;
    }
    if let Some(text) = value_after(line, "description") {
        p.descr
            .get_or_insert_with(String::new)
            .push_str(&decode_text(text));
        return;
    }
    if let Some(state) = snapstate(line) {
        if let Some(s) = p.section_mut() {
            s.props.insert("snapstate".into(), state.into());
        }
        return;
    }
    if let Some(args) = value_after(line, "args") {
        // `args` bypasses check_type (no quote stripping).
        if let Some(s) = p.section_mut() {
            s.props.insert("args".into(), args.to_string());
        }
        return;
    }
    if let Some(list) = value_after(line, "delete") {
        match (current, p.conf.pending.as_mut()) {
            (Current::Pending, Some(pending)) => pending.delete = parse_pending_delete(list),
            _ => p.error(lineno, ParseConfigErrorKind::DeleteOutsidePending),
        }
        return;
    }
    let Some((key, value)) = key_value(line) else {
        p.error(lineno, ParseConfigErrorKind::ParseLine(line.to_string()));
        return;
    };
    let checked = match current {
        // informative only, PVE stores it unchecked
        Current::Special(name) if name == "cloudinit" => Ok(value.to_string()),
        Current::Special(name) if name == "fleecing" => check_fleecing(key, value),
        Current::Special(_) => Err("check_type: no schema defined\n".to_string()),
        _ => check_type(key, value),
    };
    match checked {
        Ok(value) => {
            let key = if key == "cdrom" { "ide2" } else { key };
            if let Some(s) = p.section_mut() {
                // A `description:` line that only the generic rule matched
                // lands in PVE's hash under `description`, like the comments.
                if key == "description" {
                    s.description = Some(value);
                } else {
                    s.props.insert(key.to_string(), value);
                }
            }
        }
        Err(message) => p.error(
            lineno,
            ParseConfigErrorKind::CheckValue {
                key: key.to_string(),
                message,
            },
        ),
    }
}

enum Header {
    Pending,
    Special(String),
    Snapshot(String),
    Unknown(String),
}

/// Recognises `[PENDING]`, `[special:cloudinit|fleecing]`, `[snapname]`
/// and any other `[...]` line, in qemu-server's order.
fn section_header(line: &str) -> Option<Header> {
    let inner = line.trim_end().strip_prefix('[')?.strip_suffix(']')?;
    if inner.contains(']') {
        return None;
    }
    if inner.eq_ignore_ascii_case("pending") {
        return Some(Header::Pending);
    }
    if let Some(name) = inner
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("special:"))
        .and(inner.get(8..))
    {
        if name.eq_ignore_ascii_case("cloudinit") || name.eq_ignore_ascii_case("fleecing") {
            return Some(Header::Special(name.to_string()));
        }
    }
    if full_match("(?i)[a-z][a-z0-9_-]+", inner) {
        return Some(Header::Snapshot(inner.to_string()));
    }
    Some(Header::Unknown(inner.to_string()))
}

/// `^<key>:\s*(.*\S)\s*$`: the trimmed, non-empty value of a `key:` line.
fn value_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?.strip_prefix(':')?;
    let value = rest.trim();
    (!value.is_empty()).then_some(value)
}

/// `m/snapstate:\s*(prepare|delete)\s*$/` (not anchored at the start, as in PVE).
fn snapstate(line: &str) -> Option<&'static str> {
    let trimmed = line.trim_end();
    let pos = trimmed.rfind("snapstate:")?;
    match trimmed[pos + "snapstate:".len()..].trim_start() {
        "prepare" => Some("prepare"),
        "delete" => Some("delete"),
        _ => None,
    }
}

/// `^([a-z][a-z_\-]*\d*):\s*(.+?)\s*$`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = line.split_once(':')?;
    let letters_end = key
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == '-'))
        .unwrap_or(key.len());
    let (letters, digits) = key.split_at(letters_end);
    let key_ok = letters.starts_with(|c: char| c.is_ascii_lowercase())
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !key_ok || rest.is_empty() {
        return None;
    }
    let value = rest.trim();
    if !value.is_empty() {
        return Some((key, value));
    }
    // Only whitespace: `\s*` gives back its last character to `(.+?)`.
    let last = rest.char_indices().last().map_or(0, |(i, _)| i);
    Some((key, &rest[last..]))
}

/// qemu-server's `check_type` against the config schema: `Ok` with the
/// normalised value, or the message qemu-server dies with.
pub(crate) fn check_type(key: &str, value: &str) -> Result<String, String> {
    let spec = config_file_spec(key).ok_or_else(|| format!("unknown setting '{key}'\n"))?;
    check_type_with(spec, value)
}

fn check_fleecing(key: &str, value: &str) -> Result<String, String> {
    const FLEECING: ParamSpec = ParamSpec::string("fleecing-images")
        .optional()
        .list(NamedFormat::PveVolumeId);
    if key != "fleecing-images" {
        return Err(format!("unknown setting '{key}'\n"));
    }
    check_type_with(&FLEECING, value)
}

fn check_type_with(spec: &ParamSpec, value: &str) -> Result<String, String> {
    if value.contains(['\n', '\r']) {
        return Err("property contains a line feed\n".to_string());
    }
    match spec.ty {
        ParamType::Boolean => match crate::text::parse_boolean(value) {
            Some(true) => Ok("1".into()),
            Some(false) => Ok("0".into()),
            None => Err(format!("type check ('boolean') failed - got '{value}'\n")),
        },
        ParamType::Integer => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("type check ('integer') failed - got '{value}'\n"));
            }
            // int($1): drop leading zeros
            let trimmed = value.trim_start_matches('0');
            Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
        }
        ParamType::Number => {
            if full_match(r"(\d+)(\.\d+)?", value) {
                Ok(value.to_string())
            } else {
                Err(format!("type check ('number') failed - got '{value}'\n"))
            }
        }
        ParamType::String => match &spec.format {
            Some(format) => {
                check_format(format, value, "")?;
                Ok(value.to_string())
            }
            None => Ok(strip_quotes(value).to_string()),
        },
        // No config key is a list.
        ParamType::Array => Ok(value.to_string()),
    }
}

/// `s/^\"(.*)\"$/$1/`
fn strip_quotes(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}
