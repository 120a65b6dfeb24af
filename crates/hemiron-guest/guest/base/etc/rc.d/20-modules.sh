# Drivers. The image builder wrote modules.dep and modules.alias for the modules it ships
# (as depmod would), so busybox modprobe resolves dependencies and device aliases. Device
# drivers load only for devices that are present: every module costs boot time under TCG.
# Drivers of devices hot-added later are loaded by /etc/hemiron/hotplug.
# 1. what every guest needs: file systems, SCSI disk and CD-ROM, the power button…
# shellcheck disable=SC2046 # one word per module or alias
modprobe -a $(cat /etc/hemiron/modules) || hemiron_log "loading base modules failed"
# 2. drivers for the PCI devices present (storage controllers, NICs, virtio transport)
modprobe -q -a $(cat /sys/bus/pci/devices/*/modalias)
# 3. drivers for the virtio devices that virtio_pci just found (disks, NICs, balloon, rng)
if [ -d /sys/bus/virtio/devices ]; then
	modprobe -q -a $(cat /sys/bus/virtio/devices/*/modalias 2>/dev/null)
fi
