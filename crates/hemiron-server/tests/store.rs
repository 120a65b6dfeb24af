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

#[tokio::test]
async fn vps_pages_come_back_in_order_on_both_stores() {
    use hemiron_server::store::fleet::{self, VpsRow};
    use hemiron_server::store::identity::After;
    use hemiron_server::store::tenancy::{self, TenantRow};
    let dir = tempfile::tempdir().unwrap();
    for url in [
        common::fresh_postgres().await,
        common::fresh_sqlite(dir.path()),
    ] {
        let db = Db::open(&url).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let t = TenantRow {
            id: "t".into(),
            name: "t".into(),
            quota_vcpus: 1,
            quota_memory_mib: 1,
            quota_disk_gib: 1,
            quota_vms: 1,
            used_vcpus: 0,
            used_memory_mib: 0,
            used_disk_gib: 0,
            used_vms: 0,
            version: 1,
            created_at: 0,
            updated_at: 0,
        };
        tenancy::insert_tenant(&mut tx, &t).await.unwrap();
        // Inserted out of order, with ties on the creation time.
        for (i, at) in [(3, 20), (1, 10), (2, 10), (0, 5), (4, 30)] {
            let v = VpsRow {
                id: format!("v{i}"),
                tenant_id: "t".into(),
                name: format!("n{i}"),
                plan_id: None,
                template: "x".into(),
                vcpus: 1,
                memory_mib: 1,
                disk_gib: 1,
                username: "u".into(),
                ssh_keys: "k".into(),
                full_clone: i % 2 == 0,
                anti_affinity: None,
                cluster_id: None,
                node: None,
                vmid: Some(i),
                state: "running".into(),
                power: "running".into(),
                ssh_address: None,
                web_address: None,
                drift: None,
                last_error: None,
                version: 1,
                created_at: at,
                updated_at: at,
            };
            fleet::insert_vps(&mut tx, &v).await.unwrap();
        }
        tx.commit().await.unwrap();
        let first = fleet::list_vps(&db, Some("t"), None, 3).await.unwrap();
        let ids: Vec<&str> = first.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["v0", "v1", "v2"], "{url}");
        assert!(first[0].full_clone && !first[1].full_clone);
        let after = After {
            created_at: first[2].created_at,
            id: first[2].id.clone(),
        };
        let rest = fleet::list_vps(&db, Some("t"), Some(&after), 3)
            .await
            .unwrap();
        let ids: Vec<&str> = rest.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["v3", "v4"], "{url}");
        assert!(fleet::list_vps(&db, Some("none"), None, 3)
            .await
            .unwrap()
            .is_empty());
    }
}
