//! `ipconfig[n]`: the cloud-init network configuration of a NIC.

use super::{view_text, Reader, ViewError, Writer};
use crate::schema::{parse_property_string, PropertyMap};
use crate::spec::device;

/// `ip` of `ipconfig[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv4Config {
    /// `dhcp`
    Dhcp,
    /// `manual`: configured elsewhere.
    Manual,
    /// An address in CIDR notation, as written.
    Static(String),
}

/// `ip6` of `ipconfig[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Config {
    /// `auto` (SLAAC).
    Auto,
    /// `dhcp`
    Dhcp,
    /// `manual`
    Manual,
    /// An address in CIDR notation, as written.
    Static(String),
}

/// `ipconfig[n]`: `[ip=<cidr>|dhcp][,gw=<ip>][,ip6=<cidr>|dhcp|auto][,gw6=<ip>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpConfig {
    /// IPv4 configuration.
    pub ip: Option<Ipv4Config>,
    /// IPv4 gateway.
    pub gw: Option<String>,
    /// IPv6 configuration.
    pub ip6: Option<Ipv6Config>,
    /// IPv6 gateway.
    pub gw6: Option<String>,
}

impl IpConfig {
    /// Parses an `ipconfig[n]` value against the schema only; see
    /// [`IpConfig::effective`] for qemu-server's further rules.
    pub fn parse(value: &str) -> Result<IpConfig, ViewError> {
        let map = parse_property_string(&device::IPCONFIG_FORMAT, value)?;
        let r = Reader(&map);
        Ok(IpConfig {
            ip: r.string("ip").map(|v| match v.as_str() {
                "dhcp" => Ipv4Config::Dhcp,
                "manual" => Ipv4Config::Manual,
                _ => Ipv4Config::Static(v),
            }),
            gw: r.string("gw"),
            ip6: r.string("ip6").map(|v| match v.as_str() {
                "auto" => Ipv6Config::Auto,
                "dhcp" => Ipv6Config::Dhcp,
                "manual" => Ipv6Config::Manual,
                _ => Ipv6Config::Static(v),
            }),
            gw6: r.string("gw6"),
        })
    }

    /// qemu-server's `parse_ipconfig` rules on top of the schema: a gateway
    /// needs an address of its family, not DHCP (IPv4) or DHCP/auto (IPv6);
    /// with neither address set, both families use DHCP.
    pub fn effective(&self) -> Result<IpConfig, ViewError> {
        let bad = |m: &str| Err(ViewError::CheckSemantics(m.to_string()));
        if self.gw.is_some() && self.ip.is_none() {
            return bad("gateway specified without specifying an IP address");
        }
        if self.gw6.is_some() && self.ip6.is_none() {
            return bad("IPv6 gateway specified without specifying an IPv6 address");
        }
        if self.gw.is_some() && self.ip == Some(Ipv4Config::Dhcp) {
            return bad("gateway specified together with DHCP");
        }
        if let (Some(_), Some(ip6)) = (&self.gw6, &self.ip6) {
            if !matches!(ip6, Ipv6Config::Static(_)) {
                return bad("IPv6 gateway specified together with a non-static IPv6 address");
            }
        }
        if self.ip.is_none() && self.ip6.is_none() {
            return Ok(IpConfig {
                ip: Some(Ipv4Config::Dhcp),
                ip6: Some(Ipv6Config::Dhcp),
                ..IpConfig::default()
            });
        }
        Ok(self.clone())
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let ip = self.ip.as_ref().map(|i| match i {
            Ipv4Config::Dhcp => "dhcp".to_string(),
            Ipv4Config::Manual => "manual".to_string(),
            Ipv4Config::Static(a) => a.clone(),
        });
        let ip6 = self.ip6.as_ref().map(|i| match i {
            Ipv6Config::Auto => "auto".to_string(),
            Ipv6Config::Dhcp => "dhcp".to_string(),
            Ipv6Config::Manual => "manual".to_string(),
            Ipv6Config::Static(a) => a.clone(),
        });
        let mut w = Writer::default();
        w.put("gw", self.gw.as_ref())
            .put("gw6", self.gw6.as_ref())
            .put("ip", ip)
            .put("ip6", ip6);
        w.0
    }
}
view_text!(IpConfig, device::IPCONFIG_FORMAT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_rules() {
        let ip = IpConfig::parse("gw=10.0.0.1,ip=10.0.0.5/24").unwrap();
        assert_eq!(ip.ip, Some(Ipv4Config::Static("10.0.0.5/24".into())));
        assert_eq!(ip.to_string(), "gw=10.0.0.1,ip=10.0.0.5/24");
        assert_eq!(
            IpConfig::parse("gw=10.0.0.1").unwrap_err().to_string(),
            "format error\nip: missing property - 'gw' requires this property\n"
        );
        assert!(IpConfig::parse("ip=dhcp,gw=10.0.0.1")
            .unwrap()
            .effective()
            .is_err());
        assert_eq!(
            IpConfig::parse("").unwrap().effective().unwrap().ip6,
            Some(Ipv6Config::Dhcp)
        );
    }
}
