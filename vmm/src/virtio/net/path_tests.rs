//! Tests of the receive path over chains of several descriptors, mergeable buffers and
//! chains too short or outside RAM, and of the transmit path's `writev` from guest memory.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::event_handler::tests::{desc, frame, host_recv, mem, rig, send_host, MRG};
use super::event_handler::NetMode;
use super::metrics;
use super::rx::RxState;

const W: u32 = VRING_DESC_F_WRITE;
const WN: u32 = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;

fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn test_net_rx_frame_fills_chain_of_several_descriptors() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    // Header split over two descriptors, the frame over three.
    rx.add_desc_chains(
        &[
            desc(0x10000, 5, WN, 1),
            desc(0x11000, 100, WN, 2),
            desc(0x12000, 2048, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);
    let mut f = frame(1000, 12);
    f[10] = 0xee; // num_buffers as the tap wrote it: the device overwrites it
    send_host(&r.host, &f);

    let state = r.h.process_rx(0);

    assert_eq!(state, RxState::NeedBuffers, "its only chain is used");
    assert_eq!(rx.used().idx().load(), 1);
    assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 1000);
    let mut got = read(&m, 0x10000, 5);
    got.extend(read(&m, 0x11000, 100));
    got.extend(read(&m, 0x12000, 895));
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(read(&m, 0x12000 + 895, 4), [0; 4], "nothing past the frame");
    assert_eq!(r.counters.get(metrics::RX_FRAMES), 1);
    assert_eq!(r.counters.get(metrics::RX_BYTES), 988);
}

#[test]
fn test_net_rx_mergeable_frame_longer_than_first_chain_continues_in_next() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    rx.add_desc_chains(
        &[
            desc(0x10000, 300, WN, 1),
            desc(0x11000, 300, W, 0),
            desc(0x12000, 4096, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);
    let f = frame(1514 + 12, 12);
    send_host(&r.host, &f);
    send_host(&r.host, &frame(80, 12));

    let state = r.h.process_rx(0);

    // The first frame took both chains, the second waits in the tap for a buffer.
    assert_eq!(state, RxState::NeedBuffers);
    let used = |i| rx.used().ring().ref_at(i).unwrap().load();
    assert_eq!(rx.used().idx().load(), 2);
    assert_eq!((used(0).id(), used(0).len()), (0, 600));
    assert_eq!((used(1).id(), used(1).len()), (2, 926));
    let mut got = read(&m, 0x10000, 300);
    got.extend(read(&m, 0x11000, 300));
    got.extend(read(&m, 0x12000, 926));
    assert_eq!(got[..10], f[..10]);
    assert_eq!(got[10..12], 2u16.to_le_bytes());
    assert_eq!(got[12..], f[12..]);
    assert_eq!(r.h.pairs[0].pending(), 0);
    assert_eq!(r.counters.get(metrics::RX_DROPPED), 0);
}

#[test]
fn test_net_rx_mergeable_header_only_chain_then_frame_chain_num_buffers_two() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    rx.add_desc_chains(&[desc(0x10000, 12, W, 0), desc(0x11000, 2048, W, 0)], 0)
        .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);
    let f = frame(112, 12);
    send_host(&r.host, &f);

    r.h.process_rx(0);

    let used = |i| rx.used().ring().ref_at(i).unwrap().load().len();
    assert_eq!(rx.used().idx().load(), 2);
    assert_eq!((used(0), used(1)), (12, 100));
    assert_eq!(read(&m, 0x10000 + 10, 2), 2u16.to_le_bytes());
    assert_eq!(read(&m, 0x11000, 100), f[12..]);
}

#[test]
fn test_net_rx_header_only_chain_without_mergeable_drops_frame_counted_keeps_buffer() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    rx.add_desc_chains(&[desc(0x10000, 10, W, 0)], 0).unwrap();
    let mode = NetMode {
        hdr_len: 10,
        mergeable: false,
        ..MRG
    };
    let mut r = rig(&m, &rx, &tx, mode);
    send_host(&r.host, &frame(110, 10));
    send_host(&r.host, &frame(10, 10));

    r.h.process_rx(0);

    // The frame cannot fit the only kind of buffer: dropped, counted; the buffer then takes
    // the header-only frame that fits.
    assert_eq!(r.counters.get(metrics::RX_DROPPED), 1);
    assert_eq!(rx.used().idx().load(), 1);
    assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 10);
}

#[test]
fn test_net_rx_chain_outside_ram_used_empty_counted_next_chain_gets_frame() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    rx.add_desc_chains(
        &[desc(0xfff0_0000, 2048, W, 0), desc(0x11000, 2048, W, 0)],
        0,
    )
    .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);
    let f = frame(100, 12);
    send_host(&r.host, &f);
    send_host(&r.host, &f);

    r.h.process_rx(0);

    let used = |i| rx.used().ring().ref_at(i).unwrap().load();
    assert_eq!(r.counters.get(metrics::RX_BAD_CHAIN), 1);
    assert_eq!((used(0).id(), used(0).len()), (0, 0));
    assert_eq!((used(1).id(), used(1).len()), (1, 100));
    assert_eq!(read(&m, 0x11000 + 12, 88), f[12..]);
}

#[test]
fn test_net_tx_writev_header_split_over_descriptors_reaches_tap_whole() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    let f = frame(12 + 300, 12);
    m.write_slice(&f[..5], GuestAddress(0x20000)).unwrap();
    m.write_slice(&f[5..20], GuestAddress(0x21000)).unwrap();
    m.write_slice(&f[20..], GuestAddress(0x22000)).unwrap();
    tx.add_desc_chains(
        &[
            desc(0x20000, 5, VRING_DESC_F_NEXT, 1),
            desc(0x21000, 15, VRING_DESC_F_NEXT, 2),
            desc(0x22000, 292, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);

    r.h.process_tx(0);

    assert_eq!(host_recv(&r.host), Some(f));
    assert_eq!(r.counters.get(metrics::TX_FRAMES), 1);
    assert_eq!(r.counters.get(metrics::TX_BYTES), 300);
}

#[test]
fn test_net_tx_chain_partly_outside_ram_dropped_counted_nothing_written() {
    let m = mem();
    let rx = MockSplitQueue::new(&m, 16);
    let tx = MockSplitQueue::new(&m, 16);
    // A header in RAM, the frame running past the end of RAM (0x40_0000).
    tx.add_desc_chains(
        &[
            desc(0x20000, 12, VRING_DESC_F_NEXT, 1),
            desc(0x3f_ff00, 0x200, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut r = rig(&m, &rx, &tx, MRG);

    r.h.process_tx(0);

    assert_eq!(tx.used().idx().load(), 1);
    assert_eq!(host_recv(&r.host), None);
    assert_eq!(r.counters.get(metrics::TX_MALFORMED), 1);
    assert_eq!(r.counters.get(metrics::TX_FRAMES), 0);
}
