//! The drain job (`node.drain`): moves every VPS off a node in maintenance, at most
//! [`AT_ONCE`] migrations at a time, least disruptive first (stopped VPSes, then the
//! smallest). It reads the store afresh every round, so a server that dies mid-drain picks
//! it up where the store says it is. Taking the node out of maintenance ends it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Claim, JobError};
use crate::fleet::hosts::DrainPayload;
use crate::fleet::vps::{best_other_node, queue_migration};
use crate::service::Services;
use crate::store::fleet::{self as store, EventRow};
use crate::store::{jobs, new_id, now_ms};

/// Migrations a drain runs at once.
pub const AT_ONCE: usize = 2;
/// Failed migrations of one VPS after which the drain gives up.
const TRIES: u32 = 3;

/// What the drain did so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainCheckpoint {
    /// VPS id → migrations queued for it.
    pub queued: BTreeMap<String, u32>,
    /// The VPSes on the node when the drain began.
    pub total: Option<usize>,
    pub progress: Option<String>,
}

pub async fn run(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let p: DrainPayload = claim.payload()?;
    let mut ck: DrainCheckpoint = claim.checkpoint_data();
    loop {
        let node = store::nodes(&svc.db, None)
            .await?
            .into_iter()
            .find(|n| n.id == p.node_id)
            .ok_or_else(|| JobError::Permanent("the node is gone".into()))?;
        if !node.maintenance {
            return end(svc, claim, &node.name, "left maintenance; drain stopped").await;
        }
        let here: Vec<_> = store::vps_on_cluster(&svc.db, &node.cluster_id)
            .await?
            .into_iter()
            .filter(|v| v.node.as_deref() == Some(node.name.as_str()))
            .collect();
        let total = *ck.total.get_or_insert(here.len());
        if here.is_empty() {
            return end(
                svc,
                claim,
                &node.name,
                &format!("{total} VPS(es) moved off"),
            )
            .await;
        }
        let mut tx = svc.db.begin().await?;
        let mut busy = 0;
        let mut idle = Vec::new();
        for v in &here {
            if jobs::active_for_vps(&mut tx, &v.id).await? > 0 {
                busy += 1;
            } else {
                idle.push(v.clone());
            }
        }
        // Least disruptive first: stopped VPSes move without a pause, small ones quickly.
        idle.sort_by_key(|v| (v.state != "stopped", v.memory_mib, v.name.clone()));
        for v in idle {
            if busy >= AT_ONCE {
                break;
            }
            if !matches!(v.state.as_str(), "running" | "stopped") {
                return Err(JobError::Permanent(format!(
                    "VPS {} is {}: it cannot move",
                    v.name, v.state
                )));
            }
            let tries = ck.queued.entry(v.id.clone()).or_insert(0);
            if *tries >= TRIES {
                return Err(JobError::Permanent(format!(
                    "VPS {} did not move after {TRIES} migrations",
                    v.name
                )));
            }
            let target = best_other_node(svc, &mut tx, &v)
                .await
                .map_err(|e| JobError::Transient(e.to_string()))?
                .ok_or_else(|| {
                    JobError::Permanent(format!(
                        "no other node of the cluster can take VPS {}",
                        v.name
                    ))
                })?;
            queue_migration(&mut tx, &v, &target)
                .await
                .map_err(|e| JobError::Transient(e.to_string()))?;
            *tries += 1;
            busy += 1;
        }
        ck.progress = Some(format!(
            "{} of {total} moved off {}, {busy} moving",
            total.saturating_sub(here.len()),
            node.name
        ));
        claim.reach_in(&mut tx, "draining", &ck).await?;
        tx.commit().await?;
        svc.wakeup.notify();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn end(svc: &Services, claim: &mut Claim, node: &str, what: &str) -> Result<(), JobError> {
    let mut tx = svc.db.begin().await?;
    store::add_event(
        &mut tx,
        &EventRow {
            id: new_id(),
            at: now_ms(),
            tenant_id: None,
            vps_id: None,
            kind: "node.drained".into(),
            detail: format!("{node}: {what}"),
        },
    )
    .await?;
    claim.finish_in(&mut tx, None).await?;
    tx.commit().await?;
    Ok(())
}

/// A drain that failed for good: the node stays in maintenance, what moved stays moved.
pub async fn fail(svc: &Services, claim: &mut Claim, error: &str) -> Result<(), JobError> {
    let mut tx = svc.db.begin().await?;
    claim.finish_in(&mut tx, Some(error)).await?;
    tx.commit().await?;
    Ok(())
}
