//! Display, console channels (guest agent, serial ports) and other devices: balloon, RNG,
//! watchdog, VM generation ID, shared memory, audio.

use std::collections::BTreeMap;

use hemiron_pve::views::{Agent, AgentType, Rng, Vga, Watchdog};

use super::{qga_socket, serial_socket, vnc_socket, Builder};

impl Builder<'_> {
    /// The graphics card, with VNC on a unix socket only (never a TCP port), and the USB
    /// tablet for absolute pointing in a console.
    pub(super) fn display(&mut self) {
        let vga = self.view("vga", Vga::parse).unwrap_or_default();
        let vga_type = vga.vga_type.clone().unwrap_or_else(|| "std".into());
        let headless = vga_type == "none" || vga_type.starts_with("serial");
        if let Some(n) = vga_type.strip_prefix("serial") {
            if !self.conf.contains_key(&format!("serial{n}")) {
                self.error(
                    "vga",
                    format!("vga={vga_type} needs serial{n} to be configured"),
                );
            }
        }
        if headless {
            // (`-nographic` would claim stdio, which a daemon does not have.)
            self.push(&["-vga", "none", "-display", "none"]);
            return;
        }
        let placement = if self.q35 {
            "bus=pcie.0,addr=0x1".to_string()
        } else {
            self.pci.place("vga")
        };
        let memory = match (vga.memory, vga_type.as_str()) {
            (None, _) => String::new(),
            // virtio-gpu has no VGA memory bar: its host memory limit is what the size means.
            (Some(m), "virtio") => format!(",max_hostmem={}", u64::from(m) * 1024 * 1024),
            (Some(m), _) => format!(",vgamem_mb={m}"),
        };
        let dev = match vga_type.as_str() {
            "cirrus" => "cirrus-vga",
            "vmware" => "vmware-svga",
            "qxl" => "qxl-vga",
            "virtio" => "virtio-vga",
            _ => "VGA",
        };
        let vnc = format!(
            "unix:{},password=on",
            vnc_socket(self.run_dir(), self.vmid()).display()
        );
        self.push(&[
            "-device",
            &format!("{dev},id=vga,{placement}{memory}"),
            "-vnc",
            &vnc,
        ]);
        if self.flag("tablet", true) {
            let (controller, bus) = if self.q35 {
                ("qemu-xhci,id=xhci,bus=pcie.0,addr=0x1d", "xhci.0")
            } else {
                ("piix3-usb-uhci,id=uhci,bus=pci.0,addr=0x1.0x2", "uhci.0")
            };
            self.push(&[
                "-device",
                controller,
                "-device",
                &format!("usb-tablet,id=tablet,bus={bus},port=1"),
            ]);
        }
    }

    /// The guest agent channel and serial ports, on unix sockets in the run dir.
    pub(super) fn channels(&mut self) {
        let (vmid, run) = (self.vmid(), self.run_dir());
        if let Some(agent) = self.view("agent", Agent::parse).filter(|a| a.enabled) {
            let chardev = format!(
                "socket,path={},server=on,wait=off,id=qga0",
                qga_socket(run, vmid).display()
            );
            self.push(&["-chardev", &chardev]);
            if agent.agent_type == Some(AgentType::Isa) {
                self.push(&["-device", "isa-serial,chardev=qga0"]);
            } else {
                let serial = format!("virtio-serial,id=qga0,{}", self.pci.place("qga0"));
                self.push(&[
                    "-device",
                    &serial,
                    "-device",
                    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                ]);
            }
        }
        for n in 0..4u32 {
            let Some(v) = self.get(&format!("serial{n}")) else {
                continue;
            };
            let chardev = if v == "socket" {
                format!(
                    "socket,id=serial{n},path={},server=on,wait=off",
                    serial_socket(run, vmid, n).display()
                )
            } else {
                format!("serial,id=serial{n},path={v}")
            };
            self.push(&[
                "-chardev",
                &chardev,
                "-device",
                &format!("isa-serial,chardev=serial{n}"),
            ]);
        }
    }

    pub(super) fn devices(&mut self) {
        if self.get("balloon").is_none_or(|b| b != "0") {
            let dev = format!(
                "virtio-balloon-pci,id=balloon0,{}",
                self.pci.place("balloon0")
            );
            self.push(&["-device", &dev]);
        }
        if let Some(rng) = self.view("rng0", Rng::parse) {
            let mut dev = format!("virtio-rng-pci,rng=rng0,{}", self.pci.place("rng0"));
            if let Some(b) = rng.max_bytes {
                dev.push_str(&format!(",max-bytes={b}"));
            }
            if let Some(p) = rng.period {
                dev.push_str(&format!(",period={p}"));
            }
            self.push(&[
                "-object",
                &format!("rng-random,filename={},id=rng0", rng.source),
                "-device",
                &dev,
            ]);
        }
        if let Some(w) = self.view("watchdog", Watchdog::parse) {
            if w.model.as_deref() == Some("ib700") {
                self.push(&["-device", "ib700"]);
            } else {
                let dev = format!("i6300esb,{}", self.pci.place("watchdog"));
                self.push(&["-device", &dev]);
            }
            if let Some(action) = &w.action {
                self.push(&["-watchdog-action", action]);
            }
        }
        if let Some(id) = self.get("vmgenid").filter(|v| v.as_str() != "0") {
            self.push(&["-device", &format!("vmgenid,guid={id}")]);
        }
        if let Some(v) = self.get("ivshmem") {
            let map: BTreeMap<&str, &str> =
                v.split(',').filter_map(|kv| kv.split_once('=')).collect();
            let size = map.get("size").copied().unwrap_or("1");
            let name = map
                .get("name")
                .map(|n| n.to_string())
                .unwrap_or_else(|| self.vmid().to_string());
            let dev = format!("ivshmem-plain,memdev=ivshmem,{}", self.pci.place("ivshmem"));
            self.push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=ivshmem,share=on,mem-path=/dev/shm/pve-shm-{name},size={size}M"
                ),
                "-device",
                &dev,
            ]);
        }
        if let Some(v) = self.get("audio0") {
            let map: BTreeMap<&str, &str> =
                v.split(',').filter_map(|kv| kv.split_once('=')).collect();
            let device = map
                .get("device")
                .copied()
                .unwrap_or_else(|| v.split(',').next().unwrap_or("ich9-intel-hda"));
            let placement = self.pci.place("audio0");
            self.push(&["-audiodev", "none,id=audiodev0"]);
            if device == "AC97" {
                self.push(&[
                    "-device",
                    &format!("AC97,id=sound0,audiodev=audiodev0,{placement}"),
                ]);
            } else {
                self.push(&[
                    "-device",
                    &format!("{device},id=sound0,{placement}"),
                    "-device",
                    "hda-duplex,id=sound0-codec0,bus=sound0.0,cad=0,audiodev=audiodev0",
                ]);
            }
        }
    }
}
