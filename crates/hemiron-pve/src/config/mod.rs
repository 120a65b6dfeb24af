//! qemu-server's VM config file, `/etc/pve/qemu-server/<vmid>.conf`.
//!
//! ```text
//! #Web server%3A production
//! boot: order=scsi0;net0
//! memory: 2048
//! net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1
//! parent: before-upgrade
//! scsi0: local:100/vm-100-disk-0.qcow2,size=32G
//!
//! [PENDING]
//! delete: !net1,tags
//! memory: 4096
//!
//! [before-upgrade]
//! memory: 2048
//! snaptime: 1700000000
//! ```
//!
//! A file holds the main section, an optional `[PENDING]` section (changes
//! to apply at the next start, with its `delete:` list where `!` marks a
//! forced deletion), `[special:cloudinit]`/`[special:fleecing]` sections and
//! one section per snapshot (the main section's `parent` names the latest).
//! Each section may start with a description written as `#` comment lines,
//! escaped with PVE's `encode_text`.
//!
//! [`parse()`] and [`write()`] mirror `parse_vm_config` and `write_vm_config`:
//! values are checked and normalised with qemu-server's `check_type`
//! (booleans become `1`/`0`, integers lose leading zeros, string formats
//! are verified; enums, bounds and patterns are *not* checked, as in PVE),
//! keys are written sorted, and sections in PVE's order.

mod parse;
mod print;

pub use parse::{parse, parse_lenient, ParseConfigError, ParseConfigErrorKind};
pub use print::{print, write, WriteConfigError};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha1::{Digest, Sha1};

/// One section: its description and `key: value` properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// The description (the `#` lines, decoded); `Some("")` is kept apart
    /// from `None` because PVE writes an empty pending description as `#`.
    pub description: Option<String>,
    /// The properties by key.
    pub props: BTreeMap<String, String>,
}

/// The `[PENDING]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingSection {
    /// Pending values and description.
    pub section: Section,
    /// Keys to delete at the next start; the flag is PVE's `force`
    /// (written as a `!` prefix: remove the disk instead of marking it unused).
    pub delete: BTreeMap<String, bool>,
}

impl PendingSection {
    /// Whether PVE would write the section at all.
    pub fn is_empty(&self) -> bool {
        self.section.description.is_none()
            && self.section.props.is_empty()
            && self.delete.is_empty()
    }
}

/// A whole VM config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// The current config.
    pub main: Section,
    /// Changes waiting for the next start.
    pub pending: Option<PendingSection>,
    /// Snapshot sections by snapshot name.
    pub snapshots: BTreeMap<String, Section>,
    /// `[special:<name>]` sections by name (`cloudinit`: the config the
    /// cloud-init drive was generated from; `fleecing`: backup leftovers).
    pub special: BTreeMap<String, Section>,
}

impl VmConfig {
    /// A property of the main section.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.main.props.get(key).map(String::as_str)
    }

    /// The latest snapshot (`parent` of the main section).
    pub fn parent(&self) -> Option<&str> {
        self.get("parent")
    }
}

/// The config's digest as the API reports it and checks `digest=` against:
/// the SHA-1 hex of the raw file.
pub fn digest(raw: &[u8]) -> String {
    let hash = Sha1::digest(raw);
    let mut out = String::with_capacity(40);
    for b in hash {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `parse_pending_delete`: `!net1,tags;ide2` → `{net1: force, tags, ide2}`.
pub fn parse_pending_delete(data: &str) -> BTreeMap<String, bool> {
    data.replace([',', ';'], " ")
        .split_whitespace()
        .map(|entry| match entry.strip_prefix('!') {
            Some(key) => (key.to_string(), true),
            None => (entry.to_string(), false),
        })
        .collect()
}

/// `print_pending_delete`: sorted keys joined with `,`, forced ones with `!`.
pub fn print_pending_delete(delete: &BTreeMap<String, bool>) -> String {
    delete
        .iter()
        .map(|(k, force)| if *force { format!("!{k}") } else { k.clone() })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha1_hex() {
        assert_eq!(digest(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(digest(b"memory: 512\n").len(), 40);
    }

    #[test]
    fn pending_delete_round_trip() {
        let d = parse_pending_delete("!net1,tags; ide2");
        assert_eq!(d.get("net1"), Some(&true));
        assert_eq!(d.get("tags"), Some(&false));
        assert_eq!(print_pending_delete(&d), "ide2,!net1,tags");
    }
}
