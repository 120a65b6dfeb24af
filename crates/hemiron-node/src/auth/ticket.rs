//! Proxmox-format authentication tickets and CSRF prevention tokens.
//!
//! A ticket reads `PVE:<userid>:<8-hex-time>::<signature>` as Proxmox's do, so clients that
//! inspect it (proxmoxer stores and renews it) keep working. Proxmox signs with RSA so that
//! every cluster node can verify; a node agent signs with HMAC-SHA256 under a key of its own,
//! made on first start and kept in the data dir, so tickets survive agent restarts.
//! CSRF tokens are `<8-hex-time>:<base64 HMAC-SHA256("time:userid")>` as in Proxmox.

use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Tickets and CSRF tokens live two hours, as in Proxmox.
pub const TICKET_LIFETIME_SECS: i64 = 2 * 3600;
/// Proxmox accepts tickets issued slightly in the future (clock skew between nodes).
const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Failure to load or create the signing key.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("failed to read ticket signing key {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write ticket signing key {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ticket signing key {0} is corrupt")]
    Corrupt(std::path::PathBuf),
}

/// Signs and verifies tickets and CSRF tokens.
#[derive(Clone)]
pub struct TicketSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSigner")
    }
}

impl TicketSigner {
    /// Loads the key from `DATA/auth/ticket.key`, creating it on first use.
    pub fn load_or_create(auth_dir: &Path) -> Result<Self, TicketKeyError> {
        let path = auth_dir.join("ticket.key");
        match std::fs::read(&path) {
            Ok(raw) => {
                let key: [u8; 32] = hex::decode(raw.trim_ascii())
                    .ok()
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| TicketKeyError::Corrupt(path.clone()))?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                match crate::fsutil::create_exclusive(&path, hex::encode(key).as_bytes(), 0o600) {
                    Ok(()) => Ok(Self { key }),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(auth_dir)
                    }
                    Err(source) => Err(TicketKeyError::Write { path, source }),
                }
            }
            Err(source) => Err(TicketKeyError::Read { path, source }),
        }
    }

    #[cfg(test)]
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, domain: &str, data: &str) -> String {
        // Separate domains so a CSRF token can never pass as a ticket signature.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable_key_length(),
        };
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data.as_bytes());
        STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Issues a ticket for `userid` at unix time `now`.
    pub fn issue_ticket(&self, userid: &str, now: i64) -> String {
        let plain = format!("PVE:{userid}:{:08X}", now);
        let sig = self.mac("ticket", &plain);
        format!("{plain}::{sig}")
    }

    /// Verifies a ticket and returns its user id if it is valid at `now`.
    pub fn verify_ticket(&self, ticket: &str, now: i64) -> Option<String> {
        let (plain, sig) = ticket.split_once("::")?;
        let rest = plain.strip_prefix("PVE:")?;
        let (userid, time_hex) = rest.rsplit_once(':')?;
        if time_hex.len() != 8 {
            return None;
        }
        let issued = i64::from_str_radix(time_hex, 16).ok()?;
        let expected = self.mac("ticket", plain);
        if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            return None;
        }
        let age = now - issued;
        if !(-MAX_CLOCK_SKEW_SECS..=TICKET_LIFETIME_SECS).contains(&age) {
            return None;
        }
        Some(userid.to_string())
    }

    /// Issues a CSRF prevention token bound to `userid`.
    pub fn issue_csrf(&self, userid: &str, now: i64) -> String {
        let time_hex = format!("{:08X}", now);
        let sig = self.mac("csrf", &format!("{time_hex}:{userid}"));
        format!("{time_hex}:{sig}")
    }

    /// Verifies a CSRF prevention token for `userid`.
    pub fn verify_csrf(&self, token: &str, userid: &str, now: i64) -> bool {
        let Some((time_hex, sig)) = token.split_once(':') else {
            return false;
        };
        let Ok(issued) = i64::from_str_radix(time_hex, 16) else {
            return false;
        };
        let expected = self.mac("csrf", &format!("{time_hex}:{userid}"));
        let age = now - issued;
        constant_time_eq(expected.as_bytes(), sig.as_bytes())
            && (-MAX_CLOCK_SKEW_SECS..=TICKET_LIFETIME_SECS).contains(&age)
    }
}

/// HMAC-SHA256 accepts keys of any length, so construction cannot fail.
#[cold]
fn unreachable_key_length() -> ! {
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_roundtrip_and_expiry() {
        let s = TicketSigner::with_key([7; 32]);
        let t = s.issue_ticket("root@pam", 1_000_000);
        assert!(t.starts_with("PVE:root@pam:000F4240::"));
        assert_eq!(s.verify_ticket(&t, 1_000_010).as_deref(), Some("root@pam"));
        assert_eq!(s.verify_ticket(&t, 1_000_000 + 7201), None);
        let other = TicketSigner::with_key([8; 32]);
        assert_eq!(other.verify_ticket(&t, 1_000_010), None);
        let forged = t.replace("root@pam", "evil@pam");
        assert_eq!(s.verify_ticket(&forged, 1_000_010), None);
    }

    #[test]
    fn csrf_is_bound_to_user() {
        let s = TicketSigner::with_key([1; 32]);
        let c = s.issue_csrf("alice@pve", 5000);
        assert!(s.verify_csrf(&c, "alice@pve", 5001));
        assert!(!s.verify_csrf(&c, "bob@pve", 5001));
        assert!(!s.verify_csrf("garbage", "alice@pve", 5001));
    }
}
