#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Templates, linked and full clones, cloud-init identity and SSH logins with real VMs.
//! Test names start with `vm_` so nextest runs them one at a time.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{create_vm, forward, guest_get, wait_for, wait_guest, Agent, Api};

fn config(api: &Api, vmid: u32) -> serde_json::Value {
    api.get(&format!("/nodes/n1/qemu/{vmid}/config"), &[]).ok()
}

/// An ed25519 key pair for SSH logins; returns (private key path, public key line).
fn keypair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Runs `ssh -p PORT -i KEY user@127.0.0.1 cmd`; `None` if the login fails.
fn ssh(addr: &str, key: &Path, user: &str, cmd: &str) -> Option<String> {
    let (host, port) = addr.split_once(':').unwrap();
    common::ssh(&["-p", port], key, &format!("{user}@{host}"), cmd)
}

/// The host keys a guest's SSH server offers (one scan connection per key type; retried
/// until both of the guest's key types answered, as a busy server may drop one).
fn host_keys(addr: &str) -> String {
    let (host, port) = addr.split_once(':').unwrap();
    wait_for("host keys", Duration::from_secs(30), || {
        let out = Command::new("ssh-keyscan")
            .args(["-T", "5", "-t", "ed25519,ecdsa", "-p", port, host])
            .output()
            .ok()?;
        let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect();
        keys.sort();
        (keys.len() == 2).then(|| keys.join("\n"))
    })
}

fn wait_hostname(web: &str, name: &str) {
    wait_for(
        &format!("guest named {name}"),
        Duration::from_secs(120),
        || guest_get(web, "/hostname").filter(|h| h.trim() == name),
    );
}

fn wait_ssh(addr: &str, key: &Path, user: &str) -> String {
    wait_for("SSH login", Duration::from_secs(120), || {
        ssh(addr, key, user, "hostname")
    })
}

#[test]
fn vm_template_linked_and_full_clones() {
    let agent = Agent::start();
    let api = agent.api();
    let (key, public) = keypair(agent.dir.path(), "admin");
    let sshkeys = hemiron_pve::text::uri_escape(&format!("{public}\n"));
    create_vm(
        &api,
        "n1",
        180,
        &[
            ("name", "golden"),
            ("ide2", "local:cloudinit"),
            ("ciuser", "admin"),
            ("sshkeys", &sshkeys),
        ],
    );
    let dump = api
        .get("/nodes/n1/qemu/180/cloudinit/dump", &[("type", "user")])
        .ok();
    let dump = dump.as_str().unwrap();
    assert!(
        dump.starts_with("#cloud-config\nhostname: golden\n"),
        "{dump}"
    );
    assert!(dump.contains(&format!("  - {public}\n")));

    api.task_ok("n1", "POST", "/nodes/n1/qemu/180/template", &[]);
    let tconf = config(&api, 180);
    assert_eq!(tconf["template"], 1);
    assert!(tconf["scsi0"]
        .as_str()
        .unwrap()
        .starts_with("local:180/base-180-disk-0.qcow2,"));
    let base = agent
        .data_dir()
        .join("storage/local/images/180/base-180-disk-0.qcow2");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&base).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let upid = api.post("/nodes/n1/qemu/180/status/start", &[]).ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(st["exitstatus"], "you can't start a vm if it's a template");

    // A linked clone (the default from a template) and a full clone.
    let t = std::time::Instant::now();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/180/clone",
        &[("newid", "181"), ("name", "web1")],
    );
    eprintln!("linked clone took {:?}", t.elapsed());
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/180/clone",
        &[("newid", "182"), ("name", "web2"), ("full", "1")],
    );
    let c1 = config(&api, 181);
    let c2 = config(&api, 182);
    assert!(c1["scsi0"]
        .as_str()
        .unwrap()
        .starts_with("local:180/base-180-disk-0.qcow2/181/vm-181-disk-0.qcow2,"));
    assert!(c2["scsi0"]
        .as_str()
        .unwrap()
        .starts_with("local:182/vm-182-disk-0.qcow2,"));
    assert_eq!(c1["ide2"], "local:181/vm-181-cloudinit.qcow2,media=cdrom");
    let mac = |c: &serde_json::Value| {
        c["net0"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(mac(&c1), mac(&c2));
    assert_ne!(mac(&c1), mac(&tconf));
    assert_ne!(c1["smbios1"], c2["smbios1"]);
    assert_ne!(c1["vmgenid"], tconf["vmgenid"]);
    assert!(c1.get("template").is_none());

    // A template with linked clones cannot be deleted.
    let r = api.delete("/nodes/n1/qemu/180", &[]);
    assert_eq!(r.status, 500);
    assert!(
        r.body["message"].as_str().unwrap().contains("181"),
        "{}",
        r.body
    );

    // Both clones boot with their own identities.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/181/status/start", &[]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/182/status/start", &[]);
    let web1 = forward(&api, "n1", 181, 80);
    let web2 = forward(&api, "n1", 182, 80);
    assert_ne!(web1, web2);
    wait_guest(&web1);
    wait_guest(&web2);
    wait_hostname(&web1, "web1");
    wait_hostname(&web2, "web2");
    let ssh1 = forward(&api, "n1", 181, 22);
    let ssh2 = forward(&api, "n1", 182, 22);
    assert_eq!(wait_ssh(&ssh1, &key, "admin"), "web1");
    assert_eq!(wait_ssh(&ssh2, &key, "admin"), "web2");
    let keys1 = host_keys(&ssh1);
    let keys2 = host_keys(&ssh2);
    assert!(!keys1.is_empty());
    assert_ne!(keys1, keys2, "clones never share SSH host keys");

    // A full clone of a running VM is a consistent copy.
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/182/clone",
        &[("newid", "183"), ("name", "web3"), ("full", "1")],
    );
    api.task_ok("n1", "POST", "/nodes/n1/qemu/183/status/start", &[]);
    let web3 = forward(&api, "n1", 183, 80);
    wait_guest(&web3);
    wait_hostname(&web3, "web3");

    // Once its linked clone is gone, the template can be deleted; the full clone lives on.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/181/status/stop", &[]);
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/181", &[]);
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/180", &[]);
    assert!(!base.exists());
    assert_eq!(guest_get(&web2, "/hostname").unwrap().trim(), "web2");
}

#[test]
fn vm_cloudinit_identity_and_ssh_keys() {
    let agent = Agent::start();
    let api = agent.api();
    let (key1, pub1) = keypair(agent.dir.path(), "one");
    let (key2, pub2) = keypair(agent.dir.path(), "two");
    let keys = |k: &str| hemiron_pve::text::uri_escape(&format!("{k}\n"));
    create_vm(
        &api,
        "n1",
        185,
        &[
            ("name", "ci-host"),
            ("ide2", "local:cloudinit"),
            ("ciuser", "alice"),
            ("cipassword", "not-shown"),
            ("sshkeys", &keys(&pub1)),
            ("ipconfig0", "ip=10.0.2.15/24,gw=10.0.2.2"),
            ("nameserver", "10.0.2.3"),
            ("searchdomain", "example.com"),
        ],
    );
    let conf = config(&api, 185);
    assert_eq!(conf["cipassword"], "**********");
    let raw = std::fs::read_to_string(agent.data_dir().join("qemu-server/185.conf")).unwrap();
    assert!(raw.contains("cipassword: $6$") && !raw.contains("not-shown"));
    let net = api
        .get("/nodes/n1/qemu/185/cloudinit/dump", &[("type", "network")])
        .ok();
    assert!(net.as_str().unwrap().contains("address: '10.0.2.15'"));
    let meta = api
        .get("/nodes/n1/qemu/185/cloudinit/dump", &[("type", "meta")])
        .ok();
    assert!(meta.as_str().unwrap().starts_with("instance-id: "));

    api.task_ok("n1", "POST", "/nodes/n1/qemu/185/status/start", &[]);
    let web = forward(&api, "n1", 185, 80);
    let sshaddr = forward(&api, "n1", 185, 22);
    wait_guest(&web);
    wait_hostname(&web, "ci-host");
    assert_eq!(wait_ssh(&sshaddr, &key1, "alice"), "ci-host");
    assert!(ssh(&sshaddr, &key2, "alice", "hostname").is_none());
    let ip = ssh(&sshaddr, &key1, "alice", "ip -4 -o addr show dev eth0").unwrap();
    assert!(ip.contains("10.0.2.15/24"), "{ip}");
    let host_before = host_keys(&sshaddr);

    // New keys take effect at the next boot: the old key no longer logs in.
    api.put("/nodes/n1/qemu/185/config", &[("sshkeys", &keys(&pub2))])
        .ok();
    let status = api.get("/nodes/n1/qemu/185/cloudinit", &[]).ok();
    assert!(status
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["key"] == "sshkeys" && e.get("pending").is_some()));
    api.task_ok("n1", "POST", "/nodes/n1/qemu/185/status/reboot", &[]);
    wait_guest(&web);
    assert_eq!(wait_ssh(&sshaddr, &key2, "alice"), "ci-host");
    assert!(
        ssh(&sshaddr, &key1, "alice", "hostname").is_none(),
        "the removed key is refused"
    );
    // The same VM keeps its host keys across reboots.
    assert_eq!(host_keys(&sshaddr), host_before);
}
