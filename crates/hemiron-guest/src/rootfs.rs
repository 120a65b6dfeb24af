//! The guest's root file system (it lives entirely in the initramfs): busybox and a link for
//! each applet, the kernel modules with their `modules.dep`/`modules.alias`, and the boot
//! scripts.
//!
//! The scripts are real files under `guest/base/` in this crate, laid out as in the guest's
//! `/`, so they read (and lint) as shell; `guest/test-hooks/` is added only to test images.
//! How the guest boots: `/init` is busybox init; `/etc/inittab` runs `/etc/init.d/rcS`,
//! which sources `/etc/rc.d/*.sh` in name order (mounts, modules, cloud-init seed, hostname,
//! network, acpid); init then starts httpd, syslogd and the SSH server (`/etc/init.d/sshd`,
//! all respawned) and `/etc/init.d/ready`, which prints the `HEMIRON-GUEST-READY` line. The
//! SSH server itself is not in here: see the `sshd` module.

use std::path::Path;
use std::process::Command;

use crate::error::BuildError;
use crate::host;
use crate::initramfs::Tree;
use crate::modules;

/// The hostname the guest takes when no other source names one.
pub const DEFAULT_HOSTNAME: &str = "hemiron-guest";

/// The file whose presence marks an image built with test hooks.
pub const TEST_HOOKS_MARKER: &str = "etc/hemiron-test-hooks";

/// (path in the guest, mode, contents) of the boot scripts and configuration.
const BASE_FILES: &[(&str, u32, &str)] = &[
    (
        "etc/inittab",
        0o644,
        include_str!("../guest/base/etc/inittab"),
    ),
    (
        "etc/init.d/rcS",
        0o755,
        include_str!("../guest/base/etc/init.d/rcS"),
    ),
    (
        "etc/init.d/ready",
        0o755,
        include_str!("../guest/base/etc/init.d/ready"),
    ),
    (
        "etc/init.d/sshd",
        0o755,
        include_str!("../guest/base/etc/init.d/sshd"),
    ),
    (
        "etc/init.d/console-shell",
        0o755,
        include_str!("../guest/base/etc/init.d/console-shell"),
    ),
    (
        "etc/rc.d/10-mount.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/10-mount.sh"),
    ),
    (
        "etc/rc.d/20-modules.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/20-modules.sh"),
    ),
    (
        "etc/rc.d/25-cidata.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/25-cidata.sh"),
    ),
    (
        "etc/rc.d/30-hostname.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/30-hostname.sh"),
    ),
    (
        "etc/rc.d/40-network.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/40-network.sh"),
    ),
    (
        "etc/rc.d/50-acpid.sh",
        0o644,
        include_str!("../guest/base/etc/rc.d/50-acpid.sh"),
    ),
    (
        "etc/hemiron/lib.sh",
        0o644,
        include_str!("../guest/base/etc/hemiron/lib.sh"),
    ),
    (
        "etc/hemiron/hotplug",
        0o755,
        include_str!("../guest/base/etc/hemiron/hotplug"),
    ),
    (
        "etc/hemiron/cloudinit/parse",
        0o755,
        include_str!("../guest/base/etc/hemiron/cloudinit/parse"),
    ),
    (
        "etc/hemiron/cloudinit/yaml.awk",
        0o644,
        include_str!("../guest/base/etc/hemiron/cloudinit/yaml.awk"),
    ),
    (
        "etc/hemiron/cloudinit/network.awk",
        0o644,
        include_str!("../guest/base/etc/hemiron/cloudinit/network.awk"),
    ),
    (
        "etc/udhcpc/default.script",
        0o755,
        include_str!("../guest/base/etc/udhcpc/default.script"),
    ),
    (
        "etc/acpi/PWRF/00000080",
        0o755,
        include_str!("../guest/base/etc/acpi/PWRF/00000080"),
    ),
    (
        "etc/profile",
        0o644,
        include_str!("../guest/base/etc/profile"),
    ),
    (
        "etc/passwd",
        0o644,
        include_str!("../guest/base/etc/passwd"),
    ),
    ("etc/group", 0o644, include_str!("../guest/base/etc/group")),
    (
        "etc/shells",
        0o644,
        include_str!("../guest/base/etc/shells"),
    ),
    (
        "etc/nsswitch.conf",
        0o644,
        include_str!("../guest/base/etc/nsswitch.conf"),
    ),
    (
        "etc/shadow",
        0o600,
        include_str!("../guest/base/etc/shadow"),
    ),
];

/// Files only test images carry.
const TEST_HOOK_FILES: &[(&str, u32, &str)] = &[(
    "www/cgi-bin/run",
    0o755,
    include_str!("../guest/test-hooks/www/cgi-bin/run"),
)];

/// Applets the scripts call. Checked at build time, so a busybox without one fails the build
/// rather than the boot.
const REQUIRED_APPLETS: &[&str] = &[
    "init",
    "sh",
    "mount",
    "mkdir",
    "modprobe",
    "uevent",
    "hostname",
    "ip",
    "udhcpc",
    "httpd",
    "acpid",
    "wget",
    "timeout",
    "usleep",
    "poweroff",
    "sync",
    "cttyhack",
    "stty",
    "sleep",
    "sed",
    "printf",
    "cut",
    "head",
    "tr",
    "grep",
    "cat",
    "mv",
    "uname",
    "awk",
    "findfs",
    "umount",
    "rm",
    "cp",
    "chmod",
    "chown",
    "sha256sum",
    "cpio",
    "zcat",
    "mkpasswd",
    "renice",
    "syslogd",
];

/// What goes into the root file system besides the fixed scripts.
#[derive(Debug)]
pub(crate) struct RootfsInputs<'a> {
    /// The static busybox binary.
    pub busybox: &'a [u8],
    /// Install paths of busybox's applets (`busybox --list-full`), e.g. `usr/sbin/httpd`.
    pub applets: &'a [String],
    /// `uname -r` of the kernel, which names the module directory.
    pub kernel_release: &'a str,
    /// (module name, contents) of every module shipped, in dependency order.
    pub modules: Vec<(String, Vec<u8>)>,
    /// Modules loaded whatever the hardware; device drivers are loaded by alias.
    pub always_loaded: Vec<String>,
    /// Contents of `modules.dep` and `modules.alias` for the shipped modules.
    pub modules_dep: String,
    pub modules_alias: String,
    pub test_hooks: bool,
}

/// The install paths of every applet of `busybox`, as `busybox --list-full` prints them.
pub(crate) fn busybox_applets(busybox: &Path) -> Result<Vec<String>, BuildError> {
    let output = host::run(Command::new(busybox).arg("--list-full"))
        .map_err(|source| BuildError::ListBusyboxApplets { source })?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Assembles the guest's root file system.
pub(crate) fn build_tree(inputs: RootfsInputs<'_>) -> Result<Tree, BuildError> {
    let mut tree = Tree::default();
    for dir in [
        "dev", "proc", "sys", "run", "var/log", "www", "mnt", "home", "boot",
    ] {
        tree.dir(dir, 0o755);
    }
    tree.dir("root", 0o700);
    tree.dir("tmp", 0o1777);
    tree.symlink("var/run", "/run");
    // The kernel opens /dev/console for init before anything mounts devtmpfs over /dev.
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.char_device("dev/null", 0o666, 1, 3);

    tree.file("bin/busybox", 0o755, inputs.busybox.to_vec());
    for applet in inputs.applets {
        // `--list-full` names busybox itself; linking it would replace the binary.
        if applet == "bin/busybox" || applet.ends_with("/busybox") {
            continue;
        }
        tree.symlink(applet, "/bin/busybox");
    }
    let missing: Vec<&str> = REQUIRED_APPLETS
        .iter()
        .copied()
        .filter(|a| {
            !inputs
                .applets
                .iter()
                .any(|p| p.rsplit('/').next() == Some(*a))
        })
        .collect();
    if !missing.is_empty() {
        return Err(BuildError::MissingApplets {
            applets: missing.join(", "),
        });
    }
    // The kernel runs /init; as a link to busybox it is busybox's init applet.
    tree.symlink("init", "/bin/busybox");

    for (path, mode, contents) in BASE_FILES {
        tree.file(path, *mode, contents.as_bytes().to_vec());
    }
    tree.file("etc/hostname", 0o644, format!("{DEFAULT_HOSTNAME}\n"));

    let module_dir = format!("lib/modules/{}", inputs.kernel_release);
    tree.dir(&module_dir, 0o755);
    for (name, contents) in inputs.modules {
        tree.file(&format!("{module_dir}/{name}.ko"), 0o644, contents);
    }
    tree.file(
        &format!("{module_dir}/modules.dep"),
        0o644,
        inputs.modules_dep,
    );
    tree.file(
        &format!("{module_dir}/modules.alias"),
        0o644,
        inputs.modules_alias,
    );
    tree.file(
        "etc/modprobe.d/hemiron.conf",
        0o644,
        modules::modprobe_options(),
    );
    let always: String = inputs
        .always_loaded
        .iter()
        .map(|m| format!("{m}\n"))
        .collect();
    tree.file("etc/hemiron/modules", 0o644, always);

    if inputs.test_hooks {
        for (path, mode, contents) in TEST_HOOK_FILES {
            tree.file(path, *mode, contents.as_bytes().to_vec());
        }
        tree.file(
            TEST_HOOKS_MARKER,
            0o644,
            "This image answers /cgi-bin/run: it runs any shell command. For tests only.\n",
        );
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::Node;

    fn applets() -> Vec<String> {
        let mut a: Vec<String> = REQUIRED_APPLETS
            .iter()
            .map(|a| format!("bin/{a}"))
            .collect();
        a.push("bin/busybox".into());
        a
    }

    fn tree(test_hooks: bool) -> Tree {
        let applets = applets();
        build_tree(RootfsInputs {
            busybox: b"ELF",
            applets: &applets,
            kernel_release: "6.1.0-1-amd64",
            modules: vec![
                ("virtio_ring".into(), b"ko1".to_vec()),
                ("virtio".into(), b"ko2".to_vec()),
            ],
            always_loaded: vec!["virtio".into()],
            modules_dep: "virtio_ring.ko:\nvirtio.ko: virtio_ring.ko\n".into(),
            modules_alias: String::new(),
            test_hooks,
        })
        .unwrap()
    }

    #[test]
    fn busybox_is_not_replaced_by_its_own_applet_link() {
        let t = tree(false);
        assert!(matches!(t.get("bin/busybox"), Some(Node::File { .. })));
        assert!(
            matches!(t.get("init"), Some(Node::Symlink { target }) if target == "/bin/busybox")
        );
        assert!(matches!(t.get("bin/httpd"), Some(Node::Symlink { .. })));
    }

    #[test]
    fn modules_and_their_index() {
        let t = tree(false);
        assert!(t.contains("lib/modules/6.1.0-1-amd64/virtio_ring.ko"));
        assert!(t.contains("lib/modules/6.1.0-1-amd64/modules.dep"));
        assert!(t.contains("lib/modules/6.1.0-1-amd64/modules.alias"));
        assert!(t.contains("etc/modprobe.d/hemiron.conf"));
        assert!(
            matches!(t.get("etc/hemiron/modules"), Some(Node::File { data, .. }) if data == b"virtio\n")
        );
    }

    #[test]
    fn accounts_homes_and_no_host_keys() {
        let t = tree(false);
        assert!(matches!(t.get("home"), Some(Node::Dir { mode: 0o755 })));
        assert!(matches!(t.get("root"), Some(Node::Dir { mode: 0o700 })));
        assert!(
            !t.contains("etc/dropbear"),
            "host keys are made per VM at boot"
        );
        assert!(
            !t.contains("usr/sbin/dropbear"),
            "the SSH server comes from sshd.gz"
        );
    }

    #[test]
    fn test_hooks_only_when_asked() {
        let plain = tree(false);
        assert!(!plain.contains("www/cgi-bin"));
        assert!(!plain.contains("www/cgi-bin/run"));
        assert!(!plain.contains(TEST_HOOKS_MARKER));
        let hooked = tree(true);
        assert!(matches!(
            hooked.get("www/cgi-bin/run"),
            Some(Node::File { mode: 0o755, .. })
        ));
        assert!(hooked.contains(TEST_HOOKS_MARKER));
    }

    #[test]
    fn missing_applet_fails_the_build() {
        let applets = vec!["bin/sh".to_string()];
        let err = build_tree(RootfsInputs {
            busybox: b"",
            applets: &applets,
            kernel_release: "x",
            modules: Vec::new(),
            always_loaded: Vec::new(),
            modules_dep: String::new(),
            modules_alias: String::new(),
            test_hooks: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("httpd"), "{err}");
    }

    #[test]
    fn inittab_runs_only_shipped_scripts_and_checked_applets() {
        let t = tree(true);
        for line in include_str!("../guest/base/etc/inittab").lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            // id:runlevels:action:process
            let process = line.splitn(4, ':').nth(3).unwrap();
            let program = process.split_whitespace().next().unwrap();
            let is_script = matches!(t.get(program), Some(Node::File { mode: 0o755, .. }));
            let applet = program.rsplit('/').next().unwrap();
            assert!(
                is_script || REQUIRED_APPLETS.contains(&applet),
                "inittab runs {program}, which is neither a shipped script nor a checked applet"
            );
        }
    }

    /// Every file under `guest/` must be shipped: a script left out fails only at boot.
    #[test]
    fn every_guest_file_is_shipped() {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        for (kind, table) in [("base", BASE_FILES), ("test-hooks", TEST_HOOK_FILES)] {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("guest")
                .join(kind);
            let mut files = Vec::new();
            walk(&root, &mut files);
            for file in files {
                let rel = file
                    .strip_prefix(&root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                let shipped = table.iter().find(|(path, _, _)| *path == rel);
                let (_, mode, contents) =
                    shipped.unwrap_or_else(|| panic!("guest/{kind}/{rel} is not in the image"));
                assert_eq!(*contents, std::fs::read_to_string(&file).unwrap());
                let executable = contents.starts_with("#!");
                assert_eq!(mode & 0o111 != 0, executable, "{rel}: mode vs shebang");
            }
        }
    }
}
