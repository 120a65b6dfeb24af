//! What a dynamically linked ELF file needs at run time: the shared libraries named by its
//! `DT_NEEDED` entries and the program interpreter (`PT_INTERP`, the dynamic loader).

use object::elf::{FileHeader64, DT_NEEDED};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

/// The run-time needs of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DynamicInfo {
    /// Sonames of the libraries it needs (`libc.so.6`), in `DT_NEEDED` order.
    pub needed: Vec<String>,
    /// The loader an executable asks for, e.g. `/lib64/ld-linux-x86-64.so.2`; shared
    /// libraries have none.
    pub interpreter: Option<String>,
}

/// Why an ELF file's dynamic information could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not a readable 64-bit ELF file")]
    Parse(#[source] object::read::Error),
    #[error("a DT_NEEDED entry is not valid UTF-8")]
    NeededName,
}

/// Reads the `DT_NEEDED` entries and the interpreter of a 64-bit ELF file. A statically linked
/// file has neither.
pub(crate) fn dynamic_info(data: &[u8]) -> Result<DynamicInfo, ElfError> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(ElfError::Parse)?;
    let endian = header.endian().map_err(ElfError::Parse)?;
    let mut info = DynamicInfo::default();
    for segment in header
        .program_headers(endian, data)
        .map_err(ElfError::Parse)?
    {
        if let Some(interp) = segment.interpreter(endian, data).map_err(ElfError::Parse)? {
            info.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data).map_err(ElfError::Parse)?;
    if let Some((entries, strings_index)) =
        sections.dynamic(endian, data).map_err(ElfError::Parse)?
    {
        let strings = sections
            .strings(endian, data, strings_index)
            .map_err(ElfError::Parse)?;
        for entry in entries {
            if entry.tag32(endian) == Some(DT_NEEDED) {
                let name = entry.string(endian, strings).map_err(ElfError::Parse)?;
                let name = std::str::from_utf8(name).map_err(|_| ElfError::NeededName)?;
                info.needed.push(name.to_string());
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is a dynamically linked x86-64 executable (Rust links glibc
    /// dynamically), so it shows both parts.
    #[test]
    fn reads_needed_and_interpreter_of_a_real_executable() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = dynamic_info(&exe).unwrap();
        assert!(
            info.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            info.needed
        );
        let interp = info.interpreter.unwrap();
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert!(matches!(
            dynamic_info(b"#!/bin/sh\necho hi\n"),
            Err(ElfError::Parse(_))
        ));
    }
}
