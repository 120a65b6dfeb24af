//! Builds the image without booting it and checks its parts: the manifest, the disk layout,
//! the initramfs contents, and the shipped URL decoder run by the shipped busybox.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hemiron_guest::{Manifest, BOOT_LABEL, MANIFEST_FILE};
use sha2::{Digest, Sha256};

/// Entries of a gzip-compressed newc cpio archive: path -> (mode, data).
fn read_initramfs(path: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut cpio)
        .unwrap();
    let mut entries = BTreeMap::new();
    let mut pos = 0;
    loop {
        let h = &cpio[pos..pos + 110];
        assert_eq!(&h[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
        let name = String::from_utf8(cpio[pos + 110..pos + 110 + name_size - 1].to_vec()).unwrap();
        let data_start = (pos + 110 + name_size + 3) & !3;
        pos = (data_start + size + 3) & !3;
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.insert(name, (mode, cpio[data_start..data_start + size].to_vec()));
    }
}

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
        "build: {:.2} s, rebuild: {:.2} s; qcow2 {} B, initrd {} B, vmlinuz {} B, {} modules",
        first.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        image.manifest.disk_bytes,
        image.manifest.initrd_bytes,
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
    let initrd = read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
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
    let initrd = read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
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
