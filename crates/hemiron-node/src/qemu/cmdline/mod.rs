//! From a VM config to a QEMU command line, as Proxmox's `config_to_command` does.
//!
//! The result is deterministic for a given config and node, so `hemiron node showcmd` prints
//! exactly what a start runs. Settings QEMU cannot take on its command line (NIC link state,
//! balloon target, CPU affinity, CPU limits) come back as [`PostStart`] actions.
//!
//! A [`Builder`] walks the config section by section (one file each: machine and firmware,
//! CPU and memory, display and channels, other devices, disks, NICs), collecting arguments and
//! every problem at once, so a bad config is reported property by property.

mod cpu;
mod disks;
mod machine;
mod network;
mod peripherals;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hemiron_pve::views::{DriveBus, DriveKey};

use super::accel::Accel;
use super::devices::Pci;
use super::support::check_property;
use crate::storage::Storage;
use crate::vm::forwards::VmForwards;

pub use cpu::cpu_model;

/// A config that cannot be turned into a command line: one message per property.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct CmdlineError(pub Vec<(String, String)>);

/// What the command line depends on besides the config.
#[derive(Debug)]
pub struct BuildContext<'a> {
    pub vmid: u32,
    pub run_dir: &'a Path,
    pub accel: Accel,
    pub storage: &'a Storage,
    pub forwards: Option<&'a VmForwards>,
    /// The versioned machine type `pc` resolves to on this QEMU (`pc-i440fx-7.2`).
    pub default_machine: &'a str,
    /// Same for `q35`.
    pub default_q35: &'a str,
    pub qemu_binary: &'a str,
}

/// Actions after QEMU started.
#[derive(Debug, Clone, Default)]
pub struct PostStart {
    /// NIC ids whose link starts down (`link_down=1`).
    pub links_down: Vec<String>,
    /// Tap devices QEMU opens, to plug into their Linux bridges: (tap, bridge).
    pub taps: Vec<(String, String)>,
    /// Balloon target in bytes when below the memory size.
    pub balloon_target: Option<u64>,
    /// CPU list for the QEMU process (`affinity`).
    pub affinity: Option<String>,
    /// CPU limit in CPUs (`cpulimit`), 0 = none.
    pub cpulimit: Option<f64>,
    /// CPU weight (`cpuunits`).
    pub cpuunits: Option<u64>,
}

/// A ready command line.
#[derive(Debug, Clone)]
pub struct QemuCommand {
    pub argv: Vec<String>,
    pub post: PostStart,
    /// Temporary overlays to create before the start: (overlay, backing file, format).
    pub overlays: Vec<(PathBuf, PathBuf, String)>,
    /// The machine type the VM runs with (reported as `running-machine`).
    pub machine: String,
}

/// Runtime files of a VM.
pub fn qmp_socket(run_dir: &Path, vmid: u32) -> PathBuf {
    run_dir.join(format!("{vmid}.qmp"))
}
pub fn pid_file(run_dir: &Path, vmid: u32) -> PathBuf {
    run_dir.join(format!("{vmid}.pid"))
}
pub fn vnc_socket(run_dir: &Path, vmid: u32) -> PathBuf {
    run_dir.join(format!("{vmid}.vnc"))
}
pub fn qga_socket(run_dir: &Path, vmid: u32) -> PathBuf {
    run_dir.join(format!("{vmid}.qga"))
}
pub fn serial_socket(run_dir: &Path, vmid: u32, n: u32) -> PathBuf {
    run_dir.join(format!("{vmid}.serial{n}"))
}

/// Property names of drives, in the order Proxmox scans them.
const DRIVE_BUSES: [DriveBus; 5] = [
    DriveBus::Ide,
    DriveBus::Sata,
    DriveBus::Scsi,
    DriveBus::Virtio,
    DriveBus::Efidisk,
];

/// The drives of a config, sorted by bus and index.
pub fn drives(conf: &BTreeMap<String, String>) -> Vec<(DriveKey, String)> {
    let mut out: Vec<(DriveKey, String)> = conf
        .iter()
        .filter_map(|(k, v)| {
            let key: DriveKey = k.parse().ok()?;
            DRIVE_BUSES.contains(&key.bus).then(|| (key, v.clone()))
        })
        .collect();
    out.sort_by_key(|(k, _)| (DRIVE_BUSES.iter().position(|b| *b == k.bus), k.index));
    out
}

/// The NICs of a config, by index.
pub fn nets(conf: &BTreeMap<String, String>) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = conf
        .iter()
        .filter_map(|(k, v)| {
            let i = k.strip_prefix("net")?.parse::<u32>().ok()?;
            Some((i, v.clone()))
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Collects arguments and problems while walking a config.
struct Builder<'a> {
    conf: &'a BTreeMap<String, String>,
    ctx: &'a BuildContext<'a>,
    argv: Vec<String>,
    errors: Vec<(String, String)>,
    pci: Pci,
    post: PostStart,
    overlays: Vec<(PathBuf, PathBuf, String)>,
    /// Whether this VM runs under KVM (the node's accelerator and the VM's `kvm` flag).
    kvm: bool,
    machine_type: String,
    q35: bool,
    /// Where PCI bridges go: they are only known once every device is placed, but must
    /// precede their users on the command line.
    bridges_at: usize,
    /// Devices to boot from, in order (for `bootindex`).
    order: Vec<String>,
}

impl<'a> Builder<'a> {
    fn push(&mut self, args: &[&str]) {
        self.argv.extend(args.iter().map(|s| s.to_string()));
    }

    fn error(&mut self, key: &str, msg: impl Into<String>) {
        self.errors.push((key.to_string(), msg.into()));
    }

    /// A boolean property with its schema default.
    fn flag(&self, key: &str, default: bool) -> bool {
        self.conf.get(key).map(|v| v == "1").unwrap_or(default)
    }

    fn get(&self, key: &str) -> Option<&'a String> {
        self.conf.get(key)
    }

    /// Parses a property into a typed view; a parse failure is recorded and gives `None`.
    fn view<T, E: std::fmt::Display>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let value = self.conf.get(key)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(key, e.to_string());
                None
            }
        }
    }

    fn vmid(&self) -> u32 {
        self.ctx.vmid
    }

    fn run_dir(&self) -> &'a Path {
        self.ctx.run_dir
    }

    /// Management channels: QMP socket, pid file, daemon mode.
    fn base(&mut self) {
        let vmid = self.vmid();
        let run = self.run_dir();
        let name = self
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM {vmid}"));
        let name = format!("{},debug-threads=on", super::devices::qemu_escape(&name));
        self.push(&["-name", &name, "-no-user-config", "-nodefaults"]);
        let qmp = format!(
            "socket,id=qmp,path={},server=on,wait=off",
            qmp_socket(run, vmid).display()
        );
        self.push(&["-chardev", &qmp, "-mon", "chardev=qmp,mode=control"]);
        let pid = pid_file(run, vmid).to_string_lossy().into_owned();
        self.push(&["-pidfile", &pid, "-daemonize"]);
    }

    /// Operator-supplied extra arguments (root only in Proxmox: an escape hatch).
    fn extra_args(&mut self) {
        if let Some(extra) = self.get("args") {
            match shell_words::split(extra) {
                Ok(words) => self.argv.extend(words),
                Err(e) => self.error("args", format!("unable to parse arguments: {e}")),
            }
        }
    }

    fn finish(mut self) -> Result<QemuCommand, CmdlineError> {
        let bridges: Vec<String> = self
            .pci
            .bridge_args()
            .into_iter()
            .flat_map(|b| ["-device".to_string(), b])
            .collect();
        let at = self.bridges_at;
        self.argv.splice(at..at, bridges);
        self.post.affinity = self.get("affinity").cloned();
        self.post.cpulimit = self
            .get("cpulimit")
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| *v > 0.0);
        self.post.cpuunits = self.get("cpuunits").and_then(|v| v.parse().ok());
        if !self.errors.is_empty() {
            self.errors.sort();
            self.errors.dedup();
            return Err(CmdlineError(self.errors));
        }
        Ok(QemuCommand {
            argv: self.argv,
            post: self.post,
            overlays: self.overlays,
            machine: self.machine_type,
        })
    }
}

/// Builds the command line for `conf` (the effective config: pending changes applied).
pub fn build(
    conf: &BTreeMap<String, String>,
    ctx: &BuildContext<'_>,
) -> Result<QemuCommand, CmdlineError> {
    let mut b = Builder {
        conf,
        ctx,
        argv: vec![ctx.qemu_binary.to_string()],
        errors: Vec::new(),
        pci: Pci::new("pci.0"),
        post: PostStart::default(),
        overlays: Vec::new(),
        kvm: ctx.accel == Accel::Kvm && conf.get("kvm").is_none_or(|v| v == "1"),
        machine_type: String::new(),
        q35: false,
        bridges_at: 0,
        order: Vec::new(),
    };
    for (k, v) in conf {
        if let Err(msg) = check_property(k, v) {
            b.error(k, msg);
        }
    }
    b.base();
    b.machine();
    b.identity();
    b.cpu_memory();
    b.firmware();
    b.clock();
    b.display();
    b.channels();
    b.devices();
    b.storage();
    b.network();
    b.extra_args();
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn build_with(pairs: &[(&str, &str)], accel: Accel) -> Result<QemuCommand, CmdlineError> {
        let storage = Storage::new(PathBuf::from("/pool"), None);
        let mut fwd = VmForwards::new();
        fwd.insert(80, 40080);
        fwd.insert(22, 40022);
        let ctx = BuildContext {
            vmid: 100,
            run_dir: Path::new("/run/h"),
            accel,
            storage: &storage,
            forwards: Some(&fwd),
            default_machine: "pc-i440fx-7.2",
            default_q35: "pc-q35-7.2",
            qemu_binary: "qemu-system-x86_64",
        };
        build(&conf(pairs), &ctx)
    }

    fn joined(cmd: &QemuCommand) -> String {
        cmd.argv.join(" ")
    }

    #[test]
    fn defaults_follow_proxmox() {
        let cmd = build_with(
            &[
                ("memory", "256"),
                ("scsi0", "local:100/vm-100-disk-0.qcow2,size=1G"),
                ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0"),
                ("boot", "order=scsi0;net0"),
            ],
            Accel::Tcg,
        )
        .unwrap();
        let s = joined(&cmd);
        for part in [
            "-machine type=pc-i440fx-7.2 -accel tcg",
            "-cpu qemu64",
            "-m 256",
            "-smp 1,sockets=1,cores=1,maxcpus=1",
            "-device lsi,id=scsihw0,bus=pci.0,addr=0x5",
            "/pool/images/100/vm-100-disk-0.qcow2",
            "scsi-hd,bus=scsihw0.0,scsi-id=0,drive=drive-scsi0,id=scsi0,write-cache=on,bootindex=100",
            "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80",
            "virtio-net-pci,netdev=net0,id=net0,mac=BC:24:11:00:00:01,bus=pci.0,addr=0x12,bootindex=200",
            "-vnc unix:/run/h/100.vnc,password=on",
            "-device virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3",
        ] {
            assert!(s.contains(part), "missing {part} in {s}");
        }
        assert!(!s.contains("enforce"), "no enforce under TCG");
        assert_eq!(cmd.machine, "pc-i440fx-7.2");
    }

    #[test]
    fn kvm_enforces_the_cpu_model() {
        let s = joined(&build_with(&[("cpu", "x86-64-v2-AES")], Accel::Kvm).unwrap());
        assert!(s.contains("-accel kvm"));
        assert!(s.contains("-cpu qemu64,+aes,+popcnt,+sse4.1,+sse4.2,+ssse3,enforce"));
        let s = joined(&build_with(&[("kvm", "0")], Accel::Kvm).unwrap());
        assert!(s.contains("-accel tcg") && s.contains("-cpu qemu64"));
    }

    #[test]
    fn every_problem_is_reported_by_property() {
        let err = build_with(
            &[
                ("hostpci0", "0000:01:00.0"),
                ("vga", "serial0"),
                ("scsi0", "local:../x.qcow2"),
            ],
            Accel::Tcg,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["hostpci0", "scsi0", "vga"]);
    }

    #[test]
    fn headless_and_q35_layouts() {
        let s =
            joined(&build_with(&[("vga", "serial0"), ("serial0", "socket")], Accel::Tcg).unwrap());
        assert!(s.contains("-vga none -display none"));
        assert!(!s.contains("-nographic") && !s.contains("-vnc") && !s.contains("usb-tablet"));
        assert!(s.contains("socket,id=serial0,path=/run/h/100.serial0,server=on,wait=off"));

        let cmd = build_with(
            &[
                ("machine", "q35"),
                ("virtio6", "local:100/vm-100-disk-6.raw"),
            ],
            Accel::Tcg,
        )
        .unwrap();
        let s = joined(&cmd);
        assert_eq!(cmd.machine, "pc-q35-7.2");
        assert!(s.contains("i82801b11-bridge,id=pcidmi,bus=pcie.0,addr=0x1e"));
        assert!(s.contains("VGA,id=vga,bus=pcie.0,addr=0x1"));
        // The bridge a device needs comes before the device.
        let bridge = s.find("pci-bridge,id=pci.1").unwrap();
        let disk = s.find("id=virtio6,bus=pci.1").unwrap();
        assert!(bridge < disk);
    }

    #[test]
    fn legacy_boot_order_and_post_start_actions() {
        let cmd = build_with(
            &[
                ("boot", "dc"),
                ("ide2", "none,media=cdrom"),
                ("virtio0", "local:100/vm-100-disk-0.qcow2"),
                ("net0", "e1000=BC:24:11:00:00:02,link_down=1"),
                ("balloon", "64"),
                ("memory", "128"),
                ("affinity", "0-1"),
                ("cpulimit", "0.5"),
            ],
            Accel::Tcg,
        )
        .unwrap();
        let s = joined(&cmd);
        assert!(
            s.contains("ide-cd,bus=ide.1,unit=0,id=ide2,bootindex=100"),
            "{s}"
        );
        assert!(s.contains("id=virtio0,bus=pci.0,addr=0xa,write-cache=on,bootindex=200"));
        assert_eq!(cmd.post.links_down, vec!["net0".to_string()]);
        assert_eq!(cmd.post.balloon_target, Some(64 << 20));
        assert_eq!(cmd.post.affinity.as_deref(), Some("0-1"));
        assert_eq!(cmd.post.cpulimit, Some(0.5));
    }
}
