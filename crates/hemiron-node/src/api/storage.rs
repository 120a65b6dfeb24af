//! `/nodes/{node}/storage` and storage content listings.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::{check_node, ApiError, ApiResult, Call, Data};
use crate::storage::POOL_CONTENT;
use crate::Node;

pub async fn list(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    check_node(&node, p.str("node").unwrap_or_default())?;
    let want_content = p.str("content").map(hemiron_pve::text::split_list);
    let only = p.str("storage");
    let mut out = Vec::new();
    for pool in node.vms.storage().pools() {
        if only.is_some_and(|s| s != pool.id) {
            continue;
        }
        if let Some(want) = &want_content {
            if !want.iter().all(|c| POOL_CONTENT.contains(&c.as_str())) {
                continue;
            }
        }
        let usage = node.vms.storage().usage(&pool.id).ok();
        let (total, used, avail) = usage
            .map(|u| (u.total, u.used, u.avail))
            .unwrap_or((0, 0, 0));
        out.push(json!({
            "storage": pool.id,
            "type": "dir",
            "content": POOL_CONTENT.join(","),
            "shared": u8::from(pool.shared),
            "active": 1,
            "enabled": 1,
            "total": total,
            "used": used,
            "avail": avail,
            "used_fraction": if total > 0 { used as f64 / total as f64 } else { 0.0 },
        }));
    }
    Data::new(out)
}

pub async fn content(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    check_node(&node, p.str("node").unwrap_or_default())?;
    let storage = p.str("storage").unwrap_or_default();
    let vmid = p
        .int("vmid")
        .map(u32::try_from)
        .transpose()
        .map_err(|_| ApiError::param("vmid", "invalid VMID"))?;
    let entries = node
        .vms
        .storage()
        .list(storage, p.str("content"), vmid)
        .await
        .map_err(|e| ApiError::from_err(&e))?;
    Data::new(entries)
}
