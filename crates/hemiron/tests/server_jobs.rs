#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Durable jobs across servers: two servers share one PostgreSQL database and its 50 queued
//! jobs (resizes of VPSes whose VM lives on a real node agent). One server is killed with
//! SIGKILL while it holds jobs half done — its workers are made to hang (a test hook) after
//! changing the VM and before recording the job's end. Every job still finishes, once: one
//! success, one event per VPS; the dead server's jobs are taken over when their leases run
//! out.

mod common;

use std::time::Duration;

use common::control::{fresh_postgres, Backend, Server};
use common::rows;
use common::{create_vm, wait_for, Agent};
use hemiron_server::store::fleet;
use hemiron_server::store::jobs;
use hemiron_server::store::tenancy;
use hemiron_server::store::{now_ms, Db};
use serde_json::json;

const JOBS: usize = 50;

fn seed(url: &str, agent: &Agent) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(url).await.unwrap();
        let now = now_ms();
        let mut tx = db.begin().await.unwrap();
        let tenant = rows::tenant("tenant-acme", "acme", 1000, JOBS as i64);
        tenancy::insert_tenant(&mut tx, &tenant).await.unwrap();
        let cluster = rows::cluster(
            "cluster-0",
            "c0",
            agent.url.trim(),
            "root@pam!test",
            &agent.token,
        );
        fleet::insert_cluster(&mut tx, &cluster).await.unwrap();
        let resize = json!({"vcpus": 1, "memory_mib": 128, "disk_gib": 1}).to_string();
        for i in 0..JOBS {
            // Every VPS points at the one VM: resizing it to its own size is harmless.
            let v = rows::vps(
                &format!("vps-{i}"),
                &tenant.id,
                &format!("v{i}"),
                "stopped",
                100,
                now + i as i64,
            );
            fleet::insert_vps(&mut tx, &v).await.unwrap();
            let j = rows::job(
                &format!("job-{i}"),
                "vps.resize",
                &tenant.id,
                &v.id,
                "queued",
                &resize,
                now + i as i64,
            );
            jobs::insert(&mut tx, &j).await.unwrap();
        }
        tx.commit().await.unwrap();
        fleet::upsert_node(&db, &rows::node("node-0", "cluster-0", "n1", 2, 4096))
            .await
            .unwrap();
        db.close().await;
    });
}

#[test]
fn two_servers_one_killed_every_job_runs_once() {
    let agent = Agent::start();
    create_vm(&agent.api(), "n1", 100, &[]);
    let url = fresh_postgres();
    seed(&url, &agent);
    let args = ["--job-lease", "2s", "--reconcile-interval", "1h"];
    // Server a claims jobs as soon as it starts; its workers hang before finishing them.
    let mut a = Server::start_in_env(
        tempfile::tempdir().unwrap(),
        Some(url.clone()),
        Backend::Postgres,
        &args,
        &[("HEMIRON_TEST_STALL_AT", "vps.resize:complete")],
    );
    let b = Server::start_in(
        tempfile::tempdir().unwrap(),
        Some(url.clone()),
        Backend::Postgres,
        &args,
    );
    let admin = b.admin();
    let state = |c: &common::control::Client, i: usize| {
        c.get(&format!("/jobs/job-{i}")).expect(200)["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    wait_for("server a to hold jobs", Duration::from_secs(60), || {
        a.output()
            .contains("HEMIRON_TEST_STALL_AT reached")
            .then_some(())
    });
    a.kill9();
    wait_for("every job to finish", Duration::from_secs(300), || {
        (0..JOBS)
            .all(|i| state(&admin, i) == "succeeded")
            .then_some(())
    });
    let mut taken_over = 0;
    for i in 0..JOBS {
        let job = admin.get(&format!("/jobs/job-{i}")).expect(200);
        assert_eq!(job["state"], "succeeded", "{job}");
        if job["attempts"].as_i64().unwrap() > 1 {
            taken_over += 1;
        }
        let events = admin.get(&format!("/vps/vps-{i}/events")).expect(200);
        let resized = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "vps.resized")
            .count();
        assert_eq!(resized, 1, "vps-{i}: {events}");
    }
    // The job the dead server was finishing (and any other it held) ran again elsewhere.
    assert!(
        taken_over >= 1,
        "no job was taken over from the dead server"
    );
}
