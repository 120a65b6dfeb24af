-- Hemiron control plane: clusters and their nodes and templates, VPSes, durable jobs, events.

-- A Proxmox VE API endpoint: a Hemiron node or a real Proxmox VE cluster.
CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    token_id TEXT NOT NULL,
    -- The API token's secret, needed in clear to call the cluster.
    token_secret TEXT NOT NULL,
    -- SHA-256 of the certificate, pinned (self-signed clusters are the norm).
    fingerprint TEXT,
    status TEXT NOT NULL,
    last_error TEXT,
    last_seen_at BIGINT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    accel TEXT,
    cpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    -- What placed VPSes have reserved here (the scheduler's view, not measured use).
    reserved_vcpus BIGINT NOT NULL DEFAULT 0,
    reserved_memory_mib BIGINT NOT NULL DEFAULT 0,
    reserved_disk_gib BIGINT NOT NULL DEFAULT 0,
    maintenance BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at BIGINT NOT NULL,
    UNIQUE (cluster_id, name)
);

-- Template VMs found on the clusters' nodes.
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    vmid BIGINT NOT NULL,
    name TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (cluster_id, vmid)
);
CREATE INDEX templates_name ON templates (name);

CREATE TABLE vps (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    plan_id TEXT,
    template TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    username TEXT NOT NULL,
    -- Newline-separated OpenSSH public keys.
    ssh_keys TEXT NOT NULL,
    full_clone BOOLEAN NOT NULL,
    anti_affinity TEXT,
    cluster_id TEXT REFERENCES clusters (id),
    node TEXT,
    vmid BIGINT,
    -- creating, running, stopped, deleting, deleted, failed, missing
    state TEXT NOT NULL,
    -- What the cluster last reported: running, stopped, unknown.
    power TEXT NOT NULL,
    ssh_address TEXT,
    web_address TEXT,
    -- Config drift found by the reconciler (JSON), never reverted.
    drift TEXT,
    last_error TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX vps_tenant ON vps (tenant_id, created_at, id);
CREATE INDEX vps_cluster ON vps (cluster_id, vmid);
CREATE UNIQUE INDEX vps_tenant_name ON vps (tenant_id, name) WHERE state <> 'deleted';

-- Durable jobs: claimed with a lease; every write of a running job is conditional on its
-- lease owner and fence, so a job whose lease passed to another worker can change nothing.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    tenant_id TEXT,
    vps_id TEXT,
    -- queued, running, succeeded, failed
    state TEXT NOT NULL,
    step TEXT NOT NULL,
    payload TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT,
    fence BIGINT NOT NULL DEFAULT 0,
    run_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX jobs_claim ON jobs (state, run_after);
CREATE INDEX jobs_vps ON jobs (vps_id, created_at);

-- What happened to VPSes (power changes seen by the reconciler, drift, job outcomes).
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    tenant_id TEXT,
    vps_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_vps ON events (vps_id, at);
CREATE INDEX events_at ON events (at, id);
