//! Tenants with quotas, plans (named VPS sizes), and reading the audit log.

use crate::authz::{authorize, Access, Area, Owner};
use crate::error::{Problems, ServiceError};
use crate::service::{Caller, Services};
use crate::store::audit::{self, AuditRow};
use crate::store::identity::After;
use crate::store::tenancy::{self as store, PlanRow, TenantRow};
use crate::store::{new_id, now_ms};

/// A tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub vms: i64,
}

fn check_name(p: &mut Problems, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    p.check(
        ok,
        "name",
        "1 to 64 characters: lower-case letters, digits and -, not starting with -",
    );
}

fn check_quotas(p: &mut Problems, q: &Quotas) {
    for (field, v) in [
        ("quota.vcpus", q.vcpus),
        ("quota.memory_mib", q.memory_mib),
        ("quota.disk_gib", q.disk_gib),
        ("quota.vms", q.vms),
    ] {
        p.check((0..=1 << 40).contains(&v), field, "0 to 2^40");
    }
}

pub async fn create_tenant(
    svc: &Services,
    caller: &Caller,
    name: &str,
    quotas: Quotas,
) -> Result<TenantRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Tenants, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    let mut p = Problems::default();
    check_name(&mut p, name);
    check_quotas(&mut p, &quotas);
    p.finish()?;
    let now = now_ms();
    let t = TenantRow {
        id: new_id(),
        name: name.to_string(),
        quota_vcpus: quotas.vcpus,
        quota_memory_mib: quotas.memory_mib,
        quota_disk_gib: quotas.disk_gib,
        quota_vms: quotas.vms,
        used_vcpus: 0,
        used_memory_mib: 0,
        used_disk_gib: 0,
        used_vms: 0,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let mut tx = svc.db.begin().await?;
    let result = store::insert_tenant(&mut tx, &t).await.map(|()| true);
    ServiceError::written(result, "tenant", name, 1)?;
    caller
        .commit(
            tx,
            "tenant.create",
            format!("tenant:{}", t.id),
            Some(t.id.clone()),
            Some(format!("name={name}")),
        )
        .await?;
    Ok(t)
}

pub async fn get_tenant(
    svc: &Services,
    caller: &Caller,
    id: &str,
) -> Result<TenantRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Tenants, Access::Read, Owner::Tenant(id))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    store::tenant(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "tenant" })
}

pub async fn list_tenants(
    svc: &Services,
    caller: &Caller,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<TenantRow>, ServiceError> {
    let who = caller.who()?;
    let tenant = who.listing_scope(None);
    authorize(who, Area::Tenants, Access::Read, Owner::of(tenant))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    Ok(store::list_tenants(&svc.db, tenant, after, limit).await?)
}

/// Renames a tenant or changes its quotas (lowering a quota below what is in use is allowed:
/// it only stops new usage).
pub async fn update_tenant(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
    name: Option<&str>,
    quotas: Option<Quotas>,
) -> Result<TenantRow, ServiceError> {
    let who = caller.who()?.clone();
    authorize(&who, Area::Tenants, Access::Write, Owner::Tenant(id))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    let mut p = Problems::default();
    if let Some(n) = name {
        check_name(&mut p, n);
    }
    if let Some(q) = &quotas {
        check_quotas(&mut p, q);
    }
    p.finish()?;
    let mut tx = svc.db.begin().await?;
    let mut t = store::tenant_tx(&mut tx, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "tenant" })?;
    if t.version != version {
        return Err(ServiceError::stale("tenant", t.version));
    }
    if let Some(n) = name {
        t.name = n.to_string();
    }
    if let Some(q) = quotas {
        t.quota_vcpus = q.vcpus;
        t.quota_memory_mib = q.memory_mib;
        t.quota_disk_gib = q.disk_gib;
        t.quota_vms = q.vms;
    }
    t.updated_at = now_ms();
    let result = store::update_tenant(&mut tx, &t).await;
    ServiceError::written(result, "tenant", &t.name, t.version)?;
    t.version += 1;
    caller
        .commit(
            tx,
            "tenant.update",
            format!("tenant:{id}"),
            Some(id.to_string()),
            None,
        )
        .await?;
    Ok(t)
}

/// Removes a tenant that has no users and uses nothing.
pub async fn delete_tenant(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let who = caller.who()?.clone();
    authorize(&who, Area::Tenants, Access::Write, Owner::Tenant(id))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    let mut tx = svc.db.begin().await?;
    let t = store::tenant_tx(&mut tx, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "tenant" })?;
    if t.version != version {
        return Err(ServiceError::stale("tenant", t.version));
    }
    let users = store::tenant_user_count(&mut tx, id).await?;
    if users > 0 || t.used_vms > 0 {
        return Err(ServiceError::Conflict(format!(
            "the tenant still has {users} users and {} VPSes; remove them first",
            t.used_vms
        )));
    }
    if !store::delete_tenant(&mut tx, id, version).await? {
        return Err(ServiceError::stale("tenant", t.version));
    }
    caller
        .commit(
            tx,
            "tenant.delete",
            format!("tenant:{id}"),
            Some(id.to_string()),
            Some(format!("name={}", t.name)),
        )
        .await?;
    Ok(())
}

/// A plan's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

fn check_size(p: &mut Problems, s: &Size) {
    p.check((1..=512).contains(&s.vcpus), "vcpus", "1 to 512");
    p.check(
        (64..=4 << 20).contains(&s.memory_mib),
        "memory_mib",
        "64 to 4194304",
    );
    p.check((1..=65536).contains(&s.disk_gib), "disk_gib", "1 to 65536");
}

/// Backups a plan keeps per VPS when its creator does not say.
pub const DEFAULT_PLAN_BACKUPS: i64 = 7;

fn check_backups(p: &mut Problems, backups: i64) {
    p.check((0..=1000).contains(&backups), "backups", "0 to 1000");
}

pub async fn create_plan(
    svc: &Services,
    caller: &Caller,
    name: &str,
    size: Size,
    backups: Option<i64>,
) -> Result<PlanRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Plans, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "plan"))?;
    let mut p = Problems::default();
    check_name(&mut p, name);
    check_size(&mut p, &size);
    let backups = backups.unwrap_or(DEFAULT_PLAN_BACKUPS);
    check_backups(&mut p, backups);
    p.finish()?;
    let now = now_ms();
    let plan = PlanRow {
        id: new_id(),
        name: name.to_string(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        disk_gib: size.disk_gib,
        backups,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let mut tx = svc.db.begin().await?;
    let result = store::insert_plan(&mut tx, &plan).await.map(|()| true);
    ServiceError::written(result, "plan", name, 1)?;
    caller
        .commit(
            tx,
            "plan.create",
            format!("plan:{}", plan.id),
            None,
            Some(format!(
                "name={name} vcpus={} memory_mib={} disk_gib={} backups={backups}",
                size.vcpus, size.memory_mib, size.disk_gib
            )),
        )
        .await?;
    Ok(plan)
}

pub async fn get_plan(svc: &Services, caller: &Caller, id: &str) -> Result<PlanRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Plans, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "plan"))?;
    store::plan(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "plan" })
}

pub async fn list_plans(
    svc: &Services,
    caller: &Caller,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<PlanRow>, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Plans, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "plan"))?;
    Ok(store::list_plans(&svc.db, after, limit).await?)
}

pub async fn update_plan(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
    name: Option<&str>,
    size: Option<Size>,
    backups: Option<i64>,
) -> Result<PlanRow, ServiceError> {
    let who = caller.who()?.clone();
    authorize(&who, Area::Plans, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "plan"))?;
    let mut p = Problems::default();
    if let Some(n) = name {
        check_name(&mut p, n);
    }
    if let Some(s) = &size {
        check_size(&mut p, s);
    }
    if let Some(b) = backups {
        check_backups(&mut p, b);
    }
    p.finish()?;
    let mut plan = store::plan(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "plan" })?;
    if plan.version != version {
        return Err(ServiceError::stale("plan", plan.version));
    }
    if let Some(n) = name {
        plan.name = n.to_string();
    }
    if let Some(s) = size {
        plan.vcpus = s.vcpus;
        plan.memory_mib = s.memory_mib;
        plan.disk_gib = s.disk_gib;
    }
    if let Some(b) = backups {
        plan.backups = b;
    }
    plan.updated_at = now_ms();
    let mut tx = svc.db.begin().await?;
    let result = store::update_plan(&mut tx, &plan).await;
    ServiceError::written(result, "plan", &plan.name, plan.version)?;
    plan.version += 1;
    caller
        .commit(tx, "plan.update", format!("plan:{}", plan.id), None, None)
        .await?;
    Ok(plan)
}

pub async fn delete_plan(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let who = caller.who()?.clone();
    authorize(&who, Area::Plans, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "plan"))?;
    let plan = store::plan(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "plan" })?;
    let mut tx = svc.db.begin().await?;
    if plan.version != version || !store::delete_plan(&mut tx, &plan.id, version).await? {
        return Err(ServiceError::stale("plan", plan.version));
    }
    caller
        .commit(
            tx,
            "plan.delete",
            format!("plan:{}", plan.id),
            None,
            Some(format!("name={}", plan.name)),
        )
        .await?;
    Ok(())
}

/// A page of audit records, newest first: everything for an admin, their tenant's for a
/// tenant owner.
pub async fn audit_log(
    svc: &Services,
    caller: &Caller,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<AuditRow>, ServiceError> {
    let who = caller.who()?;
    // An admin's covers everything; an operator's platform-wide read is refused by the role.
    let tenant = who.listing_scope(None);
    authorize(who, Area::Audit, Access::Read, Owner::of(tenant))
        .map_err(|d| ServiceError::denied(d, "audit log"))?;
    Ok(audit::list(&svc.db, tenant, before, limit).await?)
}
