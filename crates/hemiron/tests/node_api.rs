#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The node agent's API without booting VMs: discovery endpoints, authentication, bad input,
//! TLS, and crash safety of config writes. Every answer is checked against the Proxmox schema.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{hemiron, wait_for, Agent, Api};

#[test]
fn discovery_endpoints_answer_as_proxmox() {
    let agent = Agent::start();
    let api = agent.api();
    let v = api.get("/version", &[]).ok();
    assert!(v["version"].as_str().unwrap().starts_with("9.1."));
    assert_eq!(v["release"], "9.1");
    assert!(v["hemiron"].is_string());

    let nodes = api.get("/nodes", &[]).ok();
    assert_eq!(nodes[0]["node"], "n1");
    assert_eq!(nodes[0]["status"], "online");

    let st = api.get("/nodes/n1/status", &[]).ok();
    assert_eq!(
        st["accel"], "tcg",
        "this machine's KVM is the PVM kind: auto must pick TCG"
    );
    assert!(st["memory"]["total"].as_u64().unwrap() > 0);

    let res = api.get("/cluster/resources", &[]).ok();
    let kinds: Vec<&str> = res
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"node") && kinds.contains(&"storage"));
    assert_eq!(api.get("/cluster/nextid", &[]).ok(), 100);
    assert_eq!(api.get("/cluster/nextid", &[("vmid", "4242")]).ok(), 4242);

    let storage = api.get("/nodes/n1/storage", &[]).ok();
    assert_eq!(storage[0]["storage"], "local");
    assert_eq!(storage[0]["type"], "dir");
    let content = api.get("/nodes/n1/storage/local/content", &[]).ok();
    assert!(content.as_array().unwrap().is_empty());

    let tasks = api.get("/nodes/n1/tasks", &[]);
    assert_eq!(tasks.body["total"], 0);
}

#[test]
fn credentials_tokens_and_tickets() {
    let agent = Agent::start();
    // No credentials at all.
    let anon = Api::new(&agent.url, None);
    let started = Instant::now();
    let r = anon.get("/version", &[]);
    assert_eq!(r.status, 401);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "401 must be delayed like Proxmox"
    );

    // A wrong secret, and a token added while the agent runs (accepted at once).
    let bad = Api::new(
        &agent.url,
        Some((
            "Authorization".into(),
            "PVEAPIToken=root@pam!test=nope".into(),
        )),
    );
    assert_eq!(bad.get("/version", &[]).status, 401);
    let secret = agent.add_token("root@pam!second");
    let second = Api::new(
        &agent.url,
        Some((
            "Authorization".into(),
            format!("PVEAPIToken=root@pam!second={secret}"),
        )),
    );
    assert_eq!(second.get("/version", &[]).status, 200);

    // A password user: no default password exists, `user add` reads it from stdin.
    let anon = Api::new(&agent.url, None);
    let r = anon.post(
        "/access/ticket",
        &[("username", "alice@pve"), ("password", "pw")],
    );
    assert_eq!(r.status, 401);
    agent.add_user("alice@pve", "s3cret-pw");
    let users = std::fs::read_to_string(agent.data_dir().join("auth/users.json")).unwrap();
    assert!(users.contains("$argon2id$") && !users.contains("s3cret-pw"));

    let login = anon
        .post(
            "/access/ticket",
            &[
                ("username", "alice"),
                ("realm", "pve"),
                ("password", "s3cret-pw"),
            ],
        )
        .ok();
    let ticket = login["ticket"].as_str().unwrap().to_string();
    let csrf = login["CSRFPreventionToken"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("PVE:alice@pve:"));
    let with_cookie = Api::new(
        &agent.url,
        Some(("Cookie".into(), format!("PVEAuthCookie={ticket}"))),
    );
    assert_eq!(with_cookie.get("/nodes", &[]).status, 200);
    // A write with a ticket needs the CSRF token.
    let r = with_cookie.post("/nodes/n1/qemu", &[("vmid", "100")]);
    assert_eq!(r.status, 401);
    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{}/nodes/n1/qemu", agent.url))
        .header("Cookie", format!("PVEAuthCookie={ticket}"))
        .header("CSRFPreventionToken", &csrf)
        .form(&[("vmid", "100"), ("memory", "64")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Renewal: the ticket as the password.
    let renewed = anon
        .post(
            "/access/ticket",
            &[("username", "alice@pve"), ("password", &ticket)],
        )
        .ok();
    assert!(renewed["ticket"]
        .as_str()
        .unwrap()
        .starts_with("PVE:alice@pve:"));
    // A ticket is not a password for someone else.
    assert_eq!(
        anon.post(
            "/access/ticket",
            &[("username", "root@pam"), ("password", &ticket)]
        )
        .status,
        401
    );
}

#[test]
fn bad_input_gets_proxmox_errors() {
    let agent = Agent::start();
    let api = agent.api();
    let r = api.get("/nodes/n1/qemu/abc/config", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["errors"]["vmid"],
        "type check ('integer') failed - got 'abc'"
    );
    let (code, reason) = api.reason_phrase("GET", "/nodes/n1/qemu/abc/config", &[]);
    assert_eq!(
        (code, reason.as_str()),
        (400, "Parameter verification failed.")
    );

    let r = api.post(
        "/nodes/n1/qemu",
        &[("vmid", "100"), ("bogus", "1"), ("memory", "x")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["errors"]["bogus"],
        "property is not defined in schema and the schema does not allow additional properties"
    );
    assert!(r.body["errors"]["memory"].is_string());
    assert!(!agent.data_dir().join("qemu-server/100.conf").exists());

    // Properties this node cannot honour are refused by name.
    let r = api.post(
        "/nodes/n1/qemu",
        &[("vmid", "100"), ("hostpci0", "0000:01:00.0")],
    );
    assert_eq!(r.status, 400);
    assert!(r.body["errors"]["hostpci0"]
        .as_str()
        .unwrap()
        .contains("not supported"));

    // A VM that does not exist: Proxmox's 500 with the message as reason phrase.
    let (code, reason) = api.reason_phrase("GET", "/nodes/n1/qemu/999/status/current", &[]);
    assert_eq!(code, 500);
    assert_eq!(
        reason,
        "Configuration file 'nodes/n1/qemu-server/999.conf' does not exist"
    );

    let (code, reason) = api.reason_phrase("GET", "/nodes/n1/nothing", &[]);
    assert_eq!(
        (code, reason.as_str()),
        (501, "Method 'GET /nodes/n1/nothing' not implemented")
    );
    let (code, _) = api.reason_phrase("PUT", "/version", &[]);
    assert_eq!(code, 501);

    // Stale digest.
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "101"), ("memory", "64")],
    );
    let digest = api.get("/nodes/n1/qemu/101/config", &[]).ok()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    api.put(
        "/nodes/n1/qemu/101/config",
        &[("name", "one"), ("digest", &digest)],
    )
    .ok();
    let (code, reason) = api.reason_phrase(
        "PUT",
        "/nodes/n1/qemu/101/config",
        &[("name", "two"), ("digest", &digest)],
    );
    assert_eq!(
        (code, reason.as_str()),
        (500, "checksum mismatch (file change by other user?)")
    );
    assert_eq!(
        api.get("/nodes/n1/qemu/101/config", &[]).ok()["name"],
        "one"
    );

    // A config lock refuses operations; `delete=lock` with skiplock clears it.
    let conf = agent.data_dir().join("qemu-server/101.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}lock: backup\n")).unwrap();
    let upid = api.post("/nodes/n1/qemu/101/status/start", &[]).ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(st["exitstatus"], "VM is locked (backup)");
    let (code, reason) = api.reason_phrase("PUT", "/nodes/n1/qemu/101/config", &[("name", "x")]);
    assert_eq!((code, reason.as_str()), (500, "VM is locked (backup)"));
    api.put(
        "/nodes/n1/qemu/101/config",
        &[("delete", "lock"), ("skiplock", "1")],
    )
    .ok();
    assert!(api
        .get("/nodes/n1/qemu/101/config", &[])
        .ok()
        .get("lock")
        .is_none());

    // Deleting: protection first.
    api.put("/nodes/n1/qemu/101/config", &[("protection", "1")])
        .ok();
    let (code, reason) = api.reason_phrase("DELETE", "/nodes/n1/qemu/101", &[]);
    assert_eq!(
        (code, reason.as_str()),
        (500, "can't remove VM 101 - protection mode enabled")
    );
    api.put("/nodes/n1/qemu/101/config", &[("protection", "0")])
        .ok();
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/101", &[("purge", "1")]);
    assert!(!conf.exists());
}

#[test]
fn https_with_a_self_signed_certificate() {
    let agent = Agent::start_with(false, &[]);
    assert!(agent.url.starts_with("https://127.0.0.1:"));
    let api = agent.api();
    let nodes = api.get("/nodes", &[]).ok();
    let fp = nodes[0]["ssl_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 95, "SHA-256 fingerprint as AA:BB:…");
    // The same certificate after a restart.
    let mut agent = agent;
    agent.kill9();
    agent.launch();
    let again = agent.api().get("/nodes", &[]).ok();
    assert_eq!(again[0]["ssl_fingerprint"], fp.as_str());
}

#[test]
fn one_agent_per_data_dir() {
    let agent = Agent::start();
    let out = Command::new(hemiron())
        .args([
            "node",
            "--http",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "n1",
            "--data-dir",
        ])
        .arg(agent.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another agent is running"));
}

/// 100 `kill -9`s of the agent at random moments while it rewrites configs: every config
/// file must afterwards be complete (old or new), never torn or empty.
#[test]
fn config_writes_survive_kills() {
    use rand::Rng;
    let mut agent = Agent::start();
    let api = agent.api();
    let vmids: Vec<String> = (200..204).map(|v| v.to_string()).collect();
    for v in &vmids {
        api.task_ok(
            "n1",
            "POST",
            "/nodes/n1/qemu",
            &[("vmid", v), ("memory", "64"), ("name", "start")],
        );
    }
    let mut rng = rand::thread_rng();
    let mut torn = 0;
    for round in 0..100 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = vmids
            .iter()
            .cloned()
            .map(|v| {
                let api = agent.api();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let name = format!("n{round}x{i}{}", "y".repeat((i % 40) as usize));
                        let path = format!("/nodes/n1/qemu/{v}/config");
                        // Errors are expected once the agent is killed.
                        let _ = api.try_put(
                            &path,
                            &[
                                ("name", &name),
                                ("description", &"d".repeat(i as usize % 300)),
                            ],
                        );
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..60)));
        agent.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            let _ = w.join();
        }
        for v in &vmids {
            let path = agent.data_dir().join(format!("qemu-server/{v}.conf"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let ok = hemiron_pve::config::parse(&text)
                .is_ok_and(|c| c.get("memory") == Some("64") && c.get("name").is_some());
            if !ok {
                torn += 1;
                eprintln!("round {round}: torn config {v}:\n{text}");
            }
        }
        agent.launch();
    }
    assert_eq!(torn, 0, "torn or empty config files after 100 kills");
    // Leftover temporary files of interrupted writes never count as configs.
    let confs = std::fs::read_dir(agent.data_dir().join("qemu-server"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".conf")
        })
        .count();
    assert_eq!(confs, vmids.len());
    wait_for("agent answers", Duration::from_secs(10), || {
        (agent.api().get("/version", &[]).status == 200).then_some(())
    });
}

#[test]
fn shared_storage_pool() {
    let shared = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(true, &["--shared-storage", shared.path().to_str().unwrap()]);
    let api = agent.api();
    let pools = api.get("/nodes/n1/storage", &[]).ok();
    let pool = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["storage"] == "shared")
        .expect("shared pool listed")
        .clone();
    assert_eq!(pool["shared"], 1);
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[
            ("vmid", "150"),
            ("memory", "64"),
            ("virtio0", "shared:0.0625"),
        ],
    );
    assert!(shared
        .path()
        .join("images/150/vm-150-disk-0.qcow2")
        .exists());
    let conf = api.get("/nodes/n1/qemu/150/config", &[]).ok();
    assert_eq!(conf["virtio0"], "shared:150/vm-150-disk-0.qcow2,size=64M");
    let content = api.get("/nodes/n1/storage/shared/content", &[]).ok();
    assert_eq!(content[0]["volid"], "shared:150/vm-150-disk-0.qcow2");
}

/// Garbage of every kind gets a clean error; the agent keeps serving and configs stay intact.
#[test]
fn malformed_requests_never_hurt() {
    use rand::Rng;
    let agent = Agent::start();
    let api = agent.api();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "160"), ("memory", "64"), ("name", "keep")],
    );
    let conf_path = agent.data_dir().join("qemu-server/160.conf");
    let before = std::fs::read_to_string(&conf_path).unwrap();

    // Values that would inject lines into the config file.
    for (k, v) in [
        ("args", "-S\nlock: backup"),
        ("name", "a\nb"),
        ("tags", "x\ny"),
        ("net0", "virtio,bridge=vmbr0\nlock: x"),
    ] {
        let r = api.put("/nodes/n1/qemu/160/config", &[(k, v)]);
        assert!(r.status >= 400, "{k}={v:?} accepted");
    }
    assert_eq!(std::fs::read_to_string(&conf_path).unwrap(), before);

    // Path escapes through volume IDs.
    let r = api.put(
        "/nodes/n1/qemu/160/config",
        &[("virtio1", "local:../../../etc/passwd")],
    );
    assert!(r.status >= 400);
    let r = api.put(
        "/nodes/n1/qemu/160/config",
        &[("virtio1", "local:160/../../x.qcow2")],
    );
    assert!(r.status >= 400);

    // Random junk at random endpoints.
    let mut rng = rand::thread_rng();
    let paths = [
        "/nodes/n1/qemu",
        "/nodes/n1/qemu/160/config",
        "/nodes/n1/qemu/160/resize",
        "/nodes/n1/tasks",
        "/nodes/n1/storage/local/content",
        "/cluster/resources",
        "/access/ticket",
        "/nodes/n1/qemu/160/pending",
    ];
    let client = reqwest::blocking::Client::new();
    for _ in 0..300 {
        let path = paths[rng.gen_range(0..paths.len())];
        let method = ["GET", "POST", "PUT", "DELETE"][rng.gen_range(0..4)];
        let junk: String = (0..rng.gen_range(0..80))
            .map(|_| char::from_u32(rng.gen_range(1..0x2FF)).unwrap_or('x'))
            .collect();
        let key = [
            "vmid", "memory", "net0", "scsi0", "delete", "digest", "size", "disk", &junk,
        ][rng.gen_range(0..9)]
        .to_string();
        let mut req = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", agent.url),
            )
            .header(
                "Authorization",
                format!("PVEAPIToken=root@pam!test={}", agent.token),
            );
        req = match rng.gen_range(0..3) {
            0 => req.query(&[(key.as_str(), junk.as_str())]),
            1 => req.form(&[(key.as_str(), junk.as_str())]),
            _ => req
                .header("Content-Type", "application/json")
                .body(junk.clone()),
        };
        let status = req.send().unwrap().status().as_u16();
        assert!(status < 600, "{method} {path}: {status}");
    }
    // A body over the limit: refused without reading it all. The answer comes (and the
    // connection closes) while the client may still be writing, so the client sees either
    // the 400 or its write cut short; never anything else.
    let big = "x".repeat(5 * 1024 * 1024);
    let sent = client
        .post(format!("{}/nodes/n1/qemu/160/config", agent.url))
        .header(
            "Authorization",
            format!("PVEAPIToken=root@pam!test={}", agent.token),
        )
        .form(&[("description", big.as_str())])
        .send();
    match sent {
        Ok(r) => assert_eq!(r.status(), 400),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(
                e.is_request() && (text.contains("BrokenPipe") || text.contains("ConnectionReset")),
                "{text}"
            );
        }
    }

    assert_eq!(api.get("/version", &[]).status, 200);
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(
        hemiron_pve::config::parse(&conf).is_ok(),
        "config still parses: {conf}"
    );
    assert!(conf.contains("memory: 64"), "{conf}");
}

#[test]
fn healthz_and_metrics_answer_without_credentials() {
    let agent = Agent::start();
    let base = agent.url.trim().trim_end_matches("/api2/json").to_string();
    let http = reqwest::blocking::Client::new();
    let health: serde_json::Value = http
        .get(format!("{base}/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], "n1");
    // A Proxmox call to count, then the metrics.
    agent.api().get("/version", &[]).ok();
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("hemiron_node_http_requests_total{method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("hemiron_node_vms_running 0"), "{text}");
    // The Proxmox API itself still needs credentials.
    let r = http
        .get(format!("{base}/api2/json/version"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
