//! ACPI's steps of the VM build (boot sequence steps 5, 7, 8 and 9 in ARCHITECTURE.md): the
//! machine description from the device plan, the registers on the port-I/O bus with the GED's
//! irqfd, the ECAM window on the MMIO bus.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::pm::{acpi_pm, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use super::{AcpiError, AcpiMachine, AcpiPci, PowerButton};
use crate::arch::x86_64::layout::{self, PCI_ECAM_START, VIRTIO_MMIO_WINDOW};
use crate::device_manager::{DevicePlan, Placement};
use crate::devices::Bus;
use crate::kvm::KvmVm;
use crate::pci::PciRoot;
use crate::vm_events::VmEvents;

/// What the tables describe of a machine with `cpus` vCPUs, `ram_size` bytes of RAM and the
/// devices of `plan`; the GED's interrupt is `ged_irq`.
pub fn machine(cpus: u8, ram_size: u64, plan: &DevicePlan, ged_irq: u32) -> AcpiMachine {
    let mut virtio_mmio = Vec::new();
    let mut intx = Vec::new();
    for d in &plan.devices {
        match d.placement {
            Placement::Mmio { base, irq } => virtio_mmio.push((base.0, VIRTIO_MMIO_WINDOW, irq)),
            Placement::Pci { device, intx_gsi } => intx.push((device, intx_gsi)),
        }
    }
    let pci = plan.has_pci().then(|| AcpiPci {
        ecam: PCI_ECAM_START,
        mmio32: (layout::PCI_MMIO32_START.0, layout::PCI_MMIO32_SIZE),
        mmio64: (
            layout::pci_mmio64_start(ram_size).0,
            layout::PCI_MMIO64_SIZE,
        ),
        io: (layout::PCI_IO_START as u16, layout::PCI_IO_SIZE as u16),
        intx,
    });
    AcpiMachine {
        cpus,
        pci,
        virtio_mmio,
        ged_irq,
    }
}

/// Puts the sleep and GED registers on `pio` and wires the GED's interrupt to `ged_irq`;
/// returns the power button.
pub fn register_pm(
    kvm: &KvmVm,
    pio: &Bus,
    events: &VmEvents,
    ged_irq: u32,
) -> Result<PowerButton, AcpiError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(AcpiError::CreateEventFd)?;
    let (pm, button) = acpi_pm(events.clone(), irq);
    pio.insert(
        Arc::new(Mutex::new(pm)),
        u64::from(ACPI_PM_PORT),
        u64::from(ACPI_PM_PORT_LEN),
    )
    .map_err(|source| AcpiError::Register {
        what: "ACPI registers",
        source,
    })?;
    kvm.register_irqfd(button.irq(), ged_irq)
        .map_err(AcpiError::Irqfd)?;
    Ok(button)
}

/// Puts the ECAM window of `root` on `mmio` where the MCFG says.
pub fn register_ecam(mmio: &Bus, root: Arc<Mutex<PciRoot>>) -> Result<(), AcpiError> {
    crate::pci::ecam::register(mmio, root, PCI_ECAM_START.0).map_err(|source| AcpiError::Register {
        what: "PCI ECAM window",
        source,
    })
}
