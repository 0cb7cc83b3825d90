//! Synthetic kernel images and a guest for the loader tests (no KVM needed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{load, BootEntry, BootError, BootMachine, BootSource};
use crate::arch::x86_64::layout::{memory_map, ram_ranges};

/// Guest RAM of the test machine.
pub const RAM: u64 = 64 << 20;

/// A file in the temporary directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strata-boot-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A fresh guest with `RAM` bytes and the standard memory map.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub machine: BootMachine,
}

impl Guest {
    pub fn new() -> Self {
        Self::with_ram(RAM)
    }

    pub fn with_ram(ram: u64) -> Self {
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(ram)
            .into_iter()
            .map(|(a, s)| (a, s as usize))
            .collect();
        Guest {
            mem: GuestMemoryMmap::from_ranges(&ranges).unwrap(),
            machine: BootMachine {
                memory_map: memory_map(ram),
                vcpus: 1,
                rsdp: None,
            },
        }
    }

    /// Loads `kernel` (with an optional initrd and a command line).
    pub fn boot(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
    ) -> Result<BootEntry, BootError> {
        let source = BootSource {
            kernel: kernel.to_path_buf(),
            initrd: initrd.map(Path::to_path_buf),
            cmdline: cmdline.to_string(),
        };
        load(&self.mem, &source, &self.machine)
    }

    /// Writes `bytes` to a temporary file and loads it.
    pub fn boot_bytes(&self, bytes: &[u8], cmdline: &str) -> Result<BootEntry, BootError> {
        let f = TempFile::new("kernel", bytes);
        self.boot(f.path(), None, cmdline)
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    pub fn u32_at(&self, addr: u64) -> u32 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn u64_at(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
}

/// One `PT_LOAD` segment of a synthetic ELF: physical address, file bytes, memory size.
pub struct Seg<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

/// Builds a little-endian x86 ELF (64-bit if `class64`) with the given segments and, if
/// `pvh_entry` is set, a `Xen` `XEN_ELFNOTE_PHYS32_ENTRY` note.
pub fn elf(class64: bool, entry: u64, segs: &[Seg<'_>], pvh_entry: Option<u32>) -> Vec<u8> {
    let (ehsize, phsize) = if class64 { (64, 56) } else { (52, 32) };
    let phnum = segs.len() + usize::from(pvh_entry.is_some());
    let mut note = Vec::new();
    if let Some(e) = pvh_entry {
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&e.to_le_bytes());
    }
    let mut data_off = ehsize + phnum * phsize;
    let mut phdrs = Vec::new();
    let mut body = Vec::new();
    let mut add = |ty: u32, paddr: u64, data: &[u8], memsz: u64| {
        let word = |v: u64, out: &mut Vec<u8>| {
            if class64 {
                out.extend_from_slice(&v.to_le_bytes());
            } else {
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
        };
        phdrs.extend_from_slice(&ty.to_le_bytes());
        if class64 {
            phdrs.extend_from_slice(&7u32.to_le_bytes()); // p_flags
            for v in [data_off as u64, paddr, paddr, data.len() as u64, memsz, 16] {
                word(v, &mut phdrs);
            }
        } else {
            for v in [data_off as u64, paddr, paddr, data.len() as u64, memsz] {
                word(v, &mut phdrs);
            }
            phdrs.extend_from_slice(&7u32.to_le_bytes()); // p_flags
            word(16, &mut phdrs);
        }
        body.extend_from_slice(data);
        data_off += data.len();
    };
    for s in segs {
        add(1, s.paddr, s.data, s.memsz);
    }
    if pvh_entry.is_some() {
        add(4, 0, &note, 0);
    }
    let mut out = vec![0u8; ehsize];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = if class64 { 2 } else { 1 };
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    let machine: u16 = if class64 { 62 } else { 3 };
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    if class64 {
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    } else {
        out[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
        out[28..32].copy_from_slice(&52u32.to_le_bytes());
        out[40..42].copy_from_slice(&52u16.to_le_bytes());
        out[42..44].copy_from_slice(&32u16.to_le_bytes());
        out[44..46].copy_from_slice(&(phnum as u16).to_le_bytes());
    }
    out.extend_from_slice(&phdrs);
    out.extend_from_slice(&body);
    out
}

/// The usual small test kernel: 16 bytes of code at 1 MiB with 4 KiB of bss.
pub const CODE: &[u8] = &[0xf4; 16];

pub fn small_elf(class64: bool, pvh: bool) -> Vec<u8> {
    let seg = Seg {
        paddr: 0x10_0000,
        data: CODE,
        memsz: 0x1000,
    };
    elf(class64, 0x10_0000, &[seg], pvh.then_some(0x10_0004))
}

/// Fields of a synthetic bzImage.
pub struct BzImageSpec {
    pub version: u16,
    pub xloadflags: u16,
    pub payload: usize,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub pref_address: u64,
    pub init_size: u32,
}

impl Default for BzImageSpec {
    fn default() -> Self {
        BzImageSpec {
            version: 0x020f,
            xloadflags: 1,
            payload: 0x2000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            pref_address: 0x20_0000,
            init_size: 0x1_0000,
        }
    }
}

/// A relocatable bzImage (2 MiB aligned): one setup sector after the boot sector, then
/// `payload` bytes of 0x90.
pub fn bzimage(spec: &BzImageSpec) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0x1f1, &[1]); // setup_sects
    put(0x1f4, &((spec.payload / 16) as u32).to_le_bytes()); // syssize
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x206, &spec.version.to_le_bytes());
    put(0x211, &[1]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &spec.initrd_addr_max.to_le_bytes());
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &spec.xloadflags.to_le_bytes());
    put(0x238, &spec.cmdline_size.to_le_bytes());
    put(0x234, &[1]); // relocatable_kernel
    put(0x258, &spec.pref_address.to_le_bytes());
    put(0x260, &spec.init_size.to_le_bytes());
    b.resize(1024 + spec.payload, 0x90);
    b
}

/// A flat multiboot 1 image with the a.out kludge: header at offset 0 loaded at 1 MiB,
/// code after it, `bss` bytes of bss; entry right after the header.
pub fn multiboot1_kludge(flags: u32, bss: u32) -> Vec<u8> {
    let base = 0x10_0000u32;
    let flags = flags | (1 << 16);
    let mut b = Vec::new();
    let len = 32 + CODE.len() as u32;
    for v in [
        0x1bad_b002u32,
        flags,
        0u32.wrapping_sub(0x1bad_b002u32.wrapping_add(flags)),
        base,
        base,
        base + len,
        if bss == 0 { 0 } else { base + len + bss },
        base + 32,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(CODE);
    b
}

/// Appends a multiboot 1 header (no kludge) to `image` at the next 4-byte boundary.
pub fn add_multiboot1_header(image: &mut Vec<u8>, flags: u32) {
    image.resize(image.len().next_multiple_of(4), 0);
    for v in [
        0x1bad_b002u32,
        flags,
        0u32.wrapping_sub(0x1bad_b002u32.wrapping_add(flags)),
    ] {
        image.extend_from_slice(&v.to_le_bytes());
    }
}

/// A multiboot 2 header tag.
pub fn mb2_tag(ty: u16, flags: u16, body: &[u32]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&ty.to_le_bytes());
    t.extend_from_slice(&flags.to_le_bytes());
    t.extend_from_slice(&(8 + 4 * body.len() as u32).to_le_bytes());
    for v in body {
        t.extend_from_slice(&v.to_le_bytes());
    }
    t.resize(t.len().next_multiple_of(8), 0);
    t
}

/// A multiboot 2 header with `tags` (an end tag is added).
pub fn mb2_header(tags: &[Vec<u8>]) -> Vec<u8> {
    let mut body: Vec<u8> = tags.concat();
    body.extend(mb2_tag(0, 0, &[]));
    let len = 16 + body.len() as u32;
    let magic = 0xe852_50d6u32;
    let mut h = Vec::new();
    for v in [magic, 0, len, 0u32.wrapping_sub(magic.wrapping_add(len))] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend(body);
    h
}

/// A flat multiboot 2 image loaded at 1 MiB through the address tag, with `extra` tags;
/// header at offset 0, code after it, entry at the code.
pub fn multiboot2_flat(extra: &[Vec<u8>]) -> Vec<u8> {
    let base = 0x10_0000u32;
    // Address and entry tags are 24 and 16 bytes; compute the header size first.
    let mut tags = vec![mb2_tag(2, 0, &[0; 4]), mb2_tag(3, 0, &[0])];
    tags.extend_from_slice(extra);
    let hlen = mb2_header(&tags).len() as u32;
    tags[0] = mb2_tag(
        2,
        0,
        &[base, base, 0, base + hlen + CODE.len() as u32 + 0x1000],
    );
    tags[1] = mb2_tag(3, 0, &[base + hlen]);
    let mut image = mb2_header(&tags);
    image.extend_from_slice(CODE);
    image
}
