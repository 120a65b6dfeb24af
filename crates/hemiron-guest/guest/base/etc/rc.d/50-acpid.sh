# ACPI power button -> /etc/acpi/PWRF/00000080 -> poweroff, so that QMP system_powerdown
# (a Proxmox "shutdown") stops the guest. Deliberately not supervised by init: tests kill it
# to play a guest that ignores ACPI.
acpid -c /etc/acpi -l /run/hemiron/acpid.log
