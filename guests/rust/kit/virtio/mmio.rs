//! The virtio-mmio transport: version 2 (virtio 1.x) and, because QEMU
//! still defaults to it (`virtio-mmio.force-legacy=true`), version 1
//! (legacy: page-frame queue address, 32-bit features).

use super::queue::{Notifier, Virtq};
use super::Config;
use crate::io::Mmio;
use crate::{bail, Error};

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const GUEST_PAGE_SIZE: u64 = 0x028; // v1
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_ALIGN: u64 = 0x03c; // v1
const QUEUE_PFN: u64 = 0x040; // v1
const QUEUE_READY: u64 = 0x044; // v2
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

/// "virt", little-endian.
const MAGIC_VALUE: u32 = 0x7472_6976;

/// One virtio-mmio device.
#[derive(Debug)]
pub struct MmioTransport {
    regs: Mmio,
    version: u32,
    device_id: u32,
}

impl MmioTransport {
    /// The device at `base`; `None` for an empty slot (device ID 0).
    ///
    /// # Safety
    /// `base` must be a virtio-mmio register window (say, announced by
    /// `virtio_mmio.device=`) in the identity map.
    pub unsafe fn probe(base: u64) -> Result<Option<Self>, Error> {
        // SAFETY: the caller's contract.
        let regs = unsafe { Mmio::new(base) };
        let magic = regs.read32(MAGIC);
        if magic != MAGIC_VALUE {
            bail!("virtio-mmio at {base:#x}: magic {magic:#x}");
        }
        let version = regs.read32(VERSION);
        if version != 1 && version != 2 {
            bail!("virtio-mmio at {base:#x}: version {version}");
        }
        let device_id = regs.read32(DEVICE_ID);
        Ok((device_id != 0).then_some(Self {
            regs,
            version,
            device_id,
        }))
    }

    /// The register window's address.
    pub fn base(&self) -> u64 {
        self.regs.base()
    }

    /// The register window (for drivers that write registers the kit does
    /// not, such as the hostile guest).
    pub fn regs(&self) -> Mmio {
        self.regs
    }

    /// 1 (legacy) or 2.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The virtio device type.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    pub(super) fn status(&self) -> u8 {
        self.regs.read32(STATUS) as u8
    }

    pub(super) fn set_status(&mut self, status: u8) {
        self.regs.write32(STATUS, u32::from(status));
        if status == 0 && self.version == 1 {
            self.regs.write32(GUEST_PAGE_SIZE, 4096);
        }
    }

    pub(super) fn device_features(&mut self) -> u64 {
        self.regs.write32(DEVICE_FEATURES_SEL, 0);
        let low = self.regs.read32(DEVICE_FEATURES);
        self.regs.write32(DEVICE_FEATURES_SEL, 1);
        u64::from(self.regs.read32(DEVICE_FEATURES)) << 32 | u64::from(low)
    }

    pub(super) fn set_driver_features(&mut self, features: u64) {
        self.regs.write32(DRIVER_FEATURES_SEL, 0);
        self.regs.write32(DRIVER_FEATURES, features as u32);
        self.regs.write32(DRIVER_FEATURES_SEL, 1);
        self.regs.write32(DRIVER_FEATURES, (features >> 32) as u32);
    }

    pub(super) fn queue_max(&mut self, index: u16) -> u16 {
        self.regs.write32(QUEUE_SEL, u32::from(index));
        self.regs.read32(QUEUE_NUM_MAX) as u16
    }

    pub(super) fn notifier(&self) -> Notifier {
        Notifier::Mmio32(self.regs.offset(QUEUE_NOTIFY))
    }

    pub(super) fn queue_setup(&mut self, q: &Virtq) -> Result<(), Error> {
        let (desc, driver, device) = q.addrs();
        self.regs.write32(QUEUE_SEL, u32::from(q.index()));
        self.regs.write32(QUEUE_NUM, u32::from(q.size()));
        if self.version == 1 {
            self.regs.write32(QUEUE_ALIGN, 4096);
            self.regs.write32(QUEUE_PFN, (desc >> 12) as u32);
            return Ok(());
        }
        if self.regs.read32(QUEUE_READY) != 0 {
            bail!(
                "virtio-mmio at {:#x}: queue {} already ready",
                self.base(),
                q.index()
            );
        }
        self.regs.write64_split(QUEUE_DESC, desc);
        self.regs.write64_split(QUEUE_DRIVER, driver);
        self.regs.write64_split(QUEUE_DEVICE, device);
        self.regs.write32(QUEUE_READY, 1);
        Ok(())
    }

    pub(super) fn config(&self) -> Config {
        Config::Mmio(self.regs.offset(CONFIG))
    }
}
