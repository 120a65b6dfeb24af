//! `/version`, `/nodes` and `/nodes/{node}/status`.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::{check_node, ApiResult, Call, Data};
use crate::{hoststats, Node};

/// The Proxmox VE release a node reports and behaves as.
pub const PVE_VERSION: &str = "9.1.1";
pub const PVE_RELEASE: &str = "9.1";

pub async fn version(State(_node): State<Arc<Node>>, _call: Call) -> ApiResult {
    Data::new(json!({
        "version": PVE_VERSION,
        "release": PVE_RELEASE,
        "repoid": crate::REPOID,
        "console": "html5",
        "hemiron": env!("CARGO_PKG_VERSION"),
    }))
}

/// A node as `/nodes` and `/cluster/resources` list it.
pub fn node_entry(node: &Node) -> serde_json::Value {
    let mem = hoststats::memory();
    let cpu = hoststats::cpu_info();
    let (total, used) = node
        .vms
        .storage()
        .usage("local")
        .map(|u| (u.total, u.used))
        .unwrap_or((0, 0));
    json!({
        "node": node.name,
        "id": format!("node/{}", node.name),
        "type": "node",
        "status": "online",
        "cpu": node.host.cpu_usage(),
        "maxcpu": cpu.cpus,
        "mem": mem.used,
        "maxmem": mem.total,
        "disk": used,
        "maxdisk": total,
        "uptime": hoststats::uptime(),
        "level": "",
    })
}

pub async fn list(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    _call: Call,
) -> ApiResult {
    let mut entry = node_entry(&node);
    entry["ssl_fingerprint"] = json!(node.fingerprint.clone().unwrap_or_default());
    let mut out = vec![entry];
    if let Some(cluster) = super::cluster::whole(&node, &headers) {
        for (peer, part) in cluster.parts("/nodes").await {
            match part {
                Ok(serde_json::Value::Array(entries)) => out.extend(entries),
                other => {
                    if let Err(e) = other {
                        tracing::warn!(peer = %peer.name, error = %e, "node unreachable");
                    }
                    out.push(super::cluster::offline_node(&peer.name));
                }
            }
        }
    }
    Data::new(out)
}

pub async fn status(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    check_node(&node, call.params.str("node").unwrap_or_default())?;
    let mem = hoststats::memory();
    let cpu = hoststats::cpu_info();
    let (sysname, release, kversion, machine) = hoststats::kernel();
    let root = rustix::fs::statvfs(node.data_dir.root()).ok();
    let (rtotal, rfree, ravail) = root
        .map(|s| {
            (
                s.f_blocks * s.f_frsize,
                s.f_bfree * s.f_frsize,
                s.f_bavail * s.f_frsize,
            )
        })
        .unwrap_or((0, 0, 0));
    Data::new(json!({
        "cpu": node.host.cpu_usage(),
        "cpuinfo": {
            "model": cpu.model,
            "cpus": cpu.cpus,
            "sockets": cpu.sockets,
            "cores": cpu.cores,
            "mhz": cpu.mhz,
            "flags": cpu.flags,
            "hvm": if node.accel == crate::Accel::Kvm { "1" } else { "0" },
        },
        "memory": {
            "total": mem.total,
            "used": mem.used,
            "free": mem.free,
            "available": mem.available,
        },
        "swap": {
            "total": mem.swap_total,
            "free": mem.swap_free,
            "used": mem.swap_total.saturating_sub(mem.swap_free),
        },
        "rootfs": {
            "total": rtotal,
            "used": rtotal.saturating_sub(rfree),
            "free": rfree,
            "avail": ravail,
        },
        "loadavg": hoststats::loadavg(),
        "uptime": hoststats::uptime(),
        "pveversion": format!("pve-manager/{PVE_VERSION}/{}", crate::REPOID),
        "kversion": format!("{sysname} {release} {kversion}"),
        "current-kernel": {
            "sysname": sysname,
            "release": release,
            "version": kversion,
            "machine": machine,
        },
        "boot-info": { "mode": "legacy-bios" },
        "accel": node.accel.as_str(),
        "accel-reason": node.accel_reason,
        "hemiron-version": env!("CARGO_PKG_VERSION"),
    }))
}
