//! The Intel MultiProcessor Specification 1.4 table, written into the BIOS area so that SMP guests
//! find their CPUs, the IOAPIC and the interrupt routing (Firecracker's content, plus a PCI bus
//! when the machine has one).
//!
//! Every IOAPIC pin has an ISA interrupt source entry (IRQ n to pin n, edge, active high: the
//! legacy devices and the virtio-mmio devices, whose IRQs the VMM hands out from 5 to 23),
//! except the pins given to PCI INTx lines: those get a PCI entry (device, pin) to the same
//! IOAPIC pin, level-triggered. With a PCI bus, it is MP bus 0 (matching PCI bus 0, as SeaBIOS
//! numbers them) and the ISA bus is bus 1; without, the ISA bus is bus 0.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, BIOS_END, IOAPIC_START, MPTABLE_START};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table and the APIC ID space allow.
    #[error("{0} vCPUs do not fit in the MP table (at most 254)")]
    TooManyCpus(u8),
    /// The table does not fit in the BIOS area.
    #[error("the MP table ({0} bytes) does not fit in the BIOS area")]
    TooBig(usize),
    /// Guest memory could not be written.
    #[error("unable to write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// ISA IRQs routed through the IOAPIC (24 pins).
const IOAPIC_PINS: u8 = 24;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_FPU_APIC: u32 = 0x201;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Interrupt source flags: level-triggered, active high (KVM's IOAPIC models the line's
/// logical level).
const FLAGS_LEVEL_HIGH: u8 = 0x0d;

/// A PCI INTx line routed to an IOAPIC pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIntx {
    /// Device number on PCI bus 0.
    pub device: u8,
    /// Interrupt pin: 0 for INTA# .. 3 for INTD#.
    pub pin: u8,
    /// The IOAPIC pin (GSI) it is wired to.
    pub gsi: u8,
}

/// What the MP table describes besides the processors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MpConfig {
    /// Whether there is a PCI bus 0.
    pub pci_bus: bool,
    /// Its INTx lines.
    pub pci_intx: Vec<PciIntx>,
}

fn config_table_entries(num_cpus: u8, cfg: &MpConfig) -> (Vec<u8>, u16) {
    let ioapic_id = num_cpus + 1;
    let mut e = Vec::new();
    let mut count = 0u16;
    let mut entry = |e: &mut Vec<u8>, bytes: &[u8]| {
        e.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let mut p = vec![MP_PROCESSOR, cpu, APIC_VERSION];
        p.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        p.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        p.extend_from_slice(&CPU_FEATURE_FPU_APIC.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        entry(&mut e, &p);
    }
    let (pci_bus, isa_bus) = if cfg.pci_bus { (0, 1) } else { (0xff, 0) };
    if cfg.pci_bus {
        entry(
            &mut e,
            &[MP_BUS, pci_bus, b'P', b'C', b'I', b' ', b' ', b' '],
        );
    }
    entry(
        &mut e,
        &[MP_BUS, isa_bus, b'I', b'S', b'A', b' ', b' ', b' '],
    );
    let mut ioapic = vec![MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1];
    ioapic.extend_from_slice(&(IOAPIC_START.0 as u32).to_le_bytes());
    entry(&mut e, &ioapic);
    for irq in 0..IOAPIC_PINS {
        if cfg.pci_intx.iter().all(|l| l.gsi != irq) {
            entry(
                &mut e,
                &[MP_INTSRC, MP_INT, 0, 0, isa_bus, irq, ioapic_id, irq],
            );
        }
    }
    for l in cfg.pci_intx.iter().filter(|_| cfg.pci_bus) {
        let source = (l.device << 2) | (l.pin & 3);
        let flags = [FLAGS_LEVEL_HIGH, 0];
        entry(
            &mut e,
            &[
                MP_INTSRC, MP_INT, flags[0], flags[1], pci_bus, source, ioapic_id, l.gsi,
            ],
        );
    }
    entry(&mut e, &[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entry(&mut e, &[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    (e, count)
}

/// Builds the floating pointer and configuration table for `num_cpus` CPUs, to be placed at
/// `base`.
pub fn build(base: GuestAddress, num_cpus: u8, cfg: &MpConfig) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let (entries, entry_count) = config_table_entries(num_cpus, cfg);
    let table_len = 44 + entries.len();
    let table_addr = base.0 as u32 + 16;

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]);
    table.extend_from_slice(b"STRATA  ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&[0; 4]);
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START.0 as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table_len);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs at [`MPTABLE_START`].
pub fn setup_mptable(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    cfg: &MpConfig,
) -> Result<(), MptableError> {
    let bytes = build(MPTABLE_START, num_cpus, cfg)?;
    if MPTABLE_START.0 + bytes.len() as u64 > BIOS_END.0 {
        return Err(MptableError::TooBig(bytes.len()));
    }
    mem.write_slice(&bytes, MPTABLE_START)
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_build_checksums_and_counts() {
        let t = build(MPTABLE_START, 2, &MpConfig::default()).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(cfg.len(), len);
        assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // Processors, ISA bus, IOAPIC, 24 interrupt sources, 2 local sources (the count was
        // one too many before it was computed from the entries written).
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2 + 1 + 1 + 24 + 2);
        // Second processor entry: APIC ID 1, enabled, not BSP.
        assert_eq!(
            &cfg[44 + 20..44 + 24],
            &[MP_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]
        );
    }

    #[test]
    fn test_build_zero_cpus_rejected() {
        assert!(matches!(
            build(MPTABLE_START, 0, &MpConfig::default()),
            Err(MptableError::TooManyCpus(0))
        ));
    }

    #[test]
    fn test_setup_mptable_many_cpus_fits() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 254, &MpConfig::default()).unwrap();
    }

    /// The 8-byte interrupt source entries of a table built by [`build`].
    fn intsrc_entries(t: &[u8], cpus: usize) -> Vec<[u8; 8]> {
        let cfg = &t[16..];
        cfg[44 + 20 * cpus..]
            .chunks(8)
            .filter(|c| c[0] == MP_INTSRC)
            .map(|c| c.try_into().unwrap())
            .collect()
    }

    #[test]
    fn test_build_pci_bus_intx_replaces_isa_entry_of_its_pin() {
        let cfg = MpConfig {
            pci_bus: true,
            pci_intx: vec![PciIntx {
                device: 3,
                pin: 0,
                gsi: 9,
            }],
        };

        let t = build(MPTABLE_START, 1, &cfg).unwrap();
        let table = &t[16..];
        let entries = intsrc_entries(&t, 1);

        assert_eq!(
            &table[44 + 20..44 + 28],
            &[MP_BUS, 0, b'P', b'C', b'I', b' ', b' ', b' ']
        );
        assert_eq!(&table[44 + 28..44 + 30], &[MP_BUS, 1]);
        assert_eq!(entries.len(), 24);
        assert!(entries.iter().all(|e| e[4] != 1 || e[5] != 9));
        assert_eq!(entries[23], [MP_INTSRC, MP_INT, 0x0d, 0, 0, 3 << 2, 2, 9]);
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 1 + 3 + 24 + 2);
    }
}
