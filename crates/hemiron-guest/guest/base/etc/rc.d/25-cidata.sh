# cloud-init NoCloud, as Proxmox VE provides it: an ISO 9660 CD-ROM labelled "cidata" (on
# ide2, or a SCSI or SATA CD drive; NoCloud's vfat "cidata" volume works too) holding
# user-data, meta-data and network-config. Read on every boot, so changed settings take
# effect at the next one. /etc/hemiron/cloudinit/parse validates everything into
# /run/hemiron/cloudinit (instance-id, hostname, user, password, authorized_keys, net/, …);
# nothing on the CD is executed. This step applies what the boot needs:
# - the hostname goes to /run/hemiron/hostname (and the FQDN to /run/hemiron/fqdn), which
#   30-hostname.sh applies;
# - per-MAC network settings stay in /run/hemiron/cloudinit/net/, which hemiron_net_up
#   (40-network.sh, hotplug) applies instead of DHCP; nameservers go to /etc/resolv.conf.
# The user, its password and SSH keys only matter to the SSH server, which sets them up as it
# starts (/etc/init.d/sshd), off the boot's critical path. Without a seed nothing changes.

hemiron_cidata() {
	hemiron_dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
	[ -n "$hemiron_dev" ] || return 0
	read -r hemiron_started _ </proc/uptime
	hemiron_mnt=/run/hemiron/cidata.mnt
	hemiron_seed=/run/hemiron/cidata.seed
	hemiron_ci=/run/hemiron/cloudinit
	mkdir -p "$hemiron_mnt" "$hemiron_seed" "$hemiron_ci"
	chmod 0700 "$hemiron_seed" "$hemiron_ci"
	if ! mount -t iso9660 -o ro "$hemiron_dev" "$hemiron_mnt" 2>/dev/null &&
		! mount -t vfat -o ro "$hemiron_dev" "$hemiron_mnt" 2>/dev/null; then
		hemiron_log "cloud-init: cannot mount $hemiron_dev"
		return 0
	fi
	# At most 1 MiB of each file (Proxmox allows 3 MiB for all of them together).
	for hemiron_f in user-data meta-data network-config; do
		[ -f "$hemiron_mnt/$hemiron_f" ] &&
			head -c 1048576 "$hemiron_mnt/$hemiron_f" >"$hemiron_seed/$hemiron_f"
	done
	umount "$hemiron_mnt"
	/etc/hemiron/cloudinit/parse "$hemiron_seed" "$hemiron_ci"
	rm -rf "$hemiron_seed"
	while read -r hemiron_line; do
		hemiron_log "cloud-init: $hemiron_line"
	done <"$hemiron_ci/log"

	hemiron_host=unchanged
	if [ -s "$hemiron_ci/hostname" ]; then
		read -r hemiron_host <"$hemiron_ci/hostname"
		printf '%s\n' "$hemiron_host" >/run/hemiron/hostname
	fi
	if [ -s "$hemiron_ci/fqdn" ]; then
		read -r hemiron_fqdn <"$hemiron_ci/fqdn"
		printf '%s\n' "$hemiron_fqdn" >/run/hemiron/fqdn
	fi
	if [ -f "$hemiron_ci/resolv.conf" ]; then
		while read -r hemiron_line; do
			printf '%s\n' "$hemiron_line"
		done <"$hemiron_ci/resolv.conf" >/etc/resolv.conf
	fi

	hemiron_nets=0
	for hemiron_f in "$hemiron_ci"/net/*; do
		[ -e "$hemiron_f" ] && hemiron_nets=$((hemiron_nets + 1))
	done
	hemiron_keys=0
	while read -r hemiron_line; do
		hemiron_keys=$((hemiron_keys + 1))
	done <"$hemiron_ci/authorized_keys"
	hemiron_password="no password"
	[ -s "$hemiron_ci/password" ] && hemiron_password="password set"
	read -r hemiron_id <"$hemiron_ci/instance-id"
	read -r hemiron_user <"$hemiron_ci/user"
	read -r hemiron_now _ </proc/uptime
	hemiron_log "cloud-init: instance $hemiron_id from $hemiron_dev: hostname $hemiron_host," \
		"user $hemiron_user ($hemiron_keys SSH keys, $hemiron_password)," \
		"network settings for $hemiron_nets interfaces;" \
		"read in $(hemiron_seconds_between "$hemiron_started" "$hemiron_now") s"
}

hemiron_cidata
