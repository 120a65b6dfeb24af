#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The node agent with real QEMU VMs booting the project's guest image (TCG here).
//! Test names start with `vm_` so nextest runs them one at a time.

mod common;

use std::time::{Duration, Instant};

use common::{create_vm, forward, guest_run, hemiron, wait_for, wait_guest, Agent};

fn status(api: &common::Api, vmid: u32) -> serde_json::Value {
    api.get(&format!("/nodes/n1/qemu/{vmid}/status/current"), &[])
        .ok()
}

fn qemu_cmdline(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn vm_full_lifecycle() {
    let agent = Agent::start();
    let api = agent.api();
    create_vm(&api, "n1", 100, &[("name", "life")]);
    let conf = api.get("/nodes/n1/qemu/100/config", &[]).ok();
    let net0 = conf["net0"].as_str().unwrap();
    assert!(
        net0.starts_with("virtio=BC:24:11:"),
        "MAC in Proxmox form: {net0}"
    );
    assert!(conf["scsi0"]
        .as_str()
        .unwrap()
        .starts_with("local:100/vm-100-disk-0.qcow2,size="));
    assert_eq!(conf["boot"], "order=scsi0;net0");
    let content = api
        .get("/nodes/n1/storage/local/content", &[("content", "images")])
        .ok();
    assert_eq!(content[0]["volid"], "local:100/vm-100-disk-0.qcow2");

    let t0 = Instant::now();
    api.task_ok("n1", "POST", "/nodes/n1/qemu/100/status/start", &[]);
    let web = forward(&api, "n1", 100, 80);
    let page = wait_guest(&web);
    eprintln!("start to first guest answer: {:?}", t0.elapsed());
    assert!(
        page.contains("hemiron-guest"),
        "page names the hostname: {page}"
    );

    let st = status(&api, 100);
    assert_eq!(st["status"], "running");
    assert_eq!(st["qmpstatus"], "running");
    assert_eq!(st["running-machine"], "pc-i440fx-7.2");
    assert!(st["hemiron-forwards"]["22"].is_string());
    let pid = st["pid"].as_u64().unwrap();
    // showcmd prints exactly what runs.
    let out = std::process::Command::new(hemiron())
        .args(["node", "showcmd", "--pretty", "--data-dir"])
        .arg(agent.data_dir())
        .arg("100")
        .output()
        .unwrap();
    let shown: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split(" \\\n  ")
        .map(|s| s.trim_end().to_string())
        .collect();
    assert_eq!(shown, qemu_cmdline(pid));

    // Measured figures.
    guest_run(&web, "dd if=/dev/zero bs=1024 count=200 2>/dev/null").unwrap();
    let st = wait_for("counters", Duration::from_secs(10), || {
        let st = status(&api, 100);
        (st["netout"].as_u64().unwrap() > 200 * 1024 && st["uptime"].as_u64().unwrap() >= 1)
            .then_some(st)
    });
    assert!(st["netin"].as_u64().unwrap() > 0);
    assert!(st["diskread"].as_u64().unwrap() > 0);
    assert!(st["mem"].as_u64().unwrap() > 0);
    assert!(st["cpu"].as_f64().unwrap() >= 0.0);
    let list = api.get("/nodes/n1/qemu", &[]).ok();
    assert_eq!(list[0]["hemiron-forwards"]["80"], web.as_str());

    // Changes to a running VM: hardware goes to pending, the name applies at once.
    api.put(
        "/nodes/n1/qemu/100/config",
        &[("memory", "192"), ("name", "renamed")],
    )
    .ok();
    let pending = api.get("/nodes/n1/qemu/100/pending", &[]).ok();
    let mem = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "memory")
        .unwrap();
    assert_eq!(mem["value"], "128");
    assert_eq!(mem["pending"], "192");
    assert_eq!(
        api.get("/nodes/n1/qemu/100/config", &[]).ok()["memory"],
        "192"
    );
    let current = api
        .get("/nodes/n1/qemu/100/config", &[("current", "1")])
        .ok();
    assert_eq!(current["memory"], "128");
    assert_eq!(current["name"], "renamed");

    // Reboot applies pending changes.
    let boot1 = guest_run(&web, "cat /proc/sys/kernel/random/boot_id").unwrap();
    api.task_ok("n1", "POST", "/nodes/n1/qemu/100/status/reboot", &[]);
    wait_guest(&web);
    let boot2 = guest_run(&web, "cat /proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(boot1, boot2);
    let mem_kb: u64 = guest_run(&web, "awk '/MemTotal/ {print $2}' /proc/meminfo")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        mem_kb > 128 * 1024,
        "guest sees the new memory size: {mem_kb} kB"
    );
    assert!(api
        .get("/nodes/n1/qemu/100/pending", &[])
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.get("pending").is_none()));
    assert_eq!(
        api.get("/nodes/n1/qemu/100/config", &[("current", "1")])
            .ok()["memory"],
        "192"
    );

    // A guest that powers itself off shows stopped within 1 s of QEMU's exit, cleaned up.
    let pid = status(&api, 100)["pid"].as_u64().unwrap();
    let _ = guest_run(&web, "(sleep 1; poweroff) >/dev/null 2>&1 &");
    let gone = wait_for("QEMU exit", Duration::from_secs(60), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then(Instant::now)
    });
    wait_for("stopped status", Duration::from_secs(5), || {
        (status(&api, 100)["status"] == "stopped").then_some(())
    });
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "stopped {:?} after exit",
        gone.elapsed()
    );
    let run = agent.data_dir().join("run");
    for f in ["100.pid", "100.qmp", "100.vnc"] {
        assert!(!run.join(f).exists(), "{f} left behind");
    }

    // ACPI shutdown through the API.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/100/status/start", &[]);
    wait_guest(&web);
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/100/status/shutdown",
        &[("timeout", "60")],
    );
    assert_eq!(status(&api, 100)["status"], "stopped");

    // Delete frees disks and forwards.
    api.task_ok(
        "n1",
        "DELETE",
        "/nodes/n1/qemu/100",
        &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
    );
    assert!(api
        .get("/nodes/n1/storage/local/content", &[])
        .ok()
        .as_array()
        .unwrap()
        .is_empty());
    let fw = std::fs::read_to_string(agent.data_dir().join("forwards.json")).unwrap();
    assert!(!fw.contains("\"100\""));
    let tasks = api.get("/nodes/n1/tasks", &[("vmid", "100"), ("limit", "100")]);
    let types: Vec<&str> = tasks.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    for t in ["qmcreate", "qmstart", "qmreboot", "qmshutdown", "qmdestroy"] {
        assert!(types.contains(&t), "task history has {t}: {types:?}");
    }
}

#[test]
fn vm_controllers_and_live_resize() {
    let agent = Agent::start();
    let api = agent.api();
    let image = common::guest_image();
    let disk = format!("local:0,import-from={}", image.display());
    create_vm(
        &api,
        "n1",
        101,
        &[("scsihw", "virtio-scsi-pci"), ("scsi0", &disk)],
    );
    create_vm(&api, "n1", 102, &[("virtio0", &disk)]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/101/status/start", &[]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/102/status/start", &[]);
    let web101 = forward(&api, "n1", 101, 80);
    let web102 = forward(&api, "n1", 102, 80);
    wait_guest(&web101);
    wait_guest(&web102);

    let sectors = |web: &str, dev: &str| -> u64 {
        guest_run(web, &format!("cat /sys/block/{dev}/size"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = sectors(&web102, "vda");
    api.task_ok(
        "n1",
        "PUT",
        "/nodes/n1/qemu/102/resize",
        &[("disk", "virtio0"), ("size", "+64M")],
    );
    let after = wait_for("guest sees the new size", Duration::from_secs(20), || {
        let s = sectors(&web102, "vda");
        (s > before).then_some(s)
    });
    assert_eq!(after - before, 64 * 1024 * 2);
    let size102 = after * 512;
    let conf = api.get("/nodes/n1/qemu/102/config", &[]).ok();
    assert!(conf["virtio0"].as_str().unwrap().ends_with(&format!(
        "size={}",
        hemiron_pve::size::format_size(after * 512)
    )));

    let before = sectors(&web101, "sda");
    api.task_ok(
        "n1",
        "PUT",
        "/nodes/n1/qemu/101/resize",
        &[("disk", "scsi0"), ("size", "+32M")],
    );
    let after = wait_for(
        "SCSI guest sees the new size",
        Duration::from_secs(20),
        || {
            let _ = guest_run(&web101, "echo 1 > /sys/class/block/sda/device/rescan");
            let s = sectors(&web101, "sda");
            (s > before).then_some(s)
        },
    );
    assert_eq!(after - before, 32 * 1024 * 2);

    // Shrinking is refused and changes nothing.
    let upid = api
        .put(
            "/nodes/n1/qemu/101/resize",
            &[("disk", "scsi0"), ("size", "1M")],
        )
        .ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(st["exitstatus"], "shrinking disks is not supported");
    let r = api.put(
        "/nodes/n1/qemu/101/resize",
        &[("disk", "scsi0"), ("size", "-1G")],
    );
    assert_eq!(r.status, 400);

    // Offline resize of a stopped VM.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/102/status/stop", &[]);
    api.task_ok(
        "n1",
        "PUT",
        "/nodes/n1/qemu/102/resize",
        &[("disk", "virtio0"), ("size", "+1M")],
    );
    let list = api
        .get("/nodes/n1/storage/local/content", &[("vmid", "102")])
        .ok();
    assert_eq!(list[0]["size"].as_u64().unwrap(), size102 + 1024 * 1024);
}

#[test]
fn vm_shutdown_timeouts_locks_and_power_states() {
    let agent = Agent::start();
    let api = agent.api();
    create_vm(&api, "n1", 103, &[]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/start", &[]);
    let web = forward(&api, "n1", 103, 80);
    wait_guest(&web);

    // Pause and resume.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/suspend", &[]);
    assert_eq!(status(&api, 103)["qmpstatus"], "paused");
    assert_eq!(status(&api, 103)["status"], "running");
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/resume", &[]);
    assert_eq!(status(&api, 103)["qmpstatus"], "running");
    wait_guest(&web);

    // Reset reboots the guest.
    let boot1 = guest_run(&web, "cat /proc/sys/kernel/random/boot_id").unwrap();
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/reset", &[]);
    let boot2 = wait_for("guest after reset", Duration::from_secs(120), || {
        guest_run(&web, "cat /proc/sys/kernel/random/boot_id").filter(|b| *b != boot1)
    });
    assert_ne!(boot1, boot2);

    // A guest that ignores ACPI: shutdown fails after its timeout, the VM still runs.
    guest_run(&web, "killall acpid; echo killed").unwrap();
    let upid = api
        .post("/nodes/n1/qemu/103/status/shutdown", &[("timeout", "3")])
        .ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(st["exitstatus"], "VM quit/powerdown failed - got timeout");
    assert_eq!(status(&api, 103)["status"], "running");

    // While a long shutdown holds the VM's lock, a config change waits 10 s, then fails.
    let long = api
        .post("/nodes/n1/qemu/103/status/shutdown", &[("timeout", "25")])
        .ok();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (code, reason) = api.reason_phrase("PUT", "/nodes/n1/qemu/103/config", &[("name", "x")]);
    assert_eq!(code, 500);
    assert!(reason.contains("got timeout"), "{reason}");
    assert!(t.elapsed() >= Duration::from_secs(9) && t.elapsed() < Duration::from_secs(15));
    // `overrule-shutdown` ends the waiting shutdown and stops the VM.
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/103/status/stop",
        &[("overrule-shutdown", "1")],
    );
    let st = api.wait_task("n1", long.as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(st["exitstatus"], "interrupted by signal");
    assert_eq!(status(&api, 103)["status"], "stopped");

    // forceStop: the guest ignores ACPI, the VM is stopped after the timeout.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/start", &[]);
    wait_guest(&web);
    guest_run(&web, "killall acpid; echo killed").unwrap();
    let t = Instant::now();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/103/status/shutdown",
        &[("timeout", "2"), ("forceStop", "1")],
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(status(&api, 103)["status"], "stopped");

    // A QEMU killed from outside shows stopped within 1 s.
    api.task_ok("n1", "POST", "/nodes/n1/qemu/103/status/start", &[]);
    let pid = status(&api, 103)["pid"].as_u64().unwrap();
    let t = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for("stopped after kill", Duration::from_secs(5), || {
        (status(&api, 103)["status"] == "stopped").then_some(())
    });
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(!agent.data_dir().join("run/103.qmp").exists());
}

/// Crash figure: `kill -9` of the agent with 3 VMs running, 5 trials; each time all three
/// must be re-adopted (running, same QEMU) within 2 s of the restart.
#[test]
fn vm_agent_restart_readopts_running_vms() {
    let mut agent = Agent::start();
    let api = agent.api();
    for vmid in [110, 111, 112] {
        create_vm(&api, "n1", vmid, &[]);
        api.task_ok(
            "n1",
            "POST",
            &format!("/nodes/n1/qemu/{vmid}/status/start"),
            &[],
        );
    }
    let pids: Vec<u64> = [110, 111, 112]
        .iter()
        .map(|v| status(&api, *v)["pid"].as_u64().unwrap())
        .collect();
    let web = forward(&api, "n1", 110, 80);
    wait_guest(&web);

    // A task cut off by the crash ends as `unexpected status`.
    guest_run(&web, "killall acpid; echo killed").unwrap();
    let cut = api
        .post("/nodes/n1/qemu/110/status/shutdown", &[("timeout", "120")])
        .ok();
    std::thread::sleep(Duration::from_millis(300));

    let mut worst = Duration::ZERO;
    for trial in 0..5 {
        agent.kill9();
        let t = Instant::now();
        agent.launch();
        let api = agent.api();
        wait_for("VMs re-adopted", Duration::from_secs(2), || {
            let list = api.get("/nodes/n1/qemu", &[]).ok();
            let ok = list.as_array().unwrap().iter().all(|vm| {
                vm["status"] == "running" && pids.contains(&vm["pid"].as_u64().unwrap_or(0))
            });
            ok.then_some(())
        });
        let took = t.elapsed();
        worst = worst.max(took);
        eprintln!("trial {trial}: re-adopted 3 VMs in {took:?}");
    }
    eprintln!("re-adoption: 5/5 within 2 s, worst {worst:?}");
    let api = agent.api();
    let st = api
        .get(
            &format!("/nodes/n1/tasks/{}/status", cut.as_str().unwrap()),
            &[],
        )
        .ok();
    assert_eq!(st["status"], "stopped");
    assert_eq!(st["exitstatus"], "unexpected status");
    // The re-adopted VMs are fully controllable. (The guest must have booted to hear the
    // power button: three TCG boots at once can leave it still starting here.)
    wait_guest(&forward(&api, "n1", 111, 80));
    api.task_ok("n1", "POST", "/nodes/n1/qemu/111/status/shutdown", &[]);
    assert_eq!(status(&api, 111)["status"], "stopped");
    let history = api.get("/nodes/n1/tasks", &[("limit", "500")]).body["total"]
        .as_u64()
        .unwrap();
    assert!(history >= 7, "task history survives restarts ({history})");
}

#[test]
fn vm_kvm_where_broken_fails_with_qemu_error() {
    let agent = Agent::start_with(true, &["--accel", "kvm"]);
    let api = agent.api();
    assert_eq!(api.get("/nodes/n1/status", &[]).ok()["accel"], "kvm");
    create_vm(&api, "n1", 120, &[]);
    let t = Instant::now();
    let upid = api.post("/nodes/n1/qemu/120/status/start", &[]).ok();
    let st = api.wait_task("n1", upid.as_str().unwrap(), Duration::from_secs(60));
    assert!(t.elapsed() < Duration::from_secs(30), "must not hang");
    let exit = st["exitstatus"].as_str().unwrap();
    assert!(
        exit.contains("start failed") && exit.contains("qemu-system-x86_64"),
        "{exit}"
    );
    let log = api
        .get(
            &format!("/nodes/n1/tasks/{}/log", upid.as_str().unwrap()),
            &[],
        )
        .ok();
    assert!(
        log.to_string().contains("qemu-system-x86_64"),
        "QEMU's error is in the task log: {log}"
    );
    assert_eq!(status(&api, 120)["status"], "stopped");
}

/// Many properties at once are honoured: the guest sees them, or the host does.
#[test]
fn vm_honoured_properties_boot() {
    let agent = Agent::start();
    let api = agent.api();
    let image = common::guest_image();
    let disk = format!("local:0,import-from={}", image.display());
    let hook = agent.data_dir().join("storage/local/snippets/hook.sh");
    let hook_log = agent.dir.path().join("hook.log");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", hook_log.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&hook)
        .status()
        .unwrap();

    // q35 with two sockets, NUMA, a virtio-scsi-single disk with many options, a second
    // NIC, and a long list of devices.
    create_vm(
        &api,
        "n1",
        130,
        &[
            ("machine", "q35"),
            ("sockets", "2"),
            ("cores", "1"),
            ("numa", "1"),
            ("memory", "256"),
            ("balloon", "192"),
            ("cpu", "x86-64-v2-AES,flags=+pdpe1gb"),
            ("scsihw", "virtio-scsi-single"),
            (
                "scsi0",
                &format!("{disk},iothread=1,ssd=1,discard=on,cache=writeback,mbps=200"),
            ),
            ("virtio1", "local:1,serial=hemiron-data"),
            ("ide2", "none,media=cdrom"),
            ("net1", "e1000,bridge=vmbr1,link_down=1"),
            ("rng0", "source=/dev/urandom,max_bytes=1024,period=1000"),
            ("watchdog", "model=i6300esb,action=reset"),
            ("serial0", "socket"),
            ("agent", "enabled=1"),
            ("smbios1", "manufacturer=SGVtaXJvbg==,base64=1"),
            ("vga", "virtio,memory=32"),
            ("audio0", "device=ich9-intel-hda,driver=none"),
            ("localtime", "1"),
            ("affinity", "0"),
            ("cpulimit", "1.5"),
            ("cpuunits", "200"),
            ("hookscript", "local:snippets/hook.sh"),
            ("tags", "a;b"),
            ("description", "many options"),
        ],
    );
    api.task_ok("n1", "POST", "/nodes/n1/qemu/130/status/start", &[]);
    let web = forward(&api, "n1", 130, 80);
    wait_guest(&web);
    let st = status(&api, 130);
    assert_eq!(st["running-machine"], "pc-q35-7.2");
    assert_eq!(st["cpus"], 2);
    let nproc = guest_run(&web, "grep -c ^processor /proc/cpuinfo").unwrap();
    assert_eq!(nproc.trim(), "2");
    let vendor = guest_run(&web, "cat /sys/class/dmi/id/sys_vendor").unwrap();
    assert_eq!(vendor.trim(), "Hemiron");
    let serial = guest_run(&web, "cat /sys/block/vda/serial").unwrap();
    assert_eq!(serial.trim(), "hemiron-data");
    let nics = guest_run(&web, "ls /sys/class/net").unwrap();
    assert!(
        nics.split_whitespace()
            .filter(|n| n.starts_with("eth"))
            .count()
            == 2,
        "{nics}"
    );
    let flags = guest_run(&web, "grep -m1 ^flags /proc/cpuinfo").unwrap();
    for f in ["aes", "sse4_2", "popcnt", "pdpe1gb"] {
        assert!(
            flags.split_whitespace().any(|x| x == f),
            "cpu flag {f}: {flags}"
        );
    }
    let pid = st["pid"].as_u64().unwrap();
    let allowed = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        allowed
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.trim_end().ends_with("\t0")),
        "affinity"
    );
    assert!(agent.data_dir().join("run/130.serial0").exists());
    assert!(agent.data_dir().join("run/130.qga").exists());
    let hooks = std::fs::read_to_string(&hook_log).unwrap();
    assert_eq!(hooks, "130 pre-start\n130 post-start\n");
    api.task_ok("n1", "POST", "/nodes/n1/qemu/130/status/stop", &[]);
    let hooks = wait_for("post-stop hook", Duration::from_secs(10), || {
        let h = std::fs::read_to_string(&hook_log).unwrap();
        h.contains("post-stop").then_some(h)
    });
    assert!(hooks.contains("130 pre-stop\n"));

    // i440fx with more virtio disks than Proxmox's fixed slots: the extra ones go on a PCI
    // bridge; the guest boots from the sixth disk and sees all of them.
    let mut params: Vec<(String, String)> = Vec::new();
    for i in 0..7 {
        params.push((format!("virtio{i}"), "local:0.0625".to_string()));
    }
    params[6].1 = disk.clone();
    params.push(("boot".into(), "order=virtio6".into()));
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    create_vm(&api, "n1", 131, &refs);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/131/status/start", &[]);
    let web = forward(&api, "n1", 131, 80);
    wait_guest(&web);
    let disks = guest_run(&web, "ls /sys/block | grep -c vd").unwrap();
    assert_eq!(disks.trim(), "7");
}

/// Disks and NICs added to or removed from a running VM are plugged live (`hotplug`).
#[test]
fn vm_hotplug_disk_and_nic() {
    let agent = Agent::start();
    let api = agent.api();
    create_vm(&api, "n1", 140, &[]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/140/status/start", &[]);
    let web = forward(&api, "n1", 140, 80);
    wait_guest(&web);

    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/140/config",
        &[("virtio1", "local:0.125,serial=hot1")],
    );
    let conf = api
        .get("/nodes/n1/qemu/140/config", &[("current", "1")])
        .ok();
    assert!(
        conf["virtio1"]
            .as_str()
            .unwrap()
            .starts_with("local:140/vm-140-disk-1.qcow2"),
        "plugged, not pending: {conf}"
    );
    let serial = wait_for(
        "guest sees the hot-plugged disk",
        Duration::from_secs(30),
        || {
            guest_run(&web, "cat /sys/block/vd*/serial 2>/dev/null")
                .filter(|s| !s.trim().is_empty())
        },
    );
    assert_eq!(serial.trim(), "hot1");

    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/140/config",
        &[("net1", "e1000,bridge=vmbr0")],
    );
    wait_for(
        "guest sees the hot-plugged NIC",
        Duration::from_secs(30),
        || {
            guest_run(&web, "ls /sys/class/net").filter(|n| {
                n.split_whitespace()
                    .filter(|x| x.starts_with("eth"))
                    .count()
                    == 2
            })
        },
    );

    // Removal: the disk leaves the guest and becomes unused.
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/140/config",
        &[("delete", "virtio1")],
    );
    wait_for("disk gone from the guest", Duration::from_secs(30), || {
        guest_run(&web, "ls /sys/block").filter(|b| !b.contains("vd"))
    });
    let conf = api
        .get("/nodes/n1/qemu/140/config", &[("current", "1")])
        .ok();
    assert!(conf.get("virtio1").is_none());
    assert_eq!(conf["unused0"], "local:140/vm-140-disk-1.qcow2");

    // With hotplug off, additions wait for the next start.
    api.put("/nodes/n1/qemu/140/config", &[("hotplug", "0")])
        .ok();
    api.task_ok(
        "n1",
        "POST",
        "/nodes/n1/qemu/140/config",
        &[("virtio2", "local:0.0625")],
    );
    let pending = api.get("/nodes/n1/qemu/140/pending", &[]).ok();
    assert!(pending
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["key"] == "virtio2" && p.get("pending").is_some()));
    assert!(!guest_run(&web, "ls /sys/block").unwrap().contains("vd"));
    let r = api.put("/nodes/n1/qemu/140/config", &[("hotplug", "cpu,disk")]);
    assert_eq!(r.status, 400);
}
