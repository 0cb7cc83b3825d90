//! The virtio-pci legacy (0.9.5) transport of transitional devices: an
//! I/O BAR 0 with fixed registers; 32-bit features; queue sizes fixed by
//! the device; the queue given as one page frame number.

use super::queue::{Notifier, Virtq};
use super::Config;
use crate::io::{inb, inl, inw, outb, outl, outw};
use crate::pci::{Bar, Function};
use crate::{bail, Error};

const HOST_FEATURES: u16 = 0x00;
const GUEST_FEATURES: u16 = 0x04;
const QUEUE_PFN: u16 = 0x08;
const QUEUE_NUM: u16 = 0x0c;
const QUEUE_SEL: u16 = 0x0e;
const QUEUE_NOTIFY: u16 = 0x10;
const STATUS: u16 = 0x12;
const ISR: u16 = 0x13;
/// Device configuration without MSI-X (with MSI-X enabled: 0x18).
const CONFIG: u16 = 0x14;
const CONFIG_MSIX: u16 = 0x18;

/// One transitional virtio-pci device driven through its legacy interface.
#[derive(Debug)]
pub struct PciLegacy {
    function: Function,
    device_id: u32,
    port: u16,
}

impl PciLegacy {
    /// The legacy interface of `f` in its I/O BAR 0 (BARs assigned: `bars`).
    pub fn probe(f: Function, device_id: u32, bars: &[Bar; 6]) -> Result<Self, Error> {
        match bars[0] {
            Bar::Io { port, size } if size >= 0x14 => Ok(Self {
                function: f,
                device_id,
                port,
            }),
            bar => bail!(
                "virtio-pci {}: BAR0 is not a legacy I/O window: {bar:?}",
                f.bdf
            ),
        }
    }

    /// The PCI function.
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// The virtio device type (the PCI subsystem ID).
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// First port of the I/O window.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Reads (and so acknowledges) the ISR status.
    pub fn isr(&self) -> u8 {
        inb(self.port + ISR)
    }

    pub(super) fn status(&self) -> u8 {
        inb(self.port + STATUS)
    }

    pub(super) fn set_status(&mut self, status: u8) {
        outb(self.port + STATUS, status);
    }

    pub(super) fn device_features(&mut self) -> u64 {
        u64::from(inl(self.port + HOST_FEATURES))
    }

    pub(super) fn set_driver_features(&mut self, features: u64) {
        outl(self.port + GUEST_FEATURES, features as u32);
    }

    pub(super) fn queue_max(&mut self, index: u16) -> u16 {
        outw(self.port + QUEUE_SEL, index);
        inw(self.port + QUEUE_NUM)
    }

    pub(super) fn notifier(&self) -> Notifier {
        Notifier::Port(self.port + QUEUE_NOTIFY)
    }

    pub(super) fn queue_setup(&mut self, q: &Virtq) -> Result<(), Error> {
        let (desc, _, _) = q.addrs();
        outw(self.port + QUEUE_SEL, q.index());
        if inw(self.port + QUEUE_NUM) != q.size() {
            bail!(
                "virtio-pci {}: legacy queue {} has a fixed size",
                self.function.bdf,
                q.index()
            );
        }
        outl(self.port + QUEUE_PFN, (desc >> 12) as u32);
        Ok(())
    }

    pub(super) fn config(&self) -> Config {
        let off = if self.function.msix_enabled() {
            CONFIG_MSIX
        } else {
            CONFIG
        };
        Config::Port(self.port + off)
    }
}
