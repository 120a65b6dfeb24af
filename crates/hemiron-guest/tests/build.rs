//! Builds the image without booting it and checks its parts: the manifest, the disk layout,
//! the initramfs contents, the SSH server with its libraries (run on the build host through
//! the shipped loader), and the shipped URL decoder run by the shipped busybox.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Instant;

use hemiron_guest::{Manifest, BOOT_LABEL, MANIFEST_FILE};
use sha2::{Digest, Sha256};

fn index_of(modules: &[String], name: &str) -> usize {
    modules
        .iter()
        .position(|m| m == name)
        .unwrap_or_else(|| panic!("module {name} not loaded; modules: {modules:?}"))
}

#[test]
fn build_outputs_are_complete_and_consistent() {
    let dir = common::target_tmp().join("hemiron-guest-build-test");
    let started = Instant::now();
    common::build_into(&dir, true);
    let first = started.elapsed();
    // Again: now everything comes from the cache.
    let started = Instant::now();
    let image = common::build_into(&dir, true);
    eprintln!(
        "build: {:.2} s, rebuild: {:.2} s; qcow2 {} B, initrd {} B, sshd {} B, vmlinuz {} B, {} modules",
        first.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        image.manifest.disk_bytes,
        image.manifest.initrd_bytes,
        image.manifest.sshd_bytes,
        image.manifest.kernel_bytes,
        image.manifest.modules.len()
    );

    // Manifest: on disk, and describing this very qcow2.
    let m = &image.manifest;
    assert_eq!(&Manifest::read(&dir.join(MANIFEST_FILE)).unwrap(), m);
    assert!(m.kernel_package.starts_with("linux-image-") && m.kernel_package.ends_with("-amd64"));
    assert_ne!(m.kernel_package, "linux-image-amd64");
    assert!(m.test_hooks);
    let disk = std::fs::read(&image.disk).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&disk)), m.disk_sha256);
    assert_eq!(disk.len() as u64, m.disk_bytes);

    // Load order: dependencies before their users.
    let mods = &m.modules;
    for (dep, user) in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio", "virtio_net"),
        ("scsi_mod", "sd_mod"),
        ("scsi_transport_spi", "sym53c8xx"),
        ("cdrom", "sr_mod"),
        ("libata", "ata_piix"),
        ("libahci", "ahci"),
        ("fat", "vfat"),
        ("jbd2", "ext4"),
    ] {
        assert!(
            index_of(mods, dep) < index_of(mods, user),
            "{dep} must load before {user}"
        );
    }
    for driver in [
        "virtio_blk",
        "virtio_scsi",
        "virtio_balloon",
        "virtio_rng",
        "virtio_console",
        "e1000",
        "e1000e",
        "8139cp",
        "8139too",
        "vmxnet3",
        "pcnet32",
        "ahci",
        "button",
        "evdev",
        "nls_cp437",
        "nls_iso8859_1",
        "nls_utf8",
        "isofs",
    ] {
        index_of(mods, driver);
    }

    // Disk: MBR with syslinux's boot code and one bootable FAT16 partition at 1 MiB.
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&image.disk)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw_bytes = std::fs::read(&raw).unwrap();
    let mbr_code = std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").unwrap();
    assert_eq!(&raw_bytes[..mbr_code.len()], &mbr_code[..]);
    assert_eq!(&raw_bytes[510..512], &[0x55, 0xaa]);
    let entry = &raw_bytes[446..462];
    assert_eq!((entry[0], entry[4]), (0x80, 0x0e));
    let start = u32::from_le_bytes(entry[8..12].try_into().unwrap()) as usize;
    let sectors = u32::from_le_bytes(entry[12..16].try_into().unwrap()) as usize;
    assert_eq!(start, 2048);
    assert_eq!(
        (start + sectors) * 512,
        raw_bytes.len(),
        "partition fills the disk"
    );
    assert!(sectors * 512 >= 32 << 20);
    let boot_sector = &raw_bytes[start * 512..start * 512 + 512];
    assert_eq!(
        &boot_sector[43..54],
        BOOT_LABEL.as_bytes(),
        "FAT16 volume label"
    );
    assert_eq!(&boot_sector[54..62], b"FAT16   ");
    let listing = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", raw.display(), start * 512))
        .args(["-a", "-b", "::/"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_lowercase();
    for file in [
        "vmlinuz",
        "initrd.gz",
        "sshd.gz",
        "syslinux.cfg",
        "ldlinux.sys",
        "ldlinux.c32",
    ] {
        assert!(
            listing.contains(file),
            "{file} missing from the boot partition: {listing}"
        );
    }

    // Initramfs: busybox as /init, scripts, modules and their load list, the test hook.
    let initrd = common::read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
    assert_eq!(initrd["init"].1, b"/bin/busybox");
    assert_eq!(initrd["init"].0 & 0o170000, 0o120000, "/init is a symlink");
    assert_eq!(
        initrd["bin/busybox"].0 & 0o170000,
        0o100000,
        "busybox is a file"
    );
    assert!(initrd["bin/busybox"].1.len() > 1 << 20);
    assert_eq!(initrd["sbin/init"].1, b"/bin/busybox");
    assert_eq!(initrd["dev/console"].0 & 0o170000, 0o020000);
    let text = |path: &str| String::from_utf8(initrd[path].1.clone()).unwrap();
    let module_dir = format!("lib/modules/{}", m.kernel_release);
    for module in &m.modules {
        let path = format!("{module_dir}/{module}.ko");
        assert!(initrd[&path].1.starts_with(b"\x7fELF"), "{path}");
    }
    // Modules every guest loads; device drivers are left to their aliases, file systems to
    // the kernel's request at the first mount.
    let always = text("etc/hemiron/modules");
    for module in ["sd_mod", "sr_mod", "button", "evdev"] {
        assert!(
            always.lines().any(|l| l == module),
            "{module} not always loaded: {always}"
        );
    }
    for driver in [
        "virtio_pci",
        "virtio_net",
        "e1000",
        "sym53c8xx",
        "ata_piix",
        "vfat",
        "isofs",
        "ext4",
    ] {
        assert!(
            !always.lines().any(|l| l == driver),
            "{driver} is a device driver: {always}"
        );
    }
    // modules.dep has one line per module, with its whole dependency closure.
    let dep = text(&format!("{module_dir}/modules.dep"));
    assert_eq!(dep.lines().count(), m.modules.len());
    assert!(dep.contains("\nvirtio.ko: virtio_ring.ko\n"), "{dep}");
    let sym = dep
        .lines()
        .find(|l| l.starts_with("sym53c8xx.ko:"))
        .unwrap();
    assert!(
        sym.contains(" scsi_transport_spi.ko") && sym.contains(" scsi_mod.ko"),
        "{sym}"
    );
    let alias = text(&format!("{module_dir}/modules.alias"));
    assert!(
        alias.contains("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"),
        "virtio_pci alias"
    );
    assert!(
        alias.contains("alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n"),
        "e1000 alias"
    );
    assert!(alias.contains(" sym53c8xx\n") && alias.contains(" virtio_blk\n"));
    assert!(text("etc/modprobe.d/hemiron.conf").contains("options sym53c8xx settle=0\n"));
    assert_eq!(initrd["www/cgi-bin/run"].0 & 0o777, 0o755);
    assert!(initrd.contains_key("etc/hemiron-test-hooks"));
    assert_eq!(initrd["etc/hostname"].1, b"hemiron-guest\n");
}

#[test]
fn shipped_url_decoder_decodes_with_shipped_busybox() {
    // The initramfs is byte-for-byte reproducible, so reading the shared test image is safe
    // even while another test rebuilds it.
    let image = common::image(true);
    let initrd = common::read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
    let work = tempfile::tempdir().unwrap();
    let busybox = work.path().join("busybox");
    std::fs::write(&busybox, &initrd["bin/busybox"].1).unwrap();
    std::fs::set_permissions(
        &busybox,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = work.path().join("run");
    std::fs::write(&script, &initrd["www/cgi-bin/run"].1).unwrap();

    let run = |query: &str| {
        let out = Command::new(&busybox)
            .arg("sh")
            .arg(&script)
            .env("QUERY_STRING", query)
            .current_dir(work.path())
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        out.strip_prefix("Content-Type: text/plain\r\n\r\n")
            .unwrap_or_else(|| panic!("no plain-text header in {out:?}"))
            .to_string()
    };
    for (query, expected) in [
        ("echo+hello%20world", "hello world\n"),
        ("echo%20%27a%2Fb%3Dc%26d%27", "a/b=c&d\n"),
        ("echo%20%22dq%22%20%27sq%27", "dq sq\n"),
        ("echo%20one%0Aecho%20two", "one\ntwo\n"),
        ("echo%20one%0aecho%20two", "one\ntwo\n"),
        ("echo+1%2B1=2", "1+1=2\n"),
        ("printf+%27%25s%27+%27%5C%5Cn%27", "\\\\n"),
        ("echo+%27a\\c%27", "a\\c\n"),
        ("echo+%C3%A9", "é\n"),
        ("echo+100%25", "100%\n"),
        ("echo+err+%3E%262", "err\n"),
    ] {
        assert_eq!(run(query), expected, "query {query}");
    }
    assert_eq!(
        run(&common::url_encode("printf '%s|' \"a b\" 'x+y'")),
        "a b|x+y|"
    );
}

#[test]
fn ssh_server_ships_with_its_libraries_and_no_host_keys() {
    let image = common::image(true);
    let m = &image.manifest;
    assert!(
        m.ssh_packages
            .first()
            .is_some_and(|p| *p == format!("dropbear-bin {}", m.dropbear_version)),
        "{:?}",
        m.ssh_packages
    );
    for package in [
        "libc6 ",
        "libtomcrypt1 ",
        "libtommath1 ",
        "zlib1g ",
        "libcrypt1 ",
    ] {
        assert!(
            m.ssh_packages.iter().any(|p| p.starts_with(package)),
            "{package}missing from {:?}",
            m.ssh_packages
        );
    }
    let initrd = common::read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
    // The server is not in the initramfs (it would slow every boot down) but in sshd.gz,
    // which the guest unpacks from its boot partition.
    assert!(!initrd.contains_key("usr/sbin/dropbear"));
    let sshd = common::read_initramfs(&image.dir.join(hemiron_guest::SSHD_FILE));
    assert_eq!(
        std::fs::metadata(image.dir.join(hemiron_guest::SSHD_FILE))
            .unwrap()
            .len(),
        m.sshd_bytes
    );
    let executable_elf = |path: &str| {
        let (mode, data) = sshd.get(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(mode & 0o170000, 0o100000, "{path} is a regular file");
        assert!(mode & 0o111 != 0, "{path} is executable");
        assert!(data.starts_with(b"\x7fELF"), "{path} is ELF");
    };
    executable_elf("usr/sbin/dropbear");
    executable_elf("usr/bin/dropbearkey");
    executable_elf("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    executable_elf("lib/x86_64-linux-gnu/libc.so.6");
    let (mode, target) = &sshd["lib64/ld-linux-x86-64.so.2"];
    assert_eq!(
        mode & 0o170000,
        0o120000,
        "the loader is linked from /lib64"
    );
    assert_eq!(target, b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    for soname in [
        "libtomcrypt.so.1",
        "libtommath.so.1",
        "libz.so.1",
        "libcrypt.so.1",
        "libgmp.so.10",
    ] {
        assert!(
            ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
                .iter()
                .any(|dir| sshd.contains_key(&format!("{dir}/{soname}"))),
            "{soname} missing"
        );
    }
    for (path, mode) in [
        ("etc/init.d/sshd", 0o755),
        ("etc/rc.d/25-cidata.sh", 0o644),
        ("etc/hemiron/cloudinit/parse", 0o755),
        ("etc/hemiron/cloudinit/yaml.awk", 0o644),
        ("etc/hemiron/cloudinit/network.awk", 0o644),
        ("etc/shells", 0o644),
        ("etc/nsswitch.conf", 0o644),
    ] {
        assert_eq!(initrd[path].0 & 0o7777, mode, "{path}");
    }
    let inittab = String::from_utf8(initrd["etc/inittab"].1.clone()).unwrap();
    assert!(
        inittab.contains("::respawn:/etc/init.d/sshd\n"),
        "{inittab}"
    );
    // Host keys are made per VM at its first boot, never shipped.
    let keys: Vec<&String> = initrd
        .keys()
        .chain(sshd.keys())
        .filter(|p| p.starts_with("etc/dropbear") || p.contains("host_key"))
        .collect();
    assert!(keys.is_empty(), "the image carries host keys: {keys:?}");

    // The closure is complete: through the shipped loader, told to look in the shipped
    // library directories first, every library resolves inside the image, and dropbearkey
    // runs and makes a key.
    let root = tempfile::tempdir().unwrap();
    common::unpack(&sshd, root.path(), |p| {
        p.starts_with("lib/x86_64-linux-gnu/")
            || p.starts_with("usr/lib/x86_64-linux-gnu/")
            || p.starts_with("usr/sbin/dropbear")
            || p.starts_with("usr/bin/dropbearkey")
    });
    let r = root.path();
    let loader = r.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    let library_path = format!(
        "{}:{}",
        r.join("lib/x86_64-linux-gnu").display(),
        r.join("usr/lib/x86_64-linux-gnu").display()
    );
    for program in ["usr/sbin/dropbear", "usr/bin/dropbearkey"] {
        let out = Command::new(&loader)
            .args(["--inhibit-cache", "--library-path", &library_path, "--list"])
            .arg(r.join(program))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{program}: {listing}");
        let resolved: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_once(" => ").map(|(_, p)| p))
            .collect();
        assert!(resolved.len() >= 4, "{program}: {listing}");
        for path in resolved {
            assert!(
                path.starts_with(&r.display().to_string()),
                "{program} resolves a library outside the image: {listing}"
            );
        }
    }
    let key = r.join("host_key");
    let out = Command::new(&loader)
        .args(["--inhibit-cache", "--library-path", &library_path])
        .arg(r.join("usr/bin/dropbearkey"))
        .args(["-t", "ed25519", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dropbearkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ssh-ed25519 "));
    assert!(std::fs::metadata(&key).unwrap().len() > 0);
}
