//! The fixed-format tables: RSDP, XSDT, FADT, MADT, MCFG (the DSDT is in `dsdt.rs`).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::GuestAddress;
use zerocopy::{Immutable, IntoBytes};

use super::pm::{ACPI_PM_PORT, SLEEP_CONTROL_BITS};
use super::{AcpiMachine, AcpiPci, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::x86_64::layout::{APIC_START, IOAPIC_START};

/// Size of an ACPI 2.0 RSDP.
pub(super) const RSDP_LEN: usize = 36;
/// The reset register: the PC's reset control register at port 0xcf9 ...
const RESET_PORT: u64 = 0xcf9;
/// ... written with "full reset, system reset" (what Strata's reset port acts on).
const RESET_VALUE: u8 = 0x06;
/// IA-PC boot architecture flags: legacy devices (the RTC, COM1) and an 8042.
const IAPC_BOOT_ARCH: u16 = 0x0003;
/// MADT flags: PCAT_COMPAT (the machine also has dual 8259s).
const MADT_PCAT_COMPAT: u32 = 1;

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The RSDP pointing at the XSDT at `xsdt`.
pub(super) fn rsdp(xsdt: GuestAddress) -> Vec<u8> {
    bytes_of(&Rsdp::new(OEM_ID, xsdt.0))
}

/// The XSDT listing `entries`.
pub(super) fn xsdt(entries: &[GuestAddress]) -> Vec<u8> {
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        x.add_entry(e.0);
    }
    bytes_of(&x)
}

/// Offset of the FADT's 32-bit `DSDT` field.
pub(super) const FADT_DSDT_OFFSET: u32 = 40;
/// Offset of the FADT's 64-bit `X_DSDT` field.
pub(super) const FADT_X_DSDT_OFFSET: u32 = 140;

/// The FADT: hardware-reduced ACPI, the sleep registers on [`ACPI_PM_PORT`], the reset
/// register at 0xcf9, the DSDT at `dsdt` in both `DSDT` and `X_DSDT` (as QEMU fills them:
/// SeaBIOS reads only the 32-bit field, and finds virtio-mmio devices only in the DSDT; the
/// tables always lie below 4 GiB).
pub(super) fn fadt(dsdt: GuestAddress) -> Vec<u8> {
    let pm = GAS::new(
        AddressSpace::SystemIo,
        SLEEP_CONTROL_BITS,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT),
    );
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton);
    b.dsdt = u32::try_from(dsdt.0).unwrap_or(0).into();
    b.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        RESET_PORT,
    );
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = pm;
    b.sleep_status_reg = pm;
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"STRATAVM").into();
    bytes_of(&b.finalize())
}

/// MADT interrupt source override (type 2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT local APIC NMI (type 4).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The MADT: one local APIC per vCPU (APIC ID = vCPU index), the IOAPIC with GSIs 0-23, the
/// PIT's override (ISA IRQ 0 on GSI 0: KVM's default routing, not the GSI 2 PC firmware
/// reports) and NMI on every CPU's LINT1, as the MP table says.
pub(super) fn madt(machine: &AcpiMachine) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START.0 as u32),
    );
    for cpu in 0..machine.cpus {
        m.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The MP table's IOAPIC ID, so both tables name the same one.
    let ioapic_id = machine.cpus.wrapping_add(1);
    m.add_structure(IoApic::new(ioapic_id, IOAPIC_START.0 as u32, 0));
    m.add_structure(InterruptSourceOverride {
        r#type: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 0,
        flags: 0,
    });
    m.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0,
        lint: 1,
    });
    let mut bytes = bytes_of(&m);
    set_madt_flags(&mut bytes, MADT_PCAT_COMPAT);
    bytes
}

/// Sets the MADT's flags field (offset 40) and fixes the checksum (the crate leaves it 0).
fn set_madt_flags(bytes: &mut [u8], flags: u32) {
    if let Some(f) = bytes.get_mut(40..44) {
        f.copy_from_slice(&flags.to_le_bytes());
    }
    fix_checksum(bytes);
}

/// Recomputes a table's checksum (byte 9) over its bytes.
pub(super) fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() < 10 {
        return;
    }
    bytes[9] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[9] = 0u8.wrapping_sub(sum);
}

/// The MCFG: the ECAM window of bus 0 on segment 0.
pub(super) fn mcfg(pci: &AcpiPci) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(pci.ecam.0, 0, 0, 0);
    bytes_of(&m)
}
