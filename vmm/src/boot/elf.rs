//! A small, bounds-checked ELF reader (32 and 64-bit, little-endian x86) for the loaders
//! linux-loader does not cover: PVH and multiboot kernels, which are often ELF32.

use std::fs::File;

use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;

use super::{read_u16, read_u32, read_u64, LoadContext};
use crate::boot::BootError;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Most program headers accepted; real kernels have a handful.
const MAX_PHDRS: usize = 256;

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    /// Guest-physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// File offset.
    pub offset: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zeroed).
    pub memsz: u64,
}

/// What the loaders need from an ELF image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ElfImage {
    /// ELFCLASS64.
    pub class64: bool,
    /// `e_entry`.
    pub entry: u64,
    /// Loadable segments with a non-zero memory size.
    pub segments: Vec<Segment>,
    /// The PVH entry point from a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
}

impl ElfImage {
    /// The entry point as a physical address: a virtual `e_entry` inside a segment is
    /// translated through that segment, as GRUB does for multiboot kernels.
    pub(super) fn entry_paddr(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| self.entry >= s.vaddr && self.entry - s.vaddr < s.memsz)
            .map_or(self.entry, |s| s.paddr.saturating_add(self.entry - s.vaddr))
    }
}

/// Whether `bytes` start with the ELF magic.
pub(super) fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF_MAGIC)
}

/// Parses the ELF header, program headers and notes; the error is a sentence for the user.
pub(super) fn parse(b: &[u8]) -> Result<ElfImage, String> {
    let truncated =
        |what: &str| format!("truncated ELF image: the {what} extends past the end of the file");
    if b.len() < 0x34 {
        return Err(truncated("ELF header"));
    }
    let class64 = match b[4] {
        ELFCLASS32 => false,
        ELFCLASS64 => true,
        c => return Err(format!("invalid ELF class {c}")),
    };
    if b[5] != ELFDATA2LSB {
        return Err("big-endian ELF image; Strata boots little-endian x86 kernels only".into());
    }
    let machine = read_u16(b, 18).ok_or_else(|| truncated("ELF header"))?;
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(format!(
            "ELF image for machine type {machine}, not x86 (3) or x86-64 (62)"
        ));
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            read_u64(b, 24),
            read_u64(b, 32),
            read_u16(b, 54),
            read_u16(b, 56),
        )
    } else {
        (
            read_u32(b, 24).map(u64::from),
            read_u32(b, 28).map(u64::from),
            read_u16(b, 42),
            read_u16(b, 44),
        )
    };
    let header = || truncated("ELF header");
    let (entry, phoff) = (entry.ok_or_else(header)?, phoff.ok_or_else(header)?);
    let (phentsize, phnum) = (
        usize::from(phentsize.ok_or_else(header)?),
        usize::from(phnum.ok_or_else(header)?),
    );
    let want = if class64 { 56 } else { 32 };
    if phentsize != want {
        return Err(format!(
            "invalid ELF program header size {phentsize} (expected {want})"
        ));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!(
            "ELF image has {phnum} program headers (1..={MAX_PHDRS} accepted)"
        ));
    }
    let table_end = usize::try_from(phoff)
        .ok()
        .and_then(|o| o.checked_add(phnum * phentsize))
        .filter(|&end| end <= b.len())
        .ok_or_else(|| truncated("program header table"))?;
    let table = &b[table_end - phnum * phentsize..table_end];
    let mut image = ElfImage {
        class64,
        entry,
        segments: Vec::new(),
        pvh_entry: None,
    };
    for ph in table.chunks_exact(phentsize) {
        parse_phdr(b, ph, class64, &mut image)?;
    }
    if image.segments.is_empty() {
        return Err("ELF image has no loadable segments".into());
    }
    Ok(image)
}

fn parse_phdr(b: &[u8], ph: &[u8], class64: bool, image: &mut ElfImage) -> Result<(), String> {
    // `ph` has exactly the size checked above, so every field read succeeds.
    let field = |o32: usize, o64: usize| -> u64 {
        if class64 {
            read_u64(ph, o64).unwrap_or(0)
        } else {
            read_u32(ph, o32).map(u64::from).unwrap_or(0)
        }
    };
    let p_type = read_u32(ph, 0).unwrap_or(0);
    let seg = Segment {
        offset: field(4, 8),
        vaddr: field(8, 16),
        paddr: field(12, 24),
        filesz: field(16, 32),
        memsz: field(20, 40),
    };
    if p_type != PT_LOAD && p_type != PT_NOTE {
        return Ok(());
    }
    let data = seg
        .offset
        .checked_add(seg.filesz)
        .filter(|_| seg.filesz > 0)
        .and_then(|end| b.get(usize::try_from(seg.offset).ok()?..usize::try_from(end).ok()?))
        .ok_or_else(|| {
            format!(
                "truncated ELF image: the segment at file offset {:#x} ({:#x} bytes) extends \
                 past the end of the file ({:#x} bytes)",
                seg.offset,
                seg.filesz,
                b.len()
            )
        });
    let data = if seg.filesz == 0 { &[][..] } else { data? };
    if p_type == PT_NOTE {
        if image.pvh_entry.is_none() {
            image.pvh_entry = find_pvh_note(data)?;
        }
        return Ok(());
    }
    if seg.filesz > seg.memsz {
        return Err(format!(
            "invalid ELF segment at {:#x}: file size {:#x} exceeds memory size {:#x}",
            seg.paddr, seg.filesz, seg.memsz
        ));
    }
    if seg.memsz > 0 {
        image.segments.push(seg);
    }
    Ok(())
}

/// Walks the notes of one `PT_NOTE` segment looking for `Xen`/`XEN_ELFNOTE_PHYS32_ENTRY`.
fn find_pvh_note(notes: &[u8]) -> Result<Option<u64>, String> {
    let align4 = |x: usize| x.checked_add(3).map(|x| x & !3);
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = read_u32(notes, off).unwrap_or(0) as usize;
        let descsz = read_u32(notes, off + 4).unwrap_or(0) as usize;
        let ntype = read_u32(notes, off + 8).unwrap_or(0);
        let name_off = off + 12;
        let desc_off = align4(name_off + namesz).ok_or("ELF note too large")?;
        let next = desc_off
            .checked_add(descsz)
            .and_then(align4)
            .ok_or("ELF note too large")?;
        if desc_off.checked_add(descsz).is_none_or(|e| e > notes.len()) {
            return Err("truncated ELF image: a note extends past the end of its segment".into());
        }
        let name = &notes[name_off..name_off + namesz];
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            return match descsz {
                4 | 8 => Ok(read_u32(notes, desc_off).map(u64::from)),
                _ => Err(format!(
                    "invalid PVH entry note: descriptor of {descsz} bytes (expected 4 or 8)"
                )),
            };
        }
        off = next;
    }
    Ok(None)
}

/// Checks every segment against guest RAM, then copies them by physical address and zeroes
/// the rest of each segment's memory size. Returns the `(start, end)` of each segment.
pub(super) fn load_segments(
    ctx: &LoadContext<'_>,
    image: &ElfImage,
) -> Result<Vec<(u64, u64)>, BootError> {
    check_segments(ctx, image)?;
    let bytes = &ctx.kernel.bytes;
    for seg in &image.segments {
        if seg.filesz > 0 {
            // parse() checked offset + filesz against the file; `get` keeps this panic-free.
            let data = usize::try_from(seg.offset)
                .ok()
                .and_then(|s| bytes.get(s..s.checked_add(usize::try_from(seg.filesz).ok()?)?))
                .ok_or_else(|| ctx.kernel.invalid("ELF segment outside the file".into()))?;
            ctx.write("kernel segment", seg.paddr, data)?;
        }
        ctx.zero(
            "kernel segment",
            seg.paddr + seg.filesz,
            seg.memsz - seg.filesz,
        )?;
    }
    Ok(segment_ranges(image))
}

/// Checks every segment against guest RAM without writing anything.
pub(super) fn check_segments(ctx: &LoadContext<'_>, image: &ElfImage) -> Result<(), BootError> {
    for seg in &image.segments {
        ctx.check_ram(
            &format!("ELF segment (file offset {:#x})", seg.offset),
            seg.paddr,
            seg.memsz,
        )?;
    }
    Ok(())
}

/// The `(start, end)` guest ranges of the segments (checked to not overflow).
pub(super) fn segment_ranges(image: &ElfImage) -> Vec<(u64, u64)> {
    image
        .segments
        .iter()
        .map(|s| (s.paddr, s.paddr.saturating_add(s.memsz)))
        .collect()
}

/// Checks the segments, then loads the image: ELF64 through linux-loader, ELF32 (which
/// linux-loader does not read) through [`load_segments`].
pub(super) fn load(ctx: &LoadContext<'_>, image: &ElfImage) -> Result<Vec<(u64, u64)>, BootError> {
    if !image.class64 {
        return load_segments(ctx, image);
    }
    check_segments(ctx, image)?;
    let mut file = File::open(&ctx.kernel.path).map_err(|source| BootError::Open {
        path: ctx.kernel.path.clone(),
        source,
    })?;
    Elf::load(ctx.mem, None, &mut file, None).map_err(|e| {
        ctx.kernel
            .invalid(format!("cannot load the ELF kernel: {e}"))
    })?;
    // linux-loader copies the file part only; clear the rest (bss) as the ELF spec requires.
    for seg in &image.segments {
        ctx.zero("kernel bss", seg.paddr + seg.filesz, seg.memsz - seg.filesz)?;
    }
    Ok(segment_ranges(image))
}
