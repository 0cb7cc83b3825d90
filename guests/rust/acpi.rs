//! acpi: finds the ACPI tables the way an OS does and reports them.
//!
//! From `hvm_start_info.rsdp_paddr` (or, if 0, by scanning 0xe0000-0xfffff
//! for "RSD PTR "), it checks the RSDP's checksums, follows the XSDT and
//! the FADT's X_DSDT, checks every table's checksum and prints:
//!
//! ```text
//! acpi: rsdp 0x<addr %08x> <found by: start-info|scan> revision <n>
//! acpi: <SIG> 0x<addr %08x> length <n>              (XSDT, its entries in order, DSDT)
//! madt: lapics <n> ioapic 0x<addr %08x> overrides <n> nmis <n>
//! fadt: flags 0x<%08x> reset <space>:0x<addr %x>=0x<value %02x> sleep <space>:0x<addr %x>
//! mcfg: ecam 0x<addr %08x> buses <first>-<last>       (if there is an MCFG)
//! ged: event port 0x<port %x>                       (the GED's OperationRegion in the DSDT)
//! ```
//!
//! then runs its `op=` operations in order:
//! - `op=ecam`: reads 00:00.0's ID dword through ECAM and through ports
//!   0xcf8/0xcfc: `ecam: 00:00.0 0x<id %08x> ports 0x<id %08x>`.
//! - `op=wait-power-button`: prints `ged: waiting`, polls the GED's event
//!   register until the power-button bit is set, prints
//!   `ged: power button pressed`.
//! - `op=s5`: prints `s5: sleep type 5`, writes SLP_TYP 5 | SLP_EN to the
//!   FADT's sleep control register; if the VM goes on, prints
//!   `error: still running after S5` (exit 1).
//! - `op=reset`: writes the FADT's reset value to its reset register;
//!   if the VM goes on, an error as for `op=s5`.
//! - `op=fw-cfg`: reads fw_cfg's signature and ID through the ports, its
//!   file directory through DMA (`fw_cfg: file <name> <size>` each), the
//!   RSDP file (`fw_cfg: etc/acpi/rsdp <signature>`), then tries a DMA
//!   write to `etc/table-loader` and an unaligned descriptor, printing the
//!   control word each left (`fw_cfg: write control 0x<%x>`,
//!   `fw_cfg: unaligned control 0x<%x>`).
#![no_std]

use kit::dma::DmaBuf;
use kit::io::{inb, inl, outb, outl, outw};
use kit::phys::{self, check_mapped};
use kit::{bail, println, Boot, Error};

kit::guest!("acpi", main);

/// A validated table: address and length.
#[derive(Clone, Copy)]
struct Table {
    addr: u64,
    len: u32,
}

impl Table {
    fn bytes(&self) -> &'static [u8] {
        // SAFETY: checked mapped in `table_at`; firmware tables nobody writes.
        unsafe { phys::bytes(self.addr, self.len as usize) }
    }
    fn sig(&self) -> &'static str {
        core::str::from_utf8(&self.bytes()[..4]).unwrap_or("????")
    }
}

fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from(u8_at(b, off)) | u16::from(u8_at(b, off + 1)) << 8
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from(u16_at(b, off)) | u32::from(u16_at(b, off + 2)) << 16
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The table at `addr`, its length and checksum checked.
fn table_at(addr: u64) -> Result<Table, Error> {
    check_mapped(addr, 36)?;
    // SAFETY: 36 bytes checked mapped; a firmware table.
    let len = unsafe { phys::read::<u32>(addr + 4) };
    if len < 36 {
        bail!("table at {addr:#x}: length {len}");
    }
    check_mapped(addr, u64::from(len))?;
    let t = Table { addr, len };
    if sum(t.bytes()) != 0 {
        bail!("table {} at {addr:#x}: bad checksum", t.sig());
    }
    println!("acpi: {} 0x{:08x} length {}", t.sig(), addr, len);
    Ok(t)
}

/// The RSDP: from the start info, else by the BIOS-area scan.
fn find_rsdp(boot: &Boot) -> Result<(u64, &'static str), Error> {
    if boot.info.rsdp() != 0 {
        return Ok((boot.info.rsdp(), "start-info"));
    }
    let mut at = 0xe_0000;
    while at < 0x10_0000 {
        // SAFETY: the BIOS area is RAM in the identity map.
        if unsafe { phys::bytes(at, 8) } == b"RSD PTR " {
            return Ok((at, "scan"));
        }
        at += 16;
    }
    bail!("no RSDP (start info rsdp_paddr is 0 and none in 0xe0000-0xfffff)")
}

/// What the operations need from the tables.
struct Acpi {
    fadt: Table,
    dsdt: Table,
    mcfg: Option<Table>,
}

fn walk(boot: &Boot) -> Result<Acpi, Error> {
    let (addr, how) = find_rsdp(boot)?;
    check_mapped(addr, 36)?;
    // SAFETY: checked mapped.
    let rsdp = unsafe { phys::bytes(addr, 36) };
    if &rsdp[..8] != b"RSD PTR " || sum(&rsdp[..20]) != 0 || sum(rsdp) != 0 {
        bail!("bad RSDP at {addr:#x}");
    }
    println!("acpi: rsdp 0x{addr:08x} {how} revision {}", rsdp[15]);
    let xsdt = table_at(u64_at(rsdp, 24))?;
    let (mut fadt, mut mcfg, mut madt) = (None, None, None);
    let entries = (xsdt.len as usize - 36) / 8;
    for i in 0..entries {
        let t = table_at(u64_at(xsdt.bytes(), 36 + 8 * i))?;
        match t.sig() {
            "FACP" => fadt = Some(t),
            "MCFG" => mcfg = Some(t),
            "APIC" => madt = Some(t),
            _ => {}
        }
    }
    let Some(fadt) = fadt else { bail!("no FADT") };
    let dsdt = table_at(u64_at(fadt.bytes(), 140))?;
    if dsdt.sig() != "DSDT" {
        bail!("FADT X_DSDT points at {}", dsdt.sig());
    }
    match madt {
        Some(m) => print_madt(m),
        None => bail!("no MADT"),
    }
    print_fadt(fadt);
    if let Some(m) = mcfg {
        let b = m.bytes();
        println!(
            "mcfg: ecam 0x{:08x} buses {}-{}",
            u64_at(b, 44),
            u8_at(b, 54),
            u8_at(b, 55)
        );
    }
    Ok(Acpi { fadt, dsdt, mcfg })
}

fn print_madt(m: Table) {
    let b = m.bytes();
    let (mut lapics, mut ioapic, mut overrides, mut nmis) = (0, 0, 0, 0);
    let mut off = 44;
    while off + 2 <= b.len() {
        let len = u8_at(b, off + 1) as usize;
        match u8_at(b, off) {
            0 if u32_at(b, off + 4) & 1 != 0 => lapics += 1,
            1 => ioapic = u32_at(b, off + 4),
            2 => overrides += 1,
            4 => nmis += 1,
            _ => {}
        }
        if len == 0 {
            break;
        }
        off += len;
    }
    println!("madt: lapics {lapics} ioapic 0x{ioapic:08x} overrides {overrides} nmis {nmis}");
}

/// (address space, address) of the generic address structure at `off`.
fn gas(b: &[u8], off: usize) -> (u8, u64) {
    (u8_at(b, off), u64_at(b, off + 4))
}

fn print_fadt(f: Table) {
    let b = f.bytes();
    let (rs, ra) = gas(b, 116);
    let (ss, sa) = gas(b, 244);
    println!(
        "fadt: flags 0x{:08x} reset {rs}:0x{ra:x}=0x{:02x} sleep {ss}:0x{sa:x}",
        u32_at(b, 112),
        u8_at(b, 128)
    );
}

/// The I/O port of the DSDT's `OperationRegion (GDST, SystemIO, port, ...)`.
fn ged_port(dsdt: Table) -> Result<u16, Error> {
    let b = dsdt.bytes();
    for i in 2..b.len().saturating_sub(8) {
        if b[i - 2..i] == [0x5b, 0x80] && &b[i..i + 4] == b"GDST" && b[i + 4] == 1 {
            return match b[i + 5] {
                0x0a => Ok(u16::from(b[i + 6])),
                0x0b => Ok(u16_at(b, i + 6)),
                p => bail!("GDST region: unexpected integer prefix {p:#x}"),
            };
        }
    }
    bail!("no GDST operation region in the DSDT")
}

fn main(boot: &mut Boot) -> Result<(), Error> {
    let acpi = walk(boot)?;
    let ged = ged_port(acpi.dsdt)?;
    println!("ged: event port 0x{ged:x}");
    for op in boot.cmdline.ops() {
        match op.name {
            "ecam" => ecam(&acpi)?,
            "wait-power-button" => {
                println!("ged: waiting");
                while inb(ged) & 1 == 0 {}
                println!("ged: power button pressed");
            }
            "s5" => {
                let (space, port) = gas(acpi.fadt.bytes(), 244);
                if space != 1 {
                    bail!("sleep control register in address space {space}");
                }
                println!("s5: sleep type 5");
                outb(port as u16, (5 << 2) | (1 << 5));
                bail!("still running after S5");
            }
            "reset" => {
                let (space, port) = gas(acpi.fadt.bytes(), 116);
                if space != 1 {
                    bail!("reset register in address space {space}");
                }
                outb(port as u16, u8_at(acpi.fadt.bytes(), 128));
                bail!("still running after the ACPI reset");
            }
            "fw-cfg" => fw_cfg(boot)?,
            other => bail!("unknown op={other}"),
        }
    }
    Ok(())
}

fn ecam(acpi: &Acpi) -> Result<(), Error> {
    let Some(mcfg) = acpi.mcfg else {
        bail!("op=ecam: no MCFG")
    };
    let base = u64_at(mcfg.bytes(), 44);
    check_mapped(base, 4)?;
    // SAFETY: the ECAM window (device memory in the identity map); a
    // volatile 32-bit read of 00:00.0's ID.
    let by_ecam = unsafe { core::ptr::read_volatile(base as *const u32) };
    outl(0xcf8, 0x8000_0000);
    let by_ports = inl(0xcfc);
    println!("ecam: 00:00.0 0x{by_ecam:08x} ports 0x{by_ports:08x}");
    Ok(())
}

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const FW_CFG_DMA_HIGH: u16 = 0x514;
const FW_CFG_DMA_LOW: u16 = 0x518;
const DMA_SELECT: u32 = 0x08;
const DMA_READ: u32 = 0x02;
const DMA_WRITE: u32 = 0x10;

/// Runs one fw_cfg DMA request with the descriptor at `desc + at`;
/// returns the control word the device left.
fn fw_cfg_dma(desc: &mut DmaBuf, at: usize, control: u32, len: u32, buf: u64) -> u32 {
    desc.write::<u32>(at, control.to_be());
    desc.write::<u32>(at + 4, len.to_be());
    desc.write::<u32>(at + 8, ((buf >> 32) as u32).to_be());
    desc.write::<u32>(at + 12, (buf as u32).to_be());
    let addr = desc.addr() + at as u64;
    // The ports take the address big-endian: the byte swap makes `outl`'s
    // little-endian bytes big-endian.
    outl(FW_CFG_DMA_HIGH, ((addr >> 32) as u32).swap_bytes());
    outl(FW_CFG_DMA_LOW, (addr as u32).swap_bytes());
    u32::from_be(desc.read::<u32>(at))
}

fn fw_cfg(boot: &mut Boot) -> Result<(), Error> {
    outw(FW_CFG_SELECTOR, 0);
    let sig = [inb(FW_CFG_DATA), inb(FW_CFG_DATA), inb(FW_CFG_DATA), inb(FW_CFG_DATA)];
    outw(FW_CFG_SELECTOR, 1);
    let id = u32::from_le_bytes([inb(FW_CFG_DATA), inb(FW_CFG_DATA), inb(FW_CFG_DATA), inb(FW_CFG_DATA)]);
    println!(
        "fw_cfg: signature {} id 0x{id:x}",
        core::str::from_utf8(&sig).unwrap_or("????")
    );
    let mut desc = boot.dma.alloc(64, 64)?;
    let dir = boot.dma.alloc(4096, 4096)?;
    let control = fw_cfg_dma(&mut desc, 0, (0x19 << 16) | DMA_SELECT | DMA_READ, 4096, dir.addr());
    if control != 0 {
        bail!("fw_cfg: directory read left control 0x{control:x}");
    }
    let d = dir.as_slice();
    let count = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    let (mut rsdp_key, mut loader_key) = (None, None);
    for i in 0..count.min(63) {
        let e = &d[4 + 64 * i..4 + 64 * (i + 1)];
        let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let key = u16::from_be_bytes([e[4], e[5]]);
        let end = e[8..].iter().position(|&c| c == 0).unwrap_or(56);
        let name = core::str::from_utf8(&e[8..8 + end]).unwrap_or("?");
        println!("fw_cfg: file {name} {size}");
        match name {
            "etc/acpi/rsdp" => rsdp_key = Some(key),
            "etc/table-loader" => loader_key = Some(key),
            _ => {}
        }
    }
    let (Some(rsdp_key), Some(loader_key)) = (rsdp_key, loader_key) else {
        bail!("fw_cfg: no etc/acpi/rsdp or etc/table-loader")
    };
    let rsdp = boot.dma.alloc(64, 64)?;
    let control = fw_cfg_dma(&mut desc, 0, (u32::from(rsdp_key) << 16) | DMA_SELECT | DMA_READ, 36, rsdp.addr());
    let sig = core::str::from_utf8(&rsdp.as_slice()[..8]).unwrap_or("?");
    println!("fw_cfg: etc/acpi/rsdp {sig} control 0x{control:x}");
    let control = fw_cfg_dma(&mut desc, 0, (u32::from(loader_key) << 16) | DMA_SELECT | DMA_WRITE, 16, rsdp.addr());
    println!("fw_cfg: write control 0x{control:x}");
    let control = fw_cfg_dma(&mut desc, 4 * 4 + 8, (u32::from(rsdp_key) << 16) | DMA_SELECT | DMA_READ, 8, rsdp.addr());
    println!("fw_cfg: unaligned control 0x{control:x}");
    Ok(())
}
