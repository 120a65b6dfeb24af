//! NICs on host bridges during a live migration.
//!
//! Until the switchover, frames for a migrating guest would go to the source's tap only; those
//! that arrive while the guest is stopped for the final copy are lost with the source's QEMU
//! (a connection attempt among them waits for the client's 1 s SYN timeout). So, when the
//! migration starts, the source's tap stops learning and the guest's MAC leaves the bridge's
//! forwarding table: the bridge floods the guest's frames to every port, the target's tap
//! among them, whose paused QEMU keeps them until the guest resumes there (duplicates of
//! what the source already took are dropped by the guest's TCP). The target's announcement
//! after the switchover teaches the bridge the guest's new port. A migration that fails
//! gives the source's tap its learning back.

use std::collections::BTreeMap;

use tracing::{info, warn};

/// The tap devices of a QEMU process by NIC (`net0` → `tap100i0`), read from its command line.
pub fn taps_of(pid: u32) -> BTreeMap<String, String> {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return BTreeMap::new();
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    taps_in(&args)
}

/// [`taps_of`] on a command line.
pub fn taps_in(args: &[String]) -> BTreeMap<String, String> {
    args.windows(2)
        .filter(|w| w[0] == "-netdev" && w[1].starts_with("tap,"))
        .filter_map(|w| {
            let field = |k: &str| {
                w[1].split(',')
                    .find_map(|kv| kv.strip_prefix(k))
                    .map(str::to_string)
            };
            Some((field("id=")?, field("ifname=")?))
        })
        .collect()
}

async fn bridge_cmd(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("bridge")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("bridge {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "bridge {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Floods the guest's frames (`mac`) to every port of the bridge `tap` is on, by turning the
/// tap's learning off and removing the MAC from the forwarding table.
pub async fn flood(tap: &str, mac: &str) -> Result<(), String> {
    bridge_cmd(&["link", "set", "dev", tap, "learning", "off"]).await?;
    // Not there (nothing sent to the guest lately) is as good as removed.
    if let Err(e) = bridge_cmd(&["fdb", "del", mac, "dev", tap, "master"]).await {
        info!(tap, mac, error = %e, "no forwarding entry to remove");
    }
    Ok(())
}

/// Gives `tap` its learning back (a migration that did not happen).
pub async fn unflood(tap: &str) {
    if let Err(e) = bridge_cmd(&["link", "set", "dev", tap, "learning", "on"]).await {
        warn!(tap, error = %e, "tap learning not restored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_come_from_tap_netdevs_only() {
        let args: Vec<String> = [
            "qemu",
            "-netdev",
            "tap,id=net0,ifname=tap100i0,script=no,downscript=no,vhost=off",
            "-netdev",
            "user,id=net1,hostfwd=tcp:127.0.0.1:1-:80",
            "-netdev",
            "tap,id=net2,ifname=tap100i2b,script=no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let taps = taps_in(&args);
        assert_eq!(taps.len(), 2);
        assert_eq!(taps["net0"], "tap100i0");
        assert_eq!(taps["net2"], "tap100i2b");
    }
}
