//! `/cluster/resources` and `/cluster/nextid` for a node that is its own cluster.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::{ApiError, ApiResult, Call, Data};
use crate::Node;

/// The VMID range Proxmox uses by default (`datacenter.cfg` `next-id`).
const VMID_LOWER: u32 = 100;
const VMID_UPPER: u32 = 1_000_000;

pub async fn resources(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let kind = call.params.str("type");
    let mut out = Vec::new();
    if kind.is_none() || kind == Some("vm") {
        for vm in node.vms.list_status().await {
            let mut entry = vm.to_json();
            entry["id"] = json!(format!("qemu/{}", vm.vmid));
            entry["type"] = json!("qemu");
            entry["node"] = json!(node.name);
            out.push(entry);
        }
    }
    if kind.is_none() || kind == Some("node") {
        let mut entry = super::nodes::node_entry(&node);
        entry["cgroup-mode"] = json!(2);
        out.push(entry);
    }
    if kind.is_none() || kind == Some("storage") {
        for pool in node.vms.storage().pools() {
            let usage = node.vms.storage().usage(&pool.id).ok();
            out.push(json!({
                "id": format!("storage/{}/{}", node.name, pool.id),
                "type": "storage",
                "node": node.name,
                "storage": pool.id,
                "status": "available",
                "plugintype": "dir",
                "content": crate::storage::POOL_CONTENT.join(","),
                "shared": u8::from(pool.shared),
                "disk": usage.map(|u| u.used).unwrap_or(0),
                "maxdisk": usage.map(|u| u.total).unwrap_or(0),
            }));
        }
    }
    Data::new(out)
}

pub async fn nextid(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    if let Some(vmid) = call.params.int("vmid") {
        let vmid = u32::try_from(vmid).map_err(|_| ApiError::param("vmid", "invalid VMID"))?;
        if node.vms.exists(vmid) {
            return Err(ApiError::param("vmid", format!("VM {vmid} already exists")));
        }
        return Data::new(vmid);
    }
    let used = node.vms.vmids();
    let next = (VMID_LOWER..VMID_UPPER)
        .find(|id| !used.contains(id))
        .ok_or_else(|| ApiError::runtime("unable to get any free VMID in range [100, 1000000]"))?;
    Data::new(next)
}
