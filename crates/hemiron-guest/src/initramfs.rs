//! The initramfs format: a file tree serialized as a "newc" cpio archive (the only format the
//! kernel unpacks), gzip-compressed. Written by hand because the format is tiny and this lets
//! the archive hold device nodes and root-owned files without the build running as root.

use std::collections::BTreeMap;
use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::Compression;

/// One node of the guest's root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// A file tree keyed by path relative to `/` (no leading slash). Parents are created as
/// needed; the map's order puts every directory before its contents, as the kernel's
/// unpacker requires.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds (or replaces) the node at `path`, creating missing parent directories (0755).
    pub(crate) fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        for (slash, _) in path.match_indices('/') {
            self.nodes
                .entry(path[..slash].to_string())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(path.to_string(), node);
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Node::Dir { mode });
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.insert(
            path,
            Node::File {
                mode,
                data: data.into(),
            },
        );
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        );
    }

    pub(crate) fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Node::CharDevice { mode, major, minor });
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path.trim_matches('/'))
    }

    #[cfg(test)]
    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path.trim_matches('/'))
    }

    /// Writes the tree as a newc cpio archive.
    pub(crate) fn write_cpio(&self, out: impl Write) -> io::Result<()> {
        let mut cpio = CpioWriter::new(out);
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { mode } => cpio.entry(path, S_IFDIR | mode, 2, (0, 0), b"")?,
                Node::File { mode, data } => cpio.entry(path, S_IFREG | mode, 1, (0, 0), data)?,
                Node::Symlink { target } => {
                    cpio.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())?
                }
                Node::CharDevice { mode, major, minor } => {
                    cpio.entry(path, S_IFCHR | mode, 1, (*major, *minor), b"")?
                }
            }
        }
        cpio.finish()?;
        Ok(())
    }

    /// Writes the tree as a gzip-compressed newc cpio archive, the initramfs format.
    pub(crate) fn write_initramfs(&self, out: impl Write) -> io::Result<()> {
        let mut gz = GzEncoder::new(out, Compression::new(6));
        self.write_cpio(&mut gz)?;
        gz.finish()?.flush()
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes newc ("070701") cpio entries: a 110-byte ASCII-hex header, the NUL-terminated name
/// and the data, each padded to a multiple of 4 bytes.
struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// All entries belong to root and carry mtime 0, which keeps archives reproducible.
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, ino, mode, nlink, rdev, data)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let name_size = name.len() + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {devmajor:08X}{devminor:08X}{rmajor:08X}{rminor:08X}{name_size:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            devmajor = 0,
            devminor = 0,
            rmajor = rdev.0,
            rminor = rdev.1,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.write(&[0; 3][..pad])
    }

    /// Ends the archive with the `TRAILER!!!` entry.
    fn finish(mut self) -> io::Result<W> {
        self.raw_entry("TRAILER!!!", 0, 0, 1, (0, 0), b"")?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed newc entry: (name, mode, nlink, rdevmajor, rdevminor, data).
    type Entry = (String, u32, u32, u32, u32, Vec<u8>);

    /// An independent reader for the format, to check the writer against.
    fn parse_newc(mut buf: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let total = buf.len();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "entry not 4-aligned");
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, nlink, size) = (field(1), field(4), field(6) as usize);
            let (rmaj, rmin, namesize) = (field(9), field(10), field(11) as usize);
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_start = (110 + namesize + 3) & !3;
            let data = buf[data_start..data_start + size].to_vec();
            let next = (data_start + size + 3) & !3;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "data after trailer");
                return entries;
            }
            entries.push((name, mode, nlink, rmaj, rmin, data));
        }
    }

    #[test]
    fn writes_parseable_newc_with_parents_first() {
        let mut tree = Tree::default();
        tree.file("etc/init.d/rcS", 0o755, b"#!/bin/sh\n".to_vec());
        tree.symlink("init", "/bin/busybox");
        tree.char_device("dev/console", 0o600, 5, 1);
        tree.dir("tmp", 0o1777);
        tree.file("a-b", 0o644, b"12345".to_vec());
        tree.file("a/x", 0o600, Vec::new());
        let mut out = Vec::new();
        tree.write_cpio(&mut out).unwrap();
        let entries = parse_newc(&out);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a-b",
                "a/x",
                "dev",
                "dev/console",
                "etc",
                "etc/init.d",
                "etc/init.d/rcS",
                "init",
                "tmp"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("etc/init.d/rcS").1, 0o100755);
        assert_eq!(get("etc/init.d/rcS").5, b"#!/bin/sh\n");
        assert_eq!(get("a-b").5, b"12345");
        assert_eq!(get("init").1, 0o120777);
        assert_eq!(get("init").5, b"/bin/busybox");
        assert_eq!(
            (
                get("dev/console").1,
                get("dev/console").3,
                get("dev/console").4
            ),
            (0o020600, 5, 1)
        );
        assert_eq!((get("tmp").1, get("tmp").2), (0o041777, 2));
        assert_eq!(get("etc").1, 0o040755);
    }

    #[test]
    fn header_layout_matches_newc() {
        let mut out = Vec::new();
        let mut w = CpioWriter::new(&mut out);
        w.entry("ab", 0o100644, 1, (0, 0), b"xyz").unwrap();
        w.finish().unwrap();
        // 110-byte header + "ab\0" = 113, padded to 116; 3 data bytes padded to 4.
        assert_eq!(&out[..14], b"07070100000001");
        assert_eq!(&out[110..116], b"ab\0\0\0\0");
        assert_eq!(&out[116..120], b"xyz\0");
        assert_eq!(&out[120..126], b"070701");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn initramfs_is_gzip_of_cpio() {
        use std::io::Read;
        let mut tree = Tree::default();
        tree.file("hello", 0o644, b"world".to_vec());
        let mut gz = Vec::new();
        tree.write_initramfs(&mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut cpio)
            .unwrap();
        assert_eq!(parse_newc(&cpio)[0].0, "hello");
    }
}
