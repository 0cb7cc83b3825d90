//! Paths of the test guests built by this crate's build script.
//!
//! The guests are tiny GNU-assembler programs (see `asm/` and README.md)
//! that print what their boot protocol handed them on COM1 and exit
//! through the debug-exit port 0xf4.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::OnceLock;

macro_rules! guest_path {
    ($file:literal) => {
        Path::new(concat!(env!("OUT_DIR"), "/", $file))
    };
}

/// The PVH guest: an ELF64 image with a XEN_ELFNOTE_PHYS32_ENTRY note.
pub fn pvh() -> &'static Path {
    guest_path!("pvh.elf")
}

/// The multiboot1 guest as an ELF32 image (no a.out kludge).
pub fn multiboot1_elf() -> &'static Path {
    guest_path!("multiboot1-elf.elf")
}

/// The multiboot1 guest as a flat binary using the a.out kludge
/// (header flag 16: load addresses and entry point in the header).
pub fn multiboot1_aout() -> &'static Path {
    guest_path!("multiboot1-aout.bin")
}

/// The multiboot2 guest: an ELF32 image with a multiboot2 header and,
/// for QEMU's sake, also a multiboot1 header.
pub fn multiboot2() -> &'static Path {
    guest_path!("multiboot2.elf")
}

/// The Linux boot protocol guest as an ELF64 "vmlinux" (no PVH note):
/// enter at the ELF entry in long mode with RSI -> boot_params.
pub fn linux_vmlinux() -> &'static Path {
    guest_path!("linux-vmlinux.elf")
}

/// The Linux boot protocol guest as a bzImage (protocol 2.12, 64-bit entry
/// at protected-mode offset 0x200, real-mode setup stub for BIOS loaders).
pub fn linux_bzimage() -> &'static Path {
    guest_path!("linux-bzImage")
}

/// Every guest as `(name, path)`; the names are those `guest-path` accepts.
pub fn all() -> &'static [(&'static str, &'static Path)] {
    static ALL: OnceLock<Vec<(&'static str, &'static Path)>> = OnceLock::new();
    ALL.get_or_init(|| {
        vec![
            ("pvh", pvh()),
            ("multiboot1-elf", multiboot1_elf()),
            ("multiboot1-aout", multiboot1_aout()),
            ("multiboot2", multiboot2()),
            ("linux-vmlinux", linux_vmlinux()),
            ("linux-bzimage", linux_bzimage()),
        ]
    })
}

/// The path of the guest called `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static Path> {
    all().iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_all_built_guests_exist() {
        // Arrange
        let guests = all();

        // Act
        let missing: Vec<_> = guests.iter().filter(|(_, p)| !p.is_file()).collect();

        // Assert
        assert!(!guests.is_empty());
        assert!(missing.is_empty(), "missing guests: {missing:?}");
    }

    #[test]
    fn test_by_name_unknown_returns_none() {
        assert_eq!(by_name("no-such-guest"), None);
        assert_eq!(by_name("pvh"), Some(pvh()));
    }
}
