//! Boots the guest image under QEMU (TCG) from each disk controller Proxmox offers for a boot
//! disk, and checks what the guest promises: the web page with its hostname, the test hook,
//! the READY line, and ACPI power-off. Named `vm_*` so nextest runs them one at a time.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ssh, url_encode, Controller, Vm, VmOptions};
use hemiron_guest::DEFAULT_HOSTNAME;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(20);

fn page_names_host(status: u16, body: &str) -> bool {
    status == 200
        && body.contains(&format!("<h1>{DEFAULT_HOSTNAME}</h1>"))
        && body.contains("Hemiron guest")
}

/// Runs `command` in the guest through the test hook and returns its output.
fn run_in_guest(vm: &mut Vm, command: &str) -> String {
    let path = format!("/cgi-bin/run?{}", url_encode(command));
    let (status, body) = common::http_get(vm.port, &path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", vm.diagnostics()));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Boots from `controller`, checks the page, the hook and the console, then powers off.
fn boot_and_power_off(controller: Controller) -> Vm {
    let image = common::image(true);
    let mut vm = Vm::start(&image, controller);
    vm.wait_http("/", BOOT_TIMEOUT, page_names_host);
    let boot = vm.started.elapsed();

    let (_, hostname) = vm.wait_http("/hostname", Duration::from_secs(5), |s, _| s == 200);
    assert_eq!(hostname.trim(), DEFAULT_HOSTNAME);

    // The boot disk is visible with the image's full size.
    let disk = controller.guest_disk();
    let sectors: u64 = run_in_guest(&mut vm, &format!("cat /sys/block/{disk}/size"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("size of {disk}: {e}\n{}", vm.diagnostics()));
    let virtual_size = qcow2_virtual_size(&image.disk);
    assert_eq!(
        sectors * 512,
        virtual_size,
        "guest sees {disk} with the image's size"
    );

    let ready = vm.wait_serial_line(Duration::from_secs(20), |l| {
        l.contains("HEMIRON-GUEST-READY")
    });
    assert!(
        ready.contains(&format!("hostname={DEFAULT_HOSTNAME}")),
        "{ready}"
    );
    assert!(ready.contains("ip=10.0.2.15"), "{ready}");

    let powerdown = Instant::now();
    vm.qmp().execute("system_powerdown", serde_json::json!({}));
    let status = vm.wait_exit(POWERDOWN_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "QEMU still running {POWERDOWN_TIMEOUT:?} after system_powerdown\n{}",
            vm.diagnostics()
        )
    });
    assert!(status.success(), "QEMU exit status {status}");
    eprintln!(
        "{controller:?}: first HTTP answer after {:.2} s, {ready}; powered off {:.2} s after system_powerdown",
        boot.as_secs_f64(),
        powerdown.elapsed().as_secs_f64()
    );
    vm
}

/// Virtual size of a qcow2 image (big-endian u64 at offset 24 of the header).
fn qcow2_virtual_size(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut header = [0u8; 32];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    assert_eq!(&header[..4], b"QFI\xfb", "qcow2 magic");
    u64::from_be_bytes(header[24..32].try_into().unwrap())
}

#[test]
fn vm_boots_from_scsi_on_lsi() {
    boot_and_power_off(Controller::Lsi);
}

#[test]
fn vm_boots_from_scsi_on_virtio_scsi() {
    boot_and_power_off(Controller::VirtioScsi);
}

#[test]
fn vm_boots_from_virtio_blk() {
    boot_and_power_off(Controller::VirtioBlk);
}

#[test]
fn vm_test_hook_decodes_commands_and_file_systems_mount() {
    let image = common::image(true);
    // A second disk with an ext4 file system as mkfs.ext4 makes it today (metadata_csum, so
    // mounting needs crc32c).
    let scratch = tempfile::tempdir().unwrap();
    let ext4 = scratch.path().join("data.ext4");
    std::fs::File::create(&ext4)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "hemirondata"])
        .arg(&ext4)
        .output()
        .expect("mkfs.ext4 (package e2fsprogs) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra = [
        "-blockdev".to_string(),
        format!(
            "driver=file,filename={},node-name=data0,read-only=on",
            ext4.display()
        ),
        "-device".to_string(),
        "virtio-blk-pci,drive=data0,id=virtio1,bus=pci.0,addr=0xb".to_string(),
    ];
    let mut vm = Vm::start_with(&image, Controller::VirtioBlk, &extra);
    vm.wait_http("/", BOOT_TIMEOUT, page_names_host);

    // The boot partition, found by label, takes persistent state.
    let fat = run_in_guest(
        &mut vm,
        "mkdir -p /mnt/boot && mount -t vfat \"$(findfs LABEL=HEMIRONBOOT)\" /mnt/boot && \
         echo kept >/mnt/boot/state && cat /mnt/boot/state && ls /mnt/boot && umount /mnt/boot",
    );
    assert!(
        fat.starts_with("kept\n") && fat.contains("vmlinuz"),
        "{fat}"
    );
    let ext4 = run_in_guest(
        &mut vm,
        "mkdir -p /mnt/data && mount -t ext4 -o ro \"$(findfs LABEL=hemirondata)\" /mnt/data && \
         ls /mnt/data && umount /mnt/data",
    );
    assert!(ext4.contains("lost+found"), "{ext4}");

    assert!(run_in_guest(&mut vm, "cat /etc/hemiron-test-hooks").contains("For tests only"));
    // Spaces, '+', '/', '=', '&', both quote kinds, '%', backslashes and newlines survive.
    let out = run_in_guest(
        &mut vm,
        "printf '%s|' \"a b\" 'c=d&e/f' 'x+y' '100%' 'back\\slash'\necho\necho \"two\"; echo 'lines'",
    );
    assert_eq!(out, "a b|c=d&e/f|x+y|100%|back\\slash|\ntwo\nlines\n");
    // Hand-encoded forms as a browser or curl would send them.
    for (query, expected) in [
        ("echo+hello%20world", "hello world\n"),
        ("echo%20%27a%2Fb%3Dc%26d%27", "a/b=c&d\n"),
        ("echo%20%22dq%22%20%27sq%27", "dq sq\n"),
        ("echo%20one%0Aecho%20two", "one\ntwo\n"),
        ("echo+1%2B1", "1+1\n"),
    ] {
        let (status, body) = common::http_get(vm.port, &format!("/cgi-bin/run?{query}")).unwrap();
        assert_eq!((status, body.as_str()), (200, expected), "query {query}");
    }
    // stderr is returned too.
    assert_eq!(run_in_guest(&mut vm, "echo oops >&2"), "oops\n");
}

#[test]
fn vm_default_image_has_no_test_hooks() {
    let image = common::image(false);
    assert!(!image.manifest.test_hooks);
    // Without a cloud-init seed, SSH host keys belong to the SMBIOS UUID (Proxmox's smbios1).
    let uuid = "6c1f1b8e-2a57-4f0e-9d3c-0b9e5d2a7f41";
    let mut vm = Vm::start_opts(
        &image,
        Controller::VirtioBlk,
        &VmOptions {
            extra: vec!["-uuid".into(), uuid.into()],
            ssh: true,
            ..VmOptions::default()
        },
    );
    vm.wait_http("/", BOOT_TIMEOUT, page_names_host);
    let (status, _) =
        common::http_get(vm.port, &format!("/cgi-bin/run?{}", url_encode("echo hi"))).unwrap();
    assert_ne!(status, 200, "the default image must not run commands");
    let (status, _) = common::http_get(vm.port, "/cgi-bin/").unwrap();
    assert_ne!(status, 200);

    // The SSH server runs, but with no seed there is no account to log in to.
    let port = vm.ssh_port.unwrap();
    let keys = common::wait_for("SSH host keys", Duration::from_secs(60), || {
        Some(ssh::host_keys(port, &["ed25519", "ecdsa"])).filter(|k| k.len() == 2)
    });
    let generated =
        vm.wait_serial_line(Duration::from_secs(5), |l| l.contains("ssh: host keys for"));
    assert!(
        generated.contains(&format!("for smbios:{uuid} generated")),
        "{generated}"
    );
    let work = tempfile::tempdir().unwrap();
    let (key, _) = ssh::keypair(work.path(), "key");
    for user in ["root", "hemiron"] {
        let out = ssh::run_with_key(port, &key, user, "true");
        assert!(ssh::refused(&out), "{user}: {out:?}");
    }
    assert_eq!(keys.len(), 2);
}

#[test]
fn vm_hotplugged_disk_and_nic_get_their_drivers() {
    let image = common::image(true);
    // Booted from LSI SCSI, the guest has loaded neither virtio_blk nor e1000.
    let mut vm = Vm::start(&image, Controller::Lsi);
    vm.wait_http("/", BOOT_TIMEOUT, page_names_host);
    let loaded = run_in_guest(&mut vm, "lsmod | grep -c -e '^virtio_blk ' -e '^e1000 '");
    assert_eq!(
        loaded.trim(),
        "0",
        "drivers of absent devices must not be loaded"
    );

    let disk = vm.dir().join("hot.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut qmp = vm.qmp();
    qmp.execute(
        "blockdev-add",
        serde_json::json!({"driver": "qcow2", "node-name": "drive-virtio1",
            "file": {"driver": "file", "filename": disk}}),
    );
    qmp.execute(
        "device_add",
        serde_json::json!({"driver": "virtio-blk-pci", "drive": "drive-virtio1", "id": "virtio1",
            "bus": "pci.0", "addr": "0xb"}),
    );
    qmp.execute(
        "netdev_add",
        serde_json::json!({"type": "user", "id": "net1", "net": "10.0.3.0/24"}),
    );
    qmp.execute(
        "device_add",
        serde_json::json!({"driver": "e1000", "netdev": "net1", "id": "net1dev",
            "mac": "BC:24:11:00:00:02", "bus": "pci.0", "addr": "0x12"}),
    );

    let port = vm.port;
    let guest = |cmd: &str| {
        let path = format!("/cgi-bin/run?{}", url_encode(cmd));
        common::http_get(port, &path).ok().map(|(_, body)| body)
    };
    common::wait_for(
        "hot-added virtio disk in the guest",
        Duration::from_secs(30),
        || guest("cat /sys/block/vda/size").filter(|b| b.trim() == (64u64 << 20 >> 9).to_string()),
    );
    common::wait_for(
        "DHCP address on the hot-added NIC",
        Duration::from_secs(30),
        || guest("ip -4 -o addr show dev eth1").filter(|b| b.contains("inet 10.0.3.15/24")),
    );
}
