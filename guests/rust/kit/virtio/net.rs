//! virtio-net, polled: queue 0 receives, queue 1 transmits. Every
//! descriptor owns a fixed buffer (descriptor `i` the `i`-th slot of one DMA
//! block), so the rings are driven through the raw queue interface: a used
//! receive descriptor is reposted as it is, a used transmit descriptor goes
//! back to the free list. With MRG_RXBUF (accepted unless `mrg=0`), a frame
//! may span several receive buffers (`num_buffers` in the first header).

use super::queue::{Desc, Virtq, DESC_F_WRITE};
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

/// Largest frame the driver assembles (a 9000-byte MTU plus headers).
pub const MAX_FRAME: usize = 9216;
/// Bytes per transmit buffer.
const TX_BUF: usize = 2048;
/// Queue entries at most (modern interfaces).
const QUEUE_MAX: u16 = 256;
/// Queue entries at most (legacy interfaces, whose size the device fixes).
const MAX_LEGACY_QUEUE: usize = 1024;

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
    rx: Virtq,
    tx: Virtq,
    rx_mem: DmaBuf,
    rx_buf_len: usize,
    rx_last: u16,
    tx_mem: DmaBuf,
    tx_last: u16,
    tx_free: [u16; MAX_LEGACY_QUEUE],
    tx_nfree: usize,
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

    /// Negotiates MAC, MTU, STATUS and (with `mergeable`) MRG_RXBUF, sets
    /// up both queues with receive buffers of `rx_buf_len` bytes, all
    /// posted, and sets DRIVER_OK.
    pub fn new(
        transport: Transport,
        dma: &mut Dma,
        rx_buf_len: usize,
        mergeable: bool,
    ) -> Result<Self, Error> {
        let wanted = F_MAC | F_MTU | F_STATUS | if mergeable { F_MRG_RXBUF } else { 0 };
        let mut dev = Device::init(transport, wanted)?;
        let hdr_len = if dev.has(F_VERSION_1) || dev.has(F_MRG_RXBUF) {
            12
        } else {
            10
        };
        if rx_buf_len < hdr_len || (!dev.has(F_MRG_RXBUF) && rx_buf_len < hdr_len + 1514) {
            bail!("net: receive buffers of {rx_buf_len} bytes are too small");
        }
        let rx = dev.queue(dma, 0, QUEUE_MAX)?;
        let tx = dev.queue(dma, 1, QUEUE_MAX)?;
        if usize::from(tx.size()) > MAX_LEGACY_QUEUE {
            bail!("net: transmit queue of {} entries", tx.size());
        }
        let rx_mem = dma.alloc(rx_buf_len * usize::from(rx.size()), 4096)?;
        let tx_mem = dma.alloc(TX_BUF * usize::from(tx.size()), 4096)?;
        let cfg = dev.config();
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
            rx,
            tx,
            rx_mem,
            rx_buf_len,
            rx_last: 0,
            tx_mem,
            tx_last: 0,
            tx_free: [0; MAX_LEGACY_QUEUE],
            tx_nfree: 0,
            frame: [0; MAX_FRAME],
            stats: Stats::default(),
        };
        for i in 0..net.tx.size() {
            net.tx_free[usize::from(i)] = i;
        }
        net.tx_nfree = usize::from(net.tx.size());
        for i in 0..net.rx.size() {
            let addr = net.rx_mem.addr() + (usize::from(i) * rx_buf_len) as u64;
            net.rx.write_desc(
                i,
                Desc {
                    addr,
                    len: rx_buf_len as u32,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            );
            net.rx.push_avail(i);
        }
        net.dev.driver_ok();
        net.rx.kick();
        Ok(net)
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

    fn rx_bytes(&self, desc: u16, len: usize) -> &[u8] {
        let off = usize::from(desc) * self.rx_buf_len;
        &self.rx_mem.as_slice()[off..off + len.min(self.rx_buf_len)]
    }

    /// Receives one frame if one arrived: returns its length (the frame is
    /// in [`Net::frame`]); frames longer than [`MAX_FRAME`] are cut.
    pub fn recv(&mut self) -> Result<Option<usize>, Error> {
        let Some((desc, len)) = self.next_rx() else {
            return Ok(None);
        };
        if len < self.hdr_len {
            self.repost(desc);
            bail!("net: a received buffer of {len} bytes has no header");
        }
        let nbufs = if self.dev.has(F_MRG_RXBUF) {
            let b = self.rx_bytes(desc, 12);
            u16::from_le_bytes([b[10], b[11]]).max(1)
        } else {
            1
        };
        let mut got = 0usize;
        let mut take = |net: &mut Self, desc: u16, skip: usize, len: usize| {
            let n = len.saturating_sub(skip).min(MAX_FRAME - got);
            let off = usize::from(desc) * net.rx_buf_len + skip;
            net.frame[got..got + n].copy_from_slice(&net.rx_mem.as_slice()[off..off + n]);
            got += n;
            net.repost(desc);
        };
        take(self, desc, self.hdr_len, len);
        for _ in 1..nbufs {
            let (d, l) = loop {
                if let Some(x) = self.next_rx() {
                    break x;
                }
                core::hint::spin_loop();
            };
            take(self, d, 0, l);
        }
        self.rx.kick();
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

    fn repost(&mut self, desc: u16) {
        self.rx.push_avail(desc);
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
                bail!("queue 1: the device did not answer");
            }
            core::hint::spin_loop();
        }
        self.tx_nfree -= 1;
        Ok(self.tx_free[self.tx_nfree])
    }

    /// Sends `data` with an all-zero header; `kick` notifies the device.
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
        let d = self.take_tx_desc()?;
        let off = usize::from(d) * TX_BUF;
        let buf = &mut self.tx_mem.as_mut_slice()[off..off + hlen + data.len()];
        buf[..hlen].fill(0);
        buf[..hdr.len()].copy_from_slice(hdr);
        buf[hlen..].copy_from_slice(data);
        let addr = self.tx_mem.addr() + off as u64;
        self.post_tx(d, addr, hlen + data.len(), kick);
        Ok(())
    }

    /// Posts one transmit descriptor of `len` bytes at any `addr` (for
    /// hostile tests: addresses outside RAM, chains shorter than a header).
    pub fn send_raw(&mut self, addr: u64, len: usize, kick: bool) -> Result<(), Error> {
        let d = self.take_tx_desc()?;
        self.post_tx(d, addr, len, kick);
        Ok(())
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
        self.stats.tx += 1;
    }

    /// Waits until the device has used every transmit chain.
    pub fn wait_tx_done(&mut self) -> Result<(), Error> {
        let start = crate::io::rdtsc();
        while self.tx_nfree < usize::from(self.tx.size()) {
            self.reclaim_tx();
            if crate::io::rdtsc().wrapping_sub(start) > super::queue::TIMEOUT_CYCLES {
                bail!("queue 1: the device did not use every chain");
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
    pub fn kick_tx(&mut self) {
        self.tx.kick();
    }
}
