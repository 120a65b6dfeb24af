#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Snapshots of real VMs: disk-only and with RAM, rollback, delete, failure cleanup.
//! Test names start with `vm_` so nextest runs them one at a time.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{create_vm, forward, guest_run, wait_for, wait_guest, Agent, Api};

fn status(api: &Api, vmid: u32) -> serde_json::Value {
    api.get(&format!("/nodes/n1/qemu/{vmid}/status/current"), &[])
        .ok()
}

/// Writes a marker into the first sector of the guest's data disk, bypassing its cache.
fn write_marker(web: &str, marker: &str) {
    common::write_disk_marker(web, 0, marker);
}

fn read_marker(web: &str) -> String {
    common::read_disk_marker(web, 0)
}

fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[test]
fn vm_snapshots_disk_and_ram() {
    let agent = Agent::start();
    let api = agent.api();
    let disk = format!("local:0,import-from={}", common::guest_image().display());
    create_vm(
        &api,
        "n1",
        170,
        &[("scsi0", &disk), ("virtio1", "local:0.125")],
    );
    api.task_ok("n1", "POST", "/nodes/n1/qemu/170/status/start", &[]);
    let web = forward(&api, "n1", 170, 80);
    wait_guest(&web);

    // Disk-only snapshot of the running VM, then rollback.
    write_marker(&web, "MARK-A");
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/170/snapshot",
        &[("snapname", "s1"), ("description", "before B")],
    );
    write_marker(&web, "MARK-B");
    assert_eq!(read_marker(&web), "MARK-B");
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/170/snapshot/s1/rollback",
        &[("start", "1")],
    );
    wait_guest(&web);
    assert_eq!(read_marker(&web), "MARK-A", "rollback restores the disk");

    // With RAM: a process's state and a file in RAM come back, the guest resumes.
    let counter_pid = guest_run(
        &web,
        "(i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 & echo $!",
    )
    .unwrap()
    .trim()
    .to_string();
    wait_for("counter runs", Duration::from_secs(10), || {
        guest_run(&web, "cat /tmp/counter").filter(|c| c.trim().parse::<u64>().unwrap_or(0) > 2)
    });
    let boot = guest_run(&web, "cat /proc/sys/kernel/random/boot_id").unwrap();
    write_marker(&web, "MARK-C");
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/170/snapshot",
        &[("snapname", "s2"), ("vmstate", "1")],
    );
    let conf_s2 = api.get("/nodes/n1/qemu/170/snapshot/s2/config", &[]).ok();
    let state_vol = conf_s2["vmstate"].as_str().unwrap().to_string();
    assert_eq!(state_vol, "local:170/vm-170-state-s2.qcow2");
    guest_run(
        &web,
        &format!("kill {counter_pid}; echo gone > /tmp/flag; echo ok"),
    )
    .unwrap();
    write_marker(&web, "MARK-D");
    api.task_ok("n1", "POST", "/nodes/n1/qemu/170/snapshot/s2/rollback", &[]);
    assert_eq!(status(&api, 170)["qmpstatus"], "running");
    wait_guest(&web);
    assert_eq!(
        guest_run(&web, "cat /proc/sys/kernel/random/boot_id").unwrap(),
        boot,
        "same boot: RAM restored"
    );
    assert_eq!(read_marker(&web), "MARK-C");
    assert!(guest_run(&web, "cat /tmp/flag 2>&1")
        .unwrap()
        .contains("No such file"));
    let c1: u64 = guest_run(&web, "cat /tmp/counter")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let c2 = wait_for("the saved process runs on", Duration::from_secs(10), || {
        let c: u64 = guest_run(&web, "cat /tmp/counter")?.trim().parse().ok()?;
        (c > c1).then_some(c)
    });
    assert!(c2 > c1);

    // The list ends with `current`, parents chain.
    let list = api.get("/nodes/n1/qemu/170/snapshot", &[]).ok();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2", "current"]);
    assert_eq!(list[1]["parent"], "s1");
    assert_eq!(list[1]["vmstate"], 1);
    assert_eq!(list[2]["parent"], "s2");
    assert_eq!(list[0]["description"], "before B");
    let conf_text = std::fs::read_to_string(agent.data_dir().join("qemu-server/170.conf")).unwrap();
    assert!(
        conf_text.contains("\n[s1]\n")
            && conf_text.contains("\n[s2]\n")
            && conf_text.contains("parent: s2\n")
    );

    // Deleting snapshots frees their space: the RAM state volume, and disk clusters only
    // the snapshot held.
    let data_disk = agent
        .data_dir()
        .join("storage/local/images/170/vm-170-disk-1.qcow2");
    let state_file = agent
        .data_dir()
        .join("storage/local/images/170/vm-170-state-s2.qcow2");
    assert!(allocated(&state_file) > 30 << 20, "RAM state saved");
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/170/snapshot/s2", &[]);
    assert!(!state_file.exists());
    guest_run(
        &web,
        "dd if=/dev/urandom of=/dev/vda bs=1M count=24 seek=1 oflag=direct 2>&1",
    )
    .unwrap();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/170/snapshot",
        &[("snapname", "s3")],
    );
    guest_run(
        &web,
        "dd if=/dev/urandom of=/dev/vda bs=1M count=24 seek=1 oflag=direct 2>&1",
    )
    .unwrap();
    let before = allocated(&data_disk);
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/170/snapshot/s3", &[]);
    let after = allocated(&data_disk);
    eprintln!("data disk allocation: {before} before, {after} after deleting s3");
    assert!(
        before - after > 16 << 20,
        "deleting the snapshot freed its clusters: {before} -> {after}"
    );
    let names: Vec<String> = api
        .get("/nodes/n1/qemu/170/snapshot", &[])
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["s1", "current"]);

    // A snapshot that fails halfway leaves nothing behind.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/170/status/stop", &[]);
    let boot_disk = agent
        .data_dir()
        .join("storage/local/images/170/vm-170-disk-0.qcow2");
    std::process::Command::new("chattr")
        .arg("+i")
        .arg(&data_disk)
        .status()
        .ok();
    let ro = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&data_disk)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ro {
        // Without chattr, a read-only file mode fails the write (we run as root, so use
        // a directory we make unwritable is not enough either): skip this part loudly.
        eprintln!("*** chattr +i unavailable: skipping the half-made snapshot check ***");
        return;
    }
    let upid = api
        .post("/nodes/n1/qemu/170/snapshot", &[("snapname", "s4")])
        .ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(60));
    std::process::Command::new("chattr")
        .arg("-i")
        .arg(&data_disk)
        .status()
        .unwrap();
    assert_ne!(st["exitstatus"], "OK");
    let conf = api.get("/nodes/n1/qemu/170/config", &[]).ok();
    assert!(conf.get("lock").is_none());
    let text = std::fs::read_to_string(agent.data_dir().join("qemu-server/170.conf")).unwrap();
    assert!(!text.contains("[s4]"), "{text}");
    let snaps = std::process::Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(&boot_disk)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&snaps.stdout).contains("s4"),
        "no stray volume snapshot"
    );
}
