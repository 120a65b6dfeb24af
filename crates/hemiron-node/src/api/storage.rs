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

/// The volume a `/content/{volume}` call names: a full volume ID, or one relative to the
/// path's storage.
fn volume_of(call: &Call) -> Result<crate::storage::VolumeId, ApiError> {
    let p = &call.params;
    let volume = p.str("volume").unwrap_or_default();
    let full = if volume.contains(':') {
        volume.to_string()
    } else {
        format!("{}:{volume}", p.str("storage").unwrap_or_default())
    };
    let volid =
        crate::storage::parse_volid(&full).map_err(|e| ApiError::param("volume", e.to_string()))?;
    if let Some(s) = p.str("storage").filter(|s| *s != volid.storage) {
        return Err(ApiError::param(
            "volume",
            format!("volume '{full}' is not on storage '{s}'"),
        ));
    }
    Ok(volid)
}

/// The node check, the named volume and its file (which must exist).
fn existing_volume(
    node: &Node,
    call: &Call,
) -> Result<(crate::storage::VolumeId, std::path::PathBuf), ApiError> {
    check_node(node, call.params.str("node").unwrap_or_default())?;
    let volid = volume_of(call)?;
    let path = node
        .vms
        .storage()
        .existing_path(&volid)
        .map_err(|e| ApiError::param("volume", e.to_string()))?;
    Ok((volid, path))
}

/// `GET .../content/{volume}`: a volume's attributes.
pub async fn volume_get(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let (volid, path) = existing_volume(&node, &call)?;
    let storage = node.vms.storage();
    let entries = storage
        .list(&volid.storage, None, None)
        .await
        .map_err(|e| ApiError::from_err(&e))?;
    let wanted = volid.to_string();
    let entry = entries
        .iter()
        .find(|e| e.volid == wanted)
        .ok_or_else(|| ApiError::runtime(format!("volume '{wanted}' is not listed")))?;
    Data::new(json!({
        "path": path.to_string_lossy(),
        "format": entry.format,
        "size": entry.size,
        "used": entry.used.unwrap_or(entry.size),
        "notes": entry.notes,
        "protected": entry.protected.unwrap_or(0),
    }))
}

/// `PUT .../content/{volume}`: a backup's notes and protection.
pub async fn volume_put(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let (volid, path) = existing_volume(&node, &call)?;
    if !matches!(volid.kind(), hemiron_pve::volume::VolumeKind::Backup(_)) {
        return Err(ApiError::param(
            "volume",
            "only backups have notes and protection here",
        ));
    }
    let sidecar = |ext: &str| crate::storage::backup_sidecar(&path, ext);
    let failed = |e: std::io::Error| ApiError::runtime(format!("cannot update '{volid}': {e}"));
    if let Some(notes) = call.params.str("notes") {
        if notes.is_empty() {
            let _ = std::fs::remove_file(sidecar("notes"));
        } else {
            crate::fsutil::write_atomic(&sidecar("notes"), notes.as_bytes(), 0o644)
                .map_err(failed)?;
        }
    }
    match call.params.bool("protected") {
        Some(true) => {
            crate::fsutil::write_atomic(&sidecar("protected"), b"", 0o644).map_err(failed)?
        }
        Some(false) => {
            let _ = std::fs::remove_file(sidecar("protected"));
        }
        None => {}
    }
    Ok(Data::null())
}

/// `DELETE .../content/{volume}`: removes a volume no VM here uses (a protected backup stays).
pub async fn volume_delete(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let (volid, path) = existing_volume(&node, &call)?;
    let storage = node.vms.storage();
    let wanted = volid.to_string();
    match volid.kind() {
        hemiron_pve::volume::VolumeKind::Backup(_) => {
            if crate::storage::backup_sidecar(&path, "protected").exists() {
                return Err(ApiError::runtime(format!(
                    "backup '{wanted}' is protected; remove its protection first"
                )));
            }
            storage
                .remove_backup(&volid)
                .map_err(|e| ApiError::from_err(&e))?;
        }
        hemiron_pve::volume::VolumeKind::Image { .. } => {
            // 0: no VM of this node claims the volume in this call.
            if let Some(owner) = node.vms.foreign_owner(0, &volid) {
                return Err(ApiError::runtime(format!(
                    "volume '{wanted}' belongs to VM {owner} on another node; only that node may delete it"
                )));
            }
            for id in node.vms.vmids() {
                let used = node
                    .vms
                    .store
                    .load(id)
                    .map(|l| crate::vm::update::referenced_volumes(&l.conf).contains(&wanted))
                    .unwrap_or(false);
                if used {
                    return Err(ApiError::runtime(format!(
                        "volume '{wanted}' is used by VM {id}; remove it from its config first"
                    )));
                }
            }
            storage.free(&volid).map_err(|e| ApiError::from_err(&e))?;
        }
        _ => {
            std::fs::remove_file(&path)
                .map_err(|e| ApiError::runtime(format!("cannot remove '{wanted}': {e}")))?;
        }
    }
    Ok(Data::null())
}

/// `GET /nodes/{node}/vzdump/extractconfig`: the config inside a backup archive.
pub async fn extractconfig(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let (_, path) = existing_volume(&node, &call)?;
    let archive = crate::vm::backup::Archive::open(&path).map_err(|e| ApiError::from_err(&e))?;
    let text = hemiron_pve::config::write(&archive.conf)
        .map_err(|e| ApiError::runtime(format!("config not readable: {e}")))?;
    Data::new(text)
}
