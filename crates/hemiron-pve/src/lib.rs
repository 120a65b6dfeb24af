//! Proxmox VE wire and file formats, with no business rules and no I/O.
//!
//! Hemiron's node agent serves a Proxmox-VE-compatible API so that real
//! Proxmox clients (proxmoxer, Ansible's `community.proxmox`) work against it.
//! This crate owns everything about *shapes* that those clients and PVE itself
//! agree on, mirroring the Perl implementation (pve-common, qemu-server):
//!
//! * [`schema`]: PVE's JSON-schema subset: parameter validation with PVE's
//!   exact error messages, property strings (`virtio=MAC,bridge=vmbr0`), and
//!   the named string formats (`pve-vmid`, `dns-name`, `pve-volume-id`, ...).
//! * [`spec`]: hand-written parameter specs of the endpoints Hemiron serves,
//!   including every VM config property, checked against PVE's schema dump in
//!   the tests.
//! * [`config`]: the qemu-server `<vmid>.conf` file format.
//! * [`views`]: typed views of the property strings the node agent needs to
//!   build a QEMU command line (net, drives, cpu, memory, boot order, ...).
//! * [`upid`]: task identifiers and task exit statuses.
//! * [`prune`]: backup retention (`prune-backups`) as Proxmox applies it.
//! * small helpers: [`text`] (booleans, list splitting, comment and URL
//!   encoding), [`size`] (disk sizes), [`mac`] (MAC addresses), [`volume`]
//!   (volume IDs and the disk allocation syntax).
#![forbid(unsafe_code)]

pub mod config;
pub mod mac;
pub mod prune;
pub mod schema;
pub mod size;
pub mod spec;
pub mod text;
pub mod upid;
pub mod views;
pub mod volume;

pub use schema::{
    parse_property_string, print_property_string, validate, ParamErrors, ParamSpec, ParamType,
    PropertyFormat, PropertyMap, ValidatedParams, Value,
};
pub use spec::{endpoint, EndpointSpec};
