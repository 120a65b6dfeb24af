//! Hot-plugging disks and NICs into running VMs (Proxmox's `hotplug` option).
//!
//! After a config change to a running VM, pending additions of virtio/SCSI disks and of NICs,
//! and pending removals of them, are applied live when `hotplug` allows (`disk`, `network`;
//! the default is `network,disk,usb`). The device arguments are taken from the command line
//! the VM would start with now, so a hot-plugged device sits exactly where the next start puts
//! it. What cannot be plugged live (a device on a bridge the VM lacks, a changed disk, a
//! controller type change) stays pending for the next start, as in Proxmox.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hemiron_pve::config::VmConfig;
use hemiron_pve::views::{DriveBus, DriveKey};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::owner::OwnerHandle;
use super::update::drive_volume;
use super::{VmError, VmManager};
use crate::tasks::TaskContext;

/// Hotplug features enabled by a config's `hotplug` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hotplug {
    pub disk: bool,
    pub network: bool,
}

impl Hotplug {
    pub fn of(conf: &BTreeMap<String, String>) -> Self {
        let value = conf
            .get("hotplug")
            .map(String::as_str)
            .unwrap_or("network,disk,usb");
        match value {
            "0" => Hotplug {
                disk: false,
                network: false,
            },
            "1" => Hotplug {
                disk: true,
                network: true,
            },
            v => {
                let has = |f: &str| v.split([',', ';']).any(|x| x.trim() == f);
                Hotplug {
                    disk: has("disk"),
                    network: has("network"),
                }
            }
        }
    }
}

/// Splits a `-device`/`-object` argument into QMP arguments (`driver` first, values as
/// strings, which QMP's `device_add` accepts like the command line does).
pub fn device_args(arg: &str, first_key: &str) -> serde_json::Map<String, Value> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    let mut map = serde_json::Map::new();
    let mut iter = parts.into_iter();
    if let Some(first) = iter.next() {
        map.insert(first_key.to_string(), Value::String(first));
    }
    for p in iter {
        if let Some((k, v)) = p.split_once('=') {
            map.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
    map
}

/// The argument following each occurrence of `flag` in `argv`.
fn args_of<'a>(argv: &'a [String], flag: &'a str) -> impl Iterator<Item = &'a String> {
    argv.windows(2).filter(move |w| w[0] == flag).map(|w| &w[1])
}

fn has_id(arg: &str, id: &str) -> bool {
    arg.split(',').any(|kv| kv == format!("id={id}"))
}

/// Whether a device's bus exists in the running VM (bridges are made at start only).
async fn bus_exists(owner: &OwnerHandle, dev: &serde_json::Map<String, Value>) -> bool {
    let Some(bus) = dev.get("bus").and_then(Value::as_str) else {
        return true;
    };
    let bus_dev = bus.split('.').next().unwrap_or(bus);
    // `pci.0`/`pcie.0` are root buses on i440fx/q35; other buses are devices we created.
    if bus == "pci.0" || bus == "pcie.0" {
        return true;
    }
    owner
        .raw(
            "qom-get",
            Some(json!({ "path": format!("/machine/peripheral/{bus_dev}"), "property": "type" })),
        )
        .await
        .is_ok()
}

async fn device_gone(owner: &OwnerHandle, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let exists = owner
            .raw(
                "qom-get",
                Some(json!({ "path": format!("/machine/peripheral/{id}"), "property": "type" })),
            )
            .await
            .is_ok();
        if !exists {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl VmManager {
    /// Applies what can be applied live of a running VM's pending changes; returns the
    /// volumes to destroy (forced removals). The caller writes the config.
    pub(super) async fn hotplug_pending(
        &self,
        vmid: u32,
        conf: &mut VmConfig,
        owner: &OwnerHandle,
        log: Option<&TaskContext>,
    ) -> Result<Vec<String>, VmError> {
        let mut to_free = Vec::new();
        let Some(pending) = conf.pending.clone() else {
            return Ok(to_free);
        };
        let hp = Hotplug::of(&conf.main.props);
        let note = |msg: String| {
            if let Some(l) = log {
                l.log(&msg);
            }
            info!(vmid, "{msg}");
        };

        // Removals first: a key removed and re-added in one call needs its slot back.
        for (key, force) in &pending.delete {
            let is_disk = key
                .parse::<DriveKey>()
                .is_ok_and(|k| matches!(k.bus, DriveBus::Virtio | DriveBus::Scsi));
            let is_net = key.starts_with("net") && key[3..].parse::<u32>().is_ok();
            if !(is_disk && hp.disk || is_net && hp.network) || !conf.main.props.contains_key(key) {
                continue;
            }
            match self.unplug(owner, key, is_net).await {
                Ok(()) => {
                    note(format!("hot-unplugged {key}"));
                    let old = conf.main.props.remove(key);
                    if let Some(vol) = old.as_deref().and_then(|v| drive_volume(key, v)) {
                        if *force {
                            to_free.push(vol);
                        } else {
                            let n = (0..256)
                                .find(|i| !conf.main.props.contains_key(&format!("unused{i}")))
                                .unwrap_or(255);
                            conf.main.props.insert(format!("unused{n}"), vol);
                        }
                    }
                    if let Some(p) = conf.pending.as_mut() {
                        p.delete.remove(key);
                    }
                }
                Err(e) => {
                    warn!(vmid, key, error = %crate::error_chain(&e), "hot-unplug failed; change stays pending")
                }
            }
        }

        let additions: Vec<(String, String)> = pending
            .section
            .props
            .iter()
            .filter(|(k, _)| !conf.main.props.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if additions.is_empty() {
            if conf.pending.as_ref().is_some_and(|p| p.is_empty()) {
                conf.pending = None;
            }
            return Ok(to_free);
        }
        // The command line the VM would start with now tells where each device goes.
        let argv = self.command_for(vmid, conf)?.argv;
        for (key, value) in additions {
            let disk_key = key
                .parse::<DriveKey>()
                .ok()
                .filter(|k| matches!(k.bus, DriveBus::Virtio | DriveBus::Scsi));
            let net_index = key.strip_prefix("net").and_then(|n| n.parse::<u32>().ok());
            let result = match (disk_key, net_index) {
                (Some(dk), _) if hp.disk => self.plug_disk(owner, &dk, &argv).await,
                (_, Some(_)) if hp.network => self.plug_nic(owner, &key, &argv).await,
                _ => continue,
            };
            match result {
                Ok(true) => {
                    note(format!("hot-plugged {key}"));
                    conf.main.props.insert(key.clone(), value);
                    if let Some(p) = conf.pending.as_mut() {
                        p.section.props.remove(&key);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(vmid, key, error = %crate::error_chain(&e), "hotplug failed; change stays pending")
                }
            }
        }
        if conf.pending.as_ref().is_some_and(|p| p.is_empty()) {
            conf.pending = None;
        }
        Ok(to_free)
    }

    async fn plug_disk(
        &self,
        owner: &OwnerHandle,
        key: &DriveKey,
        argv: &[String],
    ) -> Result<bool, VmError> {
        let id = key.to_string();
        let Some(dev_arg) = args_of(argv, "-device").find(|a| has_id(a, &id)) else {
            return Ok(false);
        };
        let dev = device_args(dev_arg, "driver");
        if !bus_exists(owner, &dev).await {
            // A SCSI disk's controller may be missing (the VM's first SCSI disk): add it.
            let bus = dev.get("bus").and_then(Value::as_str).unwrap_or_default();
            let ctrl_id = bus.split('.').next().unwrap_or_default();
            let Some(ctrl) = args_of(argv, "-device").find(|a| has_id(a, ctrl_id)) else {
                return Ok(false);
            };
            let ctrl = device_args(ctrl, "driver");
            if !bus_exists(owner, &ctrl).await {
                return Ok(false);
            }
            owner.raw("device_add", Some(Value::Object(ctrl))).await?;
        }
        if args_of(argv, "-object").any(|o| o.contains(&format!("id=throttle-drive-{id}"))) {
            // Throttled disks need a throttle group object first; plugged at the next start.
            return Ok(false);
        }
        let nodes: Vec<Value> = args_of(argv, "-blockdev")
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .filter(|b| {
                b.get("node-name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n == format!("file-drive-{id}") || n == format!("drive-{id}"))
            })
            .collect();
        if nodes.is_empty() {
            // An empty CD-ROM: nothing to plug into.
            return Ok(false);
        }
        let mut added = Vec::new();
        for node in nodes {
            let name = node
                .get("node-name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Err(e) = owner.raw("blockdev-add", Some(node)).await {
                for n in added.iter().rev() {
                    let _ = owner
                        .raw("blockdev-del", Some(json!({ "node-name": n })))
                        .await;
                }
                return Err(e.into());
            }
            added.push(name);
        }
        if let Err(e) = owner.raw("device_add", Some(Value::Object(dev))).await {
            for n in added.iter().rev() {
                let _ = owner
                    .raw("blockdev-del", Some(json!({ "node-name": n })))
                    .await;
            }
            return Err(e.into());
        }
        Ok(true)
    }

    async fn plug_nic(
        &self,
        owner: &OwnerHandle,
        key: &str,
        argv: &[String],
    ) -> Result<bool, VmError> {
        let Some(dev_arg) = args_of(argv, "-device").find(|a| has_id(a, key)) else {
            return Ok(false);
        };
        let dev = device_args(dev_arg, "driver");
        if !bus_exists(owner, &dev).await {
            return Ok(false);
        }
        let Some(netdev_arg) = args_of(argv, "-netdev").find(|a| has_id(a, key)) else {
            return Ok(false);
        };
        let mut netdev = serde_json::Map::new();
        netdev.insert("type".into(), json!("user"));
        netdev.insert("id".into(), json!(key));
        let fwds: Vec<Value> = netdev_arg
            .split(',')
            .filter_map(|kv| kv.strip_prefix("hostfwd="))
            .map(|f| json!({ "str": f }))
            .collect();
        if !fwds.is_empty() {
            netdev.insert("hostfwd".into(), Value::Array(fwds));
        }
        owner.raw("netdev_add", Some(Value::Object(netdev))).await?;
        for obj in args_of(argv, "-object").filter(|o| o.contains(&format!("netdev={key},"))) {
            let mut o = device_args(obj, "qom-type");
            if let Some(m) = o
                .get("maxlen")
                .and_then(Value::as_str)
                .and_then(|m| m.parse::<u64>().ok())
            {
                o.insert("maxlen".into(), json!(m));
            }
            owner.raw("object-add", Some(Value::Object(o))).await?;
        }
        if let Err(e) = owner.raw("device_add", Some(Value::Object(dev))).await {
            let _ = owner.raw("netdev_del", Some(json!({ "id": key }))).await;
            return Err(e.into());
        }
        Ok(true)
    }

    async fn unplug(&self, owner: &OwnerHandle, key: &str, is_net: bool) -> Result<(), VmError> {
        owner.raw("device_del", Some(json!({ "id": key }))).await?;
        // PCI unplug needs the guest to release the device (ACPI hotplug).
        if !device_gone(owner, key, Duration::from_secs(10)).await {
            return Err(VmError::Refused(format!(
                "guest did not release {key} within 10 s"
            )));
        }
        if is_net {
            for dir in ["in", "out"] {
                let _ = owner
                    .raw(
                        "object-del",
                        Some(json!({ "id": format!("dump-{key}-{dir}") })),
                    )
                    .await;
            }
            owner.raw("netdev_del", Some(json!({ "id": key }))).await?;
        } else {
            for node in [
                format!("drive-{key}"),
                format!("fmt-drive-{key}"),
                format!("file-drive-{key}"),
            ] {
                let _ = owner
                    .raw("blockdev-del", Some(json!({ "node-name": node })))
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotplug_values() {
        let mut c = BTreeMap::new();
        assert_eq!(
            Hotplug::of(&c),
            Hotplug {
                disk: true,
                network: true
            }
        );
        c.insert("hotplug".into(), "0".into());
        assert_eq!(
            Hotplug::of(&c),
            Hotplug {
                disk: false,
                network: false
            }
        );
        c.insert("hotplug".into(), "network,usb".into());
        assert_eq!(
            Hotplug::of(&c),
            Hotplug {
                disk: false,
                network: true
            }
        );
    }

    #[test]
    fn device_args_split_with_escapes() {
        let m = device_args(
            "virtio-blk-pci,drive=drive-virtio1,id=virtio1,serial=a,,b,bus=pci.0",
            "driver",
        );
        assert_eq!(m["driver"], "virtio-blk-pci");
        assert_eq!(m["serial"], "a,b");
        assert_eq!(m["bus"], "pci.0");
    }
}
