//! Kernel loaders. The protocol is chosen from the image's own headers, never from its name.
//!
//! Each loader writes the kernel, its modules and the protocol's information structures into
//! guest memory and returns a [`BootEntry`]: the CPU state the boot vCPU starts in.
//!
//! Detection order (first match wins), see [`load`]:
//! 1. `HdrS` setup header at 0x202 behind a boot sector signature: Linux bzImage.
//! 2. ELF (32 or 64-bit) with a `XEN_ELFNOTE_PHYS32_ENTRY` note: PVH.
//! 3. Multiboot 2 header in the first 32 KiB: multiboot 2.
//! 4. Multiboot 1 header in the first 8 KiB: multiboot 1.
//! 5. ELF64: Linux vmlinux.
//!
//! Every kernel segment, module and information structure is checked against the machine's
//! memory map before anything is written: it must lie in RAM, outside the MMIO hole and above
//! the VMM's own boot data ([`BOOT_DATA_END`]).

#![forbid(unsafe_code)]

mod elf;
mod linux;
mod multiboot1;
mod multiboot2;
mod place;
mod pvh;
#[cfg(test)]
mod test_images;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MemoryRegion, CMDLINE_MAX_SIZE, CMDLINE_START};
use place::{low_ram_limit, mem_lower_upper, Direction};
use place::{ram_regions, Placement};

/// The boot protocols Strata speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Linux x86 boot protocol, ELF vmlinux (64-bit entry).
    LinuxElf,
    /// Linux x86 boot protocol, bzImage (64-bit entry).
    LinuxBzImage,
    /// Xen PVH start-of-day ABI (ELF note XEN_ELFNOTE_PHYS32_ENTRY).
    Pvh,
    /// Multiboot 1 (ELF or a.out kludge).
    Multiboot1,
    /// Multiboot 2.
    Multiboot2,
    /// No kernel: a raw BIOS image started at the reset vector (`--firmware`).
    Firmware,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::LinuxElf => "the Linux boot protocol (vmlinux)",
            Protocol::LinuxBzImage => "the Linux boot protocol (bzImage)",
            Protocol::Pvh => "the PVH boot protocol",
            Protocol::Multiboot1 => "multiboot 1",
            Protocol::Multiboot2 => "multiboot 2",
            Protocol::Firmware => "the firmware's reset vector",
        })
    }
}

/// The CPU mode the boot vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, first 1 GiB identity mapped, flat segments (Linux 64-bit boot protocol).
    Long64,
    /// 32-bit protected mode, paging off, flat 4 GiB code and data segments (PVH, multiboot).
    Protected32,
    /// The architectural reset state: real mode, CS base 0xffff0000, IP 0xfff0 (firmware).
    Reset,
}

/// The register state the boot vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The protocol that was used.
    pub protocol: Protocol,
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// Entry point.
    pub rip: u64,
    /// Initial stack pointer (0 where the protocol leaves it undefined).
    pub rsp: u64,
    /// RAX (multiboot magic).
    pub rax: u64,
    /// RBX (PVH start info, multiboot info).
    pub rbx: u64,
    /// RSI (Linux zero page).
    pub rsi: u64,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSource {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk (Linux) or first module (PVH, multiboot).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The machine a kernel is loaded into.
#[derive(Clone, Debug)]
pub struct BootMachine {
    /// Guest memory map, as reported to the guest.
    pub memory_map: Vec<MemoryRegion>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Where the ACPI RSDP lies, if the machine has ACPI tables (handed to PVH kernels in
    /// `hvm_start_info.rsdp_paddr` and to Linux in `boot_params.acpi_rsdp_addr`).
    pub rsdp: Option<GuestAddress>,
}

/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: GuestAddress = CMDLINE_START;

/// End (exclusive) of the VMM's boot data (GDT, PVH info, zero page, stack, page tables,
/// multiboot info, command line). No kernel segment or module may be placed below it.
pub const BOOT_DATA_END: GuestAddress = GuestAddress(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64);

/// Page size used to align modules and the initrd.
const PAGE_SIZE: u64 = 0x1000;

/// Why a kernel could not be loaded. Every message names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A kernel or module file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A kernel or module file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path names a directory or other non-regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is empty.
    #[error("{} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The kernel image is malformed or not a kernel at all.
    #[error("{}: {reason}", path.display())]
    InvalidImage {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel image is well formed but asks for something Strata does not provide.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The kernel file.
        path: PathBuf,
        /// What it asks for.
        reason: String,
    },
    /// A kernel segment (or other range the image asks for) is not in usable guest RAM.
    #[error(
        "{}: {what} at {start:#x}..{end:#x} is not in guest RAM (it overlaps the MMIO hole, \
         reserved memory or the boot data below {boot_data_end:#x}, or lies past the end of RAM)",
        path.display(),
        boot_data_end = BOOT_DATA_END.0
    )]
    OutsideRam {
        /// The kernel file.
        path: PathBuf,
        /// What was to be placed there.
        what: String,
        /// First byte.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// A module (initrd) does not fit in the free guest RAM.
    #[error(
        "{}: {size} bytes do not fit in free guest RAM below {limit:#x} (next to the kernel \
         and the boot data)",
        path.display()
    )]
    NoRoom {
        /// The module file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest address the protocol allows.
        limit: u64,
    },
    /// The command line is longer than the protocol allows.
    #[error(
        "{}: the command line of {len} bytes is longer than the {limit}-byte limit of {protocol}",
        path.display()
    )]
    CmdlineTooLong {
        /// The kernel file.
        path: PathBuf,
        /// Length of the command line, without terminating NUL.
        len: usize,
        /// Longest command line accepted, without terminating NUL.
        limit: usize,
        /// The protocol whose limit it is.
        protocol: Protocol,
    },
    /// The command line cannot be passed to the guest.
    #[error("{}: invalid command line: {reason}", path.display())]
    InvalidCmdline {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The boot information does not fit in the area reserved for it.
    #[error(
        "{}: the {what} ({size} bytes) does not fit in the {capacity} bytes reserved for it",
        path.display()
    )]
    BootInfoTooLarge {
        /// The kernel file.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Its size.
        size: usize,
        /// Room available.
        capacity: usize,
    },
    /// Writing to guest memory failed.
    #[error("{}: cannot write the {what} to guest memory at {addr:#x}: {reason}", path.display())]
    WriteMemory {
        /// The file whose data was written (kernel or module).
        path: PathBuf,
        /// What was written.
        what: String,
        /// Where.
        addr: u64,
        /// Why it failed.
        reason: String,
    },
}

/// The protocol detected from a kernel image, with what detection already parsed.
enum Detected {
    BzImage,
    Pvh(elf::ElfImage),
    Multiboot2(usize),
    Multiboot1(usize),
    Vmlinux(elf::ElfImage),
}

/// Loads the kernel (and initrd) of `source` into `mem` for `machine`, writes the boot
/// protocol's structures and returns the state the boot vCPU starts in.
///
/// The protocol comes from the image's headers (see the module documentation for the order).
/// Bad input yields a [`BootError`] naming the file and the reason; nothing is written to guest
/// memory before the kernel's segments have been checked against `machine.memory_map`.
pub fn load(
    mem: &GuestMemoryMmap,
    source: &BootSource,
    machine: &BootMachine,
) -> Result<BootEntry, BootError> {
    let kernel = KernelImage::read(&source.kernel, machine)?;
    let ctx = LoadContext {
        mem,
        source,
        machine,
        kernel: &kernel,
    };
    match detect(&kernel)? {
        Detected::BzImage => linux::load_bzimage(&ctx),
        Detected::Pvh(image) => pvh::load(&ctx, &image),
        Detected::Multiboot2(offset) => multiboot2::load(&ctx, offset),
        Detected::Multiboot1(offset) => multiboot1::load(&ctx, offset),
        Detected::Vmlinux(image) => linux::load_vmlinux(&ctx, &image),
    }
}

/// Reports which protocol [`load`] would use for the kernel at `path`, without loading it.
pub fn probe(path: &Path) -> Result<Protocol, BootError> {
    let bytes = read_regular_file(path, u64::MAX)?;
    let kernel = KernelImage {
        path: path.to_path_buf(),
        bytes,
    };
    Ok(match detect(&kernel)? {
        Detected::BzImage => Protocol::LinuxBzImage,
        Detected::Pvh(_) => Protocol::Pvh,
        Detected::Multiboot2(_) => Protocol::Multiboot2,
        Detected::Multiboot1(_) => Protocol::Multiboot1,
        Detected::Vmlinux(_) => Protocol::LinuxElf,
    })
}

/// A PVH kernel's image as QEMU describes it to firmware through fw_cfg: the lowest load
/// address, the bytes from there to the end of the last segment, and the PVH entry point.
/// None when `bytes` are not an ELF with a PVH note.
pub fn pvh_image_span(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let image = elf::parse(bytes).ok().filter(|_| elf::is_elf(bytes))?;
    let entry = image.pvh_entry?;
    let ranges = elf::segment_ranges(&image);
    let start = ranges.iter().map(|r| r.0).min()?;
    let end = ranges.iter().map(|r| r.1).max()?;
    Some((start, end - start, entry))
}

fn detect(kernel: &KernelImage) -> Result<Detected, BootError> {
    let bytes = &kernel.bytes;
    if linux::is_bzimage(bytes) {
        return Ok(Detected::BzImage);
    }
    // A malformed ELF may still boot through a multiboot header's load addresses, so its
    // error is reported only if no multiboot header is found either.
    let elf = elf::is_elf(bytes).then(|| elf::parse(bytes));
    if let Some(Ok(image)) = elf
        .as_ref()
        .filter(|e| matches!(e, Ok(i) if i.pvh_entry.is_some()))
    {
        return Ok(Detected::Pvh(image.clone()));
    }
    if let Some(offset) = multiboot2::find_header(bytes) {
        return Ok(Detected::Multiboot2(offset));
    }
    if let Some(offset) = multiboot1::find_header(bytes) {
        return Ok(Detected::Multiboot1(offset));
    }
    match elf {
        Some(Err(reason)) => Err(kernel.invalid(reason)),
        Some(Ok(image)) if image.class64 => Ok(Detected::Vmlinux(image)),
        Some(Ok(_)) => Err(kernel.invalid(
            "32-bit ELF image without a PVH note or multiboot header; Strata boots 32-bit \
             ELF kernels only through PVH or multiboot"
                .into(),
        )),
        None => Err(kernel.invalid(
            "not a kernel image Strata can boot (no ELF, bzImage or multiboot header)".into(),
        )),
    }
}

/// A kernel image read into host memory.
struct KernelImage {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl KernelImage {
    fn read(path: &Path, machine: &BootMachine) -> Result<Self, BootError> {
        let ram = ram_regions(machine).map(|(s, e)| e - s).sum::<u64>();
        let bytes = read_regular_file(path, ram)?;
        Ok(KernelImage {
            path: path.to_path_buf(),
            bytes,
        })
    }

    fn invalid(&self, reason: String) -> BootError {
        BootError::InvalidImage {
            path: self.path.clone(),
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> BootError {
        BootError::Unsupported {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Opens `path`, checks that it is a non-empty regular file of at most `max` bytes.
fn open_regular_file(path: &Path, max: u64) -> Result<(File, u64), BootError> {
    let open_err = |source| BootError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(BootError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() == 0 {
        return Err(BootError::Empty {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > max {
        return Err(BootError::InvalidImage {
            path: path.to_path_buf(),
            reason: format!(
                "the file of {} bytes is larger than guest RAM ({max} bytes)",
                meta.len()
            ),
        });
    }
    Ok((file, meta.len()))
}

fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, BootError> {
    let (mut file, len) = open_regular_file(path, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|source| BootError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Everything a protocol loader needs.
struct LoadContext<'a> {
    mem: &'a GuestMemoryMmap,
    source: &'a BootSource,
    machine: &'a BootMachine,
    kernel: &'a KernelImage,
}

impl LoadContext<'_> {
    /// Checks that `[start, start + len)` lies in one usable RAM range (see [`ram_regions`]).
    fn check_ram(&self, what: &str, start: u64, len: u64) -> Result<(), BootError> {
        let end = start.checked_add(len);
        let fits = end
            .is_some_and(|end| ram_regions(self.machine).any(|(rs, re)| start >= rs && end <= re));
        if fits {
            Ok(())
        } else {
            Err(BootError::OutsideRam {
                path: self.kernel.path.clone(),
                what: what.to_string(),
                start,
                end: end.unwrap_or(u64::MAX),
            })
        }
    }

    /// Writes `bytes` at `addr`, attributing failures to the kernel file.
    fn write(&self, what: &str, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| self.write_error(what, addr, e))
    }

    /// Zeroes `len` bytes at `addr`.
    fn zero(&self, what: &str, addr: u64, len: u64) -> Result<(), BootError> {
        const CHUNK: u64 = 0x10000;
        // A static in .bss, not a local: a 64 KiB array on the stack made every kernel load
        // touch 64 KiB of stack pages (stack probes), resident for the VMM's whole life.
        static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            // `n <= CHUNK`, so the slice is in bounds and the cast is lossless.
            self.write(what, addr + done, &ZEROS[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    fn write_error(&self, what: &str, addr: u64, e: impl fmt::Display) -> BootError {
        BootError::WriteMemory {
            path: self.kernel.path.clone(),
            what: what.to_string(),
            addr,
            reason: e.to_string(),
        }
    }

    /// Builds the command line, refusing one longer than `limit` bytes (without the NUL) or
    /// than the command line area.
    fn cmdline(&self, limit: usize, protocol: Protocol) -> Result<Cmdline, BootError> {
        let raw = match protocol {
            Protocol::Multiboot1 | Protocol::Multiboot2 => self.multiboot_cmdline(),
            _ => self.source.cmdline.clone(),
        };
        self.cmdline_of(&raw, limit, protocol)
    }

    /// A multiboot command line as boot loaders pass it (GRUB, QEMU, SYSLINUX's mboot.c32):
    /// the kernel's file name, then the arguments. Kernels that take options from it (Xen,
    /// GNU Mach) skip the first word.
    fn multiboot_cmdline(&self) -> String {
        let name = self
            .kernel
            .path
            .file_name()
            .map(|n| n.to_string_lossy().replace(' ', "_"))
            .unwrap_or_else(|| "kernel".to_string());
        let args = self.source.cmdline.trim();
        if args.is_empty() {
            name
        } else {
            format!("{name} {args}")
        }
    }

    /// Checks `raw` against `limit` and the command line area and builds it.
    fn cmdline_of(
        &self,
        raw: &str,
        limit: usize,
        protocol: Protocol,
    ) -> Result<Cmdline, BootError> {
        let limit = limit.min(CMDLINE_MAX_SIZE - 1);
        let invalid = |reason: String| BootError::InvalidCmdline {
            path: self.kernel.path.clone(),
            reason,
        };
        if raw.contains('\0') {
            return Err(invalid("it contains a NUL byte".into()));
        }
        let len = raw.trim().len();
        if len > limit {
            return Err(BootError::CmdlineTooLong {
                path: self.kernel.path.clone(),
                len,
                limit,
                protocol,
            });
        }
        Cmdline::try_from(raw, CMDLINE_MAX_SIZE).map_err(|e| invalid(e.to_string()))
    }

    /// Builds the command line and writes it at [`CMDLINE_ADDR`]; returns its length.
    fn write_cmdline(&self, limit: usize, protocol: Protocol) -> Result<usize, BootError> {
        let cmdline = self.cmdline(limit, protocol)?;
        let len = cmdline_bytes(&cmdline).len() - 1;
        linux_loader::loader::load_cmdline(self.mem, CMDLINE_ADDR, &cmdline)
            .map_err(|e| self.write_error("command line", CMDLINE_ADDR.0, e))?;
        Ok(len)
    }

    /// Loads the initrd, if any, at an address chosen by `place`; returns it as a module.
    fn load_initrd(&self, place: &Placement) -> Result<Option<Module>, BootError> {
        let Some(path) = self.source.initrd.as_ref() else {
            return Ok(None);
        };
        let (mut file, size) = open_regular_file(path, u64::MAX)?;
        let addr = place
            .find(self.machine, size)
            .ok_or_else(|| BootError::NoRoom {
                path: path.clone(),
                size,
                limit: place.limit,
            })?;
        let count = usize::try_from(size).map_err(|_| BootError::NoRoom {
            path: path.clone(),
            size,
            limit: place.limit,
        })?;
        self.mem
            .read_exact_volatile_from(GuestAddress(addr), &mut file, count)
            .map_err(|e| BootError::WriteMemory {
                path: path.clone(),
                what: "initrd".into(),
                addr,
                reason: e.to_string(),
            })?;
        Ok(Some(Module {
            addr,
            size,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }))
    }
}

/// The command line as NUL-terminated bytes.
fn cmdline_bytes(cmdline: &Cmdline) -> Vec<u8> {
    cmdline
        .as_cstring()
        .map(|c| c.into_bytes_with_nul())
        .unwrap_or_else(|_| vec![0])
}

/// A module (initrd) loaded into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Module {
    addr: u64,
    size: u64,
    /// File name (without directories), passed to multiboot kernels as the module string.
    name: String,
}

/// Little-endian field access on byte slices; `None` past the end.
fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests;
