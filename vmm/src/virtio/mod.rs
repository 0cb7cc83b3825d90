//! Virtio devices: the two traits every device and every transport meet at.
//!
//! A transport (virtio-mmio, virtio-pci) owns the guest-visible registers: device status,
//! feature negotiation, queue configuration, the notify addresses (one ioeventfd per queue) and
//! the interrupts (one irqfd per MSI-X vector or IRQ line). A device implements
//! [`VirtioDevice`]: what it offers, its configuration space, and what it does with its queues
//! once the driver sets DRIVER_OK ([`VirtioDevice::activate`]), on a worker thread of its own.
//! The device raises interrupts through the transport's [`VirtioInterrupt`].
//!
//! Every device lives in a folder of the same shape: `mod.rs` (constants, config types),
//! `device.rs` (the `VirtioDevice` impl), `event_handler.rs` (its worker's event subscriber),
//! `metrics.rs` (its [`crate::counters::Counters`]). See docs/decisions/0004.

pub mod block;
pub mod console;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz_net;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz_vsock;
pub mod iov;
pub mod net;
pub mod persist;
pub mod poll;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use virtio_queue::{Queue, QueueT};

use crate::counters::Counters;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Feature bits every transport deals with (virtio 1.2, 6).
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x (modern) device; without it the legacy interface.
    pub const VERSION_1: u64 = 1 << 32;
    /// The device may access memory only through the platform's IOMMU rules.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The configuration space changed.
    Config,
    /// Queue `n` has used buffers.
    Queue(u16),
}

/// How a device interrupts the guest; implemented by each transport (MMIO: interrupt status
/// register plus one irqfd; PCI: the queue's MSI-X vector, or INTx plus the ISR).
///
/// Refined while the transports were built (docs/decisions/0004 fixed only `trigger`):
/// `set_needs_reset`, because a device's worker finds a broken queue (an avail index more
/// than a queue ahead, an unwritable used ring) and the spec makes the device set
/// DEVICE_NEEDS_RESET, a status bit the transport owns; `resample_eventfd`/`resample`,
/// because a level-triggered INTx line must be asserted again after the guest's EOI while the
/// ISR still has bits set, and the worker is the thread that waits on eventfds.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()>;

    /// Sets DEVICE_NEEDS_RESET in the device status and, if the driver is running the device,
    /// raises the configuration interrupt (virtio 1.2, 2.1.2).
    fn set_needs_reset(&self);

    /// An eventfd the device's worker waits on and answers with [`VirtioInterrupt::resample`]
    /// (the resample eventfd of a level-triggered irqfd); None for edge and MSI interrupts.
    fn resample_eventfd(&self) -> Option<&EventFd> {
        None
    }

    /// The guest acknowledged the line: assert it again if an interrupt is still pending.
    fn resample(&self) {}
}

/// One queue handed to a device at activation.
pub struct ActiveQueue {
    /// Its index on the device.
    pub index: u16,
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// The ioeventfd the guest's notifications for this queue arrive on.
    pub notify: EventFd,
}

/// Why a device could not be activated or reset.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured queues the device cannot use.
    #[error("invalid queue configuration: {0}")]
    InvalidQueues(String),
    /// The device's worker thread could not be started.
    #[error("unable to start the device worker thread {name}")]
    SpawnWorker {
        /// Thread name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend refused (a file, a socket, a tap).
    #[error("the device backend failed")]
    Backend(#[source] std::io::Error),
}

/// Copies a device's configuration space bytes at `offset` into `data`; bytes past its end
/// (or an offset no usize can hold) read as zero. The devices' `read_config` use it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
        *b = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
    }
}

/// A virtio device, independent of the transport that exposes it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue; the number of queues is the slice's length.
    fn queue_max_sizes(&self) -> &[u16];

    /// Every feature bit the device offers (including [`features::VERSION_1`] and the ring
    /// features it supports); the transport masks what its interface cannot express.
    fn features(&self) -> u64;

    /// The features the driver accepted (always a subset of [`VirtioDevice::features`]; the
    /// transport checks).
    fn ack_features(&mut self, features: u64);

    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space; writes outside writable fields are
    /// ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts serving `queues` (DRIVER_OK): typically hands them, the memory and the interrupt
    /// to the device's worker thread.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;

    /// Stops serving the queues (the driver reset the device): the worker stops touching guest
    /// memory before this returns. Returns false if the device cannot be reset, which makes the
    /// transport set DEVICE_NEEDS_RESET.
    fn reset(&mut self) -> bool;

    /// The device's counters (requests, bytes, errors), read by the VMM without locking.
    fn counters(&self) -> Arc<Counters>;

    /// The device's snapshot support, if it has any (`persist.rs`); None makes a snapshot of
    /// its VM fail naming the device.
    fn persist(&mut self) -> Option<&mut dyn persist::VirtioPersist> {
        None
    }
}
