//! How many of each indexed VM config property exist, from qemu-server
//! (`$MAX_NETS`, `Drive.pm`'s `$MAX_*_DISKS`, `PCI.pm`, `USB.pm`, ...).

/// `net0`..`net31` (and `ipconfig0`..`ipconfig31`).
pub const MAX_NETS: u16 = 32;
/// `ide0`..`ide3`.
pub const MAX_IDE_DISKS: u16 = 4;
/// `sata0`..`sata5`.
pub const MAX_SATA_DISKS: u16 = 6;
/// `scsi0`..`scsi30`.
pub const MAX_SCSI_DISKS: u16 = 31;
/// `virtio0`..`virtio15`.
pub const MAX_VIRTIO_DISKS: u16 = 16;
/// `unused0`..`unused255`.
pub const MAX_UNUSED_DISKS: u16 = 256;
/// `serial0`..`serial3`.
pub const MAX_SERIAL_PORTS: u16 = 4;
/// `parallel0`..`parallel2`.
pub const MAX_PARALLEL_PORTS: u16 = 3;
/// `usb0`..`usb13`.
pub const MAX_USB_DEVICES: u16 = 14;
/// `hostpci0`..`hostpci15`.
pub const MAX_HOSTPCI_DEVICES: u16 = 16;
/// `numa0`..`numa7`.
pub const MAX_NUMA: u16 = 8;
/// `virtiofs0`..`virtiofs9`.
pub const MAX_VIRTIOFS: u16 = 10;

/// qemu-server's `is_valid_drivename`: `ide<0-3>`, `sata<0-5>`, `scsi<0-30>`,
/// `virtio<0-15>`, `efidisk0` or `tpmstate0` (not `unused<n>`).
pub fn is_valid_drivename(name: &str) -> bool {
    if name == "efidisk0" || name == "tpmstate0" {
        return true;
    }
    [
        ("ide", MAX_IDE_DISKS),
        ("sata", MAX_SATA_DISKS),
        ("scsi", MAX_SCSI_DISKS),
        ("virtio", MAX_VIRTIO_DISKS),
    ]
    .iter()
    .any(|(prefix, count)| {
        name.strip_prefix(prefix)
            .and_then(crate::schema::parse_index)
            .is_some_and(|i| i < u32::from(*count))
    })
}

/// Every drive name in qemu-server's order (used to pick a boot disk).
pub fn valid_drive_names() -> Vec<String> {
    let mut names = Vec::new();
    for (prefix, count) in [
        ("ide", MAX_IDE_DISKS),
        ("scsi", MAX_SCSI_DISKS),
        ("virtio", MAX_VIRTIO_DISKS),
        ("sata", MAX_SATA_DISKS),
    ] {
        names.extend((0..count).map(|i| format!("{prefix}{i}")));
    }
    names.push("efidisk0".to_string());
    names.push("tpmstate0".to_string());
    names
}
