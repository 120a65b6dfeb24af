//! cloud-init NoCloud seeds as Proxmox VE writes them (see qemu-server's
//! `PVE/QemuServer/Cloudinit.pm`), and the `cidata` ISO images that carry them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One interface of `network-config`.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The name Proxmox gives (`eth<N>` for `net<N>`); the guest must not rely on it.
    pub name: String,
    pub mac: String,
    /// `None`: DHCP; `Some((address, netmask, gateway))`: static.
    pub static_v4: Option<(String, String, Option<String>)>,
}

/// The settings Proxmox turns into a seed.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub hostname: Option<String>,
    /// Only in meta-data (`local-hostname`), which cicustom seeds may use.
    pub local_hostname: Option<String>,
    pub search_domain: Option<String>,
    pub user: Option<String>,
    pub password_hash: Option<String>,
    pub keys: Vec<String>,
    pub nics: Vec<Nic>,
    pub nameservers: Vec<String>,
}

impl Seed {
    /// `user-data`, as Proxmox's `cloudinit_userdata` writes it.
    pub fn user_data(&self) -> String {
        let mut out = String::from("#cloud-config\n");
        if let Some(host) = &self.hostname {
            out.push_str(&format!("hostname: {host}\nmanage_etc_hosts: true\n"));
            let fqdn = match &self.search_domain {
                Some(d) => format!("{host}.{d}"),
                None => host.clone(),
            };
            out.push_str(&format!("fqdn: {fqdn}\n"));
        }
        if let Some(user) = &self.user {
            out.push_str(&format!("user: {user}\n"));
        }
        if let Some(hash) = &self.password_hash {
            out.push_str(&format!("password: {hash}\n"));
        }
        if !self.keys.is_empty() {
            out.push_str("ssh_authorized_keys:\n");
            for key in &self.keys {
                out.push_str(&format!("  - {}\n", key.trim()));
            }
        }
        out.push_str("chpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n");
        out
    }

    /// `network-config` version 1, as Proxmox's `nocloud_network` writes it.
    pub fn network_config(&self) -> String {
        let mut out = String::from("version: 1\nconfig:\n");
        for nic in &self.nics {
            out.push_str(&format!(
                "    - type: physical\n      name: {}\n      mac_address: '{}'\n      subnets:\n",
                nic.name, nic.mac
            ));
            match &nic.static_v4 {
                Some((addr, mask, gw)) => {
                    out.push_str(&format!(
                        "      - type: static\n        address: '{addr}'\n        netmask: '{mask}'\n"
                    ));
                    if let Some(gw) = gw {
                        out.push_str(&format!("        gateway: '{gw}'\n"));
                    }
                }
                None => out.push_str("      - type: dhcp4\n"),
            }
        }
        out.push_str("    - type: nameserver\n");
        if !self.nameservers.is_empty() {
            out.push_str("      address:\n");
            for ns in &self.nameservers {
                out.push_str(&format!("      - '{ns}'\n"));
            }
        }
        if let Some(d) = &self.search_domain {
            out.push_str(&format!("      search:\n      - '{d}'\n"));
        }
        out
    }

    /// Proxmox's instance-id: a digest of user-data and network-config (SHA-1 there; any
    /// 40 hex digits do).
    pub fn instance_id(&self) -> String {
        let digest = Sha256::digest(format!("{}{}", self.user_data(), self.network_config()));
        hex::encode(digest)[..40].to_string()
    }

    pub fn meta_data(&self) -> String {
        let mut out = format!("instance-id: {}\n", self.instance_id());
        if let Some(h) = &self.local_hostname {
            out.push_str(&format!("local-hostname: {h}\n"));
        }
        out
    }

    /// Writes the seed as `dir/<name>.iso`, made as Proxmox makes it: `genisoimage -R -J -V
    /// cidata` (Debian package genisoimage).
    pub fn iso(&self, dir: &Path, name: &str) -> PathBuf {
        let files = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("user-data"), self.user_data()).unwrap();
        std::fs::write(files.join("meta-data"), self.meta_data()).unwrap();
        std::fs::write(files.join("network-config"), self.network_config()).unwrap();
        std::fs::write(files.join("vendor-data"), "").unwrap();
        let iso = dir.join(format!("{name}.iso"));
        let out = Command::new("genisoimage")
            .args([
                "-quiet",
                "-iso-level",
                "3",
                "-R",
                "-J",
                "-V",
                "cidata",
                "-o",
            ])
            .arg(&iso)
            .arg(&files)
            .output()
            .expect("genisoimage runs (apt-get install genisoimage)");
        assert!(
            out.status.success(),
            "genisoimage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        iso
    }
}
