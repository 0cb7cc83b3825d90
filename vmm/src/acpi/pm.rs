//! The hardware-reduced ACPI registers: sleep control/status (S5 ends the VM) and the generic
//! event device's event register (the power button), on two I/O ports.
//!
//! - [`ACPI_PM_PORT`] (FADT `SLEEP_CONTROL_REG` and `SLEEP_STATUS_REG`): a write with SLP_EN
//!   (bit 5) and SLP_TYP (bits 2-4) = 5, the DSDT's `_S5_`, powers the VM off; other sleep
//!   types are ignored (the DSDT offers no other). Reads return 0 (WAK_STS clear).
//! - [`GED_EVENT_PORT`]: the DSDT's `GED_._EVT` reads the pending events here (bit 0: power
//!   button) and the read clears them. [`PowerButton::press`] sets the bit and raises the
//!   GED's interrupt (edge, through an irqfd).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::PortDevice;
use crate::vm_events::{VmEvent, VmEvents};

/// The sleep control and status register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The generic event device's event register (one after the sleep register).
pub const GED_EVENT_PORT: u16 = ACPI_PM_PORT + 1;
/// Ports the device decodes.
pub const ACPI_PM_PORT_LEN: u16 = 2;
/// Width of the sleep registers in the FADT.
pub const SLEEP_CONTROL_BITS: u8 = 8;
/// The sleep type `_S5_` announces.
pub const SLP_TYP_S5: u8 = 5;
/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// Event bit of the power button in the GED register.
pub const GED_EVENT_POWER_BUTTON: u8 = 1;

/// The pending GED events, shared by the device and the power button.
type Events = Arc<AtomicU8>;

/// The guest's side: the two registers.
pub struct AcpiPm {
    events: VmEvents,
    pending: Events,
}

/// The VMM's side: presses the power button.
#[derive(Clone)]
pub struct PowerButton {
    pending: Events,
    irq: Arc<EventFd>,
}

impl PowerButton {
    /// Marks the power-button event pending and raises the GED's interrupt.
    pub fn press(&self) -> std::io::Result<()> {
        self.pending
            .fetch_or(GED_EVENT_POWER_BUTTON, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// The interrupt eventfd, for an irqfd on the GED's IRQ.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }
}

/// Creates the registers and the power button that share their state; `irq` signals the
/// GED's interrupt.
pub fn acpi_pm(events: VmEvents, irq: EventFd) -> (AcpiPm, PowerButton) {
    let pending = Events::default();
    (
        AcpiPm {
            events,
            pending: Arc::clone(&pending),
        },
        PowerButton {
            pending,
            irq: Arc::new(irq),
        },
    )
}

impl PortDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == GED_EVENT_PORT - ACPI_PM_PORT {
            if let Some(b) = data.first_mut() {
                *b = self.pending.swap(0, Ordering::SeqCst);
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let value = *data.first()?;
        let sleep_type = (value >> 2) & 0x7;
        (offset == 0 && value & SLP_EN != 0 && sleep_type == SLP_TYP_S5)
            .then_some(VmEvent::PowerOff)
    }

    fn vm_events(&self) -> Option<&VmEvents> {
        Some(&self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_events::vm_events;

    fn setup() -> (AcpiPm, PowerButton, crate::vm_events::VmEventQueue) {
        let (tx, rx) = vm_events().unwrap();
        let (pm, button) = acpi_pm(tx, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (pm, button, rx)
    }

    #[test]
    fn test_acpi_pm_s5_write_powers_off() {
        let (mut pm, _button, _rx) = setup();

        let event = PortDevice::write(&mut pm, 0, &[(SLP_TYP_S5 << 2) | SLP_EN]);

        assert_eq!(event, Some(VmEvent::PowerOff));
    }

    #[test]
    fn test_acpi_pm_other_sleep_writes_ignored() {
        let (mut pm, _button, _rx) = setup();

        let without_enable = PortDevice::write(&mut pm, 0, &[SLP_TYP_S5 << 2]);
        let s1 = PortDevice::write(&mut pm, 0, &[(1 << 2) | SLP_EN]);
        let ged = PortDevice::write(&mut pm, 1, &[0xff]);
        let empty = PortDevice::write(&mut pm, 0, &[]);

        assert_eq!((without_enable, s1, ged, empty), (None, None, None, None));
    }

    #[test]
    fn test_power_button_press_sets_event_until_read_and_signals_irq() {
        let (mut pm, button, _rx) = setup();
        let mut before = [0xffu8];
        PortDevice::read(&mut pm, 1, &mut before);

        button.press().unwrap();
        let mut first = [0u8];
        PortDevice::read(&mut pm, 1, &mut first);
        let mut second = [0xffu8];
        PortDevice::read(&mut pm, 1, &mut second);

        assert_eq!(before, [0]);
        assert_eq!(first, [GED_EVENT_POWER_BUTTON]);
        assert_eq!(second, [0]);
        assert_eq!(button.irq().read().unwrap(), 1);
    }
}
