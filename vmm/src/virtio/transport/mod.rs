//! Virtio transports: virtio-mmio ([`mmio`]) and virtio-pci ([`pci`]), and what they share
//! ([`VirtioCommon`]): the device status, feature negotiation, each queue's configuration as
//! the driver wrote it, the queues' notify eventfds (registered as ioeventfds by the
//! transport), activation at DRIVER_OK and reset.
//!
//! The driver's queue settings are kept as plain numbers and turned into `virtio_queue::Queue`s
//! only at DRIVER_OK, where every value is checked (size a power of two no larger than the
//! maximum, alignment, rings inside guest RAM): a bad value makes the device set
//! DEVICE_NEEDS_RESET instead of running a queue the driver did not describe.

#[path = "common_persist.rs"]
pub mod common_persist;
pub mod mmio;
pub mod pci;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{features, status, Queue, QueueT, VirtioDevice, VirtioInterrupt};
use crate::kvm::irq::IrqError;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declares a queue size virtio-queue cannot have.
    #[error("the device's queue {index} has an invalid maximum size {size}")]
    QueueMaxSize {
        /// The queue.
        index: usize,
        /// Its maximum size.
        size: u16,
    },
    /// An eventfd could not be created.
    #[error("unable to create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The PCI configuration space could not be built.
    #[error("invalid PCI configuration: {0}")]
    Pci(String),
    /// An ioeventfd or irqfd could not be registered.
    #[error(transparent)]
    Wiring(#[from] IrqError),
}

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The device's maximum.
    pub max_size: u16,
    /// The size the driver chose (the maximum until it writes one).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
    /// Enabled by the driver.
    pub ready: bool,
}

impl QueueConfig {
    fn new(max_size: u16) -> QueueConfig {
        QueueConfig {
            max_size,
            size: max_size,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
        }
    }

    /// The legacy (0.9.5) layout: descriptors at page `pfn`, the available ring right after
    /// them, the used ring at the next 4 KiB boundary.
    pub fn set_legacy_pfn(&mut self, pfn: u32) {
        let size = u64::from(self.size);
        self.desc = u64::from(pfn) << 12;
        self.avail = self.desc + 16 * size;
        self.used = (self.avail + 6 + 2 * size).next_multiple_of(4096);
        self.ready = pfn != 0;
    }

    /// The page number a legacy driver wrote.
    pub fn legacy_pfn(&self) -> u32 {
        (self.desc >> 12) as u32
    }

    /// The queue a device runs, after checking every value against the spec and guest RAM.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| e.to_string())?;
        q.try_set_size(self.size)
            .map_err(|_| format!("size {} (maximum {})", self.size, self.max_size))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| format!("descriptor table {:#x} misaligned", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| format!("available ring {:#x} misaligned", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| format!("used ring {:#x} misaligned", self.used))?;
        q.set_ready(true);
        q.set_event_idx(event_idx);
        if !q.is_valid(mem) {
            return Err("rings outside guest RAM".into());
        }
        Ok(q)
    }
}

/// "No MSI-X vector" (virtio-pci).
pub const NO_VECTOR: u16 = 0xffff;

/// What every transport keeps for its device.
pub struct VirtioCommon {
    /// The device.
    pub device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    /// Device status; shared with the interrupt, through which a worker sets
    /// DEVICE_NEEDS_RESET.
    status: Arc<AtomicU8>,
    /// Which 32 feature bits the driver reads.
    pub device_features_select: u32,
    /// Which 32 feature bits the driver writes.
    pub driver_features_select: u32,
    driver_features: u64,
    /// The queue the queue registers address.
    pub queue_select: u16,
    queues: Vec<QueueConfig>,
    notifies: Vec<EventFd>,
    active: bool,
    /// The driver uses the legacy interface: 32 feature bits, no FEATURES_OK step.
    pub legacy: bool,
}

impl VirtioCommon {
    /// State for `device`, with one notify eventfd per queue.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
    ) -> Result<VirtioCommon, TransportError> {
        let mut queues = Vec::new();
        let mut notifies = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(TransportError::QueueMaxSize { index, size });
            }
            queues.push(QueueConfig::new(size));
            notifies.push(EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(VirtioCommon {
            device,
            mem,
            status: Arc::new(AtomicU8::new(0)),
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            notifies,
            active: false,
            legacy: false,
        })
    }

    /// The status byte, shared with the transport's interrupt.
    pub fn status_handle(&self) -> Arc<AtomicU8> {
        Arc::clone(&self.status)
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// The features this interface can offer: all of them on a modern interface, the low 32
    /// bits (never VERSION_1) on the legacy one.
    pub fn offered_features(&self) -> u64 {
        let f = self.device.features();
        if self.legacy {
            f & 0xffff_ffff
        } else {
            f
        }
    }

    /// Feature word `select` of everything the device offers, whatever the interface (the
    /// modern common configuration reads this).
    pub fn all_features_word(&self, select: u32) -> u32 {
        match select {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The offered feature word `select` (0: bits 0-31, 1: bits 32-63).
    pub fn device_features_word(&self, select: u32) -> u32 {
        match select {
            0 => self.offered_features() as u32,
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver's feature word `select`.
    pub fn driver_features_word(&self, select: u32) -> u32 {
        match select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// Sets the driver's feature word `select`; ignored once FEATURES_OK or DRIVER_OK is set.
    pub fn set_driver_features_word(&mut self, select: u32, value: u32) {
        if self.status() & (status::FEATURES_OK | status::DRIVER_OK) != 0 {
            return;
        }
        let v = u64::from(value);
        self.driver_features = match select {
            0 => (self.driver_features & !0xffff_ffff) | v,
            1 => (self.driver_features & 0xffff_ffff) | (v << 32),
            _ => self.driver_features,
        };
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `index`'s configuration.
    pub fn queue(&self, index: u16) -> Option<&QueueConfig> {
        self.queues.get(usize::from(index))
    }

    /// The selected queue's configuration, if the selector names one.
    pub fn selected(&self) -> Option<&QueueConfig> {
        self.queue(self.queue_select)
    }

    /// The selected queue's configuration for writing; None (the write is dropped) if the
    /// selector names no queue or the device is running.
    pub fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        if self.status() & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The notify eventfds, one per queue (the transport registers them as ioeventfds).
    pub fn notifies(&self) -> &[EventFd] {
        &self.notifies
    }

    /// A notification that did not go through an ioeventfd (an emulated instruction, a
    /// datamatch the ioeventfd did not cover): passed on to the queue's eventfd.
    pub fn notify(&self, queue: u32) {
        if let Some(fd) = usize::try_from(queue)
            .ok()
            .and_then(|q| self.notifies.get(q))
        {
            let _ = fd.write(1);
        }
    }

    /// Whether the device runs (DRIVER_OK accepted).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A driver's write to the status register. 0 resets; FEATURES_OK is kept only if the
    /// accepted features are a subset of the offered ones (and include VERSION_1 on a modern
    /// interface); DRIVER_OK activates the device, or sets DEVICE_NEEDS_RESET if it cannot.
    /// Returns true when the write reset the device (the transport clears its interrupt state).
    pub fn write_status(&mut self, value: u8, interrupt: &Arc<dyn VirtioInterrupt>) -> bool {
        if value == 0 {
            self.reset();
            return true;
        }
        let old = self.status();
        let mut new = value | (old & status::DEVICE_NEEDS_RESET);
        let newly = new & !old;
        if newly & status::FEATURES_OK != 0 && !self.features_acceptable() {
            new &= !status::FEATURES_OK;
        } else if newly & status::FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if newly & status::DRIVER_OK != 0 && !self.active {
            let negotiated = self.legacy || new & status::FEATURES_OK != 0;
            if self.legacy {
                let features = self.driver_features & self.offered_features();
                self.device.ack_features(features);
            }
            if !negotiated || self.activate(interrupt).is_err() {
                new |= status::DEVICE_NEEDS_RESET;
            }
        }
        self.status.store(new, Ordering::Release);
        false
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.driver_features & !offered == 0
            && (self.legacy || self.driver_features & features::VERSION_1 != 0)
    }

    fn activate(&mut self, interrupt: &Arc<dyn VirtioInterrupt>) -> Result<(), String> {
        // Every queue from the start of its rings.
        self.activate_at(interrupt, &[])
    }

    /// Resets the device (status 0): stops its worker, forgets the queues and features. A
    /// device that cannot be reset keeps DEVICE_NEEDS_RESET set.
    pub fn reset(&mut self) {
        let mut failed = false;
        if self.active {
            failed = !self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        for fd in &self.notifies {
            let _ = fd.read();
        }
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        let status = if failed {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status.store(status, Ordering::Release);
    }

    /// Stops the device's worker (the VM is ending).
    pub fn shutdown(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
    }
}

/// Reads a little-endian register of up to 8 bytes from `value` at byte `offset` into `data`
/// (bytes past the register read as zero).
pub fn read_le(value: u64, offset: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset + i).copied().unwrap_or(0);
    }
}

/// `data` as a little-endian integer (at most 8 bytes).
pub fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
pub(crate) mod test_util {
    //! A device and an interrupt for transport tests.

    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use super::*;
    use crate::counters::Counters;
    use crate::virtio::persist::{QueuePosition, VirtioPersist};
    use crate::virtio::ActiveQueue;
    use crate::virtio::{ActivateError, VirtioInterruptType};

    /// What the test device saw.
    #[derive(Default)]
    pub struct Seen {
        pub acked: u64,
        pub activations: Vec<Vec<(u16, u16)>>,
        pub resets: u32,
        pub config: Vec<u8>,
    }

    /// A device with two queues (sizes 16 and 8) and 8 bytes of configuration space.
    pub struct TestDevice {
        pub seen: Arc<Mutex<Seen>>,
        pub fail_activate: bool,
    }

    impl TestDevice {
        pub fn new() -> (TestDevice, Arc<Mutex<Seen>>) {
            let seen = Arc::new(Mutex::new(Seen {
                config: vec![1, 2, 3, 4, 5, 6, 7, 8],
                ..Default::default()
            }));
            let dev = TestDevice {
                seen: Arc::clone(&seen),
                fail_activate: false,
            };
            (dev, seen)
        }
    }

    impl VirtioDevice for TestDevice {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            features::VERSION_1 | features::RING_EVENT_IDX | 1
        }
        fn ack_features(&mut self, features: u64) {
            self.seen.lock().unwrap().acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let seen = self.seen.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = seen.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut seen = self.seen.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = seen.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::InvalidQueues("refused".into()));
            }
            let qs = queues.iter().map(|q| (q.index, q.queue.size())).collect();
            self.seen.lock().unwrap().activations.push(qs);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.seen.lock().unwrap().resets += 1;
            true
        }
        fn counters(&self) -> Arc<Counters> {
            Counters::new(&[])
        }
    }

    /// The test device, with snapshot support: quiescing reports queue 0 at 7/5.
    pub struct Persisting(pub TestDevice);

    impl VirtioPersist for Persisting {
        fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
            Ok(vec![QueuePosition {
                index: 0,
                next_avail: 7,
                next_used: 5,
            }])
        }
    }

    impl VirtioDevice for Persisting {
        fn device_type(&self) -> u32 {
            self.0.device_type()
        }
        fn queue_max_sizes(&self) -> &[u16] {
            self.0.queue_max_sizes()
        }
        fn features(&self) -> u64 {
            self.0.features()
        }
        fn ack_features(&mut self, f: u64) {
            self.0.ack_features(f)
        }
        fn read_config(&self, o: u64, d: &mut [u8]) {
            self.0.read_config(o, d)
        }
        fn write_config(&mut self, o: u64, d: &[u8]) {
            self.0.write_config(o, d)
        }
        fn activate(
            &mut self,
            mem: GuestMemoryMmap,
            interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            self.0.activate(mem, interrupt, queues)
        }
        fn reset(&mut self) -> bool {
            self.0.reset()
        }
        fn counters(&self) -> Arc<Counters> {
            self.0.counters()
        }
        fn persist(&mut self) -> Option<&mut dyn VirtioPersist> {
            Some(self)
        }
    }

    /// Counts triggers.
    #[derive(Default)]
    pub struct CountingInterrupt {
        pub queue: AtomicU32,
        pub config: AtomicU32,
    }

    impl VirtioInterrupt for CountingInterrupt {
        fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
            match kind {
                VirtioInterruptType::Config => self.config.fetch_add(1, Ordering::SeqCst),
                VirtioInterruptType::Queue(_) => self.queue.fetch_add(1, Ordering::SeqCst),
            };
            Ok(())
        }
        fn set_needs_reset(&self) {}
    }

    /// 1 MiB of guest RAM at 0.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    fn common() -> (
        VirtioCommon,
        Arc<std::sync::Mutex<Seen>>,
        Arc<dyn VirtioInterrupt>,
    ) {
        let (dev, seen) = TestDevice::new();
        let c = VirtioCommon::new(Box::new(dev), memory()).unwrap();
        (c, seen, Arc::new(CountingInterrupt::default()))
    }

    fn configure_queue(c: &mut VirtioCommon, index: u16, base: u64) {
        c.queue_select = index;
        let q = c.selected_mut().unwrap();
        q.desc = base;
        q.avail = base + 0x1000;
        q.used = base + 0x2000;
        q.ready = true;
    }

    fn negotiate(c: &mut VirtioCommon, irq: &Arc<dyn VirtioInterrupt>, features: u64) {
        c.write_status(status::ACKNOWLEDGE | status::DRIVER, irq);
        c.set_driver_features_word(0, features as u32);
        c.set_driver_features_word(1, (features >> 32) as u32);
        c.write_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            irq,
        );
    }

    const RUNNING: u8 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn test_virtio_common_driver_ok_activates_ready_queues() {
        let (mut c, seen, irq) = common();
        negotiate(&mut c, &irq, features::VERSION_1);
        configure_queue(&mut c, 1, 0x10000);
        c.selected_mut().unwrap().size = 4;

        c.write_status(RUNNING, &irq);

        assert_eq!(c.status(), RUNNING);
        assert_eq!(seen.lock().unwrap().activations, vec![vec![(1, 4)]]);
        assert_eq!(seen.lock().unwrap().acked, features::VERSION_1);
        assert!(c.is_active());
    }

    #[test]
    fn test_virtio_common_features_not_offered_or_without_version_1_refused() {
        let (mut c, _seen, irq) = common();

        negotiate(&mut c, &irq, features::VERSION_1 | 1 << 5);
        let extra = c.status();
        c.write_status(0, &irq);
        negotiate(&mut c, &irq, 1);
        let legacy_only = c.status();

        assert_eq!(extra & status::FEATURES_OK, 0);
        assert_eq!(legacy_only & status::FEATURES_OK, 0);
    }

    #[test]
    fn test_virtio_common_bad_queue_size_sets_needs_reset_without_activating() {
        let (mut c, seen, irq) = common();
        negotiate(&mut c, &irq, features::VERSION_1);
        configure_queue(&mut c, 0, 0x10000);
        c.selected_mut().unwrap().size = 12;

        c.write_status(RUNNING, &irq);

        assert_ne!(c.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(seen.lock().unwrap().activations.is_empty());
        assert!(!c.is_active());
    }

    #[test]
    fn test_virtio_common_rings_outside_ram_or_misaligned_set_needs_reset() {
        for (desc, avail) in [
            (0xfff0_0000u64, 0x1000u64),
            (0x10008, 0x11000),
            (0x10000, 0x11001),
        ] {
            let (mut c, seen, irq) = common();
            negotiate(&mut c, &irq, features::VERSION_1);
            configure_queue(&mut c, 0, 0x10000);
            let q = c.selected_mut().unwrap();
            q.desc = desc;
            q.avail = avail;

            c.write_status(RUNNING, &irq);

            assert_ne!(c.status() & status::DEVICE_NEEDS_RESET, 0, "{desc:#x}");
            assert!(seen.lock().unwrap().activations.is_empty());
        }
    }

    #[test]
    fn test_virtio_common_driver_ok_without_features_ok_sets_needs_reset() {
        let (mut c, seen, irq) = common();
        configure_queue(&mut c, 0, 0x10000);

        c.write_status(
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
            &irq,
        );

        assert_ne!(c.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(seen.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn test_virtio_common_legacy_driver_ok_acks_low_features() {
        let (mut c, seen, irq) = common();
        c.legacy = true;
        c.set_driver_features_word(0, 0xffff_ffff);
        configure_queue(&mut c, 0, 0x10000);

        c.write_status(
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
            &irq,
        );

        assert_eq!(c.device_features_word(1), 0);
        assert_eq!(seen.lock().unwrap().acked, features::RING_EVENT_IDX | 1);
        assert_eq!(seen.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn test_virtio_common_reset_stops_device_and_clears_state() {
        let (mut c, seen, irq) = common();
        negotiate(&mut c, &irq, features::VERSION_1);
        configure_queue(&mut c, 0, 0x10000);
        c.write_status(RUNNING, &irq);
        c.notify(0);

        let was_reset = c.write_status(0, &irq);

        assert!(was_reset);
        assert_eq!(c.status(), 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert!(!c.queue(0).unwrap().ready);
        assert_eq!(c.driver_features_word(1), 0);
        assert!(c.notifies()[0].read().is_err(), "stale notification kept");
    }

    #[test]
    fn test_virtio_common_queue_writes_after_driver_ok_dropped() {
        let (mut c, _seen, irq) = common();
        negotiate(&mut c, &irq, features::VERSION_1);
        configure_queue(&mut c, 0, 0x10000);
        c.write_status(RUNNING, &irq);

        assert!(c.selected_mut().is_none());
        c.set_driver_features_word(0, 0);

        assert_eq!(c.driver_features_word(1), 1);
    }

    #[test]
    fn test_queue_config_legacy_pfn_layout() {
        let mut q = QueueConfig::new(256);

        q.set_legacy_pfn(0x10);

        assert_eq!((q.desc, q.avail, q.used), (0x10000, 0x11000, 0x12000));
        assert!(q.ready);
        assert_eq!(q.legacy_pfn(), 0x10);
    }

    #[test]
    fn test_read_le_and_le_value_partial_widths() {
        let mut b = [0u8; 2];

        read_le(0x1122_3344, 1, &mut b);

        assert_eq!(b, [0x33, 0x22]);
        assert_eq!(le_value(&[0x44, 0x33]), 0x3344);
    }
}
