//! The Intel MultiProcessor Specification 1.4 table, written into the BIOS area so that SMP guests
//! find their CPUs, the IOAPIC and the ISA interrupt routing (same content as Firecracker's).

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

fn config_table_entries(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus + 1;
    let mut e = Vec::new();
    for cpu in 0..num_cpus {
        e.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION]);
        e.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        e.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURE_FPU_APIC.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
    }
    e.extend_from_slice(&[MP_BUS, 0]);
    e.extend_from_slice(b"ISA   ");
    e.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    e.extend_from_slice(&(IOAPIC_START.0 as u32).to_le_bytes());
    for irq in 0..IOAPIC_PINS {
        e.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    e.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    e
}

/// Builds the floating pointer and configuration table for `num_cpus` CPUs, to be placed at
/// `base`.
pub fn build(base: GuestAddress, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let entries = config_table_entries(num_cpus);
    let entry_count = u16::from(num_cpus) + 3 + u16::from(IOAPIC_PINS) + 2;
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
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(MPTABLE_START, num_cpus)?;
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
        let t = build(MPTABLE_START, 2).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(cfg.len(), len);
        assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2 + 3 + 24 + 2);
        // Second processor entry: APIC ID 1, enabled, not BSP.
        assert_eq!(
            &cfg[44 + 20..44 + 24],
            &[MP_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]
        );
    }

    #[test]
    fn test_build_zero_cpus_rejected() {
        assert!(matches!(
            build(MPTABLE_START, 0),
            Err(MptableError::TooManyCpus(0))
        ));
    }

    #[test]
    fn test_setup_mptable_many_cpus_fits() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 254).unwrap();
    }
}
