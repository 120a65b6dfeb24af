//! The boot disk: an MBR-partitioned raw image whose single FAT16 partition (label
//! `HEMIRONBOOT`) holds syslinux, the kernel, the initramfs and the SSH server's archive,
//! converted to qcow2. The guest keeps its own state there too (SSH host keys).
//!
//! Everything is done on image files with `mkfs.vfat -C`, mtools and syslinux's mtools-based
//! installer, so the build needs neither root nor a loop device nor `mount`. The partition
//! table is written here; the MBR boot code is syslinux-common's `mbr.bin`.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::debug;

use crate::error::BuildError;
use crate::host::{self, HostTools};

/// The partition starts at 1 MiB, the usual alignment.
pub(crate) const PARTITION_START_LBA: u64 = 2048;
const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The partition is at least this big, and has this much room beyond the boot files, since
/// the guest may later keep persistent state on it.
const MIN_PARTITION: u64 = 32 * MIB;
const SLACK: u64 = 16 * MIB;

/// The FAT volume label; the guest finds its boot partition by it.
pub const BOOT_LABEL: &str = "HEMIRONBOOT";

/// Boots the one entry at once: no prompt, no timeout.
pub(crate) const SYSLINUX_CFG: &str = "\
DEFAULT linux
PROMPT 0
TIMEOUT 0

LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0 quiet panic=-1
";

/// MBR partition type 0x0e: FAT16 addressed by LBA.
const PARTITION_TYPE_FAT16_LBA: u8 = 0x0e;
/// A fixed disk signature keeps images comparable; nothing relies on its value.
const DISK_SIGNATURE: u32 = 0x4e52_4d48; // "HMRN"

/// Size in bytes of the FAT partition for boot files of `payload` bytes: whole MiB.
pub(crate) fn partition_size(payload: u64) -> u64 {
    (payload + SLACK)
        .div_ceil(MIB)
        .max(MIN_PARTITION.div_ceil(MIB))
        * MIB
}

/// A master boot record: `boot_code` (at most 440 bytes), the disk signature, one bootable
/// partition entry and the 0x55AA signature.
pub(crate) fn mbr(boot_code: &[u8], start_lba: u64, sectors: u64) -> io::Result<[u8; 512]> {
    if boot_code.len() > 440 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("MBR boot code is {} bytes, over 440", boot_code.len()),
        ));
    }
    let (start, count) = match (u32::try_from(start_lba), u32::try_from(sectors)) {
        (Ok(s), Ok(c)) => (s, c),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "partition beyond the 2 TiB an MBR can address",
            ))
        }
    };
    let mut sector = [0u8; 512];
    sector[..boot_code.len()].copy_from_slice(boot_code);
    sector[440..444].copy_from_slice(&DISK_SIGNATURE.to_le_bytes());
    let entry = &mut sector[446..462];
    entry[0] = 0x80; // bootable
    entry[1..4].copy_from_slice(&lba_to_chs(start_lba));
    entry[4] = PARTITION_TYPE_FAT16_LBA;
    entry[5..8].copy_from_slice(&lba_to_chs(start_lba + sectors - 1));
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&count.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    Ok(sector)
}

/// CHS address of `lba` in the conventional 255-head, 63-sector geometry, for BIOSes that
/// still read it; past cylinder 1023 the conventional "use LBA" marker.
fn lba_to_chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

/// Builds the raw disk image `work/disk.img` whose boot partition holds `files` (the kernel,
/// the initramfs, …) in its root directory.
pub(crate) fn build_raw_disk(
    tools: &HostTools,
    work: &Path,
    files: &[&Path],
) -> Result<PathBuf, BuildError> {
    let mut payload = 0;
    for file in files {
        payload += file_len(file)?;
    }
    let part_size = partition_size(payload);
    let part = work.join("boot.fat");
    let cfg = work.join("syslinux.cfg");
    std::fs::write(&cfg, SYSLINUX_CFG).map_err(|source| BuildError::WriteDiskImage {
        path: cfg.clone(),
        source,
    })?;

    // FAT16 to match the partition type; -h: the hidden sectors before the partition, as a
    // DOS-style boot sector expects.
    host::run(
        Command::new(&tools.mkfs_vfat)
            .args(["-C", "-F", "16", "-n", BOOT_LABEL, "-h"])
            .arg(PARTITION_START_LBA.to_string())
            .arg(&part)
            .arg((part_size / 1024).to_string()),
    )
    .map_err(|source| BuildError::MakeFilesystem { source })?;

    host::run(
        Command::new(&tools.mcopy)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&part)
            .args(files)
            .arg(&cfg)
            .arg("::/"),
    )
    .map_err(|source| BuildError::CopyBootFiles { source })?;

    let disk = work.join("disk.img");
    write_partitioned(&tools.mbr_bin, &part, &disk, part_size)?;

    // syslinux's mtools installer writes its boot sector and ldlinux.* into the partition at
    // --offset, inside the disk image.
    host::run(
        Command::new(&tools.syslinux)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("--offset")
            .arg((PARTITION_START_LBA * SECTOR).to_string())
            .arg("--install")
            .arg(&disk),
    )
    .map_err(|source| BuildError::InstallBootloader { source })?;
    debug!(disk = %disk.display(), partition_bytes = part_size, "raw disk image built");
    Ok(disk)
}

/// Lays out `disk`: the MBR, zeros up to the partition start, then the partition image.
fn write_partitioned(
    mbr_bin: &Path,
    part: &Path,
    disk: &Path,
    part_size: u64,
) -> Result<(), BuildError> {
    let boot_code = std::fs::read(mbr_bin).map_err(|source| BuildError::ReadMbrCode {
        path: mbr_bin.to_path_buf(),
        source,
    })?;
    let err = |source| BuildError::WriteDiskImage {
        path: disk.to_path_buf(),
        source,
    };
    // mbr.bin is exactly the 440 bytes of boot code; anything longer would be a different file.
    let sector = mbr(&boot_code, PARTITION_START_LBA, part_size / SECTOR).map_err(err)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(disk)
        .map_err(err)?;
    out.write_all(&sector).map_err(err)?;
    out.seek(SeekFrom::Start(PARTITION_START_LBA * SECTOR))
        .map_err(err)?;
    let mut fs = File::open(part).map_err(err)?;
    let copied = io::copy(&mut fs, &mut out).map_err(err)?;
    if copied != part_size {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("FAT image is {copied} bytes, expected {part_size}"),
        )));
    }
    out.sync_all().map_err(err)
}

/// Converts the raw image to qcow2 at `out`.
pub(crate) fn convert_to_qcow2(
    tools: &HostTools,
    raw: &Path,
    out: &Path,
) -> Result<(), BuildError> {
    host::run(
        Command::new(&tools.qemu_img)
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(out),
    )
    .map_err(|source| BuildError::ConvertImage { source })?;
    Ok(())
}

fn file_len(path: &Path) -> Result<u64, BuildError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| BuildError::ReadBootFile {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_size_has_floor_and_slack() {
        assert_eq!(partition_size(0), 32 * MIB);
        assert_eq!(partition_size(10 * MIB), 32 * MIB);
        assert_eq!(partition_size(16 * MIB + 1), 33 * MIB);
        assert_eq!(partition_size(20 * MIB), 36 * MIB);
    }

    #[test]
    fn mbr_layout() {
        let code = [0xabu8; 440];
        let s = mbr(&code, 2048, 65536).unwrap();
        assert_eq!(&s[..440], &code[..]);
        assert_eq!(&s[440..444], b"HMRN");
        assert_eq!(&s[444..446], &[0, 0]);
        let e = &s[446..462];
        assert_eq!(e[0], 0x80);
        assert_eq!(&e[1..4], &[32, 33, 0]); // LBA 2048 = C0 H32 S33
        assert_eq!(e[4], 0x0e);
        assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 65536);
        assert!(s[462..510].iter().all(|b| *b == 0), "other entries empty");
        assert_eq!(&s[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn mbr_rejects_oversized_code_and_disk() {
        assert!(mbr(&[0; 441], 2048, 1).is_err());
        assert!(mbr(&[0; 440], 2048, 1 << 33).is_err());
    }

    #[test]
    fn chs_conversion() {
        assert_eq!(lba_to_chs(0), [0, 1, 0]);
        assert_eq!(lba_to_chs(62), [0, 63, 0]);
        assert_eq!(lba_to_chs(63), [1, 1, 0]);
        // Last sector of a 34 MiB disk: LBA 69631 = C4 H85 S17.
        assert_eq!(lba_to_chs(69631), [85, 17, 4]);
        // Cylinder 300: high bits in the sector byte.
        assert_eq!(lba_to_chs(300 * 255 * 63), [0, 1 | (1 << 6), 44]);
        assert_eq!(lba_to_chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn syslinux_cfg_boots_at_once() {
        assert!(SYSLINUX_CFG.starts_with("DEFAULT linux\n"));
        assert!(SYSLINUX_CFG.contains("PROMPT 0") && SYSLINUX_CFG.contains("TIMEOUT 0"));
        assert!(SYSLINUX_CFG.contains("APPEND console=ttyS0 quiet panic=-1"));
    }
}
