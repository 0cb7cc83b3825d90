//! virtio-vsock, polled, one stream connection at a time: queue 0
//! receives packets (every descriptor a 4 KiB buffer for header and
//! payload, reposted as it is), queue 1 transmits them, queue 2 (events)
//! has one 8-byte buffer posted, which only a transport reset (after a
//! restore from a snapshot) fills.

use super::queue::{Buf, Desc, Virtq, DESC_F_WRITE};
use super::{Device, Transport};
use crate::dma::{Dma, DmaBuf};
use crate::io::rdtsc;
use crate::{bail, Error};

/// The header every packet starts with.
pub const HDR_LEN: usize = 44;
/// Bytes per receive or transmit buffer.
const BUF: usize = 4096;
/// Payload bytes per packet at most.
pub const MAX_PAYLOAD: usize = BUF - HDR_LEN;
/// Queue entries at most.
const QUEUE_MAX: u16 = 64;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// What the guest says it can buffer per connection.
const BUF_ALLOC: u32 = 64 << 10;

/// Stream socket type.
const TYPE_STREAM: u16 = 1;
/// Operations.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset.
pub const OP_RST: u16 = 3;
/// No more data in one or both directions (flags 1: receive, 2: send).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// A packet header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Flags.
    pub flags: u32,
    /// Receive buffer space of the sender.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl Hdr {
    fn read(b: &[u8]) -> Hdr {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }
}

/// One stream connection's state.
#[derive(Clone, Copy, Debug, Default)]
struct Conn {
    local_port: u32,
    peer_port: u32,
    /// Bytes received (and consumed).
    fwd_cnt: u32,
    /// Bytes sent.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    /// The device.
    pub dev: Device,
    /// The guest's CID (configuration space).
    pub cid: u64,
    rx: Virtq,
    tx: Virtq,
    event: Virtq,
    event_mem: DmaBuf,
    rx_mem: DmaBuf,
    rx_last: u16,
    tx_mem: DmaBuf,
    tx_last: u16,
    tx_next: u16,
    tx_inflight: u16,
}

impl Vsock {
    /// Sets up the three queues, posts every receive buffer, DRIVER_OK.
    pub fn new(transport: Transport, dma: &mut Dma) -> Result<Self, Error> {
        let mut dev = Device::init(transport, 0)?;
        let rx = dev.queue(dma, 0, QUEUE_MAX)?;
        let tx = dev.queue(dma, 1, QUEUE_MAX)?;
        let event = dev.queue(dma, 2, QUEUE_MAX)?;
        let cid = dev.config().read64(0);
        let rx_mem = dma.alloc(BUF * usize::from(rx.size()), 4096)?;
        let tx_mem = dma.alloc(BUF * usize::from(tx.size()), 4096)?;
        let event_mem = dma.alloc(8, 8)?;
        let mut v = Self {
            dev,
            cid,
            rx,
            tx,
            event,
            event_mem,
            rx_mem,
            rx_last: 0,
            tx_mem,
            tx_last: 0,
            tx_next: 0,
            tx_inflight: 0,
        };
        for i in 0..v.rx.size() {
            let addr = v.rx_mem.addr() + (usize::from(i) * BUF) as u64;
            v.rx.write_desc(
                i,
                Desc {
                    addr,
                    len: BUF as u32,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            );
            v.rx.push_avail(i);
        }
        v.event.add(&[Buf::writable(v.event_mem.addr(), 8)])?;
        v.dev.driver_ok();
        v.rx.kick();
        v.event.kick();
        Ok(v)
    }

    /// Waits (without a time limit: a snapshot and its restore come when
    /// the host wants) for a transport reset event; then reads the CID
    /// again, posts the event buffer again and returns the event's id.
    pub fn wait_transport_reset(&mut self) -> Result<u32, Error> {
        let used = loop {
            if let Some(u) = self.event.pop_used()? {
                break u;
            }
            core::hint::spin_loop();
        };
        let b = self.event_mem.as_slice();
        let id = if used.len >= 4 {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::MAX
        };
        self.cid = self.dev.config().read64(0);
        self.event.add(&[Buf::writable(self.event_mem.addr(), 8)])?;
        self.event.kick();
        Ok(id)
    }

    /// Waits for the next received packet; copies its payload into `out`
    /// (at most `out.len()` bytes) and returns the header.
    pub fn recv(&mut self, out: &mut [u8]) -> Result<(Hdr, usize), Error> {
        let start = rdtsc();
        while self.rx.used_idx() == self.rx_last {
            if rdtsc().wrapping_sub(start) > super::queue::TIMEOUT_CYCLES {
                bail!("vsock: no packet from the device");
            }
            core::hint::spin_loop();
        }
        self.take_rx(out)
    }

    /// The next received packet if one arrived.
    pub fn try_recv(&mut self, out: &mut [u8]) -> Result<Option<(Hdr, usize)>, Error> {
        if self.rx.used_idx() == self.rx_last {
            return Ok(None);
        }
        self.take_rx(out).map(Some)
    }

    fn take_rx(&mut self, out: &mut [u8]) -> Result<(Hdr, usize), Error> {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let used = self.rx.used_elem(self.rx_last);
        self.rx_last = self.rx_last.wrapping_add(1);
        let d = (used.id as u16) % self.rx.size();
        let off = usize::from(d) * BUF;
        let len = (used.len as usize).min(BUF);
        if len < HDR_LEN {
            self.rx.push_avail(d);
            self.rx.kick();
            bail!("vsock: a received packet of {len} bytes");
        }
        let buf = &self.rx_mem.as_slice()[off..off + len];
        let h = Hdr::read(buf);
        let n = (h.len as usize).min(len - HDR_LEN).min(out.len());
        out[..n].copy_from_slice(&buf[HDR_LEN..HDR_LEN + n]);
        self.rx.push_avail(d);
        // Linux's rule: a reposted buffer notifies only if the device asked to be.
        self.rx.kick_if_needed();
        Ok((h, n))
    }

    /// Sends one packet (header `h`, with `len`, type, CIDs and `buf_alloc`
    /// filled in).
    fn send(&mut self, mut h: Hdr, data: &[u8]) -> Result<(), Error> {
        h.len = data.len() as u32;
        h.kind = TYPE_STREAM;
        h.src_cid = self.cid;
        h.dst_cid = HOST_CID;
        h.buf_alloc = BUF_ALLOC;
        self.send_raw(h, data)
    }

    /// Sends one packet with header `h` exactly as given (hostile tests).
    pub fn send_raw(&mut self, h: Hdr, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_PAYLOAD {
            bail!("vsock: {} bytes in one packet", data.len());
        }
        let start = rdtsc();
        loop {
            while self.tx.used_idx() != self.tx_last {
                self.tx_last = self.tx_last.wrapping_add(1);
                self.tx_inflight -= 1;
            }
            if self.tx_inflight < self.tx.size() {
                break;
            }
            if rdtsc().wrapping_sub(start) > super::queue::TIMEOUT_CYCLES {
                bail!("vsock: the device did not take a packet");
            }
            core::hint::spin_loop();
        }
        let d = self.tx_next % self.tx.size();
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_inflight += 1;
        let off = usize::from(d) * BUF;
        let buf = &mut self.tx_mem.as_mut_slice()[off..off + HDR_LEN + data.len()];
        h.write(buf);
        buf[HDR_LEN..].copy_from_slice(data);
        self.tx.write_desc(
            d,
            Desc {
                addr: self.tx_mem.addr() + off as u64,
                len: (HDR_LEN + data.len()) as u32,
                flags: 0,
                next: 0,
            },
        );
        self.tx.push_avail(d);
        self.tx.kick();
        Ok(())
    }

    fn ctl(&mut self, c: &Conn, op: u16, flags: u32) -> Result<(), Error> {
        let h = Hdr {
            src_port: c.local_port,
            dst_port: c.peer_port,
            op,
            flags,
            fwd_cnt: c.fwd_cnt,
            ..Hdr::default()
        };
        self.send(h, &[])
    }

    /// Sends `data` on `c`, waiting for credit when the peer has none.
    fn send_data(&mut self, c: &mut Conn, data: &[u8]) -> Result<(), Error> {
        let mut sent = 0;
        let mut scratch = [0u8; 64];
        while sent < data.len() {
            let credit =
                c.peer_buf_alloc
                    .wrapping_sub(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt)) as usize;
            if credit == 0 {
                self.ctl(c, OP_CREDIT_REQUEST, 0)?;
                let (h, _) = self.recv(&mut scratch)?;
                if h.op == OP_RST {
                    bail!("vsock: the host reset the connection");
                }
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                continue;
            }
            let n = (data.len() - sent).min(MAX_PAYLOAD).min(credit);
            let h = Hdr {
                src_port: c.local_port,
                dst_port: c.peer_port,
                op: OP_RW,
                fwd_cnt: c.fwd_cnt,
                ..Hdr::default()
            };
            self.send(h, &data[sent..sent + n])?;
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            sent += n;
        }
        Ok(())
    }

    /// Waits for one host connection to `port`, echoes what it sends until
    /// the host shuts it down; returns the bytes echoed.
    pub fn echo_one(&mut self, port: u32) -> Result<u64, Error> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let mut c = loop {
            let (h, _) = self.recv(&mut buf)?;
            if h.op == OP_REQUEST && h.dst_port == port {
                break Conn {
                    local_port: port,
                    peer_port: h.src_port,
                    peer_buf_alloc: h.buf_alloc,
                    peer_fwd_cnt: h.fwd_cnt,
                    ..Conn::default()
                };
            }
        };
        self.ctl(&c, OP_RESPONSE, 0)?;
        let mut echoed = 0u64;
        loop {
            let (h, n) = self.recv(&mut buf)?;
            if h.src_port != c.peer_port || h.dst_port != c.local_port {
                continue;
            }
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RW => {
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    let data = buf;
                    self.send_data(&mut c, &data[..n])?;
                    echoed += n as u64;
                }
                OP_SHUTDOWN => {
                    self.ctl(&c, OP_RST, 0)?;
                    return Ok(echoed);
                }
                OP_RST => return Ok(echoed),
                OP_CREDIT_REQUEST => self.ctl(&c, OP_CREDIT_UPDATE, 0)?,
                _ => {}
            }
        }
    }

    /// Connects to host port `port`, sends `data`, reads as many bytes back
    /// into `out`, closes; returns the bytes read.
    pub fn connect_roundtrip(
        &mut self,
        port: u32,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let mut c = Conn {
            local_port: 0x4000_0000 | port,
            peer_port: port,
            ..Conn::default()
        };
        self.ctl(&c, OP_REQUEST, 0)?;
        let mut buf = [0u8; MAX_PAYLOAD];
        loop {
            let (h, _) = self.recv(&mut buf)?;
            if h.dst_port != c.local_port {
                continue;
            }
            match h.op {
                OP_RESPONSE => {
                    c.peer_buf_alloc = h.buf_alloc;
                    c.peer_fwd_cnt = h.fwd_cnt;
                    break;
                }
                OP_RST => bail!("vsock: the host refused port {port}"),
                _ => {}
            }
        }
        self.send_data(&mut c, data)?;
        let want = data.len().min(out.len());
        let mut got = 0;
        while got < want {
            let (h, n) = self.recv(&mut buf)?;
            if h.dst_port != c.local_port {
                continue;
            }
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RW => {
                    let k = n.min(want - got);
                    out[got..got + k].copy_from_slice(&buf[..k]);
                    got += k;
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                OP_RST | OP_SHUTDOWN => break,
                _ => {}
            }
        }
        self.ctl(&c, OP_SHUTDOWN, 3)?;
        loop {
            let (h, _) = self.recv(&mut buf)?;
            if h.dst_port == c.local_port && h.op == OP_RST {
                break;
            }
        }
        Ok(got)
    }
}
