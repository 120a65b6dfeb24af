//! Device views: guest agent, VGA, RNG and watchdog.

use super::{view_text, Reader, ViewError, Writer};
use crate::schema::{parse_property_string, PropertyMap};
use crate::spec::qm;

/// The guest agent's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentType {
    /// `virtio` (virtio-serial, the default).
    Virtio,
    /// `isa` (ISA serial).
    Isa,
}

impl AgentType {
    fn as_str(self) -> &'static str {
        match self {
            AgentType::Virtio => "virtio",
            AgentType::Isa => "isa",
        }
    }
}

/// `agent`: `[enabled=]<1|0>[,freeze-fs=<1|0>][,fstrim_cloned_disks=<1|0>][,type=...]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agent {
    /// Whether QEMU gets a guest-agent channel.
    pub enabled: bool,
    /// `freeze-fs` (also read from its old names).
    pub freeze_fs: Option<bool>,
    /// `fstrim_cloned_disks`
    pub fstrim_cloned_disks: Option<bool>,
    /// `type`
    pub agent_type: Option<AgentType>,
}

impl Agent {
    /// Parses an `agent` value.
    pub fn parse(value: &str) -> Result<Agent, ViewError> {
        let map = parse_property_string(&qm::AGENT_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Agent {
            enabled: r.boolean("enabled").unwrap_or(false),
            freeze_fs: r.boolean("freeze-fs"),
            fstrim_cloned_disks: r.boolean("fstrim_cloned_disks"),
            agent_type: r.string("type").map(|t| {
                if t == "isa" {
                    AgentType::Isa
                } else {
                    AgentType::Virtio
                }
            }),
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.flag("enabled", Some(self.enabled))
            .flag("freeze-fs", self.freeze_fs)
            .flag("fstrim_cloned_disks", self.fstrim_cloned_disks)
            .put("type", self.agent_type.map(AgentType::as_str));
        w.0
    }
}
view_text!(Agent, qm::AGENT_FORMAT);

/// `vga`: `[[type=]<type>][,clipboard=vnc][,memory=<MiB>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vga {
    /// `std`, `virtio`, `qxl`, `serial0`, `none`, ... (PVE's default: `std`).
    pub vga_type: Option<String>,
    /// `vnc` for a VNC clipboard.
    pub clipboard: Option<String>,
    /// VGA memory in MiB (4..512).
    pub memory: Option<u32>,
}

impl Vga {
    /// Parses a `vga` value.
    pub fn parse(value: &str) -> Result<Vga, ViewError> {
        let map = parse_property_string(&qm::VGA_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Vga {
            vga_type: r.string("type"),
            clipboard: r.string("clipboard"),
            memory: r.int("memory")?,
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("type", self.vga_type.as_ref())
            .put("clipboard", self.clipboard.as_ref())
            .put("memory", self.memory);
        w.0
    }
}
view_text!(Vga, qm::VGA_FORMAT);

/// `rng0`: `[source=]</dev/urandom|/dev/random|/dev/hwrng>[,max_bytes=..][,period=..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    /// The host entropy source.
    pub source: String,
    /// Bytes per period (PVE's default 1024; 0 disables limiting).
    pub max_bytes: Option<u64>,
    /// Period in ms (PVE's default 1000).
    pub period: Option<u64>,
}

impl Rng {
    /// Parses an `rng0` value.
    pub fn parse(value: &str) -> Result<Rng, ViewError> {
        let map = parse_property_string(&qm::RNG_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Rng {
            source: r.string("source").unwrap_or_default(),
            max_bytes: r.int("max_bytes")?,
            period: r.int("period")?,
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("source", Some(&self.source))
            .put("max_bytes", self.max_bytes)
            .put("period", self.period);
        w.0
    }
}
view_text!(Rng, qm::RNG_FORMAT);

/// `watchdog`: `[[model=]<i6300esb|ib700>][,action=<action>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watchdog {
    /// The emulated watchdog (PVE's default: `i6300esb`).
    pub model: Option<String>,
    /// What to do when it fires.
    pub action: Option<String>,
}

impl Watchdog {
    /// Parses a `watchdog` value.
    pub fn parse(value: &str) -> Result<Watchdog, ViewError> {
        let map = parse_property_string(&qm::WATCHDOG_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Watchdog {
            model: r.string("model"),
            action: r.string("action"),
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("model", self.model.as_ref())
            .put("action", self.action.as_ref());
        w.0
    }
}
view_text!(Watchdog, qm::WATCHDOG_FORMAT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            Agent::parse("1,fstrim_cloned_disks=1").unwrap().to_string(),
            "1,fstrim_cloned_disks=1"
        );
        assert_eq!(
            Agent::parse("enabled=1,guest-fsfreeze=0")
                .unwrap()
                .freeze_fs,
            Some(false)
        );
        assert_eq!(Vga::parse("type=serial0").unwrap().to_string(), "serial0");
        assert_eq!(
            Rng::parse("/dev/urandom,max_bytes=0").unwrap().to_string(),
            "/dev/urandom,max_bytes=0"
        );
        assert_eq!(
            Watchdog::parse("action=reset").unwrap().to_string(),
            "action=reset"
        );
    }
}
