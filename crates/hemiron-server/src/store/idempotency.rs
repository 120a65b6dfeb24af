//! Stored answers of POSTs that carried an `Idempotency-Key`, per principal, for 24 h.

use sqlx::FromRow;

use super::{Db, StoreError};
use crate::on_db;

/// How long a key is kept.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// `status` 0: the first request with the key is still running.
#[derive(Debug, Clone, FromRow)]
pub struct IdempotencyRow {
    pub request_hash: String,
    pub status: i64,
    pub response: String,
}

/// Claims `key` for a request: true if this is its first use (in the last 24 h).
pub async fn claim(
    db: &Db,
    principal: &str,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<bool, StoreError> {
    on_db!(db, p => sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(now - KEEP_MS).execute(p).await.map(|r| r.rows_affected()))?;
    let r = on_db!(db, p => sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, response, created_at) \
         VALUES ($1, $2, $3, 0, '', $4)")
        .bind(principal).bind(key).bind(request_hash).bind(now).execute(p).await.map(|r| r.rows_affected()));
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn get(
    db: &Db,
    principal: &str,
    key: &str,
) -> Result<Option<IdempotencyRow>, StoreError> {
    Ok(on_db!(db, p => sqlx::query_as::<_, IdempotencyRow>(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE principal = $1 AND key = $2")
        .bind(principal).bind(key).fetch_optional(p).await)?)
}

/// Stores the answer of the first request.
pub async fn complete(
    db: &Db,
    principal: &str,
    key: &str,
    status: i64,
    response: &str,
) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE principal = $1 AND key = $2")
        .bind(principal).bind(key).bind(status).bind(response).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Forgets a key whose request failed on the server's side, so that a retry runs again.
pub async fn release(db: &Db, principal: &str, key: &str) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2")
        .bind(principal).bind(key).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}
