//! The generated tables parsed back: checksums, lengths, pointers, contents; the DSDT through
//! `iasl -d` (acpica-tools).

use std::process::Command;

use super::*;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn machine(cpus: u8, pci: bool, mmio: usize) -> AcpiMachine {
    AcpiMachine {
        cpus,
        pci: pci.then(|| AcpiPci {
            ecam: GuestAddress(0xe000_0000),
            mmio32: (0xc000_0000, 0x1000_0000),
            mmio64: (0x1_0000_0000, 64 << 30),
            io: (0xc000, 0x4000),
            intx: vec![(1, 10), (2, 11)],
        }),
        virtio_mmio: (0..mmio)
            .map(|i| (0xd000_0000 + 0x1000 * i as u64, 0x1000, 5 + i as u32))
            .collect(),
        ged_irq: 9,
    }
}

/// Follows RSDP -> XSDT -> tables as a guest would, by address; returns (signature, bytes).
fn walk(t: &AcpiTables) -> Vec<([u8; 4], Vec<u8>)> {
    let at = |addr: u64| {
        t.tables
            .iter()
            .find(|(a, _)| a.0 == addr)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no table at {addr:#x}"))
    };
    let rsdp = at(t.rsdp().0);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20) as usize, rsdp.len());
    let xsdt = at(u64_at(&rsdp, 24));
    let mut out = vec![(*b"XSDT", xsdt.clone())];
    for i in 0..(xsdt.len() - 36) / 8 {
        let table = at(u64_at(&xsdt, 36 + 8 * i));
        out.push((table[..4].try_into().unwrap(), table));
    }
    let fadt = &out.iter().find(|(s, _)| s == b"FACP").unwrap().1;
    let dsdt = u64_at(fadt, 140);
    assert_eq!(
        u64::from(u32_at(fadt, 40)),
        dsdt,
        "FADT DSDT and X_DSDT differ"
    );
    out.push((*b"DSDT", at(dsdt)));
    for (sig, b) in &out {
        assert_eq!(u32_at(b, 4) as usize, b.len(), "{sig:?} length");
        assert_eq!(sum(b), 0, "{sig:?} checksum");
        assert_eq!(&b[10..16], b"STRATA", "{sig:?} OEM ID");
    }
    out
}

fn table(all: &[([u8; 4], Vec<u8>)], sig: &[u8; 4]) -> Vec<u8> {
    all.iter().find(|(s, _)| s == sig).unwrap().1.clone()
}

#[test]
fn test_acpi_build_tables_reachable_from_rsdp_with_valid_checksums() {
    let t = build(&machine(2, true, 3)).unwrap();

    let all = walk(&t);

    let sigs: Vec<[u8; 4]> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(sigs, [*b"XSDT", *b"FACP", *b"APIC", *b"MCFG", *b"DSDT"]);
    assert_eq!(t.tables.len(), 6);
    for (a, b) in &t.tables {
        assert_eq!(a.0 % 16, 0);
        assert!(a.0 >= ACPI_TABLES_START.0 && a.0 + b.len() as u64 <= ACPI_TABLES_END.0);
    }
}

#[test]
fn test_acpi_build_without_pci_has_no_mcfg_or_pci0() {
    let t = build(&machine(1, false, 0)).unwrap();

    let all = walk(&t);

    assert!(all.iter().all(|(s, _)| s != b"MCFG"));
    let dsdt = table(&all, b"DSDT");
    assert!(!dsdt.windows(4).any(|w| w == b"PCI0"));
    assert!(dsdt.windows(4).any(|w| w == b"GED_"));
}

#[test]
fn test_acpi_fadt_hardware_reduced_with_reset_and_sleep_registers() {
    let all = walk(&build(&machine(1, true, 0)).unwrap());

    let fadt = table(&all, b"FACP");

    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT 6.5");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    // Reset register: system I/O, 8 bits, port 0xcf9, value 6.
    assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&fadt, 120), 0xcf9);
    assert_eq!(fadt[128], 6);
    // Sleep control and status registers: the PM port.
    for off in [244, 256] {
        assert_eq!(&fadt[off..off + 4], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&fadt, off + 4), u64::from(pm::ACPI_PM_PORT));
    }
}

#[test]
fn test_acpi_madt_one_lapic_per_cpu_ioapic_override_nmi() {
    let all = walk(&build(&machine(3, false, 0)).unwrap());
    let madt = table(&all, b"APIC");

    let mut entries = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let len = madt[off + 1] as usize;
        entries.push(madt[off..off + len].to_vec());
        off += len;
    }

    assert_eq!(off, madt.len());
    assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
    assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
    let types: Vec<u8> = entries.iter().map(|e| e[0]).collect();
    assert_eq!(types, [0, 0, 0, 1, 2, 4]);
    for (cpu, e) in entries.iter().take(3).enumerate() {
        assert_eq!((e[2], e[3], u32_at(e, 4)), (cpu as u8, cpu as u8, 1));
    }
    assert_eq!(entries[3][2], 4, "IOAPIC ID as in the MP table");
    assert_eq!(u32_at(&entries[3], 4), 0xfec0_0000);
    assert_eq!(u32_at(&entries[3], 8), 0, "GSI base");
    assert_eq!(
        (entries[4][3], u32_at(&entries[4], 4)),
        (0, 0),
        "IRQ 0 on GSI 0"
    );
    assert_eq!((entries[5][2], entries[5][5]), (0xff, 1), "NMI on LINT1");
}

#[test]
fn test_acpi_mcfg_describes_bus0_ecam() {
    let all = walk(&build(&machine(1, true, 0)).unwrap());

    let mcfg = table(&all, b"MCFG");

    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(u64_at(&mcfg, 44), 0xe000_0000);
    assert_eq!(u16_at(&mcfg, 52), 0, "segment");
    assert_eq!((mcfg[54], mcfg[55]), (0, 0), "buses 0-0");
}

#[test]
fn test_acpi_build_too_many_devices_refused() {
    let m = machine(254, true, 3000);

    let err = build(&m).unwrap_err();

    assert!(
        matches!(err, AcpiError::TooBig { room: 0x10000, .. }),
        "{err}"
    );
}

/// Disassembles `dsdt` with iasl; returns the ASL text.
fn disassemble(name: &str, dsdt: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("strata-acpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aml = dir.join("dsdt.dat");
    std::fs::write(&aml, dsdt).unwrap();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&aml)
        .current_dir(&dir)
        .output()
        .expect("iasl does not run: install the Debian package acpica-tools (.ci/run does)");
    let asl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "iasl -d failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    asl
}

#[test]
fn test_acpi_dsdt_disassembles_with_every_device() {
    let all = walk(&build(&machine(2, true, 2)).unwrap());

    let asl = disassemble("full", &table(&all, b"DSDT"));

    for want in [
        "Device (PCI0)",
        "EisaId (\"PNP0A08\")",
        "Name (_CID, EisaId (\"PNP0A03\")",
        "WordBusNumber (ResourceProducer",
        "0xCFFFFFFF,         // Range Maximum",
        "Device (MRES)",
        "Name (_HID, EisaId (\"PNP0C02\")",
        "Memory32Fixed (ReadWrite,\n                    0xE0000000,         // Address Base",
        "0x00100000,         // Address Length",
        "Device (COM1)",
        "Name (_HID, EisaId (\"PNP0501\")",
        "0x03F8,             // Range Minimum",
        "Device (V000)",
        "Device (V001)",
        "Name (_HID, \"LNRO0005\")",
        "0xD0001000,         // Address Base",
        "Device (PWRB)",
        "Name (_HID, EisaId (\"PNP0C0C\")",
        "Device (GED)",
        "Name (_HID, \"ACPI0013\"",
        "OperationRegion (GDST, SystemIO, 0x0601, One)",
        "Method (_EVT, 1, Serialized)",
        "Local0 = GDAT",
        "Notify (\\_SB.PWRB, 0x80)",
        "Name (_S5, Package (0x04)",
    ] {
        assert!(asl.contains(want), "no {want:?} in\n{asl}");
    }
}

#[test]
fn test_acpi_dsdt_prt_routes_each_device_inta_to_its_gsi() {
    let all = walk(&build(&machine(1, true, 0)).unwrap());

    let asl = disassemble("prt", &table(&all, b"DSDT"));

    let compact: String = asl.split_whitespace().collect();
    assert!(compact.contains("0x0001FFFF,Zero,Zero,0x0A"), "{asl}");
    assert!(compact.contains("0x0002FFFF,Zero,Zero,0x0B"), "{asl}");
}

#[test]
fn test_setup_acpi_writes_tables_into_guest_memory() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let m = machine(1, false, 1);

    let rsdp = setup_acpi(&mem, &m).unwrap();

    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, rsdp).unwrap();
    assert_eq!(rsdp, ACPI_TABLES_START);
    assert_eq!(&sig, b"RSD PTR ");
    for (at, bytes) in build(&m).unwrap().tables {
        let mut got = vec![0u8; bytes.len()];
        mem.read_slice(&mut got, at).unwrap();
        assert_eq!(got, bytes);
    }
}
