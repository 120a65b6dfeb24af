//! Disk sizes as PVE parses and prints them (`size=32G` in drive strings, the
//! `size` parameter of `PUT .../resize`).

use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1024;

/// PVE's `parse_size`: `<n>[.<frac>][K|M|G|T]` (binary units, no unit means
/// bytes), truncated to whole bytes. `None` if the text does not match.
pub fn parse_size(value: &str) -> Option<u64> {
    // Perl's `$` also matches before one trailing newline.
    let v = value.strip_suffix('\n').unwrap_or(value);
    let (number, mult) = match v.as_bytes().last() {
        Some(b'K') => (&v[..v.len() - 1], KIB),
        Some(b'M') => (&v[..v.len() - 1], KIB.pow(2)),
        Some(b'G') => (&v[..v.len() - 1], KIB.pow(3)),
        Some(b'T') => (&v[..v.len() - 1], KIB.pow(4)),
        _ => (v, 1),
    };
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    match frac {
        // Integer arithmetic stays exact, as Perl's does for integers.
        None => int.parse::<u64>().ok()?.checked_mul(mult),
        // With a fraction Perl computes in doubles and truncates.
        Some(_) => {
            let n: f64 = number.parse().ok()?;
            let bytes = (n * mult as f64).trunc();
            (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
        }
    }
}

/// PVE's `format_size`: the largest binary unit that divides the size
/// exactly (`34359738368` → `32G`, `1048576` → `1M`, `1536` → `1536`).
///
/// Quirk kept from PVE: a size of 0 divides every unit, so it prints as `0T`.
pub fn format_size(size: u64) -> String {
    let kb = size / KIB;
    if kb * KIB != size {
        return size.to_string();
    }
    let mb = kb / KIB;
    if mb * KIB != kb {
        return format!("{kb}K");
    }
    let gb = mb / KIB;
    if gb * KIB != mb {
        return format!("{mb}M");
    }
    let tb = gb / KIB;
    if tb * KIB != gb {
        return format!("{gb}G");
    }
    format!("{tb}T")
}

/// The `size` argument of `PUT /nodes/{node}/qemu/{vmid}/resize`:
/// `+<n>[KMGT]` grows the disk by that much, a bare size is the new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSpec {
    /// Grow by this many bytes.
    Grow(u64),
    /// Set the size to this many bytes.
    Absolute(u64),
}

impl ResizeSpec {
    /// The size in bytes the disk should have afterwards, given its current size.
    pub fn target(self, current: u64) -> u64 {
        match self {
            ResizeSpec::Grow(by) => current.saturating_add(by),
            ResizeSpec::Absolute(size) => size,
        }
    }
}

/// A `size` argument that is not a valid size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse size '{0}'")]
pub struct ParseResizeError(pub String);

impl FromStr for ResizeSpec {
    type Err = ParseResizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (grow, rest) = match s.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let bytes = parse_size(rest).ok_or_else(|| ParseResizeError(rest.to_string()))?;
        Ok(if grow {
            ResizeSpec::Grow(bytes)
        } else {
            ResizeSpec::Absolute(bytes)
        })
    }
}

impl fmt::Display for ResizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeSpec::Grow(b) => write!(f, "+{}", format_size(*b)),
            ResizeSpec::Absolute(b) => f.write_str(&format_size(*b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sizes() {
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("1.5G"), Some(1_610_612_736));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("0"), Some(0));
        for bad in ["", "G", "1.G", ".5G", "1g", "-1", "1 G", "1GB", "0x10"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_sizes() {
        assert_eq!(format_size(32 << 30), "32G");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(1 << 20), "1M");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(3 << 40), "3T");
        assert_eq!(format_size(0), "0T");
        for b in [1u64, 1023, 4096, 5 << 30, 7 << 41, 123_456_789] {
            assert_eq!(parse_size(&format_size(b)), Some(b));
        }
    }

    #[test]
    fn resize_specs() {
        assert_eq!("+10G".parse(), Ok(ResizeSpec::Grow(10 << 30)));
        assert_eq!("64G".parse(), Ok(ResizeSpec::Absolute(64 << 30)));
        assert!("+-1G".parse::<ResizeSpec>().is_err());
        assert_eq!(ResizeSpec::Grow(1 << 30).target(1 << 30), 2 << 30);
        assert_eq!(ResizeSpec::Grow(1 << 30).to_string(), "+1G");
    }
}
