//! The domain services' shared context: the store, settings, and who is calling.

use std::time::Duration;

use crate::authz::Principal;
use crate::store::audit::AuditRow;
use crate::store::{self, Db};

/// Settings of the domain services (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a login session lasts (absolute; renewed only by logging in again).
    pub session_ttl: Duration,
    /// Failed logins per account within `account_window` before logins are refused.
    pub account_failures: i64,
    pub account_window: Duration,
    /// Failed logins per client address within `client_window`.
    pub client_failures: i64,
    pub client_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_ttl: Duration::from_secs(12 * 3600),
            account_failures: 5,
            account_window: Duration::from_secs(15 * 60),
            client_failures: 20,
            client_window: Duration::from_secs(60),
        }
    }
}

/// The domain services.
#[derive(Debug, Clone)]
pub struct Services {
    pub db: Db,
    pub settings: Settings,
}

/// Who calls a service, and from where (for the audit log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Option<Principal>,
    /// The client's address as the server saw it.
    pub client: String,
}

impl Caller {
    /// An audit record of `action` on `object` by this caller.
    pub fn audit(
        &self,
        action: &str,
        object: Option<String>,
        tenant: Option<String>,
        result: &str,
        detail: Option<String>,
    ) -> AuditRow {
        AuditRow {
            id: store::new_id(),
            at: store::now_ms(),
            actor: self.principal.as_ref().map(|p| p.username.clone()),
            actor_id: self.principal.as_ref().map(|p| p.user_id.clone()),
            tenant_id: tenant,
            action: action.to_string(),
            object,
            result: result.to_string(),
            client: Some(self.client.clone()),
            detail,
        }
    }

    /// Records a successful `action` in the transaction that made it, and commits both.
    pub async fn commit(
        &self,
        mut tx: crate::store::Tx,
        action: &str,
        object: String,
        tenant: Option<String>,
        detail: Option<String>,
    ) -> Result<(), crate::error::ServiceError> {
        let row = self.audit(action, Some(object), tenant, "ok", detail);
        crate::store::audit::append_tx(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The principal, or `Unauthenticated`.
    pub fn who(&self) -> Result<&Principal, crate::error::ServiceError> {
        self.principal
            .as_ref()
            .ok_or(crate::error::ServiceError::Unauthenticated)
    }
}
