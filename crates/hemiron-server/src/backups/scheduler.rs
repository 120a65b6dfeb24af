//! Runs backup schedules: each due schedule queues one backup and moves on to its next time.
//!
//! Every server runs this loop; a schedule is moved on by a conditional write (its next
//! run still the one read), so exactly one server queues each run. A schedule whose time
//! passed while no server ran is due at once and runs once, however many runs it missed
//! (the event says how many).

use std::time::Duration;

use tracing::Instrument;

use crate::service::Services;
use crate::store::backups::{self as store, ScheduleRow};
use crate::store::fleet::{self as fleet_store, EventRow};
use crate::store::{new_id, now_ms, Tx};

/// Runs until the runtime stops.
pub async fn run(svc: Services) {
    loop {
        if let Err(e) = tick(&svc)
            .instrument(tracing::info_span!("backup-scheduler"))
            .await
        {
            tracing::warn!(error = %crate::error_chain(&e), "running backup schedules failed");
        }
        // Until the next run (on the clock, which may run fast), at most a second: other
        // servers add and change schedules.
        let wait = match store::next_due(&svc.db).await {
            Ok(Some(next)) => svc.clock.real(next - svc.clock.now_ms()),
            _ => Duration::from_secs(1),
        };
        tokio::time::sleep(wait.clamp(Duration::from_millis(20), Duration::from_secs(1))).await;
    }
}

async fn tick(svc: &Services) -> Result<(), crate::error::ServiceError> {
    let now = svc.clock.now_ms();
    for s in store::due_schedules(&svc.db, now, 100).await? {
        run_one(svc, &s, now).await?;
    }
    Ok(())
}

async fn event(
    tx: &mut Tx,
    s: &ScheduleRow,
    kind: &str,
    detail: String,
) -> Result<(), crate::store::StoreError> {
    fleet_store::add_event(
        tx,
        &EventRow {
            id: new_id(),
            at: now_ms(),
            tenant_id: Some(s.tenant_id.clone()),
            vps_id: Some(s.vps_id.clone()),
            kind: kind.into(),
            detail,
        },
    )
    .await
}

async fn run_one(
    svc: &Services,
    s: &ScheduleRow,
    now: i64,
) -> Result<(), crate::error::ServiceError> {
    let timing = super::timing_of(s);
    // The next run after now: runs missed while no server was up are not made up one by one.
    let next = timing
        .as_ref()
        .and_then(|t| t.next_after(now))
        .unwrap_or(i64::MAX);
    let missed = timing
        .as_ref()
        .map(|t| {
            let mut n = 0u32;
            let mut at = s.next_run_at;
            while let Some(x) = t.next_after(at).filter(|x| *x <= now) {
                n += 1;
                at = x;
                if n >= 1000 {
                    break;
                }
            }
            n
        })
        .unwrap_or(0);
    let mut tx = svc.db.begin().await?;
    let vps = fleet_store::vps_tx(&mut tx, &s.vps_id).await?;
    let skip = match &vps {
        None => Some("the VPS is gone".to_string()),
        Some(v) if !matches!(v.state.as_str(), "running" | "stopped") => {
            Some(format!("the VPS is {}", v.state))
        }
        Some(_) if store::schedule_busy(&mut tx, &s.id).await? => {
            Some("the schedule's previous backup is still being made".to_string())
        }
        Some(v) if super::plan_limit(&svc.db, v).await? == 0 => {
            Some("the VPS's plan includes no backups".to_string())
        }
        Some(_) => None,
    };
    let queued = match (&vps, &skip) {
        (Some(v), None) => {
            Some(super::queue_backup(&mut tx, v, Some(&s.id), &s.mode, None, now).await?)
        }
        _ => None,
    };
    let job_id = queued.as_ref().map(|(_, j)| j.id.as_str());
    if !store::advance_schedule(&mut tx, &s.id, s.next_run_at, next, now, job_id).await? {
        // Another server ran it: this transaction (and its job) goes.
        return Ok(());
    }
    match (&skip, &queued) {
        (Some(why), _) => {
            tracing::info!(schedule = %s.id, reason = %why, "scheduled backup skipped");
            event(
                &mut tx,
                s,
                "backup.skipped",
                format!("schedule {}: {why}", s.id),
            )
            .await?;
        }
        (None, Some((b, _))) => {
            let detail = if missed > 0 {
                format!(
                    "schedule {}: backup {} (once for {} runs missed while no server ran)",
                    s.id,
                    b.id,
                    missed + 1
                )
            } else {
                format!("schedule {}: backup {}", s.id, b.id)
            };
            event(&mut tx, s, "backup.scheduled", detail).await?;
        }
        (None, None) => {}
    }
    tx.commit().await?;
    if queued.is_some() {
        svc.wakeup.notify();
    }
    Ok(())
}
