# Loopback, then DHCP on every Ethernet interface (see hemiron_dhcp). NICs hot-added later
# get the same from /etc/hemiron/hotplug.
ip link set lo up
for hemiron_dev in /sys/class/net/eth*; do
	[ -e "$hemiron_dev" ] && hemiron_dhcp "${hemiron_dev##*/}"
done
