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
