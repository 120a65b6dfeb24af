//! Boot order, disks and their controllers.

use std::path::PathBuf;

use hemiron_pve::views::{Boot, Drive, DriveBus, Media};

use super::{drives, nets, Builder};
use crate::qemu::devices::{self, DriveSource};
use crate::storage::parse_volid;

impl Builder<'_> {
    /// The devices to boot from, in order: `boot: order=…`, or the legacy `cdn` letters
    /// with `bootdisk`.
    fn boot_order(&mut self) -> Vec<String> {
        let boot = self.view("boot", Boot::parse).unwrap_or_default();
        if let Some(order) = boot.order {
            return order;
        }
        let all_drives = drives(self.conf);
        let is_cdrom = |v: &str| v.contains("media=cdrom");
        let mut order = Vec::new();
        for c in boot.legacy.unwrap_or_else(|| "cdn".into()).chars() {
            match c {
                'c' => order.extend(self.get("bootdisk").cloned().or_else(|| {
                    all_drives
                        .iter()
                        .find(|(_, v)| !is_cdrom(v))
                        .map(|(k, _)| k.to_string())
                })),
                'd' => order.extend(
                    all_drives
                        .iter()
                        .filter(|(_, v)| is_cdrom(v))
                        .map(|(k, _)| k.to_string()),
                ),
                'n' => order.extend(nets(self.conf).iter().map(|(i, _)| format!("net{i}"))),
                _ => {}
            }
        }
        order
    }

    /// `bootindex` of a device: 100, 200, … in boot order.
    pub(super) fn bootindex(&self, dev: &str) -> Option<u32> {
        self.order
            .iter()
            .position(|o| o == dev)
            .map(|p| 100 * (p as u32 + 1))
    }

    /// Where a drive's data is: a volume, a host path, or nothing (an empty CD-ROM).
    fn drive_source(&mut self, key: &str, drive: &Drive) -> Option<DriveSource> {
        if drive.file == "none" {
            return Some(DriveSource::Empty);
        }
        if drive.file.starts_with('/') {
            return Some(DriveSource::File {
                path: PathBuf::from(&drive.file),
                format: drive.format.clone().unwrap_or_else(|| "raw".into()),
            });
        }
        let resolved = parse_volid(&drive.file).and_then(|v| {
            let path = self.ctx.storage.path(&v)?;
            let fmt = drive
                .format
                .clone()
                .or_else(|| crate::storage::volume_format(&v).map(|f| f.as_str().to_string()))
                .unwrap_or_else(|| "raw".into());
            Ok((path, fmt))
        });
        match resolved {
            Ok((path, format)) => Some(DriveSource::File { path, format }),
            Err(e) => {
                self.error(key, e.to_string());
                None
            }
        }
    }

    pub(super) fn storage(&mut self) {
        self.order = self.boot_order();
        let scsihw = self
            .get("scsihw")
            .map(String::as_str)
            .unwrap_or("lsi")
            .to_string();
        let (scsi_model, per_controller) = devices::scsi_controller(&scsihw);
        let mut scsi_controllers: Vec<u32> = Vec::new();
        let mut have_ahci = false;
        for (key, _) in drives(self.conf) {
            if key.bus == DriveBus::Efidisk {
                continue;
            }
            let name = key.to_string();
            // A parse failure is recorded by `view`.
            let Some(drive) = self.view(&name, |v| Drive::parse(key, v, false)) else {
                continue;
            };
            let Some(source) = self.drive_source(&name, &drive) else {
                continue;
            };
            // `snapshot=1`: the VM writes to a throwaway overlay over the volume.
            let source = match source {
                DriveSource::File { path, format }
                    if drive.snapshot == Some(true) && drive.media != Some(Media::Cdrom) =>
                {
                    let overlay = devices::snapshot_overlay(self.run_dir(), self.vmid(), &key);
                    self.overlays.push((overlay.clone(), path, format));
                    DriveSource::File {
                        path: overlay,
                        format: "qcow2".into(),
                    }
                }
                other => other,
            };
            match key.bus {
                DriveBus::Scsi if scsihw == "virtio-scsi-single" => {
                    let id = format!("virtioscsi{}", key.index);
                    let mut c = format!("virtio-scsi-pci,id={id},{}", self.pci.place(&id));
                    if drive.iothread == Some(true) {
                        self.push(&["-object", &format!("iothread,id=iothread-{id}")]);
                        c.push_str(&format!(",iothread=iothread-{id}"));
                    }
                    if let Some(q) = drive.queues {
                        c.push_str(&format!(",num_queues={q}"));
                    }
                    self.push(&["-device", &c]);
                }
                DriveBus::Scsi => {
                    let ctrl = key.index / per_controller;
                    if !scsi_controllers.contains(&ctrl) {
                        scsi_controllers.push(ctrl);
                        let id = format!("scsihw{ctrl}");
                        let dev = format!("{scsi_model},id={id},{}", self.pci.place(&id));
                        self.push(&["-device", &dev]);
                    }
                }
                DriveBus::Sata if !have_ahci => {
                    have_ahci = true;
                    let dev = format!("ahci,id=ahci0,multifunction=on,{}", self.pci.place("ahci0"));
                    self.push(&["-device", &dev]);
                }
                DriveBus::Virtio if drive.iothread == Some(true) => {
                    self.push(&["-object", &format!("iothread,id=iothread-{key}")]);
                }
                _ => {}
            }
            let blockdev = devices::blockdev_args(&key, &drive, &source);
            self.argv.extend(blockdev);
            let bootindex = self.bootindex(&name);
            let device = devices::drive_device(
                &key,
                &drive,
                &source,
                &scsihw,
                self.q35,
                &mut self.pci,
                bootindex,
            );
            self.push(&["-device", &device]);
        }
    }
}
