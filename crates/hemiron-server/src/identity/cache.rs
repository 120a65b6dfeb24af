//! A short-lived cache of authenticated principals, keyed by the SHA-256 of the credential.
//!
//! Every API request authenticates; on a busy server most carry a credential seen a moment
//! ago. An entry lives one second at most, and this server drops entries at once when it
//! revokes a token, ends a session, or changes, disables or removes a user; another server
//! sharing the database sees such a change within that second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::authz::{Principal, Via};

/// How long an entry is trusted.
pub const TTL: Duration = Duration::from_secs(1);
/// Entries kept at most (the cache is emptied when full: it refills in a second).
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct AuthCache(Arc<Mutex<HashMap<String, (Instant, Principal)>>>);

impl AuthCache {
    pub fn get(&self, hash: &str) -> Option<Principal> {
        let map = self.0.lock().ok()?;
        let (at, p) = map.get(hash)?;
        (at.elapsed() < TTL).then(|| p.clone())
    }

    pub fn put(&self, hash: String, p: Principal) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(hash, (Instant::now(), p));
        }
    }

    /// Forgets every credential of a user.
    pub fn forget_user(&self, user_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (_, p)| p.user_id != user_id);
        }
    }

    /// Forgets one API token.
    pub fn forget_token(&self, token_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (_, p)| !matches!(&p.via, Via::Token { id } if id == token_id));
        }
    }

    /// Forgets one session.
    pub fn forget_session(&self, token_hash: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(token_hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Role, Scopes};

    fn p(user: &str, token: &str) -> Principal {
        Principal {
            user_id: user.into(),
            username: user.into(),
            role: Role::Admin,
            tenant_id: None,
            scopes: Scopes::all(),
            via: Via::Token { id: token.into() },
        }
    }

    #[test]
    fn entries_expire_and_are_forgotten() {
        let c = AuthCache::default();
        c.put("h1".into(), p("u1", "t1"));
        c.put("h2".into(), p("u2", "t2"));
        assert!(c.get("h1").is_some());
        c.forget_token("t1");
        assert!(c.get("h1").is_none());
        c.forget_user("u2");
        assert!(c.get("h2").is_none());
    }
}
