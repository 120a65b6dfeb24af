//! Logging in and out, finding the principal behind a credential, and TOTP MFA.
//!
//! Login answers the same way, after the same work (one argon2 verification), whether the
//! user exists or not. Failures are counted in the store per account and per client address;
//! past the limits, logins are refused with a retry time before any password is checked.
//! Session and API-token secrets are random 256-bit strings stored only as SHA-256; the
//! prefix (`hms_` session, `hmt_` token) says where to look one up.

use serde::Serialize;
use utoipa::ToSchema;

use super::crypto::{self, totp};
use crate::authz::{Principal, Role, Scopes, Via};
use crate::error::ServiceError;
use crate::service::{Caller, Services};
use crate::store::identity::{self as users, UserRow};
use crate::store::{audit, now_ms};

pub const SESSION_PREFIX: &str = "hms";
pub const TOKEN_PREFIX: &str = "hmt";

/// A successful login.
#[derive(Debug)]
pub struct LoginOk {
    /// The session secret: the cookie's value, or a bearer token.
    pub token: String,
    pub csrf_token: String,
    pub expires_at: i64,
    pub user: UserRow,
}

/// Checks the password (and the TOTP or recovery code if the account has MFA) and opens a
/// session.
pub async fn login(
    svc: &Services,
    caller: &Caller,
    username: &str,
    password: &str,
    code: Option<&str>,
) -> Result<LoginOk, ServiceError> {
    let now = now_ms();
    check_limits(svc, username, &caller.client, now).await?;
    let user = users::user_by_name(&svc.db, username)
        .await?
        .filter(|u| !u.disabled);
    let ok = crypto::verify_password(
        password.to_string(),
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            fail(svc, caller, username, "bad-credentials").await?;
            return Err(ServiceError::BadCredentials);
        }
    };
    if user.totp_enabled {
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            let row = caller.audit(
                "auth.login",
                Some(format!("user:{}", user.id)),
                user.tenant_id.clone(),
                "mfa-required",
                Some(format!("username={username}")),
            );
            audit::append(&svc.db, &row).await?;
            return Err(ServiceError::MfaRequired);
        };
        if !use_second_factor(svc, &user, code).await? {
            fail(svc, caller, username, "bad-mfa-code").await?;
            return Err(ServiceError::BadMfa);
        }
    }
    let (token, token_hash) = crypto::new_secret(SESSION_PREFIX);
    let (csrf_token, _) = crypto::new_secret("csrf");
    let ttl = i64::try_from(svc.settings.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl);
    let mut tx = svc.db.begin().await?;
    users::insert_session(
        &mut tx,
        &token_hash,
        &user.id,
        &csrf_token,
        &caller.client,
        expires_at,
        now,
    )
    .await?;
    // The session's user is the actor (the caller had no principal yet).
    let as_user = Caller {
        principal: Some(crate::authz::Principal {
            user_id: user.id.clone(),
            username: user.username.clone(),
            role: user.role.parse().unwrap_or(Role::Viewer),
            tenant_id: user.tenant_id.clone(),
            scopes: Scopes::all(),
            via: Via::Session {
                token_hash: token_hash.clone(),
                csrf_token: csrf_token.clone(),
            },
        }),
        client: caller.client.clone(),
    };
    as_user
        .commit(
            tx,
            "auth.login",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            None,
        )
        .await?;
    users::clear_login_failures(&svc.db, username).await?;
    tracing::info!(user = %user.username, "login");
    Ok(LoginOk {
        token,
        csrf_token,
        expires_at,
        user,
    })
}

/// Refuses a login attempt (429) while the account or the client is over its failure limit.
async fn check_limits(
    svc: &Services,
    username: &str,
    client: &str,
    now: i64,
) -> Result<(), ServiceError> {
    let s = &svc.settings;
    let checks = [
        (Some(username), None, s.account_window, s.account_failures),
        (None, Some(client), s.client_window, s.client_failures),
    ];
    for (user, client, window, limit) in checks {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let (count, oldest) =
            users::login_failures_since(&svc.db, user, client, now - window).await?;
        if count >= limit {
            // Free again when the oldest failure in the window leaves it.
            let free_at = oldest.unwrap_or(now) + window;
            let secs = u64::try_from((free_at - now).max(1000) / 1000).unwrap_or(1);
            return Err(ServiceError::RateLimited {
                retry_after_secs: secs.max(1),
            });
        }
    }
    Ok(())
}

async fn fail(
    svc: &Services,
    caller: &Caller,
    username: &str,
    why: &str,
) -> Result<(), ServiceError> {
    users::record_login_failure(&svc.db, username, &caller.client, now_ms()).await?;
    let mut row = caller.audit("auth.login", None, None, "denied", Some(why.to_string()));
    row.actor = Some(username.to_string());
    audit::append(&svc.db, &row).await?;
    tracing::info!(user = %username, client = %caller.client, reason = why, "login refused");
    Ok(())
}

/// Accepts a TOTP code (once: its time-step must be later than the last accepted one) or an
/// unused recovery code (then used up).
async fn use_second_factor(
    svc: &Services,
    user: &UserRow,
    code: &str,
) -> Result<bool, ServiceError> {
    let Some(secret) = user.totp_secret.as_deref() else {
        return Ok(false);
    };
    let mut tx = svc.db.begin().await?;
    // Re-read in the write transaction: two logins racing with one code accept it once.
    let Some(mut current) = users::user_by_id_tx(&mut tx, &user.id).await? else {
        return Ok(false);
    };
    let secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let ok = if let Some(step) = totp::accept(secret, code, secs, current.totp_last_step) {
        current.totp_last_step = Some(step);
        current.updated_at = now_ms();
        users::update_user(&mut tx, &current).await?
    } else {
        users::use_recovery_code(
            &mut tx,
            &user.id,
            &crypto::recovery_code_hash(code),
            now_ms(),
        )
        .await?
    };
    tx.commit().await?;
    Ok(ok)
}

/// The principal behind a bearer token or session cookie, if it is live.
pub async fn authenticate(svc: &Services, secret: &str) -> Result<Option<Principal>, ServiceError> {
    let hash = crypto::sha256_hex(secret);
    if let Some(p) = svc.auth_cache.get(&hash) {
        return Ok(Some(p));
    }
    let found = authenticate_uncached(svc, secret, &hash).await?;
    if let Some(p) = &found {
        svc.auth_cache.put(hash, p.clone());
    }
    Ok(found)
}

async fn authenticate_uncached(
    svc: &Services,
    secret: &str,
    hash: &str,
) -> Result<Option<Principal>, ServiceError> {
    let hash = hash.to_string();
    let now = now_ms();
    if secret.starts_with(&format!("{TOKEN_PREFIX}_")) {
        let Some((token, user)) = users::live_token(&svc.db, &hash, now).await? else {
            return Ok(None);
        };
        if user.disabled {
            return Ok(None);
        }
        let Ok(role) = user.role.parse::<Role>() else {
            return Ok(None);
        };
        let Ok(scopes) = Scopes::parse(&token.scopes) else {
            return Ok(None);
        };
        users::touch_token(&svc.db, &token.id, now).await?;
        return Ok(Some(Principal {
            user_id: user.id,
            username: user.username,
            role,
            tenant_id: user.tenant_id,
            scopes,
            via: Via::Token { id: token.id },
        }));
    }
    if secret.starts_with(&format!("{SESSION_PREFIX}_")) {
        let Some(s) = users::session(&svc.db, &hash, now).await? else {
            return Ok(None);
        };
        if s.user.disabled {
            return Ok(None);
        }
        let Ok(role) = s.user.role.parse::<Role>() else {
            return Ok(None);
        };
        return Ok(Some(Principal {
            user_id: s.user.id,
            username: s.user.username,
            role,
            tenant_id: s.user.tenant_id,
            scopes: Scopes::all(),
            via: Via::Session {
                token_hash: s.token_hash,
                csrf_token: s.csrf_token,
            },
        }));
    }
    Ok(None)
}

/// Ends the caller's session (a token stays valid: revoke it instead).
pub async fn logout(svc: &Services, caller: &Caller) -> Result<(), ServiceError> {
    let who = caller.who()?;
    if let Via::Session { token_hash, .. } = &who.via {
        svc.auth_cache.forget_session(token_hash);
        let mut tx = svc.db.begin().await?;
        users::delete_session(&mut tx, token_hash).await?;
        caller
            .commit(
                tx,
                "auth.logout",
                format!("user:{}", who.user_id),
                who.tenant_id.clone(),
                None,
            )
            .await?;
    }
    Ok(())
}

/// A TOTP enrollment in progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// The shared secret, base32 (for apps that cannot read the URL).
    pub secret: String,
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_url: String,
}

/// Re-checks the caller's password (MFA changes need it) and returns their stored user.
async fn reauthenticate(
    svc: &Services,
    caller: &Caller,
    password: &str,
) -> Result<UserRow, ServiceError> {
    let who = caller.who()?;
    let user = users::user_by_id(&svc.db, &who.user_id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    if !crypto::verify_password(password.to_string(), Some(user.password_hash.clone())).await? {
        let row = caller.audit(
            "auth.reauthenticate",
            Some(format!("user:{}", user.id)),
            user.tenant_id.clone(),
            "denied",
            None,
        );
        audit::append(&svc.db, &row).await?;
        return Err(ServiceError::invalid("password", "wrong password"));
    }
    Ok(user)
}

/// Starts TOTP enrollment: a new secret, not yet required at login.
pub async fn totp_begin(
    svc: &Services,
    caller: &Caller,
    password: &str,
) -> Result<TotpEnrollment, ServiceError> {
    let mut user = reauthenticate(svc, caller, password).await?;
    if user.totp_enabled {
        return Err(ServiceError::Conflict(
            "TOTP is already enabled; disable it first".into(),
        ));
    }
    let secret = totp::new_secret();
    let url = totp::url(&secret, &user.username)
        .ok_or_else(|| ServiceError::Conflict("cannot make a TOTP URL for this user".into()))?;
    user.totp_secret = Some(secret.clone());
    user.totp_last_step = None;
    user.updated_at = now_ms();
    let mut tx = svc.db.begin().await?;
    if !users::update_user(&mut tx, &user).await? {
        return Err(ServiceError::stale("user", user.version));
    }
    caller
        .commit(
            tx,
            "auth.mfa.enroll",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            None,
        )
        .await?;
    Ok(TotpEnrollment {
        secret,
        otpauth_url: url,
    })
}

/// Confirms enrollment with a first code: TOTP is required from now on. Returns the ten
/// recovery codes (shown once).
pub async fn totp_confirm(
    svc: &Services,
    caller: &Caller,
    code: &str,
) -> Result<Vec<String>, ServiceError> {
    let who = caller.who()?;
    let mut tx = svc.db.begin().await?;
    let mut user = users::user_by_id_tx(&mut tx, &who.user_id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    let secret = match (&user.totp_secret, user.totp_enabled) {
        (Some(s), false) => s.clone(),
        (_, true) => return Err(ServiceError::Conflict("TOTP is already enabled".into())),
        (None, false) => {
            return Err(ServiceError::Conflict(
                "no TOTP enrollment in progress: start one first".into(),
            ))
        }
    };
    let secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let Some(step) = totp::accept(&secret, code, secs, user.totp_last_step) else {
        return Err(ServiceError::invalid("code", "wrong or expired TOTP code"));
    };
    user.totp_enabled = true;
    user.totp_last_step = Some(step);
    user.updated_at = now_ms();
    if !users::update_user(&mut tx, &user).await? {
        return Err(ServiceError::stale("user", user.version));
    }
    let codes = crypto::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|(_, h)| h.clone()).collect();
    users::replace_recovery_codes(&mut tx, &user.id, &hashes).await?;
    caller
        .commit(
            tx,
            "auth.mfa.enable",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            None,
        )
        .await?;
    Ok(codes.into_iter().map(|(c, _)| c).collect())
}

/// Turns TOTP off (password and a current code or recovery code needed).
pub async fn totp_disable(
    svc: &Services,
    caller: &Caller,
    password: &str,
    code: &str,
) -> Result<(), ServiceError> {
    let user = reauthenticate(svc, caller, password).await?;
    if !user.totp_enabled {
        return Err(ServiceError::Conflict("TOTP is not enabled".into()));
    }
    if !use_second_factor(svc, &user, code).await? {
        return Err(ServiceError::invalid("code", "wrong or already used code"));
    }
    let mut tx = svc.db.begin().await?;
    let mut user = users::user_by_id_tx(&mut tx, &user.id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    user.totp_enabled = false;
    user.totp_secret = None;
    user.totp_last_step = None;
    user.updated_at = now_ms();
    if !users::update_user(&mut tx, &user).await? {
        return Err(ServiceError::stale("user", user.version));
    }
    users::replace_recovery_codes(&mut tx, &user.id, &[]).await?;
    caller
        .commit(
            tx,
            "auth.mfa.disable",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            None,
        )
        .await?;
    Ok(())
}

/// Replaces the recovery codes (password and a current code needed).
pub async fn recovery_codes_renew(
    svc: &Services,
    caller: &Caller,
    password: &str,
    code: &str,
) -> Result<Vec<String>, ServiceError> {
    let user = reauthenticate(svc, caller, password).await?;
    if !user.totp_enabled {
        return Err(ServiceError::Conflict("TOTP is not enabled".into()));
    }
    if !use_second_factor(svc, &user, code).await? {
        return Err(ServiceError::invalid("code", "wrong or already used code"));
    }
    let codes = crypto::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|(_, h)| h.clone()).collect();
    let mut tx = svc.db.begin().await?;
    users::replace_recovery_codes(&mut tx, &user.id, &hashes).await?;
    caller
        .commit(
            tx,
            "auth.mfa.recovery-codes",
            format!("user:{}", user.id),
            user.tenant_id.clone(),
            None,
        )
        .await?;
    Ok(codes.into_iter().map(|(c, _)| c).collect())
}

/// Unused recovery codes left (for `GET /auth/me`).
pub async fn recovery_codes_left(svc: &Services, user_id: &str) -> Result<i64, ServiceError> {
    Ok(users::unused_recovery_codes(&svc.db, user_id).await?)
}
