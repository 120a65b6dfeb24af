//! NICs: on a Linux bridge of the host when their `bridge` names one (a tap device, as
//! Proxmox plugs `tap<vmid>i<n>` into `vmbrN`), else on QEMU's user-mode network, where net0
//! carries the loopback port forwards.

use hemiron_pve::views::NetDevice;

use super::{nets, Builder};
use crate::qemu::devices;

impl Builder<'_> {
    pub(super) fn network(&mut self) {
        for (index, _) in nets(self.conf) {
            let key = format!("net{index}");
            let Some(net) = self.view(&key, NetDevice::parse) else {
                continue;
            };
            let tap = net
                .bridge
                .as_deref()
                .filter(|b| devices::host_bridge(b))
                .map(|b| {
                    let tap = devices::tap_name(self.vmid(), index);
                    self.post.taps.push((tap.clone(), b.to_string()));
                    tap
                });
            let forwards = if index == 0 && tap.is_none() {
                self.ctx.forwards
            } else {
                None
            };
            let bootindex = self.bootindex(&key);
            let (netdev, dev) = devices::net_args(
                index,
                &net,
                forwards,
                tap.as_deref(),
                &mut self.pci,
                bootindex,
            );
            self.push(&["-netdev", &netdev, "-device", &dev]);
            for filter in crate::vm::netstats::filter_args(self.run_dir(), self.vmid(), index) {
                self.push(&["-object", &filter]);
            }
            if net.link_down == Some(true) {
                self.post.links_down.push(key);
            }
        }
    }
}
