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
    /// How new VPSes are spread over nodes.
    pub placement: crate::fleet::placement::Policy,
    /// vCPUs a node may have reserved per physical CPU.
    pub cpu_overcommit: i64,
    /// How often the reconciler compares the store with the clusters.
    pub reconcile_interval: Duration,
    /// How long a worker's claim on a job lasts without renewal.
    pub job_lease: Duration,
    /// Job workers per server.
    pub workers: usize,
    /// The clock of schedules and backup times.
    pub clock: crate::backups::clock::Clock,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_ttl: Duration::from_secs(12 * 3600),
            account_failures: 5,
            account_window: Duration::from_secs(15 * 60),
            client_failures: 20,
            client_window: Duration::from_secs(60),
            placement: crate::fleet::placement::Policy::Spread,
            cpu_overcommit: 4,
            reconcile_interval: Duration::from_secs(30),
            job_lease: Duration::from_secs(30),
            workers: 4,
            clock: crate::backups::clock::Clock::system(),
        }
    }
}

/// The domain services.
#[derive(Debug, Clone)]
pub struct Services {
    pub db: Db,
    pub settings: Settings,
    /// Proxmox API clients of the clusters.
    pub clients: crate::fleet::clusters::Clients,
    /// Wakes this server's job workers when a job is queued.
    pub wakeup: crate::jobs::runner::Wakeup,
    /// Principals authenticated in the last second.
    pub auth_cache: crate::identity::cache::AuthCache,
    /// The clock of schedules and backup times (see [`crate::backups::clock`]).
    pub clock: crate::backups::clock::Clock,
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
