//! Boots the guest with a cloud-init NoCloud seed as Proxmox VE attaches it (a `cidata` ISO
//! on ide2, or on a SCSI CD-ROM) and checks what the guest makes of it over HTTP and SSH:
//! hostname, user, password and keys, static network by MAC address, and SSH host keys that
//! belong to the VM: kept across reboots and settings changes, new for a clone. Named `vm_*`
//! so nextest runs them one at a time.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::seed::{Nic, Seed};
use common::{ssh, url_encode, Controller, Vm, VmOptions, NIC0_MAC};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Host keys are made at first boot, beside the rest of the boot.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The host key types the guest makes.
const HOST_KEY_TYPES: &[&str] = &["ed25519", "ecdsa"];

/// `hunter2-Secret`, hashed as Proxmox stores `cipassword` (SHA-512 crypt).
const PASSWORD: &str = "hunter2-Secret";
const PASSWORD_HASH: &str = "$6$rounds=5000$hemirontestsalt1$heNLHwZfnLL6eVHPxUalM2CBw4RSMO3Udz6lKW6A6xZqjivPPFGv6UsKVXqtvO2rgd9w20GDH5r/MwsxNmHn7.";

fn page_names(host: &str) -> impl Fn(u16, &str) -> bool + '_ {
    move |status, body| status == 200 && body.contains(&format!("<h1>{host}</h1>"))
}

/// Runs `command` in the guest through the test hook.
fn guest(vm: &Vm, command: &str) -> String {
    let path = format!("/cgi-bin/run?{}", url_encode(command));
    let (status, body) = common::http_get(vm.port, &path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", vm.diagnostics()));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Polls a key login until the server answers it (it starts once its host keys exist).
fn ssh_when_up(vm: &Vm, key: &Path, user: &str, command: &str) -> Output {
    let port = vm.ssh_port.unwrap();
    let mut last = None;
    let out = common::try_wait_for(SSH_TIMEOUT, || {
        let out = ssh::run_with_key(port, key, user, command);
        let done = out.status.success() || ssh::refused(&out);
        last = Some(out.clone());
        done.then_some(out)
    });
    out.unwrap_or_else(|| {
        panic!(
            "no SSH answer within {SSH_TIMEOUT:?}: {:?}\n{}",
            last,
            vm.diagnostics()
        )
    })
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Resets the VM (QMP `system_reset`, a Proxmox "reset") and waits until the guest answers
/// again after a fresh boot.
fn reboot(vm: &Vm) {
    let before = guest(vm, "cat /proc/sys/kernel/random/boot_id");
    vm.qmp().execute("system_reset", serde_json::json!({}));
    let port = vm.port;
    let path = format!(
        "/cgi-bin/run?{}",
        url_encode("cat /proc/sys/kernel/random/boot_id")
    );
    common::wait_for("the guest back after system_reset", BOOT_TIMEOUT, || {
        common::http_get_within(port, &path, Duration::from_secs(2))
            .ok()
            .filter(|(status, body)| *status == 200 && !body.is_empty() && *body != before)
    });
}

/// The CD-ROM drive on ide2 as Proxmox attaches a cloud-init drive.
fn ide2_cdrom(iso: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},if=none,id=drive-ide2,media=cdrom,format=raw,readonly=on",
            iso.display()
        ),
        "-device".into(),
        "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2".into(),
    ]
}

#[test]
fn vm_cloudinit_on_ide2_sets_user_keys_network_and_per_instance_host_keys() {
    let image = common::image(true);
    let work = tempfile::tempdir().unwrap();
    let (key1, public1) = ssh::keypair(work.path(), "key1");
    let (key2, public2) = ssh::keypair(work.path(), "key2");
    let first = Seed {
        hostname: Some("web1".into()),
        search_domain: Some("example.com".into()),
        user: Some("alice".into()),
        password_hash: Some(PASSWORD_HASH.into()),
        keys: vec![public1],
        nics: vec![Nic {
            name: "eth0".into(),
            mac: NIC0_MAC.into(),
            static_v4: Some((
                "10.0.2.15".into(),
                "255.255.255.0".into(),
                Some("10.0.2.2".into()),
            )),
        }],
        nameservers: vec!["10.0.2.3".into()],
        ..Seed::default()
    };
    // The settings changed: another key and hostname, hence another instance-id.
    let second = Seed {
        hostname: Some("web2".into()),
        keys: vec![public2],
        ..first.clone()
    };
    assert_ne!(first.instance_id(), second.instance_id());
    let iso1 = first.iso(work.path(), "first");
    let iso2 = second.iso(work.path(), "second");

    let mut vm = Vm::start_opts(
        &image,
        Controller::VirtioBlk,
        &VmOptions {
            extra: ide2_cdrom(&iso1),
            ssh: true,
            ..VmOptions::default()
        },
    );
    vm.wait_http("/", BOOT_TIMEOUT, page_names("web1"));
    let http = vm.started.elapsed();
    let port = vm.ssh_port.unwrap();

    let out = ssh_when_up(&vm, &key1, "alice", "hostname");
    assert_eq!(
        stdout(&out),
        "web1",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.diagnostics()
    );
    let ssh_up = vm.started.elapsed();

    // What the guest applied.
    let id = guest(&vm, "cat /run/hemiron/cloudinit/instance-id");
    assert_eq!(id.trim(), first.instance_id());
    let addr = guest(&vm, "ip -4 -o addr show dev eth0; ip -4 route show default");
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    assert!(addr.contains("default via 10.0.2.2 dev eth0"), "{addr}");
    assert_eq!(
        guest(
            &vm,
            "test -e /run/udhcpc.eth0.pid && echo dhcp || echo static"
        ),
        "static\n",
        "a statically configured interface gets no DHCP client"
    );
    assert_eq!(
        guest(&vm, "cat /etc/resolv.conf"),
        "search example.com\nnameserver 10.0.2.3\n"
    );
    assert!(guest(&vm, "cat /etc/hosts").contains("127.0.1.1\tweb1.example.com web1\n"));
    let shadow = guest(&vm, "cat /etc/shadow");
    assert!(
        shadow.contains(&format!("\nalice:{PASSWORD_HASH}:")),
        "{shadow}"
    );
    assert!(shadow.starts_with("root:*:"), "root stays locked: {shadow}");
    assert_eq!(
        guest(
            &vm,
            "stat -c '%a %U %n' /home/alice /home/alice/.ssh /home/alice/.ssh/authorized_keys"
        ),
        "755 alice /home/alice\n700 alice /home/alice/.ssh\n600 alice /home/alice/.ssh/authorized_keys\n"
    );
    assert!(!guest(&vm, "ls /etc/dropbear").is_empty());

    // The password works, a wrong one and root don't.
    let out = ssh::run_with_password(port, work.path(), "alice", PASSWORD, "hostname");
    assert_eq!(
        stdout(&out),
        "web1",
        "password login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ssh::refused(&ssh::run_with_password(
        port,
        work.path(),
        "alice",
        "wrong",
        "hostname"
    )));
    assert!(ssh::refused(&ssh::run_with_key(port, &key1, "root", "id")));

    let host_keys = ssh::host_keys(port, HOST_KEY_TYPES);
    assert_eq!(host_keys.len(), 2, "ed25519 and ECDSA: {host_keys:?}");
    let generated = vm.wait_serial_line(Duration::from_secs(5), |l| {
        l.contains("ssh: host keys for cidata:")
    });

    // Same seed, reboot: the same host keys, read back from the boot partition. (This VM has
    // no SMBIOS UUID, so its keys belong to the cloud-init instance.)
    reboot(&vm);
    let out = ssh_when_up(&vm, &key1, "alice", "hostname");
    assert_eq!(stdout(&out), "web1");
    assert_eq!(
        ssh::host_keys(port, HOST_KEY_TYPES),
        host_keys,
        "host keys survive a reboot"
    );
    assert!(
        vm.serial_log().contains(&format!(
            "ssh: host keys of cidata:{} loaded",
            first.instance_id()
        )),
        "{}",
        vm.diagnostics()
    );

    // New settings (as after `qm set … --sshkeys` and a reboot): the old key no longer gets
    // in, the new one does, and, the VM having no SMBIOS UUID, the new instance has new host
    // keys.
    vm.qmp().execute(
        "blockdev-change-medium",
        serde_json::json!({"id": "ide2", "filename": iso2, "format": "raw"}),
    );
    reboot(&vm);
    vm.wait_http("/", BOOT_TIMEOUT, page_names("web2"));
    let out = ssh_when_up(&vm, &key2, "alice", "hostname");
    assert_eq!(
        stdout(&out),
        "web2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ssh::refused(&ssh::run_with_key(port, &key1, "alice", "hostname")),
        "a key removed from the seed must lose access"
    );
    let new_keys = ssh::host_keys(port, HOST_KEY_TYPES);
    assert_eq!(new_keys.len(), 2);
    assert!(
        new_keys.iter().all(|k| !host_keys.contains(k)),
        "a new instance gets new host keys: {host_keys:?} vs {new_keys:?}"
    );
    eprintln!(
        "ide2 seed: first HTTP answer after {:.2} s, SSH login after {:.2} s; {generated}",
        http.as_secs_f64(),
        ssh_up.as_secs_f64(),
    );
}

#[test]
fn vm_cloudinit_on_scsi_cdrom_default_user_and_interfaces_by_mac() {
    let image = common::image(true);
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh::keypair(work.path(), "key");
    let nic1_mac = "bc:24:11:00:00:02";
    // No `user:` (the default user), no password, the hostname only in meta-data, and the
    // interface names swapped against the guest's order: only the MAC addresses are right.
    let seed = Seed {
        local_hostname: Some("db7".into()),
        keys: vec![public],
        nics: vec![
            Nic {
                name: "eth1".into(),
                mac: NIC0_MAC.into(),
                static_v4: Some((
                    "10.0.2.20".into(),
                    "255.255.255.0".into(),
                    Some("10.0.2.2".into()),
                )),
            },
            Nic {
                name: "eth0".into(),
                mac: nic1_mac.into(),
                static_v4: None,
            },
        ],
        ..Seed::default()
    };
    let iso = seed.iso(work.path(), "seed");
    let extra = vec![
        "-drive".into(),
        format!(
            "file={},if=none,id=drive-scsi2,media=cdrom,format=raw,readonly=on",
            iso.display()
        ),
        "-device".into(),
        "scsi-cd,bus=scsihw0.0,channel=0,scsi-id=0,lun=2,drive=drive-scsi2,id=scsi2".into(),
        "-netdev".into(),
        "user,id=net1,net=10.0.3.0/24".into(),
        "-device".into(),
        format!("e1000,netdev=net1,mac={nic1_mac},id=net1dev,bus=pci.0,addr=0x12"),
    ];
    let mut vm = Vm::start_opts(
        &image,
        Controller::VirtioScsi,
        &VmOptions {
            extra,
            ssh: true,
            // The forwards go to the static address the seed gives.
            guest_ip: Some("10.0.2.20".into()),
            ..VmOptions::default()
        },
    );
    vm.wait_http("/", BOOT_TIMEOUT, page_names("db7"));
    let http = vm.started.elapsed();

    let out = ssh_when_up(&vm, &key, "hemiron", "hostname; id -u");
    assert_eq!(
        stdout(&out),
        "db7\n1000",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.diagnostics()
    );

    let by_mac = |mac: &str| {
        guest(
            &vm,
            &format!(
                "for i in /sys/class/net/eth*; do [ \"$(cat $i/address)\" = {mac} ] && ip -4 -o addr show dev ${{i##*/}}; done"
            ),
        )
    };
    assert!(by_mac(NIC0_MAC).contains("inet 10.0.2.20/24"));
    // Polled without `guest`'s panic: one CI run saw a poll fail while the second NIC came
    // up (its message lost), so a failed poll is logged and retried; the checks after the
    // loop still need the guest to answer.
    let dhcp = common::wait_for("DHCP on the second NIC", Duration::from_secs(30), || {
        let command = format!(
            "for i in /sys/class/net/eth*; do [ \"$(cat $i/address)\" = {nic1_mac} ] && ip -4 -o addr show dev ${{i##*/}}; done"
        );
        match common::http_get(vm.port, &format!("/cgi-bin/run?{}", url_encode(&command))) {
            Ok((200, body)) => Some(body).filter(|a| a.contains("inet 10.0.3.15/24")),
            other => {
                eprintln!("polling the second NIC: {other:?}");
                None
            }
        }
    });
    assert!(!dhcp.is_empty());
    // No password: the account is locked for passwords, keys only.
    assert!(guest(&vm, "cat /etc/shadow").contains("\nhemiron:!:"));
    assert!(ssh::refused(&ssh::run_with_password(
        vm.ssh_port.unwrap(),
        work.path(),
        "hemiron",
        "",
        "true"
    )));
    eprintln!(
        "SCSI CD-ROM seed: first HTTP answer after {:.2} s",
        http.as_secs_f64()
    );
}

/// Boots `disk` with SMBIOS UUID `uuid` and seed `iso` on ide2, logs in with `key` as alice,
/// and returns the host keys, with the console line that says where they came from.
fn boot_for_host_keys(
    image: &common::Image,
    disk: &Path,
    uuid: &str,
    iso: &Path,
    host: &str,
    key: &Path,
) -> (Vec<String>, String) {
    let mut extra = ide2_cdrom(iso);
    extra.extend(["-uuid".to_string(), uuid.to_string()]);
    let mut vm = Vm::start_opts(
        image,
        Controller::VirtioBlk,
        &VmOptions {
            extra,
            ssh: true,
            disk: Some(disk.to_path_buf()),
            ..VmOptions::default()
        },
    );
    vm.wait_http("/", BOOT_TIMEOUT, page_names(host));
    let out = ssh_when_up(&vm, key, "alice", "hostname");
    assert_eq!(stdout(&out), host, "{}", vm.diagnostics());
    let keys = ssh::host_keys(vm.ssh_port.unwrap(), HOST_KEY_TYPES);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let line = vm.wait_serial_line(Duration::from_secs(5), |l| l.contains("ssh: host keys"));
    let line = line[line.find("ssh: ").unwrap_or(0)..].to_string();
    (keys, line)
}

#[test]
fn vm_host_keys_belong_to_the_vm_not_to_its_settings() {
    let image = common::image(true);
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh::keypair(work.path(), "key");
    let seed = |host: &str| Seed {
        hostname: Some(host.into()),
        user: Some("alice".into()),
        keys: vec![public.clone()],
        ..Seed::default()
    };
    let (vm_uuid, clone_uuid) = (
        "0e7a1f52-9c43-4b8e-a6d1-3f5b2c9e8d70",
        "5d2c8b1e-7f3a-4e96-b0c4-1a9e6d3f2b58",
    );
    let disk = work.path().join("vm.qcow2");
    common::overlay(&image, &disk);

    let (first, made) = boot_for_host_keys(
        &image,
        &disk,
        vm_uuid,
        &seed("app1").iso(work.path(), "one"),
        "app1",
        &key,
    );
    assert!(
        made.contains(&format!("host keys for smbios:{vm_uuid} generated")),
        "{made}"
    );

    // The same VM with other cloud-init settings (another instance-id): the same host keys,
    // or every settings change would look like a man in the middle to SSH clients.
    let (again, loaded) = boot_for_host_keys(
        &image,
        &disk,
        vm_uuid,
        &seed("app2").iso(work.path(), "two"),
        "app2",
        &key,
    );
    assert!(
        loaded.contains(&format!("host keys of smbios:{vm_uuid} loaded")),
        "{loaded}"
    );
    assert_eq!(again, first);

    // A clone: a copy of the disk, keys included, booted as another VM. It must not use them.
    let clone_disk = work.path().join("clone.qcow2");
    std::fs::copy(&disk, &clone_disk).unwrap();
    let (cloned, made) = boot_for_host_keys(
        &image,
        &clone_disk,
        clone_uuid,
        &seed("app3").iso(work.path(), "three"),
        "app3",
        &key,
    );
    assert!(
        cloned.iter().all(|k| !first.contains(k)),
        "a clone must not share host keys: {first:?} vs {cloned:?}"
    );
    assert!(made.contains("generated"), "{made}");
}
