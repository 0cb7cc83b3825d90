//! The virtio-net worker's event subscriber: the two queues' notify eventfds and the tap.
//!
//! Receive: a frame is read from the tap only when the guest has posted a receive buffer.
//! The frame (header included) lands in one bounce buffer; then the chains it needs are taken
//! (one without MRG_RXBUF, as many as it fills with it) and only when they suffice is it
//! copied into them and the chains used; otherwise the chains go back to the available ring
//! and the frame waits. While the guest posts no buffers the tap leaves the epoll set, so a
//! guest that never posts cannot make the worker spin; the receive queue's notification
//! brings it back. Nothing the guest has room for is dropped.
//!
//! Transmit: each chain's readable bytes (header and frame) are gathered and written to the
//! tap as one frame. Chains too short for a header, frames longer than the MTU allows
//! (without GSO) or 64 KiB, and frames the tap refuses are dropped and counted.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::tap::Tap;
use super::{metrics, BUDGET, L2_OVERHEAD, MAX_FRAME};
use crate::counters::Counters;
use crate::virtio::queue::{BrokenQueue, Chain};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

/// The device's queues (each only if the driver enabled it).
pub struct NetQueues {
    /// Receive queue.
    pub rx: Option<ActiveQueue>,
    /// Transmit queue.
    pub tx: Option<ActiveQueue>,
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
}

/// How far receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    /// The tap has no more frames (or the budget ran out): keep polling it.
    Drained,
    /// A frame waits for receive buffers: stop polling the tap.
    NeedBuffers,
}

/// What the worker owns while the device runs.
pub struct NetHandler {
    /// The queues.
    pub queues: NetQueues,
    /// The tap (given back to the device on reset).
    pub tap: Tap,
    mode: NetMode,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<Counters>,
    /// Receive bounce buffer: header plus frame.
    rx_buf: Vec<u8>,
    /// Bytes of a frame waiting in `rx_buf` (0: none).
    rx_pending: usize,
    /// Whether the tap is in the epoll set.
    tap_polled: bool,
    /// Transmit gather buffer.
    tx_buf: Vec<u8>,
    /// Scratch: the writable descriptors of the chains a frame takes.
    segs: Vec<(GuestAddress, usize)>,
    heads: Vec<(u16, u32)>,
    broken: bool,
}

impl NetHandler {
    /// A handler serving `queues` with `tap`.
    pub fn new(
        queues: NetQueues,
        tap: Tap,
        mode: NetMode,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
    ) -> NetHandler {
        NetHandler {
            queues,
            tap,
            mode,
            mem,
            interrupt,
            counters,
            rx_buf: vec![0; super::HDR_LEN + MAX_FRAME],
            rx_pending: 0,
            tap_polled: false,
            tx_buf: vec![0; super::HDR_LEN + MAX_FRAME],
            segs: Vec::new(),
            heads: Vec::new(),
            broken: false,
        }
    }

    fn fail(&mut self, _e: BrokenQueue) {
        if !self.broken {
            self.broken = true;
            self.counters.inc(metrics::QUEUE_BROKEN);
            self.interrupt.set_needs_reset();
        }
    }

    /// Where each running queue is (a snapshot; the worker is stopped).
    pub fn positions(&self) -> Vec<crate::virtio::persist::QueuePosition> {
        [&self.queues.rx, &self.queues.tx]
            .into_iter()
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

    /// Sends every pending transmit chain to the tap.
    pub fn process_tx(&mut self) {
        let NetHandler {
            queues,
            tap,
            mode,
            mem,
            interrupt,
            counters,
            tx_buf,
            broken,
            ..
        } = self;
        let Some(tx) = queues.tx.as_mut().filter(|_| !*broken) else {
            return;
        };
        let result = tx.serve(mem, interrupt.as_ref(), |chain| {
            transmit_chain(chain, mem, tap, *mode, tx_buf, counters);
            0
        });
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Moves frames from the tap into receive buffers, at most [`BUDGET`] of them.
    fn process_rx(&mut self) -> RxState {
        if self.broken || self.queues.rx.is_none() {
            return RxState::NeedBuffers;
        }
        let mut delivered = 0;
        let mut state = RxState::Drained;
        for _ in 0..BUDGET {
            if self.rx_pending == 0 {
                match self.rx_has_buffers() {
                    Ok(true) => {}
                    Ok(false) => {
                        state = RxState::NeedBuffers;
                        break;
                    }
                    Err(e) => {
                        self.fail(e);
                        return RxState::NeedBuffers;
                    }
                }
                match self.tap.read(&mut self.rx_buf) {
                    Ok(n) if n >= self.mode.hdr_len => self.rx_pending = n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            match self.deliver_pending() {
                Ok(true) => delivered += 1,
                Ok(false) => {
                    state = RxState::NeedBuffers;
                    break;
                }
                Err(e) => {
                    self.fail(e);
                    return RxState::NeedBuffers;
                }
            }
        }
        if delivered > 0 {
            if let Some(rx) = self.queues.rx.as_mut() {
                rx.signal_used(&self.mem, self.interrupt.as_ref());
            }
        }
        if state == RxState::NeedBuffers {
            self.counters.inc(metrics::RX_NO_BUFFERS);
        }
        state
    }

    /// Whether the receive queue has a chain; when it has none, re-enables notifications and
    /// looks once more (the driver may have posted meanwhile).
    fn rx_has_buffers(&mut self) -> Result<bool, BrokenQueue> {
        let Some(rx) = self.queues.rx.as_mut() else {
            return Ok(false);
        };
        let avail = rx
            .queue
            .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| BrokenQueue {
                index: rx.index,
                reason: e.to_string(),
            })?;
        if avail.0 != rx.queue.next_avail() {
            return Ok(true);
        }
        rx.rearm(&self.mem)
    }

    /// Copies the waiting frame into receive chains: true when delivered (or dropped because
    /// it can never fit), false when more buffers are needed.
    fn deliver_pending(&mut self) -> Result<bool, BrokenQueue> {
        let NetHandler {
            queues,
            mode,
            mem,
            counters,
            rx_buf,
            rx_pending,
            segs,
            heads,
            ..
        } = self;
        let Some(rx) = queues.rx.as_mut() else {
            return Ok(false);
        };
        let len = *rx_pending;
        let mut start = rx.queue.next_avail();
        segs.clear();
        heads.clear();
        let mut room = 0usize;
        while room < len {
            let Some(chain) = rx.pop(mem)? else {
                if rx.rearm(mem)? {
                    continue;
                }
                // Not enough buffers yet: give the taken chains back and wait.
                rx.queue.set_next_avail(start);
                return Ok(false);
            };
            let head = chain.head_index();
            let before = segs.len();
            let mut chain_room = 0usize;
            for d in chain.writable() {
                segs.push((d.addr(), d.len() as usize));
                chain_room = chain_room.saturating_add(d.len() as usize);
            }
            if chain_room == 0 || (heads.is_empty() && chain_room < mode.hdr_len) {
                // Too short for a header: give it back empty, count it.
                counters.inc(metrics::RX_BAD_CHAIN);
                segs.truncate(before);
                rx.push_used(mem, head, 0)?;
                if heads.is_empty() {
                    start = rx.queue.next_avail();
                }
                continue;
            }
            if !mode.mergeable && chain_room < len {
                // The guest's only kind of buffer cannot take this frame: drop the frame,
                // keep the buffer for the next one.
                counters.inc(metrics::RX_DROPPED);
                rx.queue.set_next_avail(start);
                *rx_pending = 0;
                return Ok(true);
            }
            heads.push((head, chain_room.min(len - room) as u32));
            room += chain_room;
        }
        if mode.hdr_len >= super::HDR_LEN {
            let n = heads.len() as u16;
            rx_buf[10..12].copy_from_slice(&n.to_le_bytes());
        }
        if copy_to_segments(mem, &rx_buf[..len], segs).is_err() {
            counters.inc(metrics::RX_BAD_CHAIN);
            heads.iter_mut().for_each(|h| h.1 = 0);
        } else {
            counters.inc(metrics::RX_FRAMES);
            counters.add(metrics::RX_BYTES, (len - mode.hdr_len) as u64);
        }
        for &(head, used) in heads.iter() {
            rx.push_used(mem, head, used)?;
        }
        *rx_pending = 0;
        Ok(true)
    }

    /// Puts the tap in the epoll set or takes it out, as receive needs.
    fn poll_tap(&mut self, ops: &mut EventOps, want: bool) {
        if want == self.tap_polled {
            return;
        }
        let ev = Events::new(&self.tap, EventSet::IN);
        let ok = if want { ops.add(ev) } else { ops.remove(ev) };
        if ok.is_ok() {
            self.tap_polled = want;
        }
    }

    fn rx_then_poll(&mut self, ops: &mut EventOps) {
        let state = self.process_rx();
        self.poll_tap(ops, state == RxState::Drained && !self.broken);
    }
}

/// Writes `bytes` across `segs` in order.
fn copy_to_segments(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    segs: &[(GuestAddress, usize)],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut off = 0;
    for &(addr, len) in segs {
        if off >= bytes.len() {
            break;
        }
        let n = len.min(bytes.len() - off);
        mem.write_slice(&bytes[off..off + n], addr)?;
        off += n;
    }
    Ok(())
}

/// Gathers one transmit chain and writes it to the tap (or drops and counts it).
fn transmit_chain(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    tap: &Tap,
    mode: NetMode,
    buf: &mut [u8],
    counters: &Counters,
) {
    let limit = mode.hdr_len + MAX_FRAME;
    let mut len = 0usize;
    for d in chain.readable() {
        let n = d.len() as usize;
        if n > limit - len {
            counters.inc(metrics::TX_OVERSIZE);
            return;
        }
        if mem.read_slice(&mut buf[len..len + n], d.addr()).is_err() {
            counters.inc(metrics::TX_MALFORMED);
            return;
        }
        len += n;
    }
    if len < mode.hdr_len {
        counters.inc(metrics::TX_MALFORMED);
        return;
    }
    let frame = len - mode.hdr_len;
    let gso = buf[1] & 0x7f != 0;
    if (gso && !mode.host_tso) || (!gso && frame > usize::from(mode.mtu) + L2_OVERHEAD) {
        counters.inc(metrics::TX_OVERSIZE);
        return;
    }
    match tap.write(&buf[..len]) {
        Ok(_) => {
            counters.inc(metrics::TX_FRAMES);
            counters.add(metrics::TX_BYTES, frame as u64);
        }
        Err(_) => counters.inc(metrics::TX_ERRORS),
    }
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let is = |q: &Option<ActiveQueue>| {
            q.as_ref()
                .is_some_and(|q| std::os::fd::AsRawFd::as_raw_fd(&q.notify) == fd)
        };
        if is(&self.queues.tx) {
            if let Some(tx) = self.queues.tx.as_ref() {
                let _ = tx.notify.read();
            }
            self.process_tx();
        } else if is(&self.queues.rx) {
            if let Some(rx) = self.queues.rx.as_ref() {
                let _ = rx.notify.read();
            }
            self.rx_then_poll(ops);
        } else if fd == std::os::fd::AsRawFd::as_raw_fd(&self.tap) {
            self.rx_then_poll(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // A fresh epoll set (a handler started again after a snapshot was in another).
        self.tap_polled = false;
        for q in [&self.queues.rx, &self.queues.tx].into_iter().flatten() {
            if ops.add(Events::new(&q.notify, EventSet::IN)).is_err() {
                self.broken = true;
                self.interrupt.set_needs_reset();
                return;
            }
        }
        // Frames the driver queued before DRIVER_OK, and receive buffers it already posted.
        self.process_tx();
        self.rx_then_poll(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    /// A SOCK_SEQPACKET pair: the handler's "tap" and the test's end (the host side).
    fn tap_pair() -> (Tap, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array, which the test then owns.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned by nothing else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (Tap::from_file(a.into()), b.into())
    }

    struct Rig {
        h: NetHandler,
        host: std::fs::File,
        counters: Arc<Counters>,
    }

    fn rig<'a>(
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
            NetQueues {
                rx: Some(q(rx, 0)),
                tx: Some(q(tx, 1)),
            },
            tap,
            mode,
            m.clone(),
            Arc::new(CountingInterrupt::default()),
            counters.clone(),
        );
        Rig { h, host, counters }
    }

    const MRG: NetMode = NetMode {
        hdr_len: 12,
        mergeable: true,
        mtu: 1500,
        host_tso: false,
    };

    fn send_host(host: &std::fs::File, frame: &[u8]) {
        use std::io::Write;
        (&*host).write_all(frame).unwrap();
    }

    fn frame(len: usize, hdr: usize) -> Vec<u8> {
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

        let state = r.h.process_rx();

        assert_eq!(state, RxState::NeedBuffers);
        assert_eq!(r.h.rx_pending, 0, "no frame may be read without a buffer");
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
        assert_eq!(r.h.process_rx(), RxState::Drained);
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

        r.h.process_rx();

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

        let state = r.h.process_rx();

        assert_eq!(state, RxState::NeedBuffers);
        assert_eq!(rx.used().idx().load(), 0);
        assert_eq!(r.h.rx_pending, 1200);
        assert_eq!(r.counters.get(metrics::RX_DROPPED), 0);
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

        r.h.process_rx();

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

        r.h.process_rx();

        assert_eq!(r.counters.get(metrics::RX_DROPPED), 1);
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 100);
    }

    fn host_recv(host: &std::fs::File) -> Option<Vec<u8>> {
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

        r.h.process_tx();

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

        r.h.process_rx();
        r.h.process_rx();

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
        h.queues.rx.as_ref().unwrap().notify.write(1).unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(rx.used().idx().load(), 1);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 100);
    }
}
