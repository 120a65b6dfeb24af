//! MAC addresses of virtual NICs.
//!
//! PVE generates a NIC's MAC when `net<n>` has none (`PVE::Tools::random_ether_addr`):
//! six random bytes with the multicast (I/G) bit cleared and the
//! locally-administered bit set, after which the datacenter's `mac_prefix`
//! (default `BC:24:11`, the IEEE OUI assigned to Proxmox) *replaces* the
//! leading characters. With the default prefix the result is therefore a
//! globally administered address in Proxmox's OUI; the local bit only
//! survives when no prefix (or a shorter one) is configured.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// The prefix PVE's datacenter config uses by default for generated MACs.
pub const PROXMOX_MAC_PREFIX: &str = "BC:24:11";

/// A 48-bit MAC address. Displays as PVE writes generated ones: upper-case
/// hex pairs separated by colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Text that is not a MAC address, or a prefix that cannot start one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Parsing `XX:XX:XX:XX:XX:XX` failed.
    #[error("invalid MAC address '{0}'")]
    Parse(String),
    /// The configured prefix does not yield a valid address.
    #[error("invalid MAC prefix '{0}'")]
    Prefix(String),
}

impl MacAddr {
    /// Whether the I/G bit is clear, which PVE's `mac-addr` format requires.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    /// Whether the locally-administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 2 != 0
    }

    /// A random address generated the way PVE does, with `prefix` (e.g.
    /// [`PROXMOX_MAC_PREFIX`]) replacing its leading characters.
    pub fn random_with_prefix<R: Rng + ?Sized>(
        prefix: Option<&str>,
        rng: &mut R,
    ) -> Result<MacAddr, MacError> {
        let mut bytes: [u8; 6] = rng.gen();
        // clear multicast, set local id
        bytes[0] = (bytes[0] & 0xfe) | 2;
        let text = MacAddr(bytes).to_string();
        let Some(prefix) = prefix else {
            return Ok(MacAddr(bytes));
        };
        let rest = text
            .get(prefix.len()..)
            .ok_or_else(|| MacError::Prefix(prefix.to_string()))?;
        let combined = format!("{}{rest}", prefix.to_uppercase());
        combined
            .parse()
            .map_err(|_| MacError::Prefix(prefix.to_string()))
    }

    /// A random address under Proxmox's OUI, as a default PVE install makes.
    pub fn random_proxmox() -> MacAddr {
        let mut rng = rand::thread_rng();
        let mut bytes: [u8; 6] = rng.gen();
        bytes[..3].copy_from_slice(&[0xBC, 0x24, 0x11]);
        MacAddr(bytes)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError::Parse(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let mac: MacAddr = "bc:24:11:aa:0b:Cc".parse().unwrap();
        assert_eq!(mac.to_string(), "BC:24:11:AA:0B:CC");
        assert!(mac.is_unicast());
        assert!(!mac.is_local());
        for bad in [
            "",
            "bc:24:11:aa:0b",
            "bc:24:11:aa:0b:cc:dd",
            "bc-24-11-aa-0b-cc",
            "g0:00:00:00:00:00",
            "0:00:00:00:00:000",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_like_pve() {
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            let plain = MacAddr::random_with_prefix(None, &mut rng).unwrap();
            assert!(plain.is_unicast() && plain.is_local());
            let prox = MacAddr::random_with_prefix(Some("bc:24:11"), &mut rng).unwrap();
            assert_eq!(&prox.0[..3], &[0xBC, 0x24, 0x11]);
            assert!(prox.is_unicast() && !prox.is_local());
            assert_eq!(&MacAddr::random_proxmox().0[..3], &[0xBC, 0x24, 0x11]);
        }
        assert!(MacAddr::random_with_prefix(Some("zz"), &mut rng).is_err());
    }
}
