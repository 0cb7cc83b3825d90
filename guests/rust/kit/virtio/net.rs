//! virtio-net, polled: queue `2p` receives and `2p + 1` transmits for pair
//! `p`. Every descriptor owns a fixed buffer (descriptor `i` the `i`-th slot
//! of one DMA block), so the rings are driven through the raw queue
//! interface: a used receive descriptor is reposted as it is (the device is
//! notified once the driver has caught up with the used ring, and only when
//! it asked to be: Linux's rules), a used transmit
//! descriptor goes back to the free list. With MRG_RXBUF (accepted unless
//! `mrg=0`), a frame may span several receive buffers (`num_buffers` in the
//! first header). With more than one pair asked for, MQ and the control
//! queue (queue `2 * max_virtqueue_pairs`) are negotiated; the driver uses
//! pair 0 until [`Net::set_pairs`].

use super::queue::{Buf, Desc, Virtq, DESC_F_WRITE};
use super::{Device, Transport, F_VERSION_1};
use crate::dma::{Dma, DmaBuf};
use crate::{bail, Error};

/// Feature: the MAC field of the configuration space is valid.
pub const F_MAC: u64 = 1 << 5;
/// Feature: the MTU field is valid.
pub const F_MTU: u64 = 1 << 3;
/// Feature: mergeable receive buffers.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: the status field is valid.
pub const F_STATUS: u64 = 1 << 16;
/// Feature: a control queue.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Feature: several queue pairs.
pub const F_MQ: u64 = 1 << 22;

/// Most queue pairs the driver sets up.
pub const MAX_PAIRS: usize = 2;
/// Control status: done.
pub const CTRL_OK: u8 = 0;

/// Largest frame the driver assembles (a 9000-byte MTU plus headers).
pub const MAX_FRAME: usize = 9216;
/// Bytes per transmit buffer.
const TX_BUF: usize = 2048;
/// Queue entries at most (modern interfaces).
const QUEUE_MAX: u16 = 256;
/// Queue entries at most (legacy interfaces, whose size the device fixes).
const MAX_LEGACY_QUEUE: usize = 1024;

/// One receive and one transmit queue with their buffers.
#[derive(Debug)]
struct Pair {
    rx: Virtq,
    tx: Virtq,
    rx_mem: DmaBuf,
    rx_last: u16,
    tx_mem: DmaBuf,
    tx_last: u16,
    tx_free: [u16; MAX_LEGACY_QUEUE],
    tx_nfree: usize,
}

impl Pair {
    /// Sets up pair `p`'s queues with every receive buffer posted.
    fn new(dev: &mut Device, dma: &mut Dma, p: u16, rx_buf_len: usize) -> Result<Self, Error> {
        let rx = dev.queue(dma, 2 * p, QUEUE_MAX)?;
        let tx = dev.queue(dma, 2 * p + 1, QUEUE_MAX)?;
        if usize::from(tx.size()) > MAX_LEGACY_QUEUE {
            bail!("net: transmit queue of {} entries", tx.size());
        }
        let rx_mem = dma.alloc(rx_buf_len * usize::from(rx.size()), 4096)?;
        let tx_mem = dma.alloc(TX_BUF * usize::from(tx.size()), 4096)?;
        let mut pair = Self {
            rx,
            tx,
            rx_mem,
            rx_last: 0,
            tx_mem,
            tx_last: 0,
            tx_free: [0; MAX_LEGACY_QUEUE],
            tx_nfree: 0,
        };
        for i in 0..pair.tx.size() {
            pair.tx_free[usize::from(i)] = i;
        }
        pair.tx_nfree = usize::from(pair.tx.size());
        for i in 0..pair.rx.size() {
            let addr = pair.rx_mem.addr() + (usize::from(i) * rx_buf_len) as u64;
            pair.rx.write_desc(
                i,
                Desc {
                    addr,
                    len: rx_buf_len as u32,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            );
            pair.rx.push_avail(i);
        }
        Ok(pair)
    }

    /// Takes the next used receive buffer: its descriptor and length.
    fn next_rx(&mut self) -> Option<(u16, usize)> {
        if self.rx.used_idx() == self.rx_last {
            return None;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let used = self.rx.used_elem(self.rx_last);
        self.rx_last = self.rx_last.wrapping_add(1);
        Some(((used.id as u16) % self.rx.size(), used.len as usize))
    }

    /// Returns used transmit buffers to the free list.
    fn reclaim_tx(&mut self) {
        while self.tx.used_idx() != self.tx_last {
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            let used = self.tx.used_elem(self.tx_last);
            self.tx_last = self.tx_last.wrapping_add(1);
            if self.tx_nfree < self.tx_free.len() {
                self.tx_free[self.tx_nfree] = (used.id as u16) % self.tx.size();
                self.tx_nfree += 1;
            }
        }
    }

    /// Takes a free transmit descriptor (reclaiming used ones, waiting
    /// while none is free).
    fn take_tx_desc(&mut self) -> Result<u16, Error> {
        let start = crate::io::rdtsc();
        while self.tx_nfree == 0 {
            self.reclaim_tx();
            if crate::io::rdtsc().wrapping_sub(start) > super::queue::TIMEOUT_CYCLES {
                bail!("queue {}: the device did not answer", self.tx.index());
            }
            core::hint::spin_loop();
        }
        self.tx_nfree -= 1;
        Ok(self.tx_free[self.tx_nfree])
    }

    fn post_tx(&mut self, d: u16, addr: u64, len: usize, kick: bool) {
        self.tx.write_desc(
            d,
            Desc {
                addr,
                len: len as u32,
                flags: 0,
                next: 0,
            },
        );
        self.tx.push_avail(d);
        if kick {
            self.tx.kick();
        }
    }
}

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    /// The device.
    pub dev: Device,
    /// The MAC address from the configuration space.
    pub mac: [u8; 6],
    /// The MTU (1500 when the device gives none).
    pub mtu: u16,
    /// Whether the configuration says the link is up.
    pub link_up: bool,
    /// The header length (12 with VERSION_1 or MRG_RXBUF, else 10).
    pub hdr_len: usize,
    /// The device's max_virtqueue_pairs (1 without MQ).
    pub max_pairs: u16,
    /// The pair [`Net::send`] uses.
    pub tx_pair: usize,
    /// The pair the last frame [`Net::recv`] returned came in on.
    pub rx_pair: usize,
    pairs: [Option<Pair>; MAX_PAIRS],
    /// Pairs set up (receive polls the first `active` of them).
    set_up: usize,
    active: usize,
    ctrl: Option<Virtq>,
    ctrl_mem: Option<DmaBuf>,
    rx_buf_len: usize,
    frame: [u8; MAX_FRAME],
    /// Frames received and sent, and buffers a frame took at most.
    pub stats: Stats,
}

/// Driver counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Most receive buffers one frame took.
    pub max_buffers: u16,
    /// Frames received per pair.
    pub rx_pair: [u64; MAX_PAIRS],
    /// Frames sent per pair.
    pub tx_pair: [u64; MAX_PAIRS],
}

impl Net {
    /// Reads the MAC from the configuration space again (a restored clone
    /// may have been given a new one).
    pub fn reread_mac(&mut self) {
        let cfg = self.dev.config();
        for (i, b) in self.mac.iter_mut().enumerate() {
            *b = cfg.read8(i as u16);
        }
    }

    /// Negotiates MAC, MTU, STATUS, (with `mergeable`) MRG_RXBUF and (with
    /// `pairs` above 1) MQ and the control queue, sets up `pairs` pairs
    /// (at most the device's and [`MAX_PAIRS`]) with receive buffers of
    /// `rx_buf_len` bytes, all posted, and sets DRIVER_OK.
    pub fn new(
        transport: Transport,
        dma: &mut Dma,
        rx_buf_len: usize,
        mergeable: bool,
        pairs: usize,
    ) -> Result<Self, Error> {
        let mut wanted = F_MAC | F_MTU | F_STATUS | if mergeable { F_MRG_RXBUF } else { 0 };
        if pairs > 1 {
            wanted |= F_CTRL_VQ | F_MQ;
        }
        let mut dev = Device::init(transport, wanted)?;
        let hdr_len = if dev.has(F_VERSION_1) || dev.has(F_MRG_RXBUF) {
            12
        } else {
            10
        };
        if rx_buf_len < hdr_len || (!dev.has(F_MRG_RXBUF) && rx_buf_len < hdr_len + 1514) {
            bail!("net: receive buffers of {rx_buf_len} bytes are too small");
        }
        let cfg = dev.config();
        let max_pairs = if dev.has(F_MQ) { cfg.read16(8) } else { 1 };
        if pairs > 1 && !dev.has(F_MQ) {
            bail!("net: {pairs} pairs asked for and the device offers no MQ");
        }
        let set_up = pairs.clamp(1, MAX_PAIRS).min(usize::from(max_pairs));
        let mut all: [Option<Pair>; MAX_PAIRS] = [None, None];
        for (p, slot) in all.iter_mut().enumerate().take(set_up) {
            *slot = Some(Pair::new(&mut dev, dma, p as u16, rx_buf_len)?);
        }
        let (ctrl, ctrl_mem) = if dev.has(F_CTRL_VQ) {
            let index = if dev.has(F_MQ) { 2 * max_pairs } else { 2 };
            (
                Some(dev.queue(dma, index, 64)?),
                Some(dma.alloc(4096, 4096)?),
            )
        } else {
            (None, None)
        };
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = cfg.read8(i as u16);
        }
        let link_up = !dev.has(F_STATUS) || cfg.read16(6) & 1 != 0;
        let mtu = if dev.has(F_MTU) { cfg.read16(10) } else { 1500 };
        let mut net = Self {
            dev,
            mac,
            mtu,
            link_up,
            hdr_len,
            max_pairs,
            tx_pair: 0,
            rx_pair: 0,
            pairs: all,
            set_up,
            active: 1,
            ctrl,
            ctrl_mem,
            rx_buf_len,
            frame: [0; MAX_FRAME],
            stats: Stats::default(),
        };
        net.dev.driver_ok();
        for pair in net.pairs.iter().flatten() {
            pair.rx.kick();
        }
        Ok(net)
    }

    /// Sends a control command (`class`, `cmd`, `data`) and waits for its
    /// status byte ([`CTRL_OK`] or an error).
    pub fn ctrl_command(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8, Error> {
        let (Some(q), Some(mem)) = (self.ctrl.as_mut(), self.ctrl_mem.as_mut()) else {
            bail!("net: no control queue");
        };
        if data.len() > 64 {
            bail!("net: control data of {} bytes", data.len());
        }
        let buf = mem.as_mut_slice();
        buf[0] = class;
        buf[1] = cmd;
        buf[2..2 + data.len()].copy_from_slice(data);
        buf[128] = 0xff;
        let base = mem.addr();
        q.submit(&[
            Buf::readable(base, 2 + data.len()),
            Buf::writable(base + 128, 1),
        ])?;
        Ok(mem.as_slice()[128])
    }

    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET `n`: on OK, receive polls the first
    /// `n` pairs (those set up). Returns the status.
    pub fn set_pairs(&mut self, n: u16) -> Result<u8, Error> {
        let status = self.ctrl_command(4, 0, &n.to_le_bytes())?;
        if status == CTRL_OK {
            self.active = usize::from(n).clamp(1, self.set_up);
        }
        Ok(status)
    }

    /// Pairs set up.
    pub fn pairs_set_up(&self) -> usize {
        self.set_up
    }

    /// Receives one frame if one arrived on a pair in use: returns its
    /// length (the frame is in [`Net::frame`], its pair in
    /// [`Net::rx_pair`]); frames longer than [`MAX_FRAME`] are cut.
    pub fn recv(&mut self) -> Result<Option<usize>, Error> {
        for i in 0..self.active {
            let p = (self.rx_pair + 1 + i) % self.active;
            if let Some(len) = self.recv_on(p)? {
                self.rx_pair = p;
                self.stats.rx_pair[p] += 1;
                return Ok(Some(len));
            }
        }
        Ok(None)
    }

    fn recv_on(&mut self, p: usize) -> Result<Option<usize>, Error> {
        let hdr_len = self.hdr_len;
        let mrg = self.dev.has(F_MRG_RXBUF);
        let buf_len = self.rx_buf_len;
        let Some(pair) = self.pairs[p].as_mut() else {
            return Ok(None);
        };
        let Some((desc, len)) = pair.next_rx() else {
            return Ok(None);
        };
        if len < hdr_len {
            pair.rx.push_avail(desc);
            bail!("net: a received buffer of {len} bytes has no header");
        }
        let nbufs = if mrg {
            let off = usize::from(desc) * buf_len;
            let b = &pair.rx_mem.as_slice()[off..off + 12];
            u16::from_le_bytes([b[10], b[11]]).max(1)
        } else {
            1
        };
        let mut got = 0usize;
        let frame = &mut self.frame;
        let mut take = |pair: &mut Pair, desc: u16, skip: usize, len: usize| {
            let len = len.min(buf_len);
            let n = len.saturating_sub(skip).min(MAX_FRAME - got);
            let off = usize::from(desc) * buf_len + skip;
            frame[got..got + n].copy_from_slice(&pair.rx_mem.as_slice()[off..off + n]);
            got += n;
            pair.rx.push_avail(desc);
        };
        take(pair, desc, hdr_len, len);
        for _ in 1..nbufs {
            let (d, l) = loop {
                if let Some(x) = pair.next_rx() {
                    break x;
                }
                core::hint::spin_loop();
            };
            take(pair, d, 0, l);
        }
        // Like Linux's NAPI poll: the reposted buffers are announced once the
        // driver has caught up with the used ring, not once per frame.
        if pair.rx.used_idx() == pair.rx_last {
            pair.rx.kick_if_needed();
        }
        self.stats.rx += 1;
        self.stats.max_buffers = self.stats.max_buffers.max(nbufs);
        Ok(Some(got))
    }

    /// The frame [`Net::recv`] returned.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The frame buffer, to build a reply in place.
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.frame
    }

    fn tx(&mut self) -> Result<&mut Pair, Error> {
        let p = self.tx_pair;
        match self.pairs.get_mut(p).and_then(Option::as_mut) {
            Some(pair) => Ok(pair),
            None => bail!("net: pair {p} is not set up"),
        }
    }

    /// Sends `data` with an all-zero header on pair [`Net::tx_pair`];
    /// `kick` notifies the device.
    pub fn send(&mut self, data: &[u8], kick: bool) -> Result<(), Error> {
        self.send_with_header(&[], data, kick)
    }

    /// Sends `data` after a header whose first bytes are `hdr` (the rest
    /// zero); `kick` notifies the device.
    pub fn send_with_header(&mut self, hdr: &[u8], data: &[u8], kick: bool) -> Result<(), Error> {
        let hlen = self.hdr_len;
        if data.len() + hlen > TX_BUF || hdr.len() > hlen {
            bail!("net: a frame of {} bytes is too long", data.len());
        }
        let pair = self.tx()?;
        let d = pair.take_tx_desc()?;
        let off = usize::from(d) * TX_BUF;
        let buf = &mut pair.tx_mem.as_mut_slice()[off..off + hlen + data.len()];
        buf[..hlen].fill(0);
        buf[..hdr.len()].copy_from_slice(hdr);
        buf[hlen..].copy_from_slice(data);
        let addr = pair.tx_mem.addr() + off as u64;
        pair.post_tx(d, addr, hlen + data.len(), kick);
        self.count_tx();
        Ok(())
    }

    fn count_tx(&mut self) {
        self.stats.tx += 1;
        if let Some(n) = self.stats.tx_pair.get_mut(self.tx_pair) {
            *n += 1;
        }
    }

    /// Posts one transmit descriptor of `len` bytes at any `addr` (for
    /// hostile tests: addresses outside RAM, chains shorter than a header).
    pub fn send_raw(&mut self, addr: u64, len: usize, kick: bool) -> Result<(), Error> {
        let pair = self.tx()?;
        let d = pair.take_tx_desc()?;
        pair.post_tx(d, addr, len, kick);
        self.count_tx();
        Ok(())
    }

    /// Waits until the device has used every transmit chain.
    pub fn wait_tx_done(&mut self) -> Result<(), Error> {
        let pair = self.tx()?;
        let start = crate::io::rdtsc();
        while pair.tx_nfree < usize::from(pair.tx.size()) {
            pair.reclaim_tx();
            if crate::io::rdtsc().wrapping_sub(start) > super::queue::TIMEOUT_CYCLES {
                bail!("queue {}: the device did not use every chain", pair.tx.index());
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Sends the first `len` bytes of [`Net::frame`] and notifies.
    pub fn send_frame(&mut self, len: usize) -> Result<(), Error> {
        let mut tmp = [0u8; TX_BUF];
        let len = len.min(TX_BUF - self.hdr_len);
        tmp[..len].copy_from_slice(&self.frame[..len]);
        self.send(&tmp[..len], true)
    }

    /// Notifies the transmit queue (after sends without `kick`).
    pub fn kick_tx(&mut self) -> Result<(), Error> {
        self.tx()?.tx.kick();
        Ok(())
    }
}
