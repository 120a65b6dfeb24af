#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A backup of a running VM is point-in-time: a marker the guest writes while a throttled
//! backup runs is not in it; the VM, deleted and restored, boots with its config and the
//! data of the backup's instant. Named `vm_*` so nextest runs it alone.

mod common;

use std::time::Duration;

use common::{create_vm, forward, wait_for, wait_guest, Agent, Api};

/// 60 MiB into the data disk, in 512-byte sectors: well past what the backup copies in its
/// first seconds at 8 MiB/s.
const SECTOR: u32 = 60 * 2048;

fn write_marker(web: &str, marker: &str) {
    common::write_disk_marker(web, SECTOR, marker);
}

fn read_marker(web: &str) -> String {
    common::read_disk_marker(web, SECTOR)
}

/// A running VM `vmid` whose data disk holds 64 MiB, so that a throttled copy takes a
/// while; returns its guest's web address.
fn running_vm_with_data(agent: &Agent, vmid: u32) -> String {
    let api = agent.api();
    let disk = format!("local:0,import-from={}", common::guest_image().display());
    create_vm(
        &api,
        "n1",
        vmid,
        &[("scsi0", &disk), ("virtio1", "local:0.125")],
    );
    let data = agent.data_dir().join(format!(
        "storage/local/images/{vmid}/vm-{vmid}-disk-1.qcow2"
    ));
    common::write_pattern(&data, 0x61, "0", "64M");
    api.task_ok(
        "n1",
        "POST",
        &format!("/nodes/n1/qemu/{vmid}/status/start"),
        &[],
    );
    let web = forward(&api, "n1", vmid, 80);
    wait_guest(&web);
    web
}

/// Starts a backup task and waits until its log says `line`; returns its UPID.
fn backup_until(api: &Api, params: &[(&str, &str)], line: &str) -> String {
    let upid = api.post("/nodes/n1/vzdump", params).ok();
    let upid = upid.as_str().unwrap().to_string();
    wait_for(line, Duration::from_secs(120), || {
        let log = api
            .get(&format!("/nodes/n1/tasks/{upid}/log"), &[("limit", "1000")])
            .ok();
        log.to_string().contains(line).then_some(())
    });
    upid
}

#[test]
fn vm_backup_of_a_running_vm_is_point_in_time_and_restores() {
    let agent = Agent::start();
    let api = agent.api();
    let web = running_vm_with_data(&agent, 180);
    write_marker(&web, "MARK-1");

    // The guest writes once the copy has begun (the log says when that instant was).
    let upid = backup_until(
        &api,
        &[
            ("vmid", "180"),
            ("storage", "local"),
            ("mode", "snapshot"),
            ("compress", "zstd"),
            ("bwlimit", "8192"),
        ],
        "backup jobs started",
    );
    write_marker(&web, "MARK-2");
    let st = api.get(&format!("/nodes/n1/tasks/{upid}/status"), &[]).ok();
    assert_eq!(
        st["status"], "running",
        "the backup ended before the guest wrote; the test proves nothing: {st}"
    );
    let st = api.wait_task("n1", &upid, Duration::from_secs(300));
    assert_eq!(st["exitstatus"], "OK", "{st}");
    assert_eq!(
        read_marker(&web),
        "MARK-2",
        "the live disk keeps the new write"
    );
    let config = api.get("/nodes/n1/qemu/180/config", &[]).ok();
    let backups = api
        .get(
            "/nodes/n1/storage/local/content",
            &[("content", "backup"), ("vmid", "180")],
        )
        .ok();
    let volid = backups[0]["volid"].as_str().unwrap().to_string();

    // Deleted, restored, booted: the config as it was and the data of the backup's instant.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/180/status/stop", &[]);
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/180", &[("purge", "1")]);
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "180"), ("archive", &volid), ("start", "1")],
    );
    let restored = api.get("/nodes/n1/qemu/180/config", &[]).ok();
    for key in ["name", "memory", "net0", "scsi0", "virtio1", "smbios1"] {
        assert_eq!(restored[key], config[key], "{key}");
    }
    let web = forward(&api, "n1", 180, 80);
    wait_guest(&web);
    wait_for(
        "the restored guest to read its disk",
        Duration::from_secs(30),
        || {
            let m = read_marker(&web);
            (!m.is_empty()).then_some(())
        },
    );
    assert_eq!(read_marker(&web), "MARK-1", "the backup is point-in-time");
    api.task_ok("n1", "POST", "/nodes/n1/qemu/180/status/stop", &[]);
}

/// Open files of a process that lie in `dir` (deleted ones included).
fn open_files_in(pid: u32, dir: &std::path::Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.to_string_lossy().to_string())
                .filter(|p| p.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn vm_a_stopped_backup_task_leaves_nothing_behind() {
    let agent = Agent::start();
    let api = agent.api();
    running_vm_with_data(&agent, 181);
    let upid = backup_until(
        &api,
        &[("vmid", "181"), ("storage", "local"), ("bwlimit", "1024")],
        "backup jobs started",
    );
    let dump = agent.data_dir().join("storage/local/dump");
    let pid = agent.qemu_pids()[0];
    assert!(
        !open_files_in(pid, &dump).is_empty(),
        "QEMU writes the backup"
    );
    api.delete(&format!("/nodes/n1/tasks/{upid}"), &[]).ok();
    let st = api.wait_task("n1", &upid, Duration::from_secs(30));
    assert_ne!(st["exitstatus"], "OK");
    // The jobs are cancelled and their files closed; no scratch or archive is left.
    wait_for(
        "QEMU to let go of the backup files",
        Duration::from_secs(30),
        || open_files_in(pid, &dump).is_empty().then_some(()),
    );
    let left: Vec<_> = std::fs::read_dir(&dump).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    // The guest runs on, and the next backup works.
    assert_eq!(
        api.get("/nodes/n1/qemu/181/status/current", &[]).ok()["qmpstatus"],
        "running"
    );
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/vzdump",
        &[("vmid", "181"), ("storage", "local")],
    );

    // A stop-mode backup stopped while it copies: the VM is started again.
    let upid = backup_until(
        &api,
        &[
            ("vmid", "181"),
            ("storage", "local"),
            ("mode", "stop"),
            ("bwlimit", "1024"),
        ],
        "copying local:181/vm-181-disk-1",
    );
    api.delete(&format!("/nodes/n1/tasks/{upid}"), &[]).ok();
    api.wait_task("n1", &upid, Duration::from_secs(30));
    wait_for("the VM to run again", Duration::from_secs(60), || {
        let st = api.get("/nodes/n1/qemu/181/status/current", &[]).ok();
        (st["qmpstatus"] == "running").then_some(())
    });
    let web = forward(&api, "n1", 181, 80);
    wait_guest(&web);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/181/status/stop", &[]);
}
