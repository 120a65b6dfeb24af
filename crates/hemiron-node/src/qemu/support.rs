//! Which VM config properties this node honours, and a clear refusal for the rest.
//!
//! Every property of Proxmox's schema is either turned into QEMU arguments (or into the
//! agent's own behaviour: `onboot`, `protection`, `hookscript`…) or refused here with a
//! message naming it, so that a setting is never silently ignored. The refusals are for
//! things this host cannot provide: host device passthrough, confidential computing, SPICE,
//! hugepages, swtpm, virtiofsd, and network features that QEMU's user-mode network lacks.

use hemiron_pve::views::{Drive, DriveKey, NetDevice};

/// Why a property value cannot be honoured, as the message for `{"errors":{key: msg}}`.
pub fn check_property(key: &str, value: &str) -> Result<(), String> {
    let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match base {
        "hostpci" => Err("PCI passthrough is not supported by this node".into()),
        "usb" => Err("USB passthrough is not supported by this node".into()),
        "parallel" => Err("parallel port passthrough is not supported by this node".into()),
        "virtiofs" => Err("virtiofs is not supported by this node (no virtiofsd)".into()),
        "amd-sev" => Err("AMD SEV is not supported by this node".into()),
        "intel-tdx" => Err("Intel TDX is not supported by this node".into()),
        "tpmstate" => Err("TPM state is not supported by this node (no swtpm)".into()),
        "spice_enhancements" => Err("SPICE is not supported by this node".into()),
        "hugepages" => Err("hugepages are not supported by this node".into()),
        "keephugepages" if value == "1" => Err("hugepages are not supported by this node".into()),
        "arch" if value != "x86_64" => Err(format!(
            "architecture '{value}' is not supported by this node (x86_64 only)"
        )),
        "shares" if value != "0" => Err(
            "automatic memory ballooning is not implemented; use shares=0 or leave it unset".into(),
        ),
        "cicustom" => Err("custom cloud-init snippets are not supported yet".into()),
        "citype" if value != "nocloud" => {
            Err("only the nocloud cloud-init type is supported by this node".into())
        }
        "hotplug"
            if value
                .split([',', ';'])
                .any(|f| matches!(f.trim(), "cpu" | "memory")) =>
        {
            Err(
                "CPU and memory hotplug are not supported by this node (disk and network are)"
                    .into(),
            )
        }
        "vga" => check_vga(value),
        "audio" => check_audio(value),
        "cpu" => check_cpu(value),
        "net" => check_net(value),
        "ide" | "sata" | "scsi" | "virtio" | "efidisk" => check_drive(key, value),
        _ => Ok(()),
    }
}

fn check_vga(value: &str) -> Result<(), String> {
    let vga = hemiron_pve::views::Vga::parse(value).map_err(|e| e.to_string())?;
    match vga.vga_type.as_deref() {
        Some("virtio-gl") => {
            return Err("vga type virtio-gl needs host OpenGL, which this node lacks".into())
        }
        Some(t) if t.starts_with("qxl") && t != "qxl" => {
            return Err(format!("vga type {t} needs SPICE, which this node lacks"))
        }
        _ => {}
    }
    if vga.clipboard.is_some() {
        return Err("the VNC clipboard is not supported by this node".into());
    }
    Ok(())
}

fn check_audio(value: &str) -> Result<(), String> {
    if value.split(',').any(|kv| kv.trim() == "driver=spice") {
        return Err(
            "audio driver spice needs SPICE, which this node lacks; use driver=none".into(),
        );
    }
    Ok(())
}

fn check_cpu(value: &str) -> Result<(), String> {
    let cpu = hemiron_pve::views::Cpu::parse(value).map_err(|e| e.to_string())?;
    if cpu
        .cputype
        .as_deref()
        .is_some_and(|t| t.starts_with("custom-"))
    {
        return Err("custom CPU models are not supported by this node".into());
    }
    if value.contains("reported-model") {
        return Err(
            "reported-model only applies to custom CPU models, which this node lacks".into(),
        );
    }
    Ok(())
}

fn check_net(value: &str) -> Result<(), String> {
    let net = NetDevice::parse(value).map_err(|e| e.to_string())?;
    if net.rate.is_some_and(|r| r > 0.0) {
        return Err("rate limiting is not available with user-mode networking".into());
    }
    if net.tag.is_some() || net.trunks.is_some() {
        return Err("VLAN tags and trunks are not available with user-mode networking".into());
    }
    if net.queues.is_some_and(|q| q > 1) {
        return Err("multiqueue is not available with user-mode networking".into());
    }
    Ok(())
}

fn check_drive(key: &str, value: &str) -> Result<(), String> {
    let dk: DriveKey = key
        .parse()
        .map_err(|e: hemiron_pve::views::ViewError| e.to_string())?;
    let drive = Drive::parse(dk, value, true).map_err(|e| e.to_string())?;
    if drive.scsiblock == Some(true) {
        return Err("scsiblock passthrough is not supported by this node".into());
    }
    if drive.file == "cdrom" {
        return Err("host CD-ROM passthrough is not supported by this node".into());
    }
    if let Some(fmt) = drive.format.as_deref() {
        if !matches!(fmt, "qcow2" | "raw") && !drive.is_cdrom() {
            return Err(format!("format '{fmt}' is not supported (qcow2 or raw)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_reason() {
        assert!(check_property("hostpci0", "0000:01:00.0").is_err());
        assert!(check_property("net0", "virtio,bridge=vmbr0,rate=5").is_err());
        assert!(check_property("net0", "virtio,bridge=vmbr0,firewall=1").is_ok());
        assert!(check_property("ide2", "local:cloudinit").is_ok());
        assert!(check_property("citype", "configdrive2").is_err());
        assert!(check_property("scsi0", "local:1,format=vmdk").is_err());
        assert!(check_property("scsi0", "local:1,format=raw").is_ok());
        assert!(check_property("vga", "qxl2").is_err());
        assert!(check_property("vga", "std,memory=32").is_ok());
        assert!(check_property("shares", "0").is_ok());
        assert!(check_property("shares", "1000").is_err());
        assert!(check_property("memory", "256").is_ok());
    }
}
