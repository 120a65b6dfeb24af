//! `GET /nodes/{node}/qemu/{vmid}/migrate`: can this VM move, and where to?

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::qemu::target;
use super::{ApiResult, Call, Data};
use crate::storage::parse_volid;
use crate::Node;

/// Config keys for host devices a VM cannot take along.
const LOCAL_DEVICE_KEYS: &[&str] = &["hostpci", "usb", "serial", "parallel"];

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
    let local_resources: Vec<String> = conf
        .main
        .props
        .keys()
        .filter(|k| {
            LOCAL_DEVICE_KEYS.iter().any(|prefix| {
                k.strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .cloned()
        .collect();

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
