//! `/nodes/{node}/qemu/{vmid}/snapshot…`.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::qemu::{power_task, target, typed_value};
use super::{ApiResult, Call, Data};
use crate::Node;

fn snapname(call: &Call) -> String {
    call.params.str("snapname").unwrap_or_default().to_string()
}

pub async fn list(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    Data::new(node.vms.snapshot_list(vmid)?)
}

pub async fn create(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let name = snapname(&call);
    let description = p.str("description").map(str::to_string);
    let vmstate = p.bool("vmstate").unwrap_or(false);
    power_task(
        &node,
        &call,
        "qmsnapshot",
        vmid,
        move |vms, ctx| async move {
            vms.snapshot_create(vmid, &name, description, vmstate, &ctx)
                .await
        },
    )
}

pub async fn index(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    node.vms.snapshot_section(vmid, &snapname(&call))?;
    Data::new(json!([{ "cmd": "rollback" }, { "cmd": "config" }]))
}

pub async fn config_get(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    let section = node.vms.snapshot_section(vmid, &snapname(&call))?;
    let mut out = serde_json::Map::new();
    for (k, v) in &section.props {
        out.insert(k.clone(), typed_value(k, v));
    }
    if let Some(d) = section.description {
        out.insert("description".into(), json!(d));
    }
    Data::new(out)
}

pub async fn config_put(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    let description = call.params.str("description").map(str::to_string);
    node.vms
        .snapshot_describe(vmid, &snapname(&call), description)
        .await?;
    Ok(Data::null())
}

pub async fn rollback(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let name = snapname(&call);
    node.vms.snapshot_section(vmid, &name)?;
    let start = p.bool("start").unwrap_or(false);
    power_task(
        &node,
        &call,
        "qmrollback",
        vmid,
        move |vms, ctx| async move { vms.snapshot_rollback(vmid, &name, start, &ctx).await },
    )
}

pub async fn delete(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let name = snapname(&call);
    node.vms.snapshot_section(vmid, &name)?;
    let force = p.bool("force").unwrap_or(false);
    power_task(
        &node,
        &call,
        "qmdelsnapshot",
        vmid,
        move |vms, ctx| async move { vms.snapshot_delete(vmid, &name, force, &ctx).await },
    )
}
