#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Durable jobs across servers: two servers share one PostgreSQL database and its 50 queued
//! jobs (resizes of VPSes whose VM lives on a real node agent). One server dies in the middle
//! of its first job — after changing the VM, before recording the job's end (a test hook
//! aborts the process there, as a crash or `kill -9` would) — while holding jobs. Every job
//! still finishes, once: one success, one event per VPS; the dead server's jobs are taken
//! over when their leases run out.

mod common;

use std::time::Duration;

use common::control::{fresh_postgres, Backend, Server};
use common::{create_vm, wait_for, Agent};
use hemiron_server::store::fleet::{self, ClusterRow, NodeRow, VpsRow};
use hemiron_server::store::jobs::{self, JobRow};
use hemiron_server::store::tenancy::{self, TenantRow};
use hemiron_server::store::{now_ms, Db};
use serde_json::json;

const JOBS: usize = 50;

fn seed(url: &str, agent: &Agent) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(url).await.unwrap();
        let now = now_ms();
        let mut tx = db.begin().await.unwrap();
        let tenant = TenantRow {
            id: "tenant-acme".into(),
            name: "acme".into(),
            quota_vcpus: 1000,
            quota_memory_mib: 1 << 30,
            quota_disk_gib: 100_000,
            quota_vms: 1000,
            used_vcpus: JOBS as i64,
            used_memory_mib: JOBS as i64 * 128,
            used_disk_gib: JOBS as i64,
            used_vms: JOBS as i64,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        tenancy::insert_tenant(&mut tx, &tenant).await.unwrap();
        let cluster = ClusterRow {
            id: "cluster-0".into(),
            name: "c0".into(),
            endpoint: agent.url.trim().to_string(),
            token_id: "root@pam!test".into(),
            token_secret: agent.token.clone(),
            fingerprint: None,
            status: "online".into(),
            last_error: None,
            last_seen_at: Some(now),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        fleet::insert_cluster(&mut tx, &cluster).await.unwrap();
        for i in 0..JOBS {
            let v = VpsRow {
                id: format!("vps-{i}"),
                tenant_id: tenant.id.clone(),
                name: format!("v{i}"),
                plan_id: None,
                template: "guest".into(),
                vcpus: 1,
                memory_mib: 128,
                disk_gib: 1,
                username: "hemiron".into(),
                ssh_keys: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x".into(),
                full_clone: false,
                anti_affinity: None,
                cluster_id: Some("cluster-0".into()),
                node: Some("n1".into()),
                vmid: Some(100),
                state: "stopped".into(),
                power: "stopped".into(),
                ssh_address: None,
                web_address: None,
                drift: None,
                last_error: None,
                version: 1,
                created_at: now + i as i64,
                updated_at: now,
            };
            fleet::insert_vps(&mut tx, &v).await.unwrap();
            let j = JobRow {
                id: format!("job-{i}"),
                kind: "vps.resize".into(),
                tenant_id: Some(tenant.id.clone()),
                vps_id: Some(v.id.clone()),
                state: "queued".into(),
                step: "start".into(),
                payload: json!({"vcpus": 1, "memory_mib": 128, "disk_gib": 1}).to_string(),
                checkpoint: "{}".into(),
                error: None,
                attempts: 0,
                lease_owner: None,
                lease_until: None,
                fence: 0,
                run_after: now,
                created_at: now + i as i64,
                updated_at: now,
                finished_at: None,
            };
            jobs::insert(&mut tx, &j).await.unwrap();
        }
        tx.commit().await.unwrap();
        let node = NodeRow {
            id: "node-0".into(),
            cluster_id: "cluster-0".into(),
            name: "n1".into(),
            status: "online".into(),
            accel: Some("tcg".into()),
            cpus: 2,
            memory_mib: 4096,
            reserved_vcpus: 0,
            reserved_memory_mib: 0,
            reserved_disk_gib: 0,
            maintenance: false,
            updated_at: now,
        };
        fleet::upsert_node(&db, &node).await.unwrap();
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
    // Server a claims jobs as soon as it starts, and dies at its first completion.
    let a = Server::start_in_env(
        tempfile::tempdir().unwrap(),
        Some(url.clone()),
        Backend::Postgres,
        &args,
        &[("HEMIRON_TEST_CRASH_AT", "vps.resize:complete")],
    );
    let b = Server::start_in(
        tempfile::tempdir().unwrap(),
        Some(url.clone()),
        Backend::Postgres,
        &args,
    );
    let admin = b.admin();
    let done = |c: &common::control::Client| {
        (0..JOBS)
            .filter(|i| c.get(&format!("/jobs/job-{i}")).expect(200)["state"] == "succeeded")
            .count()
    };
    wait_for("every job to finish", Duration::from_secs(300), || {
        (done(&admin) == JOBS).then_some(())
    });
    let mut a = a;
    let crashed = a.child.as_mut().unwrap().try_wait().unwrap();
    assert!(
        crashed.is_some(),
        "server a should have died at its first job's end: {}",
        a.output()
    );
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
