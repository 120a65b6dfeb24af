//! Typed views of the property strings the node agent turns into a QEMU
//! command line.
//!
//! Each view parses through the same schema as the API (so it accepts
//! exactly what PVE accepts, aliases and all) and prints through PVE's
//! `print_property_string` ordering, so `parse` then `to_string` yields
//! PVE's canonical form: `virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1`,
//! `local:100/vm-100-disk-0.qcow2,cache=writeback,size=32G`. Numbers are
//! normalised on the way (`+5` prints as `5`, `1.50` as `1.5`).

mod cloudinit;
mod devices;
mod drive;
mod drive_opts;
mod net;
mod vm;

pub use cloudinit::{IpConfig, Ipv4Config, Ipv6Config};
pub use devices::{Agent, AgentType, Rng, Vga, Watchdog};
pub use drive::Drive;
pub use drive_opts::{Aio, CacheMode, Discard, DriveBus, DriveKey, DriveThrottle, Media};
pub use net::{NetDevice, NicModel};
pub use vm::{Boot, Cpu, CpuFlag, Machine, Memory, Smbios1, Startup};

use std::str::FromStr;

use crate::schema::{numify, PropertyMap, PropertyStringError};

/// Why a property string could not be read into a typed view.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    /// The string does not pass PVE's schema; carries PVE's message.
    #[error("{0}")]
    ParsePropertyString(#[from] PropertyStringError),
    /// A value passed the schema but does not fit the Rust type.
    #[error("invalid value for '{key}': {value}")]
    ConvertValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A rule qemu-server checks beyond the schema (e.g. `parse_drive`).
    #[error("{0}")]
    CheckSemantics(String),
}

/// Reads typed values out of a parsed property map.
pub(crate) struct Reader<'a>(pub(crate) &'a PropertyMap);

impl Reader<'_> {
    pub(crate) fn string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    /// Booleans are already `1`/`0` after parsing.
    pub(crate) fn boolean(&self, key: &str) -> Option<bool> {
        self.0.get(key).map(|v| v == "1")
    }

    pub(crate) fn int<T: FromStr>(&self, key: &str) -> Result<Option<T>, ViewError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let text = v.trim_end_matches('\n');
        let text = text.strip_prefix('+').unwrap_or(text);
        text.parse().map(Some).map_err(|_| ViewError::ConvertValue {
            key: key.to_string(),
            value: v.clone(),
        })
    }

    pub(crate) fn num(&self, key: &str) -> Option<f64> {
        self.0.get(key).map(|v| numify(v))
    }

    pub(crate) fn parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, ViewError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        v.parse().map(Some).map_err(|_| ViewError::ConvertValue {
            key: key.to_string(),
            value: v.clone(),
        })
    }
}

/// Builds a property map from typed values.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) PropertyMap);

impl Writer {
    pub(crate) fn put(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        if let Some(v) = value {
            self.0.insert(key.to_string(), v.to_string());
        }
        self
    }

    pub(crate) fn flag(&mut self, key: &str, value: Option<bool>) -> &mut Self {
        self.put(key, value.map(|b| if b { "1" } else { "0" }))
    }
}

/// Implements `FromStr` via `parse` and `Display` via `to_map` + PVE's
/// print order for a view type.
macro_rules! view_text {
    ($ty:ty, $fmt:expr) => {
        impl std::str::FromStr for $ty {
            type Err = $crate::views::ViewError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::parse(s)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$crate::schema::print_unchecked(&$fmt, &self.to_map()))
            }
        }
    };
}
pub(crate) use view_text;
