#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control plane moving a VPS between the two nodes of a real cluster (two agents, one
//! shared storage directory): a failure injected at every phase before the switchover is
//! undone (the VPS stays, the target's reservation is freed), a failed verification after it
//! leaves the VPS where its VM runs and the job `needs-attention`, and a server killed at
//! every phase finishes the job when it starts again, with one copy of the VM throughout.
//! Test names start with `vm_` so nextest runs them one at a time.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{cluster, listed};
use common::control::{Backend, Client, Server};
use common::{create_vm, guest_get, wait_for};
use serde_json::{json, Value};

fn wait_job(client: &Client, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap().to_string();
    wait_for("job to finish", Duration::from_secs(300), || {
        let j = client.get(&format!("/jobs/{id}")).expect(200);
        matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "needs-attention")
        )
        .then_some(j)
    })
}

fn node<'a>(nodes: &'a Value, name: &str) -> &'a Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()
}

/// (reserved memory on n1, on n2) in MiB.
fn reserved(admin: &Client) -> (i64, i64) {
    let nodes = admin.get("/nodes").expect(200);
    (
        node(&nodes, "n1")["reserved_memory_mib"].as_i64().unwrap(),
        node(&nodes, "n2")["reserved_memory_mib"].as_i64().unwrap(),
    )
}

/// The server again, with `env` (a fault or crash hook) or none.
fn restart(server: &mut Server, env: Option<(&str, String)>) -> Client {
    server.kill9();
    server.env = env.map(|(k, v)| (k.to_string(), v)).into_iter().collect();
    server.launch();
    server.admin()
}

#[test]
fn vm_vps_migration_undoes_failures_and_survives_crashes() {
    let c = cluster();
    let (a1, a2) = (c.n1.api(), c.n2.api());
    // The template's disk on the shared storage: its linked clones can move without
    // copying disks.
    let image = common::guest_image();
    create_vm(
        &a1,
        "n1",
        9000,
        &[
            ("name", "guest"),
            (
                "scsi0",
                &format!("shared:0,import-from={}", image.display()),
            ),
        ],
    );
    a1.task_ok("n1", "POST", "/nodes/n1/qemu/9000/template", &[]);

    let mut server = Server::start(Backend::Sqlite);
    let mut admin = server.admin();
    let r = admin.post(
        "/clusters",
        &json!({"name": "c1", "endpoint": c.n1.url.trim(), "token_id": "root@pam!test",
                "token_secret": c.n1.token}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let nodes = admin.get("/nodes").expect(200);
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    let tenant = admin
        .post("/tenants", &json!({"name": "acme", "quota": {"vcpus": 4, "memory_mib": 1024, "disk_gib": 10, "vms": 2}}))
        .expect(201);
    admin
        .post(
            "/plans",
            &json!({"name": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}),
        )
        .expect(201);
    let made = admin
        .post(
            "/vps",
            &json!({"name": "web1", "plan": "tiny", "template": "guest", "tenant_id": tenant["id"],
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench t"]}),
        )
        .expect(201);
    let job = wait_job(&admin, &made["job"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", server.output());
    let id = made["id"].as_str().unwrap().to_string();
    let vps = admin.get(&format!("/vps/{id}")).expect(200);
    assert_eq!(vps["node"], "n1", "{vps}");
    let vmid = vps["vmid"].as_u64().unwrap();
    let web = vps["web_address"].as_str().unwrap().to_string();
    wait_for("guest HTTP", Duration::from_secs(120), || {
        guest_get(&web, "/")
    });
    assert_eq!(reserved(&admin), (128, 0));

    // A failure at every phase before the switchover: undone.
    for point in ["validate", "reserve", "transfer-start", "transfer-wait"] {
        admin = restart(
            &mut server,
            Some(("HEMIRON_TEST_FAIL_AT", format!("vps.migrate:{point}"))),
        );
        let job = admin
            .post(&format!("/vps/{id}/migrate"), &json!({"node": "n2"}))
            .expect(202);
        let j = wait_job(&admin, &job);
        assert_eq!(j["state"], "failed", "{point}: {j}\n{}", server.output());
        assert!(j["error"].as_str().unwrap().contains(point), "{point}: {j}");
        let v = admin.get(&format!("/vps/{id}")).expect(200);
        assert_eq!(
            (v["node"].as_str(), v["state"].as_str()),
            (Some("n1"), Some("running")),
            "{point}: {v}"
        );
        assert_eq!(reserved(&admin), (128, 0), "{point}");
        // The VM was taken back (a stopped node task does it in the background).
        wait_for("VM back on n1", Duration::from_secs(60), || {
            (listed(&a1, "n1").contains(&vmid) && !listed(&a2, "n2").contains(&vmid)).then_some(())
        });
        wait_for("VM running on n1", Duration::from_secs(60), || {
            let st = a1
                .get(&format!("/nodes/n1/qemu/{vmid}/status/current"), &[])
                .ok();
            (st["qmpstatus"] == "running").then_some(())
        });
        assert!(guest_get(&web, "/").is_some(), "{point}: guest silent");
    }

    // A failed verification after the switchover: the VPS follows its VM.
    admin = restart(
        &mut server,
        Some(("HEMIRON_TEST_FAIL_AT", "vps.migrate:verify".into())),
    );
    let job = admin
        .post(&format!("/vps/{id}/migrate"), &json!({"node": "n2"}))
        .expect(202);
    let j = wait_job(&admin, &job);
    assert_eq!(j["state"], "needs-attention", "{j}\n{}", server.output());
    let v = admin.get(&format!("/vps/{id}")).expect(200);
    assert_eq!(v["node"], "n2", "{v}");
    assert_eq!(reserved(&admin), (0, 128));
    assert!(listed(&a2, "n2").contains(&vmid) && !listed(&a1, "n1").contains(&vmid));
    let events = admin.get(&format!("/vps/{id}/events")).expect(200);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "vps.migrate.needs-attention"),
        "{events}"
    );

    // The server killed at every phase: started again, it finishes the job.
    let mut here = "n2";
    for step in ["validated", "reserved", "transferring", "transferred"] {
        let there = if here == "n1" { "n2" } else { "n1" };
        admin = restart(
            &mut server,
            Some(("HEMIRON_TEST_CRASH_AT", format!("vps.migrate:{step}"))),
        );
        let job = admin
            .post(&format!("/vps/{id}/migrate"), &json!({"node": there}))
            .expect(202);
        wait_for("server to crash", Duration::from_secs(120), || {
            server
                .child
                .as_mut()
                .and_then(|ch| ch.try_wait().ok().flatten())
                .map(|_| ())
        });
        admin = restart(&mut server, None);
        let j = wait_job(&admin, &job);
        assert_eq!(j["state"], "succeeded", "{step}: {j}\n{}", server.output());
        let v = admin.get(&format!("/vps/{id}")).expect(200);
        assert_eq!(v["node"], there, "{step}: {v}");
        let (on1, on2) = (
            listed(&a1, "n1").contains(&vmid),
            listed(&a2, "n2").contains(&vmid),
        );
        assert!(on1 ^ on2, "{step}: one copy, on {there}");
        assert_eq!(on1, there == "n1", "{step}");
        let r = reserved(&admin);
        assert_eq!(r.0 + r.1, 128, "{step}: {r:?}");
        assert!(guest_get(&web, "/").is_some(), "{step}: guest silent");
        here = there;
    }

    // The command line, with its progress bar (in a script: plain output).
    let token = admin.bearer.clone().unwrap();
    let there = if here == "n1" { "n2" } else { "n1" };
    let out = Command::new(common::hemiron())
        .args([
            "--server",
            &server.url,
            "--token",
            &token,
            "vps",
            "migrate",
            "web1",
            "--to",
            there,
        ])
        .env("HEMIRON_CLI_CONFIG", c.dir.path().join("cli.json"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("is on node {there}")), "{text}");
    assert!(guest_get(&web, "/").is_some());
}
