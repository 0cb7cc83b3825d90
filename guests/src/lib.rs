//! Paths of the test guests built by this crate's build script.
//!
//! The guests are tiny GNU-assembler programs (see `asm/` and README.md)
//! and Rust programs on the ring-3 kit (`rust/`) that print on COM1 and
//! exit through the debug-exit port 0xf4.
#![deny(missing_docs)]

/// The disk pattern the `virtio` guest writes (`op=blk-write`): the same
/// source file the guest is built from.
#[path = "../rust/kit/pattern.rs"]
pub mod pattern;

// The kit's pure modules, compiled here so that their unit tests run on
// the host.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../rust/kit/cmdline.rs"]
mod kit_cmdline;
#[cfg(test)]
#[allow(dead_code)]
#[path = "../rust/kit/crc32.rs"]
mod kit_crc32;
#[cfg(test)]
#[allow(dead_code)]
#[path = "../rust/kit/virtio/layout.rs"]
mod kit_layout;

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

/// The one-line PVH guest of the density and teardown benchmarks: prints a line and ends the
/// VM (ACPI shutdown port, i8042 reset, debug exit: whichever the VMM has).
pub fn density() -> &'static Path {
    guest_path!("density.elf")
}

/// The density guest that stays up (halted, interrupts off) after its line.
pub fn density_stay() -> &'static Path {
    guest_path!("density-stay.elf")
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

/// The ring-3 guest: a PVH image that reports, then computes a CRC-32 over
/// 8 MiB in ring 3 and prints `ring3: cpl=3` and `ring3: result=<hex>`
/// (see [`ring3_expected_result`]).
pub fn ring3() -> &'static Path {
    guest_path!("ring3.elf")
}

/// The standard IEEE (zlib) CRC-32 table, as the guests use it.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// Feeds `bytes` into a running CRC-32 state (start with 0xffff_ffff,
/// finish with `!state`).
fn crc32_update(state: u32, bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(state, |crc, b| {
        CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The IEEE (zlib) CRC-32 of `data`: what the guests print as `crc32=`
/// for a module or initrd.
pub fn crc32(data: &[u8]) -> u32 {
    !crc32_update(0xffff_ffff, data.iter().copied())
}

/// The value the ring-3 guest prints as `ring3: result=`: the IEEE CRC-32
/// of the 8 MiB buffer `buf[i] = (i * 0x9e3779b1 mod 2^32) >> 24`.
pub fn ring3_expected_result() -> u32 {
    let bytes = (0..0x80_0000u32).map(|i| (i.wrapping_mul(0x9e37_79b1) >> 24) as u8);
    !crc32_update(0xffff_ffff, bytes)
}

/// The SMP guest: a PVH image whose BSP finds the CPUs in the MP table,
/// starts the APs with INIT-SIPI-SIPI and has each print `cpu <id> up`.
pub fn smp() -> &'static Path {
    guest_path!("smp.elf")
}

/// The virtio guest (Rust, ring 3): drives the virtio-blk, -rng and
/// -console devices of the transport its command line names and runs the
/// `op=` operations listed there (see README.md).
pub fn virtio() -> &'static Path {
    guest_path!("virtio.elf")
}

/// The net guest (Rust, ring 3): a polling virtio-net driver that answers
/// ARP and ICMP echo, and a virtio-vsock driver that echoes or connects
/// (see README.md).
pub fn net() -> &'static Path {
    guest_path!("net.elf")
}

/// The counter guest (Rust, ring 3): prints `count 1`, `count 2`, ...
/// forever, or up to `limit=N`.
pub fn counter() -> &'static Path {
    guest_path!("counter.elf")
}

/// The hostile guest (Rust, ring 3): breaks every virtio rule it can on
/// one disk and checks that the device, a second disk and an rng recover
/// (see rust/hostile.rs).
pub fn hostile() -> &'static Path {
    guest_path!("hostile.elf")
}

/// The ACPI guest (Rust, ring 3): follows the RSDP from `hvm_start_info`,
/// checks and lists the tables, and runs the `op=` operations on its
/// command line (S5, waiting for the power button; see README.md).
pub fn acpi() -> &'static Path {
    guest_path!("acpi.elf")
}

/// The contents of sectors `first..first + sectors` of the `virtio`
/// guest's disk pattern for `seed`.
pub fn pattern_bytes(seed: u32, first: u64, sectors: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(sectors as usize * pattern::SECTOR);
    let mut sector = [0u8; pattern::SECTOR];
    for lba in first..first + sectors {
        pattern::fill_sector(seed, lba, &mut sector);
        out.extend_from_slice(&sector);
    }
    out
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
            ("ring3", ring3()),
            ("smp", smp()),
            ("virtio", virtio()),
            ("counter", counter()),
            ("density", density()),
            ("density-stay", density_stay()),
            ("hostile", hostile()),
            ("net", net()),
            ("acpi", acpi()),
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
    fn test_all_every_guest_built() {
        // Arrange
        let guests = all();

        // Act
        let missing: Vec<_> = guests.iter().filter(|(_, p)| !p.is_file()).collect();

        // Assert
        assert_eq!(guests.len(), 15);
        assert!(missing.is_empty(), "missing guests: {missing:?}");
    }

    #[test]
    fn test_ring3_expected_result_matches_reference_value() {
        // Computed independently with Python's zlib.crc32.
        assert_eq!(ring3_expected_result(), 0x9125_6322);
    }

    #[test]
    fn test_crc32_known_vectors_match_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn test_crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn test_pattern_bytes_sector_header_names_seed_and_sector() {
        // Act
        let bytes = pattern_bytes(7, 10, 2);

        // Assert
        assert_eq!(bytes.len(), 1024);
        assert_eq!(&bytes[..8], b"strata-p");
        assert_eq!(&bytes[8..12], &7u32.to_le_bytes());
        assert_eq!(&bytes[512 + 12..512 + 16], &11u32.to_le_bytes());
    }

    #[test]
    fn test_by_name_unknown_returns_none() {
        assert_eq!(by_name("no-such-guest"), None);
        assert_eq!(by_name("pvh"), Some(pvh()));
    }
}
