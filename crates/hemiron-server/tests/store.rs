#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The store on both backends: migrations give the committed schema; one SQLite file serves
//! one server only.

mod common;

use hemiron_server::store::{self, Db};

/// Compares with the committed file; `HEMIRON_BLESS=1` rewrites it instead.
fn compare_with_file(actual: &str, file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var("HEMIRON_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "the migrations no longer give {file}; if the change is intended, run \
         HEMIRON_BLESS=1 cargo nextest run -p hemiron-server --test store and commit it.\n\
         --- got ---\n{actual}"
    );
}

#[tokio::test]
async fn migrations_give_the_committed_sqlite_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&common::fresh_sqlite(dir.path())).await.unwrap();
    compare_with_file(&store::schema(&db).await.unwrap(), "schema/sqlite.txt");
}

#[tokio::test]
async fn migrations_give_the_committed_postgres_schema() {
    let db = Db::open(&common::fresh_postgres().await).await.unwrap();
    compare_with_file(&store::schema(&db).await.unwrap(), "schema/postgres.txt");
}

#[tokio::test]
async fn reopening_applies_nothing_twice() {
    for url in [
        common::fresh_postgres().await,
        common::fresh_sqlite(tempfile::tempdir().unwrap().keep().as_path()),
    ] {
        let db = Db::open(&url).await.unwrap();
        let before = store::schema(&db).await.unwrap();
        db.close().await;
        drop(db);
        let db = Db::open(&url).await.unwrap();
        assert_eq!(store::schema(&db).await.unwrap(), before);
    }
}
