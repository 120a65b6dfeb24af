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

/// Asserts that the VPS has an event of this kind.
fn assert_event(admin: &Client, id: &str, kind: &str) {
    let events = admin.get(&format!("/vps/{id}/events")).expect(200);
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == kind),
        "no {kind} event: {events}"
    );
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

/// Two clustered agents, template `guest` on n1 (its disk on the shared storage), a server
/// with the cluster registered, tenant `acme` (quota for `vms` VPSes) and plan `tiny`.
fn setup(vms: u32) -> (common::cluster::Cluster, Server, String) {
    let c = cluster();
    let a1 = c.n1.api();
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

    let server = Server::start(Backend::Sqlite);
    let admin = server.admin();
    let r = admin.post(
        "/clusters",
        &json!({"name": "c1", "endpoint": c.n1.url.trim(), "token_id": "root@pam!test",
                "token_secret": c.n1.token}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let nodes = admin.get("/nodes").expect(200);
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    let tenant = admin
        .post("/tenants", &json!({"name": "acme", "quota": {"vcpus": 8, "memory_mib": 2048, "disk_gib": 10, "vms": vms}}))
        .expect(201);
    admin
        .post(
            "/plans",
            &json!({"name": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}),
        )
        .expect(201);
    let tid = tenant["id"].as_str().unwrap().to_string();
    (c, server, tid)
}

/// Creates VPS `name` and waits until it runs; returns it.
fn create_vps(server: &Server, admin: &Client, tid: &str, name: &str) -> Value {
    let made = admin
        .post(
            "/vps",
            &json!({"name": name, "plan": "tiny", "template": "guest", "tenant_id": tid,
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench t"]}),
        )
        .expect(201);
    let job = wait_job(admin, &made["job"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", server.output());
    admin
        .get(&format!("/vps/{}", made["id"].as_str().unwrap()))
        .expect(200)
}

#[test]
fn vm_vps_migration_undoes_failures_and_survives_crashes() {
    let (c, mut server, tid) = setup(2);
    let (a1, a2) = (c.n1.api(), c.n2.api());
    let mut admin = server.admin();
    let made = create_vps(&server, &admin, &tid, "web1");
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
    assert_event(&admin, &id, "vps.migrate.needs-attention");

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
        server.wait_exit();
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

    // Moved by a Proxmox client behind the control plane's back: the reconciler follows.
    server.extra = vec!["--reconcile-interval".into(), "1s".into()];
    admin = restart(&mut server, None);
    let back = if there == "n1" { "n2" } else { "n1" };
    let api = if there == "n1" { &a1 } else { &a2 };
    api.task_ok(
        there,
        "POST",
        &format!("/nodes/{there}/qemu/{vmid}/migrate"),
        &[("target", back), ("online", "1")],
    );
    wait_for("the reconciler to follow", Duration::from_secs(60), || {
        let v = admin.get(&format!("/vps/{id}")).expect(200);
        (v["node"] == back).then_some(())
    });
    let r = reserved(&admin);
    let expect = if back == "n1" { (128, 0) } else { (0, 128) };
    assert_eq!(r, expect);
    assert_event(&admin, &id, "vps.moved");
}

/// Polls a guest's page every 100 ms; records the longest time between two answers.
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Duration, u64, u64)>>,
}

impl Watch {
    fn start(web: &str) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, web) = (stop.clone(), web.to_string());
        let thread = std::thread::spawn(move || {
            let mut last = std::time::Instant::now();
            let (mut gap, mut ok, mut failed) = (Duration::ZERO, 0, 0);
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                if guest_get(&web, "/").is_some() {
                    gap = gap.max(last.elapsed());
                    last = std::time::Instant::now();
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (gap.max(last.elapsed()), ok, failed)
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Duration, u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn cli(server: &Server, token: &str, args: &[&str]) -> String {
    let out = Command::new(common::hemiron())
        .args(["--server", &server.url, "--token", token])
        .args(args)
        .env("HEMIRON_CLI_CONFIG", "/nonexistent/cli.json")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{args:?}: {text}\n{}",
        server.output()
    );
    text
}

fn nodes_of(admin: &Client, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            admin.get(&format!("/vps/{id}")).expect(200)["node"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn vm_drain_evacuates_five_guests_and_rebalance_evens_the_cluster() {
    let (c, server, tid) = setup(6);
    let admin = server.admin();
    let token = admin.bearer.clone().unwrap();
    let made: Vec<Value> = (1..=5)
        .map(|i| create_vps(&server, &admin, &tid, &format!("app{i}")))
        .collect();
    let ids: Vec<String> = made
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert!(nodes_of(&admin, &ids).iter().all(|n| n == "n1"));
    let webs: Vec<String> = made
        .iter()
        .map(|v| v["web_address"].as_str().unwrap().to_string())
        .collect();
    for w in &webs {
        wait_for("guest HTTP", Duration::from_secs(180), || guest_get(w, "/"));
    }

    // All on n1: the dry run plans two moves to n2 (5/0 -> 3/2) and moves nothing.
    let plan = cli(&server, &token, &["host", "rebalance", "--dry-run"]);
    assert!(plan.contains("imbalance 1.000"), "{plan}");
    assert_eq!(plan.matches(" n1 -> n2 ").count(), 2, "{plan}");
    assert!(nodes_of(&admin, &ids).iter().all(|n| n == "n1"));

    // Drain n1 while every guest is watched: all five end on n2, each answering throughout.
    let watches: Vec<Watch> = webs.iter().map(|w| Watch::start(w)).collect();
    let n1 = admin.get("/nodes").expect(200);
    let n1_id = node(&n1, "n1")["id"].as_str().unwrap().to_string();
    let job = admin
        .post(&format!("/nodes/{n1_id}/drain"), &json!({}))
        .expect(202);
    let mut most = 0;
    let done = wait_for("drain", Duration::from_secs(600), || {
        let j = admin
            .get(&format!("/jobs/{}", job["id"].as_str().unwrap()))
            .expect(200);
        if let Some(p) = j["progress"].as_str() {
            let moving: usize = p
                .rsplit(", ")
                .next()
                .and_then(|x| x.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            most = most.max(moving);
        }
        (j["state"] != "running" && j["state"] != "queued").then_some(j)
    });
    assert_eq!(done["state"], "succeeded", "{done}\n{}", server.output());
    assert!(most <= 2, "{most} migrations at once");
    for (w, watch) in webs.iter().zip(watches) {
        let (gap, ok, failed) = watch.finish();
        eprintln!("{w}: longest gap {gap:?}, {ok} answers, {failed} failed");
        assert!(gap <= Duration::from_secs(2), "{w}: gap {gap:?}");
    }
    assert!(nodes_of(&admin, &ids).iter().all(|n| n == "n2"));
    // Only the template is left on n1.
    assert_eq!(listed(&c.n1.api(), "n1"), vec![9000]);
    let hosts = cli(&server, &token, &["host", "list"]);
    assert!(hosts.contains("maintenance"), "{hosts}");
    // A node in maintenance gets no placements (the template is on n1 only).
    admin
        .post(
            "/vps",
            &json!({"name": "app6", "plan": "tiny", "template": "guest", "tenant_id": tid,
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench t"]}),
        )
        .problem(409, "no-capacity");

    // Back in service, a real rebalance moves two back.
    cli(&server, &token, &["host", "undrain", "n1"]);
    let plan = cli(&server, &token, &["host", "rebalance"]);
    assert_eq!(plan.matches(" n2 -> n1 ").count(), 2, "{plan}");
    wait_for("rebalance", Duration::from_secs(300), || {
        let on = nodes_of(&admin, &ids);
        (on.iter().filter(|n| *n == "n1").count() == 2).then_some(())
    });
    for w in &webs {
        assert!(guest_get(w, "/").is_some(), "{w} silent");
    }
}
