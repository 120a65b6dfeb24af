//! `/nodes/{node}/qemu/{vmid}/template`, `.../clone` and `.../cloudinit…`.

use std::sync::Arc;

use axum::extract::State;

use super::qemu::{power_task, target, user};
use super::{ApiError, ApiResult, Call, Data};
use crate::vm::template::CloneRequest;
use crate::Node;

pub async fn template(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let disk = p.str("disk").map(str::to_string);
    power_task(
        &node,
        &call,
        "qmtemplate",
        vmid,
        move |vms, ctx| async move { vms.make_template(vmid, disk.as_deref(), &ctx).await },
    )
}

pub async fn clone(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    if let Some(t) = p.str("target").filter(|t| *t != node.name) {
        return Err(ApiError::param(
            "target",
            format!("node '{t}' is not part of this node's cluster"),
        ));
    }
    if p.contains("pool") {
        return Err(ApiError::param(
            "pool",
            "resource pools are not supported by this node",
        ));
    }
    let newid = p
        .int("newid")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ApiError::param("newid", "invalid VMID"))?;
    let req = CloneRequest {
        newid,
        name: p.str("name").map(str::to_string),
        description: p.str("description").map(str::to_string),
        full: p.bool("full"),
        storage: p.str("storage").map(str::to_string),
        format: p.str("format").map(str::to_string),
        snapname: p.str("snapname").map(str::to_string),
        bwlimit: p.int("bwlimit").and_then(|b| u64::try_from(b).ok()),
    };
    node.vms.prepare_clone(vmid, &req)?;
    if let Err(e) = super::cluster::check_vmid_free_elsewhere(&node, newid, "newid").await {
        let _ = node.vms.store.remove(newid);
        return Err(e);
    }
    let vms = node.vms.clone();
    let spawned = node.tasks.spawn(
        "qmclone",
        &vmid.to_string(),
        &user(&call),
        move |ctx| async move {
            vms.clone_vm(vmid, req, &ctx).await?;
            Ok(())
        },
    );
    match spawned {
        Ok(upid) => Data::new(upid.to_string()),
        Err(e) => {
            let _ = node.vms.store.remove(newid);
            Err(e.into())
        }
    }
}

pub async fn cloudinit_get(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    Data::new(node.vms.cloudinit_status(vmid)?)
}

pub async fn cloudinit_put(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    node.vms.cloudinit_update(vmid).await?;
    Ok(Data::null())
}

pub async fn cloudinit_dump(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    let kind = call.params.str("type").unwrap_or("user").to_string();
    Data::new(node.vms.cloudinit_dump(vmid, &kind)?)
}
