//! User accounts: creation, changes, removal, listing, under the role rules of `authz`.
//!
//! Platform users (admin, operator) have no tenant; tenant users (owner, member, viewer)
//! belong to one for good. Tenant owners manage their own tenant's users and can never
//! create or promote to a platform role. The last enabled admin cannot be demoted, disabled
//! or removed. A password change, a disabled account or a removal ends the user's sessions.

use crate::authz::{authorize, Access, Area, Owner, Role};
use crate::error::{Problems, ServiceError};
use crate::identity::crypto;
use crate::service::{Caller, Services};
use crate::store::identity::{self as store, After, UserRow};
use crate::store::{new_id, now_ms, tenancy};

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
    pub tenant_id: Option<String>,
}

/// Changes to a user (absent: unchanged).
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub password: Option<String>,
    pub disabled: Option<bool>,
}

pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 1024;

/// A username: 1–64 of lower-case letters, digits and `._@-`, starting with a letter or
/// digit.
pub fn check_username(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._@-".contains(c));
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 64 || !ok_chars || !first_ok {
        return Err(
            "1 to 64 characters: lower-case letters, digits and . _ @ -, starting with a letter \
             or digit"
                .into(),
        );
    }
    Ok(())
}

pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(format!("at least {MIN_PASSWORD} characters"));
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!("at most {MAX_PASSWORD} bytes"));
    }
    Ok(())
}

/// Creates a user (no caller: the bootstrap admin, made by the server itself).
pub async fn create(
    svc: &Services,
    caller: &Caller,
    new: NewUser,
) -> Result<UserRow, ServiceError> {
    let mut p = Problems::default();
    if let Err(e) = check_username(&new.username) {
        p.add("username", e);
    }
    if let Err(e) = check_password(&new.password) {
        p.add("password", e);
    }
    match (new.role.is_tenant_role(), &new.tenant_id) {
        (true, None) => p.add("tenant_id", format!("a {} belongs to a tenant", new.role)),
        (false, Some(_)) => p.add("tenant_id", format!("an {} belongs to no tenant", new.role)),
        _ => {}
    }
    if let Some(who) = &caller.principal {
        authorize(
            who,
            Area::Users,
            Access::Write,
            Owner::of(new.tenant_id.as_deref()),
        )
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    }
    p.finish()?;
    if let Some(t) = &new.tenant_id {
        if tenancy::tenant(&svc.db, t).await?.is_none() {
            return Err(ServiceError::invalid("tenant_id", "no such tenant"));
        }
    }
    let hash = crypto::hash_password(new.password.clone()).await?;
    let now = now_ms();
    let user = UserRow {
        id: new_id(),
        username: new.username.clone(),
        password_hash: hash,
        role: new.role.as_str().to_string(),
        tenant_id: new.tenant_id.clone(),
        disabled: false,
        totp_secret: None,
        totp_enabled: false,
        totp_last_step: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let mut tx = svc.db.begin().await?;
    let result = store::insert_user(&mut tx, &user).await.map(|()| true);
    ServiceError::written(result, "user", &new.username, 1)?;
    caller
        .commit(
            tx,
            "user.create",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            Some(format!("username={} role={}", user.username, user.role)),
        )
        .await?;
    Ok(user)
}

/// A user the caller may see (their own account always).
pub async fn get(svc: &Services, caller: &Caller, id: &str) -> Result<UserRow, ServiceError> {
    let who = caller.who()?;
    let user = store::user_by_id(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "user" })?;
    if user.id != who.user_id {
        authorize(
            who,
            Area::Users,
            Access::Read,
            Owner::of(user.tenant_id.as_deref()),
        )
        .map_err(|d| ServiceError::denied(d, "user"))?;
    }
    Ok(user)
}

/// A page of the users the caller may see.
pub async fn list(
    svc: &Services,
    caller: &Caller,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<UserRow>, ServiceError> {
    let who = caller.who()?;
    let tenant = who.listing_scope(tenant);
    authorize(who, Area::Users, Access::Read, Owner::of(tenant))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    Ok(store::list_users(&svc.db, tenant, after, limit).await?)
}

/// Changes a user whose version is still `version`.
pub async fn update(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
    patch: UserPatch,
) -> Result<UserRow, ServiceError> {
    let who = caller.who()?.clone();
    let mut p = Problems::default();
    if let Some(pw) = &patch.password {
        if let Err(e) = check_password(pw) {
            p.add("password", e);
        }
    }
    let new_hash = match &patch.password {
        Some(pw) if p.is_empty() => Some(crypto::hash_password(pw.clone()).await?),
        _ => None,
    };
    let mut tx = svc.db.begin().await?;
    let mut user = store::user_by_id_tx(&mut tx, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "user" })?;
    authorize(
        &who,
        Area::Users,
        Access::Write,
        Owner::of(user.tenant_id.as_deref()),
    )
    .map_err(|d| ServiceError::denied(d, "user"))?;
    if let Some(role) = patch.role {
        if role.is_tenant_role() != user.tenant_id.is_some() {
            p.add(
                "role",
                if user.tenant_id.is_some() {
                    "a tenant's user keeps a tenant role (owner, member, viewer)"
                } else {
                    "a platform user keeps a platform role (admin, operator)"
                },
            );
        }
    }
    p.finish()?;
    if user.version != version {
        return Err(ServiceError::stale("user", user.version));
    }
    let was_admin = user.role == Role::Admin.as_str() && !user.disabled;
    if let Some(role) = patch.role {
        user.role = role.as_str().to_string();
    }
    if let Some(d) = patch.disabled {
        user.disabled = d;
    }
    let ends_sessions = new_hash.is_some() || patch.disabled == Some(true);
    if let Some(h) = new_hash {
        user.password_hash = h;
    }
    let still_admin = user.role == Role::Admin.as_str() && !user.disabled;
    if was_admin && !still_admin && store::count_users_with_role(&mut tx, "admin").await? <= 1 {
        return Err(ServiceError::Conflict(
            "this is the last enabled admin; make another admin first".into(),
        ));
    }
    user.updated_at = now_ms();
    if !store::update_user(&mut tx, &user).await? {
        return Err(ServiceError::stale("user", user.version));
    }
    user.version += 1;
    if ends_sessions {
        store::delete_sessions_of(&mut tx, &user.id).await?;
    }
    let mut changed = Vec::new();
    if patch.role.is_some() {
        changed.push(format!("role={}", user.role));
    }
    if patch.password.is_some() {
        changed.push("password".to_string());
    }
    if let Some(d) = patch.disabled {
        changed.push(format!("disabled={d}"));
    }
    caller
        .commit(
            tx,
            "user.update",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            Some(changed.join(" ")),
        )
        .await?;
    svc.auth_cache.forget_user(&user.id);
    Ok(user)
}

/// Removes a user whose version is still `version` (their sessions and tokens go with it).
pub async fn delete(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let who = caller.who()?.clone();
    let mut tx = svc.db.begin().await?;
    let user = store::user_by_id_tx(&mut tx, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "user" })?;
    authorize(
        &who,
        Area::Users,
        Access::Write,
        Owner::of(user.tenant_id.as_deref()),
    )
    .map_err(|d| ServiceError::denied(d, "user"))?;
    if user.version != version {
        return Err(ServiceError::stale("user", user.version));
    }
    if user.role == Role::Admin.as_str()
        && !user.disabled
        && store::count_users_with_role(&mut tx, "admin").await? <= 1
    {
        return Err(ServiceError::Conflict(
            "this is the last enabled admin; make another admin first".into(),
        ));
    }
    if !store::delete_user(&mut tx, id, version).await? {
        return Err(ServiceError::stale("user", user.version));
    }
    caller
        .commit(
            tx,
            "user.delete",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            Some(format!("username={}", user.username)),
        )
        .await?;
    svc.auth_cache.forget_user(&user.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("a.b-c_d@e").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("Alice").is_err());
        assert!(check_username("-x").is_err());
        assert!(check_username(&"a".repeat(65)).is_err());
    }

    proptest! {
        #[test]
        fn accepted_usernames_are_plain(name in "\\PC{0,70}") {
            if check_username(&name).is_ok() {
                prop_assert!(name.len() <= 64);
                prop_assert!(name.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
