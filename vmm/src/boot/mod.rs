//! Kernel loaders. The protocol is chosen from the image's own headers, never from its name.
//!
//! Each loader writes the kernel, its modules and the protocol's information structures into
//! guest memory and returns a [`BootEntry`]: the CPU state the boot vCPU starts in.

use std::path::PathBuf;

use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::MemoryRegion;

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
}

/// The CPU mode the boot vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, first 1 GiB identity mapped, flat segments (Linux 64-bit boot protocol).
    Long64,
    /// 32-bit protected mode, paging off, flat 4 GiB code and data segments (PVH, multiboot).
    Protected32,
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
}

/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: GuestAddress = crate::arch::x86_64::layout::CMDLINE_START;
