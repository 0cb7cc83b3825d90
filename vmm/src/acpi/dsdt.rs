//! The DSDT: the machine's devices in AML.
//!
//! ```text
//! \_SB.PCI0  PCI host bridge (PNP0A08/PNP0A03): _CRS bus 0, ports 0xcf8-0xcff, the BAR
//!            windows (I/O, 32-bit and 64-bit memory); _PRT routes each device's INTA# to
//!            its GSI                                           (with a PCI host bridge only)
//! \_SB.MRES  motherboard resources (PNP0C02): the ECAM window (Linux uses ECAM only where
//!            firmware reserves it) and the ACPI registers' ports
//! \_SB.COM1  16550 (PNP0501) at 0x3f8, IRQ 4
//! \_SB.Vnnn  each virtio-mmio device (LNRO0005): its window and IRQ
//! \_SB.PWRB  the power button (PNP0C0C)
//! \_SB.GED_  generic event device (ACPI0013): on its interrupt, _EVT reads the event
//!            register and notifies PWRB (0x80) for a power-button event
//! \_S5_      sleep type 5 for the FADT's sleep control register
//! ```

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name,
    Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::pm::{
    ACPI_PM_PORT, ACPI_PM_PORT_LEN, GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, SLP_TYP_S5,
};
use super::{AcpiMachine, AcpiPci, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::serial::COM1_IRQ;

/// DSDT revision 2: 64-bit integers.
const DSDT_REVISION: u8 = 2;
/// COM1's ports.
const COM1_PORT: u16 = 0x3f8;
/// Size of bus 0's ECAM region (32 devices x 8 functions x 4 KiB).
pub(super) const ECAM_BUS_SIZE: u32 = 1 << 20;
/// Notify value of a power-button press.
const NOTIFY_POWER_BUTTON: u8 = 0x80;

/// AML already serialized, so that objects built in loops can be children.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn raw(a: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    Raw(v)
}

/// The DSDT for `machine`.
pub(super) fn build(machine: &AcpiMachine) -> Vec<u8> {
    let mut sb: Vec<Raw> = Vec::new();
    if let Some(pci) = &machine.pci {
        sb.push(pci_host_bridge(pci));
    }
    sb.push(motherboard(machine.pci.as_ref()));
    sb.push(com1());
    for (i, &(base, size, irq)) in machine.virtio_mmio.iter().enumerate() {
        sb.push(virtio_mmio(i, base, size, irq));
    }
    sb.push(power_button());
    sb.push(ged(machine.ged_irq));
    let children: Vec<&dyn Aml> = sb.iter().map(|r| r as &dyn Aml).collect();
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut dsdt);
    let s5 = Package::new(vec![&SLP_TYP_S5, &0u8, &0u8, &0u8]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn pci_host_bridge(pci: &AcpiPci) -> Raw {
    let io_end = pci.io.0.saturating_add(pci.io.1.saturating_sub(1));
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io = AddressSpace::<u16>::new_io(pci.io.0, io_end, None);
    let m32_end = (pci.mmio32.0 + pci.mmio32.1.saturating_sub(1)) as u32;
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32.0 as u32,
        m32_end,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio64.0,
        pci.mmio64.0 + pci.mmio64.1.saturating_sub(1),
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &config_ports, &io, &mmio32, &mmio64]);
    let routes: Vec<Raw> = pci
        .intx
        .iter()
        .map(|&(device, gsi)| {
            let addr = (u32::from(device) << 16) | 0xffff;
            // Pin 0 (INTA#), no link device: the fourth element is the GSI.
            raw(&Package::new(vec![&addr, &0u8, &0u8, &gsi]))
        })
        .collect();
    let prt = Package::new(routes.iter().map(|r| r as &dyn Aml).collect());
    raw(&Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &ZERO),
            &Name::new("_SEG".into(), &ZERO),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_BBN".into(), &ZERO),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
        ],
    ))
}

fn motherboard(pci: Option<&AcpiPci>) -> Raw {
    let ports = IO::new(ACPI_PM_PORT, ACPI_PM_PORT, 1, ACPI_PM_PORT_LEN as u8);
    let ecam = pci.map(|p| Memory32Fixed::new(true, p.ecam.0 as u32, ECAM_BUS_SIZE));
    let mut resources: Vec<&dyn Aml> = vec![&ports];
    if let Some(e) = &ecam {
        resources.push(e);
    }
    let crs = ResourceTemplate::new(resources);
    raw(&Device::new(
        "MRES".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn com1() -> Raw {
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&ports, &irq]);
    raw(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &1u8),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn virtio_mmio(index: usize, base: u64, size: u64, irq: u32) -> Raw {
    let window = Memory32Fixed::new(true, base as u32, size as u32);
    let irq = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u32;
    raw(&Device::new(
        format!("V{:03X}", index & 0xfff).as_str().into(),
        vec![
            &Name::new("_HID".into(), &"LNRO0005"),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn power_button() -> Raw {
    raw(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &ZERO),
        ],
    ))
}

fn ged(irq: u32) -> Raw {
    let irq = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&irq]);
    let port = GED_EVENT_PORT;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &port, &1u8);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let local0 = Local(0);
    let gdat = Path::new("GDAT");
    let read = Store::new(&local0, &gdat);
    let masked = And::new(&ZERO, &local0, &GED_EVENT_POWER_BUTTON);
    let pressed = Equal::new(&masked, &GED_EVENT_POWER_BUTTON);
    let button = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&button, &NOTIFY_POWER_BUTTON);
    let on_button = If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &on_button]);
    raw(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ))
}
