//! API tokens: made by a user for themselves, scoped (never beyond their role), expiring,
//! revocable. The secret is shown once, at creation; the store keeps its SHA-256.

use crate::authz::{authorize, Access, Area, Owner, Scopes};
use crate::error::{Problems, ServiceError};
use crate::identity::auth::TOKEN_PREFIX;
use crate::identity::crypto;
use crate::service::{Caller, Services};
use crate::store::identity::{self as store, After, TokenRow, TokenWithUser};
use crate::store::{new_id, now_ms};

/// Default and longest lifetimes, in days.
pub const DEFAULT_DAYS: i64 = 90;
pub const MAX_DAYS: i64 = 366;

/// A new token and its secret (shown once).
#[derive(Debug)]
pub struct NewToken {
    pub token: TokenWithUser,
    pub secret: String,
}

pub async fn create(
    svc: &Services,
    caller: &Caller,
    name: &str,
    scopes: Option<&str>,
    expires_in_days: Option<i64>,
) -> Result<NewToken, ServiceError> {
    let who = caller.who()?.clone();
    authorize(&who, Area::Tokens, Access::Write, Owner::Own)
        .map_err(|d| ServiceError::denied(d, "token"))?;
    let mut p = Problems::default();
    p.check(
        !name.trim().is_empty() && name.len() <= 100,
        "name",
        "1 to 100 characters",
    );
    let scopes = match Scopes::parse(scopes.unwrap_or("*")) {
        Ok(s) => s,
        Err(e) => {
            p.add("scopes", e);
            Scopes::default()
        }
    };
    // A token never carries more than its maker has: a session holds every scope the role
    // has; a token can only make tokens within its own scopes.
    let full = scopes == Scopes::all();
    if !full && !scopes.within_role(who.role) {
        p.add(
            "scopes",
            format!("beyond what the role {} allows", who.role),
        );
    }
    let days = expires_in_days.unwrap_or(DEFAULT_DAYS);
    p.check(
        (1..=MAX_DAYS).contains(&days),
        "expires_in_days",
        format!("1 to {MAX_DAYS}"),
    );
    p.finish()?;
    let scopes = if full {
        // `*`: as much as the caller's credential allows.
        who.scopes.clone()
    } else {
        scopes
    };
    if !scopes_within(&scopes, &who.scopes) {
        return Err(ServiceError::invalid(
            "scopes",
            "beyond the scopes of the token making it",
        ));
    }
    let (secret, hash) = crypto::new_secret(TOKEN_PREFIX);
    let now = now_ms();
    let row = TokenRow {
        id: new_id(),
        user_id: who.user_id.clone(),
        name: name.trim().to_string(),
        token_hash: hash,
        scopes: scopes.to_text(),
        expires_at: Some(now + days * 86_400_000),
        revoked_at: None,
        last_used_at: None,
        version: 1,
        created_at: now,
    };
    let mut tx = svc.db.begin().await?;
    store::insert_token(&mut tx, &row).await?;
    caller
        .commit(
            tx,
            "token.create",
            format!("token:{}", row.id),
            who.tenant_id.clone(),
            Some(format!("name={} scopes={}", row.name, row.scopes)),
        )
        .await?;
    Ok(NewToken {
        token: TokenWithUser {
            token: row,
            username: who.username.clone(),
            tenant_id: who.tenant_id.clone(),
        },
        secret,
    })
}

fn scopes_within(inner: &Scopes, outer: &Scopes) -> bool {
    use crate::authz::Area;
    Area::ALL.into_iter().all(|a| {
        [Access::Read, Access::Write]
            .into_iter()
            .all(|x| !inner.allows(a, x) || outer.allows(a, x))
    })
}

/// May the caller see or revoke this token? Their own; a tenant's if they manage its users.
fn check(caller: &Caller, t: &TokenWithUser, access: Access) -> Result<(), ServiceError> {
    let who = caller.who()?;
    let owner = if t.token.user_id == who.user_id {
        Owner::Own
    } else {
        Owner::of(t.tenant_id.as_deref())
    };
    // Someone else's token counts as that user's account.
    let area = if matches!(owner, Owner::Own) {
        Area::Tokens
    } else {
        Area::Users
    };
    authorize(who, area, access, owner).map_err(|d| ServiceError::denied(d, "token"))?;
    if !matches!(owner, Owner::Own) {
        authorize(who, Area::Tokens, access, owner)
            .map_err(|d| ServiceError::denied(d, "token"))?;
    }
    Ok(())
}

pub async fn get(svc: &Services, caller: &Caller, id: &str) -> Result<TokenWithUser, ServiceError> {
    let t = store::token_by_id(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "token" })?;
    check(caller, &t, Access::Read)?;
    Ok(t)
}

/// The caller's tokens; a tenant owner's listing has their tenant's, an admin's everyone's.
pub async fn list(
    svc: &Services,
    caller: &Caller,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<TokenWithUser>, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Tokens, Access::Read, Owner::Own)
        .map_err(|d| ServiceError::denied(d, "token"))?;
    let (user, tenant) = match (who.role, &who.tenant_id) {
        (crate::authz::Role::Admin, _) => (None, None),
        (crate::authz::Role::Owner, Some(t)) => (None, Some(t.as_str())),
        _ => (Some(who.user_id.as_str()), None),
    };
    Ok(store::list_tokens(&svc.db, user, tenant, after, limit).await?)
}

/// Revokes a token whose version is still `version`.
pub async fn revoke(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let t = store::token_by_id(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "token" })?;
    check(caller, &t, Access::Write)?;
    if t.token.version != version {
        return Err(ServiceError::stale("token", t.token.version));
    }
    if t.token.revoked_at.is_some() {
        return Err(ServiceError::Conflict(
            "the token is already revoked".into(),
        ));
    }
    let mut tx = svc.db.begin().await?;
    if !store::revoke_token(&mut tx, id, version, now_ms()).await? {
        return Err(ServiceError::stale("token", t.token.version));
    }
    caller
        .commit(
            tx,
            "token.revoke",
            format!("token:{id}"),
            t.tenant_id.clone(),
            Some(format!("name={} owner={}", t.token.name, t.username)),
        )
        .await?;
    svc.auth_cache.forget_token(id);
    Ok(())
}
