//! `GET /nodes/{node}/qemu/{vmid}/migrate` (can this VM move, and where to?), `POST` (move
//! it), and the calls a migration's source makes on its target
//! (`/nodes/{node}/hemiron/migration/{vmid}/{prepare|status|forwards|commit|abort}`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use serde_json::json;

use super::qemu::{target, user};
use super::{check_node, ApiError, ApiResult, Call, Data};
use crate::storage::parse_volid;
use crate::vm::migrate::{MigrateRequest, Prepare, StorageMap};
use crate::Node;

/// `POST …/migrate`: the `qmigrate` task.
pub async fn migrate(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let to = p.str("target").unwrap_or_default().to_string();
    if to == node.name {
        return Err(ApiError::param("target", "target is local node."));
    }
    let peer = node
        .cluster
        .as_ref()
        .and_then(|c| c.peer(&to))
        .ok_or_else(|| ApiError::param("target", format!("no such cluster node '{to}'")))?;
    for (key, why) in [
        (
            "migration_network",
            "migrations use the target's API address",
        ),
        ("force", "VMs with local devices cannot move"),
    ] {
        if p.contains(key) {
            return Err(ApiError::param(key, format!("not supported: {why}")));
        }
    }
    if p.bool("with-conntrack-state") == Some(true) {
        return Err(ApiError::param(
            "with-conntrack-state",
            "not supported: guests use user-mode networking, without host conntrack state",
        ));
    }
    if p.str("migration_type") == Some("secure") {
        return Err(ApiError::param(
            "migration_type",
            "not supported: the migration stream goes over plain TCP between the nodes (insecure); use a trusted network",
        ));
    }
    let items: Vec<String> = hemiron_pve::text::split_list(p.str("targetstorage").unwrap_or(""))
        .iter()
        .map(|s| s.to_string())
        .collect();
    let storage_map = StorageMap::parse(&items).map_err(|e| ApiError::param("targetstorage", e))?;
    let host = peer
        .url
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
        .ok_or_else(|| ApiError::runtime(format!("node '{to}' has no usable URL")))?;
    let req = MigrateRequest {
        target: to,
        online: p.bool("online").unwrap_or(false),
        with_local_disks: p.bool("with-local-disks").unwrap_or(false),
        storage_map,
        bwlimit: p
            .int("bwlimit")
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0),
    };
    let vms = node.vms.clone();
    let upid = node.tasks.spawn(
        "qmigrate",
        &vmid.to_string(),
        &user(&call),
        move |ctx| async move {
            vms.migrate(vmid, req, peer, host, &ctx).await?;
            Ok(())
        },
    )?;
    Data::new(upid.to_string())
}

/// The target's side of a migration. Only other nodes of the cluster call this.
pub async fn incoming(
    State(node): State<Arc<Node>>,
    Path((name, vmid, action)): Path<(String, u32, String)>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> ApiResult {
    check_node(&node, &name)?;
    // Run to the end even if the caller hangs up: a prepare cut off halfway would leave a
    // QEMU and files that no table knows of.
    let vms = node.vms.clone();
    let listen = node.listen.ip();
    let work = tokio::spawn(async move {
        match action.as_str() {
            "prepare" => {
                let req: Prepare = serde_json::from_value(body)
                    .map_err(|e| ApiError::BadRequest(format!("invalid prepare request: {e}")))?;
                Data::new(vms.incoming_prepare(vmid, req, listen).await?)
            }
            "status" => Data::new(vms.incoming_renew(vmid)?),
            "forwards" => {
                vms.incoming_take_forwards(vmid).await?;
                Ok(Data::null())
            }
            "commit" => {
                let resume = body["resume"].as_bool().unwrap_or(false);
                Data::new(vms.incoming_commit(vmid, resume).await?)
            }
            "abort" => {
                vms.incoming_abort(vmid, body["id"].as_str()).await?;
                Ok(Data::null())
            }
            other => Err(ApiError::NotImplemented(format!(
                "no migration action '{other}'"
            ))),
        }
    });
    work.await
        .map_err(|e| ApiError::runtime(format!("migration call failed: {e}")))?
}

pub async fn check(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let loaded = node.vms.store.load(vmid)?;
    let conf = &loaded.conf;
    let storage = node.vms.storage();

    // Disks on storage only this node has: the config's (CD-ROMs and unused ones too), and
    // images of the VM that no config line names.
    let mut local_disks = Vec::new();
    let mut used_storages = BTreeSet::new();
    let referenced = crate::vm::update::referenced_volumes(conf);
    let unused: BTreeSet<String> = conf
        .main
        .props
        .iter()
        .filter(|(k, _)| k.starts_with("unused"))
        .map(|(_, v)| v.clone())
        .collect();
    let mut volumes: Vec<(String, bool)> = referenced
        .iter()
        .map(|v| {
            let cdrom = conf
                .main
                .props
                .values()
                .any(|line| line.starts_with(&format!("{v},")) && line.contains("media=cdrom"));
            (v.clone(), cdrom)
        })
        .collect();
    for pool in storage.pools() {
        if let Ok(entries) = storage.list(&pool.id, Some("images"), Some(vmid)).await {
            for e in entries {
                if !referenced.contains(&e.volid) {
                    volumes.push((e.volid, false));
                }
            }
        }
    }
    for (volid, cdrom) in volumes {
        let Ok(v) = parse_volid(&volid) else {
            continue;
        };
        used_storages.insert(v.storage.clone());
        let shared = storage.pool(&v.storage).is_ok_and(|p| p.shared);
        if shared {
            continue;
        }
        let size = storage.volume_size(&v).await.unwrap_or(0);
        local_disks.push(json!({
            "volid": volid,
            "size": size,
            "cdrom": cdrom,
            "is_unused": unused.contains(&volid) || !referenced.contains(&volid),
        }));
    }
    let local_resources = crate::vm::migrate::local_devices(conf);

    // Nodes that answer and have every storage the VM's volumes use.
    let mut allowed = Vec::new();
    let mut not_allowed = BTreeMap::new();
    if let Some(cluster) = &node.cluster {
        let peers = cluster.members().peers.clone();
        for peer in peers {
            if p.str("target").is_some_and(|t| t != peer.name) {
                continue;
            }
            let path = format!("/nodes/{}/storage", peer.name);
            match peer.own_part(&path).await {
                Ok(list) => {
                    let theirs: BTreeSet<String> = list
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s["storage"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let missing: Vec<&String> = used_storages.difference(&theirs).collect();
                    if missing.is_empty() {
                        allowed.push(peer.name.clone());
                    } else {
                        not_allowed.insert(
                            peer.name.clone(),
                            json!({ "unavailable_storages": missing }),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.name, error = %e, "node unreachable");
                    not_allowed.insert(
                        peer.name.clone(),
                        json!({ "unavailable_storages": used_storages, "unreachable": 1 }),
                    );
                }
            }
        }
    }
    Data::new(json!({
        "running": node.vms.running(vmid).is_some(),
        "allowed_nodes": allowed,
        "not_allowed_nodes": not_allowed,
        "local_disks": local_disks,
        "local_resources": local_resources,
        "mapped-resources": [],
        "mapped-resource-info": {},
        "has-dbus-vmstate": false,
        "dependent-ha-resources": [],
    }))
}
