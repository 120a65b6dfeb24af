//! `net[n]`: a virtual NIC.

use std::fmt;
use std::str::FromStr;

use super::{view_text, Reader, ViewError, Writer};
use crate::mac::MacAddr;
use crate::schema::{parse_property_string, PropertyMap};
use crate::spec::device::NET_FORMAT;

/// NIC models, named exactly as PVE names them.
#[allow(non_camel_case_types)] // variant names mirror PVE's model names
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicModel {
    /// `e1000`
    E1000,
    /// `e1000-82540em`
    E1000_82540em,
    /// `e1000-82544gc`
    E1000_82544gc,
    /// `e1000-82545em`
    E1000_82545em,
    /// `e1000e`
    E1000e,
    /// `i82551`
    I82551,
    /// `i82557b`
    I82557b,
    /// `i82559er`
    I82559er,
    /// `ne2k_isa`
    Ne2kIsa,
    /// `ne2k_pci`
    Ne2kPci,
    /// `pcnet`
    Pcnet,
    /// `rtl8139`
    Rtl8139,
    /// `virtio`
    Virtio,
    /// `vmxnet3`
    Vmxnet3,
}

impl NicModel {
    /// All models.
    pub const ALL: [NicModel; 14] = [
        NicModel::E1000,
        NicModel::E1000_82540em,
        NicModel::E1000_82544gc,
        NicModel::E1000_82545em,
        NicModel::E1000e,
        NicModel::I82551,
        NicModel::I82557b,
        NicModel::I82559er,
        NicModel::Ne2kIsa,
        NicModel::Ne2kPci,
        NicModel::Pcnet,
        NicModel::Rtl8139,
        NicModel::Virtio,
        NicModel::Vmxnet3,
    ];

    /// The name in config strings.
    pub fn as_str(self) -> &'static str {
        match self {
            NicModel::E1000 => "e1000",
            NicModel::E1000_82540em => "e1000-82540em",
            NicModel::E1000_82544gc => "e1000-82544gc",
            NicModel::E1000_82545em => "e1000-82545em",
            NicModel::E1000e => "e1000e",
            NicModel::I82551 => "i82551",
            NicModel::I82557b => "i82557b",
            NicModel::I82559er => "i82559er",
            NicModel::Ne2kIsa => "ne2k_isa",
            NicModel::Ne2kPci => "ne2k_pci",
            NicModel::Pcnet => "pcnet",
            NicModel::Rtl8139 => "rtl8139",
            NicModel::Virtio => "virtio",
            NicModel::Vmxnet3 => "vmxnet3",
        }
    }
}

impl FromStr for NicModel {
    type Err = ViewError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NicModel::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ViewError::ConvertValue {
                key: "model".into(),
                value: s.into(),
            })
    }
}

impl fmt::Display for NicModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `net[n]` value.
///
/// PVE writes it as `<model>=<MAC>,bridge=...` (Ansible's `proxmox_kvm`
/// regex-parses the MAC out of that form), which is what `Display` gives
/// whenever a MAC is set. Unlike PVE's `parse_net`, parsing does not make up
/// a missing MAC; call [`NetDevice::ensure_mac`] where PVE would.
#[derive(Debug, Clone, PartialEq)]
pub struct NetDevice {
    /// The emulated NIC.
    pub model: NicModel,
    /// The MAC address (printed upper-case).
    pub macaddr: Option<MacAddr>,
    /// The bridge to plug the tap into; none means QEMU user networking.
    pub bridge: Option<String>,
    /// Whether the PVE firewall filters this NIC.
    pub firewall: Option<bool>,
    /// Whether the link starts disconnected.
    pub link_down: Option<bool>,
    /// MTU (VirtIO only); 1 means "the bridge's MTU".
    pub mtu: Option<u32>,
    /// Number of packet queues.
    pub queues: Option<u32>,
    /// Rate limit in MB/s.
    pub rate: Option<f64>,
    /// VLAN tag.
    pub tag: Option<u16>,
    /// VLAN trunks, `a;b-c` as written.
    pub trunks: Option<String>,
}

impl NetDevice {
    /// A NIC of `model` on `bridge`, without MAC.
    pub fn new(model: NicModel, bridge: Option<&str>) -> NetDevice {
        NetDevice {
            model,
            macaddr: None,
            bridge: bridge.map(str::to_string),
            firewall: None,
            link_down: None,
            mtu: None,
            queues: None,
            rate: None,
            tag: None,
            trunks: None,
        }
    }

    /// Parses a `net[n]` value (`virtio,bridge=vmbr0` or
    /// `virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1`).
    pub fn parse(value: &str) -> Result<NetDevice, ViewError> {
        let map = parse_property_string(&NET_FORMAT, value)?;
        let r = Reader(&map);
        Ok(NetDevice {
            model: r.parsed("model")?.ok_or_else(|| ViewError::ConvertValue {
                key: "model".into(),
                value: String::new(),
            })?,
            macaddr: r.parsed("macaddr")?,
            bridge: r.string("bridge"),
            firewall: r.boolean("firewall"),
            link_down: r.boolean("link_down"),
            mtu: r.int("mtu")?,
            queues: r.int("queues")?,
            rate: r.num("rate"),
            tag: r.int("tag")?,
            trunks: r.string("trunks"),
        })
    }

    /// Sets a random MAC under `prefix` if none is set, as PVE does when a
    /// NIC is added without one; returns the MAC.
    pub fn ensure_mac(&mut self, prefix: Option<&str>) -> Result<MacAddr, crate::mac::MacError> {
        if let Some(mac) = self.macaddr {
            return Ok(mac);
        }
        let mac = MacAddr::random_with_prefix(prefix, &mut rand::thread_rng())?;
        self.macaddr = Some(mac);
        Ok(mac)
    }

    /// The property map PVE would hold for this NIC.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("model", Some(self.model))
            .put("macaddr", self.macaddr)
            .put("bridge", self.bridge.as_ref())
            .flag("firewall", self.firewall)
            .flag("link_down", self.link_down)
            .put("mtu", self.mtu)
            .put("queues", self.queues)
            .put("rate", self.rate)
            .put("tag", self.tag)
            .put("trunks", self.trunks.as_ref());
        w.0
    }
}

view_text!(NetDevice, NET_FORMAT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_for_ansible() {
        let n: NetDevice = "bridge=vmbr0,model=virtio,macaddr=bc:24:11:aa:bb:cc,firewall=1"
            .parse()
            .unwrap();
        assert_eq!(
            n.to_string(),
            "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1"
        );
        let n: NetDevice = "virtio,bridge=vmbr1".parse().unwrap();
        assert_eq!(n.model, NicModel::Virtio);
        assert_eq!(n.macaddr, None);
        assert_eq!(n.to_string(), "virtio,bridge=vmbr1");
        let n: NetDevice = "e1000=BC:24:11:00:00:01,rate=12.5,tag=10,trunks=2;4-6,link_down=yes"
            .parse()
            .unwrap();
        assert_eq!(n.model, NicModel::E1000);
        assert_eq!(n.link_down, Some(true));
        assert_eq!(
            n.to_string(),
            "e1000=BC:24:11:00:00:01,link_down=1,rate=12.5,tag=10,trunks=2;4-6"
        );
    }

    #[test]
    fn rejects_like_pve() {
        let err = |s: &str| NetDevice::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("virtio,tag=5000"),
            "format error\ntag: value must have a maximum value of 4094\n"
        );
        assert_eq!(
            err("model=virtio,virtio=BC:24:11:00:00:01"),
            "key alias 'model' is already defined\n"
        );
        assert_eq!(
            err("bridge=vmbr0"),
            "format error\nmodel: property is missing and it is not optional\n"
        );
        assert_eq!(
            err("virtio,e1000"),
            "duplicate key in comma-separated list property: model\n"
        );
        assert_eq!(
            err("virtio=01:00:00:00:00:00"),
            "format error\nmacaddr: invalid format - value does not look like a valid unicast MAC address\n\n"
        );
    }

    #[test]
    fn ensure_mac_uses_prefix() {
        let mut n = NetDevice::new(NicModel::Virtio, Some("vmbr0"));
        let mac = n.ensure_mac(Some(crate::mac::PROXMOX_MAC_PREFIX)).unwrap();
        assert!(mac.to_string().starts_with("BC:24:11:"));
        assert!(n
            .to_string()
            .starts_with(&format!("virtio={mac},bridge=vmbr0")));
    }
}
