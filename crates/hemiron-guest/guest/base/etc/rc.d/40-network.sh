# Loopback, then every Ethernet interface: as the cloud-init seed says for its MAC address,
# else DHCP (see hemiron_net_up). NICs hot-added later get the same from /etc/hemiron/hotplug.
ip link set lo up
for hemiron_dev in /sys/class/net/eth*; do
	[ -e "$hemiron_dev" ] && hemiron_net_up "${hemiron_dev##*/}"
done
