//! What a control-plane operation can fail with. The HTTP layer turns each variant into a
//! problem+json answer in one place (`api::problem`); nothing here knows about HTTP.

use std::collections::BTreeMap;

use crate::authz::Denied;
use crate::identity::crypto::CryptoError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("invalid request")]
    Invalid { fields: BTreeMap<String, String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("the {what} changed since it was read (its version is now {current})")]
    Stale { what: &'static str, current: i64 },
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid username or password")]
    BadCredentials,
    #[error("a TOTP code (or a recovery code) is required for this account")]
    MfaRequired,
    #[error("invalid username, password or MFA code")]
    BadMfa,
    #[error("too many failed logins; retry later")]
    RateLimited { retry_after_secs: u64 },
    #[error("the CSRF header is missing or wrong")]
    Csrf,
    #[error("store failure")]
    Store(#[from] StoreError),
    #[error("cryptography failure")]
    Crypto(#[from] CryptoError),
}

impl ServiceError {
    /// One invalid field.
    pub fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
        let mut fields = BTreeMap::new();
        fields.insert(field.to_string(), message.into());
        ServiceError::Invalid { fields }
    }

    /// The object changed since it was read.
    pub fn stale(what: &'static str, current: i64) -> ServiceError {
        ServiceError::Stale { what, current }
    }

    /// The outcome of a versioned write of a named `what`: a duplicate name is a conflict,
    /// no row written means the version moved on.
    pub fn written(
        result: Result<bool, StoreError>,
        what: &'static str,
        name: &str,
        current: i64,
    ) -> Result<(), ServiceError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServiceError::stale(what, current)),
            Err(e) if e.is_unique_violation() => Err(ServiceError::Conflict(format!(
                "a {what} named {name:?} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The refusal of an authorization decision on an object of kind `what`.
    pub fn denied(d: Denied, what: &'static str) -> ServiceError {
        match d {
            Denied::NotFound => ServiceError::NotFound { what },
            Denied::Forbidden => ServiceError::Forbidden,
        }
    }
}

/// Collects every problem of a request before refusing it.
#[derive(Debug, Default)]
pub struct Problems(BTreeMap<String, String>);

impl Problems {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_insert_with(|| message.into());
    }

    pub fn check(&mut self, ok: bool, field: &str, message: impl Into<String>) {
        if !ok {
            self.add(field, message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn finish(self) -> Result<(), ServiceError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::Invalid { fields: self.0 })
        }
    }
}
