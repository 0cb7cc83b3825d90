//! The ACPI tables as firmware takes them over fw_cfg (QEMU's hw/acpi/bios-linker-loader.c
//! format, which SeaBIOS, OVMF and qboot execute): `etc/acpi/tables` (every table but the RSDP,
//! its pointers as offsets in that blob), `etc/acpi/rsdp`, and `etc/table-loader`, 128-byte
//! commands: allocate both files (the RSDP in the F segment, where guests scan for it), add the
//! tables blob's address to each pointer, recompute each checksum.

use super::tables::{FADT_DSDT_OFFSET, FADT_X_DSDT_OFFSET};
use super::{layout, AcpiMachine};

/// File names.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// The RSDP's file.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// The loader's file.
pub const LOADER_FILE: &str = "etc/table-loader";

const COMMAND_LEN: usize = 128;
const FILE_NAME_LEN: usize = 56;
const ALLOCATE: u32 = 1;
const ADD_POINTER: u32 = 2;
const ADD_CHECKSUM: u32 = 3;
/// Allocation zones.
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;

/// The three fw_cfg files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderFiles {
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

fn name(cmd: &mut Vec<u8>, file: &str) {
    let mut n = [0u8; FILE_NAME_LEN];
    let len = file.len().min(FILE_NAME_LEN - 1);
    n[..len].copy_from_slice(&file.as_bytes()[..len]);
    cmd.extend_from_slice(&n);
}

fn finish(mut cmd: Vec<u8>, out: &mut Vec<u8>) {
    cmd.resize(COMMAND_LEN, 0);
    out.extend_from_slice(&cmd);
}

fn allocate(out: &mut Vec<u8>, file: &str, align: u32, zone: u8) {
    let mut c = ALLOCATE.to_le_bytes().to_vec();
    name(&mut c, file);
    c.extend_from_slice(&align.to_le_bytes());
    c.push(zone);
    finish(c, out);
}

fn add_pointer(out: &mut Vec<u8>, dest: &str, src: &str, offset: u32, size: u8) {
    let mut c = ADD_POINTER.to_le_bytes().to_vec();
    name(&mut c, dest);
    name(&mut c, src);
    c.extend_from_slice(&offset.to_le_bytes());
    c.push(size);
    finish(c, out);
}

fn add_checksum(out: &mut Vec<u8>, file: &str, result: u32, start: u32, length: u32) {
    let mut c = ADD_CHECKSUM.to_le_bytes().to_vec();
    name(&mut c, file);
    c.extend_from_slice(&result.to_le_bytes());
    c.extend_from_slice(&start.to_le_bytes());
    c.extend_from_slice(&length.to_le_bytes());
    finish(c, out);
}

/// The files for `machine`.
pub fn files(machine: &AcpiMachine) -> LoaderFiles {
    let (rsdp, laid) = layout(machine, 0);
    let size = laid
        .iter()
        .map(|(a, b)| a.0 as usize + b.len())
        .max()
        .unwrap_or(0);
    let mut tables = vec![0u8; size];
    for (at, bytes) in &laid {
        tables[at.0 as usize..at.0 as usize + bytes.len()].copy_from_slice(bytes);
    }
    let mut loader = Vec::new();
    allocate(&mut loader, RSDP_FILE, 16, ZONE_FSEG);
    allocate(&mut loader, TABLES_FILE, 64, ZONE_HIGH);
    let off = |sig: &[u8]| {
        laid.iter()
            .find(|(_, b)| b.starts_with(sig))
            .map(|(a, b)| (a.0 as u32, b.len() as u32))
    };
    if let Some((fadt, _)) = off(b"FACP") {
        add_pointer(
            &mut loader,
            TABLES_FILE,
            TABLES_FILE,
            fadt + FADT_DSDT_OFFSET,
            4,
        );
        add_pointer(
            &mut loader,
            TABLES_FILE,
            TABLES_FILE,
            fadt + FADT_X_DSDT_OFFSET,
            8,
        );
    }
    if let Some((xsdt, len)) = off(b"XSDT") {
        for i in 0..(len.saturating_sub(36)) / 8 {
            add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, xsdt + 36 + 8 * i, 8);
        }
    }
    add_pointer(&mut loader, RSDP_FILE, TABLES_FILE, 24, 8);
    for (at, bytes) in &laid {
        let start = at.0 as u32;
        add_checksum(
            &mut loader,
            TABLES_FILE,
            start + 9,
            start,
            bytes.len() as u32,
        );
    }
    add_checksum(&mut loader, RSDP_FILE, 8, 0, 20);
    add_checksum(&mut loader, RSDP_FILE, 32, 0, rsdp.len() as u32);
    LoaderFiles {
        tables,
        rsdp,
        loader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{build, AcpiPci};
    use vm_memory::GuestAddress;

    fn machine() -> AcpiMachine {
        AcpiMachine {
            cpus: 2,
            pci: Some(AcpiPci {
                ecam: GuestAddress(0xe000_0000),
                mmio32: (0xc000_0000, 0x1000_0000),
                mmio64: (0x1_0000_0000, 1 << 36),
                io: (0xc000, 0x4000),
                intx: vec![(1, 5)],
            }),
            virtio_mmio: vec![(0xd000_0000, 0x1000, 6)],
            ged_irq: 7,
        }
    }

    fn cstr(b: &[u8]) -> &str {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end]).unwrap()
    }

    /// Runs the loader the way SeaBIOS's romfile_loader does, placing the tables at
    /// `tables_at`; returns the two patched files.
    fn execute(f: &LoaderFiles, tables_at: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut tables, mut rsdp) = (f.tables.clone(), f.rsdp.clone());
        for cmd in f.loader.chunks(COMMAND_LEN) {
            let word = |off: usize| u32::from_le_bytes(cmd[off..off + 4].try_into().unwrap());
            match word(0) {
                ALLOCATE => {}
                ADD_POINTER => {
                    let src_at = match cstr(&cmd[60..116]) {
                        TABLES_FILE => tables_at,
                        other => panic!("pointer to {other}"),
                    };
                    let dest = match cstr(&cmd[4..60]) {
                        TABLES_FILE => &mut tables,
                        RSDP_FILE => &mut rsdp,
                        other => panic!("pointer in {other}"),
                    };
                    let (off, size) = (word(116) as usize, cmd[120] as usize);
                    assert!(size == 4 || size == 8, "pointer size {size}");
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&dest[off..off + size]);
                    let patched = (u64::from_le_bytes(v) + src_at).to_le_bytes();
                    dest[off..off + size].copy_from_slice(&patched[..size]);
                }
                ADD_CHECKSUM => {
                    let file = match cstr(&cmd[4..60]) {
                        TABLES_FILE => &mut tables,
                        RSDP_FILE => &mut rsdp,
                        other => panic!("checksum of {other}"),
                    };
                    let (result, start, len) =
                        (word(60) as usize, word(64) as usize, word(68) as usize);
                    let sum = file[start..start + len]
                        .iter()
                        .fold(0u8, |a, b| a.wrapping_add(*b));
                    file[result] = file[result].wrapping_sub(sum);
                }
                other => panic!("unknown command {other}"),
            }
        }
        (tables, rsdp)
    }

    #[test]
    fn test_loader_commands_allocate_rsdp_in_fseg_and_tables_high() {
        let f = files(&machine());

        let first: Vec<(u32, &str, u32, u8)> = f
            .loader
            .chunks(COMMAND_LEN)
            .take(2)
            .map(|c| {
                (
                    u32::from_le_bytes(c[..4].try_into().unwrap()),
                    cstr(&c[4..60]),
                    u32::from_le_bytes(c[60..64].try_into().unwrap()),
                    c[64],
                )
            })
            .collect();

        assert_eq!(f.loader.len() % COMMAND_LEN, 0);
        assert_eq!(
            first,
            [
                (1, RSDP_FILE, 16, ZONE_FSEG),
                (1, TABLES_FILE, 64, ZONE_HIGH)
            ]
        );
    }

    #[test]
    fn test_loader_executed_at_the_vmm_address_gives_the_vmm_tables() {
        // Arrange: the tables the VMM writes itself start right after the RSDP.
        let m = machine();
        let direct = build(&m).unwrap();
        let tables_at = direct.tables[1..].iter().map(|(a, _)| a.0).min().unwrap();
        let f = files(&m);

        // Act
        let (tables, rsdp) = execute(&f, tables_at);

        // Assert: byte for byte what `build` lays out, checksums included.
        assert_eq!(rsdp, direct.tables[0].1);
        for (at, bytes) in &direct.tables[1..] {
            let off = (at.0 - tables_at) as usize;
            assert_eq!(&tables[off..off + bytes.len()], &bytes[..], "at {at:?}");
        }
    }
}
