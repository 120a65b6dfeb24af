//! The parameter specs of the PVE API endpoints Hemiron serves, written
//! after PVE 9.1's schema (the tests compare them with the schema dump).

use super::qm::MACHINE_FORMAT;
use super::vm_config::{CONFIG_COMMON, CONFIG_DRIVES};
use super::EndpointSpec;
use crate::schema::{NamedFormat as F, ParamSpec as P, PropertyFormat};

/// `node` (a path parameter everywhere below `/nodes/{node}`).
pub const NODE: P = P::string("node").named(F::PveNode);
/// `vmid` (standard option `pve-vmid`).
pub const VMID: P = P::integer("vmid")
    .named(F::PveVmid)
    .min(100)
    .max(999_999_999);
const SKIPLOCK: P = P::boolean("skiplock").optional();
const DIGEST: P = P::string("digest").optional().max_len(40);
const SNAPNAME: P = P::string("snapname").named(F::PveConfigid).max_len(40);
const UPID: P = P::string("upid");
const TIMEOUT: P = P::integer("timeout").optional().min(0);
const DRIVE_NAMES: &[&str] = &[
    "ide0",
    "ide1",
    "ide2",
    "ide3",
    "scsi0",
    "scsi1",
    "scsi2",
    "scsi3",
    "scsi4",
    "scsi5",
    "scsi6",
    "scsi7",
    "scsi8",
    "scsi9",
    "scsi10",
    "scsi11",
    "scsi12",
    "scsi13",
    "scsi14",
    "scsi15",
    "scsi16",
    "scsi17",
    "scsi18",
    "scsi19",
    "scsi20",
    "scsi21",
    "scsi22",
    "scsi23",
    "scsi24",
    "scsi25",
    "scsi26",
    "scsi27",
    "scsi28",
    "scsi29",
    "scsi30",
    "virtio0",
    "virtio1",
    "virtio2",
    "virtio3",
    "virtio4",
    "virtio5",
    "virtio6",
    "virtio7",
    "virtio8",
    "virtio9",
    "virtio10",
    "virtio11",
    "virtio12",
    "virtio13",
    "virtio14",
    "virtio15",
    "sata0",
    "sata1",
    "sata2",
    "sata3",
    "sata4",
    "sata5",
    "efidisk0",
    "tpmstate0",
];

static NODE_ONLY: &[P] = &[NODE];
static NODE_VMID: &[P] = &[NODE, VMID];
static NODE_UPID: &[P] = &[NODE, UPID];
static NODE_VMID_SNAPNAME: &[P] = &[NODE, VMID, SNAPNAME];

static ACCESS_TICKET: &[P] = &[
    P::boolean("new-format").optional().default_bool(true),
    P::string("otp").optional(),
    P::string("password"),
    P::string("path").optional().max_len(64).requires("privs"),
    P::string("privs")
        .optional()
        .list(F::PvePriv)
        .max_len(64)
        .requires("path"),
    P::string("realm").optional().named(F::PveRealm).max_len(32),
    P::string("tfa-challenge").optional(),
    P::string("username").max_len(64),
];

static CLUSTER_RESOURCES: &[P] = &[P::string("type")
    .optional()
    .enums(&["vm", "storage", "node", "sdn"])];

static CLUSTER_NEXTID: &[P] = &[VMID.optional()];

static QEMU_LIST: &[P] = &[P::boolean("full").optional()];

/// The create call's own parameters besides node, vmid and the config.
static QEMU_CREATE: &[P] = &[
    P::string("archive").optional().max_len(255),
    P::integer("bwlimit")
        .optional()
        .min(0)
        .default_str("restore limit from datacenter or storage config"),
    P::boolean("force").optional().requires("archive"),
    P::boolean("ha-managed").optional().default_bool(false),
    P::string("import-working-storage")
        .optional()
        .named(F::PveStorageId),
    P::boolean("live-restore").optional(),
    P::string("pool").optional().named(F::PvePoolid),
    P::boolean("start").optional().default_bool(false),
    P::string("storage").optional().named(F::PveStorageId),
    P::boolean("unique").optional().requires("archive"),
];

/// `prune-backups` (registered format `prune-backups`).
pub static PRUNE_BACKUPS_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("prune-backups"),
    keys: &[&[
        P::boolean("keep-all").optional(),
        P::integer("keep-daily").optional().min(1),
        P::integer("keep-hourly").optional().min(1),
        P::integer("keep-last").optional().min(1),
        P::integer("keep-monthly").optional().min(1),
        P::integer("keep-weekly").optional().min(1),
        P::integer("keep-yearly").optional().min(1),
    ]],
    aliases: &[],
    validator: None,
};

/// vzdump's `fleecing` (`backup-fleecing`).
static BACKUP_FLEECING_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("backup-fleecing"),
    keys: &[&[
        P::boolean("enabled").optional().default_key(),
        P::string("storage").optional().named(F::PveStorageId),
    ]],
    aliases: &[],
    validator: None,
};

/// vzdump's `performance` (`backup-performance`).
static BACKUP_PERFORMANCE_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("backup-performance"),
    keys: &[&[
        P::integer("max-workers").optional(),
        P::integer("pbs-entries-max").optional(),
    ]],
    aliases: &[],
    validator: None,
};

/// `POST /nodes/{node}/vzdump`, as PVE declares it (the node refuses what it does not do).
static VZDUMP: &[P] = &[
    P::string("node").optional().named(F::PveNode),
    P::boolean("all").optional().default_bool(false),
    P::integer("bwlimit").optional().min(0).default_int(0),
    P::string("compress")
        .optional()
        .default_str("0")
        .enums(&["0", "1", "gzip", "lzo", "zstd"]),
    P::string("dumpdir").optional(),
    P::string("exclude").optional().named(F::PveVmidList),
    P::array("exclude-path").optional(),
    P::string("fleecing")
        .optional()
        .prop(&BACKUP_FLEECING_FORMAT),
    P::integer("ionice").optional().min(0).max(8).default_int(7),
    P::string("job-id").optional().max_len(50).pattern(r"\S+"),
    P::integer("lockwait").optional().min(0).default_int(180),
    P::string("mailnotification")
        .optional()
        .default_str("always")
        .enums(&["always", "failure"]),
    P::string("mailto").optional().named(F::EmailOrUsernameList),
    P::integer("maxfiles").optional().min(1),
    P::string("mode")
        .optional()
        .default_str("snapshot")
        .enums(&["snapshot", "suspend", "stop"]),
    P::string("notes-template")
        .optional()
        .max_len(1024)
        .requires("storage"),
    P::string("notification-mode")
        .optional()
        .default_str("auto")
        .enums(&["auto", "legacy-sendmail", "notification-system"]),
    P::string("pbs-change-detection-mode")
        .optional()
        .enums(&["legacy", "data", "metadata"]),
    P::string("performance")
        .optional()
        .prop(&BACKUP_PERFORMANCE_FORMAT),
    P::integer("pigz").optional().default_int(0),
    P::string("pool").optional(),
    P::boolean("protected").optional().requires("storage"),
    P::string("prune-backups")
        .optional()
        .default_str("keep-all=1")
        .prop(&PRUNE_BACKUPS_FORMAT),
    P::boolean("quiet").optional().default_bool(false),
    P::boolean("remove").optional().default_bool(true),
    P::string("script").optional(),
    P::boolean("stdexcludes").optional().default_bool(true),
    P::boolean("stdout").optional(),
    P::boolean("stop").optional().default_bool(false),
    P::integer("stopwait").optional().min(0).default_int(10),
    P::string("storage").optional().named(F::PveStorageId),
    P::string("tmpdir").optional(),
    P::string("vmid").optional().named(F::PveVmidList),
    P::integer("zstd").optional().default_int(1),
];

static QEMU_DESTROY: &[P] = &[
    P::boolean("destroy-unreferenced-disks")
        .optional()
        .default_bool(false),
    P::boolean("purge").optional(),
    SKIPLOCK,
];

static CONFIG_GET: &[P] = &[
    P::boolean("current").optional().default_bool(false),
    P::string("snapshot")
        .optional()
        .named(F::PveConfigid)
        .max_len(40),
];

/// `delete`, `digest`, `force`, `revert`, `skiplock` of both config updates.
static CONFIG_UPDATE: &[P] = &[
    P::string("delete").optional().list(F::PveConfigid),
    DIGEST,
    P::boolean("force").optional().requires("delete"),
    P::string("revert").optional().list(F::PveConfigid),
    SKIPLOCK,
];

static CONFIG_UPDATE_ASYNC: &[P] = &[
    P::integer("background_delay").optional().min(1).max(30),
    P::string("import-working-storage")
        .optional()
        .named(F::PveStorageId),
];

static STATUS_START: &[P] = &[
    P::string("force-cpu").optional(),
    P::string("machine").optional().prop(&MACHINE_FORMAT),
    P::string("migratedfrom").optional().named(F::PveNode),
    P::string("migration_network").optional().named(F::Cidr),
    P::string("migration_type")
        .optional()
        .enums(&["secure", "insecure"]),
    P::string("nets-host-mtu")
        .optional()
        .pattern(r"net\d+=\d+(,net\d+=\d+)*"),
    SKIPLOCK,
    P::string("stateuri").optional().max_len(128),
    P::string("targetstorage").optional().list(F::StoragePair),
    P::integer("timeout")
        .optional()
        .min(0)
        .default_str("max(30, vm memory in GiB)"),
    P::boolean("with-conntrack-state")
        .optional()
        .default_bool(false),
];

static STATUS_STOP: &[P] = &[
    P::boolean("keepActive").optional().default_bool(false),
    P::string("migratedfrom").optional().named(F::PveNode),
    P::boolean("overrule-shutdown")
        .optional()
        .default_bool(false),
    SKIPLOCK,
    TIMEOUT,
];

static STATUS_SHUTDOWN: &[P] = &[
    P::boolean("forceStop").optional().default_bool(false),
    P::boolean("keepActive").optional().default_bool(false),
    SKIPLOCK,
    TIMEOUT,
];

static STATUS_REBOOT: &[P] = &[TIMEOUT];
static STATUS_RESET: &[P] = &[SKIPLOCK];
static STATUS_SUSPEND: &[P] = &[
    SKIPLOCK,
    P::string("statestorage")
        .optional()
        .named(F::PveStorageId)
        .requires("todisk"),
    P::boolean("todisk").optional().default_bool(false),
];
static STATUS_RESUME: &[P] = &[P::boolean("nocheck").optional(), SKIPLOCK];

static RESIZE: &[P] = &[
    DIGEST,
    P::string("disk").enums(DRIVE_NAMES),
    P::string("size").pattern(r"\+?\d+(\.\d+)?[KMGT]?"),
    SKIPLOCK,
];

static TASK_LIST: &[P] = &[
    P::boolean("errors").optional().default_bool(false),
    P::integer("limit").optional().min(0).default_int(50),
    P::integer("since").optional(),
    P::string("source")
        .optional()
        .default_str("archive")
        .enums(&["archive", "active", "all"]),
    P::integer("start").optional().min(0).default_int(0),
    P::string("statusfilter")
        .optional()
        .list(F::PveTaskStatusType),
    P::string("typefilter").optional(),
    P::integer("until").optional(),
    P::string("userfilter").optional(),
    VMID.optional(),
];

static TASK_LOG: &[P] = &[
    P::boolean("download").optional(),
    P::integer("limit").optional().min(0).default_int(50),
    P::integer("start").optional().min(0).default_int(0),
];

static STORAGE_LIST: &[P] = &[
    P::string("content").optional().list(F::PveStorageContent),
    P::boolean("enabled").optional().default_bool(false),
    P::boolean("format").optional().default_bool(false),
    P::string("storage").optional().named(F::PveStorageId),
    P::string("target").optional().named(F::PveNode),
];

static STORAGE_CONTENT: &[P] = &[
    P::string("content").optional().named(F::PveStorageContent),
    P::string("storage").named(F::PveStorageId),
    VMID.optional(),
];

/// `/nodes/{node}/storage/{storage}/content/{volume}` (the path's storage is optional: the
/// volume may name it).
static STORAGE_VOLUME: &[P] = &[
    P::string("storage").optional().named(F::PveStorageId),
    P::string("volume"),
];

static STORAGE_VOLUME_DELETE: &[P] = &[P::integer("delay").optional().min(1).max(30)];

static STORAGE_VOLUME_PUT: &[P] = &[
    P::string("notes").optional(),
    P::boolean("protected").optional(),
];

static VZDUMP_EXTRACTCONFIG: &[P] = &[P::string("volume")];

static MIGRATE_CHECK: &[P] = &[P::string("target").optional().named(F::PveNode)];

static MIGRATE: &[P] = &[
    P::integer("bwlimit")
        .optional()
        .min(0)
        .default_str("migrate limit from datacenter or storage config"),
    P::boolean("force").optional(),
    P::string("migration_network").optional().named(F::Cidr),
    P::string("migration_type")
        .optional()
        .enums(&["secure", "insecure"]),
    P::boolean("online").optional(),
    P::string("target").named(F::PveNode),
    P::string("targetstorage").optional().list(F::StoragePair),
    P::boolean("with-conntrack-state")
        .optional()
        .default_bool(false),
    P::boolean("with-local-disks").optional(),
];

static TEMPLATE: &[P] = &[P::string("disk").optional().enums(DRIVE_NAMES)];

static CLONE: &[P] = &[
    P::integer("bwlimit")
        .optional()
        .min(0)
        .default_str("clone limit from datacenter or storage config"),
    P::string("description").optional(),
    P::string("format")
        .optional()
        .enums(&["raw", "qcow2", "vmdk"]),
    P::boolean("full").optional(),
    P::string("name").optional().named(F::DnsName),
    P::integer("newid")
        .named(F::PveVmid)
        .min(100)
        .max(999_999_999),
    P::string("pool").optional().named(F::PvePoolid),
    P::string("snapname")
        .optional()
        .named(F::PveConfigid)
        .max_len(40),
    P::string("storage").optional().named(F::PveStorageId),
    P::string("target").optional().named(F::PveNode),
];

static SNAPSHOT_CREATE: &[P] = &[
    P::string("description").optional(),
    SNAPNAME,
    P::boolean("vmstate").optional(),
];

static SNAPSHOT_CONFIG_PUT: &[P] = &[P::string("description").optional()];
static SNAPSHOT_ROLLBACK: &[P] = &[P::boolean("start").optional().default_bool(false)];
static SNAPSHOT_DELETE: &[P] = &[P::boolean("force").optional()];
static CLOUDINIT_DUMP: &[P] = &[P::string("type").enums(&["user", "network", "meta"])];

const fn ep(
    method: &'static str,
    path: &'static str,
    params: &'static [&'static [P]],
) -> EndpointSpec {
    EndpointSpec {
        method,
        path,
        params,
    }
}

/// A path below `/nodes/{node}/qemu/{vmid}`.
macro_rules! vm {
    ($rest:literal) => {
        concat!("/nodes/{node}/qemu/{vmid}", $rest)
    };
}

/// Every endpoint Hemiron implements.
pub static ENDPOINTS: &[EndpointSpec] = &[
    ep("GET", "/version", &[]),
    ep("POST", "/access/ticket", &[ACCESS_TICKET]),
    ep("GET", "/nodes", &[]),
    ep("GET", "/nodes/{node}/status", &[NODE_ONLY]),
    ep("GET", "/cluster/resources", &[CLUSTER_RESOURCES]),
    ep("GET", "/cluster/nextid", &[CLUSTER_NEXTID]),
    ep("GET", "/nodes/{node}/qemu", &[NODE_ONLY, QEMU_LIST]),
    ep("POST", "/nodes/{node}/vzdump", &[VZDUMP]),
    ep(
        "POST",
        "/nodes/{node}/qemu",
        &[NODE_VMID, QEMU_CREATE, CONFIG_COMMON, CONFIG_DRIVES],
    ),
    ep("DELETE", vm!(""), &[NODE_VMID, QEMU_DESTROY]),
    ep("GET", vm!("/config"), &[NODE_VMID, CONFIG_GET]),
    ep(
        "PUT",
        vm!("/config"),
        &[NODE_VMID, CONFIG_UPDATE, CONFIG_COMMON, CONFIG_DRIVES],
    ),
    ep(
        "POST",
        vm!("/config"),
        &[
            NODE_VMID,
            CONFIG_UPDATE,
            CONFIG_UPDATE_ASYNC,
            CONFIG_COMMON,
            CONFIG_DRIVES,
        ],
    ),
    ep("GET", vm!("/pending"), &[NODE_VMID]),
    ep("GET", vm!("/status/current"), &[NODE_VMID]),
    ep("POST", vm!("/status/start"), &[NODE_VMID, STATUS_START]),
    ep("POST", vm!("/status/stop"), &[NODE_VMID, STATUS_STOP]),
    ep(
        "POST",
        vm!("/status/shutdown"),
        &[NODE_VMID, STATUS_SHUTDOWN],
    ),
    ep("POST", vm!("/status/reboot"), &[NODE_VMID, STATUS_REBOOT]),
    ep("POST", vm!("/status/reset"), &[NODE_VMID, STATUS_RESET]),
    ep("POST", vm!("/status/suspend"), &[NODE_VMID, STATUS_SUSPEND]),
    ep("POST", vm!("/status/resume"), &[NODE_VMID, STATUS_RESUME]),
    ep("PUT", vm!("/resize"), &[NODE_VMID, RESIZE]),
    ep("GET", "/nodes/{node}/tasks", &[NODE_ONLY, TASK_LIST]),
    ep("GET", "/nodes/{node}/tasks/{upid}/status", &[NODE_UPID]),
    ep(
        "GET",
        "/nodes/{node}/tasks/{upid}/log",
        &[NODE_UPID, TASK_LOG],
    ),
    ep("DELETE", "/nodes/{node}/tasks/{upid}", &[NODE_UPID]),
    ep("GET", "/nodes/{node}/storage", &[NODE_ONLY, STORAGE_LIST]),
    ep(
        "GET",
        "/nodes/{node}/storage/{storage}/content",
        &[NODE_ONLY, STORAGE_CONTENT],
    ),
    ep(
        "GET",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        &[NODE_ONLY, STORAGE_VOLUME],
    ),
    ep(
        "PUT",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        &[NODE_ONLY, STORAGE_VOLUME, STORAGE_VOLUME_PUT],
    ),
    ep(
        "DELETE",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        &[NODE_ONLY, STORAGE_VOLUME, STORAGE_VOLUME_DELETE],
    ),
    ep(
        "GET",
        "/nodes/{node}/vzdump/extractconfig",
        &[NODE_ONLY, VZDUMP_EXTRACTCONFIG],
    ),
    ep("POST", vm!("/template"), &[NODE_VMID, TEMPLATE]),
    ep("POST", vm!("/clone"), &[NODE_VMID, CLONE]),
    ep("GET", vm!("/migrate"), &[NODE_VMID, MIGRATE_CHECK]),
    ep("POST", vm!("/migrate"), &[NODE_VMID, MIGRATE]),
    ep("GET", vm!("/snapshot"), &[NODE_VMID]),
    ep("POST", vm!("/snapshot"), &[NODE_VMID, SNAPSHOT_CREATE]),
    ep(
        "GET",
        vm!("/snapshot/{snapname}/config"),
        &[NODE_VMID_SNAPNAME],
    ),
    ep(
        "PUT",
        vm!("/snapshot/{snapname}/config"),
        &[NODE_VMID_SNAPNAME, SNAPSHOT_CONFIG_PUT],
    ),
    ep(
        "POST",
        vm!("/snapshot/{snapname}/rollback"),
        &[NODE_VMID_SNAPNAME, SNAPSHOT_ROLLBACK],
    ),
    ep(
        "DELETE",
        vm!("/snapshot/{snapname}"),
        &[NODE_VMID_SNAPNAME, SNAPSHOT_DELETE],
    ),
    ep("GET", vm!("/cloudinit/dump"), &[NODE_VMID, CLOUDINIT_DUMP]),
    // Directory indexes and cloud-init status.
    ep("GET", "/nodes/{node}/qemu/{vmid}", &[NODE_VMID]),
    ep("GET", vm!("/status"), &[NODE_VMID]),
    ep("GET", "/nodes/{node}/tasks/{upid}", &[NODE_UPID]),
    ep("GET", vm!("/snapshot/{snapname}"), &[NODE_VMID_SNAPNAME]),
    ep("GET", vm!("/cloudinit"), &[NODE_VMID]),
    ep("PUT", vm!("/cloudinit"), &[NODE_VMID]),
];
