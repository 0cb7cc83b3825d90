//! The virtio-pci modern (1.x) transport: vendor capabilities point into
//! memory BARs at the common configuration, notification, ISR and device
//! configuration structures.

use super::queue::{Notifier, Virtq};
use super::Config;
use crate::io::Mmio;
use crate::pci::{Bar, Function, CAP_VENDOR};
use crate::{bail, Error};

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// Common configuration offsets.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// No MSI-X vector.
const NO_VECTOR: u16 = 0xffff;

/// One virtio-pci device driven through its modern interface.
#[derive(Debug)]
pub struct PciModern {
    function: Function,
    device_id: u32,
    common: Mmio,
    notify: Mmio,
    notify_multiplier: u32,
    isr: Mmio,
    device: Option<Mmio>,
}

/// The structure a vendor capability points at, if its BAR is memory.
fn cap_window(f: &Function, cap: u8, bars: &[Bar; 6]) -> Option<Mmio> {
    let bar = f.bdf.read8(cap + 4);
    let offset = u64::from(f.bdf.read32(cap + 8));
    match bars.get(usize::from(bar)) {
        // SAFETY: a BAR the allocator assigned inside the identity map,
        // holding the virtio structure the capability describes.
        Some(Bar::Memory { addr, .. }) => Some(unsafe { Mmio::new(addr + offset) }),
        _ => None,
    }
}

impl PciModern {
    /// The modern interface of `f` (BARs already assigned: `bars`);
    /// `None` if it has no common configuration capability in a memory
    /// BAR (a legacy-only device).
    pub fn probe(f: Function, device_id: u32, bars: &[Bar; 6]) -> Result<Option<Self>, Error> {
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        let mut notify_multiplier = 0;
        for (cap, _) in f.capabilities().filter(|&(_, id)| id == CAP_VENDOR) {
            let Some(window) = cap_window(&f, cap, bars) else {
                continue;
            };
            match f.bdf.read8(cap + 3) {
                CFG_COMMON if common.is_none() => common = Some(window),
                CFG_NOTIFY if notify.is_none() => {
                    notify = Some(window);
                    notify_multiplier = f.bdf.read32(cap + 16);
                }
                CFG_ISR if isr.is_none() => isr = Some(window),
                CFG_DEVICE if device.is_none() => device = Some(window),
                _ => {}
            }
        }
        let Some(common) = common else {
            return Ok(None);
        };
        let (Some(notify), Some(isr)) = (notify, isr) else {
            bail!(
                "virtio-pci {}: common configuration without notify/ISR capabilities",
                f.bdf
            );
        };
        Ok(Some(Self {
            function: f,
            device_id,
            common,
            notify,
            notify_multiplier,
            isr,
            device,
        }))
    }

    /// The PCI function.
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// The virtio device type.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The common configuration structure (for drivers that write
    /// registers the kit does not, such as the hostile guest).
    pub fn common(&self) -> Mmio {
        self.common
    }

    /// The notification structure and its queue offset multiplier.
    pub fn notify(&self) -> (Mmio, u32) {
        (self.notify, self.notify_multiplier)
    }

    /// Reads (and so acknowledges) the ISR status.
    pub fn isr(&self) -> u8 {
        self.isr.read8(0)
    }

    pub(super) fn status(&self) -> u8 {
        self.common.read8(DEVICE_STATUS)
    }

    pub(super) fn set_status(&mut self, status: u8) {
        self.common.write8(DEVICE_STATUS, status);
        // A reset completes when the status reads back 0.
        while status == 0 && self.common.read8(DEVICE_STATUS) != 0 {
            core::hint::spin_loop();
        }
    }

    pub(super) fn device_features(&mut self) -> u64 {
        self.common.write32(DEVICE_FEATURE_SELECT, 0);
        let low = self.common.read32(DEVICE_FEATURE);
        self.common.write32(DEVICE_FEATURE_SELECT, 1);
        u64::from(self.common.read32(DEVICE_FEATURE)) << 32 | u64::from(low)
    }

    pub(super) fn set_driver_features(&mut self, features: u64) {
        self.common.write32(DRIVER_FEATURE_SELECT, 0);
        self.common.write32(DRIVER_FEATURE, features as u32);
        self.common.write32(DRIVER_FEATURE_SELECT, 1);
        self.common.write32(DRIVER_FEATURE, (features >> 32) as u32);
    }

    pub(super) fn queue_max(&mut self, index: u16) -> u16 {
        self.common.write16(QUEUE_SELECT, index);
        self.common.read16(QUEUE_SIZE)
    }

    pub(super) fn notifier(&mut self, index: u16) -> Notifier {
        self.common.write16(QUEUE_SELECT, index);
        let off = u64::from(self.common.read16(QUEUE_NOTIFY_OFF));
        Notifier::Mmio16(self.notify.offset(off * u64::from(self.notify_multiplier)))
    }

    pub(super) fn queue_setup(&mut self, q: &Virtq) -> Result<(), Error> {
        let (desc, driver, device) = q.addrs();
        self.common.write16(QUEUE_SELECT, q.index());
        if self.common.read16(QUEUE_ENABLE) != 0 {
            bail!(
                "virtio-pci {}: queue {} already enabled",
                self.function.bdf,
                q.index()
            );
        }
        self.common.write16(QUEUE_SIZE, q.size());
        self.common.write16(QUEUE_MSIX_VECTOR, NO_VECTOR);
        self.common.write64_split(QUEUE_DESC, desc);
        self.common.write64_split(QUEUE_DRIVER, driver);
        self.common.write64_split(QUEUE_DEVICE, device);
        self.common.write16(QUEUE_ENABLE, 1);
        Ok(())
    }

    pub(super) fn config(&self) -> Config {
        self.device.map_or(Config::None, Config::Mmio)
    }
}
