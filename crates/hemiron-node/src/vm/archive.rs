//! Writing a backup archive (a tar file) with its disk images made in place.
//!
//! A disk image is the archive's largest part; copying it into the tar after making it
//! would write it twice. Instead the writer puts an empty qcow2 where the member's data
//! starts and QEMU fills it through a `raw` layer at that offset (the file grows as it
//! writes); the member's header, whose size is known only then, is written last. The
//! result is an ordinary tar whose members are contiguous, as restores read them.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Tar's block size.
const BLOCK: u64 = 512;

/// An archive being written.
pub struct ArchiveWriter {
    path: PathBuf,
    file: File,
    /// Where the next member's header goes.
    end: u64,
    mtime: u64,
}

/// A member whose data QEMU is writing.
pub struct InPlace {
    header_at: u64,
    pub data_at: u64,
}

fn header(name: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    // GNU headers carry sizes above 8 GiB.
    let mut h = tar::Header::new_gnu();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

impl ArchiveWriter {
    pub fn create(path: &Path, mtime: u64) -> io::Result<ArchiveWriter> {
        Ok(ArchiveWriter {
            path: path.to_path_buf(),
            file: File::create(path)?,
            end: 0,
            mtime,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Zeros up to the next block boundary after `len`, and moves the end there.
    fn close_member(&mut self, len: u64) -> io::Result<()> {
        let padded = len.div_ceil(BLOCK) * BLOCK;
        self.file.set_len(padded.max(self.file.metadata()?.len()))?;
        self.end = padded;
        Ok(())
    }

    /// A member given whole.
    pub fn add_data(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let h = header(name, data.len() as u64, self.mtime)?;
        self.file.write_all_at(h.as_bytes(), self.end)?;
        self.file.write_all_at(data, self.end + BLOCK)?;
        self.close_member(self.end + BLOCK + data.len() as u64)
    }

    /// A member copied from a file.
    pub fn add_file(&mut self, name: &str, src: &Path) -> io::Result<()> {
        let mut input = File::open(src)?;
        let len = input.metadata()?.len();
        let h = header(name, len, self.mtime)?;
        self.file.write_all_at(h.as_bytes(), self.end)?;
        self.file.seek(SeekFrom::Start(self.end + BLOCK))?;
        let copied = io::copy(&mut input, &mut self.file)?;
        if copied != len {
            return Err(io::Error::other(format!(
                "{} changed while it was copied",
                src.display()
            )));
        }
        self.close_member(self.end + BLOCK + len)
    }

    /// Starts a member whose data is written by QEMU: `start` (an empty image's bytes) is
    /// put where the data begins.
    pub fn begin_in_place(&mut self, start: &[u8]) -> io::Result<InPlace> {
        let member = InPlace {
            header_at: self.end,
            data_at: self.end + BLOCK,
        };
        self.file
            .write_all_at(&[0; BLOCK as usize], member.header_at)?;
        self.file.write_all_at(start, member.data_at)?;
        Ok(member)
    }

    /// Ends an in-place member: its data is what QEMU wrote, up to the end of the file.
    pub fn end_in_place(&mut self, member: InPlace, name: &str) -> io::Result<()> {
        let len = self.file.metadata()?.len() - member.data_at;
        let h = header(name, len, self.mtime)?;
        self.file.write_all_at(h.as_bytes(), member.header_at)?;
        self.close_member(member.data_at + len)
    }

    /// The two zero blocks that end a tar, and everything on disk.
    pub fn finish(mut self) -> io::Result<()> {
        let end = self.end;
        self.file.write_all_at(&[0; 2 * BLOCK as usize], end)?;
        self.file.flush()?;
        self.file.sync_all()
    }

    /// A `json:` spec through which QEMU reads or writes a qcow2 image that starts at
    /// `offset` in `archive` (and, when `size` is given, ends within it).
    pub fn qcow2_spec(archive: &Path, offset: u64, size: Option<u64>) -> serde_json::Value {
        let mut raw = serde_json::json!({
            "driver": "raw",
            "offset": offset,
            "file": { "driver": "file", "filename": archive.to_string_lossy() },
        });
        if let Some(s) = size {
            raw["size"] = s.into();
        }
        serde_json::json!({ "driver": "qcow2", "file": raw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_read_back_with_the_tar_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let copied = dir.path().join("copied");
        std::fs::write(&copied, vec![7u8; 1000]).unwrap();
        let mut w = ArchiveWriter::create(&path, 1_700_000_000).unwrap();
        w.add_data("index.json", b"{}").unwrap();
        let m = w.begin_in_place(b"START").unwrap();
        // What QEMU would do: write past the start, growing the file.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"-GROWN", m.data_at + 5).unwrap();
        w.end_in_place(m, "disk-scsi0.qcow2").unwrap();
        w.add_file("disk-scsi1.qcow2", &copied).unwrap();
        w.finish().unwrap();

        let mut archive = tar::Archive::new(File::open(&path).unwrap());
        let mut got = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            got.push((e.path().unwrap().to_string_lossy().into_owned(), data));
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("index.json".into(), b"{}".to_vec()));
        assert_eq!(got[1], ("disk-scsi0.qcow2".into(), b"START-GROWN".to_vec()));
        assert_eq!(got[2], ("disk-scsi1.qcow2".into(), vec![7u8; 1000]));
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 512, 0);
    }
}
