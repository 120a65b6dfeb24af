//! The bits of Perl semantics PVE's validation leans on: `is_integer`,
//! `is_number`, numeric stringification, and `m/^$pattern$/` matching (where
//! `$` also matches before a single trailing newline).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;

/// PVE's `is_integer`: `^[+-]?\d+$`.
pub(crate) fn is_integer(value: &str) -> bool {
    let v = strip_nl(value);
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// PVE's `is_number`: `^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$`.
pub(crate) fn is_number(value: &str) -> bool {
    let v = strip_nl(value);
    let v = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (mantissa, exponent) = match v.find(['e', 'E']) {
        Some(pos) => (&v[..pos], Some(&v[pos + 1..])),
        None => (v, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((i, f)) => (!i.is_empty() || !f.is_empty()) && digits(i) && digits(f),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// Perl's numeric value of a string that passed [`is_number`].
pub(crate) fn numify(value: &str) -> f64 {
    let v = strip_nl(value);
    let v = v.strip_prefix('+').unwrap_or(v);
    // Rust rejects "1." and ".5"-style forms with an exponent in a few cases;
    // normalise them so the numeric value matches Perl's.
    let normalized = if let Some(rest) = v.strip_prefix("-.") {
        format!("-0.{rest}")
    } else if let Some(rest) = v.strip_prefix('.') {
        format!("0.{rest}")
    } else {
        v.replace(".e", ".0e").replace(".E", ".0E")
    };
    normalized.parse::<f64>().unwrap_or(0.0)
}

/// Perl's integer value of a string that passed [`is_integer`], saturating
/// where Perl would switch to floating point.
pub(crate) fn intify(value: &str) -> i64 {
    let v = strip_nl(value);
    let v = v.strip_prefix('+').unwrap_or(v);
    match v.parse::<i64>() {
        Ok(n) => n,
        Err(_) if v.starts_with('-') => i64::MIN,
        Err(_) => i64::MAX,
    }
}

/// How Perl prints a number (`128`, `0.1`, `999999999`).
pub(crate) fn perl_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn strip_nl(value: &str) -> &str {
    value.strip_suffix('\n').unwrap_or(value)
}

/// `$value =~ m/^(?:$re)$/`: a whole-value match of a regex written for this
/// crate (grouped, so alternations stay inside the anchors).
pub(crate) fn full_match(re: &str, value: &str) -> bool {
    cached(&format!("^(?:{re})\\n?$"), value)
}

/// `$value =~ m/^$pattern$/` exactly as JSONSchema.pm does it for a schema's
/// `pattern`: the pattern is interpolated *without* grouping, so a top-level
/// alternation binds the anchors to its first and last branch only.
pub(crate) fn schema_pattern_match(pattern: &str, value: &str) -> bool {
    cached(&format!("^{pattern}\\n?$"), value)
}

/// Whether a schema pattern compiles (checked for every spec in the tests).
#[cfg(test)]
pub(crate) fn pattern_compiles(pattern: &str) -> bool {
    compile(&format!("^{pattern}\\n?$")).is_some()
}

fn compile(re: &str) -> Option<Regex> {
    regex::RegexBuilder::new(re)
        .size_limit(64 << 20)
        .build()
        .ok()
}

fn cached(re: &str, value: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let regex = {
        let mut map = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(re.to_string())
            .or_insert_with(|| compile(re))
            .clone()
    };
    // A regex that fails to compile is a bug in a spec table (the tests
    // compile every one); treat it as "does not match" rather than panic.
    regex.is_some_and(|r| r.is_match(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_numbers() {
        for i in ["0", "+5", "-12", "007", "12\n"] {
            assert!(is_integer(i), "{i:?}");
        }
        for i in ["", "+", "1.0", "1e3", " 1", "1 ", "abc", "12\n\n"] {
            assert!(!is_integer(i), "{i:?}");
        }
        for n in ["1", "1.5", "1.", ".5", "-2e10", "+3E-2", "5\n"] {
            assert!(is_number(n), "{n:?}");
        }
        for n in ["", ".", "e5", "1e", "1.2.3", "0x10", "inf", "NaN"] {
            assert!(!is_number(n), "{n:?}");
        }
        assert_eq!(numify("1."), 1.0);
        assert_eq!(numify("-.5"), -0.5);
        assert_eq!(numify("1.e2"), 100.0);
        assert_eq!(intify("+42"), 42);
        assert_eq!(intify("99999999999999999999"), i64::MAX);
        assert_eq!(perl_num(128.0), "128");
        assert_eq!(perl_num(0.1), "0.1");
    }

    #[test]
    fn anchoring_like_perl() {
        assert!(full_match("a|b", "b"));
        assert!(!full_match("a|b", "ab"));
        assert!(full_match("abc", "abc\n"));
        assert!(!full_match("abc", "abc\n\n"));
        // Ungrouped interpolation: `^/dev/parport\d+|/dev/usb/lp\d+$`.
        let p = r"/dev/parport\d+|/dev/usb/lp\d+";
        assert!(schema_pattern_match(p, "/dev/parport0"));
        assert!(schema_pattern_match(p, "/dev/parport0junk"));
        assert!(schema_pattern_match(p, "junk/dev/usb/lp1"));
        assert!(!schema_pattern_match(p, "junk"));
    }
}
