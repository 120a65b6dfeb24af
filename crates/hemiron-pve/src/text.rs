//! Small textual helpers PVE applies all over: booleans, list splitting, the
//! escaping of config-file comments, and URL encoding (`sshkeys`, drive
//! `serial`/`model`).

/// PVE's `parse_boolean`: `1|on|yes|true` and `0|off|no|false`, case-insensitively.
///
/// This is also what makes proxmoxer's Python booleans (sent as `True`/`False`) work.
pub fn parse_boolean(value: &str) -> Option<bool> {
    // Perl's `$` also matches before one trailing newline.
    let v = value.strip_suffix('\n').unwrap_or(value);
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// PVE's `split_list` (used for every `*-list` format, e.g. `delete=net1,ide2`).
///
/// A list containing a NUL is split on NUL only (that is how repeated form
/// fields arrive); otherwise `,` and `;` count as whitespace and the text is
/// split on whitespace runs. Like Perl's `split`, empty trailing fields are
/// dropped.
pub fn split_list(text: &str) -> Vec<String> {
    if text.contains('\0') {
        let mut parts: Vec<String> = text.split('\0').map(str::to_string).collect();
        while parts.last().is_some_and(String::is_empty) {
            parts.pop();
        }
        return parts;
    }
    text.replace([',', ';'], " ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// PVE's `encode_text`: escapes control characters, `:` and every non-ASCII
/// byte (of the UTF-8 encoding) as `%XX`, as qemu-server does for the
/// description comment lines of a config file.
///
/// Note that, exactly like PVE, `%` itself is *not* escaped, so a description
/// containing `%41` reads back as `A`.
pub fn encode_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x39).contains(&b) || (0x3b..=0x7e).contains(&b) {
            out.push(char::from(b));
        } else {
            push_percent(&mut out, b);
        }
    }
    out
}

/// PVE's `decode_text`: URI-unescapes `%XX` sequences and decodes the bytes as
/// UTF-8 (invalid sequences become U+FFFD, as with Perl's `Encode::decode`).
pub fn decode_text(data: &str) -> String {
    String::from_utf8_lossy(&uri_unescape_bytes(data)).into_owned()
}

/// `URI::Escape::uri_escape` with its default safe set (`A-Za-z0-9-._~`):
/// what proxmoxer and Ansible apply to `sshkeys` before sending them.
pub fn uri_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            push_percent(&mut out, b);
        }
    }
    out
}

/// `URI::Escape::uri_unescape` followed by UTF-8 decoding: how qemu-server
/// reads the `sshkeys` option. Sequences that are not `%` plus two hex digits
/// are kept verbatim; `+` is *not* a space here.
pub fn uri_unescape(text: &str) -> String {
    String::from_utf8_lossy(&uri_unescape_bytes(text)).into_owned()
}

/// Decodes a stored or submitted `sshkeys` value (URL-encoded, one OpenSSH
/// key per line) into its lines, dropping empty ones.
pub fn decode_sshkeys(value: &str) -> Vec<String> {
    uri_unescape(value)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Encodes SSH public keys (one per line) the way clients submit them.
pub fn encode_sshkeys<S: AsRef<str>>(keys: &[S]) -> String {
    let joined: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    uri_escape(&joined.join("\n"))
}

fn uri_unescape_bytes(data: &str) -> Vec<u8> {
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex_value(*c)),
                bytes.get(i + 2).and_then(|c| hex_value(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_percent(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_like_pve() {
        for t in ["1", "on", "Yes", "TRUE", "True"] {
            assert_eq!(parse_boolean(t), Some(true), "{t}");
        }
        for f in ["0", "off", "NO", "false", "False"] {
            assert_eq!(parse_boolean(f), Some(false), "{f}");
        }
        for x in ["", "2", "t", "yes please", " 1"] {
            assert_eq!(parse_boolean(x), None, "{x}");
        }
    }

    #[test]
    fn split_list_like_pve() {
        assert_eq!(split_list("net1,ide2"), ["net1", "ide2"]);
        assert_eq!(split_list(" a;b  c,,d "), ["a", "b", "c", "d"]);
        assert_eq!(split_list("a,b\0c d\0"), ["a,b", "c d"]);
        assert!(split_list("").is_empty());
        assert!(split_list(" ,; ").is_empty());
    }

    #[test]
    fn encode_decode_text() {
        assert_eq!(encode_text("a: b"), "a%3A b");
        assert_eq!(encode_text("tab\there"), "tab%09here");
        assert_eq!(encode_text("grüß"), "gr%C3%BC%C3%9F");
        assert_eq!(decode_text("gr%C3%BC%C3%9F"), "grüß");
        assert_eq!(decode_text("50%zz off"), "50%zz off");
        assert_eq!(decode_text("%41"), "A");
        for s in ["hello: world", "ünïcode ✓", "#hash", "trailing %"] {
            assert_eq!(decode_text(&encode_text(s)), s);
        }
    }

    #[test]
    fn sshkeys_round_trip() {
        let keys = ["ssh-ed25519 AAAAC3Nz user@host", "ssh-rsa AAAAB3 other"];
        let enc = encode_sshkeys(&keys);
        assert_eq!(
            enc,
            "ssh-ed25519%20AAAAC3Nz%20user%40host%0Assh-rsa%20AAAAB3%20other"
        );
        assert_eq!(decode_sshkeys(&enc), keys);
        assert_eq!(uri_unescape("a+b%2"), "a+b%2");
    }
}
