# Reads a NoCloud network-config version 1, flattened by yaml.awk (only the lines of the file
# network-config count), and prints what the guest
# applies, one validated setting per line (fields separated by tabs):
#   link      MAC                      an interface the config names (by MAC address)
#   static    MAC ADDR/PREFIX [GW]     IPv4 address and default gateway
#   dhcp4     MAC
#   static6   MAC ADDR/PREFIX [GW]
#   dhcp6     MAC
#   slaac     MAC
#   nameserver ADDR
#   search    DOMAIN
#   skip      REASON                   something left out, for the console log
# Interfaces are matched by MAC address, never by name: the guest may order its NICs
# differently from the config. Anything that does not validate is skipped, never passed on.

function ipv4(s,    n, a, i) {
	n = split(s, a, ".")
	if (n != 4)
		return 0
	for (i = 1; i <= 4; i++)
		if (a[i] !~ /^[0-9][0-9]?[0-9]?$/ || a[i] + 0 > 255)
			return 0
	return 1
}

function ipv6(s) {
	return s ~ /^[0-9A-Fa-f:.]+$/ && s ~ /:/ && length(s) <= 45
}

# Prefix length of a netmask given as 255.255.255.0 or as 24; -1 if invalid.
function prefix_len(m,    a, i, b, v, bits, zero) {
	if (m ~ /^[0-9][0-9]?$/)
		return m + 0 <= 32 ? m + 0 : -1
	if (!ipv4(m))
		return -1
	split(m, a, ".")
	bits = 0
	zero = 0
	for (i = 1; i <= 4; i++) {
		v = a[i] + 0
		for (b = 128; b >= 1; b = int(b / 2)) {
			if (v >= b) {
				if (zero)
					return -1
				bits++
				v -= b
			} else {
				zero = 1
			}
		}
	}
	return bits
}

function domain(s) {
	return s ~ /^[A-Za-z0-9][A-Za-z0-9.-]*$/ && length(s) <= 253
}

function out(a, b, c, d) {
	printf "%s\t%s", a, b
	if (c != "")
		printf "\t%s", c
	if (d != "")
		printf "\t%s", d
	printf "\n"
}

function add_dns(kind, v) {
	if (kind == "nameserver" && !(ipv4(v) || ipv6(v))) {
		out("skip", "invalid nameserver " v)
		return
	}
	if (kind == "search" && !domain(v)) {
		out("skip", "invalid search domain " v)
		return
	}
	if ((kind, v) in dns_seen)
		return
	dns_seen[kind, v] = 1
	dns_n++
	dns_kind[dns_n] = kind
	dns_val[dns_n] = v
}

BEGIN {
	FS = "\t"
	OFS = "\t"
	n = -1
}

!sub(/^network-config:/, "", $1) {
	next
}

$1 == "version" {
	version = $2
	next
}

match($1, /^config\[[0-9]+\]/) {
	i = substr($1, 8, RLENGTH - 8) + 0
	if (i > n)
		n = i
	rest = substr($1, RLENGTH + 1)
	if (rest == ".type")
		etype[i] = $2
	else if (rest == ".mac_address")
		emac[i] = tolower($2)
	else if (rest ~ /^\.address\[[0-9]+\]$/)
		ns[i, ++ns_n[i]] = $2
	else if (rest ~ /^\.search\[[0-9]+\]$/)
		sd[i, ++sd_n[i]] = $2
	else if (match(rest, /^\.subnets\[[0-9]+\]/)) {
		j = substr(rest, 10, RLENGTH - 10) + 0
		if (j + 1 > nsub[i])
			nsub[i] = j + 1
		field = substr(rest, RLENGTH + 2)
		if (field ~ /^dns_nameservers\[[0-9]+\]$/)
			sns[i, j, ++sns_n[i, j]] = $2
		else if (field ~ /^dns_search\[[0-9]+\]$/)
			ssd[i, j, ++ssd_n[i, j]] = $2
		else
			sub_f[i, j, field] = $2
	}
}

END {
	if (version != "1") {
		out("skip", "network-config version " (version == "" ? "missing" : version) " is not supported (only version 1)")
		exit
	}
	for (i = 0; i <= n; i++) {
		if (etype[i] == "nameserver") {
			for (k = 1; k <= ns_n[i]; k++)
				add_dns("nameserver", ns[i, k])
			for (k = 1; k <= sd_n[i]; k++)
				add_dns("search", sd[i, k])
			continue
		}
		if (etype[i] != "physical") {
			if (etype[i] != "")
				out("skip", "interface type " etype[i] " is not supported")
			continue
		}
		mac = emac[i]
		if (mac !~ /^[0-9a-f][0-9a-f](:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])$/) {
			out("skip", "physical interface without a valid mac_address")
			continue
		}
		out("link", mac)
		for (j = 0; j < nsub[i]; j++) {
			t = sub_f[i, j, "type"]
			addr = sub_f[i, j, "address"]
			gw = sub_f[i, j, "gateway"]
			if (t == "static") {
				pfx = -1
				if (split(addr, parts, "/") == 2) {
					addr = parts[1]
					pfx = prefix_len(parts[2])
				} else {
					pfx = prefix_len(sub_f[i, j, "netmask"])
				}
				if (!ipv4(addr) || pfx < 0) {
					out("skip", mac " invalid static address " addr)
					continue
				}
				if (gw != "" && !ipv4(gw)) {
					out("skip", mac " invalid gateway " gw)
					gw = ""
				}
				out("static", mac, addr "/" pfx, gw)
			} else if (t == "static6") {
				if (split(addr, parts, "/") != 2 || !ipv6(parts[1]) || parts[2] !~ /^[0-9][0-9]?[0-9]?$/ || parts[2] + 0 > 128) {
					out("skip", mac " invalid static6 address " addr)
					continue
				}
				if (gw != "" && !ipv6(gw)) {
					out("skip", mac " invalid IPv6 gateway " gw)
					gw = ""
				}
				out("static6", mac, addr, gw)
			} else if (t == "dhcp" || t == "dhcp4") {
				out("dhcp4", mac)
			} else if (t == "dhcp6") {
				out("dhcp6", mac)
			} else if (t == "ipv6_slaac") {
				out("slaac", mac)
			} else {
				out("skip", mac " subnet type " t " is not supported")
			}
			for (k = 1; k <= sns_n[i, j]; k++)
				add_dns("nameserver", sns[i, j, k])
			for (k = 1; k <= ssd_n[i, j]; k++)
				add_dns("search", ssd[i, j, k])
		}
	}
	for (k = 1; k <= dns_n; k++)
		out(dns_kind[k], dns_val[k])
}
