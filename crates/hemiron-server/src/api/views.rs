//! What the API returns: the public form of each resource, and pages of them.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::problem::ApiError;
use crate::authz::Role;
use crate::store::audit::AuditRow;
use crate::store::identity::{After, TokenWithUser, UserRow};
use crate::store::tenancy::{PlanRow, TenantRow};

/// RFC 3339 UTC time of a store time (unix milliseconds).
pub fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Paging parameters of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// Where to continue: the `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::BadQuery("limit must be 1 to 500".into())),
        }
    }

    /// The position the cursor names (`time.id`, base64url).
    pub fn after(&self) -> Result<Option<After>, ApiError> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let bad = || ApiError::BadQuery("cursor is not one this server gave".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (t, id) = text.split_once('.').ok_or_else(bad)?;
        Ok(Some(After {
            created_at: t.parse().map_err(|_| bad())?,
            id: id.to_string(),
        }))
    }
}

pub fn cursor(time: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{time}.{id}"))
}

/// One page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> Page<T> {
    /// A page of `limit` asked for, from rows fetched with `limit` (a full page may have more
    /// after it).
    pub fn of<R>(
        rows: Vec<R>,
        limit: i64,
        key: impl Fn(&R) -> (i64, String),
        view: impl Fn(R) -> T,
    ) -> Page<T> {
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
        let next_cursor = if full {
            rows.last().map(|r| {
                let (t, id) = key(r);
                cursor(t, &id)
            })
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(view).collect(),
            next_cursor,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: Role,
    /// The tenant of a tenant user (owner, member, viewer); absent for admins and operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub disabled: bool,
    pub mfa_enabled: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> User {
        User {
            role: u.role.parse().unwrap_or(Role::Viewer),
            id: u.id,
            username: u.username,
            tenant_id: u.tenant_id,
            disabled: u.disabled,
            mfa_enabled: u.totp_enabled,
            version: u.version,
            created_at: time(u.created_at),
            updated_at: time(u.updated_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema, Clone, Copy)]
pub struct Quota {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub vms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub quota: Quota,
    /// What the tenant's VPSes use (and have reserved) against the quota.
    pub used: Quota,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<TenantRow> for Tenant {
    fn from(t: TenantRow) -> Tenant {
        Tenant {
            quota: Quota {
                vcpus: t.quota_vcpus,
                memory_mib: t.quota_memory_mib,
                disk_gib: t.quota_disk_gib,
                vms: t.quota_vms,
            },
            used: Quota {
                vcpus: t.used_vcpus,
                memory_mib: t.used_memory_mib,
                disk_gib: t.used_disk_gib,
                vms: t.used_vms,
            },
            id: t.id,
            name: t.name,
            version: t.version,
            created_at: time(t.created_at),
            updated_at: time(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// How many backups a VPS of the plan may keep (0: none).
    pub backups: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<PlanRow> for Plan {
    fn from(p: PlanRow) -> Plan {
        Plan {
            id: p.id,
            name: p.name,
            vcpus: p.vcpus,
            memory_mib: p.memory_mib,
            disk_gib: p.disk_gib,
            backups: p.backups,
            version: p.version,
            created_at: time(p.created_at),
            updated_at: time(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub user_id: String,
    pub username: String,
    /// Space-separated: `read:AREA`, `write:AREA` or `*`.
    pub scopes: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    pub version: i64,
    pub created_at: String,
}

impl From<TokenWithUser> for Token {
    fn from(t: TokenWithUser) -> Token {
        Token {
            id: t.token.id,
            name: t.token.name,
            user_id: t.token.user_id,
            username: t.username,
            scopes: t.token.scopes,
            expires_at: t.token.expires_at.map(time),
            revoked_at: t.token.revoked_at.map(time),
            last_used_at: t.token.last_used_at.map(time),
            version: t.token.version,
            created_at: time(t.token.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: String,
    pub at: String,
    /// The username acting (or attempting to log in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// E.g. `auth.login`, `user.create`, `token.revoke`.
    pub action: String,
    /// `KIND:ID` of the object acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `ok`, `denied`, `mfa-required`, `failed`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(a: AuditRow) -> AuditRecord {
        AuditRecord {
            id: a.id,
            at: time(a.at),
            actor: a.actor,
            actor_id: a.actor_id,
            tenant_id: a.tenant_id,
            action: a.action,
            object: a.object,
            result: a.result,
            client: a.client,
            detail: a.detail,
        }
    }
}
