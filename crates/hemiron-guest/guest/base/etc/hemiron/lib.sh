# Helpers shared by the boot steps in /etc/rc.d and the scripts init starts.

# Logs a line on the serial console.
hemiron_log() {
	echo "hemiron: $*" >/dev/console
}

# Prints $2 - $1, two /proc/uptime readings, in seconds with two decimals (shell
# arithmetic has no fractions, and a subprocess for it costs more than this).
hemiron_seconds_between() {
	# "1" before the two decimals keeps a leading zero from reading as octal.
	hemiron_d=$((${2%.*} * 100 + 1${2#*.} - ${1%.*} * 100 - 1${1#*.}))
	printf '%d.%02d' $((hemiron_d / 100)) $((hemiron_d % 100))
}

# Hostname sources, highest priority first: files holding one name. A boot step that runs
# before 30-hostname.sh (such as a cloud-init NoCloud reader) provides a hostname by writing
# /run/hemiron/hostname; /etc/hostname holds the image's default.
HEMIRON_HOSTNAME_SOURCES="/run/hemiron/hostname /etc/hostname"

# Succeeds if $1 is a usable hostname: letters, digits, dots and dashes, at most 64 chars.
hemiron_valid_hostname() {
	case "$1" in
	"" | -* | *[!A-Za-z0-9.-]*) return 1 ;;
	esac
	[ "${#1}" -le 64 ]
}

# Prints the hostname from the first source holding a valid one.
hemiron_pick_hostname() {
	for hemiron_src in $HEMIRON_HOSTNAME_SOURCES; do
		[ -r "$hemiron_src" ] || continue
		hemiron_name=$(head -n 1 "$hemiron_src" | tr -d ' \t\r')
		if hemiron_valid_hostname "$hemiron_name"; then
			echo "$hemiron_name"
			return 0
		fi
		hemiron_log "ignoring invalid hostname in $hemiron_src"
	done
	echo hemiron-guest
}

# Sets the hostname and rewrites everything derived from it (/etc/hosts, the web pages).
# /etc/hosts also names the FQDN that a cloud-init seed gave in /run/hemiron/fqdn.
hemiron_set_hostname() {
	if ! hemiron_valid_hostname "$1"; then
		hemiron_log "refusing invalid hostname '$1'"
		return 1
	fi
	hostname "$1"
	echo "$1" >/etc/hostname
	hemiron_names=$1
	if [ -r /run/hemiron/fqdn ]; then
		hemiron_fqdn=$(head -n 1 /run/hemiron/fqdn)
		case "$hemiron_fqdn" in
		"$1" | "" | -* | *[!A-Za-z0-9.-]*) ;;
		*) hemiron_names="$hemiron_fqdn $1" ;;
		esac
	fi
	printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$hemiron_names" >/etc/hosts
	hemiron_write_www "$1"
}

# Writes the pages httpd serves: / names the host, /hostname is the bare name. The name was
# validated, so it needs no HTML escaping. Written aside and renamed, so a request never
# sees half a file.
hemiron_write_www() {
	mkdir -p /www
	printf '%s\n' "$1" >/www/.hostname.tmp && mv /www/.hostname.tmp /www/hostname
	cat >/www/.index.tmp <<HTML && mv /www/.index.tmp /www/index.html
<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>$1</title></head>
<body>
<h1>$1</h1>
<p>Hemiron guest</p>
</body>
</html>
HTML
}

# Brings up interface $1 and runs a DHCP client on it. udhcpc sends its first DISCOVER at once
# but runs in the background, so a network without a DHCP server never holds anything up. A
# DISCOVER sent before the link is up gets lost; -T 1 retries after a second (default 3).
hemiron_dhcp() {
	ip link set "$1" up
	udhcpc -b -i "$1" -s /etc/udhcpc/default.script -p "/run/udhcpc.$1.pid" \
		-x "hostname:$(hostname)" -t 5 -T 1 -A 3 \
		</dev/null >"/run/hemiron/udhcpc.$1.log" 2>&1 &
}

# Configures interface $1: as the cloud-init seed's network-config says for its MAC address
# (see 25-cidata.sh: one setting per line of /run/hemiron/cloudinit/net/MAC), else by DHCP.
# Interfaces are matched by MAC because NICs need not appear in the order the config lists.
hemiron_net_up() {
	hemiron_mac=$(cat "/sys/class/net/$1/address" 2>/dev/null)
	hemiron_conf=/run/hemiron/cloudinit/net/$hemiron_mac
	if [ -z "$hemiron_mac" ] || [ ! -f "$hemiron_conf" ]; then
		hemiron_dhcp "$1"
		return
	fi
	ip link set "$1" up
	# One default route per interface, the first interface preferred, as with DHCP.
	hemiron_metric=$((100 + $(cat "/sys/class/net/$1/ifindex")))
	while read -r hemiron_kind hemiron_addr hemiron_gw; do
		case "$hemiron_kind" in
		static | static6)
			hemiron_family=-4
			[ "$hemiron_kind" = static6 ] && hemiron_family=-6
			ip "$hemiron_family" addr add "$hemiron_addr" dev "$1" ||
				hemiron_log "$1: cannot add address $hemiron_addr"
			if [ -n "$hemiron_gw" ]; then
				ip "$hemiron_family" route replace default via "$hemiron_gw" dev "$1" \
					metric "$hemiron_metric" || hemiron_log "$1: cannot route via $hemiron_gw"
			fi
			hemiron_log "$1 ($hemiron_mac): $hemiron_addr${hemiron_gw:+ via $hemiron_gw} (cloud-init)"
			;;
		dhcp4) hemiron_dhcp "$1" ;;
		slaac) ;; # the kernel configures SLAAC addresses by itself once the link is up
		dhcp6) hemiron_log "$1: DHCPv6 is not supported, ignored" ;;
		esac
	done <"$hemiron_conf"
}

# The identity of this VM that SSH host keys belong to: the SMBIOS system UUID (Proxmox's
# smbios1 uuid: every VM has its own, and a clone gets a new one), else the cloud-init
# instance-id (a clone gets a new one too, as its MAC addresses change; but so does every
# change of the cloud-init settings, which would change the host keys each time), else
# "none".
hemiron_instance_identity() {
	hemiron_uuid=
	[ -r /sys/class/dmi/id/product_uuid ] && read -r hemiron_uuid </sys/class/dmi/id/product_uuid
	case "$hemiron_uuid" in
	"" | 00000000-0000-0000-0000-000000000000 | *[!0-9A-Fa-f-]*) ;;
	*)
		echo "smbios:$hemiron_uuid"
		return
		;;
	esac
	if [ -s /run/hemiron/cloudinit/instance-id ]; then
		read -r hemiron_iid </run/hemiron/cloudinit/instance-id
		echo "cidata:$hemiron_iid"
		return
	fi
	echo none
}

# Prints the first global IPv4 address, or nothing.
hemiron_ipv4() {
	ip -4 -o addr show scope global | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1
}
