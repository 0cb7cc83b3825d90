//! virtio-mmio version 2 (virtio 1.2, 4.2) as a [`BusDevice`] on the MMIO bus.
//!
//! One 4 KiB window per device: the control registers below 0x100 (32-bit accesses only),
//! the device's configuration space from 0x100. Queue notifications arrive through one
//! ioeventfd per queue registered with KVM at QueueNotify (0x050) with the queue index as
//! datamatch, so a notify never exits to userspace; interrupts leave through one irqfd on the
//! device's IRQ (edge-triggered, as Firecracker does), with the cause in InterruptStatus.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{read_le, TransportError, VirtioCommon};
use crate::devices::BusDevice;
use crate::kvm::irq::{EventWiring, NotifyAddress, NotifyMatch};
use crate::virtio::{status, VirtioDevice, VirtioInterrupt, VirtioInterruptType};

/// "virt".
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The version this transport speaks (1 would be the legacy interface).
pub const MMIO_VERSION: u32 = 2;
/// The vendor ID devices report ("STRA", little-endian).
pub const MMIO_VENDOR_ID: u32 = 0x4152_5453;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod regs {
    /// MagicValue.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// SHMLenLow.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// SHMBaseHigh.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// The device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// InterruptStatus bit: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// The interrupt of one virtio-mmio device: InterruptStatus plus an irqfd.
pub struct MmioInterrupt {
    interrupt_status: AtomicU32,
    config_generation: AtomicU32,
    device_status: Arc<AtomicU8>,
    irqfd: EventFd,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.interrupt_status.fetch_or(bit, Ordering::AcqRel);
        self.irqfd.write(1)
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        match kind {
            VirtioInterruptType::Queue(_) => self.raise(INT_VRING),
            VirtioInterruptType::Config => {
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                self.raise(INT_CONFIG)
            }
        }
    }

    fn set_needs_reset(&self) {
        let old = self
            .device_status
            .fetch_or(status::DEVICE_NEEDS_RESET, Ordering::AcqRel);
        if old & status::DRIVER_OK != 0 {
            let _ = self.raise(INT_CONFIG);
        }
    }
}

/// A virtio device behind a virtio-mmio v2 register window.
pub struct MmioTransport {
    common: VirtioCommon,
    interrupt: Arc<MmioInterrupt>,
    dyn_interrupt: Arc<dyn VirtioInterrupt>,
}

impl MmioTransport {
    /// Puts `device` behind the window at `base`: registers one ioeventfd per queue at
    /// `base + QueueNotify` and an irqfd on `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        wiring: &dyn EventWiring,
        base: GuestAddress,
        irq: u32,
    ) -> Result<MmioTransport, TransportError> {
        let common = VirtioCommon::new(device, mem)?;
        for (index, fd) in common.notifies().iter().enumerate() {
            wiring.register_ioevent(
                fd,
                NotifyAddress::Mmio(base.0 + regs::QUEUE_NOTIFY),
                NotifyMatch::U32(index as u32),
            )?;
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        wiring.register_irqfd(&irqfd, irq)?;
        let interrupt = Arc::new(MmioInterrupt {
            interrupt_status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            device_status: common.status_handle(),
            irqfd,
        });
        Ok(MmioTransport {
            common,
            dyn_interrupt: interrupt.clone(),
            interrupt,
        })
    }

    /// Stops the device's worker (the VM is ending).
    pub fn shutdown(&mut self) {
        self.common.shutdown();
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<crate::counters::Counters> {
        self.common.device.counters()
    }

    fn read_register(&self, offset: u64) -> u32 {
        let c = &self.common;
        let queue = c.selected();
        match offset {
            regs::MAGIC => MMIO_MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => c.device.device_type(),
            regs::VENDOR_ID => MMIO_VENDOR_ID,
            regs::DEVICE_FEATURES => c.device_features_word(c.device_features_select),
            regs::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.interrupt_status.load(Ordering::Acquire),
            regs::STATUS => u32::from(c.status()),
            // No shared memory regions: length and base read as all ones.
            regs::SHM_LEN_LOW..=regs::SHM_BASE_HIGH => u32::MAX,
            regs::CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::Acquire),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let c = &mut self.common;
        let set_low = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let set_high = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            regs::DEVICE_FEATURES_SEL => c.device_features_select = v,
            regs::DRIVER_FEATURES => c.set_driver_features_word(c.driver_features_select, v),
            regs::DRIVER_FEATURES_SEL => c.driver_features_select = v,
            regs::QUEUE_SEL => c.queue_select = u16::try_from(v).unwrap_or(u16::MAX),
            regs::QUEUE_NUM => {
                if let Some(q) = c.selected_mut() {
                    // An invalid size is kept as written: activation refuses it.
                    q.size = u16::try_from(v).unwrap_or(0);
                }
            }
            regs::QUEUE_READY => {
                if let Some(q) = c.selected_mut() {
                    q.ready = v & 1 != 0;
                }
            }
            regs::QUEUE_NOTIFY => c.notify(v),
            regs::INTERRUPT_ACK => {
                self.interrupt
                    .interrupt_status
                    .fetch_and(!v, Ordering::AcqRel);
            }
            regs::STATUS => {
                let was_reset = c.write_status(v as u8, &self.dyn_interrupt);
                if was_reset {
                    self.interrupt.interrupt_status.store(0, Ordering::Release);
                }
            }
            regs::QUEUE_DESC_LOW..=regs::QUEUE_DEVICE_HIGH => {
                if let Some(q) = c.selected_mut() {
                    match offset {
                        regs::QUEUE_DESC_LOW => q.desc = set_low(q.desc),
                        regs::QUEUE_DESC_HIGH => q.desc = set_high(q.desc),
                        regs::QUEUE_DRIVER_LOW => q.avail = set_low(q.avail),
                        regs::QUEUE_DRIVER_HIGH => q.avail = set_high(q.avail),
                        regs::QUEUE_DEVICE_LOW => q.used = set_low(q.used),
                        regs::QUEUE_DEVICE_HIGH => q.used = set_high(q.used),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.common.device.read_config(offset - regs::CONFIG, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            read_le(u64::from(self.read_register(offset)), 0, data);
        } else {
            // The control registers take aligned 32-bit accesses only.
            data.fill(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.common.device.write_config(offset - regs::CONFIG, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_register(offset, v);
        }
    }
}

#[path = "mmio_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::kvm::irq::mock::{RecordingWiring, WiringCall};
    use crate::virtio::features;

    const BASE: u64 = 0xd000_0000;

    fn transport() -> (MmioTransport, Arc<std::sync::Mutex<Seen>>, RecordingWiring) {
        let (dev, seen) = TestDevice::new();
        let wiring = RecordingWiring::default();
        let t =
            MmioTransport::new(Box::new(dev), memory(), &wiring, GuestAddress(BASE), 5).unwrap();
        (t, seen, wiring)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(BASE, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(BASE, offset, &v.to_le_bytes());
    }

    /// The Linux driver's sequence up to DRIVER_OK with queue 0 at 0x10000.
    fn bring_up(t: &mut MmioTransport, size: u32) {
        wr(t, regs::STATUS, 0);
        wr(t, regs::STATUS, 3);
        wr(t, regs::DRIVER_FEATURES_SEL, 1);
        wr(t, regs::DRIVER_FEATURES, 1);
        wr(t, regs::DRIVER_FEATURES_SEL, 0);
        wr(t, regs::DRIVER_FEATURES, 0);
        wr(t, regs::STATUS, 0xb);
        wr(t, regs::QUEUE_SEL, 0);
        wr(t, regs::QUEUE_NUM, size);
        wr(t, regs::QUEUE_DESC_LOW, 0x10000);
        wr(t, regs::QUEUE_DESC_HIGH, 0);
        wr(t, regs::QUEUE_DRIVER_LOW, 0x11000);
        wr(t, regs::QUEUE_DEVICE_LOW, 0x12000);
        wr(t, regs::QUEUE_READY, 1);
        wr(t, regs::STATUS, 0xf);
    }

    #[test]
    fn test_mmio_identification_registers() {
        let (mut t, _seen, _w) = transport();

        assert_eq!(rd(&mut t, regs::MAGIC), MMIO_MAGIC);
        assert_eq!(rd(&mut t, regs::VERSION), 2);
        assert_eq!(rd(&mut t, regs::DEVICE_ID), 4);
        assert_eq!(rd(&mut t, regs::VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(rd(&mut t, regs::SHM_LEN_LOW), u32::MAX);
    }

    #[test]
    fn test_mmio_new_registers_notify_ioeventfds_and_irqfd() {
        let (_t, _seen, wiring) = transport();

        let calls = wiring.calls();

        assert_eq!(
            wiring.live_ioevents(),
            vec![
                (NotifyAddress::Mmio(BASE + 0x50), NotifyMatch::U32(0)),
                (NotifyAddress::Mmio(BASE + 0x50), NotifyMatch::U32(1)),
            ]
        );
        assert!(matches!(calls.last(), Some(WiringCall::Irqfd(_, 5, None))));
    }

    #[test]
    fn test_mmio_features_selected_by_word() {
        let (mut t, _seen, _w) = transport();

        wr(&mut t, regs::DEVICE_FEATURES_SEL, 0);
        let low = rd(&mut t, regs::DEVICE_FEATURES);
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        let high = rd(&mut t, regs::DEVICE_FEATURES);
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 2);
        let none = rd(&mut t, regs::DEVICE_FEATURES);

        assert_eq!(low, (features::RING_EVENT_IDX | 1) as u32);
        assert_eq!(high, 1);
        assert_eq!(none, 0);
    }

    #[test]
    fn test_mmio_queue_registers_per_selected_queue() {
        let (mut t, _seen, _w) = transport();

        wr(&mut t, regs::QUEUE_SEL, 1);
        let max1 = rd(&mut t, regs::QUEUE_NUM_MAX);
        wr(&mut t, regs::QUEUE_SEL, 2);
        let max2 = rd(&mut t, regs::QUEUE_NUM_MAX);
        wr(&mut t, regs::QUEUE_READY, 1);
        let ready2 = rd(&mut t, regs::QUEUE_READY);

        assert_eq!((max1, max2, ready2), (8, 0, 0));
    }

    #[test]
    fn test_mmio_driver_ok_activates_with_driver_queue_config() {
        let (mut t, seen, _w) = transport();

        bring_up(&mut t, 8);

        assert_eq!(rd(&mut t, regs::STATUS), 0xf);
        assert_eq!(seen.lock().unwrap().activations, vec![vec![(0, 8)]]);
    }

    #[test]
    fn test_mmio_queue_size_not_power_of_two_sets_needs_reset() {
        let (mut t, seen, _w) = transport();

        bring_up(&mut t, 6);

        assert_eq!(rd(&mut t, regs::STATUS), 0xf | 0x40);
        assert!(seen.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn test_mmio_interrupt_status_set_by_trigger_cleared_by_ack_and_reset() {
        let (mut t, _seen, _w) = transport();
        bring_up(&mut t, 8);
        let irq = t.dyn_interrupt.clone();

        irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
        irq.trigger(VirtioInterruptType::Config).unwrap();
        let both = rd(&mut t, regs::INTERRUPT_STATUS);
        wr(&mut t, regs::INTERRUPT_ACK, INT_VRING);
        let config_only = rd(&mut t, regs::INTERRUPT_STATUS);
        let generation = rd(&mut t, regs::CONFIG_GENERATION);
        wr(&mut t, regs::STATUS, 0);

        assert_eq!((both, config_only, generation), (3, 2, 1));
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
        assert_eq!(t.interrupt.irqfd.read().unwrap(), 2);
    }

    #[test]
    fn test_mmio_worker_needs_reset_visible_in_status_with_config_interrupt() {
        let (mut t, _seen, _w) = transport();
        bring_up(&mut t, 8);

        t.dyn_interrupt.set_needs_reset();

        assert_eq!(rd(&mut t, regs::STATUS), 0x4f);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_CONFIG);
    }

    #[test]
    fn test_mmio_notify_write_reaches_queue_eventfd() {
        let (mut t, _seen, _w) = transport();

        wr(&mut t, regs::QUEUE_NOTIFY, 1);
        wr(&mut t, regs::QUEUE_NOTIFY, 7);

        assert_eq!(t.common.notifies()[1].read().unwrap(), 1);
        assert!(t.common.notifies()[0].read().is_err());
    }

    #[test]
    fn test_mmio_config_space_any_width_and_registers_32bit_only() {
        let (mut t, seen, _w) = transport();
        let mut two = [0u8; 2];
        let mut byte = [0u8; 1];

        t.read(BASE, 0x102, &mut two);
        t.write(BASE, 0x107, &[0xaa]);
        t.read(BASE, regs::MAGIC, &mut byte);
        t.write(BASE, regs::STATUS, &[1]);

        assert_eq!(two, [3, 4]);
        assert_eq!(seen.lock().unwrap().config[7], 0xaa);
        assert_eq!(byte, [0]);
        assert_eq!(rd(&mut t, regs::STATUS), 0);
    }

    #[test]
    fn test_mmio_queue_sel_out_of_range_ignores_queue_writes() {
        let (mut t, _seen, _w) = transport();

        wr(&mut t, regs::QUEUE_SEL, 0x1_0000);
        wr(&mut t, regs::QUEUE_NUM, 4);
        wr(&mut t, regs::QUEUE_SEL, 0);

        assert_eq!(t.common.queue(0).unwrap().size, 16);
    }

    #[test]
    fn test_mmio_rng_request_served_end_to_end_with_mock_queue() {
        use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::Bytes;

        let mem = memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
        let rng =
            crate::virtio::rng::Rng::new("rng-e2e", crate::virtio::rng::EntropySource::Getrandom);
        let wiring = RecordingWiring::default();
        let mut t =
            MmioTransport::new(Box::new(rng), mem.clone(), &wiring, GuestAddress(BASE), 5).unwrap();
        wr(&mut t, regs::STATUS, 3);
        wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, regs::DRIVER_FEATURES, 1);
        wr(&mut t, regs::STATUS, 0xb);
        wr(&mut t, regs::QUEUE_NUM, 16);
        wr(&mut t, regs::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
        wr(&mut t, regs::QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
        wr(&mut t, regs::QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
        wr(&mut t, regs::QUEUE_READY, 1);
        wr(&mut t, regs::STATUS, 0xf);

        let buf = RawDescriptor::from(Descriptor::new(0x8000, 32, VRING_DESC_F_WRITE as u16, 0));
        vq.add_desc_chains(&[buf], 0).unwrap();
        wr(&mut t, regs::QUEUE_NOTIFY, 0);
        let mut waited = 0;
        // The worker puts the chain in the used ring, then interrupts.
        while rd(&mut t, regs::INTERRUPT_STATUS) == 0 && waited < 5000 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            waited += 1;
        }
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let mut bytes = [0u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        let status = rd(&mut t, regs::INTERRUPT_STATUS);
        t.shutdown();

        assert_eq!((used.id(), used.len()), (0, 32));
        assert!(bytes.iter().any(|&b| b != bytes[0]));
        assert_eq!(status, INT_VRING);
        assert_eq!(t.interrupt.irqfd.read().unwrap(), 1);
    }
}
