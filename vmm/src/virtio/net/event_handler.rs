//! The virtio-net worker's event subscriber: every queue pair's notify eventfds and tap
//! queue, and the control queue.
//!
//! Receive is `rx.rs`. Transmit: each chain's readable bytes (header and frame) are written
//! to the pair's tap queue as one frame, with one `writev` straight from guest memory when
//! the chain is longer than [`TX_COPYBREAK`]; the header goes from a copy the worker checked
//! (the guest cannot change it between the check and the write), the lengths from the
//! descriptors as read once; short chains, and chains whose buffers are not all guest RAM or
//! need too many iovecs, are gathered into a buffer and written with `write`. Chains too short for a header, frames
//! longer than the MTU allows (without GSO) or 64 KiB, and frames the tap refuses are dropped
//! and counted. Control: `ctrl.rs` parses each command; VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
//! attaches the first N tap queues and detaches the others (TUNSETQUEUE) before its answer
//! is used, so the kernel steers frames only to pairs the driver uses.
//!
//! One worker serves all the pairs (docs/decisions/0017). Events carry a tag: the pair times
//! four plus what it is (receive notify, transmit notify, tap, control).

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::ctrl;
use super::rx::{RxScratch, RxState};
use super::tap::Tap;
use super::{metrics, L2_OVERHEAD, MAX_FRAME};
use crate::counters::Counters;
use crate::virtio::iov::{self, IoVecs};
use crate::virtio::queue::{BrokenQueue, Chain};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

/// One queue pair: its two queues (each only if the driver enabled it) and its tap queue.
pub struct NetPair {
    /// Receive queue.
    pub rx: Option<ActiveQueue>,
    /// Transmit queue.
    pub tx: Option<ActiveQueue>,
    /// The pair's queue of the tap (given back to the device on reset).
    pub tap: Tap,
    /// Receive bounce buffer: header plus frame.
    pub(super) rx_buf: Vec<u8>,
    /// Bytes of a frame waiting in `rx_buf` (0: none).
    pub(super) rx_pending: usize,
    /// Whether the tap is in the epoll set.
    tap_polled: bool,
}

impl NetPair {
    /// A pair serving `rx` and `tx` with `tap`.
    pub fn new(rx: Option<ActiveQueue>, tx: Option<ActiveQueue>, tap: Tap) -> NetPair {
        NetPair {
            rx,
            tx,
            tap,
            rx_buf: vec![0; super::HDR_LEN + MAX_FRAME],
            rx_pending: 0,
            tap_polled: false,
        }
    }
}

/// What the negotiated features decide.
#[derive(Clone, Copy, Debug)]
pub struct NetMode {
    /// Bytes of virtio-net header on every frame (10 or 12).
    pub hdr_len: usize,
    /// MRG_RXBUF: a received frame may span several chains.
    pub mergeable: bool,
    /// The MTU non-GSO frames are checked against.
    pub mtu: u16,
    /// The guest may send GSO frames (HOST_TSO4/6 negotiated).
    pub host_tso: bool,
    /// VIRTIO_NET_F_MQ: the driver may choose how many pairs it uses.
    pub mq: bool,
}

/// Event tags: `pair * 4 + kind`.
const RX_NOTIFY: u32 = 0;
const TX_NOTIFY: u32 = 1;
const TAP: u32 = 2;
const CTRL_NOTIFY: u32 = 3;

fn tag(pair: usize, kind: u32) -> u32 {
    (pair as u32) << 2 | kind
}

/// What the worker owns while the device runs.
pub struct NetHandler {
    /// The queue pairs (all of the device's taps, used by the driver or not).
    pub pairs: Vec<NetPair>,
    /// The control queue.
    pub ctrl: Option<ActiveQueue>,
    /// Pairs the driver uses (1 until it sets more with VQ_PAIRS_SET).
    pub(super) active_pairs: usize,
    pub(super) mode: NetMode,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) counters: Arc<Counters>,
    pub(super) scratch: RxScratch,
    /// Transmit gather buffer.
    tx_buf: Vec<u8>,
    /// Transmit segments and iovecs (reused).
    tx_scratch: TxScratch,
    pub(super) broken: bool,
}

impl NetHandler {
    /// A handler serving `pairs` (the first one active) and the control queue `ctrl`.
    pub fn new(
        pairs: Vec<NetPair>,
        ctrl: Option<ActiveQueue>,
        mode: NetMode,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
    ) -> NetHandler {
        NetHandler {
            pairs,
            ctrl,
            active_pairs: 1,
            mode,
            mem,
            interrupt,
            counters,
            scratch: RxScratch::default(),
            tx_buf: vec![0; super::HDR_LEN + MAX_FRAME],
            tx_scratch: TxScratch::default(),
            broken: false,
        }
    }

    pub(super) fn fail(&mut self, _e: BrokenQueue) {
        if !self.broken {
            self.broken = true;
            self.counters.inc(metrics::QUEUE_BROKEN);
            self.interrupt.set_needs_reset();
        }
    }

    /// Where each running queue is (a snapshot; the worker is stopped).
    pub fn positions(&self) -> Vec<crate::virtio::persist::QueuePosition> {
        self.pairs
            .iter()
            .flat_map(|pair| [&pair.rx, &pair.tx])
            .chain([&self.ctrl])
            .flatten()
            .map(|q| crate::virtio::persist::QueuePosition {
                index: q.index,
                next_avail: q.queue.next_avail(),
                next_used: q.queue.next_used(),
            })
            .collect()
    }

    /// The interrupt the worker raises (to start it again).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        Arc::clone(&self.interrupt)
    }

    /// Sends every pending transmit chain of pair `p` to its tap queue.
    pub fn process_tx(&mut self, p: usize) {
        let NetHandler {
            pairs,
            mode,
            mem,
            interrupt,
            counters,
            tx_buf,
            tx_scratch,
            broken,
            ..
        } = self;
        let Some(pair) = pairs.get_mut(p).filter(|_| !*broken) else {
            return;
        };
        let Some(tx) = pair.tx.as_mut() else {
            return;
        };
        let tap = &pair.tap;
        let mut sent = 0;
        let result = tx.serve(mem, interrupt.as_ref(), |chain| {
            if transmit_chain(chain, mem, tap, *mode, tx_buf, tx_scratch, counters) {
                sent += 1;
            }
            0
        });
        counters.add(metrics::tx_frames_pair(p), sent);
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Answers every pending control command.
    fn process_ctrl(&mut self, ops: &mut EventOps) {
        let Some(mut ctrl) = self.ctrl.take().filter(|_| !self.broken) else {
            return;
        };
        let mem = self.mem.clone();
        let interrupt = Arc::clone(&self.interrupt);
        let result = ctrl.serve(&mem, interrupt.as_ref(), |chain| {
            let request = ctrl::parse(chain, &mem);
            let Some(status) = request.status else {
                self.counters.inc(metrics::CTRL_MALFORMED);
                return 0;
            };
            let answer = match ctrl::decide(request.command, self.mode.mq, self.pairs.len()) {
                Ok(n) if self.set_active_pairs(n, ops) => ctrl::OK,
                _ => ctrl::ERR,
            };
            let counter = if answer == ctrl::OK {
                metrics::CTRL_OK
            } else {
                metrics::CTRL_ERR
            };
            self.counters.inc(counter);
            match mem.write_obj(answer, status) {
                Ok(()) => 1,
                Err(_) => 0,
            }
        });
        self.ctrl = Some(ctrl);
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Uses the first `n` pairs: their tap queues attached and polled, the others detached
    /// and out of the epoll set. False if a tap queue refused to attach or detach (the
    /// driver then gets ERR).
    fn set_active_pairs(&mut self, n: usize, ops: &mut EventOps) -> bool {
        let mut ok = true;
        for (i, pair) in self.pairs.iter_mut().enumerate() {
            ok &= pair.tap.set_attached(i < n).is_ok();
        }
        self.active_pairs = n;
        for p in 0..self.pairs.len() {
            if p < n {
                self.rx_then_poll(p, ops);
            } else {
                self.poll_tap(p, ops, false);
            }
        }
        ok
    }

    /// Puts pair `p`'s tap in the epoll set or takes it out, as receive needs.
    fn poll_tap(&mut self, p: usize, ops: &mut EventOps, want: bool) {
        let Some(pair) = self.pairs.get_mut(p) else {
            return;
        };
        if want == pair.tap_polled {
            return;
        }
        let ev = Events::with_data(&pair.tap, tag(p, TAP), EventSet::IN);
        let ok = if want { ops.add(ev) } else { ops.remove(ev) };
        if ok.is_ok() {
            pair.tap_polled = want;
        }
    }

    fn rx_then_poll(&mut self, p: usize, ops: &mut EventOps) {
        let state = self.process_rx(p);
        self.poll_tap(p, ops, state == RxState::Drained && !self.broken);
    }
}

/// Chains up to this many bytes (header and frame) are gathered and written with `write`,
/// longer ones go with `writev` from guest memory: on this project's measuring host a 64-byte
/// frame cost the guest -> host line ~16% with `writev` (two iovecs, the kernel's slower
/// multi-segment path) and a 1514-byte frame gained ~10% (docs/benchmarks.md, "Per-frame
/// cost and interleaved rounds").
const TX_COPYBREAK: usize = 256;

/// Reusable space of the transmit path.
#[derive(Default)]
struct TxScratch {
    segs: Vec<(vm_memory::GuestAddress, usize)>,
    iov: IoVecs,
}

/// Writes one transmit chain to the tap (or drops and counts it); true when the frame was
/// sent.
fn transmit_chain(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    tap: &Tap,
    mode: NetMode,
    buf: &mut [u8],
    scratch: &mut TxScratch,
    counters: &Counters,
) -> bool {
    let limit = mode.hdr_len + MAX_FRAME;
    let TxScratch { segs, iov } = scratch;
    segs.clear();
    let mut len = 0usize;
    for d in chain.readable() {
        let n = d.len() as usize;
        if n > limit - len {
            counters.inc(metrics::TX_OVERSIZE);
            return false;
        }
        segs.push((d.addr(), n));
        len += n;
    }
    // The header is checked and sent from this copy.
    let mut hdr = [0u8; super::HDR_LEN];
    let hdr = &mut hdr[..mode.hdr_len];
    if len < mode.hdr_len || iov::read_from(mem, segs, hdr).is_err() {
        counters.inc(metrics::TX_MALFORMED);
        return false;
    }
    let frame = len - mode.hdr_len;
    let gso = hdr[1] & 0x7f != 0;
    if (gso && !mode.host_tso) || (!gso && frame > usize::from(mode.mtu) + L2_OVERHEAD) {
        counters.inc(metrics::TX_OVERSIZE);
        return false;
    }
    iov.clear();
    // Small frames are cheaper to copy than to describe (copybreak).
    let mut direct = len > TX_COPYBREAK && iov.push_host_ro(hdr);
    let mut skip = mode.hdr_len;
    for &(addr, n) in segs.iter() {
        direct = direct && iov.push_guest(mem, addr, n, skip);
        skip = skip.saturating_sub(n);
    }
    let written = if direct {
        // SAFETY: `iov` holds `hdr` (alive until this function returns) and slices of guest
        // RAM that `push_guest` checked (mapped for the VM's lifetime, which outlives the
        // worker); it was filled just above and nothing is freed before the call returns.
        unsafe { tap.writev(iov.as_slice()) }
    } else {
        // Small, or not all RAM, or too many pieces: gather (and find out which), then put
        // the checked header copy over the bytes the guest may have changed since.
        if iov::read_from(mem, segs, &mut buf[..len]).is_err() {
            iov.clear();
            counters.inc(metrics::TX_MALFORMED);
            return false;
        }
        buf[..mode.hdr_len].copy_from_slice(hdr);
        tap.write(&buf[..len])
    };
    iov.clear();
    match written {
        Ok(_) => {
            counters.inc(metrics::TX_FRAMES);
            counters.add(metrics::TX_BYTES, frame as u64);
            true
        }
        Err(_) => {
            counters.inc(metrics::TX_ERRORS);
            false
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let p = (data >> 2) as usize;
        let Some(pair) = self.pairs.get(p) else {
            return;
        };
        match data & 3 {
            TX_NOTIFY => {
                if let Some(tx) = pair.tx.as_ref() {
                    let _ = tx.notify.read();
                }
                self.process_tx(p);
            }
            RX_NOTIFY => {
                if let Some(rx) = pair.rx.as_ref() {
                    let _ = rx.notify.read();
                }
                self.rx_then_poll(p, ops);
            }
            TAP => self.rx_then_poll(p, ops),
            _ => {
                if let Some(ctrl) = self.ctrl.as_ref() {
                    let _ = ctrl.notify.read();
                }
                self.process_ctrl(ops);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // A fresh epoll set (a handler started again after a snapshot was in another).
        for pair in &mut self.pairs {
            pair.tap_polled = false;
        }
        let mut fds = Vec::new();
        for (p, pair) in self.pairs.iter().enumerate() {
            if let Some(q) = &pair.rx {
                fds.push(Events::with_data(
                    &q.notify,
                    tag(p, RX_NOTIFY),
                    EventSet::IN,
                ));
            }
            if let Some(q) = &pair.tx {
                fds.push(Events::with_data(
                    &q.notify,
                    tag(p, TX_NOTIFY),
                    EventSet::IN,
                ));
            }
        }
        if let Some(q) = &self.ctrl {
            fds.push(Events::with_data(
                &q.notify,
                tag(0, CTRL_NOTIFY),
                EventSet::IN,
            ));
        }
        for ev in fds {
            if ops.add(ev).is_err() {
                self.broken = true;
                self.interrupt.set_needs_reset();
                return;
            }
        }
        // Frames the driver queued before DRIVER_OK, and receive buffers it already posted.
        for p in 0..self.pairs.len() {
            self.process_tx(p);
        }
        // Pair 0, or every pair a restored driver had switched on.
        for p in 0..self.active_pairs.max(1) {
            self.rx_then_poll(p, ops);
        }
        self.process_ctrl(ops);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::rx::RxState;
    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;

    pub(in super::super) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    pub(in super::super) fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    /// A SOCK_SEQPACKET pair: the handler's "tap" and the test's end (the host side).
    pub(in super::super) fn tap_pair() -> (Tap, std::fs::File) {
        Tap::socketpair().unwrap()
    }

    pub(in super::super) struct Rig {
        pub h: NetHandler,
        pub host: std::fs::File,
        pub counters: Arc<Counters>,
    }

    pub(in super::super) fn rig<'a>(
        m: &'a GuestMemoryMmap,
        rx: &MockSplitQueue<'a, GuestMemoryMmap>,
        tx: &MockSplitQueue<'a, GuestMemoryMmap>,
        mode: NetMode,
    ) -> Rig {
        let (tap, host) = tap_pair();
        let q = |vq: &MockSplitQueue<GuestMemoryMmap>, index| ActiveQueue {
            index,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let counters = Counters::new(metrics::NAMES);
        let h = NetHandler::new(
            vec![NetPair::new(Some(q(rx, 0)), Some(q(tx, 1)), tap)],
            None,
            mode,
            m.clone(),
            Arc::new(CountingInterrupt::default()),
            counters.clone(),
        );
        Rig { h, host, counters }
    }

    pub(in super::super) const MRG: NetMode = NetMode {
        hdr_len: 12,
        mergeable: true,
        mtu: 1500,
        host_tso: false,
        mq: false,
    };

    pub(in super::super) fn send_host(host: &std::fs::File, frame: &[u8]) {
        use std::io::Write;
        (&*host).write_all(frame).unwrap();
    }

    pub(in super::super) fn frame(len: usize, hdr: usize) -> Vec<u8> {
        (0..len)
            .map(|i| if i < hdr { 0 } else { (i * 7) as u8 })
            .collect()
    }

    #[test]
    fn test_net_rx_without_buffers_leaves_frame_in_tap_and_asks_to_stop_polling() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(100, 12));

        let state = r.h.process_rx(0);

        assert_eq!(state, RxState::NeedBuffers);
        assert_eq!(
            r.h.pairs[0].pending(),
            0,
            "no frame may be read without a buffer"
        );
        assert_eq!(r.counters.get(metrics::RX_FRAMES), 0);
        // Buffers arrive: the frame is delivered; with buffers left and the tap empty the
        // tap stays polled.
        rx.add_desc_chains(
            &[
                desc(0x10000, 2048, VRING_DESC_F_WRITE, 0),
                desc(0x11000, 2048, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(r.h.process_rx(0), RxState::Drained);
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 100);
    }

    #[test]
    fn test_net_rx_mergeable_frame_spans_chains_with_num_buffers() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.add_desc_chains(
            &[
                desc(0x10000, 512, VRING_DESC_F_WRITE, 0),
                desc(0x11000, 512, VRING_DESC_F_WRITE, 0),
                desc(0x12000, 512, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);
        let f = frame(1200, 12);
        send_host(&r.host, &f);

        r.h.process_rx(0);

        let used = |i| rx.used().ring().ref_at(i).unwrap().load().len();
        assert_eq!(rx.used().idx().load(), 3);
        assert_eq!((used(0), used(1), used(2)), (512, 512, 176));
        let nb: u16 = m.read_obj(GuestAddress(0x10000 + 10)).unwrap();
        assert_eq!(nb, 3);
        let mut got = vec![0u8; 176];
        m.read_slice(&mut got, GuestAddress(0x12000)).unwrap();
        assert_eq!(got, f[1024..]);
        assert_eq!(r.counters.get(metrics::RX_BYTES), 1188);
    }

    #[test]
    fn test_net_rx_mergeable_not_enough_buffers_waits_without_using_any() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.add_desc_chains(&[desc(0x10000, 512, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(1200, 12));

        let state = r.h.process_rx(0);

        assert_eq!(state, RxState::NeedBuffers);
        assert_eq!(rx.used().idx().load(), 0);
        assert_eq!(r.h.pairs[0].pending(), 1200);
        assert_eq!(r.counters.get(metrics::RX_DROPPED), 0);
    }

    /// Found by the `net_queue` fuzz target: an empty chain behind a waiting frame's first
    /// chain was used at once and then taken (and used) again with the frame.
    #[test]
    fn test_net_rx_mergeable_empty_chain_inside_waiting_frame_used_once() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        // A 512-byte buffer, then a chain with no writable byte: too little for the frame.
        rx.add_desc_chains(
            &[
                desc(0x10000, 512, VRING_DESC_F_WRITE, 0),
                desc(0x11000, 512, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(1200, 12));

        let waiting = r.h.process_rx(0);
        let used_while_waiting = rx.used().idx().load();
        rx.add_desc_chains(&[desc(0x12000, 1024, VRING_DESC_F_WRITE, 0)], 2)
            .unwrap();
        r.h.process_rx(0);

        assert_eq!(waiting, RxState::NeedBuffers);
        assert_eq!(used_while_waiting, 0);
        let used: Vec<(u32, u32)> = (0..usize::from(rx.used().idx().load()))
            .map(|i| {
                let e = rx.used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect();
        assert_eq!(used, vec![(0, 512), (2, 688), (1, 0)]);
        assert_eq!(r.counters.get(metrics::RX_BAD_CHAIN), 1);
        assert_eq!(r.counters.get(metrics::RX_FRAMES), 1);
    }

    #[test]
    fn test_net_rx_chain_too_short_for_header_returned_empty_and_counted() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.add_desc_chains(
            &[
                desc(0x10000, 4, VRING_DESC_F_WRITE, 0),
                desc(0x11000, 2048, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(100, 12));

        r.h.process_rx(0);

        let used = |i| rx.used().ring().ref_at(i).unwrap().load();
        assert_eq!(r.counters.get(metrics::RX_BAD_CHAIN), 1);
        assert_eq!((used(0).id(), used(0).len()), (0, 0));
        assert_eq!((used(1).id(), used(1).len()), (1, 100));
    }

    #[test]
    fn test_net_rx_without_mergeable_too_small_buffer_drops_frame_keeps_buffer() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.add_desc_chains(&[desc(0x10000, 256, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let mode = NetMode {
            hdr_len: 10,
            mergeable: false,
            ..MRG
        };
        let mut r = rig(&m, &rx, &tx, mode);
        send_host(&r.host, &frame(1000, 10));
        send_host(&r.host, &frame(100, 10));

        r.h.process_rx(0);

        assert_eq!(r.counters.get(metrics::RX_DROPPED), 1);
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 100);
    }

    pub(in super::super) fn host_recv(host: &std::fs::File) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut buf = vec![0u8; 70000];
        match (&*host).read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    #[test]
    fn test_net_tx_good_frame_reaches_tap_bad_ones_dropped_and_counted() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        let good = frame(12 + 60, 12);
        m.write_slice(&good[..12], GuestAddress(0x20000)).unwrap();
        m.write_slice(&good[12..], GuestAddress(0x21000)).unwrap();
        let mut gso = vec![0u8; 12 + 200];
        gso[1] = 1;
        m.write_slice(&gso, GuestAddress(0x23000)).unwrap();
        tx.add_desc_chains(
            &[
                // header and frame in two descriptors
                desc(0x20000, 12, VRING_DESC_F_NEXT, 1),
                desc(0x21000, 60, 0, 0),
                // 4 bytes: shorter than a header
                desc(0x22000, 4, 0, 0),
                // longer than the MTU allows
                desc(0x24000, 12 + 1500 + 18 + 1, 0, 0),
                // GSO without HOST_TSO
                desc(0x23000, 12 + 200, 0, 0),
                // outside RAM
                desc(0xfff0_0000, 100, 0, 0),
                // 4 GiB
                desc(0x25000, u32::MAX, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);

        r.h.process_tx(0);

        assert_eq!(tx.used().idx().load(), 6);
        assert_eq!(host_recv(&r.host), Some(good));
        assert_eq!(host_recv(&r.host), None);
        assert_eq!(r.counters.get(metrics::TX_FRAMES), 1);
        assert_eq!(r.counters.get(metrics::TX_MALFORMED), 2);
        assert_eq!(r.counters.get(metrics::TX_OVERSIZE), 3);
    }

    #[test]
    fn test_net_broken_rx_ring_sets_needs_reset_once() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.avail().idx().store(100);
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(100, 12));

        r.h.process_rx(0);
        r.h.process_rx(0);

        assert_eq!(r.counters.get(metrics::QUEUE_BROKEN), 1);
    }

    #[test]
    fn test_net_guest_without_buffers_cannot_make_worker_spin() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        let r = rig(&m, &rx, &tx, MRG);
        let host = r.host;
        use event_manager::SubscriberOps;
        let mut manager = event_manager::EventManager::<NetHandler>::new().unwrap();
        let id = manager.add_subscriber(r.h);
        send_host(&host, &frame(100, 12));
        // The first round may see the tap readable; after it the tap is out of the set.
        let _ = manager.run_with_timeout(10).unwrap();

        let mut dispatched = 0;
        for _ in 0..5 {
            dispatched += manager.run_with_timeout(10).unwrap();
        }

        assert_eq!(dispatched, 0, "the worker woke for a tap it cannot serve");
        // The guest posts a buffer and notifies: the frame arrives.
        rx.add_desc_chains(&[desc(0x10000, 2048, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let h = manager.subscriber_mut(id).unwrap();
        h.pairs[0].rx.as_ref().unwrap().notify.write(1).unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 100);
    }

    #[test]
    fn test_net_rx_with_buffers_asks_driver_not_to_notify_until_they_run_out() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let tx = MockSplitQueue::new(&m, 16);
        rx.add_desc_chains(
            &[
                desc(0x10000, 2048, VRING_DESC_F_WRITE, 0),
                desc(0x11000, 2048, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut r = rig(&m, &rx, &tx, MRG);
        send_host(&r.host, &frame(100, 12));

        let first = r.h.process_rx(0);
        let used_flags =
            |q: &MockSplitQueue<GuestMemoryMmap>| m.read_obj::<u16>(q.used_addr()).unwrap();
        let flags_while_serving = used_flags(&rx);
        send_host(&r.host, &frame(100, 12));
        send_host(&r.host, &frame(100, 12));
        let second = r.h.process_rx(0);

        // Two buffers, three frames: while the device had buffers the driver was told not to
        // notify (VRING_USED_F_NO_NOTIFY); once they ran out, asked to again.
        assert_eq!(first, RxState::Drained);
        assert_eq!(flags_while_serving, 1);
        assert_eq!(second, RxState::NeedBuffers);
        assert_eq!(used_flags(&rx), 0);
        assert_eq!(rx.used().idx().load(), 2);
    }

    /// A handler with two pairs and a control queue (MQ negotiated).
    fn mq_rig<'a>(
        m: &'a GuestMemoryMmap,
        queues: &[MockSplitQueue<'a, GuestMemoryMmap>; 5],
    ) -> (NetHandler, Vec<std::fs::File>, Arc<Counters>) {
        let q = |i: usize| ActiveQueue {
            index: i as u16,
            queue: queues[i].create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let (tap0, host0) = tap_pair();
        let (tap1, host1) = tap_pair();
        let counters = Counters::new(metrics::names(2));
        let h = NetHandler::new(
            vec![
                NetPair::new(Some(q(0)), Some(q(1)), tap0),
                NetPair::new(Some(q(2)), Some(q(3)), tap1),
            ],
            Some(q(4)),
            NetMode { mq: true, ..MRG },
            m.clone(),
            Arc::new(CountingInterrupt::default()),
            counters.clone(),
        );
        (h, vec![host0, host1], counters)
    }

    #[test]
    fn test_net_ctrl_pairs_set_enables_second_pair_others_answered_err() {
        let m = mem();
        let queues =
            [0u64, 1, 2, 3, 4].map(|i| MockSplitQueue::create(&m, GuestAddress(i * 0x1000), 16));
        // VQ_PAIRS_SET 2; RX promiscuous on (not offered); VQ_PAIRS_SET 3 (too many); a
        // command without a status byte.
        m.write_slice(&[4, 0, 2, 0], GuestAddress(0x30000)).unwrap();
        m.write_slice(&[0, 0, 1], GuestAddress(0x30100)).unwrap();
        m.write_slice(&[4, 0, 3, 0], GuestAddress(0x30200)).unwrap();
        m.write_slice(&[0xff; 3], GuestAddress(0x31000)).unwrap();
        queues[4]
            .add_desc_chains(
                &[
                    desc(0x30000, 4, VRING_DESC_F_NEXT, 1),
                    desc(0x31000, 1, VRING_DESC_F_WRITE, 0),
                    desc(0x30100, 3, VRING_DESC_F_NEXT, 3),
                    desc(0x31001, 1, VRING_DESC_F_WRITE, 0),
                    desc(0x30200, 4, VRING_DESC_F_NEXT, 5),
                    desc(0x31002, 1, VRING_DESC_F_WRITE, 0),
                    desc(0x30000, 4, 0, 0),
                ],
                0,
            )
            .unwrap();
        queues[2]
            .add_desc_chains(&[desc(0x10000, 2048, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let (h, hosts, counters) = mq_rig(&m, &queues);
        send_host(&hosts[1], &frame(100, 12));
        use event_manager::SubscriberOps;
        let mut manager = event_manager::EventManager::<NetHandler>::new().unwrap();
        let id = manager.add_subscriber(h);

        // init answers the commands already queued and serves pair 1 once it is enabled.
        let active = manager.subscriber_mut(id).unwrap().active_pairs;
        let status: [u8; 3] = m.read_obj(GuestAddress(0x31000)).unwrap();

        assert_eq!(active, 2);
        assert_eq!(status, [ctrl::OK, ctrl::ERR, ctrl::ERR]);
        assert_eq!(queues[4].used().idx().load(), 4);
        assert_eq!(queues[4].used().ring().ref_at(0).unwrap().load().len(), 1);
        assert_eq!(queues[4].used().ring().ref_at(3).unwrap().load().len(), 0);
        assert_eq!(counters.get(metrics::CTRL_OK), 1);
        assert_eq!(counters.get(metrics::CTRL_ERR), 2);
        assert_eq!(counters.get(metrics::CTRL_MALFORMED), 1);
        assert_eq!(queues[2].used().idx().load(), 1);
        assert_eq!(counters.get(metrics::rx_frames_pair(1)), 1);
        assert_eq!(counters.get(metrics::rx_frames_pair(0)), 0);
    }

    #[test]
    fn test_net_second_pair_unused_until_pairs_set() {
        let m = mem();
        let queues =
            [0u64, 1, 2, 3, 4].map(|i| MockSplitQueue::create(&m, GuestAddress(i * 0x1000), 16));
        queues[2]
            .add_desc_chains(&[desc(0x10000, 2048, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let (mut h, hosts, counters) = mq_rig(&m, &queues);
        send_host(&hosts[1], &frame(100, 12));

        let state = h.process_rx(1);

        assert_eq!(state, RxState::NeedBuffers);
        assert_eq!(queues[2].used().idx().load(), 0);
        assert_eq!(counters.get(metrics::rx_frames_pair(1)), 0);
    }
}
