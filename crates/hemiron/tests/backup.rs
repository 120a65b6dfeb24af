//! Backups and restores of stopped VMs through the node API: `vzdump` writes an archive that
//! is listed as backup content, carries the config and the disks' data, is pruned by the
//! retention options, and restores to the same or a new VMID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Agent, Api};
use serde_json::Value;

fn write_pattern(path: &Path, pattern: u8, offset: &str) {
    common::write_pattern(path, pattern, offset, "64k");
}

fn has_pattern(path: &Path, pattern: u8, offset: &str) -> bool {
    common::has_pattern(path, pattern, offset, "64k")
}

fn backups(api: &Api) -> Vec<Value> {
    api.get("/nodes/n1/storage/local/content", &[("content", "backup")])
        .ok()
        .as_array()
        .unwrap()
        .clone()
}

fn vzdump(api: &Api, params: &[(&str, &str)]) -> Value {
    api.task_ok("n1", "POST", "/nodes/n1/vzdump", params)
}

#[test]
fn backups_restore_prune_and_refuse_what_they_cannot_do() {
    let agent = Agent::start();
    let api = agent.api();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[
            ("vmid", "100"),
            ("name", "web"),
            ("memory", "128"),
            ("net0", "virtio,bridge=vmbr0"),
            ("scsi0", "local:1"),
            ("scsi1", "local:1"),
        ],
    );
    let images = agent.data_dir().join("storage/local/images");
    let disk0 = images.join("100/vm-100-disk-0.qcow2");
    let disk1 = images.join("100/vm-100-disk-1.qcow2");
    write_pattern(&disk0, 0x5a, "1M");
    write_pattern(&disk1, 0x6b, "512M");
    let original = api.get("/nodes/n1/qemu/100/config", &[]).ok();

    vzdump(
        &api,
        &[
            ("vmid", "100"),
            ("storage", "local"),
            ("compress", "zstd"),
            ("notes-template", "{{guestname}} ({{vmid}}) nightly"),
        ],
    );
    let list = backups(&api);
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    let volid = b["volid"].as_str().unwrap().to_string();
    assert!(
        volid.starts_with("local:backup/vzdump-qemu-100-") && volid.ends_with(".tar"),
        "{volid}"
    );
    assert_eq!(b["vmid"], 100);
    assert_eq!(b["notes"], "web (100) nightly");
    assert_eq!(b["content"], "backup");
    assert!(b["ctime"].as_i64().unwrap() > 1_700_000_000);
    // Compressed: the 2 GiB of (mostly empty) disks take far less.
    assert!(b["size"].as_u64().unwrap() < 16 << 20, "{b}");

    // A new VM from it: the same config and data, its own MAC address.
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "101"), ("archive", &volid)],
    );
    let copy = api.get("/nodes/n1/qemu/101/config", &[]).ok();
    assert_eq!(copy["name"], "web");
    assert_eq!(copy["memory"], original["memory"]);
    assert_ne!(copy["net0"], original["net0"]);
    assert!(copy["net0"].as_str().unwrap().starts_with("virtio="));
    assert_eq!(
        copy["scsi0"].as_str().unwrap().split(',').next(),
        Some("local:101/vm-101-disk-0.qcow2")
    );
    assert!(has_pattern(
        &images.join("101/vm-101-disk-0.qcow2"),
        0x5a,
        "1M"
    ));
    assert!(has_pattern(
        &images.join("101/vm-101-disk-1.qcow2"),
        0x6b,
        "512M"
    ));

    // The original deleted, then restored under its own VMID: identical config and data.
    api.task_ok("n1", "DELETE", "/nodes/n1/qemu/100", &[("purge", "1")]);
    assert!(!disk0.exists());
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "100"), ("archive", &volid)],
    );
    let restored = api.get("/nodes/n1/qemu/100/config", &[]).ok();
    for key in ["name", "memory", "net0", "scsi0", "scsi1", "smbios1"] {
        assert_eq!(restored[key], original[key], "{key}");
    }
    // The guest learns it was restored: a new VM generation ID.
    if original["vmgenid"].is_string() {
        assert_ne!(restored["vmgenid"], original["vmgenid"]);
    }
    assert!(has_pattern(&disk0, 0x5a, "1M"));
    assert!(has_pattern(&disk1, 0x6b, "512M"));

    // Over an existing VM only with force (and the VM's old disks go).
    let refused = api.post("/nodes/n1/qemu", &[("vmid", "101"), ("archive", &volid)]);
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    write_pattern(&images.join("101/vm-101-disk-0.qcow2"), 0x11, "1M");
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu",
        &[("vmid", "101"), ("archive", &volid), ("force", "1")],
    );
    // The new disks are written beside the old ones, which go once the config names the new.
    let scsi0 = |api: &Api| {
        let conf = api.get("/nodes/n1/qemu/101/config", &[]).ok();
        let vol = conf["scsi0"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        images.join(vol.trim_start_matches("local:"))
    };
    assert!(has_pattern(&scsi0(&api), 0x5a, "1M"));
    assert!(!images.join("101/vm-101-disk-0.qcow2").exists());

    // Retention: a protected backup, then one more with keep-last=1: the new one stays, the
    // protected one stays (and counts for nothing), the first one goes.
    vzdump(
        &api,
        &[("vmid", "100"), ("storage", "local"), ("protected", "1")],
    );
    vzdump(
        &api,
        &[
            ("vmid", "100"),
            ("storage", "local"),
            ("prune-backups", "keep-last=1"),
        ],
    );
    let list = backups(&api);
    let of100: Vec<&Value> = list.iter().filter(|b| b["vmid"] == 100).collect();
    assert_eq!(of100.len(), 2, "{list:?}");
    assert_eq!(of100.iter().filter(|b| b["protected"] == 1).count(), 1);
    assert!(
        !of100.iter().any(|b| b["volid"] == volid.as_str()),
        "the oldest unprotected backup was pruned: {list:?}"
    );

    // The config inside an archive; notes, protection and deletion as volumes.
    let first = of100.iter().find(|b| b["protected"] != 1).unwrap()["volid"]
        .as_str()
        .unwrap()
        .to_string();
    let protected = of100.iter().find(|b| b["protected"] == 1).unwrap()["volid"]
        .as_str()
        .unwrap()
        .to_string();
    let text = api
        .get("/nodes/n1/vzdump/extractconfig", &[("volume", &first)])
        .ok();
    assert!(text.as_str().unwrap().contains("name: web"), "{text}");
    let enc = |v: &str| v.replace(':', "%3A").replace('/', "%2F");
    let path = |v: &str| format!("/nodes/n1/storage/local/content/{}", enc(v));
    api.put(&path(&first), &[("notes", "before the upgrade")])
        .ok();
    assert_eq!(
        api.get(&path(&first), &[]).ok()["notes"],
        "before the upgrade"
    );
    let refused = api.delete(&path(&protected), &[]);
    assert_eq!(refused.status, 500, "{:?}", refused.body);
    api.put(&path(&protected), &[("protected", "0")]).ok();
    api.delete(&path(&protected), &[]).ok();
    assert_eq!(backups(&api).iter().filter(|b| b["vmid"] == 100).count(), 1);
    let in_use = api.delete(&path("local:100/vm-100-disk-0.qcow2"), &[]);
    assert_eq!(in_use.status, 500, "{:?}", in_use.body);
    assert!(disk0.exists());

    // What it cannot do is refused, not ignored.
    for params in [
        vec![("vmid", "100"), ("compress", "lzo")],
        vec![("all", "1")],
        vec![("vmid", "100"), ("dumpdir", "/tmp")],
        vec![("vmid", "999")],
        vec![("vmid", "100"), ("storage", "nope")],
    ] {
        let r = api.post("/nodes/n1/vzdump", &params);
        assert_eq!(r.status, 400, "{params:?}: {:?}", r.body);
    }
    let r = api.post(
        "/nodes/n1/qemu",
        &[("vmid", "102"), ("archive", &volid), ("memory", "256")],
    );
    assert_eq!(r.status, 400, "{:?}", r.body);

    // A damaged archive is refused before anything changes, a VM it would replace included.
    let dump = agent.data_dir().join("storage/local/dump");
    let bad = dump.join("vzdump-qemu-100-2020_01_01-00_00_00.tar");
    std::fs::write(&bad, b"not a tar").unwrap();
    let bad_volid = "local:backup/vzdump-qemu-100-2020_01_01-00_00_00.tar";
    let r = api.post("/nodes/n1/qemu", &[("vmid", "103"), ("archive", bad_volid)]);
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_ne!(api.get("/nodes/n1/qemu/103/config", &[]).status, 200);
    assert!(!images.join("103").exists());
    let r = api.post(
        "/nodes/n1/qemu",
        &[("vmid", "101"), ("archive", bad_volid), ("force", "1")],
    );
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(
        api.get("/nodes/n1/qemu/101/config", &[]).ok()["name"],
        "web"
    );
    assert!(has_pattern(&scsi0(&api), 0x5a, "1M"));
}
