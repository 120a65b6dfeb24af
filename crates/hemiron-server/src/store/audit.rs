//! The audit log: append-only records of mutations, logins and credential changes.

use sqlx::FromRow;

use super::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub id: String,
    pub at: i64,
    pub actor: Option<String>,
    pub actor_id: Option<String>,
    pub tenant_id: Option<String>,
    pub action: String,
    pub object: Option<String>,
    pub result: String,
    pub client: Option<String>,
    pub detail: Option<String>,
}

const AUDIT_COLUMNS: &str =
    "id, at, actor, actor_id, tenant_id, action, object, result, client, detail";

const INSERT: &str = "INSERT INTO audit_log (id, at, actor, actor_id, tenant_id, action, object, \
     result, client, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Appends a record inside the transaction that makes the change it records, so that a
/// change is never committed without its record.
pub async fn append_tx(tx: &mut Tx, r: &AuditRow) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(INSERT)
        .bind(&r.id).bind(r.at).bind(&r.actor).bind(&r.actor_id).bind(&r.tenant_id)
        .bind(&r.action).bind(&r.object).bind(&r.result).bind(&r.client).bind(&r.detail)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Appends a record on its own (refusals and failures, which change nothing else).
pub async fn append(db: &Db, r: &AuditRow) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(INSERT)
        .bind(&r.id).bind(r.at).bind(&r.actor).bind(&r.actor_id).bind(&r.tenant_id)
        .bind(&r.action).bind(&r.object).bind(&r.result).bind(&r.client).bind(&r.detail)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// A page of records, newest first, before (`at`, `id`) if given; only `tenant`'s if given.
pub async fn list(
    db: &Db,
    tenant: Option<&str>,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    let (at, id) = before.unwrap_or((i64::MAX, String::new()));
    let unbounded = id.is_empty();
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 OR at < $3 OR (at = $3 AND id < $4)) ORDER BY at DESC, id DESC LIMIT $5"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, AuditRow>(&sql)
        .bind(tenant).bind(unbounded).bind(at).bind(&id).bind(limit).fetch_all(p).await)?)
}
