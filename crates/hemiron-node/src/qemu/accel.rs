//! Choosing the accelerator: KVM where it really works, TCG otherwise.
//!
//! `/dev/kvm` existing proves little: on the machines this project runs on, it is provided by
//! the `kvm_pvm` paravirtual module, which cannot run an unmodified guest kernel (see
//! `shared/reference/qemu-here.md` §1.3). So `auto` requires the CPU's `vmx`/`svm` flags and no
//! `kvm_pvm`, and then boots a probe guest under KVM with a 15 s deadline; anything short of
//! the probe answering means TCG.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tracing::{info, warn};

/// The accelerator the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator '{other}' (auto, kvm or tcg)")),
        }
    }
}

/// The accelerator VMs run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How long the probe guest may take to answer under KVM.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// A 512-byte boot sector that writes `KVM-OK\n` to COM1 and halts: enough to show that the
/// hypervisor runs guest code and traps port I/O, without needing any guest image.
fn probe_boot_sector() -> Vec<u8> {
    let mut code = vec![0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for b in b"KVM-OK\n" {
        code.extend([0xB0, *b, 0xEE]); // mov al, b; out dx, al
    }
    code.extend([0xFA, 0xF4, 0xEB, 0xFD]); // cli; hlt; jmp $-1
    code.resize(510, 0);
    code.extend([0x55, 0xAA]);
    code
}

/// Decides the accelerator for this agent.
pub async fn choose(choice: AccelChoice, run_dir: &std::path::Path) -> (Accel, String) {
    match choice {
        AccelChoice::Tcg => (Accel::Tcg, "TCG requested".into()),
        // Honoured as asked: if KVM is broken, starting a VM fails with QEMU's own error.
        AccelChoice::Kvm => (Accel::Kvm, "KVM requested".into()),
        AccelChoice::Auto => match kvm_usable(run_dir).await {
            Ok(()) => (Accel::Kvm, "KVM probe guest answered".into()),
            Err(why) => (Accel::Tcg, why),
        },
    }
}

async fn kvm_usable(run_dir: &std::path::Path) -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_vt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_vt {
        return Err("CPU has no vmx/svm flag".into());
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is the kvm_pvm paravirtual hypervisor".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm cannot be opened".into());
    }
    let image = run_dir.join("kvm-probe.img");
    std::fs::write(&image, probe_boot_sector()).map_err(|e| format!("probe image: {e}"))?;
    let result = run_probe(&image).await;
    let _ = std::fs::remove_file(&image);
    result
}

async fn run_probe(image: &std::path::Path) -> Result<(), String> {
    let mut child = Command::new(super::process::qemu_binary())
        .args(["-accel", "kvm", "-cpu", "host", "-m", "32", "-nodefaults"])
        .args(["-display", "none", "-no-user-config", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("probe QEMU failed to start: {e}"))?;
    let mut out = child.stdout.take().ok_or("probe QEMU has no stdout")?;
    let read = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = out.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("probe QEMU exited before answering".to_string());
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(6).any(|w| w == b"KVM-OK") {
                return Ok(());
            }
        }
    };
    let result = match tokio::time::timeout(PROBE_DEADLINE, read).await {
        Ok(r) => r,
        Err(_) => Err("probe guest did not answer within 15 s under KVM".to_string()),
    };
    let _ = child.kill().await;
    match &result {
        Ok(()) => info!("KVM probe guest answered"),
        Err(why) => warn!(%why, "KVM probe failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable() {
        let s = probe_boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert!("xen".parse::<AccelChoice>().is_err());
    }
}
