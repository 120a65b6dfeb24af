//! The reconciler: every interval, reads each cluster's inventory and `/cluster/resources`,
//! and compares them with the VPSes the store has placed there. A VM stopped or started
//! behind the control plane's back changes the VPS's power state; a VM moved to another node
//! takes the VPS (and its reservation) along; a VM gone marks the VPS `missing`; CPU or
//! memory changed on the node are recorded as drift. Each change writes an event. Nothing is
//! reverted: the operator decides. VPSes with a job running are left to it.

use std::collections::HashMap;
use std::time::Duration;

use hemiron_pve_client::Resource;
use serde_json::json;

use super::clusters;
use crate::service::Services;
use crate::store::fleet::{self as store, EventRow, VpsRow};
use crate::store::{jobs, new_id, now_ms, StoreError};

/// Runs forever, one pass per interval.
pub async fn run(svc: Services) {
    loop {
        pass(&svc).await;
        tokio::time::sleep(svc.settings.reconcile_interval).await;
    }
}

/// One pass over every cluster.
pub async fn pass(svc: &Services) {
    let clusters = match store::clusters(&svc.db).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "reconciler: reading clusters failed");
            return;
        }
    };
    for c in clusters {
        clusters::refresh(svc, &c).await;
        let client = match svc.clients.get(&c) {
            Ok(cl) => cl,
            Err(e) => {
                tracing::warn!(cluster = %c.name, error = %crate::error_chain(&e), "reconciler: no client");
                continue;
            }
        };
        let resources = match tokio::time::timeout(
            Duration::from_secs(30),
            client.resources(Some("vm")),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(cluster = %c.name, error = %crate::error_chain(&e), "reconciler: resources failed");
                continue;
            }
            Err(_) => {
                tracing::warn!(cluster = %c.name, "reconciler: resources timed out");
                continue;
            }
        };
        if let Err(e) = compare(svc, &c.id, &resources).await {
            tracing::warn!(cluster = %c.name, error = %crate::error_chain(&e), "reconciler: compare failed");
        }
    }
}

async fn compare(
    svc: &Services,
    cluster_id: &str,
    resources: &[Resource],
) -> Result<(), StoreError> {
    let by_vmid: HashMap<i64, &Resource> = resources
        .iter()
        .filter_map(|r| Some((i64::try_from(r.vmid?).ok()?, r)))
        .collect();
    for vps in store::vps_on_cluster(&svc.db, cluster_id).await? {
        let Some(vmid) = vps.vmid else { continue };
        let mut tx = svc.db.begin().await?;
        if jobs::active_for_vps(&mut tx, &vps.id).await? > 0 {
            continue;
        }
        let observed = by_vmid.get(&vmid).copied();
        let Some((changed, kind, detail)) = diff(&vps, observed) else {
            continue;
        };
        let mut changed = changed;
        changed.updated_at = now_ms();
        if !store::update_vps(&mut tx, &changed).await? {
            // Changed meanwhile (a job, another server): next pass.
            continue;
        }
        if let (Some(from), Some(to)) = (&vps.node, &changed.node) {
            if from != to {
                // Its reservation follows it (the VM is there, whether it fits or not).
                store::release_on_node(
                    &mut tx,
                    cluster_id,
                    from,
                    vps.vcpus,
                    vps.memory_mib,
                    vps.disk_gib,
                )
                .await?;
                store::release_on_node(
                    &mut tx,
                    cluster_id,
                    to,
                    -vps.vcpus,
                    -vps.memory_mib,
                    -vps.disk_gib,
                )
                .await?;
            }
        }
        let e = EventRow {
            id: new_id(),
            at: now_ms(),
            tenant_id: Some(vps.tenant_id.clone()),
            vps_id: Some(vps.id.clone()),
            kind: kind.to_string(),
            detail,
        };
        store::add_event(&mut tx, &e).await?;
        tx.commit().await?;
        tracing::info!(vps = %vps.id, vmid, kind, "reconciler: change recorded");
    }
    Ok(())
}

/// What differs between the stored VPS and the VM observed (None: nothing).
fn diff(vps: &VpsRow, observed: Option<&Resource>) -> Option<(VpsRow, &'static str, String)> {
    let mut v = vps.clone();
    let Some(r) = observed else {
        if vps.state == "missing" {
            return None;
        }
        v.state = "missing".into();
        v.power = "unknown".into();
        return Some((
            v,
            "vps.missing",
            format!("VM {} is gone from its cluster", vps.vmid.unwrap_or(0)),
        ));
    };
    // Moved to another node by someone else (Proxmox's own tools, HA): follow it.
    if let Some(seen_on) = r.node.as_ref().filter(|n| Some(*n) != vps.node.as_ref()) {
        v.node = Some(seen_on.clone());
        return Some((
            v,
            "vps.moved",
            format!(
                "{} → {seen_on} (moved outside the control plane)",
                vps.node.as_deref().unwrap_or("?")
            ),
        ));
    }
    let power = r.status.clone().unwrap_or_else(|| "unknown".into());
    let state = if power == "running" {
        "running"
    } else {
        "stopped"
    };
    let memory_mib = r
        .maxmem
        .map(|m| i64::try_from(m / (1024 * 1024)).unwrap_or(i64::MAX));
    let vcpus = r.maxcpu.map(|c| c.round() as i64);
    let mut drift = serde_json::Map::new();
    if let Some(m) = memory_mib.filter(|m| *m != vps.memory_mib) {
        drift.insert(
            "memory_mib".into(),
            json!({"expected": vps.memory_mib, "observed": m}),
        );
    }
    if let Some(c) = vcpus.filter(|c| *c != vps.vcpus) {
        drift.insert(
            "vcpus".into(),
            json!({"expected": vps.vcpus, "observed": c}),
        );
    }
    let drift = (!drift.is_empty()).then(|| serde_json::Value::Object(drift).to_string());
    if power != vps.power || state != vps.state {
        v.power = power.clone();
        v.state = state.into();
        v.drift = drift.clone();
        return Some((
            v,
            "vps.power",
            format!("{} → {power} (seen on the cluster)", vps.power),
        ));
    }
    if drift != vps.drift {
        v.drift = drift.clone();
        let detail = drift.unwrap_or_else(|| "no drift any more".into());
        return Some((v, "vps.drift", detail));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vps() -> VpsRow {
        VpsRow {
            id: "v".into(),
            tenant_id: "t".into(),
            name: "web".into(),
            plan_id: None,
            template: "guest".into(),
            vcpus: 1,
            memory_mib: 256,
            disk_gib: 2,
            username: "hemiron".into(),
            ssh_keys: String::new(),
            full_clone: false,
            anti_affinity: None,
            cluster_id: Some("c".into()),
            node: Some("n1".into()),
            vmid: Some(101),
            state: "running".into(),
            power: "running".into(),
            ssh_address: None,
            web_address: None,
            drift: None,
            last_error: None,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn seen(status: &str, mem_mib: u64, cpus: f64) -> Resource {
        serde_json::from_value(serde_json::json!({
            "id": "qemu/101", "type": "qemu", "node": "n1", "vmid": 101, "status": status,
            "maxmem": mem_mib * 1024 * 1024, "maxcpu": cpus,
        }))
        .unwrap()
    }

    #[test]
    fn unchanged_vms_change_nothing() {
        assert!(diff(&vps(), Some(&seen("running", 256, 1.0))).is_none());
    }

    #[test]
    fn a_vm_stopped_on_the_node_stops_the_vps() {
        let (v, kind, _) = diff(&vps(), Some(&seen("stopped", 256, 1.0))).unwrap();
        assert_eq!(
            (v.state.as_str(), v.power.as_str(), kind),
            ("stopped", "stopped", "vps.power")
        );
    }

    #[test]
    fn a_vm_gone_marks_the_vps_missing_once() {
        let (v, kind, _) = diff(&vps(), None).unwrap();
        assert_eq!((v.state.as_str(), kind), ("missing", "vps.missing"));
        assert!(diff(&v, None).is_none());
    }

    #[test]
    fn a_vm_moved_elsewhere_takes_the_vps_along() {
        let mut r = seen("running", 256, 1.0);
        r.node = Some("n2".into());
        let (v, kind, detail) = diff(&vps(), Some(&r)).unwrap();
        assert_eq!((v.node.as_deref(), kind), (Some("n2"), "vps.moved"));
        assert!(detail.starts_with("n1 → n2"), "{detail}");
        assert!(diff(&v, Some(&r)).is_none());
    }

    #[test]
    fn a_resize_behind_our_back_is_drift_not_reverted() {
        let (v, kind, detail) = diff(&vps(), Some(&seen("running", 512, 2.0))).unwrap();
        assert_eq!(kind, "vps.drift");
        assert_eq!((v.memory_mib, v.vcpus), (256, 1), "the expected size stays");
        assert!(detail.contains("\"observed\":512"), "{detail}");
        assert!(
            diff(&v, Some(&seen("running", 512, 2.0))).is_none(),
            "recorded once"
        );
    }
}
