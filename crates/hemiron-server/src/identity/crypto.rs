//! The identity's cryptography: argon2id password hashes, random secrets stored as SHA-256,
//! TOTP codes with replay protection, recovery codes.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Why hashing failed (an internal fault, never the user's).
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the password hashing task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("the password hashing limiter is closed")]
    Limiter,
}

/// Hashing is deliberately slow (19 MiB, 2 passes): at most this many run at once, off the
/// async threads, which also keeps a flood of logins from starving everything else.
const HASHING_AT_ONCE: usize = 2;

fn limiter() -> Arc<Semaphore> {
    static LIMIT: OnceLock<Arc<Semaphore>> = OnceLock::new();
    LIMIT
        .get_or_init(|| Arc::new(Semaphore::new(HASHING_AT_ONCE)))
        .clone()
}

/// An argon2id PHC string for `password` (the crate's defaults: OWASP's minimum).
pub async fn hash_password(password: String) -> Result<String, CryptoError> {
    let _permit = limiter()
        .acquire_owned()
        .await
        .map_err(|_| CryptoError::Limiter)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Hash(e.to_string()))
    })
    .await
    .map_err(CryptoError::Join)?
}

/// Whether `password` matches `phc`. With `None` it checks against a fixed hash, so that an
/// unknown user takes as long as a known one, and answers false.
pub async fn verify_password(password: String, phc: Option<String>) -> Result<bool, CryptoError> {
    let _permit = limiter()
        .acquire_owned()
        .await
        .map_err(|_| CryptoError::Limiter)?;
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = match phc {
            Some(p) => p,
            None => dummy_hash().to_string(),
        };
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return Ok(false);
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && known)
    })
    .await
    .map_err(CryptoError::Join)?
}

/// A hash with the default parameters, made once, for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(b"hemiron-dummy-password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// A new secret: `PREFIX_` and 32 random bytes (256 bits) in URL-safe base64. Returns it with
/// the SHA-256 under which it is stored.
pub fn new_secret(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = sha256_hex(&secret);
    (secret, hash)
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Ten recovery codes of 128 random bits each (base32, in groups of four: easy to type), with
/// their SHA-256 (enough at that entropy; a password hash is needed only below 112 bits).
pub fn new_recovery_codes() -> Vec<(String, String)> {
    (0..10)
        .map(|_| {
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let raw = base32_lower(&bytes);
            let code = raw
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            let hash = recovery_code_hash(&code);
            (code, hash)
        })
        .collect()
}

/// The stored form of a recovery code, however it was typed (case, dashes, spaces).
pub fn recovery_code_hash(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    sha256_hex(&norm)
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

/// TOTP as authenticator apps do it: SHA-1, 6 digits, 30 s steps, one step of clock skew.
pub mod totp {
    use totp_rs::{Algorithm, Secret, TOTP};

    /// A new 160-bit secret, base32.
    pub fn new_secret() -> String {
        Secret::generate_secret().to_encoded().to_string()
    }

    fn totp(secret_b32: &str, account: &str) -> Option<TOTP> {
        let bytes = Secret::Encoded(secret_b32.to_string()).to_bytes().ok()?;
        TOTP::new(
            Algorithm::SHA1,
            6,
            1,
            30,
            bytes,
            Some("Hemiron".into()),
            account.to_string(),
        )
        .ok()
    }

    /// The `otpauth://` URL to enroll an authenticator app.
    pub fn url(secret_b32: &str, account: &str) -> Option<String> {
        totp(secret_b32, account).map(|t| t.get_url())
    }

    /// The code for time `unix_secs` (tests, and the CLI's enrollment check).
    pub fn code(secret_b32: &str, unix_secs: u64) -> Option<String> {
        totp(secret_b32, "x").map(|t| t.generate(unix_secs))
    }

    /// The time-step `code` belongs to, if it is valid at `unix_secs` (±1 step) and later than
    /// `last_step` (a code is accepted once: replay is refused).
    pub fn accept(
        secret_b32: &str,
        code: &str,
        unix_secs: u64,
        last_step: Option<i64>,
    ) -> Option<i64> {
        let t = totp(secret_b32, "x")?;
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = i64::try_from(unix_secs / 30).ok()?;
        for step in [now_step - 1, now_step, now_step + 1] {
            if last_step.is_some_and(|last| step <= last) {
                continue;
            }
            let at = u64::try_from(step).ok()? * 30;
            if constant_time_eq(t.generate(at).as_bytes(), code.as_bytes()) {
                return Some(step);
            }
        }
        None
    }

    fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong".into(), Some(h)).await.unwrap());
        assert!(!verify_password("x".into(), None).await.unwrap());
        assert!(!verify_password("x".into(), Some("garbage".into()))
            .await
            .unwrap());
    }

    #[test]
    fn secrets_are_long_and_hashed() {
        let (s, h) = new_secret("hmt");
        assert!(s.starts_with("hmt_") && s.len() >= 4 + 43);
        assert_eq!(h, sha256_hex(&s));
        assert_ne!(new_secret("hmt").0, s);
    }

    #[test]
    fn recovery_codes() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let (code, hash) = &codes[0];
        assert_eq!(code.len(), 26 + 6);
        assert_eq!(
            &recovery_code_hash(&code.to_uppercase().replace('-', " ")),
            hash
        );
    }

    #[test]
    fn totp_codes_are_single_use() {
        let secret = totp::new_secret();
        let now = 1_800_000_000u64;
        let code = totp::code(&secret, now).unwrap();
        let step = totp::accept(&secret, &code, now, None).unwrap();
        assert_eq!(step, (now / 30) as i64);
        assert_eq!(
            totp::accept(&secret, &code, now, Some(step)),
            None,
            "replay"
        );
        assert!(
            totp::accept(&secret, &code, now + 30, None).is_some(),
            "skew"
        );
        assert_eq!(
            totp::accept(&secret, &code, now + 90, None),
            None,
            "expired"
        );
        assert_eq!(totp::accept(&secret, "12345", now, None), None);
        assert!(totp::url(&secret, "alice")
            .unwrap()
            .starts_with("otpauth://totp/"));
    }
}
