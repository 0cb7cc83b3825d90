//! Virtio over three transports (virtio-mmio, virtio-pci modern,
//! virtio-pci legacy), the split virtqueue, and polling drivers.
//!
//! Bring-up of any device: [`find`] the transports, [`Device::init`]
//! (reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK),
//! [`Device::queue`] per queue, [`Device::driver_ok`]; then the driver
//! posts chains on its [`Virtq`]s and polls their used rings.

pub mod blk;
pub mod console;
pub mod layout;
pub mod mmio;
pub mod net;
pub mod pci_legacy;
pub mod pci_modern;
pub mod queue;
pub mod rng;
pub mod vsock;

use crate::cmdline::Cmdline;
use crate::dma::Dma;
use crate::io::{inb, inl, inw, outb, Mmio};
use crate::pci::{self, BarAllocator};
use crate::{bail, err, Error};
use core::fmt;
use mmio::MmioTransport;
use pci_legacy::PciLegacy;
use pci_modern::PciModern;
pub use queue::{Buf, Desc, Used, Virtq};

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// The guest has a driver.
pub const STATUS_DRIVER: u8 = 2;
/// The driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// The device needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 64;
/// The driver gave up.
pub const STATUS_FAILED: u8 = 128;

/// Feature bit: indirect descriptors.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: used_event / avail_event.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: virtio 1.x (modern interfaces require it).
pub const F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device needs the platform's DMA translation.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Virtio device types.
pub const ID_NET: u32 = 1;
/// Block device.
pub const ID_BLK: u32 = 2;
/// Console.
pub const ID_CONSOLE: u32 = 3;
/// Entropy source.
pub const ID_RNG: u32 = 4;
/// Socket device.
pub const ID_VSOCK: u32 = 19;

/// PCI vendor ID of virtio devices.
const PCI_VENDOR: u16 = 0x1af4;

/// A short name for a device type.
pub fn type_name(id: u32) -> &'static str {
    match id {
        ID_NET => "net",
        ID_BLK => "blk",
        ID_CONSOLE => "console",
        ID_RNG => "rng",
        ID_VSOCK => "vsock",
        _ => "other",
    }
}

/// The transports the kit drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// virtio-mmio (v2, or v1 where the device only speaks that).
    Mmio,
    /// virtio-pci through the modern capabilities.
    Pci,
    /// virtio-pci through the legacy I/O BAR of transitional devices.
    PciLegacy,
}

impl Kind {
    /// `mmio`, `pci` or `pci-legacy`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mmio" => Some(Self::Mmio),
            "pci" => Some(Self::Pci),
            "pci-legacy" => Some(Self::PciLegacy),
            _ => None,
        }
    }
}

/// Where a device's configuration space is.
#[derive(Clone, Copy, Debug)]
pub enum Config {
    /// Memory-mapped.
    Mmio(Mmio),
    /// In the legacy I/O window.
    Port(u16),
    /// The device has none.
    None,
}

impl Config {
    /// Reads the byte at `offset` (0xff without a configuration space).
    pub fn read8(&self, offset: u16) -> u8 {
        match *self {
            Config::Mmio(m) => m.read8(u64::from(offset)),
            Config::Port(p) => inb(p + offset),
            Config::None => 0xff,
        }
    }

    /// Reads the 16-bit field at `offset`.
    pub fn read16(&self, offset: u16) -> u16 {
        match *self {
            Config::Mmio(m) => m.read16(u64::from(offset)),
            Config::Port(p) => inw(p + offset),
            Config::None => 0xffff,
        }
    }

    /// Reads the 32-bit field at `offset`.
    pub fn read32(&self, offset: u16) -> u32 {
        match *self {
            Config::Mmio(m) => m.read32(u64::from(offset)),
            Config::Port(p) => inl(p + offset),
            Config::None => 0xffff_ffff,
        }
    }

    /// Reads the 64-bit field at `offset` as two 32-bit halves.
    pub fn read64(&self, offset: u16) -> u64 {
        u64::from(self.read32(offset + 4)) << 32 | u64::from(self.read32(offset))
    }

    /// Writes the byte at `offset`.
    pub fn write8(&self, offset: u16, value: u8) {
        match *self {
            Config::Mmio(m) => m.write8(u64::from(offset), value),
            Config::Port(p) => outb(p + offset, value),
            Config::None => {}
        }
    }
}

/// One device on one transport, before any negotiation.
#[derive(Debug)]
pub enum Transport {
    /// virtio-mmio.
    Mmio(MmioTransport),
    /// virtio-pci modern.
    Pci(PciModern),
    /// virtio-pci legacy.
    PciLegacy(PciLegacy),
}

/// Forwards a call to whichever transport this is.
macro_rules! each {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Transport::Mmio($t) => $e,
            Transport::Pci($t) => $e,
            Transport::PciLegacy($t) => $e,
        }
    };
}

impl Transport {
    /// The virtio device type.
    pub fn device_id(&self) -> u32 {
        each!(self, t => t.device_id())
    }

    /// Whether this is a legacy interface: 32-bit features, no
    /// FEATURES_OK, fixed queue layout.
    pub fn is_legacy(&self) -> bool {
        match self {
            Transport::Mmio(t) => t.version() == 1,
            Transport::Pci(_) => false,
            Transport::PciLegacy(_) => true,
        }
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        each!(self, t => t.status())
    }

    /// Writes the device status (0 resets the device).
    pub fn set_status(&mut self, status: u8) {
        each!(self, t => t.set_status(status))
    }

    /// The features the device offers.
    pub fn device_features(&mut self) -> u64 {
        each!(self, t => t.device_features())
    }

    /// Writes the features the driver accepts.
    pub fn set_driver_features(&mut self, features: u64) {
        each!(self, t => t.set_driver_features(features))
    }

    /// The largest size queue `index` may have (0: no such queue).
    pub fn queue_max(&mut self, index: u16) -> u16 {
        each!(self, t => t.queue_max(index))
    }

    /// How to notify queue `index`.
    pub fn notifier(&mut self, index: u16) -> queue::Notifier {
        match self {
            Transport::Mmio(t) => t.notifier(),
            Transport::Pci(t) => t.notifier(index),
            Transport::PciLegacy(t) => t.notifier(),
        }
    }

    /// Tells the device where `q` lies and enables it (sizes unchecked).
    pub fn queue_setup(&mut self, q: &Virtq) -> Result<(), Error> {
        each!(self, t => t.queue_setup(q))
    }

    /// The device configuration space.
    pub fn config(&self) -> Config {
        each!(self, t => t.config())
    }
}

impl fmt::Display for Transport {
    /// `mmio v2 0xfeb00e00`, `pci 00:02.0`, `pci-legacy 00:03.0 0xc040`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Mmio(t) => write!(f, "mmio v{} {:#x}", t.version(), t.base()),
            Transport::Pci(t) => write!(f, "pci {}", t.function().bdf),
            Transport::PciLegacy(t) => write!(f, "pci-legacy {} {:#x}", t.function().bdf, t.port()),
        }
    }
}

/// At most this many devices are found.
pub const MAX_DEVICES: usize = 16;

/// The devices found on one transport, in discovery order.
pub struct Devices {
    list: [Option<Transport>; MAX_DEVICES],
}

impl Devices {
    /// The devices not yet taken.
    pub fn iter(&self) -> impl Iterator<Item = &Transport> {
        self.list.iter().flatten()
    }

    /// Takes the first remaining device of type `id`.
    pub fn take(&mut self, id: u32) -> Option<Transport> {
        self.list
            .iter_mut()
            .find(|t| t.as_ref().is_some_and(|t| t.device_id() == id))
            .and_then(Option::take)
    }
}

/// Finds the virtio devices of transport `kind`: for virtio-mmio the
/// `virtio_mmio.device=` windows on the command line, in order; for PCI
/// the virtio functions on bus 0 (BARs assigned where firmware did not),
/// modern devices for `Pci`, transitional ones for `PciLegacy`.
pub fn find(kind: Kind, cmdline: &Cmdline) -> Result<Devices, Error> {
    let mut devs = Devices {
        list: [const { None }; MAX_DEVICES],
    };
    let mut n = 0;
    let mut push = |t: Transport| {
        let slot = devs
            .list
            .get_mut(n)
            .ok_or_else(|| err!("more than {MAX_DEVICES} devices"))?;
        *slot = Some(t);
        n += 1;
        Ok::<(), Error>(())
    };
    match kind {
        Kind::Mmio => {
            for dev in cmdline.mmio_devices() {
                let dev = dev.map_err(|v| err!("bad virtio_mmio.device={v}"))?;
                crate::phys::check_mapped(dev.base, dev.size)?;
                // SAFETY: the loader announced a virtio-mmio window here;
                // it is inside the identity map (checked).
                if let Some(t) = unsafe { MmioTransport::probe(dev.base) }? {
                    push(Transport::Mmio(t))?;
                }
            }
        }
        Kind::Pci | Kind::PciLegacy => {
            let mut bars = BarAllocator::new();
            for f in pci::scan_bus0().filter(|f| f.vendor == PCI_VENDOR) {
                let (id, transitional) = match f.device {
                    0x1000..=0x103f => (u32::from(f.subsystem_id()), true),
                    0x1040..=0x107f => (u32::from(f.device - 0x1040), false),
                    _ => continue,
                };
                if kind == Kind::PciLegacy && !transitional {
                    continue;
                }
                let assigned = bars.assign(&f)?;
                if kind == Kind::PciLegacy {
                    push(Transport::PciLegacy(PciLegacy::probe(f, id, &assigned)?))?;
                } else if let Some(t) = PciModern::probe(f, id, &assigned)? {
                    push(Transport::Pci(t))?;
                }
            }
        }
    }
    Ok(devs)
}

/// A device being driven: its transport and the negotiated features.
#[derive(Debug)]
pub struct Device {
    /// The transport.
    pub transport: Transport,
    /// What the device offered.
    pub offered: u64,
    /// What the driver accepted (a subset of `offered`).
    pub features: u64,
}

impl Device {
    /// Resets the device and negotiates: accepts `wanted & offered`, plus
    /// VERSION_1 on a modern interface (which must offer it).
    pub fn init(mut transport: Transport, wanted: u64) -> Result<Self, Error> {
        transport.set_status(0);
        transport.set_status(STATUS_ACKNOWLEDGE);
        transport.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = transport.device_features();
        let mut features = offered & wanted;
        if !transport.is_legacy() {
            if offered & F_VERSION_1 == 0 {
                bail!("{transport}: modern interface without VERSION_1");
            }
            features |= F_VERSION_1;
        }
        transport.set_driver_features(features);
        if !transport.is_legacy() {
            let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            transport.set_status(status);
            if transport.status() & STATUS_FEATURES_OK == 0 {
                transport.set_status(status | STATUS_FAILED);
                bail!("{transport}: features {features:#x} refused");
            }
        }
        Ok(Self {
            transport,
            offered,
            features,
        })
    }

    /// Whether `feature` was negotiated.
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// Sets up queue `index` with at most `max` entries (legacy
    /// interfaces: exactly the device's size).
    pub fn queue(&mut self, dma: &mut Dma, index: u16, max: u16) -> Result<Virtq, Error> {
        let device_max = self.transport.queue_max(index);
        if device_max == 0 {
            bail!("{}: no queue {index}", self.transport);
        }
        let size = if self.transport.is_legacy() {
            device_max
        } else {
            device_max.min(max)
        };
        if !size.is_power_of_two() {
            bail!(
                "{}: queue {index} size {size} is not a power of two",
                self.transport
            );
        }
        let notifier = self.transport.notifier(index);
        let q = Virtq::new(dma, index, size, notifier)?;
        self.transport.queue_setup(&q)?;
        Ok(q)
    }

    /// Sets DRIVER_OK: the device may now use the queues.
    pub fn driver_ok(&mut self) {
        let status = self.transport.status();
        self.transport.set_status(status | STATUS_DRIVER_OK);
    }

    /// The device configuration space.
    pub fn config(&self) -> Config {
        self.transport.config()
    }
}
