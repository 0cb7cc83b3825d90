//! The receive path of one queue pair: a frame is read from the pair's tap queue only when
//! the guest has posted a receive buffer. The frame (header included) lands in the pair's
//! bounce buffer; then the chains it needs are taken (one without MRG_RXBUF, as many as it
//! fills with it) and only when they suffice is it copied into them and the chains used;
//! otherwise the chains go back to the available ring and the frame waits. Nothing the guest
//! has room for is dropped. (Reading straight into the chain with `readv` was tried and
//! measured: the worker spent ~30% more CPU per datagram on this host's kernel than with
//! `read` plus the copy; docs/decisions/0011.)
//!
//! Notifications: while the worker has buffers to fill it asks the driver not to notify it
//! (VRING_USED_F_NO_NOTIFY without EVENT_IDX; with EVENT_IDX `avail_event` stays behind), as
//! QEMU does: new buffers are found when the next frame comes. Only when the buffers run out
//! does it re-enable notifications, and the tap then leaves the epoll set, so a guest that
//! never posts cannot make the worker spin; the receive queue's notification brings it back.

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::event_handler::{NetHandler, NetMode, NetPair};
use super::{metrics, BUDGET};
use crate::counters::Counters;
use crate::virtio::iov;
use crate::virtio::queue::BrokenQueue;
use crate::virtio::ActiveQueue;

/// How far receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// The tap has no more frames (or the budget ran out): keep polling it.
    Drained,
    /// A frame waits for receive buffers (or the pair is not in use): stop polling the tap.
    NeedBuffers,
}

/// Scratch space shared by the pairs (one worker serves them one at a time).
#[derive(Default)]
pub struct RxScratch {
    /// The writable descriptors of the chains a frame takes.
    segs: Vec<(GuestAddress, usize)>,
    /// Their heads and the bytes each gets.
    heads: Vec<(u16, u32)>,
    /// Chains without room met after the frame's first chain: used (empty) only with it.
    bad: Vec<u16>,
}

impl NetHandler {
    /// Moves frames from pair `p`'s tap queue into its receive buffers, at most [`BUDGET`]
    /// (crate-visible for the fuzz harness, `virtio::fuzz_net`).
    pub(crate) fn process_rx(&mut self, p: usize) -> RxState {
        if self.broken || p >= self.active_pairs {
            return RxState::NeedBuffers;
        }
        let NetHandler {
            pairs,
            mode,
            mem,
            interrupt,
            counters,
            scratch,
            ..
        } = self;
        let Some(pair) = pairs.get_mut(p) else {
            return RxState::NeedBuffers;
        };
        let Some(rx) = pair.rx.as_mut() else {
            return RxState::NeedBuffers;
        };
        let mut rx_ctx = RxCtx {
            mode: *mode,
            mem,
            counters,
            scratch,
        };
        let result = rx_ctx.run(rx, &pair.tap, &mut pair.rx_buf, &mut pair.rx_pending);
        let (delivered, state) = match result {
            Ok(v) => v,
            Err(e) => {
                self.fail(e);
                return RxState::NeedBuffers;
            }
        };
        if delivered > 0 {
            rx.signal_used(mem, interrupt.as_ref());
            counters.add(metrics::rx_frames_pair(p), delivered);
        }
        if state == RxState::NeedBuffers {
            counters.inc(metrics::RX_NO_BUFFERS);
        }
        state
    }
}

/// What the receive loop borrows from the handler.
struct RxCtx<'a> {
    mode: NetMode,
    mem: &'a GuestMemoryMmap,
    counters: &'a Counters,
    scratch: &'a mut RxScratch,
}

impl RxCtx<'_> {
    /// The loop: frames delivered and where it stopped.
    fn run(
        &mut self,
        rx: &mut ActiveQueue,
        tap: &super::tap::Tap,
        rx_buf: &mut [u8],
        rx_pending: &mut usize,
    ) -> Result<(u64, RxState), BrokenQueue> {
        let mut delivered = 0;
        let mut quiet = false;
        for _ in 0..BUDGET {
            if *rx_pending == 0 {
                if !self.has_buffers(rx)? {
                    return Ok((delivered, RxState::NeedBuffers));
                }
                if !quiet {
                    // Buffers are there: the driver need not tell us about more.
                    let _ = rx.queue.disable_notification(self.mem);
                    quiet = true;
                }
                match tap.read(rx_buf) {
                    Ok(n) if n >= self.mode.hdr_len => *rx_pending = n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            if !self.deliver(rx, rx_buf, rx_pending)? {
                return Ok((delivered, RxState::NeedBuffers));
            }
            delivered += 1;
        }
        Ok((delivered, RxState::Drained))
    }

    /// Whether the receive queue has a chain; when it has none, re-enables notifications and
    /// looks once more (the driver may have posted meanwhile).
    fn has_buffers(&mut self, rx: &mut ActiveQueue) -> Result<bool, BrokenQueue> {
        if rx.has_available(self.mem)? {
            return Ok(true);
        }
        rx.rearm(self.mem)
    }

    /// Copies the waiting frame into receive chains: true when delivered (or dropped because
    /// it can never fit), false when more buffers are needed.
    fn deliver(
        &mut self,
        rx: &mut ActiveQueue,
        rx_buf: &mut [u8],
        rx_pending: &mut usize,
    ) -> Result<bool, BrokenQueue> {
        let (mode, mem, counters) = (self.mode, self.mem, self.counters);
        let RxScratch { segs, heads, bad } = &mut *self.scratch;
        let len = *rx_pending;
        let mut start = rx.queue.next_avail();
        segs.clear();
        heads.clear();
        bad.clear();
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
                // Too short for a header: give it back empty, count it. Behind the frame's
                // first chain it is given back with the frame: if the frame has to wait, the
                // chains go back to the available ring and this one is taken again, and a
                // chain is used only once.
                segs.truncate(before);
                if heads.is_empty() {
                    counters.inc(metrics::RX_BAD_CHAIN);
                    rx.push_used(mem, head, 0)?;
                    start = rx.queue.next_avail();
                } else {
                    bad.push(head);
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
        if iov::write_to(mem, &rx_buf[..len], segs).is_err() {
            counters.inc(metrics::RX_BAD_CHAIN);
            heads.iter_mut().for_each(|h| h.1 = 0);
        } else {
            counters.inc(metrics::RX_FRAMES);
            counters.add(metrics::RX_BYTES, (len - mode.hdr_len) as u64);
        }
        for &(head, used) in heads.iter() {
            rx.push_used(mem, head, used)?;
        }
        for &head in bad.iter() {
            counters.inc(metrics::RX_BAD_CHAIN);
            rx.push_used(mem, head, 0)?;
        }
        *rx_pending = 0;
        Ok(true)
    }
}

impl NetPair {
    /// Bytes of a frame waiting in this pair's bounce buffer (0: none).
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.rx_pending
    }
}
