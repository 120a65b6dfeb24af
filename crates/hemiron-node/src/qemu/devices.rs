//! PCI placement and the QEMU arguments of disks and NICs.
//!
//! Devices sit at the PCI addresses Proxmox gives them (VGA at 0x2, balloon 0x3, SCSI
//! controllers 0x5/0x6, AHCI 0x7, guest agent 0x8, virtio disks from 0xa, NICs from 0x12),
//! so a guest sees the same hardware layout as on Proxmox. Devices beyond those slots go on
//! PCI bridges `pci.1` and `pci.2`, added only when used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hemiron_pve::views::{
    Aio, CacheMode, Discard, Drive, DriveBus, DriveKey, Media, NetDevice, NicModel,
};
use serde_json::json;

/// Assigns PCI bus/address pairs.
#[derive(Debug)]
pub struct Pci {
    /// The bus Proxmox's fixed addresses live on (`pci.0`).
    main_bus: &'static str,
    /// q35 has no `pci.0` root bus: as in Proxmox, `pci.0` and the extra bridges sit behind
    /// a DMI-to-PCI bridge on `pcie.0`.
    q35: bool,
    used_fixed: Vec<u32>,
    /// Next free slot on each bridge; a bridge is created on first use.
    bridges: BTreeMap<u32, u32>,
}

/// Proxmox's fixed address for a device id, if it has one.
fn fixed_address(id: &str) -> Option<u32> {
    let n = |p: &str| id.strip_prefix(p).and_then(|s| s.parse::<u32>().ok());
    match id {
        "vga" => Some(0x2),
        "balloon0" => Some(0x3),
        "watchdog" => Some(0x4),
        "scsihw0" => Some(0x5),
        "scsihw1" => Some(0x6),
        "ahci0" => Some(0x7),
        "qga0" => Some(0x8),
        _ => {
            if let Some(i) = n("virtio").filter(|i| *i < 6) {
                Some(0xa + i)
            } else {
                n("net").filter(|i| *i < 6).map(|i| 0x12 + i)
            }
        }
    }
}

impl Pci {
    pub fn new(main_bus: &'static str) -> Self {
        Self {
            main_bus,
            q35: false,
            used_fixed: Vec::new(),
            bridges: BTreeMap::new(),
        }
    }

    /// `bus=…,addr=…` for a device.
    pub fn place(&mut self, id: &str) -> String {
        if let Some(addr) = fixed_address(id) {
            if !self.used_fixed.contains(&addr) {
                self.used_fixed.push(addr);
                return format!("bus={},addr={:#x}", self.main_bus, addr);
            }
        }
        for bridge in 1..=3u32 {
            let next = self.bridges.entry(bridge).or_insert(1);
            if *next < 32 {
                let addr = *next;
                *next += 1;
                return format!("bus=pci.{bridge},addr={addr:#x}");
            }
        }
        // Out of slots: let QEMU place it (it fails loudly if the bus is full).
        format!("bus={}", self.main_bus)
    }

    /// A layout for the q35 machine.
    pub fn new_q35() -> Self {
        Self {
            q35: true,
            ..Self::new("pci.0")
        }
    }

    /// Devices that must exist before anything is placed (q35's `pci.0`).
    pub fn base_args(&self) -> Vec<String> {
        if self.q35 {
            vec![
                "i82801b11-bridge,id=pcidmi,bus=pcie.0,addr=0x1e".into(),
                "pci-bridge,id=pci.0,chassis_nr=1,bus=pcidmi,addr=0x1".into(),
            ]
        } else {
            Vec::new()
        }
    }

    /// The bridges that devices were placed on, as `-device` arguments.
    pub fn bridge_args(&self) -> Vec<String> {
        self.bridges
            .keys()
            .map(|b| {
                if self.q35 {
                    format!(
                        "pci-bridge,id=pci.{b},chassis_nr={},bus=pcidmi,addr={:#x}",
                        b + 1,
                        b + 1
                    )
                } else {
                    format!(
                        "pci-bridge,id=pci.{b},chassis_nr={b},bus={},addr={:#x}",
                        self.main_bus,
                        0x1c + b
                    )
                }
            })
            .collect()
    }
}

/// Where a drive's data is.
#[derive(Debug, Clone)]
pub enum DriveSource {
    /// An image or device file, with its format (`qcow2`, `raw`).
    File { path: PathBuf, format: String },
    /// An empty CD-ROM drive.
    Empty,
}

/// QEMU's view of a cache mode: (O_DIRECT, ignore flushes, guest-visible write cache).
fn cache_flags(cache: Option<CacheMode>) -> (bool, bool, bool) {
    match cache.unwrap_or(CacheMode::None) {
        CacheMode::None => (true, false, true),
        CacheMode::Writethrough => (false, false, false),
        CacheMode::Writeback => (false, false, true),
        CacheMode::Directsync => (true, false, false),
        CacheMode::Unsafe => (false, true, true),
    }
}

/// Node name of the format layer of a drive, the one `block_resize` acts on.
pub fn format_node(key: &DriveKey, throttled: bool) -> String {
    if throttled {
        format!("fmt-drive-{key}")
    } else {
        format!("drive-{key}")
    }
}

fn has_throttle(d: &Drive) -> bool {
    let t = &d.throttle;
    [
        t.bps,
        t.bps_rd,
        t.bps_wr,
        t.iops,
        t.iops_rd,
        t.iops_wr,
        t.iops_max,
        t.iops_rd_max,
        t.iops_wr_max,
    ]
    .iter()
    .any(Option::is_some)
        || [
            t.mbps,
            t.mbps_rd,
            t.mbps_wr,
            t.mbps_max,
            t.mbps_rd_max,
            t.mbps_wr_max,
        ]
        .iter()
        .any(Option::is_some)
}

fn throttle_group(key: &DriveKey, d: &Drive) -> String {
    let t = &d.throttle;
    let mb = |v: f64| (v * 1024.0 * 1024.0) as u64;
    let mut props = vec![format!("throttle-group,id=throttle-drive-{key}")];
    let mut push = |name: &str, v: Option<u64>| {
        if let Some(v) = v.filter(|v| *v > 0) {
            props.push(format!("{name}={v}"));
        }
    };
    push("x-bps-total", t.bps.or(t.mbps.map(mb)));
    push("x-bps-read", t.bps_rd.or(t.mbps_rd.map(mb)));
    push("x-bps-write", t.bps_wr.or(t.mbps_wr.map(mb)));
    push("x-bps-total-max", t.mbps_max.map(mb));
    push("x-bps-read-max", t.mbps_rd_max.map(mb));
    push("x-bps-write-max", t.mbps_wr_max.map(mb));
    push("x-bps-total-max-length", t.bps_max_length);
    push("x-bps-read-max-length", t.bps_rd_max_length);
    push("x-bps-write-max-length", t.bps_wr_max_length);
    push("x-iops-total", t.iops);
    push("x-iops-read", t.iops_rd);
    push("x-iops-write", t.iops_wr);
    push("x-iops-total-max", t.iops_max);
    push("x-iops-read-max", t.iops_rd_max);
    push("x-iops-write-max", t.iops_wr_max);
    push("x-iops-total-max-length", t.iops_max_length);
    push("x-iops-read-max-length", t.iops_rd_max_length);
    push("x-iops-write-max-length", t.iops_wr_max_length);
    props.join(",")
}

/// The `-object`/`-blockdev` arguments for a drive's backend (none for an empty CD-ROM).
pub fn blockdev_args(key: &DriveKey, d: &Drive, source: &DriveSource) -> Vec<String> {
    let DriveSource::File { path, format } = source else {
        return Vec::new();
    };
    let (direct, no_flush, _) = cache_flags(d.cache);
    let read_only = d.ro == Some(true) || d.media == Some(Media::Cdrom);
    let aio = d
        .aio
        .unwrap_or(if direct { Aio::IoUring } else { Aio::Threads });
    let discard = match d.discard {
        Some(Discard::On) => "unmap",
        _ => "ignore",
    };
    let detect_zeroes = match (d.detect_zeroes, d.discard) {
        (Some(false), _) => "off",
        (_, Some(Discard::On)) => "unmap",
        _ => "on",
    };
    let is_device = path.starts_with("/dev/");
    let throttled = has_throttle(d);
    let file_node = format!("file-drive-{key}");
    let fmt_node = format_node(key, throttled);
    let cache = json!({ "direct": direct, "no-flush": no_flush });
    // The file layer always accepts discards: the guest's are filtered at the format layer
    // (per `discard=`), while qcow2's own (clusters freed by deleting a snapshot) must reach
    // the file so its space is given back.
    let file = json!({
        "driver": if is_device { "host_device" } else { "file" },
        "filename": path.to_string_lossy(),
        "node-name": file_node,
        "aio": aio.as_str(),
        "cache": cache,
        "discard": "unmap",
        "read-only": read_only,
    });
    let fmt = json!({
        "driver": format,
        "file": file_node,
        "node-name": fmt_node,
        "cache": cache,
        "discard": discard,
        "detect-zeroes": detect_zeroes,
        "read-only": read_only,
    });
    let mut args = Vec::new();
    if throttled {
        args.push("-object".into());
        args.push(throttle_group(key, d));
    }
    args.push("-blockdev".into());
    args.push(file.to_string());
    args.push("-blockdev".into());
    args.push(fmt.to_string());
    if throttled {
        args.push("-blockdev".into());
        args.push(
            json!({
                "driver": "throttle",
                "throttle-group": format!("throttle-drive-{key}"),
                "file": fmt_node,
                "node-name": format!("drive-{key}"),
            })
            .to_string(),
        );
    }
    args
}

/// SCSI controller type and how many devices one controller takes.
pub fn scsi_controller(scsihw: &str) -> (&'static str, u32) {
    match scsihw {
        "lsi53c810" => ("lsi53c810", 7),
        "megasas" => ("megasas", 256),
        "pvscsi" => ("pvscsi", 256),
        "virtio-scsi-pci" | "virtio-scsi-single" => ("virtio-scsi-pci", 256),
        _ => ("lsi", 7),
    }
}

/// The `-device` argument of a drive.
pub fn drive_device(
    key: &DriveKey,
    d: &Drive,
    source: &DriveSource,
    scsihw: &str,
    q35: bool,
    pci: &mut Pci,
    bootindex: Option<u32>,
) -> String {
    let cdrom = d.media == Some(Media::Cdrom);
    let (_, _, write_cache) = cache_flags(d.cache);
    let drive = match source {
        DriveSource::File { .. } => format!(",drive=drive-{key}"),
        DriveSource::Empty => String::new(),
    };
    let i = key.index;
    let mut dev = match key.bus {
        DriveBus::Virtio => {
            let mut s = format!(
                "virtio-blk-pci{drive},id={key},{}",
                pci.place(&key.to_string())
            );
            if d.iothread == Some(true) {
                s.push_str(&format!(",iothread=iothread-{key}"));
            }
            s
        }
        DriveBus::Scsi => {
            let kind = if cdrom { "scsi-cd" } else { "scsi-hd" };
            let (_, per) = scsi_controller(scsihw);
            if scsihw == "virtio-scsi-single" {
                format!("{kind},bus=virtioscsi{i}.0,channel=0,scsi-id=0,lun=0{drive},id={key}")
            } else if per == 7 {
                format!(
                    "{kind},bus=scsihw{}.0,scsi-id={}{drive},id={key}",
                    i / per,
                    i % per
                )
            } else {
                format!("{kind},bus=scsihw0.0,channel=0,scsi-id=0,lun={i}{drive},id={key}")
            }
        }
        DriveBus::Ide => {
            let kind = if cdrom { "ide-cd" } else { "ide-hd" };
            if q35 {
                format!("{kind},bus=ide.{i},unit=0{drive},id={key}")
            } else {
                format!("{kind},bus=ide.{},unit={}{drive},id={key}", i / 2, i % 2)
            }
        }
        DriveBus::Sata => {
            let kind = if cdrom { "ide-cd" } else { "ide-hd" };
            format!("{kind},bus=ahci0.{i}{drive},id={key}")
        }
        DriveBus::Efidisk | DriveBus::Tpmstate => String::new(),
    };
    if !cdrom && !matches!(key.bus, DriveBus::Efidisk | DriveBus::Tpmstate) {
        dev.push_str(if write_cache {
            ",write-cache=on"
        } else {
            ",write-cache=off"
        });
        if d.ssd == Some(true) && key.bus != DriveBus::Virtio {
            dev.push_str(",rotation_rate=1");
        }
        if let Some(w) = &d.werror {
            dev.push_str(&format!(",werror={w}"));
        }
        if let Some(r) = &d.rerror {
            dev.push_str(&format!(",rerror={r}"));
        }
    }
    if let Some(serial) = &d.serial {
        dev.push_str(&format!(
            ",serial={}",
            qemu_escape(&hemiron_pve::text::uri_unescape(serial))
        ));
    }
    if let Some(wwn) = &d.wwn {
        dev.push_str(&format!(",wwn={wwn}"));
    }
    if key.bus == DriveBus::Scsi {
        if let Some(p) = &d.product {
            dev.push_str(&format!(",product={}", qemu_escape(p)));
        }
        if let Some(v) = &d.vendor {
            dev.push_str(&format!(",vendor={}", qemu_escape(v)));
        }
    }
    if key.bus == DriveBus::Ide {
        if let Some(m) = &d.model {
            dev.push_str(&format!(
                ",model={}",
                qemu_escape(&hemiron_pve::text::uri_unescape(m))
            ));
        }
    }
    if let Some(b) = bootindex {
        dev.push_str(&format!(",bootindex={b}"));
    }
    dev
}

/// Escapes commas for QEMU's key=value option syntax.
pub fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// QEMU device model of a NIC model.
pub fn nic_device(model: NicModel) -> &'static str {
    match model {
        NicModel::Virtio => "virtio-net-pci",
        NicModel::Ne2kIsa => "ne2k_isa",
        other => other.as_str(),
    }
}

/// Whether `name` is a Linux bridge of this host (of the agent's network namespace).
pub fn host_bridge(name: &str) -> bool {
    let plain = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain
        && Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
}

/// The tap device of NIC `index` of VM `vmid`: Proxmox's `tap<vmid>i<index>`, or, while
/// another QEMU of the VM holds that one on this host (the source of a migration between two
/// nodes of one machine), the same name with a `b`.
pub fn tap_name(vmid: u32, index: u32) -> String {
    let name = format!("tap{vmid}i{index}");
    if Path::new("/sys/class/net").join(&name).exists() {
        let other = format!("{name}b");
        if !Path::new("/sys/class/net").join(&other).exists() {
            return other;
        }
    }
    name
}

/// The `-netdev` and `-device` arguments of a NIC: on tap device `tap` if given, else on the
/// user-mode network. Only `net0` gets the loopback forwards.
pub fn net_args(
    index: u32,
    net: &NetDevice,
    forwards: Option<&crate::vm::forwards::VmForwards>,
    tap: Option<&str>,
    pci: &mut Pci,
    bootindex: Option<u32>,
) -> (String, String) {
    let id = format!("net{index}");
    // vhost stays off: without /dev/vhost-net, asking for it makes QEMU abort.
    let mut netdev = match tap {
        Some(t) => format!("tap,id={id},ifname={t},script=no,downscript=no,vhost=off"),
        None => format!("user,id={id}"),
    };
    if let (None, Some(f)) = (tap, forwards) {
        for (guest, host) in f {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
    }
    let mut dev = format!("{},netdev={id},id={id}", nic_device(net.model));
    if let Some(mac) = &net.macaddr {
        dev.push_str(&format!(",mac={mac}"));
    }
    if net.model != NicModel::Ne2kIsa {
        dev.push(',');
        dev.push_str(&pci.place(&id));
    }
    if net.model == NicModel::Virtio {
        if let Some(mtu) = net.mtu.filter(|m| *m > 1) {
            dev.push_str(&format!(",host_mtu={mtu}"));
        }
    }
    if let Some(b) = bootindex {
        dev.push_str(&format!(",bootindex={b}"));
    }
    (netdev, dev)
}

/// Path of the temporary overlay a `snapshot=1` drive writes to while the VM runs.
pub fn snapshot_overlay(run_dir: &Path, vmid: u32, key: &DriveKey) -> PathBuf {
    run_dir.join(format!("{vmid}-{key}.snapshot.qcow2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_on_a_bridge_is_a_tap_without_forwards() {
        let net = NetDevice::parse("virtio=BC:24:11:00:00:01,bridge=vmbr0").unwrap();
        let forwards: crate::vm::forwards::VmForwards = [(80u16, 40080u16)].into();
        let (netdev, dev) = net_args(
            0,
            &net,
            Some(&forwards),
            Some("tap100i0"),
            &mut Pci::new("pci.0"),
            None,
        );
        assert_eq!(
            netdev,
            "tap,id=net0,ifname=tap100i0,script=no,downscript=no,vhost=off"
        );
        assert!(dev.starts_with("virtio-net-pci,netdev=net0,id=net0,mac=BC:24:11:00:00:01"));
        let (user, _) = net_args(0, &net, Some(&forwards), None, &mut Pci::new("pci.0"), None);
        assert_eq!(user, "user,id=net0,hostfwd=tcp:127.0.0.1:40080-:80");
        // Names that cannot be a host's bridge are not looked up.
        assert!(!host_bridge("../lo"));
        assert!(!host_bridge(""));
        assert!(!host_bridge("vmbr-that-is-too-long"));
    }

    #[test]
    fn pci_fixed_then_bridges() {
        let mut p = Pci::new("pci.0");
        assert_eq!(p.place("vga"), "bus=pci.0,addr=0x2");
        assert_eq!(p.place("net0"), "bus=pci.0,addr=0x12");
        assert_eq!(p.place("virtio7"), "bus=pci.1,addr=0x1");
        assert_eq!(p.place("net9"), "bus=pci.1,addr=0x2");
        assert_eq!(
            p.bridge_args(),
            vec!["pci-bridge,id=pci.1,chassis_nr=1,bus=pci.0,addr=0x1d"]
        );
    }

    #[test]
    fn drive_device_per_bus() {
        let src = DriveSource::File {
            path: "/x.qcow2".into(),
            format: "qcow2".into(),
        };
        let d = Drive::new("local:100/vm-100-disk-0.qcow2");
        let mut pci = Pci::new("pci.0");
        let k: DriveKey = "scsi0".parse().unwrap();
        let s = drive_device(&k, &d, &src, "lsi", false, &mut pci, Some(100));
        assert_eq!(
            s,
            "scsi-hd,bus=scsihw0.0,scsi-id=0,drive=drive-scsi0,id=scsi0,write-cache=on,bootindex=100"
        );
        let k: DriveKey = "scsi8".parse().unwrap();
        let s = drive_device(&k, &d, &src, "lsi", false, &mut pci, None);
        assert!(s.starts_with("scsi-hd,bus=scsihw1.0,scsi-id=1,"), "{s}");
        let k: DriveKey = "virtio0".parse().unwrap();
        let s = drive_device(&k, &d, &src, "lsi", false, &mut pci, None);
        assert!(s.starts_with("virtio-blk-pci,drive=drive-virtio0,id=virtio0,bus=pci.0,addr=0xa"));
        let args = blockdev_args(&k, &d, &src);
        assert_eq!(args.len(), 4);
        assert!(args[1].contains("\"aio\":\"io_uring\""));
    }
}
