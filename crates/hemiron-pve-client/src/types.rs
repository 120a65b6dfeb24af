//! Typed answers of the calls the control plane makes, lenient where Proxmox is loose:
//! booleans arrive as `0`/`1` or `true`/`false`, some integers as strings (`/cluster/nextid`),
//! and fields come and go between versions (every field the schema marks optional is an
//! `Option` here; Hemiron-only fields such as `hemiron-forwards` are optional, so real PVE
//! answers decode).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// Accepts `true`/`false`, `0`/`1` and `"0"`/`"1"`.
pub fn pve_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::Number(n)) => Some(n.as_f64().unwrap_or(0.0) != 0.0),
        Some(serde_json::Value::String(s)) => {
            Some(matches!(s.as_str(), "1" | "true" | "yes" | "on"))
        }
        _ => None,
    })
}

/// Accepts a number or a numeric string.
pub fn pve_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

/// Accepts a number or a numeric string (required field).
pub fn pve_u64_req<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    pve_u64(d)?.ok_or_else(|| serde::de::Error::custom("expected a number"))
}

/// `GET /version`.
#[derive(Debug, Clone, Deserialize)]
pub struct Version {
    pub version: String,
    pub release: String,
    #[serde(default)]
    pub repoid: Option<String>,
    /// Set by Hemiron nodes only.
    #[serde(default)]
    pub hemiron: Option<String>,
}

/// An entry of `GET /nodes`.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    pub status: String,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxcpu: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub uptime: Option<u64>,
    #[serde(default)]
    pub ssl_fingerprint: Option<String>,
}

/// `GET /nodes/{node}/status` (the parts the control plane reads).
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub cpuinfo: Option<CpuInfo>,
    #[serde(default)]
    pub memory: Option<MemoryInfo>,
    #[serde(default)]
    pub pveversion: Option<String>,
    /// Hemiron nodes report the accelerator (`kvm`/`tcg`); real PVE always runs KVM.
    #[serde(default)]
    pub accel: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CpuInfo {
    #[serde(default, deserialize_with = "pve_u64")]
    pub cpus: Option<u64>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemoryInfo {
    #[serde(default, deserialize_with = "pve_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub used: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub free: Option<u64>,
}

/// An entry of `GET /cluster/resources`.
#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub vmid: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "pve_bool")]
    pub template: Option<bool>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxdisk: Option<u64>,
    #[serde(default)]
    pub maxcpu: Option<f64>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub storage: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
}

/// An entry of `GET /nodes/{node}/qemu`, also `status/current`.
#[derive(Debug, Clone, Deserialize)]
pub struct VmStatus {
    #[serde(deserialize_with = "pve_u64_req")]
    pub vmid: u64,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub qmpstatus: Option<String>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub uptime: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "pve_u64")]
    pub maxdisk: Option<u64>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default, deserialize_with = "pve_bool")]
    pub template: Option<bool>,
    /// Hemiron nodes: guest port → `127.0.0.1:PORT` on the node.
    #[serde(default, rename = "hemiron-forwards")]
    pub forwards: Option<BTreeMap<String, String>>,
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskStatus {
    pub upid: String,
    pub node: String,
    pub status: String,
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(rename = "type")]
    pub task_type: String,
    pub id: String,
    pub user: String,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// Proxmox's rule: a task succeeded if it ended with `OK` or `WARNINGS: n`.
    pub fn succeeded(&self) -> bool {
        self.exitstatus
            .as_deref()
            .is_some_and(|s| s == "OK" || s.starts_with("WARNINGS"))
    }
}

/// A line of a task log.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskLogLine {
    pub n: u64,
    pub t: String,
}

/// `POST /access/ticket`.
#[derive(Debug, Clone, Deserialize)]
pub struct Ticket {
    pub username: String,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default, rename = "CSRFPreventionToken")]
    pub csrf: Option<String>,
    #[serde(default, rename = "NeedTFA", deserialize_with = "pve_bool")]
    pub need_tfa: Option<bool>,
}

/// The node name in a UPID (`UPID:node:…`).
pub fn upid_node(upid: &str) -> Option<&str> {
    let mut parts = upid.split(':');
    (parts.next()? == "UPID").then_some(())?;
    parts.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_fields() {
        let r: Resource = serde_json::from_str(
            r#"{"id":"qemu/100","type":"qemu","vmid":"100","template":0,"node":"pve1","unknown":1}"#,
        )
        .unwrap();
        assert_eq!(r.vmid, Some(100));
        assert_eq!(r.template, Some(false));
        let s: VmStatus = serde_json::from_str(
            r#"{"vmid":100,"status":"running","template":true,"hemiron-forwards":{"80":"127.0.0.1:5"}}"#,
        )
        .unwrap();
        assert_eq!(s.forwards.unwrap()["80"], "127.0.0.1:5");
        assert_eq!(
            upid_node("UPID:pve1:0000:0000:0000:qmstart:100:root@pam:"),
            Some("pve1")
        );
        assert_eq!(upid_node("garbage"), None);
    }
}
