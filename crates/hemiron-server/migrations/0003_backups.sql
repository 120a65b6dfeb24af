-- Hemiron control plane: backups of VPSes, their schedules, and what a plan allows.

-- How many backups a VPS of the plan may keep (manual and scheduled together; 0: none).
ALTER TABLE plans ADD COLUMN backups BIGINT NOT NULL DEFAULT 7;

-- A vzdump archive of a VPS's VM, on a storage of the node that made it.
CREATE TABLE backups (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    vps_id TEXT NOT NULL REFERENCES vps (id),
    -- The schedule that made it; NULL for a backup someone asked for (never pruned).
    schedule_id TEXT,
    job_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    node TEXT NOT NULL,
    storage TEXT NOT NULL,
    -- The archive's volume id, once the node made it.
    volid TEXT,
    size_bytes BIGINT,
    mode TEXT NOT NULL,
    notes TEXT,
    -- creating, available, failed, deleting, deleted
    state TEXT NOT NULL,
    -- When it was taken, on the control plane's clock (retention counts periods by it).
    taken_at BIGINT NOT NULL,
    error TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX backups_vps ON backups (vps_id, taken_at);

-- When to back a VPS up (cron, in a time zone) and how many of its backups to keep.
CREATE TABLE backup_schedules (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    vps_id TEXT NOT NULL REFERENCES vps (id),
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    mode TEXT NOT NULL,
    keep_last BIGINT NOT NULL,
    keep_daily BIGINT NOT NULL,
    keep_weekly BIGINT NOT NULL,
    keep_monthly BIGINT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- The next run, on the control plane's clock; a run missed while no server was up is
    -- due at once, and runs once.
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    last_job_id TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX backup_schedules_due ON backup_schedules (enabled, next_run_at);
CREATE INDEX backup_schedules_vps ON backup_schedules (vps_id);
