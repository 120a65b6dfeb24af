//! Two node agents forming a cluster on one machine: own data dirs, one shared storage
//! directory, one cluster file. Either node answers for the whole cluster and hands calls
//! for the other node to it; VMIDs stay unique across the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{hemiron, wait_for, Agent};
use serde_json::Value;

/// One `[[node]]` entry: name, URL, fingerprint, token secret of `root@pam!test`.
fn entry(name: &str, url: &str, fingerprint: Option<&str>, secret: &str) -> String {
    let fp = fingerprint
        .map(|f| format!("fingerprint = \"{f}\"\n"))
        .unwrap_or_default();
    format!(
        "[[node]]\nname = \"{name}\"\nurl = \"{url}\"\n{fp}token = \"root@pam!test={secret}\"\n"
    )
}

/// The cluster file for `n1` (plain HTTP) and `n2` (TLS, with the fingerprint given).
fn write_cluster(file: &Path, n1: &Agent, n2: &Agent, fp2: &str) {
    write(
        file,
        &(entry("n1", &n1.url, None, &n1.token) + &entry("n2", &n2.url, Some(fp2), &n2.token)),
    );
}

fn names(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hcl")
        .tempdir_in("/tmp")
        .unwrap()
}

fn write(path: &Path, text: &str) {
    common::replace_file(path, text);
}

#[test]
fn two_nodes_answer_for_the_whole_cluster_and_forward_calls() {
    let dir = tempdir();
    let file = dir.path().join("cluster.toml");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    // The agents pick their ports when they start; the file names them afterwards (it is
    // read again when it changes). Until then both entries point at a closed port.
    write(
        &file,
        &(entry("n1", "http://127.0.0.1:9", None, "x")
            + &entry("n2", "http://127.0.0.1:9", None, "x")),
    );
    let args = [
        "--cluster-config",
        file.to_str().unwrap(),
        "--shared-storage",
        shared.to_str().unwrap(),
    ];
    let n1 = Agent::start_named("n1", true, &args);
    // The second node over TLS: its peer pins the certificate's fingerprint.
    let mut n2 = Agent::start_named("n2", false, &args);
    let (a1, a2) = (n1.api(), n2.api());
    let fp2 = a2.get("/nodes", &[]).ok()[0]["ssl_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!fp2.is_empty());

    // A wrong fingerprint: the TLS peer is refused, so it is listed offline.
    let wrong = fp2.replacen(&fp2[..2], if &fp2[..2] == "00" { "11" } else { "00" }, 1);
    write_cluster(&file, &n1, &n2, &wrong);
    let listed = names(&a1.get("/nodes", &[]).ok());
    assert_eq!(
        listed,
        vec![
            ("n1".into(), "online".into()),
            ("n2".into(), "offline".into())
        ]
    );

    write_cluster(&file, &n1, &n2, &fp2);
    // Either node lists both.
    for api in [&a1, &a2] {
        let listed = names(&api.get("/nodes", &[]).ok());
        assert_eq!(
            listed,
            vec![
                ("n1".into(), "online".into()),
                ("n2".into(), "online".into())
            ]
        );
        let res = api.get("/cluster/resources", &[]).ok();
        let ids: Vec<&str> = res
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        for want in [
            "node/n1",
            "node/n2",
            "storage/n1/local",
            "storage/n2/local",
            "storage/n1/shared",
            "storage/n2/shared",
        ] {
            assert!(ids.contains(&want), "{want} missing from {ids:?}");
        }
    }

    // A VM made on n2 through n1 (the call is handed to n2; so are its task's calls).
    let upid = a1
        .post(
            "/nodes/n2/qemu",
            &[("vmid", "100"), ("name", "on-n2"), ("memory", "128")],
        )
        .ok();
    let upid = upid.as_str().unwrap().to_string();
    assert!(upid.starts_with("UPID:n2:"), "{upid}");
    let st = a1.wait_task("n2", &upid, Duration::from_secs(60));
    assert_eq!(st["exitstatus"], "OK", "{st}");
    assert_eq!(
        a1.get("/nodes/n2/qemu/100/config", &[]).ok()["name"],
        "on-n2"
    );
    assert!(a2.get("/nodes/n2/qemu/100/config", &[]).status == 200);
    assert_ne!(a1.get("/nodes/n1/qemu/100/config", &[]).status, 200);
    // n1's own list is n1's; the cluster list has the VM on n2.
    assert_eq!(a1.get("/nodes/n1/qemu", &[]).ok(), serde_json::json!([]));
    let vms = a1.get("/cluster/resources", &[("type", "vm")]).ok();
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
    assert_eq!(vms[0]["node"], "n2");
    assert_eq!(vms[0]["vmid"], 100);

    // VMIDs are unique across the cluster.
    for api in [&a1, &a2] {
        assert_eq!(api.get("/cluster/nextid", &[]).ok(), 101);
        let taken = api.get("/cluster/nextid", &[("vmid", "100")]);
        assert_eq!(taken.status, 400, "{:?}", taken.body);
    }
    let dup = a1.post("/nodes/n1/qemu", &[("vmid", "100"), ("memory", "128")]);
    assert_eq!(dup.status, 400, "{:?}", dup.body);
    assert!(
        dup.body["errors"]["vmid"]
            .as_str()
            .unwrap()
            .contains("already exists on node 'n2'"),
        "{:?}",
        dup.body
    );

    // Both nodes asked for one VMID at the same moment: never both get it.
    for vmid in 200..210 {
        let id = vmid.to_string();
        let (b1, b2) = (a1.clone(), a2.clone());
        let (i1, i2) = (id.clone(), id.clone());
        let t1 = std::thread::spawn(move || {
            b1.post("/nodes/n1/qemu", &[("vmid", &i1), ("memory", "128")])
                .status
        });
        let t2 = std::thread::spawn(move || {
            b2.post("/nodes/n2/qemu", &[("vmid", &i2), ("memory", "128")])
                .status
        });
        let (s1, s2) = (t1.join().unwrap(), t2.join().unwrap());
        assert!(!(s1 == 200 && s2 == 200), "VM {vmid} created on both nodes");
        let listed = wait_for("creations to settle", Duration::from_secs(30), || {
            let vms = a1.get("/cluster/resources", &[("type", "vm")]).ok();
            let with: Vec<Value> = vms
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["vmid"] == vmid)
                .cloned()
                .collect();
            with.iter().all(|e| e["lock"].is_null()).then_some(with)
        });
        assert!(listed.len() <= 1, "{listed:?}");
    }

    // A disk on the shared storage belongs to its VM's node: the other node may not attach,
    // resize, snapshot or delete it.
    a1.task_ok(
        "n2",
        "POST",
        "/nodes/n2/qemu",
        &[("vmid", "120"), ("memory", "128"), ("scsi0", "shared:1")],
    );
    let disk = shared.join("images/120/vm-120-disk-0.qcow2");
    assert!(disk.exists());
    a1.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "121"), ("memory", "128")],
    );
    let attach = a1.put(
        "/nodes/n1/qemu/121/config",
        &[("scsi0", "shared:120/vm-120-disk-0.qcow2")],
    );
    assert_eq!(attach.status, 400, "{:?}", attach.body);
    assert!(
        attach.body["errors"]["scsi0"]
            .as_str()
            .unwrap()
            .contains("belongs to VM 120 on another node"),
        "{:?}",
        attach.body
    );
    // A config that names it anyway (written before the nodes were a cluster, say).
    std::fs::write(
        n1.data_dir().join("qemu-server/121.conf"),
        "memory: 128\nscsi0: shared:120/vm-120-disk-0.qcow2,size=1G\n",
    )
    .unwrap();
    let resize = a1.put(
        "/nodes/n1/qemu/121/resize",
        &[("disk", "scsi0"), ("size", "+1G")],
    );
    let st = a1.wait_task("n1", resize.ok().as_str().unwrap(), Duration::from_secs(60));
    assert!(
        st["exitstatus"]
            .as_str()
            .unwrap()
            .contains("belongs to VM 120 on another node"),
        "{st}"
    );
    let snap = a1.post("/nodes/n1/qemu/121/snapshot", &[("snapname", "s1")]);
    let st = a1.wait_task("n1", snap.ok().as_str().unwrap(), Duration::from_secs(60));
    assert!(
        st["exitstatus"]
            .as_str()
            .unwrap()
            .contains("belongs to VM 120 on another node"),
        "{st}"
    );
    a1.put(
        "/nodes/n1/qemu/121/config",
        &[("delete", "scsi0"), ("force", "1")],
    )
    .ok();
    a1.task_ok("n1", "DELETE", "/nodes/n1/qemu/121", &[("purge", "1")]);
    assert!(disk.exists(), "n1 deleted n2's disk");
    let img = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&img.stdout).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 30, "{info}");
    assert!(info["snapshots"].is_null(), "{info}");

    // Where VMs may move: VM 120's disk is on the shared storage (nothing local), VM 130's
    // on n2's own; n1 has both storages.
    let check = a1.get("/nodes/n2/qemu/120/migrate", &[]).ok();
    assert_eq!(check["running"], false);
    assert_eq!(check["allowed_nodes"], serde_json::json!(["n1"]), "{check}");
    assert_eq!(check["local_disks"], serde_json::json!([]), "{check}");
    a1.task_ok(
        "n2",
        "POST",
        "/nodes/n2/qemu",
        &[("vmid", "130"), ("memory", "128"), ("scsi0", "local:1")],
    );
    let check = a1
        .get("/nodes/n2/qemu/130/migrate", &[("target", "n1")])
        .ok();
    let local = check["local_disks"].as_array().unwrap();
    assert_eq!(local.len(), 1, "{check}");
    assert_eq!(local[0]["volid"], "local:130/vm-130-disk-0.qcow2");
    assert_eq!(local[0]["size"], 1u64 << 30);
    assert_eq!(local[0]["is_unused"], false);

    // A peer's errors come back as it gave them, reason phrase included.
    let direct = a2.reason_phrase("GET", "/nodes/n2/qemu/999/config", &[]);
    let forwarded = a1.reason_phrase("GET", "/nodes/n2/qemu/999/config", &[]);
    assert_ne!(direct.0, 200);
    assert_eq!(direct, forwarded);
    let bad = a1.post("/nodes/n2/qemu", &[("vmid", "abc")]);
    assert_eq!(bad.status, 400);
    assert!(bad.body["errors"]["vmid"].is_string(), "{:?}", bad.body);
    // Dot segments are not passed on (the peer's client would resolve them), and a path that
    // only ends like the login path needs credentials.
    let curl = |auth: bool, path: &str| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
        ]);
        if auth {
            cmd.args([
                "-H",
                &format!("Authorization: PVEAPIToken=root@pam!test={}", n1.token),
            ]);
        }
        let out = cmd.arg(format!("{}{path}", n1.url)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl(true, "/nodes/n2/../../version"), "400");
    assert_eq!(curl(true, "/nodes/n2/%2e%2e/n1/qemu"), "400");
    assert_eq!(curl(false, "/nodes/n2/../../access/ticket"), "401");

    // A node the cluster does not name.
    assert_ne!(a1.get("/nodes/n3/qemu", &[]).status, 200);

    // n2 goes away: listed offline, calls for it fail with 595, and its VMIDs, last seen,
    // are still not handed out.
    n2.kill9();
    let listed = names(&a1.get("/nodes", &[]).ok());
    assert_eq!(
        listed,
        vec![
            ("n1".into(), "online".into()),
            ("n2".into(), "offline".into())
        ]
    );
    assert_eq!(a1.get("/nodes/n2/qemu", &[]).status, 595);
    assert_eq!(a1.get("/cluster/nextid", &[]).ok(), 101);
    let dup = a1.post("/nodes/n1/qemu", &[("vmid", "100"), ("memory", "128")]);
    assert_eq!(dup.status, 400, "{:?}", dup.body);

    // Back again (on a new port here, so the file says where): the VM is still there,
    // listed through n1.
    n2.launch();
    write_cluster(&file, &n1, &n2, &fp2);
    wait_for("n2 to be listed online", Duration::from_secs(30), || {
        let listed = names(&a1.get("/nodes", &[]).ok());
        listed.iter().all(|(_, s)| s == "online").then_some(())
    });
    let vms = a1.get("/cluster/resources", &[("type", "vm")]).ok();
    let on_n2 = vms.as_array().unwrap().iter().find(|e| e["vmid"] == 100);
    assert_eq!(on_n2.unwrap()["node"], "n2", "{vms}");
}

#[test]
fn an_invalid_cluster_file_stops_the_agent_with_every_problem() {
    let dir = tempdir();
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        "[[node]]\nname = \"n2\"\nurl = \"ftp://x\"\ntoken = \"nope\"\n",
    )
    .unwrap();
    let out = Command::new(hemiron())
        .args(["node", "--http", "--listen", "127.0.0.1:0", "--name", "n1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--cluster-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "invalid cluster file",
        "url must start with",
        "token must be",
        "this node ('n1') is not in the file",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
}
