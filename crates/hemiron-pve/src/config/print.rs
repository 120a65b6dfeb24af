//! Writing a config file (`PVE::QemuServer::write_vm_config`).

use std::collections::{BTreeMap, BTreeSet};

use super::parse::check_type;
use super::{print_pending_delete, Section, VmConfig};
use crate::spec::limits::is_valid_drivename;
use crate::text::encode_text;
use crate::views::{Drive, DriveKey};

/// A config `write_vm_config` refuses to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteConfigError {
    /// Both `cdrom` and `ide2` are set.
    #[error("option ide2 conflicts with cdrom")]
    MergeCdrom,
    /// A `delete` property outside the pending section.
    #[error("property 'delete' is only allowed in [PENDING]")]
    PlaceDelete,
    /// A value `check_type` rejects.
    #[error("unable to parse value of '{key}' - {message}")]
    CheckValue {
        /// The key.
        key: String,
        /// qemu-server's message.
        message: String,
    },
}

/// Writes `conf` the way `write_vm_config` does: after `cdrom` → `ide2`,
/// the `smp` → `sockets` migration, checking and normalising every value of
/// the main, pending and snapshot sections, and dropping `unused<n>`
/// entries whose volume is in use again; then [`print()`].
pub fn write(conf: &VmConfig) -> Result<String, WriteConfigError> {
    let mut conf = conf.clone();
    let main = &mut conf.main.props;
    main.remove("snapstate");
    if let Some(cdrom) = main.remove("cdrom") {
        if main.contains_key("ide2") {
            return Err(WriteConfigError::MergeCdrom);
        }
        main.insert("ide2".into(), cdrom);
    }
    // we do not use 'smp' any longer
    if main.get("sockets").is_some_and(|v| perl_true(v)) {
        main.remove("smp");
    } else if let Some(smp) = main.get("smp").filter(|v| perl_true(v)).cloned() {
        main.insert("sockets".into(), smp);
        main.remove("cores");
        main.remove("smp");
    }

    let mut used_volids = BTreeSet::new();
    cleanup(&mut conf.main, false, Some(&mut used_volids))?;
    if let Some(pending) = conf.pending.as_mut() {
        cleanup(&mut pending.section, true, Some(&mut used_volids))?;
    }
    for snap in conf.snapshots.values_mut() {
        cleanup(snap, false, None)?;
    }
    conf.main
        .props
        .retain(|k, v| !(k.starts_with("unused") && used_volids.contains(v)));
    Ok(print(&conf))
}

/// `$cleanup_config`: check_type on every key, collecting the volumes of
/// drives (not for snapshots).
fn cleanup(
    section: &mut Section,
    pending: bool,
    mut used_volids: Option<&mut BTreeSet<String>>,
) -> Result<(), WriteConfigError> {
    for (key, value) in section.props.iter_mut() {
        if key == "snapstate" || key == "digest" {
            continue;
        }
        if key == "delete" {
            if pending {
                continue;
            }
            return Err(WriteConfigError::PlaceDelete);
        }
        *value = check_type(key, value).map_err(|message| WriteConfigError::CheckValue {
            key: key.clone(),
            message,
        })?;
        if let Some(used) = used_volids.as_deref_mut() {
            if is_valid_drivename(key) {
                if let Some(file) = drive_file(key, value) {
                    used.insert(file);
                }
            }
        }
    }
    Ok(())
}

fn drive_file(key: &str, value: &str) -> Option<String> {
    let key: DriveKey = key.parse().ok()?;
    Drive::parse(key, value, false)
        .ok()
        .map(|d| d.file)
        .filter(|f| !f.is_empty())
}

fn perl_true(v: &str) -> bool {
    !v.is_empty() && v != "0"
}

/// Prints `conf` in qemu-server's layout, without checking values: each
/// section's description as `#` lines, then its keys sorted; `[PENDING]`
/// (with `delete:` in its sorted place) if non-empty, then the special
/// sections (`[special:cloudinit]` only while a cloud-init drive exists),
/// then the snapshots, each after an empty line.
pub fn print(conf: &VmConfig) -> String {
    let mut raw = raw_section(&conf.main, false, &BTreeMap::new());
    if let Some(pending) = conf.pending.as_ref().filter(|p| !p.is_empty()) {
        raw.push_str("\n[PENDING]\n");
        let mut extra = BTreeMap::new();
        if !pending.delete.is_empty() {
            extra.insert("delete".to_string(), print_pending_delete(&pending.delete));
        }
        raw.push_str(&raw_section(&pending.section, true, &extra));
    }
    for (name, section) in &conf.special {
        if name == "cloudinit" && !has_cloudinit(conf) {
            continue;
        }
        raw.push_str(&format!("\n[special:{name}]\n"));
        raw.push_str(&raw_section(section, false, &BTreeMap::new()));
    }
    for (name, section) in &conf.snapshots {
        raw.push_str(&format!("\n[{name}]\n"));
        raw.push_str(&raw_section(section, false, &BTreeMap::new()));
    }
    raw
}

/// `$generate_raw_config` for one section.
fn raw_section(section: &Section, pending: bool, extra: &BTreeMap<String, String>) -> String {
    let mut raw = String::new();
    if let Some(descr) = &section.description {
        if perl_true(descr) {
            for line in perl_split_lines(descr) {
                raw.push('#');
                raw.push_str(&encode_text(line));
                raw.push('\n');
            }
        } else if pending {
            raw.push_str("#\n");
        }
    }
    let mut keys: Vec<(&String, &String)> = section.props.iter().chain(extra.iter()).collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in keys {
        if matches!(
            k.as_str(),
            "digest" | "description" | "pending" | "snapshots" | "special-sections"
        ) {
            continue;
        }
        raw.push_str(k);
        raw.push_str(": ");
        raw.push_str(v);
        raw.push('\n');
    }
    raw
}

/// Perl's `split(/\n/, $text)`: trailing empty fields are dropped.
fn perl_split_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// `PVE::QemuConfig::has_cloudinit`: a drive of the main section is the
/// cloud-init drive.
fn has_cloudinit(conf: &VmConfig) -> bool {
    conf.main.props.iter().any(|(k, v)| {
        k.parse::<DriveKey>()
            .ok()
            .and_then(|key| Drive::parse(key, v, false).ok())
            .is_some_and(|d| d.is_cloudinit())
    })
}
