//! fw_cfg's legacy kernel keys, filled as QEMU's `x86_load_linux` fills them, so firmware that
//! boots a kernel from fw_cfg (qboot itself; SeaBIOS through an option ROM) finds it where it
//! looks:
//!
//! - a bzImage is split: the setup (real-mode) part, its header patched as a boot loader
//!   patches it (loader type, heap, command line and initrd addresses), at `SETUP_*` for
//!   0x10000, the protected-mode part at `KERNEL_*` for 0x100000, the command line at
//!   `CMDLINE_*` for 0x20000 and the initrd at `INITRD_*` below the top of low RAM;
//! - a PVH ELF is already in guest RAM (the VMM loaded it as QEMU does): `KERNEL_ENTRY`,
//!   `KERNEL_ADDR` and `KERNEL_SIZE` describe it, `SETUP_DATA` holds the file's first 8 KiB
//!   (the firmware recognises the ELF magic there), the command line and initrd as above.
//!
//! Other kernels (multiboot, a bare vmlinux) have no fw_cfg form here (QEMU builds multiboot
//! information itself); they are refused with an error naming the option.

use std::path::{Path, PathBuf};

use super::{
    FW_CFG_CMDLINE_ADDR, FW_CFG_CMDLINE_DATA, FW_CFG_CMDLINE_SIZE, FW_CFG_INITRD_ADDR,
    FW_CFG_INITRD_DATA, FW_CFG_INITRD_SIZE, FW_CFG_KERNEL_ADDR, FW_CFG_KERNEL_DATA,
    FW_CFG_KERNEL_SIZE, FW_CFG_SETUP_ADDR, FW_CFG_SETUP_DATA, FW_CFG_SETUP_SIZE,
};

/// The kernel's entry point (u32; PVH and multiboot).
pub const FW_CFG_KERNEL_ENTRY: u16 = 0x10;
/// Where the real-mode setup goes (QEMU's `real_addr` for protocol >= 2.02).
pub const SETUP_LOAD: u32 = 0x1_0000;
/// Where the command line goes (QEMU's `cmdline_addr`).
pub const CMDLINE_LOAD: u32 = 0x2_0000;
/// Where the protected-mode kernel goes.
pub const KERNEL_LOAD: u32 = 0x10_0000;
/// Bytes of the file's head a PVH kernel's `SETUP_DATA` carries (QEMU's `header[8192]`).
const PVH_HEADER: usize = 8192;
/// What QEMU keeps free for ACPI data below the top of low RAM, which the initrd stays under.
const ACPI_DATA_SIZE: u64 = 0x2_0000 + 0x8000;
/// `type_of_loader` for an undefined boot loader with no version (QEMU's value).
const LOADER_TYPE: u8 = 0xb0;
/// `loadflags` bit: the heap end pointer is valid.
const CAN_USE_HEAP: u8 = 0x80;

/// Why the kernel cannot be handed to the firmware.
#[derive(Debug, thiserror::Error)]
pub enum LegacyBootError {
    /// A file could not be read.
    #[error("unable to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel is neither a bzImage nor a PVH ELF.
    #[error("invalid --kernel {} with --firmware: only a bzImage or a PVH ELF kernel can be handed to firmware through fw_cfg", path.display())]
    Unsupported {
        /// The kernel.
        path: PathBuf,
    },
    /// A bzImage whose setup is larger than the file, or a file larger than fw_cfg's sizes.
    #[error("invalid --kernel {}: {reason}", path.display())]
    Invalid {
        /// The kernel.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The initrd does not fit below the top of low RAM.
    #[error("invalid --initrd {}: {size} bytes do not fit below {max:#x}", path.display())]
    InitrdTooLarge {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The highest address it may reach.
        max: u64,
    },
}

/// What to hand the firmware.
pub struct LegacyKernel<'a> {
    /// The kernel file.
    pub kernel: &'a Path,
    /// The initrd file.
    pub initrd: Option<&'a Path>,
    /// The command line.
    pub cmdline: &'a str,
    /// RAM below 4 GiB, bytes (the initrd goes below its top).
    pub ram_below_4g: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, LegacyBootError> {
    std::fs::read(path).map_err(|source| LegacyBootError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn u32_of(path: &Path, v: usize) -> Result<u32, LegacyBootError> {
    u32::try_from(v).map_err(|_| LegacyBootError::Invalid {
        path: path.to_path_buf(),
        reason: format!("{v} bytes is more than fw_cfg's 32-bit sizes"),
    })
}

/// The legacy items (key, bytes) for `k`, as QEMU fills them.
pub fn items(k: &LegacyKernel<'_>) -> Result<Vec<(u16, Vec<u8>)>, LegacyBootError> {
    let bytes = read(k.kernel)?;
    let mut items = Vec::new();
    let initrd_max = if is_bzimage(&bytes) {
        let max = bzimage_initrd_max(&bytes);
        bzimage_items(k, bytes, initrd_item_addr(k, max)?, &mut items)?;
        max
    } else if let Some((start, size, entry)) = crate::boot::pvh_image_span(&bytes) {
        let mut header = bytes;
        header.resize(PVH_HEADER, 0);
        header.truncate(PVH_HEADER);
        items.push((FW_CFG_KERNEL_ENTRY, le32(entry as u32)));
        items.push((FW_CFG_KERNEL_ADDR, le32(start as u32)));
        items.push((FW_CFG_KERNEL_SIZE, le32(u32_of(k.kernel, size as usize)?)));
        items.push((FW_CFG_SETUP_SIZE, le32(PVH_HEADER as u32)));
        items.push((FW_CFG_SETUP_DATA, header));
        items.push((
            FW_CFG_CMDLINE_SIZE,
            le32(cmdline_bytes(k.cmdline).len() as u32),
        ));
        items.push((FW_CFG_CMDLINE_DATA, cmdline_bytes(k.cmdline)));
        u64::MAX
    } else {
        return Err(LegacyBootError::Unsupported {
            path: k.kernel.to_path_buf(),
        });
    };
    if let Some(path) = k.initrd {
        let data = read(path)?;
        let (addr, size) = initrd_place(k, path, data.len() as u64, initrd_max)?;
        items.push((FW_CFG_INITRD_ADDR, le32(addr)));
        items.push((FW_CFG_INITRD_SIZE, le32(size)));
        items.push((FW_CFG_INITRD_DATA, data));
    }
    Ok(items)
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn cmdline_bytes(cmdline: &str) -> Vec<u8> {
    let mut v = cmdline.as_bytes().to_vec();
    v.push(0);
    v
}

fn is_bzimage(b: &[u8]) -> bool {
    b.len() >= 0x264 && &b[0x202..0x206] == b"HdrS" && b[0x1fe..0x200] == [0x55, 0xaa]
}

fn protocol(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0x206], b[0x207]])
}

/// The highest initrd byte the header allows (`initrd_addr_max`, protocol 2.03+).
fn bzimage_initrd_max(b: &[u8]) -> u64 {
    match protocol(b) >= 0x203 {
        true => u64::from(u32::from_le_bytes([b[0x22c], b[0x22d], b[0x22e], b[0x22f]])),
        false => 0x37ff_ffff,
    }
}

/// The initrd's (address, size) placed as QEMU places it: page-aligned, as high as possible
/// below both `max` and the top of low RAM less the ACPI data QEMU keeps there.
fn initrd_place(
    k: &LegacyKernel<'_>,
    path: &Path,
    size: u64,
    max: u64,
) -> Result<(u32, u32), LegacyBootError> {
    let top = max
        .min(k.ram_below_4g.saturating_sub(ACPI_DATA_SIZE + 1))
        .min(u64::from(u32::MAX));
    let too_large = || LegacyBootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        max: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < u64::from(KERNEL_LOAD) {
        return Err(too_large());
    }
    Ok((addr as u32, size as u32))
}

/// The initrd's address for the header (0 without one).
fn initrd_item_addr(k: &LegacyKernel<'_>, max: u64) -> Result<(u32, u32), LegacyBootError> {
    match k.initrd {
        Some(path) => {
            let size = std::fs::metadata(path)
                .map_err(|source| LegacyBootError::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .len();
            initrd_place(k, path, size, max)
        }
        None => Ok((0, 0)),
    }
}

/// A bzImage split into setup and kernel, the header patched as QEMU patches it.
fn bzimage_items(
    k: &LegacyKernel<'_>,
    bytes: Vec<u8>,
    (initrd_addr, initrd_size): (u32, u32),
    items: &mut Vec<(u16, Vec<u8>)>,
) -> Result<(), LegacyBootError> {
    let sects = match bytes[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (sects + 1) * 512;
    if setup_size > bytes.len() {
        return Err(LegacyBootError::Invalid {
            path: k.kernel.to_path_buf(),
            reason: format!("setup of {setup_size} bytes is longer than the file"),
        });
    }
    let mut setup = bytes[..setup_size].to_vec();
    let kernel = bytes[setup_size..].to_vec();
    let proto = protocol(&setup);
    setup[0x210] = LOADER_TYPE;
    if proto >= 0x201 {
        setup[0x211] |= CAN_USE_HEAP;
        let heap_end = (CMDLINE_LOAD - SETUP_LOAD - 0x200) as u16;
        setup[0x224..0x226].copy_from_slice(&heap_end.to_le_bytes());
    }
    if proto >= 0x202 {
        setup[0x228..0x22c].copy_from_slice(&CMDLINE_LOAD.to_le_bytes());
    }
    setup[0x218..0x21c].copy_from_slice(&initrd_addr.to_le_bytes());
    setup[0x21c..0x220].copy_from_slice(&initrd_size.to_le_bytes());
    let cmdline = cmdline_bytes(k.cmdline);
    items.push((FW_CFG_KERNEL_ADDR, le32(KERNEL_LOAD)));
    items.push((FW_CFG_KERNEL_SIZE, le32(u32_of(k.kernel, kernel.len())?)));
    items.push((FW_CFG_KERNEL_DATA, kernel));
    items.push((FW_CFG_CMDLINE_ADDR, le32(CMDLINE_LOAD)));
    items.push((FW_CFG_CMDLINE_SIZE, le32(cmdline.len() as u32)));
    items.push((FW_CFG_CMDLINE_DATA, cmdline));
    items.push((FW_CFG_SETUP_ADDR, le32(SETUP_LOAD)));
    items.push((FW_CFG_SETUP_SIZE, le32(setup_size as u32)));
    items.push((FW_CFG_SETUP_DATA, setup));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(items: &[(u16, Vec<u8>)], key: u16) -> Vec<u8> {
        items.iter().find(|i| i.0 == key).unwrap().1.clone()
    }

    fn le(items: &[(u16, Vec<u8>)], key: u16) -> u32 {
        u32::from_le_bytes(item(items, key)[..4].try_into().unwrap())
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("strata-fwcfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A bzImage of protocol 2.12 with 3 setup sectors and a 1000-byte kernel.
    fn bzimage() -> Vec<u8> {
        let mut b = vec![0u8; 4 * 512 + 1000];
        b[0x1f1] = 3;
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
        b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        for (i, x) in b[2048..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn test_legacy_items_bzimage_split_and_header_patched_as_qemu() {
        let dir = tmp("bz");
        let kernel = write(&dir, "bz", &bzimage());
        let initrd = write(&dir, "initrd", &[7u8; 5000]);
        let k = LegacyKernel {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: "console=ttyS0",
            ram_below_4g: 128 << 20,
        };

        let items = items(&k).unwrap();

        assert_eq!(le(&items, FW_CFG_SETUP_ADDR), 0x10000);
        assert_eq!(le(&items, FW_CFG_SETUP_SIZE), 2048);
        assert_eq!(le(&items, FW_CFG_KERNEL_ADDR), 0x100000);
        assert_eq!(le(&items, FW_CFG_KERNEL_SIZE), 1000);
        assert_eq!(item(&items, FW_CFG_KERNEL_DATA), bzimage()[2048..]);
        assert_eq!(le(&items, FW_CFG_CMDLINE_ADDR), 0x20000);
        assert_eq!(le(&items, FW_CFG_CMDLINE_SIZE), 14);
        assert_eq!(item(&items, FW_CFG_CMDLINE_DATA), b"console=ttyS0\0");
        let setup = item(&items, FW_CFG_SETUP_DATA);
        assert_eq!(setup[0x210], 0xb0);
        assert_eq!(setup[0x211] & 0x80, 0x80);
        assert_eq!(&setup[0x224..0x226], &0xfe00u16.to_le_bytes());
        assert_eq!(&setup[0x228..0x22c], &0x20000u32.to_le_bytes());
        // Top of low RAM less QEMU's ACPI data, less 5000 bytes, page-aligned down.
        let initrd_addr = ((128u64 << 20) - 0x28000 - 1 - 5000) & !0xfff;
        assert_eq!(u64::from(le(&items, FW_CFG_INITRD_ADDR)), initrd_addr);
        assert_eq!(&setup[0x218..0x21c], &(initrd_addr as u32).to_le_bytes());
        assert_eq!(&setup[0x21c..0x220], &5000u32.to_le_bytes());
        assert_eq!(le(&items, FW_CFG_INITRD_SIZE), 5000);
        assert_eq!(item(&items, FW_CFG_INITRD_DATA), vec![7u8; 5000]);
    }

    #[test]
    fn test_legacy_items_other_kernel_refused_naming_option() {
        let dir = tmp("other");
        let kernel = write(&dir, "k", b"not a kernel at all");
        let k = LegacyKernel {
            kernel: &kernel,
            initrd: None,
            cmdline: "",
            ram_below_4g: 128 << 20,
        };

        let e = items(&k).err().unwrap().to_string();

        assert!(e.contains("--kernel") && e.contains("--firmware"), "{e}");
    }

    #[test]
    fn test_legacy_items_initrd_larger_than_low_ram_refused() {
        let dir = tmp("bigrd");
        let kernel = write(&dir, "bz", &bzimage());
        let initrd = write(&dir, "initrd", &vec![0u8; 3 << 20]);
        let k = LegacyKernel {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: "",
            ram_below_4g: 4 << 20,
        };

        let e = items(&k).err().unwrap().to_string();

        assert!(e.contains("--initrd"), "{e}");
    }
}
