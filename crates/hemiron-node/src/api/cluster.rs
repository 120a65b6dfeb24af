//! `/cluster/resources` and `/cluster/nextid`: this node's own part, and with a cluster
//! ([`crate::cluster`]) every peer's part too, asked at once.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;

use super::{ApiError, ApiResult, Call, Data};
use crate::cluster::{Cluster, SCOPE_HEADER};
use crate::Node;

/// The VMID range Proxmox uses by default (`datacenter.cfg` `next-id`).
const VMID_LOWER: u32 = 100;
const VMID_UPPER: u32 = 1_000_000;

/// The cluster whose peers a call should also ask: none for a node on its own, or when a
/// peer asks for this node's part only.
pub fn whole<'a>(node: &'a Node, headers: &HeaderMap) -> Option<&'a Cluster> {
    let own_part_only = headers
        .get(SCOPE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"local");
    node.cluster.as_ref().filter(|_| !own_part_only)
}

/// How Proxmox lists a node it cannot reach.
pub fn offline_node(name: &str) -> serde_json::Value {
    json!({
        "node": name,
        "id": format!("node/{name}"),
        "type": "node",
        "status": "offline",
    })
}

/// Refuses a VMID that another node of the cluster has (VMIDs are unique cluster-wide).
/// Called after the VMID is reserved here: of two nodes claiming one VMID at once, each
/// writes its claim before looking at the other's, so at least one sees the other and gives
/// up (both may; neither keeps a duplicate).
pub async fn check_vmid_free_elsewhere(
    node: &Node,
    vmid: u32,
    param: &str,
) -> Result<(), ApiError> {
    let Some(cluster) = &node.cluster else {
        return Ok(());
    };
    let elsewhere = cluster.vmids_elsewhere().await.map_err(ApiError::runtime)?;
    match elsewhere.get(&vmid) {
        Some(other) => Err(ApiError::param(
            param,
            format!("VM {vmid} already exists on node '{other}'"),
        )),
        None => Ok(()),
    }
}

pub async fn resources(State(node): State<Arc<Node>>, headers: HeaderMap, call: Call) -> ApiResult {
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
    if let Some(cluster) = whole(&node, &headers) {
        let path = match kind {
            Some(k) => format!("/cluster/resources?type={k}"),
            None => "/cluster/resources".to_string(),
        };
        for (peer, part) in cluster.parts(&path).await {
            match part {
                Ok(serde_json::Value::Array(entries)) => out.extend(entries),
                Ok(_) | Err(_) => {
                    if let Err(e) = &part {
                        tracing::warn!(peer = %peer.name, error = %e, "node unreachable");
                    }
                    if kind.is_none() || kind == Some("node") {
                        out.push(offline_node(&peer.name));
                    }
                }
            }
        }
    }
    Data::new(out)
}

pub async fn nextid(State(node): State<Arc<Node>>, headers: HeaderMap, call: Call) -> ApiResult {
    let cluster = whole(&node, &headers);
    let elsewhere = match cluster {
        Some(c) => c.vmids_elsewhere().await.map_err(ApiError::runtime)?,
        None => Default::default(),
    };
    if let Some(vmid) = call.params.int("vmid") {
        let vmid = u32::try_from(vmid).map_err(|_| ApiError::param("vmid", "invalid VMID"))?;
        if node.vms.exists(vmid) || elsewhere.contains_key(&vmid) {
            return Err(ApiError::param("vmid", format!("VM {vmid} already exists")));
        }
        return Data::new(vmid);
    }
    let mut used = node.vms.vmids();
    used.extend(elsewhere.keys().copied());
    let next = (VMID_LOWER..VMID_UPPER)
        .find(|id| !used.contains(id))
        .ok_or_else(|| ApiError::runtime("unable to get any free VMID in range [100, 1000000]"))?;
    Data::new(next)
}
