//! The session cookie that pins a client to a version: `v1.<version>.<expires>.<mac>`, where
//! `mac` is HMAC-SHA256 (base64url) under the proxy's key over the app's name and the rest.
//! It names a version, not a host: a session stays on its version whatever endpoint serves it,
//! and a forged or expired cookie, or one made for another app (each app has its own cookie,
//! and the MAC binds it to the app), is simply ignored (the request is routed as a new
//! session).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks sticky cookies.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Version ids are kept to a safe cookie alphabet.
pub fn valid_version_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Signer {
    /// A signer with a secret key (at least 32 bytes of randomness).
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self, app: &str, payload: &str) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        // App names never hold a NUL: the boundary is unambiguous.
        mac.update(app.as_bytes());
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        Some(mac)
    }

    /// The cookie value pinning a session of `app` to `version` until `expires` (unix
    /// seconds).
    pub fn sign(&self, app: &str, version: &str, expires: u64) -> Option<String> {
        if !valid_version_id(version) {
            return None;
        }
        let payload = format!("v1.{version}.{expires}");
        let tag = self.mac(app, &payload)?.finalize().into_bytes();
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag);
        Some(format!("{payload}.{tag}"))
    }

    /// The version a cookie pins, if it is genuine, made for `app` and not expired at `now`
    /// (unix seconds).
    pub fn verify<'a>(&self, app: &str, value: &'a str, now: u64) -> Option<&'a str> {
        let (payload, tag) = value.rsplit_once('.')?;
        let mut parts = payload.splitn(3, '.');
        let (v1, version, expires) = (parts.next()?, parts.next()?, parts.next()?);
        if v1 != "v1" || !valid_version_id(version) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        // Constant-time comparison.
        self.mac(app, payload)?.verify_slice(&tag).ok()?;
        (expires > now).then_some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_expiry() {
        let s = Signer::new(KEY);
        let c = s.sign("web", "v2", 1000).unwrap();
        assert_eq!(s.verify("web", &c, 999), Some("v2"));
        assert_eq!(s.verify("web", &c, 1000), None, "expired");
        assert_eq!(s.verify("api", &c, 999), None, "made for another app");
        assert_eq!(
            Signer::new(b"another key, also 32 bytes long!").verify("web", &c, 1),
            None
        );
        assert!(s.sign("web", "bad version", 1).is_none());
    }

    #[test]
    fn tampering_is_detected() {
        let s = Signer::new(KEY);
        let c = s.sign("web", "v1", 5000).unwrap();
        let forged = c.replacen(".v1.", ".v2.", 1);
        assert_eq!(s.verify("web", &forged, 1), None);
        let longer = c.replacen(".5000.", ".9999.", 1);
        assert_eq!(s.verify("web", &longer, 1), None);
    }

    proptest! {
        #[test]
        fn arbitrary_cookies_never_verify_or_panic(value in "\\PC{0,120}") {
            prop_assert_eq!(Signer::new(KEY).verify("web", &value, 0), None);
        }

        #[test]
        fn signed_cookies_verify(version in "[a-zA-Z0-9_-]{1,64}", exp in 1u64..u64::MAX) {
            let s = Signer::new(KEY);
            let c = s.sign("web", &version, exp).unwrap();
            prop_assert_eq!(s.verify("web", &c, exp - 1), Some(version.as_str()));
        }
    }
}
