# Helpers shared by the boot steps in /etc/rc.d and the scripts init starts.

# Logs a line on the serial console.
hemiron_log() {
	echo "hemiron: $*" >/dev/console
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
# Later steps may call this again, e.g. once a cloud-init source is read.
hemiron_set_hostname() {
	if ! hemiron_valid_hostname "$1"; then
		hemiron_log "refusing invalid hostname '$1'"
		return 1
	fi
	hostname "$1"
	echo "$1" >/etc/hostname
	printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$1" >/etc/hosts
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

# Prints the first global IPv4 address, or nothing.
hemiron_ipv4() {
	ip -4 -o addr show scope global | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1
}
