//! ACPI tables generated at boot (docs/decisions/0012-acpi-and-firmware.md).
//!
//! [`build`] lays the tables out in the BIOS area from [`ACPI_TABLES_START`] (the RSDP first,
//! 16-byte aligned, so that guests scanning 0xe0000-0xfffff find it) up to the MP table at
//! [`MPTABLE_START`]: RSDP -> XSDT -> FADT (-> DSDT), MADT and, with a PCI host bridge, MCFG.
//! The machine is hardware-reduced ACPI (no SCI, no PM1 blocks): the FADT's sleep control and
//! status registers are one I/O port ([`pm::ACPI_PM_PORT`]), its reset register is port 0xcf9,
//! and the power button is a generic event device (`ACPI0013`, [`pm`]).
//!
//! Every table is built with the `acpi_tables` crate (the DSDT's AML with `acpi_tables::aml`).

#![forbid(unsafe_code)]

mod dsdt;
pub mod loader;
pub mod pm;
pub mod setup;
mod tables;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::MPTABLE_START;

pub use pm::{AcpiPm, PowerButton};

/// Where the RSDP and the tables after it start (inside the BIOS scan area).
pub const ACPI_TABLES_START: GuestAddress = GuestAddress(0xe_0000);
/// Where they must end: the MP table follows.
pub const ACPI_TABLES_END: GuestAddress = MPTABLE_START;

/// OEM ID in every table header.
pub(crate) const OEM_ID: [u8; 6] = *b"STRATA";
/// OEM table ID in every table header.
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"STRATAVM";
/// OEM revision in every table header.
pub(crate) const OEM_REVISION: u32 = 1;

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit between the RSDP address and the MP table.
    #[error("the ACPI tables ({size} bytes) do not fit in the {room} bytes of the BIOS area reserved for them")]
    TooBig {
        /// Bytes needed.
        size: u64,
        /// Bytes available.
        room: u64,
    },
    /// Guest memory could not be written.
    #[error("unable to write the ACPI tables into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
    /// The GED's interrupt eventfd could not be created.
    #[error("unable to create the ACPI power button's interrupt eventfd")]
    CreateEventFd(#[source] std::io::Error),
    /// The GED's irqfd could not be registered.
    #[error("unable to wire the ACPI power button's interrupt")]
    Irqfd(#[source] crate::kvm::VmError),
    /// A device could not be put on its bus.
    #[error("unable to register the {what}")]
    Register {
        /// Which device.
        what: &'static str,
        /// The cause.
        #[source]
        source: crate::devices::BusError,
    },
}

/// The PCI host bridge as the tables describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiPci {
    /// ECAM window of bus 0 (MCFG, motherboard resources).
    pub ecam: GuestAddress,
    /// 32-bit memory window for BARs: (base, size).
    pub mmio32: (u64, u64),
    /// 64-bit memory window for BARs: (base, size).
    pub mmio64: (u64, u64),
    /// I/O window for BARs: (base, size).
    pub io: (u16, u16),
    /// INTA# of each device on bus 0: (device number, GSI) for `_PRT`.
    pub intx: Vec<(u8, u32)>,
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiMachine {
    /// vCPUs (APIC IDs 0..cpus).
    pub cpus: u8,
    /// The PCI host bridge, if the machine has one.
    pub pci: Option<AcpiPci>,
    /// Every virtio-mmio device: (window base, window size, IRQ).
    pub virtio_mmio: Vec<(u64, u64, u32)>,
    /// The generic event device's interrupt (the power button).
    pub ged_irq: u32,
}

/// The tables laid out: each table's address and bytes, the RSDP first.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// (guest address, bytes) of every table, in the order written.
    pub tables: Vec<(GuestAddress, Vec<u8>)>,
}

impl AcpiTables {
    /// The RSDP's address.
    pub fn rsdp(&self) -> GuestAddress {
        ACPI_TABLES_START
    }

    /// The table whose 4-byte signature is `sig` (the RSDP is "RSD "), with its address.
    pub fn find(&self, sig: &[u8]) -> Option<&(GuestAddress, Vec<u8>)> {
        self.tables.iter().find(|(_, b)| b.starts_with(sig))
    }
}

/// A cursor handing out 16-byte aligned places for tables.
struct Placer {
    next: u64,
    tables: Vec<(GuestAddress, Vec<u8>)>,
}

impl Placer {
    /// The address the next table of `len` bytes gets.
    fn reserve(&mut self, len: usize) -> GuestAddress {
        let at = GuestAddress(self.next);
        self.next = (self.next + len as u64).next_multiple_of(16);
        at
    }

    fn put(&mut self, at: GuestAddress, bytes: Vec<u8>) {
        self.tables.push((at, bytes));
    }
}

/// Builds every table for `machine`, laid out from [`ACPI_TABLES_START`].
pub fn build(machine: &AcpiMachine) -> Result<AcpiTables, AcpiError> {
    let rsdp_at = ACPI_TABLES_START;
    let first = (rsdp_at.0 + tables::RSDP_LEN as u64).next_multiple_of(16);
    let (rsdp, laid) = layout(machine, first);
    let mut all = vec![(rsdp_at, rsdp)];
    all.extend(laid);
    let room = ACPI_TABLES_END.0 - ACPI_TABLES_START.0;
    let end = all
        .iter()
        .map(|(a, b)| a.0 + b.len() as u64)
        .max()
        .unwrap_or(ACPI_TABLES_START.0);
    let size = end - ACPI_TABLES_START.0;
    if size > room {
        return Err(AcpiError::TooBig { size, room });
    }
    Ok(AcpiTables { tables: all })
}

/// Lays the tables other than the RSDP out from `first` (16-byte aligned); returns the RSDP
/// (pointing at the XSDT) and the tables with their addresses, in the order written: XSDT,
/// FADT, DSDT, MADT, MCFG. With `first` = 0 the addresses are offsets in one blob, as
/// fw_cfg's table-loader wants them.
fn layout(machine: &AcpiMachine, first: u64) -> (Vec<u8>, Vec<(GuestAddress, Vec<u8>)>) {
    let mut p = Placer {
        next: first,
        tables: Vec::new(),
    };
    let dsdt = dsdt::build(machine);
    let dsdt_at = p.reserve(dsdt.len());
    let fadt = tables::fadt(dsdt_at);
    let fadt_at = p.reserve(fadt.len());
    let madt = tables::madt(machine);
    let madt_at = p.reserve(madt.len());
    let mut entries = vec![fadt_at, madt_at];
    let mcfg = machine.pci.as_ref().map(tables::mcfg);
    if let Some(m) = &mcfg {
        entries.push(p.reserve(m.len()));
    }
    let xsdt = tables::xsdt(&entries);
    let xsdt_at = p.reserve(xsdt.len());
    p.put(xsdt_at, xsdt);
    p.put(fadt_at, fadt);
    p.put(dsdt_at, dsdt);
    p.put(madt_at, madt);
    if let (Some(m), Some(&at)) = (mcfg, entries.get(2)) {
        p.put(at, m);
    }
    (tables::rsdp(xsdt_at), p.tables)
}

/// Builds the tables for `machine` and writes them into guest memory; returns the RSDP's
/// address.
pub fn setup_acpi(mem: &GuestMemoryMmap, machine: &AcpiMachine) -> Result<GuestAddress, AcpiError> {
    let tables = build(machine)?;
    for (at, bytes) in &tables.tables {
        mem.write_slice(bytes, *at).map_err(AcpiError::Write)?;
    }
    Ok(tables.rsdp())
}

#[cfg(test)]
mod tests;
