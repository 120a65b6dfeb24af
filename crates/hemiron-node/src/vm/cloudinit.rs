//! Cloud-init: the NoCloud drive Proxmox generates from `ciuser`, `cipassword`, `sshkeys`,
//! `ipconfigN`, `nameserver`, `searchdomain` and the VM's name and NICs.
//!
//! The drive is an ISO 9660 image labelled `cidata` (made with Debian's `genisoimage`)
//! holding `user-data`, `meta-data` and `network-config` in Proxmox's exact format, stored as
//! the volume `vm-VMID-cloudinit.qcow2` and attached as a CD-ROM. It is generated again at
//! every start (and on `PUT .../cloudinit`), so changed settings reach the guest at its next
//! boot. The `instance-id` is a digest of the content, so it changes with the settings and
//! differs between clones (their MACs and names differ).

use std::collections::BTreeMap;
use std::path::Path;

use hemiron_pve::config::{Section, VmConfig};
use hemiron_pve::views::{Drive, IpConfig, Ipv4Config, Ipv6Config, NetDevice};
use hemiron_pve::volume::DriveFile;
use sha1::{Digest, Sha1};
use tokio::process::Command;

use super::{VmError, VmManager};
use crate::storage::{parse_volid, VolumeId};

/// Config keys whose values go into the cloud-init drive.
pub const CLOUDINIT_KEYS: &[&str] = &[
    "ciuser",
    "cipassword",
    "sshkeys",
    "nameserver",
    "searchdomain",
    "citype",
    "ciupgrade",
    "name",
];

/// The three files of a NoCloud drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInitData {
    pub user: String,
    pub network: String,
    pub meta: String,
}

/// Hashes a cloud-init password as Proxmox does (SHA-512 crypt), unless it is already a hash.
pub fn hash_password(password: &str) -> Result<String, VmError> {
    if password.starts_with('$') {
        return Ok(password.to_string());
    }
    let params = sha_crypt::Sha512Params::new(5000)
        .map_err(|e| VmError::Refused(format!("password hashing: {e:?}")))?;
    sha_crypt::sha512_simple(password, &params)
        .map_err(|e| VmError::Refused(format!("password hashing: {e:?}")))
}

/// `a.b.c.d` netmask of a prefix length.
fn netmask(prefix: u8) -> String {
    let bits: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    std::net::Ipv4Addr::from(bits).to_string()
}

/// Name servers and search domains of the host (Proxmox's fallback when the VM sets none).
fn host_resolv() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => servers.extend(parts.next().map(str::to_string)),
            Some("search") | Some("domain") => search.extend(parts.map(str::to_string)),
            _ => {}
        }
    }
    (servers, search)
}

/// `user-data` as Proxmox's `cloudinit_userdata` writes it.
fn user_data(props: &BTreeMap<String, String>, vmid: u32) -> String {
    let hostname = props
        .get("name")
        .cloned()
        .unwrap_or_else(|| format!("VM{vmid}"));
    let (host, domain) = match hostname.split_once('.') {
        Some((h, d)) => (h.to_string(), Some(d.to_string())),
        None => (
            hostname.clone(),
            props
                .get("searchdomain")
                .and_then(|s| s.split([' ', ',', ';']).find(|x| !x.is_empty()))
                .map(str::to_string),
        ),
    };
    let fqdn = match &domain {
        Some(d) => format!("{host}.{d}"),
        None => host.clone(),
    };
    let mut out = String::from("#cloud-config\n");
    out.push_str(&format!(
        "hostname: {host}\nmanage_etc_hosts: true\nfqdn: {fqdn}\n"
    ));
    let user = props.get("ciuser");
    if let Some(u) = user {
        out.push_str(&format!("user: {u}\n"));
        if u == "root" {
            out.push_str("disable_root: False\n");
        }
    }
    if let Some(p) = props.get("cipassword") {
        out.push_str(&format!("password: {p}\n"));
    }
    if let Some(keys) = props.get("sshkeys") {
        let keys = hemiron_pve::text::decode_sshkeys(keys);
        let keys: Vec<&String> = keys.iter().filter(|k| !k.trim().is_empty()).collect();
        if !keys.is_empty() {
            out.push_str("ssh_authorized_keys:\n");
            for k in keys {
                out.push_str(&format!("  - {}\n", k.trim()));
            }
        }
    }
    out.push_str("chpasswd:\n  expire: False\n");
    if user.is_none_or(|u| u != "root") {
        out.push_str("users:\n  - default\n");
    }
    if props.get("ciupgrade").is_none_or(|v| v == "1") {
        out.push_str("package_upgrade: true\n");
    }
    out
}

/// `network-config` (version 1) as Proxmox's `nocloud_network` writes it.
fn network_config(props: &BTreeMap<String, String>) -> Result<String, VmError> {
    let mut out = String::from("version: 1\nconfig:\n");
    for (index, value) in crate::qemu::cmdline::nets(props) {
        let net = NetDevice::parse(&value)
            .map_err(|e| VmError::param(&format!("net{index}"), e.to_string()))?;
        let ipkey = format!("ipconfig{index}");
        let ip = match props.get(&ipkey) {
            Some(v) => IpConfig::parse(v)
                .and_then(|c| c.effective())
                .map_err(|e| VmError::param(&ipkey, e.to_string()))?,
            None => IpConfig::default(),
        };
        out.push_str(&format!("    - type: physical\n      name: eth{index}\n"));
        if let Some(mac) = &net.macaddr {
            out.push_str(&format!(
                "      mac_address: '{}'\n",
                mac.to_string().to_lowercase()
            ));
        }
        out.push_str("      subnets:\n");
        match &ip.ip {
            Some(Ipv4Config::Static(cidr)) => {
                let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
                let prefix: u8 = prefix.parse().unwrap_or(32);
                out.push_str(&format!(
                    "      - type: static\n        address: '{addr}'\n        netmask: '{}'\n",
                    netmask(prefix)
                ));
                if let Some(gw) = &ip.gw {
                    out.push_str(&format!("        gateway: '{gw}'\n"));
                }
            }
            Some(Ipv4Config::Manual) => {}
            // DHCP is also the default when nothing is configured.
            Some(Ipv4Config::Dhcp) | None => {
                if ip.ip.is_some() || ip.ip6.is_none() {
                    out.push_str("      - type: dhcp4\n");
                }
            }
        }
        match &ip.ip6 {
            Some(Ipv6Config::Static(cidr)) => {
                out.push_str(&format!(
                    "      - type: static6\n        address: '{cidr}'\n"
                ));
                if let Some(gw) = &ip.gw6 {
                    out.push_str(&format!("        gateway: '{gw}'\n"));
                }
            }
            Some(Ipv6Config::Dhcp) => out.push_str("      - type: dhcp6\n"),
            Some(Ipv6Config::Auto) => out.push_str("      - type: ipv6_slaac\n"),
            Some(Ipv6Config::Manual) | None => {}
        }
    }
    let (host_servers, host_search) = host_resolv();
    let (servers, search) = match (props.get("nameserver"), props.get("searchdomain")) {
        (None, None) => (host_servers, host_search),
        (ns, sd) => (
            ns.map(|n| split_words(n)).unwrap_or_default(),
            sd.map(|s| split_words(s)).unwrap_or_default(),
        ),
    };
    if !servers.is_empty() || !search.is_empty() {
        out.push_str("    - type: nameserver\n");
        if !servers.is_empty() {
            out.push_str("      address:\n");
            for s in &servers {
                out.push_str(&format!("      - '{s}'\n"));
            }
        }
        if !search.is_empty() {
            out.push_str("      search:\n");
            for s in &search {
                out.push_str(&format!("      - '{s}'\n"));
            }
        }
    }
    Ok(out)
}

fn split_words(s: &str) -> Vec<String> {
    s.split([' ', ',', ';'])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// The NoCloud files for a VM's (effective) config.
pub fn generate(props: &BTreeMap<String, String>, vmid: u32) -> Result<CloudInitData, VmError> {
    if props.get("citype").is_some_and(|t| t != "nocloud") {
        return Err(VmError::param(
            "citype",
            "only the nocloud cloud-init type is supported by this node",
        ));
    }
    let user = user_data(props, vmid);
    let network = network_config(props)?;
    let digest = hex::encode(Sha1::digest(format!("{user}{network}").as_bytes()));
    Ok(CloudInitData {
        user,
        network,
        meta: format!("instance-id: {digest}\n"),
    })
}

/// The cloud-init drive of a config: its key and volume.
pub fn cloudinit_drive(props: &BTreeMap<String, String>) -> Option<(String, VolumeId)> {
    crate::qemu::cmdline::drives(props)
        .into_iter()
        .find_map(|(key, value)| {
            let d = Drive::parse(key, &value, false).ok()?;
            if !d.is_cloudinit() {
                return None;
            }
            match d.drive_file()? {
                DriveFile::Volume(v) => Some((key.to_string(), parse_volid(&v.to_string()).ok()?)),
                _ => None,
            }
        })
}

/// Writes the ISO for `data` into `target` (a qcow2 volume file), replacing it atomically.
async fn write_iso(data: &CloudInitData, target: &Path) -> Result<(), VmError> {
    let dir = tempfile::Builder::new()
        .prefix("cidata")
        .tempdir()
        .map_err(VmError::Runtime)?;
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).map_err(VmError::Runtime)?;
    for (name, content) in [
        ("user-data", &data.user),
        ("meta-data", &data.meta),
        ("network-config", &data.network),
    ] {
        std::fs::write(files.join(name), content).map_err(VmError::Runtime)?;
    }
    let iso = dir.path().join("cidata.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "cidata", "-o"])
        .arg(&iso)
        .arg(&files)
        .output()
        .await
        .map_err(|e| {
            VmError::Refused(format!(
                "cannot run genisoimage (Debian package genisoimage): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(VmError::Refused(format!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let tmp = target.with_extension("qcow2.new");
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(VmError::Runtime)?;
    }
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&iso)
        .arg(&tmp)
        .output()
        .await
        .map_err(VmError::Runtime)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(VmError::Refused(format!(
            "qemu-img convert of the cloud-init image failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, target).map_err(VmError::Runtime)
}

impl VmManager {
    /// Generates the cloud-init drive of `conf` if it has one, and records what it was made
    /// from in the `[special:cloudinit]` section. Returns whether the config changed.
    pub async fn regenerate_cloudinit(
        &self,
        vmid: u32,
        conf: &mut VmConfig,
    ) -> Result<bool, VmError> {
        let props = super::update::effective_props(conf);
        let Some((_, vol)) = cloudinit_drive(&props) else {
            return Ok(false);
        };
        let data = generate(&props, vmid)?;
        let path = self.storage().path(&vol)?;
        write_iso(&data, &path).await?;
        let mut used = Section::default();
        for (k, v) in &props {
            if CLOUDINIT_KEYS.contains(&k.as_str())
                || k.starts_with("ipconfig")
                || (k.starts_with("net") && k[3..].parse::<u32>().is_ok())
            {
                used.props.insert(k.clone(), v.clone());
            }
        }
        let changed = conf.special.get("cloudinit") != Some(&used);
        conf.special.insert("cloudinit".into(), used);
        Ok(changed)
    }

    /// `GET .../cloudinit/dump`.
    pub fn cloudinit_dump(&self, vmid: u32, kind: &str) -> Result<String, VmError> {
        let loaded = self.store.load(vmid)?;
        let props = super::update::effective_props(&loaded.conf);
        let data = generate(&props, vmid)?;
        Ok(match kind {
            "user" => data.user,
            "network" => data.network,
            _ => data.meta,
        })
    }

    /// `GET .../cloudinit`: each cloud-init key with the value the current drive was made
    /// from and the pending value if it differs.
    pub fn cloudinit_status(&self, vmid: u32) -> Result<Vec<serde_json::Value>, VmError> {
        let loaded = self.store.load(vmid)?;
        let props = super::update::effective_props(&loaded.conf);
        let used = loaded
            .conf
            .special
            .get("cloudinit")
            .map(|s| s.props.clone())
            .unwrap_or_default();
        let mut keys: Vec<String> = props
            .keys()
            .chain(used.keys())
            .filter(|k| {
                CLOUDINIT_KEYS.contains(&k.as_str())
                    || k.starts_with("ipconfig")
                    || (k.starts_with("net") && k[3..].parse::<u32>().is_ok())
            })
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys
            .into_iter()
            .map(|k| {
                let mut e = serde_json::json!({ "key": k });
                let cur = props.get(&k);
                let old = used.get(&k);
                if let Some(v) = old {
                    e["value"] = serde_json::json!(v);
                }
                match (old, cur) {
                    (Some(o), Some(c)) if o != c => e["pending"] = serde_json::json!(c),
                    (None, Some(c)) => e["pending"] = serde_json::json!(c),
                    (Some(_), None) => e["delete"] = serde_json::json!(1),
                    _ => {}
                }
                e
            })
            .collect())
    }

    /// `PUT .../cloudinit`: regenerates the drive now.
    pub async fn cloudinit_update(&self, vmid: u32) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let mut conf = self.store.load(vmid)?.conf;
        if cloudinit_drive(&super::update::effective_props(&conf)).is_none() {
            return Err(VmError::Refused(format!(
                "VM {vmid} has no cloud-init drive"
            )));
        }
        self.regenerate_cloudinit(vmid, &mut conf).await?;
        self.store.write(vmid, &conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn user_data_as_proxmox_writes_it() {
        let p = props(&[
            ("name", "web1"),
            ("searchdomain", "example.com"),
            ("ciuser", "alice"),
            ("cipassword", "$6$x$y"),
            (
                "sshkeys",
                "ssh-ed25519%20AAAA%20alice%0Assh-rsa%20BBBB%20bob%0A",
            ),
        ]);
        let u = user_data(&p, 100);
        assert_eq!(
            u,
            "#cloud-config\nhostname: web1\nmanage_etc_hosts: true\nfqdn: web1.example.com\n\
             user: alice\npassword: $6$x$y\nssh_authorized_keys:\n  - ssh-ed25519 AAAA alice\n\
             \x20 - ssh-rsa BBBB bob\nchpasswd:\n  expire: False\nusers:\n  - default\n\
             package_upgrade: true\n"
        );
    }

    #[test]
    fn network_config_static_and_dhcp() {
        let p = props(&[
            ("net0", "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0"),
            ("ipconfig0", "ip=10.0.2.15/24,gw=10.0.2.2"),
            ("net1", "e1000=BC:24:11:AA:BB:CD,bridge=vmbr0"),
            ("nameserver", "10.0.2.3"),
            ("searchdomain", "example.com"),
        ]);
        let n = network_config(&p).unwrap();
        assert_eq!(
            n,
            "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:aa:bb:cc'\n      subnets:\n      - type: static\n        address: '10.0.2.15'\n        netmask: '255.255.255.0'\n        gateway: '10.0.2.2'\n    - type: physical\n      name: eth1\n      mac_address: 'bc:24:11:aa:bb:cd'\n      subnets:\n      - type: dhcp4\n    - type: nameserver\n      address:\n      - '10.0.2.3'\n      search:\n      - 'example.com'\n"
        );
    }

    #[test]
    fn instance_id_follows_content() {
        let a = generate(
            &props(&[("name", "a"), ("net0", "virtio=BC:24:11:00:00:01")]),
            100,
        )
        .unwrap();
        let b = generate(
            &props(&[("name", "a"), ("net0", "virtio=BC:24:11:00:00:02")]),
            100,
        )
        .unwrap();
        assert_ne!(a.meta, b.meta);
        assert!(a.meta.starts_with("instance-id: ") && a.meta.len() == 13 + 40 + 1);
        assert!(generate(&props(&[("citype", "configdrive2")]), 1).is_err());
    }

    #[test]
    fn passwords_are_hashed_once() {
        let h = hash_password("secret").unwrap();
        assert!(h.starts_with("$6$"));
        assert_eq!(hash_password(&h).unwrap(), h);
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
    }
}
