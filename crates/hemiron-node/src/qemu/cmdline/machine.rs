//! Machine type, accelerator, SMBIOS identity, firmware, and boot and clock behaviour.

use hemiron_pve::views::{Drive, DriveBus, DriveKey, Machine, Smbios1};

use super::Builder;
use crate::qemu::devices::{qemu_escape, Pci};
use crate::storage::parse_volid;

/// OVMF's code image from Debian's `ovmf` package.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";

impl Builder<'_> {
    pub(super) fn machine(&mut self) {
        let machine = self.view("machine", Machine::parse).unwrap_or_default();
        let mtype = match machine.machine_type.as_deref() {
            None | Some("pc") => self.ctx.default_machine.to_string(),
            Some("q35") => self.ctx.default_q35.to_string(),
            // Proxmox's own machine revisions (`+pve1`) map to the upstream version.
            Some(t) => t.split('+').next().unwrap_or(t).to_string(),
        };
        self.q35 = mtype.contains("q35");
        let mut arg = format!("type={mtype}");
        if !self.flag("allow-ksm", true) {
            arg.push_str(",mem-merge=off");
        }
        if machine.viommu.as_deref() == Some("intel") && !self.q35 {
            self.error("machine", "viommu=intel needs machine type q35");
        }
        let accel = if self.kvm { "kvm" } else { "tcg" };
        self.push(&["-machine", &arg, "-accel", accel]);
        let pm = if self.q35 { "ICH9-LPC" } else { "PIIX4_PM" };
        if let Some(s3) = machine.enable_s3 {
            self.push(&["-global", &format!("{pm}.disable_s3={}", u8::from(!s3))]);
        }
        if let Some(s4) = machine.enable_s4 {
            self.push(&["-global", &format!("{pm}.disable_s4={}", u8::from(!s4))]);
        }
        let aw_bits = machine
            .aw_bits
            .map(|b| format!(",aw-bits={b}"))
            .unwrap_or_default();
        match machine.viommu.as_deref() {
            Some("intel") => {
                self.push(&["-device", &format!("intel-iommu,caching-mode=on{aw_bits}")])
            }
            Some("virtio") => self.push(&["-device", "virtio-iommu-pci"]),
            _ => {}
        }
        self.machine_type = mtype;
        self.pci = if self.q35 {
            Pci::new_q35()
        } else {
            Pci::new("pci.0")
        };
        for dev in self.pci.base_args() {
            self.push(&["-device", &dev]);
        }
        self.bridges_at = self.argv.len();
    }

    /// SMBIOS type 1 (the UUID Proxmox generates at create, vendor strings).
    pub(super) fn identity(&mut self) {
        let smbios = self.view("smbios1", Smbios1::parse).unwrap_or_default();
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
        let mut arg = String::from("type=1");
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
                arg.push_str(&format!(",{k}={}", qemu_escape(&v)));
            }
        }
        if arg != "type=1" {
            self.push(&["-smbios", &arg]);
        }
    }

    /// SeaBIOS (QEMU's default), or OVMF with its EFI variables disk.
    pub(super) fn firmware(&mut self) {
        if self.get("bios").map(String::as_str) != Some("ovmf") {
            return;
        }
        if !std::path::Path::new(OVMF_CODE).exists() {
            self.error(
                "bios",
                "OVMF firmware is not installed on this node (Debian package ovmf)",
            );
        }
        self.push(&[
            "-drive",
            &format!("if=pflash,unit=0,format=raw,readonly=on,file={OVMF_CODE}"),
        ]);
        let key = DriveKey {
            bus: DriveBus::Efidisk,
            index: 0,
        };
        let Some(disk) = self.view("efidisk0", |v| Drive::parse(key, v, false)) else {
            if !self.conf.contains_key("efidisk0") {
                self.error(
                    "efidisk0",
                    "bios=ovmf needs an efidisk0 to keep EFI variables",
                );
            }
            return;
        };
        match parse_volid(&disk.file).and_then(|vol| self.ctx.storage.path(&vol)) {
            Ok(path) => {
                let fmt = disk.format.clone().unwrap_or_else(|| "raw".into());
                self.push(&[
                    "-drive",
                    &format!(
                        "if=pflash,unit=1,format={fmt},id=drive-efidisk0,file={}",
                        qemu_escape(&path.to_string_lossy())
                    ),
                ]);
            }
            Err(e) => self.error("efidisk0", e.to_string()),
        }
    }

    /// Boot behaviour, power flags and the real-time clock.
    pub(super) fn clock(&mut self) {
        // No boot menu: SeaBIOS would wait for a key press.
        self.push(&["-boot", "strict=on,reboot-timeout=1000"]);
        if !self.flag("acpi", true) {
            self.push(&["-no-acpi"]);
        }
        if !self.flag("reboot", true) {
            self.push(&["-no-reboot"]);
        }
        if self.flag("freeze", false) {
            self.push(&["-S"]);
        }
        let windows = self.get("ostype").is_some_and(|o| o.starts_with('w'));
        let mut rtc = String::from("driftfix=slew");
        if let Some(date) = self.get("startdate").filter(|d| d.as_str() != "now") {
            rtc.push_str(&format!(",base={}", date.replace(' ', "T")));
        } else if self.flag("localtime", windows) {
            rtc.push_str(",base=localtime");
        }
        self.push(&["-rtc", &rtc]);
        if self.kvm && self.flag("tdf", false) {
            self.push(&["-global", "kvm-pit.lost_tick_policy=discard"]);
        }
        if let Some(k) = self.get("keyboard") {
            self.push(&["-k", k]);
        }
    }
}
