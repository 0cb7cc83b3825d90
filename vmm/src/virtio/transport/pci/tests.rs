//! Register-level tests of virtio-pci: the configuration space the guest walks, the modern
//! and legacy bring-up sequences, notifications, interrupts and BAR moves.

use std::sync::Arc;

use super::common::field;
use super::*;
use crate::kvm::irq::mock::{RecordingWiring, WiringCall};
use crate::virtio::transport::test_util::*;
use crate::virtio::{features, status, VirtioInterruptType};

const BAR: u64 = 0xc000_0000;
const PORT: u64 = 0xc000;

fn device(
    legacy: bool,
) -> (
    VirtioPciDevice,
    Arc<std::sync::Mutex<Seen>>,
    Arc<RecordingWiring>,
) {
    let (dev, seen) = TestDevice::new();
    let wiring = Arc::new(RecordingWiring::default());
    let place = PciPlacement {
        modern_bar: BAR,
        legacy_bar: legacy.then_some(PORT),
        msi_gsis: vec![24, 25, 26],
        intx_gsi: 10,
    };
    let d = VirtioPciDevice::new(Box::new(dev), memory(), wiring.clone(), &place).unwrap();
    (d, seen, wiring)
}

fn cfg8(d: &mut VirtioPciDevice, offset: usize) -> u8 {
    (d.read_config_register(offset / 4) >> ((offset % 4) * 8)) as u8
}

fn cfg32(d: &mut VirtioPciDevice, offset: usize) -> u32 {
    d.read_config_register(offset / 4)
}

/// The virtio capabilities as (cfg_type, bar, offset, length), walking the list from 0x34.
fn virtio_caps(d: &mut VirtioPciDevice) -> Vec<(u8, u8, u32, u32)> {
    let mut caps = Vec::new();
    let mut at = cfg8(d, 0x34) as usize;
    while at != 0 {
        if cfg8(d, at) == 0x09 {
            caps.push((
                cfg8(d, at + 3),
                cfg8(d, at + 4),
                cfg32(d, at + 8),
                cfg32(d, at + 12),
            ));
        }
        at = cfg8(d, at + 1) as usize;
    }
    caps
}

fn wr(d: &mut VirtioPciDevice, offset: u64, v: u64, len: usize) {
    d.write_bar(MODERN_BAR, offset, &v.to_le_bytes()[..len]);
}

fn rd(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read_bar(MODERN_BAR, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// Linux's modern sequence: features, queue 0 (size 8) with vector 1, DRIVER_OK.
fn bring_up_modern(d: &mut VirtioPciDevice) {
    wr(d, field::DEVICE_STATUS, 0, 1);
    wr(d, field::DEVICE_STATUS, 3, 1);
    wr(d, field::DRIVER_FEATURE_SELECT, 1, 4);
    wr(d, field::DRIVER_FEATURE, 1, 4);
    wr(d, field::DEVICE_STATUS, 0xb, 1);
    wr(d, field::QUEUE_SELECT, 0, 2);
    wr(d, field::QUEUE_SIZE, 8, 2);
    wr(d, field::QUEUE_MSIX_VECTOR, 1, 2);
    wr(d, field::QUEUE_DESC, 0x10000, 4);
    wr(d, field::QUEUE_DESC + 4, 0, 4);
    wr(d, field::QUEUE_DRIVER, 0x11000, 8);
    wr(d, field::QUEUE_DEVICE, 0x12000, 4);
    wr(d, field::QUEUE_ENABLE, 1, 2);
    wr(d, field::DEVICE_STATUS, 0xf, 1);
}

#[test]
fn test_virtio_pci_identity_transitional_and_modern_only() {
    let (mut t, _s, _w) = device(true);
    let (mut m, _s2, _w2) = device(false);

    assert_eq!(cfg32(&mut t, 0), 0x1005_1af4);
    assert_eq!(cfg8(&mut t, 8), 0);
    assert_eq!(cfg32(&mut t, 0x2c), 0x0004_1af4);
    assert_eq!(cfg32(&mut m, 0), 0x1044_1af4);
    assert_eq!(cfg8(&mut m, 8), 1);
    assert_eq!(cfg32(&mut m, 0x3c) & 0xffff, 0x010a);
    assert_eq!(cfg32(&mut t, 0x10), PORT as u32 | 1);
    assert_eq!(cfg32(&mut m, 0x10), 0);
    assert_eq!(cfg32(&mut m, 0x20), BAR as u32 | 4);
}

#[test]
fn test_virtio_pci_capabilities_point_into_modern_bar() {
    let (mut d, _s, _w) = device(false);

    let caps = virtio_caps(&mut d);

    assert_eq!(
        caps,
        vec![
            (1, 4, 0x0000, 0x38),
            (2, 4, 0x3000, 8),
            (3, 4, 0x1000, 1),
            (4, 4, 0x2000, 0x1000),
            (5, 4, 0, 0),
        ]
    );
}

#[test]
fn test_virtio_pci_msix_capability_table_size_and_enable() {
    let (mut d, _s, _w) = device(false);
    let at = d.msix_cap;

    let header = cfg32(&mut d, at);
    d.write_config_register(at / 4, 2, &MSIX_ENABLE.to_le_bytes());
    let table = cfg32(&mut d, at + 4);

    assert_eq!(header & 0xff, 0x11);
    assert_eq!((header >> 16) & 0x7ff, 2);
    assert_eq!(table, 0x4004);
    assert!(d.interrupt.msix().enabled());
}

#[test]
fn test_virtio_pci_modern_bring_up_activates_and_vectors_stick() {
    let (mut d, seen, _w) = device(false);

    bring_up_modern(&mut d);

    assert_eq!(rd(&mut d, field::DEVICE_STATUS, 1), 0xf);
    assert_eq!(seen.lock().unwrap().activations, vec![vec![(0, 8)]]);
    assert_eq!(rd(&mut d, field::QUEUE_MSIX_VECTOR, 2), 1);
    assert_eq!(rd(&mut d, field::QUEUE_DRIVER, 8), 0x11000);
    assert_eq!(rd(&mut d, field::NUM_QUEUES, 2), 2);
}

#[test]
fn test_virtio_pci_common_config_reads_features_and_notify_offsets() {
    let (mut d, _s, _w) = device(false);

    wr(&mut d, field::DEVICE_FEATURE_SELECT, 1, 4);
    let high = rd(&mut d, field::DEVICE_FEATURE, 4);
    wr(&mut d, field::QUEUE_SELECT, 1, 2);
    let notify_off = rd(&mut d, field::QUEUE_NOTIFY_OFF, 2);
    let size = rd(&mut d, field::QUEUE_SIZE, 2);
    wr(&mut d, field::QUEUE_SELECT, 5, 2);
    let absent = rd(&mut d, field::QUEUE_SIZE, 2);
    let absent_vector = rd(&mut d, field::QUEUE_MSIX_VECTOR, 2);

    assert_eq!(high, 1);
    assert_eq!((notify_off, size), (1, 8));
    assert_eq!((absent, absent_vector), (0, 0xffff));
}

#[test]
fn test_virtio_pci_vector_past_table_reads_back_no_vector() {
    let (mut d, _s, _w) = device(false);

    wr(&mut d, field::CONFIG_MSIX_VECTOR, 7, 2);

    assert_eq!(rd(&mut d, field::CONFIG_MSIX_VECTOR, 2), 0xffff);
}

#[test]
fn test_virtio_pci_notifies_registered_per_queue_in_both_bars() {
    let (_d, _s, wiring) = device(true);

    let live = wiring.live_ioevents();

    assert_eq!(
        live,
        vec![
            (NotifyAddress::Mmio(BAR + 0x3000), NotifyMatch::Any),
            (NotifyAddress::Mmio(BAR + 0x3004), NotifyMatch::Any),
            (NotifyAddress::Pio(PORT + 0x10), NotifyMatch::U16(0)),
            (NotifyAddress::Pio(PORT + 0x10), NotifyMatch::U16(1)),
        ]
    );
    assert!(wiring
        .calls()
        .iter()
        .any(|c| matches!(c, WiringCall::Irqfd(_, 10, Some(_)))));
}

#[test]
fn test_virtio_pci_bar_moved_moves_notify_ioeventfds() {
    let (mut d, _s, wiring) = device(true);

    d.bar_moved(MODERN_BAR, BAR, 0xc100_0000);
    d.bar_moved(LEGACY_BAR, PORT, 0xd000);

    let live = wiring.live_ioevents();
    assert_eq!(live.len(), 4);
    assert!(live.contains(&(NotifyAddress::Mmio(0xc100_3004), NotifyMatch::Any)));
    assert!(live.contains(&(NotifyAddress::Pio(0xd010), NotifyMatch::U16(1))));
    assert_eq!(d.bars()[0].base, 0xc100_0000);
}

#[test]
fn test_virtio_pci_notify_region_write_reaches_queue_eventfd() {
    let (mut d, _s, _w) = device(false);

    wr(&mut d, NOTIFY_OFFSET + 4, 1, 2);

    assert_eq!(d.common.notifies()[1].read().unwrap(), 1);
}

#[test]
fn test_virtio_pci_isr_read_clears_and_intx_used_without_msix() {
    let (mut d, _s, _w) = device(false);
    bring_up_modern(&mut d);

    d.dyn_interrupt
        .trigger(VirtioInterruptType::Queue(0))
        .unwrap();
    let isr = rd(&mut d, ISR_OFFSET, 1);
    let again = rd(&mut d, ISR_OFFSET, 1);

    assert_eq!((isr, again), (1, 0));
}

#[test]
fn test_virtio_pci_reset_clears_vectors_and_isr() {
    let (mut d, seen, _w) = device(false);
    bring_up_modern(&mut d);
    d.dyn_interrupt
        .trigger(VirtioInterruptType::Config)
        .unwrap();

    wr(&mut d, field::DEVICE_STATUS, 0, 1);

    assert_eq!(seen.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut d, field::QUEUE_MSIX_VECTOR, 2), 0xffff);
    assert_eq!(rd(&mut d, ISR_OFFSET, 1), 0);
    assert_eq!(rd(&mut d, field::DEVICE_STATUS, 1), 0);
}

#[test]
fn test_virtio_pci_legacy_bring_up_with_pfn() {
    let (mut d, seen, _w) = device(true);
    let lw = |d: &mut VirtioPciDevice, off: u64, v: u32, len: usize| {
        d.write_bar(LEGACY_BAR, off, &v.to_le_bytes()[..len]);
    };
    let mut b = [0u8; 4];
    d.read_bar(LEGACY_BAR, 0, &mut b);
    let host_features = u32::from_le_bytes(b);

    lw(&mut d, 0x12, 0, 1);
    lw(&mut d, 0x12, 3, 1);
    lw(&mut d, 0x04, host_features, 4);
    lw(&mut d, 0x0e, 1, 2);
    let mut size = [0u8; 2];
    d.read_bar(LEGACY_BAR, 0x0c, &mut size);
    lw(&mut d, 0x08, 0x10, 4);
    lw(&mut d, 0x12, 7, 1);

    assert_eq!(
        u64::from(host_features),
        (features::RING_EVENT_IDX | 1) & 0xffff_ffff
    );
    assert_eq!(u16::from_le_bytes(size), 8);
    assert_eq!(seen.lock().unwrap().activations, vec![vec![(1, 8)]]);
    assert_eq!(seen.lock().unwrap().acked, features::RING_EVENT_IDX | 1);
    let mut st = [0u8; 1];
    d.read_bar(LEGACY_BAR, 0x12, &mut st);
    assert_eq!(st[0], 7);
}

#[test]
fn test_virtio_pci_legacy_config_moves_after_msix_enable() {
    let (mut d, _s, _w) = device(true);
    let mut plain = [0u8; 1];
    let mut with_msix = [0u8; 1];

    d.read_bar(LEGACY_BAR, 0x14, &mut plain);
    d.write_config_register(d.msix_cap / 4, 2, &MSIX_ENABLE.to_le_bytes());
    d.read_bar(LEGACY_BAR, 0x18, &mut with_msix);

    assert_eq!((plain[0], with_msix[0]), (1, 1));
}

#[test]
fn test_virtio_pci_cfg_capability_window_reads_common_config() {
    let (mut d, _s, _w) = device(false);
    let cap = d.pci_cfg_cap;
    d.write_config_register((cap + 4) / 4, 0, &[4]);
    d.write_config_register((cap + 8) / 4, 0, &(field::NUM_QUEUES as u32).to_le_bytes());
    d.write_config_register((cap + 12) / 4, 0, &2u32.to_le_bytes());

    let v = d.read_config_register((cap + 16) / 4);

    assert_eq!(v, 2);
}

#[test]
fn test_virtio_pci_driver_ok_without_version_1_on_modern_sets_needs_reset() {
    let (mut d, seen, _w) = device(false);

    wr(&mut d, field::DEVICE_STATUS, 3, 1);
    wr(&mut d, field::DEVICE_STATUS, 0xb, 1);
    let features_ok = rd(&mut d, field::DEVICE_STATUS, 1) & u64::from(status::FEATURES_OK);
    wr(&mut d, field::DEVICE_STATUS, 0xf, 1);

    assert_eq!(features_ok, 0);
    assert_ne!(rd(&mut d, field::DEVICE_STATUS, 1) & 0x40, 0);
    assert!(seen.lock().unwrap().activations.is_empty());
}

#[test]
fn test_virtio_pci_rng_request_raises_queue_vector_end_to_end_with_mock_queue() {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    let mem = memory();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
    let rng =
        crate::virtio::rng::Rng::new("rng-pci-e2e", crate::virtio::rng::EntropySource::Getrandom);
    let place = PciPlacement {
        modern_bar: BAR,
        legacy_bar: None,
        msi_gsis: vec![24, 25],
        intx_gsi: 10,
    };
    let wiring = Arc::new(RecordingWiring::default());
    let mut d = VirtioPciDevice::new(Box::new(rng), mem.clone(), wiring, &place).unwrap();
    d.write_config_register(d.msix_cap / 4, 2, &MSIX_ENABLE.to_le_bytes());
    wr(&mut d, field::DEVICE_STATUS, 3, 1);
    wr(&mut d, field::DRIVER_FEATURE_SELECT, 1, 4);
    wr(&mut d, field::DRIVER_FEATURE, 1, 4);
    wr(&mut d, field::DEVICE_STATUS, 0xb, 1);
    wr(&mut d, field::QUEUE_SIZE, 16, 2);
    wr(&mut d, field::QUEUE_MSIX_VECTOR, 1, 2);
    wr(&mut d, field::QUEUE_DESC, vq.desc_table_addr().0, 8);
    wr(&mut d, field::QUEUE_DRIVER, vq.avail_addr().0, 8);
    wr(&mut d, field::QUEUE_DEVICE, vq.used_addr().0, 8);
    wr(&mut d, field::QUEUE_ENABLE, 1, 2);
    wr(&mut d, field::DEVICE_STATUS, 0xf, 1);

    let buf = RawDescriptor::from(Descriptor::new(0x8000, 16, VRING_DESC_F_WRITE as u16, 0));
    vq.add_desc_chains(&[buf], 0).unwrap();
    wr(&mut d, NOTIFY_OFFSET, 0, 2);
    // Vector 1 is still masked (as after reset): the interrupt waits in the pending bits.
    let mut waited = 0;
    while rd(&mut d, MSIX_PBA_OFFSET, 1) == 0 && waited < 5000 {
        std::thread::sleep(std::time::Duration::from_millis(1));
        waited += 1;
    }
    let pba = rd(&mut d, MSIX_PBA_OFFSET, 1);
    let isr = rd(&mut d, ISR_OFFSET, 1);
    d.shutdown();

    assert_eq!(pba, 0b10);
    assert_eq!(isr, 0, "MSI-X on: no ISR, no INTx");
    assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 16);
}
