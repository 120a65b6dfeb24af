//! Users, sessions, API tokens, recovery codes and login failures.

use sqlx::FromRow;

use super::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

/// A user as stored.
#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub disabled: bool,
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const USER_COLUMNS: &str = "id, username, password_hash, role, tenant_id, disabled, totp_secret, \
     totp_enabled, totp_last_step, version, created_at, updated_at";

/// Where a page of a listing starts: after the row with this creation time and id.
#[derive(Debug, Clone, Default)]
pub struct After {
    pub created_at: i64,
    pub id: String,
}

pub async fn insert_user(tx: &mut Tx, u: &UserRow) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, tenant_id, disabled, totp_secret, \
         totp_enabled, totp_last_step, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
        .bind(&u.id).bind(&u.username).bind(&u.password_hash).bind(&u.role)
        .bind(&u.tenant_id).bind(u.disabled).bind(&u.totp_secret).bind(u.totp_enabled)
        .bind(u.totp_last_step).bind(u.version).bind(u.created_at).bind(u.updated_at)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes `u` over the stored user if the stored version is still `u.version`, which it then
/// increments. Returns false if the user changed meanwhile (or is gone).
pub async fn update_user(tx: &mut Tx, u: &UserRow) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE users SET username = $2, password_hash = $3, role = $4, tenant_id = $5, \
         disabled = $6, totp_secret = $7, totp_enabled = $8, totp_last_step = $9, \
         version = version + 1, updated_at = $10 WHERE id = $1 AND version = $11")
        .bind(&u.id).bind(&u.username).bind(&u.password_hash).bind(&u.role)
        .bind(&u.tenant_id).bind(u.disabled).bind(&u.totp_secret).bind(u.totp_enabled)
        .bind(u.totp_last_step).bind(u.updated_at).bind(u.version)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn delete_user(tx: &mut Tx, id: &str, version: i64) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM users WHERE id = $1 AND version = $2")
        .bind(id).bind(version).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn user_by_name(db: &Db, username: &str) -> Result<Option<UserRow>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, UserRow>(&sql).bind(username).fetch_optional(p).await)?)
}

pub async fn user_by_id(db: &Db, id: &str) -> Result<Option<UserRow>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, UserRow>(&sql).bind(id).fetch_optional(p).await)?)
}

/// The same, inside a write transaction (a read-modify-write).
pub async fn user_by_id_tx(tx: &mut Tx, id: &str) -> Result<Option<UserRow>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(on_tx!(tx, c => sqlx::query_as::<_, UserRow>(&sql).bind(id).fetch_optional(c).await)?)
}

/// A page of users, oldest first; only those of `tenant` if given.
pub async fn list_users(
    db: &Db,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<UserRow>, StoreError> {
    let after = after.cloned().unwrap_or(After {
        created_at: i64::MIN,
        id: String::new(),
    });
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE ($1 IS NULL OR tenant_id = $1) \
         AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
         ORDER BY created_at, id LIMIT $4"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, UserRow>(&sql)
        .bind(tenant).bind(after.created_at).bind(&after.id).bind(limit)
        .fetch_all(p).await)?)
}

pub async fn count_users_with_role(tx: &mut Tx, role: &str) -> Result<i64, StoreError> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE role = $1 AND disabled = FALSE")
        .bind(role).fetch_one(c).await)?;
    Ok(n)
}

/// A session, with its user.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub token_hash: String,
    pub csrf_token: String,
    pub expires_at: i64,
    #[sqlx(flatten)]
    pub user: UserRow,
}

pub async fn insert_session(
    tx: &mut Tx,
    token_hash: &str,
    user_id: &str,
    csrf_token: &str,
    client: &str,
    expires_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, client, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(token_hash).bind(user_id).bind(csrf_token).bind(client).bind(expires_at).bind(now)
        .execute(c).await.map(|r| r.rows_affected()))?;
    // Expired sessions go when new ones come.
    on_tx!(tx, c => sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(now).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn session(
    db: &Db,
    token_hash: &str,
    now: i64,
) -> Result<Option<SessionRow>, StoreError> {
    let sql = format!(
        "SELECT s.token_hash, s.csrf_token, s.expires_at, {} FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
        prefixed("u", USER_COLUMNS)
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, SessionRow>(&sql)
        .bind(token_hash).bind(now).fetch_optional(p).await)?)
}

pub async fn delete_session(tx: &mut Tx, token_hash: &str) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Ends every session of a user (disabled, password or MFA changed, deleted).
pub async fn delete_sessions_of(tx: &mut Tx, user_id: &str) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// An API token as stored (the secret only as its SHA-256).
#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub token_hash: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
}

const TOKEN_COLUMNS: &str =
    "id, user_id, name, token_hash, scopes, expires_at, revoked_at, last_used_at, version, created_at";

/// A token with its user.
#[derive(Debug, Clone, FromRow)]
pub struct TokenWithUser {
    #[sqlx(flatten)]
    pub token: TokenRow,
    pub username: String,
    pub tenant_id: Option<String>,
}

pub async fn insert_token(tx: &mut Tx, t: &TokenRow) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO api_tokens (id, user_id, name, token_hash, scopes, expires_at, revoked_at, \
         last_used_at, version, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&t.id).bind(&t.user_id).bind(&t.name).bind(&t.token_hash).bind(&t.scopes)
        .bind(t.expires_at).bind(t.revoked_at).bind(t.last_used_at).bind(t.version)
        .bind(t.created_at)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// The live (unexpired, unrevoked) token with this hash, and its user.
pub async fn live_token(
    db: &Db,
    token_hash: &str,
    now: i64,
) -> Result<Option<(TokenRow, UserRow)>, StoreError> {
    #[derive(FromRow)]
    struct Joined {
        t_id: String,
        t_name: String,
        t_scopes: String,
        t_expires_at: Option<i64>,
        t_revoked_at: Option<i64>,
        t_last_used_at: Option<i64>,
        t_version: i64,
        t_created_at: i64,
        #[sqlx(flatten)]
        user: UserRow,
    }
    let sql = format!(
        "SELECT t.id AS t_id, t.name AS t_name, t.scopes AS t_scopes, \
         t.expires_at AS t_expires_at, t.revoked_at AS t_revoked_at, \
         t.last_used_at AS t_last_used_at, t.version AS t_version, \
         t.created_at AS t_created_at, {} FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
         AND (t.expires_at IS NULL OR t.expires_at > $2)",
        prefixed("u", USER_COLUMNS)
    );
    let row = on_db!(db, p => sqlx::query_as::<_, Joined>(&sql)
        .bind(token_hash).bind(now).fetch_optional(p).await)?;
    Ok(row.map(|j| {
        let token = TokenRow {
            id: j.t_id,
            user_id: j.user.id.clone(),
            name: j.t_name,
            token_hash: token_hash.to_string(),
            scopes: j.t_scopes,
            expires_at: j.t_expires_at,
            revoked_at: j.t_revoked_at,
            last_used_at: j.t_last_used_at,
            version: j.t_version,
            created_at: j.t_created_at,
        };
        (token, j.user)
    }))
}

/// Notes that a token was used, at most once a minute (not a write per request).
pub async fn touch_token(db: &Db, id: &str, now: i64) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(
        "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 \
         AND (last_used_at IS NULL OR last_used_at < $3)")
        .bind(id).bind(now).bind(now - 60_000).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn token_by_id(db: &Db, id: &str) -> Result<Option<TokenWithUser>, StoreError> {
    let sql = format!(
        "SELECT {}, u.username, u.tenant_id FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.id = $1",
        prefixed("t", TOKEN_COLUMNS)
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, TokenWithUser>(&sql).bind(id).fetch_optional(p).await)?)
}

/// A page of tokens, oldest first: of one user, or of every user of a tenant, or all.
pub async fn list_tokens(
    db: &Db,
    user: Option<&str>,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<TokenWithUser>, StoreError> {
    let after = after.cloned().unwrap_or(After {
        created_at: i64::MIN,
        id: String::new(),
    });
    let sql = format!(
        "SELECT {}, u.username, u.tenant_id FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE ($1 IS NULL OR t.user_id = $1) AND ($2 IS NULL OR u.tenant_id = $2) \
         AND (t.created_at > $3 OR (t.created_at = $3 AND t.id > $4)) \
         ORDER BY t.created_at, t.id LIMIT $5",
        prefixed("t", TOKEN_COLUMNS)
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, TokenWithUser>(&sql)
        .bind(user).bind(tenant).bind(after.created_at).bind(&after.id).bind(limit)
        .fetch_all(p).await)?)
}

/// Revokes a token if its version is still `version`.
pub async fn revoke_token(
    tx: &mut Tx,
    id: &str,
    version: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE api_tokens SET revoked_at = $2, version = version + 1 \
         WHERE id = $1 AND version = $3 AND revoked_at IS NULL")
        .bind(id).bind(now).bind(version).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Replaces a user's recovery codes.
pub async fn replace_recovery_codes(
    tx: &mut Tx,
    user_id: &str,
    hashes: &[String],
) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    for h in hashes {
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id).bind(h).execute(c).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

/// Uses up a recovery code: true if it was there and unused.
pub async fn use_recovery_code(
    tx: &mut Tx,
    user_id: &str,
    hash: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE recovery_codes SET used_at = $3 \
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL")
        .bind(user_id).bind(hash).bind(now).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn unused_recovery_codes(db: &Db, user_id: &str) -> Result<i64, StoreError> {
    let n: i64 = on_db!(db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id).fetch_one(p).await)?;
    Ok(n)
}

/// Records a failed login (and forgets those older than a day).
pub async fn record_login_failure(
    db: &Db,
    username: &str,
    client: &str,
    now: i64,
) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(
        "INSERT INTO login_failures (username, client, at) VALUES ($1, $2, $3)")
        .bind(username).bind(client).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
    on_db!(db, p => sqlx::query("DELETE FROM login_failures WHERE at < $1")
        .bind(now - 86_400_000).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Failures since `since` and the time of the oldest of them, for an account or a client.
pub async fn login_failures_since(
    db: &Db,
    username: Option<&str>,
    client: Option<&str>,
    since: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    let row: (i64, Option<i64>) = on_db!(db, p => sqlx::query_as(
        "SELECT COUNT(*), MIN(at) FROM login_failures \
         WHERE ($1 IS NULL OR username = $1) AND ($2 IS NULL OR client = $2) AND at >= $3")
        .bind(username).bind(client).bind(since).fetch_one(p).await)?;
    Ok(row)
}

/// Forgets an account's failures after a successful login.
pub async fn clear_login_failures(db: &Db, username: &str) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query("DELETE FROM login_failures WHERE username = $1")
        .bind(username).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// `a.x, a.y, …` for a column list `x, y, …`.
fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
