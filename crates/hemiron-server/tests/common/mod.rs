//! Test databases: a SQLite file in a temporary directory, or a fresh database on the
//! throwaway PostgreSQL server the test command starts (`HEMIRON_TEST_POSTGRES`).

#![allow(dead_code)]

use sqlx::Connection;

/// A fresh, empty PostgreSQL database; its URL.
pub async fn fresh_postgres() -> String {
    let admin = std::env::var("HEMIRON_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "HEMIRON_TEST_POSTGRES is not set: run the tests with ./scripts/test, or start a \
             server with `eval \"$(scripts/throwaway-postgres start)\"`"
        )
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// A fresh SQLite database file in `dir`; its URL.
pub fn fresh_sqlite(dir: &std::path::Path) -> String {
    hemiron_server::store::Db::sqlite_url(&dir.join("hemiron.db"))
}
