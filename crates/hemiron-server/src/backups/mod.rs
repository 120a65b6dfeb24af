//! Backups of VPSes: on demand and on schedules, within what the plan allows.
//!
//! A plan says how many backups a VPS may keep (`backups`), manual and scheduled together.
//! A manual backup beyond it is refused; a schedule's retention (keep-last, -daily, -weekly,
//! -monthly, counted as Proxmox's `prune-backups` counts them, in the schedule's zone) may
//! not promise more than the plan leaves; after each scheduled backup its schedule's
//! retention removes what it no longer keeps, then, if manual backups crowd the plan's
//! limit, the oldest scheduled backups. Manual backups are only removed by their owner.
//! Deleting a VPS deletes its schedules and backups.

pub mod clock;
pub mod schedule;
pub mod scheduler;

use crate::authz::{authorize, Access, Area, Owner};
use crate::error::{Problems, ServiceError};
use crate::fleet::vps::{for_change, new_job};
use crate::jobs::backup::BackupPayload;
use crate::service::{Caller, Services};
use crate::store::backups::{self as store, BackupRow, ScheduleRow};
use crate::store::fleet::{self as fleet_store, VpsRow};
use crate::store::jobs::JobRow;
use crate::store::{new_id, now_ms, Tx};
use schedule::{Retention, Timing};

/// vzdump's modes.
pub const MODES: [&str; 3] = ["snapshot", "suspend", "stop"];

/// What a backup may be asked with.
#[derive(Debug, Clone, Default)]
pub struct NewBackup {
    /// `snapshot` (the default: the VM keeps running), `suspend` or `stop`.
    pub mode: Option<String>,
    pub notes: Option<String>,
}

fn check_mode(p: &mut Problems, mode: &str) {
    p.check(MODES.contains(&mode), "mode", "snapshot, suspend or stop");
}

/// How many backups the VPS's plan allows (the default if its plan is gone).
pub(crate) async fn plan_limit(
    db: &crate::store::Db,
    vps: &VpsRow,
) -> Result<i64, crate::store::StoreError> {
    Ok(match &vps.plan_id {
        Some(p) => crate::store::tenancy::plan(db, p)
            .await?
            .map(|p| p.backups)
            .unwrap_or(crate::tenancy::DEFAULT_PLAN_BACKUPS),
        None => crate::tenancy::DEFAULT_PLAN_BACKUPS,
    })
}

/// Queues a `vps.backup` job and the record of the backup it makes (in the caller's
/// transaction).
pub(crate) async fn queue_backup(
    tx: &mut Tx,
    vps: &VpsRow,
    schedule_id: Option<&str>,
    mode: &str,
    notes: Option<String>,
    taken_at: i64,
) -> Result<(BackupRow, JobRow), ServiceError> {
    let id = new_id();
    let job = new_job(
        tx,
        "vps.backup",
        vps,
        &BackupPayload {
            backup_id: id.clone(),
        },
    )
    .await?;
    let now = now_ms();
    let b = BackupRow {
        id,
        tenant_id: vps.tenant_id.clone(),
        vps_id: vps.id.clone(),
        schedule_id: schedule_id.map(str::to_string),
        job_id: job.id.clone(),
        cluster_id: vps.cluster_id.clone().unwrap_or_default(),
        node: vps.node.clone().unwrap_or_default(),
        storage: String::new(),
        volid: None,
        size_bytes: None,
        mode: mode.to_string(),
        notes,
        state: "creating".into(),
        taken_at,
        error: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    store::insert_backup(tx, &b).await?;
    Ok((b, job))
}

/// A VPS's backups (not deleted), newest first.
pub async fn list(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
) -> Result<Vec<BackupRow>, ServiceError> {
    let v = crate::fleet::vps::get(svc, caller, vps_id).await?;
    Ok(store::backups_of_vps(&svc.db, &v.id).await?)
}

/// One backup of a VPS.
pub async fn get(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    backup_id: &str,
) -> Result<BackupRow, ServiceError> {
    let v = crate::fleet::vps::get(svc, caller, vps_id).await?;
    store::backup(&svc.db, backup_id)
        .await?
        .filter(|b| b.vps_id == v.id && b.state != "deleted")
        .ok_or(ServiceError::NotFound { what: "backup" })
}

/// Backs a VPS up now.
pub async fn create(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    new: NewBackup,
) -> Result<(BackupRow, JobRow), ServiceError> {
    let mode = new.mode.unwrap_or_else(|| "snapshot".into());
    let mut p = Problems::default();
    check_mode(&mut p, &mode);
    if let Some(n) = &new.notes {
        p.check(
            n.len() <= 1024 && !n.contains('\n'),
            "notes",
            "one line of at most 1024 bytes",
        );
    }
    p.finish()?;
    let mut tx = svc.db.begin().await?;
    let v = for_change(&mut tx, caller, vps_id).await?;
    if !matches!(v.state.as_str(), "running" | "stopped") {
        return Err(ServiceError::Conflict(format!("the VPS is {}", v.state)));
    }
    let limit = plan_limit(&svc.db, &v).await?;
    let kept = store::kept_count(&mut tx, &v.id).await?;
    if limit == 0 {
        return Err(ServiceError::QuotaExceeded(
            "the VPS's plan includes no backups".into(),
        ));
    }
    if kept >= limit {
        return Err(ServiceError::QuotaExceeded(format!(
            "the VPS's plan keeps at most {limit} backups and it has {kept}; delete one first"
        )));
    }
    let (b, job) = queue_backup(&mut tx, &v, None, &mode, new.notes, svc.clock.now_ms()).await?;
    caller
        .commit(
            tx,
            "backup.create",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("backup={} mode={mode}", b.id)),
        )
        .await?;
    svc.wakeup.notify();
    Ok((b, job))
}

/// A VPS's available backup, for a change.
async fn available(tx: &mut Tx, vps: &VpsRow, backup_id: &str) -> Result<BackupRow, ServiceError> {
    let b = store::backup_tx(tx, backup_id)
        .await?
        .filter(|b| b.vps_id == vps.id && b.state != "deleted")
        .ok_or(ServiceError::NotFound { what: "backup" })?;
    if b.state != "available" {
        return Err(ServiceError::Conflict(format!("the backup is {}", b.state)));
    }
    Ok(b)
}

/// Deletes a backup (its archive, then its record).
pub async fn delete(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    backup_id: &str,
    version: i64,
) -> Result<JobRow, ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = for_change(&mut tx, caller, vps_id).await?;
    let b = available(&mut tx, &v, backup_id).await?;
    if b.version != version {
        return Err(ServiceError::stale("backup", b.version));
    }
    store::set_backup_state(&mut tx, &b.id, "deleting", None, now_ms()).await?;
    let job = new_job(
        &mut tx,
        "backup.delete",
        &v,
        &BackupPayload {
            backup_id: b.id.clone(),
        },
    )
    .await?;
    caller
        .commit(
            tx,
            "backup.delete",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("backup={}", b.id)),
        )
        .await?;
    svc.wakeup.notify();
    Ok(job)
}

/// Restores a VPS from one of its backups: its disks and data as they were then, its
/// current size kept; it runs afterwards if it ran before.
pub async fn restore(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    backup_id: &str,
) -> Result<JobRow, ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = for_change(&mut tx, caller, vps_id).await?;
    if !matches!(v.state.as_str(), "running" | "stopped") {
        return Err(ServiceError::Conflict(format!("the VPS is {}", v.state)));
    }
    let b = available(&mut tx, &v, backup_id).await?;
    let job = new_job(
        &mut tx,
        "vps.restore",
        &v,
        &BackupPayload {
            backup_id: b.id.clone(),
        },
    )
    .await?;
    caller
        .commit(
            tx,
            "vps.restore",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("backup={}", b.id)),
        )
        .await?;
    svc.wakeup.notify();
    Ok(job)
}

/// A schedule as asked for (fields left out keep their value on a change).
#[derive(Debug, Clone, Default)]
pub struct ScheduleSpec {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub mode: Option<String>,
    pub keep_last: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub enabled: Option<bool>,
}

/// A VPS the caller may change the schedules of.
async fn writable(tx: &mut Tx, caller: &Caller, id: &str) -> Result<VpsRow, ServiceError> {
    let who = caller.who()?;
    let v = fleet_store::vps_tx(tx, id)
        .await?
        .filter(|v| v.state != "deleted")
        .ok_or(ServiceError::NotFound { what: "VPS" })?;
    authorize(who, Area::Vps, Access::Write, Owner::Tenant(&v.tenant_id))
        .map_err(|d| ServiceError::denied(d, "VPS"))?;
    Ok(v)
}

/// Checks `s` (already merged with what it changes) and computes its next run.
async fn settle(
    svc: &Services,
    tx: &mut Tx,
    vps: &VpsRow,
    s: &mut ScheduleRow,
) -> Result<Timing, ServiceError> {
    let mut p = Problems::default();
    // Both fields are checked, each on its own (a bad zone does not hide a bad pattern).
    let zone = match schedule::parse_zone(&s.timezone) {
        Ok(_) => s.timezone.as_str(),
        Err(e) => {
            p.add("timezone", e.to_string());
            "UTC"
        }
    };
    let timing = match Timing::parse(&s.cron, zone) {
        Ok(t) => Some(t),
        Err(e) => {
            p.add("cron", e.to_string());
            None
        }
    };
    check_mode(&mut p, &s.mode);
    for (field, n) in [
        ("keep_last", s.keep_last),
        ("keep_daily", s.keep_daily),
        ("keep_weekly", s.keep_weekly),
        ("keep_monthly", s.keep_monthly),
    ] {
        p.check((0..=1000).contains(&n), field, "0 to 1000");
    }
    let kept = retention(s);
    let total = i64::try_from(kept.total()).unwrap_or(i64::MAX);
    p.check(
        total >= 1,
        "keep_last",
        "a schedule keeps at least one backup (keep_last, keep_daily, keep_weekly or keep_monthly)",
    );
    let limit = plan_limit(&svc.db, vps).await?;
    let others: i64 = store::schedules_of_vps_tx(tx, &vps.id)
        .await?
        .iter()
        .filter(|o| o.id != s.id)
        .map(|o| i64::try_from(retention(o).total()).unwrap_or(0))
        .sum();
    if total >= 1 && others + total > limit {
        p.add(
            "keep_last",
            format!(
                "the VPS's schedules would keep up to {} backups; its plan allows {limit}",
                others + total
            ),
        );
    }
    p.finish()?;
    let timing = timing.ok_or_else(|| ServiceError::invalid("cron", "invalid"))?;
    s.next_run_at = timing
        .next_after(svc.clock.now_ms())
        .ok_or_else(|| ServiceError::invalid("cron", "the pattern never matches again"))?;
    Ok(timing)
}

pub async fn list_schedules(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
) -> Result<Vec<ScheduleRow>, ServiceError> {
    let v = crate::fleet::vps::get(svc, caller, vps_id).await?;
    Ok(store::schedules_of_vps(&svc.db, &v.id).await?)
}

pub async fn get_schedule(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    id: &str,
) -> Result<ScheduleRow, ServiceError> {
    let v = crate::fleet::vps::get(svc, caller, vps_id).await?;
    store::schedule(&svc.db, id)
        .await?
        .filter(|s| s.vps_id == v.id)
        .ok_or(ServiceError::NotFound { what: "schedule" })
}

pub async fn create_schedule(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    spec: ScheduleSpec,
) -> Result<ScheduleRow, ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = writable(&mut tx, caller, vps_id).await?;
    let now = now_ms();
    let mut s = ScheduleRow {
        id: new_id(),
        tenant_id: v.tenant_id.clone(),
        vps_id: v.id.clone(),
        cron: spec.cron.unwrap_or_default(),
        timezone: spec.timezone.unwrap_or_else(|| "UTC".into()),
        mode: spec.mode.unwrap_or_else(|| "snapshot".into()),
        keep_last: spec.keep_last.unwrap_or(0),
        keep_daily: spec.keep_daily.unwrap_or(0),
        keep_weekly: spec.keep_weekly.unwrap_or(0),
        keep_monthly: spec.keep_monthly.unwrap_or(0),
        enabled: spec.enabled.unwrap_or(true),
        next_run_at: 0,
        last_run_at: None,
        last_job_id: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    if s.cron.trim().is_empty() {
        return Err(ServiceError::invalid(
            "cron",
            "required (e.g. \"0 3 * * *\")",
        ));
    }
    settle(svc, &mut tx, &v, &mut s).await?;
    store::insert_schedule(&mut tx, &s).await?;
    caller
        .commit(
            tx,
            "backup-schedule.create",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!(
                "schedule={} cron={:?} timezone={}",
                s.id, s.cron, s.timezone
            )),
        )
        .await?;
    Ok(s)
}

pub async fn update_schedule(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    id: &str,
    version: i64,
    spec: ScheduleSpec,
) -> Result<ScheduleRow, ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = writable(&mut tx, caller, vps_id).await?;
    let mut s = store::schedule_tx(&mut tx, id)
        .await?
        .filter(|s| s.vps_id == v.id)
        .ok_or(ServiceError::NotFound { what: "schedule" })?;
    if s.version != version {
        return Err(ServiceError::stale("schedule", s.version));
    }
    let timing_changed =
        spec.cron.is_some() || spec.timezone.is_some() || spec.enabled == Some(true);
    if let Some(c) = spec.cron {
        s.cron = c;
    }
    if let Some(z) = spec.timezone {
        s.timezone = z;
    }
    if let Some(m) = spec.mode {
        s.mode = m;
    }
    s.keep_last = spec.keep_last.unwrap_or(s.keep_last);
    s.keep_daily = spec.keep_daily.unwrap_or(s.keep_daily);
    s.keep_weekly = spec.keep_weekly.unwrap_or(s.keep_weekly);
    s.keep_monthly = spec.keep_monthly.unwrap_or(s.keep_monthly);
    s.enabled = spec.enabled.unwrap_or(s.enabled);
    let kept_next = s.next_run_at;
    settle(svc, &mut tx, &v, &mut s).await?;
    if !timing_changed {
        // Same timing: a run already due stays due.
        s.next_run_at = kept_next;
    }
    s.updated_at = now_ms();
    if !store::update_schedule(&mut tx, &s).await? {
        return Err(ServiceError::stale("schedule", s.version));
    }
    s.version += 1;
    caller
        .commit(
            tx,
            "backup-schedule.update",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("schedule={}", s.id)),
        )
        .await?;
    Ok(s)
}

pub async fn delete_schedule(
    svc: &Services,
    caller: &Caller,
    vps_id: &str,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = writable(&mut tx, caller, vps_id).await?;
    let s = store::schedule_tx(&mut tx, id)
        .await?
        .filter(|s| s.vps_id == v.id)
        .ok_or(ServiceError::NotFound { what: "schedule" })?;
    if s.version != version || !store::delete_schedule(&mut tx, &s.id, version).await? {
        return Err(ServiceError::stale("schedule", s.version));
    }
    caller
        .commit(
            tx,
            "backup-schedule.delete",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("schedule={}", s.id)),
        )
        .await?;
    Ok(())
}

/// The timing of a stored schedule (for views: its description and zone).
pub fn timing_of(s: &ScheduleRow) -> Option<Timing> {
    Timing::parse(&s.cron, &s.timezone).ok()
}

/// Retention of a stored schedule.
pub fn retention(s: &ScheduleRow) -> Retention {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Retention {
        last: n(s.keep_last),
        daily: n(s.keep_daily),
        weekly: n(s.keep_weekly),
        monthly: n(s.keep_monthly),
    }
}
