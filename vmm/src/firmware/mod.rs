//! `--firmware` (docs/decisions/0015): a raw BIOS image such as SeaBIOS or qboot, or a
//! PVH-entry ELF firmware.
//!
//! A raw image is mapped as a read-only memslot ending at 4 GiB (the vCPU starts at the
//! reset vector, 0xfffffff0, its last 16 bytes) and its last 256 KiB (all of it if smaller)
//! are copied to RAM ending at 1 MiB (0xe0000-0xfffff holds the last 128 KiB), where the BIOS
//! runs in real mode after its first far jump; that copy is writable RAM, as after a BIOS
//! has opened its shadow RAM ([`BIOS_LOW_MAX`] says why 256 KiB). A PVH ELF is loaded by the PVH loader like a kernel (the RSDP in its
//! start info).
//!
//! Firmware files are checked before anything is mapped: not empty, at most 16 MiB, a raw
//! image a multiple of 4 KiB, an ELF one with a PVH entry note. Each error is one line
//! naming `--firmware`.

pub mod rom;
pub(crate) mod setup;
pub mod smbios;

use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, MmapRegion};

use crate::kvm::{KvmVm, VmError};

/// Largest firmware file (the ROM window below 4 GiB).
pub const FIRMWARE_MAX_SIZE: u64 = 16 << 20;
/// A raw image's size must be a multiple of this.
pub const FIRMWARE_ALIGN: u64 = 4096;
/// How much of a raw image's end is also copied below 1 MiB: the 128 KiB at 0xe0000 that the
/// reset code runs from, and the 128 KiB at 0xc0000 below it, where SeaBIOS's 256 KiB build
/// keeps the rest of its code (0xd2720 up): on QEMU's i440FX SeaBIOS copies that part itself
/// after opening the shadow RAM through the PAM registers, which Strata's host bridge lacks.
pub const BIOS_LOW_MAX: u64 = 256 << 10;
/// End of the copy below 1 MiB.
pub const BIOS_LOW_END: u64 = 0x10_0000;
/// End of the ROM's mapping (4 GiB).
pub const ROM_END: u64 = 1 << 32;
/// Where SeaBIOS's QEMU builds print their log (QEMU's isa-debugcon at 0x402 with
/// `-global isa-debugcon.iobase=0x402`); it reads back 0xe9 as the firmware checks.
pub const FIRMWARE_DEBUGCON_PORT: u16 = 0x402;
/// The reset vector's IP (CS base 0xffff0000).
pub const RESET_IP: u64 = 0xfff0;

/// Why a firmware could not be used. Every message names `--firmware`.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The file could not be opened or read.
    #[error("invalid --firmware {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("invalid --firmware {}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than the ROM window.
    #[error("invalid --firmware {}: {size} bytes is more than 16 MiB", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A raw image whose size is not a multiple of 4 KiB.
    #[error("invalid --firmware {}: a raw image's size must be a multiple of 4 KiB, not {size} bytes", path.display())]
    NotPageMultiple {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// An ELF without the PVH entry note.
    #[error("invalid --firmware {}: an ELF firmware needs a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)", path.display())]
    NoPvhEntry {
        /// The file.
        path: PathBuf,
    },
    /// Host memory for the ROM could not be mapped.
    #[error("unable to map --firmware's ROM: {0}")]
    Map(String),
    /// The ROM's copy below 1 MiB could not be written.
    #[error("unable to copy --firmware below 1 MiB: {0}")]
    WriteLow(vm_memory::GuestMemoryError),
    /// KVM refused the ROM's memslot.
    #[error(transparent)]
    Kvm(#[from] VmError),
}

/// A firmware file, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Firmware {
    /// A raw BIOS image: its bytes.
    Raw(Vec<u8>),
    /// A PVH-entry ELF, loaded by the PVH loader from its path.
    Pvh(PathBuf),
}

/// Reads and checks the firmware at `path`.
pub fn read(path: &Path) -> Result<Firmware, FirmwareError> {
    let read_err = |source| FirmwareError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size == 0 {
        return Err(FirmwareError::Empty {
            path: path.to_path_buf(),
        });
    }
    if size > FIRMWARE_MAX_SIZE {
        return Err(FirmwareError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.starts_with(b"\x7fELF") {
        return match crate::boot::pvh_image_span(&bytes) {
            Some(_) => Ok(Firmware::Pvh(path.to_path_buf())),
            None => Err(FirmwareError::NoPvhEntry {
                path: path.to_path_buf(),
            }),
        };
    }
    let size = bytes.len() as u64;
    if size == 0 || !size.is_multiple_of(FIRMWARE_ALIGN) || size > FIRMWARE_MAX_SIZE {
        return Err(FirmwareError::NotPageMultiple {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(Firmware::Raw(bytes))
}

/// Maps `image` as a read-only memslot (number `slot`) ending at 4 GiB, which the KVM VM
/// keeps, and copies its last 256 KiB (or all of it) into RAM ending at 1 MiB.
pub fn map_raw(
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    image: &[u8],
    slot: u32,
) -> Result<(), FirmwareError> {
    let len = image.len();
    let region = MmapRegion::new(len).map_err(|e| FirmwareError::Map(e.to_string()))?;
    // SAFETY: `region` is a fresh private anonymous mapping of exactly `len` bytes that we
    // own; nothing else aliases it yet.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), region.as_ptr(), len) };
    // SAFETY: the mapping's range is ours; MADV_DONTFORK only keeps the KVM reaper's fork
    // from copying it.
    unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_DONTFORK) };
    kvm.register_rom(slot, ROM_END - len as u64, region)?;
    let low = len.min(BIOS_LOW_MAX as usize);
    mem.write_slice(&image[len - low..], GuestAddress(BIOS_LOW_END - low as u64))
        .map_err(FirmwareError::WriteLow)
}

/// The memslot number after guest RAM's.
pub fn rom_slot(mem: &GuestMemoryMmap) -> u32 {
    mem.num_regions() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("strata-fw-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn test_firmware_read_raw_page_multiple_accepted() {
        let p = file("ok.bin", &[0x90; 8192]);

        let fw = read(&p).unwrap();

        assert_eq!(fw, Firmware::Raw(vec![0x90; 8192]));
    }

    #[test]
    fn test_firmware_read_empty_too_large_or_unaligned_refused_naming_option() {
        let empty = file("empty.bin", &[]);
        let large = file("large.bin", &vec![0; (16 << 20) + 4096]);
        let odd = file("odd.bin", &[0; 5000]);

        let errors: Vec<String> = [empty, large, odd]
            .iter()
            .map(|p| read(p).unwrap_err().to_string())
            .collect();

        assert!(errors[0].contains("is empty"), "{}", errors[0]);
        assert!(errors[1].contains("more than 16 MiB"), "{}", errors[1]);
        assert!(errors[2].contains("multiple of 4 KiB"), "{}", errors[2]);
        for e in &errors {
            assert!(e.starts_with("invalid --firmware "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn test_firmware_read_elf_without_pvh_note_refused() {
        let mut elf = vec![0u8; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        let p = file("nopvh.elf", &elf);

        let e = read(&p).unwrap_err().to_string();

        assert!(e.contains("PVH entry note"), "{e}");
    }
}
