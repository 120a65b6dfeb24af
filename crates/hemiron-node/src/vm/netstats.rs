//! Network traffic counters of running VMs.
//!
//! QEMU's user-mode network has no byte counters, and there is no host tap device to read
//! them from as Proxmox does. So each NIC gets two `filter-dump` objects writing a pcap of
//! its traffic with 1 byte captured per packet; the agent adds up the packets' original
//! lengths. Files are read incrementally; the read part is hole-punched away so disk use stays
//! bounded, and the position and totals are kept in a sidecar file so an agent restart
//! continues where it left off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes sent to and from a VM since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Traffic sent to the guest (`netin`).
    pub rx_bytes: u64,
    /// Traffic sent by the guest (`netout`).
    pub tx_bytes: u64,
}

const PCAP_HEADER: u64 = 24;
const RECORD_HEADER: usize = 16;
/// Read regions are freed once this much was consumed.
const PUNCH_THRESHOLD: u64 = 1 << 20;

/// Serialises readers: status calls may run concurrently for one VM.
static READ_LOCK: Mutex<()> = Mutex::new(());

/// The pcap file for a NIC and direction: `in` is traffic to the guest.
pub fn dump_file(run_dir: &Path, vmid: u32, nic: u32, inbound: bool) -> PathBuf {
    let dir = if inbound { "in" } else { "out" };
    run_dir.join(format!("{vmid}-net{nic}-{dir}.pcap"))
}

/// The `-object filter-dump` arguments of a NIC. Filters on a netdev's `rx` queue see
/// what the guest sends; on its `tx` queue what it receives.
pub fn filter_args(run_dir: &Path, vmid: u32, nic: u32) -> [String; 2] {
    let obj = |inbound: bool| {
        let (queue, dir) = if inbound { ("tx", "in") } else { ("rx", "out") };
        format!(
            "filter-dump,id=dump-net{nic}-{dir},netdev=net{nic},queue={queue},maxlen=1,file={}",
            dump_file(run_dir, vmid, nic, inbound).display()
        )
    };
    [obj(true), obj(false)]
}

fn sidecar(pcap: &Path) -> PathBuf {
    pcap.with_extension("count")
}

/// Reads new records of one pcap and returns the total of their original lengths.
fn total_of(pcap: &Path) -> u64 {
    let side = sidecar(pcap);
    let (mut offset, mut total) = std::fs::read_to_string(&side)
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .unwrap_or((PCAP_HEADER, 0u64));
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(pcap) else {
        return total;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < offset {
        // A new QEMU truncated the file: start over.
        offset = PCAP_HEADER;
        total = 0;
    }
    if len <= offset || file.seek(SeekFrom::Start(offset)).is_err() {
        return total;
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return total;
    }
    let mut pos = 0usize;
    while pos + RECORD_HEADER <= buf.len() {
        let field = |i: usize| {
            let b = &buf[pos + i..pos + i + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
        };
        let incl = field(8) as usize;
        let orig = field(12);
        if pos + RECORD_HEADER + incl > buf.len() {
            break; // a record still being written
        }
        total += orig;
        pos += RECORD_HEADER + incl;
    }
    let new_offset = offset + pos as u64;
    if new_offset != offset {
        let _ =
            crate::fsutil::write_atomic(&side, format!("{new_offset} {total}\n").as_bytes(), 0o644);
        punch(&file, new_offset);
    }
    total
}

/// Frees the blocks of the consumed part of the file (its size stays the same).
fn punch(file: &File, upto: u64) {
    let block = 4096u64;
    let end = upto / block * block;
    if end > block && end >= PUNCH_THRESHOLD {
        let _ = rustix::fs::fallocate(
            file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            block,
            end - block,
        );
    }
}

/// Traffic counters of a VM over all its NICs.
pub fn read(run_dir: &Path, vmid: u32) -> NetCounters {
    let _guard = READ_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = NetCounters::default();
    for nic in 0..32 {
        let inbound = dump_file(run_dir, vmid, nic, true);
        if !inbound.exists() {
            continue;
        }
        c.rx_bytes += total_of(&inbound);
        c.tx_bytes += total_of(&dump_file(run_dir, vmid, nic, false));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(orig: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(0u32.to_le_bytes());
        r.extend(0u32.to_le_bytes());
        r.extend(1u32.to_le_bytes());
        r.extend(orig.to_le_bytes());
        r.push(0xab);
        r
    }

    #[test]
    fn counts_complete_records_incrementally() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dump_file(dir.path(), 100, 0, true);
        let pout = dump_file(dir.path(), 100, 0, false);
        let mut fin = File::create(&pin).unwrap();
        fin.write_all(&[0u8; 24]).unwrap();
        fin.write_all(&record(1500)).unwrap();
        fin.write_all(&record(60)).unwrap();
        std::fs::write(&pout, [0u8; 24]).unwrap();
        assert_eq!(
            read(dir.path(), 100),
            NetCounters {
                rx_bytes: 1560,
                tx_bytes: 0
            }
        );
        // Half a record does not count yet.
        let r = record(100);
        fin.write_all(&r[..10]).unwrap();
        assert_eq!(read(dir.path(), 100).rx_bytes, 1560);
        fin.write_all(&r[10..]).unwrap();
        assert_eq!(read(dir.path(), 100).rx_bytes, 1660);
        // A restarted QEMU truncates the file.
        drop(fin);
        std::fs::write(&pin, [0u8; 24]).unwrap();
        assert_eq!(read(dir.path(), 100).rx_bytes, 0);
    }
}
