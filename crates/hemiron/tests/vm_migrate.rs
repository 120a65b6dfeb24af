#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live and offline migration between two real node agents on one machine (own data dirs,
//! one shared storage directory, one cluster file), while a client polls the guest's
//! forwarded port every 10 ms, or, for a guest on a Linux bridge, its own address. Named
//! `vm_*` so nextest runs it with the VM tests.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{cluster, listed, task_log, Cluster};
use common::{create_vm, forward, wait_for, wait_guest, Api};
use serde_json::Value;

/// Sector of the guest's data disk (`/dev/vda`) the tests mark.
const SECTOR: u32 = 2048;

/// Runs a migration task to its end: (exit status, log).
fn migrate(api: &Api, from: &str, vmid: u32, params: &[(&str, &str)]) -> (String, String) {
    let upid = api
        .post(&format!("/nodes/{from}/qemu/{vmid}/migrate"), params)
        .ok();
    let upid = upid.as_str().unwrap().to_string();
    let st = api.wait_task(from, &upid, Duration::from_secs(300));
    (
        st["exitstatus"].as_str().unwrap_or_default().to_string(),
        task_log(api, from, &upid),
    )
}

/// The downtime the task log reports.
fn downtime_ms(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with("average migration speed:"))
        .unwrap_or_else(|| panic!("no downtime line in:\n{log}"));
    line.rsplit("downtime ")
        .next()
        .unwrap()
        .trim_end_matches(" ms")
        .parse()
        .unwrap()
}

/// A client that GETs the guest's page every 10 ms and records the longest time between
/// two answers and how many requests failed.
struct Poller {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<(Duration, u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(web: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new((Duration::ZERO, 0u64, 0u64)));
        let (s, st, web) = (stop.clone(), stats.clone(), web.to_string());
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut last_ok = Instant::now();
            while !s.load(Ordering::SeqCst) {
                let ok = client
                    .get(format!("http://{web}/"))
                    .send()
                    .and_then(|r| r.error_for_status())
                    .and_then(|r| r.text())
                    .is_ok_and(|t| !t.is_empty());
                let mut g = st.lock().unwrap();
                if ok {
                    g.0 = g.0.max(last_ok.elapsed());
                    last_ok = Instant::now();
                    g.1 += 1;
                } else {
                    g.2 += 1;
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Poller {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// (longest gap, answers, failures)
    fn finish(mut self) -> (Duration, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        *self.stats.lock().unwrap()
    }
}

fn boot_id(web: &str) -> String {
    common::guest_run(web, "cat /proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// Starts VM `vmid` on `node` and returns its guest's web address once it answers.
fn start(api: &Api, node: &str, vmid: u32) -> String {
    api.task_ok(
        node,
        "POST",
        &format!("/nodes/{node}/qemu/{vmid}/status/start"),
        &[],
    );
    let web = forward(api, node, vmid, 80);
    wait_guest(&web);
    web
}

/// Migrates a running VM while the poller runs; checks that it lands whole.
fn live_move(
    c: &Cluster,
    vmid: u32,
    from: (&Api, &str),
    to: (&Api, &str),
    params: &[(&str, &str)],
) {
    let web = forward(from.0, from.1, vmid, 80);
    let boot = boot_id(&web);
    let marker = format!("BEFORE-{vmid}-{}", from.1);
    common::write_disk_marker(&web, SECTOR, &marker);
    let poller = Poller::start(&web);
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec![("target", to.1), ("online", "1")];
    all.extend_from_slice(params);
    let (status, log) = migrate(from.0, from.1, vmid, &all);
    std::thread::sleep(Duration::from_millis(500));
    let (gap, answers, failures) = poller.finish();
    assert_eq!(status, "OK", "{log}");
    let downtime = downtime_ms(&log);
    eprintln!("VM {vmid} {} -> {}: downtime {downtime} ms, client gap {gap:?}, {answers} answers, {failures} failures", from.1, to.1);
    assert!(downtime > 0, "{log}");
    assert!(
        failures <= 1,
        "requests failed during the migration:\n{log}"
    );
    assert!(gap <= Duration::from_secs(1), "client gap {gap:?}:\n{log}");
    // Exactly one node lists it, the target, running, on the same forwarded port.
    assert!(!listed(from.0, from.1).contains(&(vmid as u64)));
    assert!(listed(to.0, to.1).contains(&(vmid as u64)));
    let st =
        to.0.get(&format!("/nodes/{}/qemu/{vmid}/status/current", to.1), &[])
            .ok();
    assert_eq!(st["qmpstatus"], "running", "{st}");
    assert_eq!(forward(to.0, to.1, vmid, 80), web);
    // The same guest, not a reboot, with its disk data.
    assert_eq!(boot_id(&web), boot);
    assert_eq!(common::read_disk_marker(&web, SECTOR), marker);
    let _ = c;
}

#[test]
fn vm_live_migration_with_shared_and_local_disks() {
    let c = cluster();
    let (a1, a2) = (c.n1.api(), c.n2.api());
    let image = common::guest_image();

    // Shared storage: boot and data disk both on it.
    let boot = format!("shared:0,import-from={}", image.display());
    create_vm(
        &a1,
        "n1",
        100,
        &[("scsi0", &boot), ("virtio1", "shared:0.0625")],
    );
    start(&a1, "n1", 100);
    live_move(&c, 100, (&a1, "n1"), (&a2, "n2"), &[]);
    // The source kept nothing: no config, no QEMU, and the shared disks are the target's.
    assert!(c.n1.qemu_pids().is_empty());
    assert!(!c.n1.data_dir().join("qemu-server/100.conf").exists());
    assert!(c.shared.join("images/100/vm-100-disk-0.qcow2").exists());
    // And back again.
    live_move(&c, 100, (&a2, "n2"), (&a1, "n1"), &[]);

    // Local disks: refused without with-local-disks, and the VM runs on.
    let boot = format!("local:0,import-from={}", image.display());
    create_vm(
        &a1,
        "n1",
        101,
        &[("scsi0", &boot), ("virtio1", "local:0.0625")],
    );
    let web = start(&a1, "n1", 101);
    let (status, log) = migrate(&a1, "n1", 101, &[("target", "n2"), ("online", "1")]);
    assert_ne!(status, "OK");
    assert!(
        log.contains("can't live migrate attached local disks without with-local-disks option"),
        "{log}"
    );
    assert!(common::guest_get(&web, "/").is_some());
    assert!(listed(&a1, "n1").contains(&101));
    live_move(
        &c,
        101,
        (&a1, "n1"),
        (&a2, "n2"),
        &[("with-local-disks", "1")],
    );
    // The source's local volumes are gone, the target has its own.
    assert!(!c
        .n1
        .data_dir()
        .join("storage/local/images/101/vm-101-disk-1.qcow2")
        .exists());
    assert!(c
        .n2
        .data_dir()
        .join("storage/local/images/101/vm-101-disk-1.qcow2")
        .exists());

    // Offline: a stopped VM with local disks moves with its data.
    a2.task_ok("n2", "POST", "/nodes/n2/qemu/101/status/stop", &[]);
    let (status, log) = migrate(&a2, "n2", 101, &[("target", "n1")]);
    assert_eq!(status, "OK", "{log}");
    assert!(listed(&a1, "n1").contains(&101));
    assert!(!listed(&a2, "n2").contains(&101));
    let web = start(&a1, "n1", 101);
    assert_eq!(common::read_disk_marker(&web, SECTOR), "BEFORE-101-n1");
}

#[test]
fn vm_migration_whose_target_agent_dies_leaves_the_vm_on_the_source() {
    let mut c = cluster();
    let a1 = c.n1.api();
    let image = common::guest_image();
    let boot = format!("shared:0,import-from={}", image.display());
    create_vm(&a1, "n1", 110, &[("scsi0", &boot)]);
    let web = start(&a1, "n1", 110);
    let boot_before = boot_id(&web);
    // Slow enough (1 MiB/s) to be mid-transfer when the target's agent dies.
    let upid = a1
        .post(
            "/nodes/n1/qemu/110/migrate",
            &[("target", "n2"), ("online", "1"), ("bwlimit", "1024")],
        )
        .ok();
    let upid = upid.as_str().unwrap().to_string();
    wait_for("transfer to start", Duration::from_secs(60), || {
        task_log(&a1, "n1", &upid)
            .contains("migration active")
            .then_some(())
    });
    c.n2.kill9();
    let st = a1.wait_task("n1", &upid, Duration::from_secs(120));
    let log = task_log(&a1, "n1", &upid);
    assert_ne!(st["exitstatus"], "OK", "{log}");
    // Still on the source, running, the same guest.
    assert!(listed(&a1, "n1").contains(&110));
    let cur = a1.get("/nodes/n1/qemu/110/status/current", &[]).ok();
    assert_eq!(cur["qmpstatus"], "running", "{cur}\n{log}");
    assert_eq!(boot_id(&web), boot_before);
    // The target's agent, back, removes what the migration left there.
    c.n2.launch();
    wait_for("target leftovers removed", Duration::from_secs(30), || {
        c.n2.qemu_pids().is_empty().then_some(())
    });
    assert!(!c.n2.data_dir().join("qemu-server/110.conf").exists());
    assert!(!listed(&c.n2.api(), "n2").contains(&110));
    let _: Value = Value::Null;
}

/// Runs test `name` of this binary again inside a network namespace of its own with a Linux
/// bridge `vmbr0` (10.99.0.1/24): the only place bridged networking may be tried. The inner
/// run sees `HEMIRON_TEST_NETNS`.
fn in_own_netns(name: &str) {
    use std::process::Command;
    let ns = format!("hemiron-t{}", std::process::id());
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _gone = Gone(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    // A fixed MAC, as a host bridge has from its uplink: a bridge without one takes the
    // lowest of its ports', and changes it when that tap goes (the guests' ARP entries for
    // the host then point nowhere until they expire).
    ip(&[
        "-n",
        &ns,
        "link",
        "add",
        "vmbr0",
        "address",
        "02:00:0a:63:00:01",
        "type",
        "bridge",
    ]);
    ip(&["-n", &ns, "addr", "add", "10.99.0.1/24", "dev", "vmbr0"]);
    ip(&["-n", &ns, "link", "set", "vmbr0", "up"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("HEMIRON_TEST_NETNS", &ns)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "the run inside {ns} failed");
    assert!(text.contains("1 passed"), "the run inside {ns} ran nothing");
}

/// The bridge a tap device is plugged into, if it exists.
fn tap_master(tap: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/class/net/{tap}/master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
}

/// A guest on a Linux bridge (a tap device plugged into `vmbr0`, as Proxmox does) keeps its
/// own address through live migrations, and a client talking to that address over the
/// bridge loses no request: the connections' state lives in the guest and in the client,
/// not in QEMU (as it does with user-mode networking, where the request open at the
/// switchover always fails). The target's tap (`tap<vmid>i0b` while the source's holds the
/// plain name on this one machine) is plugged in before the guest resumes; the source's goes
/// with its QEMU.
#[test]
fn vm_bridged_guest_keeps_its_address_and_connections_through_migration() {
    const NAME: &str = "vm_bridged_guest_keeps_its_address_and_connections_through_migration";
    if std::env::var("HEMIRON_TEST_NETNS").is_err() {
        return in_own_netns(NAME);
    }
    let c = cluster();
    let (a1, a2) = (c.n1.api(), c.n2.api());
    let image = common::guest_image();
    create_vm(
        &a1,
        "n1",
        120,
        &[
            ("net0", "virtio,bridge=vmbr0,macaddr=BC:24:11:00:01:20"),
            (
                "scsi0",
                &format!("shared:0,import-from={}", image.display()),
            ),
            ("ide2", "local:cloudinit"),
            ("ipconfig0", "ip=10.99.0.20/24,gw=10.99.0.1"),
        ],
    );
    a1.task_ok("n1", "POST", "/nodes/n1/qemu/120/status/start", &[]);
    let web = "10.99.0.20:80";
    wait_guest(web);
    assert_eq!(tap_master("tap120i0").as_deref(), Some("vmbr0"));
    let st = a1.get("/nodes/n1/qemu/120/status/current", &[]).ok();
    assert!(
        st.get("hemiron-forwards").is_none(),
        "no loopback forwards: {st}"
    );
    let boot = boot_id(web);
    for (from, to, api, tap) in [
        ("n1", "n2", &a1, "tap120i0b"),
        ("n2", "n1", &a2, "tap120i0"),
        ("n1", "n2", &a1, "tap120i0b"),
        ("n2", "n1", &a2, "tap120i0"),
    ] {
        let poller = Poller::start(web);
        std::thread::sleep(Duration::from_millis(500));
        let (status, log) = migrate(api, from, 120, &[("target", to), ("online", "1")]);
        std::thread::sleep(Duration::from_millis(500));
        let (gap, answers, failed) = poller.finish();
        assert_eq!(status, "OK", "{log}");
        eprintln!(
            "{from} -> {to}: downtime {} ms; client: {answers} answers, {failed} failed, longest gap {gap:?}",
            downtime_ms(&log)
        );
        // The guest's frames were flooded to the target's tap too while it migrated, so the
        // ones that came during the switchover waited there instead of being lost with the
        // source's QEMU (without that, a connection attempt among them waited for the
        // client's 1 s SYN timeout in most migrations here).
        assert!(
            log.contains("flooded to the bridge until the switchover"),
            "{log}"
        );
        assert_eq!(failed, 0, "no request fails on a bridge:\n{log}");
        assert!(answers > 20, "{answers} answers");
        assert!(gap < Duration::from_secs(1), "gap {gap:?}");
        assert_eq!(boot_id(web), boot, "the same guest, not a reboot");
        // The target's tap took over on the bridge; the source's went with its QEMU.
        assert_eq!(tap_master(tap).as_deref(), Some("vmbr0"), "{tap}");
        let old = if tap == "tap120i0" {
            "tap120i0b"
        } else {
            "tap120i0"
        };
        wait_for("the source's tap to go", Duration::from_secs(10), || {
            (!std::path::Path::new("/sys/class/net").join(old).exists()).then_some(())
        });
        assert!(listed(if to == "n1" { &a1 } else { &a2 }, to).contains(&120));
    }
}
