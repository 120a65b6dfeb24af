//! From a VM config to a QEMU command line, as Proxmox's `config_to_command` does.
//!
//! The result is deterministic for a given config and node, so `hemiron node showcmd` prints
//! exactly what a start runs. Settings QEMU cannot take on its command line (NIC link state,
//! balloon target, CPU affinity, CPU limits) come back as [`PostStart`] actions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hemiron_pve::views::{
    Agent, AgentType, Boot, Cpu, Drive, DriveBus, DriveKey, Machine, Media, Memory, NetDevice, Rng,
    Smbios1, Vga, Watchdog,
};

use super::accel::Accel;
use super::devices::{self, DriveSource, Pci};
use super::support::check_property;
use crate::storage::{parse_volid, Storage};
use crate::vm::forwards::VmForwards;

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

fn flag(conf: &BTreeMap<String, String>, key: &str, default: bool) -> bool {
    conf.get(key).map(|v| v == "1").unwrap_or(default)
}

/// PVE's `x86-64-vN` models are qemu64 plus feature flags (qemu64 already has cx16,
/// lahf_lm and pni).
fn cpu_model(cputype: &str) -> (String, &'static str) {
    const V2: &str = "+popcnt,+sse4.1,+sse4.2,+ssse3";
    const V2_AES: &str = "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3";
    const V3: &str =
        "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,+movbe,+xsave";
    const V4: &str = "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,+movbe,+xsave,+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl";
    match cputype {
        "x86-64-v2" => ("qemu64".into(), V2),
        "x86-64-v2-AES" => ("qemu64".into(), V2_AES),
        "x86-64-v3" => ("qemu64".into(), V3),
        "x86-64-v4" => ("qemu64".into(), V4),
        other => (other.to_string(), ""),
    }
}

fn cpu_arg(
    conf: &BTreeMap<String, String>,
    kvm: bool,
    errors: &mut Vec<(String, String)>,
) -> String {
    let cpu = match conf.get("cpu").map(|v| Cpu::parse(v)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            errors.push(("cpu".into(), e.to_string()));
            Cpu::default()
        }
        None => Cpu::default(),
    };
    let default = if kvm { "kvm64" } else { "qemu64" };
    let cputype = cpu.cputype.clone().unwrap_or_else(|| default.to_string());
    let (model, model_flags) = cpu_model(&cputype);
    let mut arg = model.clone();
    if !model_flags.is_empty() {
        arg.push(',');
        arg.push_str(model_flags);
    }
    for f in &cpu.flags {
        arg.push_str(&format!(",{}{}", if f.enable { '+' } else { '-' }, f.name));
    }
    if cpu.hidden == Some(true) {
        arg.push_str(",kvm=off");
    }
    if let Some(v) = &cpu.hv_vendor_id {
        arg.push_str(&format!(",hv_vendor_id={v}"));
    }
    match cpu.phys_bits.as_deref() {
        Some("host") => arg.push_str(",host-phys-bits=true"),
        Some(n) => arg.push_str(&format!(",phys-bits={n}")),
        None => {}
    }
    if let Some(n) = cpu.guest_phys_bits {
        arg.push_str(&format!(",guest-phys-bits={n}"));
    }
    // Under KVM a model the host cannot provide must fail the start, not run a guest that
    // then dies on a missing instruction (Proxmox passes `enforce` too).
    if kvm && model != "host" && model != "max" {
        arg.push_str(",enforce");
    }
    arg
}

fn push(argv: &mut Vec<String>, args: &[&str]) {
    argv.extend(args.iter().map(|s| s.to_string()));
}

/// Builds the command line for `conf` (the effective config: pending changes applied).
pub fn build(
    conf: &BTreeMap<String, String>,
    ctx: &BuildContext<'_>,
) -> Result<QemuCommand, CmdlineError> {
    let mut errors: Vec<(String, String)> = Vec::new();
    for (k, v) in conf {
        if let Err(msg) = check_property(k, v) {
            errors.push((k.clone(), msg));
        }
    }
    let vmid = ctx.vmid;
    let run = ctx.run_dir;
    let kvm = ctx.accel == Accel::Kvm && flag(conf, "kvm", true);
    let mut argv: Vec<String> = vec![ctx.qemu_binary.to_string()];

    let name = conf
        .get("name")
        .cloned()
        .unwrap_or_else(|| format!("VM {vmid}"));
    push(
        &mut argv,
        &[
            "-name",
            &format!("{},debug-threads=on", devices::qemu_escape(&name)),
        ],
    );
    push(&mut argv, &["-no-user-config", "-nodefaults"]);
    push(
        &mut argv,
        &[
            "-chardev",
            &format!(
                "socket,id=qmp,path={},server=on,wait=off",
                qmp_socket(run, vmid).display()
            ),
        ],
    );
    push(&mut argv, &["-mon", "chardev=qmp,mode=control"]);
    push(
        &mut argv,
        &["-pidfile", &pid_file(run, vmid).to_string_lossy()],
    );
    push(&mut argv, &["-daemonize"]);

    // Machine and accelerator.
    let machine = match conf.get("machine").map(|v| Machine::parse(v)) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            errors.push(("machine".into(), e.to_string()));
            Machine::default()
        }
        None => Machine::default(),
    };
    let mtype = match machine.machine_type.as_deref() {
        None | Some("pc") => ctx.default_machine.to_string(),
        Some("q35") => ctx.default_q35.to_string(),
        // Proxmox's own machine revisions (`+pve1`) map to the upstream version.
        Some(t) => t.split('+').next().unwrap_or(t).to_string(),
    };
    let q35 = mtype.contains("q35");
    let mut machine_arg = format!("type={mtype}");
    if !flag(conf, "allow-ksm", true) {
        machine_arg.push_str(",mem-merge=off");
    }
    if machine.viommu.as_deref() == Some("intel") && !q35 {
        errors.push((
            "machine".into(),
            "viommu=intel needs machine type q35".into(),
        ));
    }
    push(&mut argv, &["-machine", &machine_arg]);
    if kvm {
        push(&mut argv, &["-accel", "kvm"]);
    } else {
        push(&mut argv, &["-accel", "tcg"]);
    }
    if let Some(s3) = machine.enable_s3 {
        let dev = if q35 { "ICH9-LPC" } else { "PIIX4_PM" };
        push(
            &mut argv,
            &["-global", &format!("{dev}.disable_s3={}", u8::from(!s3))],
        );
    }
    if let Some(s4) = machine.enable_s4 {
        let dev = if q35 { "ICH9-LPC" } else { "PIIX4_PM" };
        push(
            &mut argv,
            &["-global", &format!("{dev}.disable_s4={}", u8::from(!s4))],
        );
    }

    // Identity.
    let smbios = match conf.get("smbios1").map(|v| Smbios1::parse(v)) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            errors.push(("smbios1".into(), e.to_string()));
            Smbios1::default()
        }
        None => Smbios1::default(),
    };
    let mut smb = String::from("type=1");
    let decode = |v: &str| -> String {
        if smbios.base64 == Some(true) {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| v.to_string())
        } else {
            v.to_string()
        }
    };
    for (k, v) in [
        ("uuid", smbios.uuid.clone()),
        ("manufacturer", smbios.manufacturer.as_deref().map(decode)),
        ("product", smbios.product.as_deref().map(decode)),
        ("version", smbios.version.as_deref().map(decode)),
        ("serial", smbios.serial.as_deref().map(decode)),
        ("sku", smbios.sku.as_deref().map(decode)),
        ("family", smbios.family.as_deref().map(decode)),
    ] {
        if let Some(v) = v {
            smb.push_str(&format!(",{k}={}", devices::qemu_escape(&v)));
        }
    }
    if smb != "type=1" {
        push(&mut argv, &["-smbios", &smb]);
    }

    // CPUs and memory.
    let sockets: u64 = conf
        .get("sockets")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cores: u64 = conf.get("cores").and_then(|v| v.parse().ok()).unwrap_or(1);
    let maxcpus = sockets * cores;
    let vcpus: u64 = conf
        .get("vcpus")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(maxcpus);
    if vcpus > maxcpus {
        errors.push((
            "vcpus".into(),
            format!("maximum allowed vcpus is {maxcpus}"),
        ));
    }
    push(
        &mut argv,
        &[
            "-smp",
            &format!("{vcpus},sockets={sockets},cores={cores},maxcpus={maxcpus}"),
        ],
    );
    let cpu = cpu_arg(conf, kvm, &mut errors);
    push(&mut argv, &["-cpu", &cpu]);
    let memory_mib = match conf.get("memory").map(|v| Memory::parse(v)) {
        Some(Ok(m)) => m.current,
        Some(Err(e)) => {
            errors.push(("memory".into(), e.to_string()));
            512
        }
        None => 512,
    };
    push(&mut argv, &["-m", &memory_mib.to_string()]);
    // NUMA nodes.
    let mut numa_nodes: Vec<(u32, String)> = conf
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("numa")?.parse::<u32>().ok()?, v.clone())))
        .collect();
    numa_nodes.sort_by_key(|(i, _)| *i);
    if flag(conf, "numa", false) || !numa_nodes.is_empty() {
        if numa_nodes.is_empty() {
            // One node per socket with an equal share of memory, as Proxmox does.
            let per = memory_mib / sockets.max(1);
            for s in 0..sockets {
                let first = s * cores;
                let last = first + cores - 1;
                push(
                    &mut argv,
                    &[
                        "-object",
                        &format!("memory-backend-ram,id=ram-node{s},size={per}M"),
                    ],
                );
                push(
                    &mut argv,
                    &[
                        "-numa",
                        &format!("node,nodeid={s},cpus={first}-{last},memdev=ram-node{s}"),
                    ],
                );
            }
        } else {
            for (i, v) in &numa_nodes {
                let map: BTreeMap<&str, &str> =
                    v.split(',').filter_map(|kv| kv.split_once('=')).collect();
                let size = map.get("memory").copied().unwrap_or("0");
                let mut backend = format!("memory-backend-ram,id=ram-node{i},size={size}M");
                if let Some(h) = map.get("hostnodes") {
                    backend.push_str(&format!(",host-nodes={}", h.replace(';', ",host-nodes=")));
                    backend.push_str(&format!(
                        ",policy={}",
                        map.get("policy").copied().unwrap_or("bind")
                    ));
                }
                push(&mut argv, &["-object", &backend]);
                let mut node = format!("node,nodeid={i},memdev=ram-node{i}");
                if let Some(c) = map.get("cpus") {
                    for range in c.split(';') {
                        node.push_str(&format!(",cpus={range}"));
                    }
                }
                push(&mut argv, &["-numa", &node]);
            }
        }
    }

    // Firmware.
    let bios = conf.get("bios").map(String::as_str).unwrap_or("seabios");
    if bios == "ovmf" {
        let code = PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd");
        if !code.exists() {
            errors.push((
                "bios".into(),
                "OVMF firmware is not installed on this node (Debian package ovmf)".into(),
            ));
        }
        push(
            &mut argv,
            &[
                "-drive",
                &format!(
                    "if=pflash,unit=0,format=raw,readonly=on,file={}",
                    code.display()
                ),
            ],
        );
        match conf.get("efidisk0") {
            Some(v) => match Drive::parse(
                DriveKey {
                    bus: DriveBus::Efidisk,
                    index: 0,
                },
                v,
                false,
            ) {
                Ok(d) => match parse_volid(&d.file).and_then(|vol| ctx.storage.path(&vol)) {
                    Ok(path) => {
                        let fmt = d.format.clone().unwrap_or_else(|| "raw".into());
                        push(
                            &mut argv,
                            &[
                                "-drive",
                                &format!(
                                    "if=pflash,unit=1,format={fmt},id=drive-efidisk0,file={}",
                                    devices::qemu_escape(&path.to_string_lossy())
                                ),
                            ],
                        );
                    }
                    Err(e) => errors.push(("efidisk0".into(), e.to_string())),
                },
                Err(e) => errors.push(("efidisk0".into(), e.to_string())),
            },
            None => errors.push((
                "efidisk0".into(),
                "bios=ovmf needs an efidisk0 to keep EFI variables".into(),
            )),
        }
    }

    // Boot behaviour and clock.
    push(&mut argv, &["-boot", "strict=on,reboot-timeout=1000"]);
    if !flag(conf, "acpi", true) {
        push(&mut argv, &["-no-acpi"]);
    }
    if !flag(conf, "reboot", true) {
        push(&mut argv, &["-no-reboot"]);
    }
    if flag(conf, "freeze", false) {
        push(&mut argv, &["-S"]);
    }
    let ostype = conf.get("ostype").map(String::as_str).unwrap_or("other");
    let windows = ostype.starts_with('w');
    let mut rtc = String::from("driftfix=slew");
    if let Some(date) = conf.get("startdate").filter(|d| d.as_str() != "now") {
        rtc.push_str(&format!(",base={}", date.replace(' ', "T")));
    } else if flag(conf, "localtime", windows) {
        rtc.push_str(",base=localtime");
    }
    push(&mut argv, &["-rtc", &rtc]);
    if kvm && flag(conf, "tdf", false) {
        push(&mut argv, &["-global", "kvm-pit.lost_tick_policy=discard"]);
    }
    if let Some(k) = conf.get("keyboard") {
        push(&mut argv, &["-k", k]);
    }

    // Display: VNC on a unix socket only (never a TCP port).
    let vga = match conf.get("vga").map(|v| Vga::parse(v)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            errors.push(("vga".into(), e.to_string()));
            Vga::default()
        }
        None => Vga::default(),
    };
    let vga_type = vga.vga_type.clone().unwrap_or_else(|| "std".into());
    let serial_display = vga_type.starts_with("serial");
    let mut pci = if q35 {
        Pci::new_q35()
    } else {
        Pci::new("pci.0")
    };
    for dev in pci.base_args() {
        push(&mut argv, &["-device", &dev]);
    }
    // Bridges are only known once every device is placed, but must precede their users.
    let bridges_at = argv.len();
    let vga_pci = if q35 {
        "bus=pcie.0,addr=0x1".to_string()
    } else {
        pci.place("vga")
    };
    let vgamem = match (vga.memory, vga_type.as_str()) {
        (None, _) => String::new(),
        // virtio-gpu has no VGA memory bar: its host memory limit is what the size means.
        (Some(m), "virtio") => format!(",max_hostmem={}", u64::from(m) * 1024 * 1024),
        (Some(m), _) => format!(",vgamem_mb={m}"),
    };
    match vga_type.as_str() {
        "none" => push(&mut argv, &["-vga", "none"]),
        t if t.starts_with("serial") => {
            let n = t.trim_start_matches("serial");
            if !conf.contains_key(&format!("serial{n}")) {
                errors.push((
                    "vga".into(),
                    format!("vga={t} needs serial{n} to be configured"),
                ));
            }
            push(&mut argv, &["-vga", "none", "-nographic"]);
        }
        t => {
            let dev = match t {
                "cirrus" => "cirrus-vga",
                "vmware" => "vmware-svga",
                "qxl" => "qxl-vga",
                "virtio" => "virtio-vga",
                _ => "VGA",
            };
            push(
                &mut argv,
                &["-device", &format!("{dev},id=vga,{vga_pci}{vgamem}")],
            );
        }
    }
    if !serial_display && vga_type != "none" {
        push(
            &mut argv,
            &[
                "-vnc",
                &format!("unix:{},password=on", vnc_socket(run, vmid).display()),
            ],
        );
    } else if vga_type == "none" {
        push(&mut argv, &["-display", "none"]);
    }

    // USB tablet for absolute pointing in the console.
    if flag(conf, "tablet", true) && !serial_display && vga_type != "none" {
        if q35 {
            push(
                &mut argv,
                &["-device", "qemu-xhci,id=xhci,bus=pcie.0,addr=0x1d"],
            );
            push(
                &mut argv,
                &["-device", "usb-tablet,id=tablet,bus=xhci.0,port=1"],
            );
        } else {
            push(
                &mut argv,
                &["-device", "piix3-usb-uhci,id=uhci,bus=pci.0,addr=0x1.0x2"],
            );
            push(
                &mut argv,
                &["-device", "usb-tablet,id=tablet,bus=uhci.0,port=1"],
            );
        }
    }

    // Guest agent channel.
    if let Some(v) = conf.get("agent") {
        match Agent::parse(v) {
            Ok(agent) if agent.enabled => {
                push(
                    &mut argv,
                    &[
                        "-chardev",
                        &format!(
                            "socket,path={},server=on,wait=off,id=qga0",
                            qga_socket(run, vmid).display()
                        ),
                    ],
                );
                if agent.agent_type == Some(AgentType::Isa) {
                    push(&mut argv, &["-device", "isa-serial,chardev=qga0"]);
                } else {
                    push(
                        &mut argv,
                        &[
                            "-device",
                            &format!("virtio-serial,id=qga0,{}", pci.place("qga0")),
                        ],
                    );
                    push(
                        &mut argv,
                        &[
                            "-device",
                            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                        ],
                    );
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(("agent".into(), e.to_string())),
        }
    }

    // Serial ports.
    for n in 0..4u32 {
        let Some(v) = conf.get(&format!("serial{n}")) else {
            continue;
        };
        if v == "socket" {
            push(
                &mut argv,
                &[
                    "-chardev",
                    &format!(
                        "socket,id=serial{n},path={},server=on,wait=off",
                        serial_socket(run, vmid, n).display()
                    ),
                ],
            );
        } else {
            push(
                &mut argv,
                &["-chardev", &format!("serial,id=serial{n},path={v}")],
            );
        }
        push(
            &mut argv,
            &["-device", &format!("isa-serial,chardev=serial{n}")],
        );
    }

    // Memory balloon.
    let balloon: Option<u64> = conf.get("balloon").and_then(|v| v.parse().ok());
    if balloon != Some(0) {
        push(
            &mut argv,
            &[
                "-device",
                &format!("virtio-balloon-pci,id=balloon0,{}", pci.place("balloon0")),
            ],
        );
    }

    // Random number generator.
    if let Some(v) = conf.get("rng0") {
        match Rng::parse(v) {
            Ok(rng) => {
                push(
                    &mut argv,
                    &[
                        "-object",
                        &format!("rng-random,filename={},id=rng0", rng.source),
                    ],
                );
                let mut dev = format!("virtio-rng-pci,rng=rng0,{}", pci.place("rng0"));
                if let Some(b) = rng.max_bytes {
                    dev.push_str(&format!(",max-bytes={b}"));
                }
                if let Some(p) = rng.period {
                    dev.push_str(&format!(",period={p}"));
                }
                push(&mut argv, &["-device", &dev]);
            }
            Err(e) => errors.push(("rng0".into(), e.to_string())),
        }
    }

    // Watchdog.
    if let Some(v) = conf.get("watchdog") {
        match Watchdog::parse(v) {
            Ok(w) => {
                let model = w.model.clone().unwrap_or_else(|| "i6300esb".into());
                if model == "ib700" {
                    push(&mut argv, &["-device", "ib700"]);
                } else {
                    push(
                        &mut argv,
                        &["-device", &format!("i6300esb,{}", pci.place("watchdog"))],
                    );
                }
                if let Some(action) = &w.action {
                    push(&mut argv, &["-watchdog-action", action]);
                }
            }
            Err(e) => errors.push(("watchdog".into(), e.to_string())),
        }
    }

    // VM generation ID.
    if let Some(id) = conf.get("vmgenid").filter(|v| v.as_str() != "0") {
        push(&mut argv, &["-device", &format!("vmgenid,guid={id}")]);
    }

    // Shared memory.
    if let Some(v) = conf.get("ivshmem") {
        let map: BTreeMap<&str, &str> = v.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let size = map.get("size").copied().unwrap_or("1");
        let name = map
            .get("name")
            .map(|n| n.to_string())
            .unwrap_or_else(|| vmid.to_string());
        push(&mut argv, &["-object", &format!("memory-backend-file,id=ivshmem,share=on,mem-path=/dev/shm/pve-shm-{name},size={size}M")]);
        push(
            &mut argv,
            &[
                "-device",
                &format!("ivshmem-plain,memdev=ivshmem,{}", pci.place("ivshmem")),
            ],
        );
    }

    // Audio.
    if let Some(v) = conf.get("audio0") {
        let map: BTreeMap<&str, &str> = v.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let device = map
            .get("device")
            .copied()
            .unwrap_or_else(|| v.split(',').next().unwrap_or("ich9-intel-hda"));
        push(&mut argv, &["-audiodev", "none,id=audiodev0"]);
        match device {
            "AC97" => push(
                &mut argv,
                &[
                    "-device",
                    &format!("AC97,id=sound0,audiodev=audiodev0,{}", pci.place("audio0")),
                ],
            ),
            hda => {
                push(
                    &mut argv,
                    &[
                        "-device",
                        &format!("{hda},id=sound0,{}", pci.place("audio0")),
                    ],
                );
                push(
                    &mut argv,
                    &[
                        "-device",
                        "hda-duplex,id=sound0-codec0,bus=sound0.0,cad=0,audiodev=audiodev0",
                    ],
                );
            }
        }
    }

    // Boot order.
    let boot = match conf.get("boot").map(|v| Boot::parse(v)) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            errors.push(("boot".into(), e.to_string()));
            Boot::default()
        }
        None => Boot::default(),
    };
    let all_drives = drives(conf);
    let all_nets = nets(conf);
    let order: Vec<String> = match (&boot.order, &boot.legacy) {
        (Some(order), _) => order.clone(),
        (None, legacy) => {
            let legacy = legacy.clone().unwrap_or_else(|| "cdn".into());
            let bootdisk = conf.get("bootdisk").cloned();
            let mut order = Vec::new();
            for c in legacy.chars() {
                match c {
                    'c' => {
                        if let Some(d) = bootdisk.clone().or_else(|| {
                            all_drives
                                .iter()
                                .find(|(_, v)| !v.contains("media=cdrom"))
                                .map(|(k, _)| k.to_string())
                        }) {
                            order.push(d);
                        }
                    }
                    'd' => order.extend(
                        all_drives
                            .iter()
                            .filter(|(_, v)| v.contains("media=cdrom"))
                            .map(|(k, _)| k.to_string()),
                    ),
                    'n' => order.extend(all_nets.iter().map(|(i, _)| format!("net{i}"))),
                    _ => {}
                }
            }
            order
        }
    };
    let bootindex = |dev: &str| -> Option<u32> {
        order
            .iter()
            .position(|o| o == dev)
            .map(|p| 100 * (p as u32 + 1))
    };

    // Drives and their controllers.
    let scsihw = conf.get("scsihw").map(String::as_str).unwrap_or("lsi");
    let (scsi_model, per_controller) = devices::scsi_controller(scsihw);
    let mut scsi_controllers: Vec<u32> = Vec::new();
    let mut have_ahci = false;
    let mut overlays = Vec::new();
    let mut drive_args: Vec<String> = Vec::new();
    for (key, value) in &all_drives {
        if key.bus == DriveBus::Efidisk {
            continue;
        }
        let drive = match Drive::parse(*key, value, false) {
            Ok(d) => d,
            Err(e) => {
                errors.push((key.to_string(), e.to_string()));
                continue;
            }
        };
        let source = if drive.file == "none" {
            DriveSource::Empty
        } else if drive.file.starts_with('/') {
            DriveSource::File {
                path: PathBuf::from(&drive.file),
                format: drive.format.clone().unwrap_or_else(|| "raw".into()),
            }
        } else {
            match parse_volid(&drive.file).and_then(|v| {
                let path = ctx.storage.path(&v)?;
                let fmt = drive
                    .format
                    .clone()
                    .or_else(|| crate::storage::volume_format(&v).map(|f| f.as_str().to_string()))
                    .unwrap_or_else(|| "raw".into());
                Ok((path, fmt))
            }) {
                Ok((path, format)) => DriveSource::File { path, format },
                Err(e) => {
                    errors.push((key.to_string(), e.to_string()));
                    continue;
                }
            }
        };
        // `snapshot=1`: the VM writes to a throwaway overlay over the volume.
        let source = match source {
            DriveSource::File { path, format }
                if drive.snapshot == Some(true) && drive.media != Some(Media::Cdrom) =>
            {
                let overlay = devices::snapshot_overlay(run, vmid, key);
                overlays.push((overlay.clone(), path, format));
                DriveSource::File {
                    path: overlay,
                    format: "qcow2".into(),
                }
            }
            other => other,
        };
        match key.bus {
            DriveBus::Scsi => {
                if scsihw == "virtio-scsi-single" {
                    let id = format!("virtioscsi{}", key.index);
                    let mut c = format!("virtio-scsi-pci,id={id},{}", pci.place(&id));
                    if drive.iothread == Some(true) {
                        drive_args.extend(["-object".into(), format!("iothread,id=iothread-{id}")]);
                        c.push_str(&format!(",iothread=iothread-{id}"));
                    }
                    if let Some(q) = drive.queues {
                        c.push_str(&format!(",num_queues={q}"));
                    }
                    drive_args.extend(["-device".into(), c]);
                } else {
                    let ctrl = key.index / per_controller;
                    if !scsi_controllers.contains(&ctrl) {
                        scsi_controllers.push(ctrl);
                        let id = format!("scsihw{ctrl}");
                        drive_args.extend([
                            "-device".into(),
                            format!("{scsi_model},id={id},{}", pci.place(&id)),
                        ]);
                    }
                }
            }
            DriveBus::Sata if !have_ahci => {
                have_ahci = true;
                drive_args.extend([
                    "-device".into(),
                    format!("ahci,id=ahci0,multifunction=on,{}", pci.place("ahci0")),
                ]);
            }
            DriveBus::Virtio if drive.iothread == Some(true) => {
                drive_args.extend(["-object".into(), format!("iothread,id=iothread-{key}")]);
            }
            _ => {}
        }
        drive_args.extend(devices::blockdev_args(key, &drive, &source));
        drive_args.push("-device".into());
        drive_args.push(devices::drive_device(
            key,
            &drive,
            &source,
            scsihw,
            q35,
            &mut pci,
            bootindex(&key.to_string()),
        ));
    }
    argv.extend(drive_args);

    // NICs.
    let mut post = PostStart::default();
    for (index, value) in &all_nets {
        let net = match NetDevice::parse(value) {
            Ok(n) => n,
            Err(e) => {
                errors.push((format!("net{index}"), e.to_string()));
                continue;
            }
        };
        let fwd = if *index == 0 { ctx.forwards } else { None };
        let (netdev, dev) = devices::net_args(
            *index,
            &net,
            fwd,
            &mut pci,
            bootindex(&format!("net{index}")),
        );
        argv.extend(["-netdev".to_string(), netdev, "-device".to_string(), dev]);
        for filter in crate::vm::netstats::filter_args(run, vmid, *index) {
            argv.extend(["-object".to_string(), filter]);
        }
        if net.link_down == Some(true) {
            post.links_down.push(format!("net{index}"));
        }
    }

    let bridges: Vec<String> = pci
        .bridge_args()
        .into_iter()
        .flat_map(|b| ["-device".to_string(), b])
        .collect();
    argv.splice(bridges_at..bridges_at, bridges);

    if let Some(b) = balloon.filter(|b| *b > 0 && *b < memory_mib) {
        post.balloon_target = Some(b * 1024 * 1024);
    }
    post.affinity = conf.get("affinity").cloned();
    post.cpulimit = conf
        .get("cpulimit")
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| *v > 0.0);
    post.cpuunits = conf.get("cpuunits").and_then(|v| v.parse().ok());

    // Raw extra arguments (root only in Proxmox; an operator's escape hatch).
    if let Some(extra) = conf.get("args") {
        match shell_words::split(extra) {
            Ok(words) => argv.extend(words),
            Err(e) => errors.push(("args".into(), format!("unable to parse arguments: {e}"))),
        }
    }

    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        return Err(CmdlineError(errors));
    }
    Ok(QemuCommand {
        argv,
        post,
        overlays,
        machine: mtype,
    })
}
