//! The virtio-vsock worker's event subscriber: the receive and transmit queues' notify
//! eventfds, the listening socket, host connections still sending their `CONNECT` line, and
//! every connection's stream.
//!
//! Guest packets are read from the transmit queue one chain at a time (header and payload
//! gathered, the length checked against the chain) and acted on. Packets for the guest are
//! control packets (queued, at most [`MAX_PENDING_CONTROL`]) and data read from host streams
//! that signalled readable; both wait for receive buffers. A stream is watched for input
//! only while the guest has credit for it and it is not already waiting to be served, so
//! neither a silent guest nor a chatty host makes the worker spin.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, Refused, State};
use super::packet::{op, Header, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{
    metrics, CONN_BUF, FIRST_HOST_PORT, HOST_CID, MAX_CONNECTIONS, MAX_HANDSHAKES, MAX_PAYLOAD,
    MAX_PENDING_CONTROL,
};
use crate::counters::Counters;
use crate::virtio::queue::{BrokenQueue, Chain};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

/// A connection's key: (host port, guest port).
type Key = (u32, u32);

/// A control packet waiting for a receive buffer.
#[derive(Clone, Copy, Debug)]
struct Control {
    key: Key,
    op: u16,
    flags: u32,
}

/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;

/// What the worker owns while the device runs.
pub struct VsockHandler {
    /// The receive queue.
    pub rx: Option<ActiveQueue>,
    /// The transmit queue.
    pub tx: Option<ActiveQueue>,
    listener: UnixListener,
    socket: PathBuf,
    cid: u64,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<Counters>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    control: VecDeque<Control>,
    ready: VecDeque<Key>,
    next_port: u32,
    buf: Vec<u8>,
    broken: bool,
}

/// What the backend holds for the guest at one moment (the fuzz harness checks its bounds).
#[cfg(any(test, feature = "fuzz"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Connections.
    pub connections: usize,
    /// The guest's bytes waiting for host streams, over all connections.
    pub guest_bytes: usize,
    /// The most guest bytes waiting on one connection.
    pub max_guest_bytes: usize,
    /// `OK` line bytes waiting for host streams, over all connections.
    pub line_bytes: usize,
    /// Control packets waiting for receive buffers.
    pub control: usize,
    /// Host connections still sending their `CONNECT` line.
    pub handshakes: usize,
}

/// Registers, changes or removes `c`'s stream in the epoll set to what it needs now.
fn sync_interest(c: &mut Connection, ops: &mut EventOps) {
    let want = c.wanted_events();
    if want == c.registered {
        return;
    }
    let fd = c.stream.as_raw_fd();
    let result = if want.is_empty() {
        ops.remove(Events::new_raw(fd, c.registered))
    } else if c.registered.is_empty() {
        ops.add(Events::new_raw(fd, want))
    } else {
        ops.modify(Events::new_raw(fd, want))
    };
    if result.is_ok() {
        c.registered = want;
    }
}

impl VsockHandler {
    /// A handler serving the guest `cid` through `listener` (bound at `socket`).
    pub fn new(
        queues: (Option<ActiveQueue>, Option<ActiveQueue>),
        listener: UnixListener,
        socket: PathBuf,
        cid: u64,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
    ) -> VsockHandler {
        VsockHandler {
            rx: queues.0,
            tx: queues.1,
            listener,
            socket,
            cid,
            mem,
            interrupt,
            counters,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            buf: vec![0; HDR_LEN + MAX_PAYLOAD],
            broken: false,
        }
    }

    /// Where the receive and transmit queues are (a snapshot; the worker is stopped).
    pub fn positions(&self) -> Vec<crate::virtio::persist::QueuePosition> {
        [&self.rx, &self.tx]
            .into_iter()
            .flatten()
            .map(|q| crate::virtio::persist::QueuePosition {
                index: q.index,
                next_avail: q.queue.next_avail(),
                next_used: q.queue.next_used(),
            })
            .collect()
    }

    /// What the backend holds for the guest now.
    #[cfg(any(test, feature = "fuzz"))]
    pub fn backlog(&self) -> Backlog {
        let mut b = Backlog {
            connections: self.conns.len(),
            control: self.control.len(),
            handshakes: self.handshakes.len(),
            ..Backlog::default()
        };
        for c in self.conns.values() {
            let (guest, line) = c.pending_bytes();
            b.guest_bytes += guest;
            b.max_guest_bytes = b.max_guest_bytes.max(guest);
            b.line_bytes += line;
        }
        b
    }

    /// The interrupt the worker raises (to start it again).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        Arc::clone(&self.interrupt)
    }

    fn fail(&mut self, _e: BrokenQueue) {
        if !self.broken {
            self.broken = true;
            self.counters.inc(metrics::QUEUE_BROKEN);
            self.interrupt.set_needs_reset();
        }
    }

    fn queue_control(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_PENDING_CONTROL {
            self.counters.inc(metrics::CONTROL_DROPPED);
            return;
        }
        self.control.push_back(Control { key, op, flags });
    }

    /// Drops connection `key` (if any) and tells the guest with RST.
    fn reset(&mut self, key: Key, ops: &mut EventOps) {
        self.remove(key, ops);
        self.counters.inc(metrics::RESETS);
        self.queue_control(key, op::RST, 0);
    }

    fn remove(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(mut c) = self.conns.remove(&key) {
            if !c.registered.is_empty() {
                let _ = ops.remove(Events::new_raw(c.stream.as_raw_fd(), c.registered));
                c.registered = EventSet::empty();
            }
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
    }

    fn insert(&mut self, key: Key, mut c: Connection, ops: &mut EventOps) {
        sync_interest(&mut c, ops);
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
    }

    /// Reads every pending transmit chain and acts on its packet.
    pub fn process_tx(&mut self, ops: &mut EventOps) {
        let mut served = 0usize;
        let limit = 4 * usize::from(super::QUEUE_SIZE);
        while !self.broken {
            let packet = {
                let Some(tx) = self.tx.as_mut() else { return };
                let chain = match tx.pop(&self.mem) {
                    Ok(Some(c)) => c,
                    Ok(None) => match tx.rearm(&self.mem) {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => return self.fail(e),
                    },
                    Err(e) => return self.fail(e),
                };
                let head = chain.head_index();
                let packet = read_packet(chain, &self.mem, &mut self.buf);
                if let Err(e) = tx.push_used(&self.mem, head, 0) {
                    return self.fail(e);
                }
                packet
            };
            served += 1;
            self.counters.inc(metrics::TX_PACKETS);
            match packet {
                Some((h, len)) => {
                    let mut payload = std::mem::take(&mut self.buf);
                    self.on_guest_packet(h, &payload[HDR_LEN..HDR_LEN + len], ops);
                    std::mem::swap(&mut self.buf, &mut payload);
                }
                None => self.counters.inc(metrics::BAD_PACKETS),
            }
            if served >= limit {
                if let Some(tx) = self.tx.as_ref() {
                    let _ = tx.notify.write(1);
                }
                break;
            }
        }
        if served > 0 {
            if let Some(tx) = self.tx.as_mut() {
                tx.signal_used(&self.mem, self.interrupt.as_ref());
            }
        }
        self.process_rx(ops);
    }

    /// Acts on one packet from the guest.
    fn on_guest_packet(&mut self, h: Header, payload: &[u8], ops: &mut EventOps) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            self.counters.inc(metrics::BAD_PACKETS);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.kind != TYPE_STREAM {
            self.counters.inc(metrics::BAD_PACKETS);
            if h.op != op::RST {
                self.reset(key, ops);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match h.op {
            op::REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset(key, ops);
                } else {
                    self.guest_connect(key, h, ops);
                }
            }
            op::RESPONSE => self.on_response(key, ops),
            op::RW => self.on_data(key, payload, ops),
            op::CREDIT_UPDATE => {
                if let Some(c) = self.conns.get_mut(&key) {
                    sync_interest(c, ops);
                }
            }
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.queue_control(key, op::CREDIT_UPDATE, 0);
                } else {
                    self.reset(key, ops);
                }
            }
            op::SHUTDOWN => self.on_shutdown(key, h.flags, ops),
            op::RST => self.remove(key, ops),
            _ => {
                self.counters.inc(metrics::UNKNOWN_OPS);
                self.reset(key, ops);
            }
        }
    }

    /// The guest connects to host port `key.0`: the listener at `<socket>_<port>`. It is
    /// refused (RST) when nothing listens there or its backlog is full.
    fn guest_connect(&mut self, key: Key, h: Header, ops: &mut EventOps) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.reset(key, ops);
        }
        let mut path = self.socket.clone().into_os_string();
        path.push(format!("_{}", key.0));
        // Not blocking: a listener whose backlog is full refuses (RST) instead of stopping
        // the worker until the host accepts.
        let Ok(stream) = super::connection::connect(&path) else {
            return self.reset(key, ops);
        };
        let mut c = Connection::new(stream, State::Established);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        self.counters.inc(metrics::CONNECTIONS);
        self.insert(key, c, ops);
        self.queue_control(key, op::RESPONSE, 0);
    }

    fn on_response(&mut self, key: Key, ops: &mut EventOps) {
        match self.conns.get_mut(&key) {
            Some(c) if c.state == State::Connecting => {
                c.state = State::Established;
                c.push_host_line(format!("OK {}\n", key.0).as_bytes());
                let flushed = c.flush();
                sync_interest(c, ops);
                self.counters.inc(metrics::CONNECTIONS);
                if flushed.is_err() {
                    self.reset(key, ops);
                }
            }
            _ => self.reset(key, ops),
        }
    }

    fn on_data(&mut self, key: Key, payload: &[u8], ops: &mut EventOps) {
        let Some(c) = self
            .conns
            .get_mut(&key)
            .filter(|c| c.state == State::Established)
        else {
            return self.reset(key, ops);
        };
        match c.take_from_guest(payload) {
            Ok(()) => {
                self.counters.add(metrics::TX_BYTES, payload.len() as u64);
                sync_interest(c, ops);
                self.maybe_credit_update(key);
            }
            Err(Refused::Credit) | Err(Refused::Closed) => {
                self.counters.inc(metrics::CREDIT_VIOLATIONS);
                self.reset(key, ops);
            }
        }
    }

    fn on_shutdown(&mut self, key: Key, flags: u32, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return self.reset(key, ops);
        };
        if flags & SHUTDOWN_SEND != 0 {
            c.guest_shut_send = true;
        }
        let both = flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV;
        if both || (c.guest_shut_send && c.host_eof) {
            // Best effort: what the host stream takes now; the rest goes with the reset.
            let _ = c.flush();
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            self.remove(key, ops);
            self.counters.inc(metrics::RESETS);
            self.queue_control(key, op::RST, 0);
        } else if c.guest_shut_send && !c.has_pending() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Tells the guest about freed credit when it believes it is running short
    /// ([`Connection::needs_credit_update`]).
    fn maybe_credit_update(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.needs_credit_update() {
            c.fwd_cnt_told = c.fwd_cnt;
            self.queue_control(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// Sends control packets and host data into receive buffers while both exist. A stream
    /// that signalled readable stays in the epoll set while it is served; one left waiting
    /// (no receive buffers, the batch limit, a broken queue) leaves it until it is served, so
    /// that a level-triggered readable stream cannot make the worker spin.
    pub fn process_rx(&mut self, ops: &mut EventOps) {
        self.deliver_rx(ops);
        for i in 0..self.ready.len() {
            if let Some(c) = self.conns.get_mut(&self.ready[i]) {
                sync_interest(c, ops);
            }
        }
    }

    fn deliver_rx(&mut self, ops: &mut EventOps) {
        let mut delivered = 0usize;
        while !self.broken && (!self.control.is_empty() || !self.ready.is_empty()) {
            let Some(rx) = self.rx.as_mut() else { return };
            let chain = match rx.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => match rx.rearm(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return self.fail(e),
                },
                Err(e) => return self.fail(e),
            };
            let head = chain.head_index();
            let segs: Vec<_> = chain
                .writable()
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let room: usize = segs.iter().map(|s| s.1).fold(0, usize::saturating_add);
            if room < HDR_LEN {
                self.counters.inc(metrics::BAD_PACKETS);
                if let Err(e) = rx.push_used(&self.mem, head, 0) {
                    return self.fail(e);
                }
                continue;
            }
            match self.next_packet(room - HDR_LEN, ops) {
                Some(len) => {
                    let written = write_segments(&self.mem, &self.buf[..HDR_LEN + len], &segs);
                    let Some(rx) = self.rx.as_mut() else { return };
                    if let Err(e) = rx.push_used(&self.mem, head, written as u32) {
                        return self.fail(e);
                    }
                    self.counters.inc(metrics::RX_PACKETS);
                    delivered += 1;
                    if delivered >= 4 * usize::from(super::QUEUE_SIZE) {
                        // Come back after the other events.
                        let _ = rx.notify.write(1);
                        break;
                    }
                }
                None => {
                    let Some(rx) = self.rx.as_mut() else { return };
                    let back = rx.queue.next_avail().wrapping_sub(1);
                    rx.queue.set_next_avail(back);
                }
            }
        }
        if delivered > 0 {
            if let Some(rx) = self.rx.as_mut() {
                rx.signal_used(&self.mem, self.interrupt.as_ref());
            }
        }
        if !self.broken && self.control.is_empty() && self.ready.is_empty() {
            self.quiet_rx_while_buffers();
        }
    }

    /// Everything was delivered: while receive buffers remain, asks the driver not to notify
    /// about new ones (VRING_USED_F_NO_NOTIFY; with EVENT_IDX `avail_event` stays behind), as
    /// the net device does: the next packet finds them. When they run out, `deliver_rx`'s
    /// `rearm` asks for notifications again before it waits for one.
    fn quiet_rx_while_buffers(&mut self) {
        let Some(rx) = self.rx.as_mut() else { return };
        if rx.has_available(&self.mem).unwrap_or(false) {
            let _ = rx.queue.disable_notification(&self.mem);
        }
    }

    /// Builds the next packet for the guest in `buf` (header, then at most `room` payload
    /// bytes); returns its payload length, or None when there was nothing to send after all.
    fn next_packet(&mut self, room: usize, ops: &mut EventOps) -> Option<usize> {
        if let Some(ctl) = self.control.pop_front() {
            let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&ctl.key) {
                Some(c) => {
                    c.fwd_cnt_told = c.fwd_cnt;
                    (CONN_BUF, c.fwd_cnt)
                }
                None => (0, 0),
            };
            self.write_header(ctl.key, ctl.op, ctl.flags, 0, (buf_alloc, fwd_cnt));
            return Some(0);
        }
        let key = self.ready.pop_front()?;
        let c = self.conns.get_mut(&key)?;
        let want = room.min(MAX_PAYLOAD).min(c.peer_credit() as usize);
        if want == 0 {
            c.rx_ready = false;
            sync_interest(c, ops);
            return None;
        }
        match c.read_host(&mut self.buf[HDR_LEN..HDR_LEN + want]) {
            Ok(0) => {
                c.host_eof = true;
                c.rx_ready = false;
                sync_interest(c, ops);
                self.queue_control(key, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                None
            }
            Ok(n) => {
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                c.fwd_cnt_told = c.fwd_cnt;
                let counts = (CONN_BUF, c.fwd_cnt);
                if n < want {
                    // A short read emptied the stream: no second read to hear EAGAIN; the
                    // epoll set says when more comes.
                    c.rx_ready = false;
                    sync_interest(c, ops);
                } else {
                    self.ready.push_back(key);
                }
                self.counters.add(metrics::RX_BYTES, n as u64);
                self.write_header(key, op::RW, 0, n, counts);
                Some(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.rx_ready = false;
                sync_interest(c, ops);
                None
            }
            Err(_) => {
                self.reset(key, ops);
                None
            }
        }
    }

    fn write_header(&mut self, key: Key, op: u16, flags: u32, len: usize, credit: (u32, u32)) {
        let h = Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: len as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: credit.0,
            fwd_cnt: credit.1,
        };
        self.buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
    }

    /// New host connections: each must send `CONNECT <port>\n` first.
    fn on_listener(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES || s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = s.as_raw_fd();
                    if ops.add(Events::new_raw(fd, EventSet::IN)).is_ok() {
                        self.handshakes.insert(fd, (s, Vec::new()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// A host connection sent (part of) its `CONNECT` line.
    fn on_handshake(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some((stream, line)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: whatever follows the line is the connection's data.
        let done = loop {
            match stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(true),
                Ok(_) if line.len() >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(false),
                Err(_) => break Err(()),
            }
        };
        if done == Ok(false) {
            return;
        }
        let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
        let Some((stream, line)) = self.handshakes.remove(&fd) else {
            return;
        };
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let (Ok(true), Some(port)) = (done, port) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let key = (self.next_port, port);
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_HOST_PORT);
        self.remove(key, ops);
        self.insert(key, Connection::new(stream, State::Connecting), ops);
        self.queue_control(key, op::REQUEST, 0);
        self.process_rx(ops);
    }

    /// A connection's stream is readable or writable (or hung up).
    fn on_stream(&mut self, key: Key, set: EventSet, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            if c.flush().is_err() {
                return self.reset(key, ops);
            }
            if c.guest_shut_send && !c.has_pending() {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            sync_interest(c, ops);
            self.maybe_credit_update(key);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && c.registered.contains(EventSet::IN)
            && !c.rx_ready
        {
            // It stays in the epoll set while process_rx serves it (see there).
            c.rx_ready = true;
            self.ready.push_back(key);
        }
        self.process_rx(ops);
    }
}

/// Gathers one transmit chain: the header and the payload its `len` announces, which must be
/// exactly what the chain holds. None for a malformed packet.
fn read_packet(chain: Chain<'_>, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Option<(Header, usize)> {
    let mut len = 0usize;
    for d in chain.readable() {
        let n = d.len() as usize;
        if n > buf.len() - len {
            return None;
        }
        mem.read_slice(&mut buf[len..len + n], d.addr()).ok()?;
        len += n;
    }
    let hdr: &[u8; HDR_LEN] = buf.get(..HDR_LEN)?.try_into().ok()?;
    let h = Header::parse(hdr);
    let payload = len - HDR_LEN;
    (h.len as usize == payload).then_some((h, payload))
}

/// Writes `bytes` across the chain's writable segments; returns the bytes written.
fn write_segments(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    segs: &[(vm_memory::GuestAddress, usize)],
) -> usize {
    let mut off = 0;
    for &(addr, len) in segs {
        if off >= bytes.len() {
            break;
        }
        let n = len.min(bytes.len() - off);
        if mem.write_slice(&bytes[off..off + n], addr).is_err() {
            break;
        }
        off += n;
    }
    off
}

impl MutEventSubscriber for VsockHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let notify_of = |q: &Option<ActiveQueue>| q.as_ref().map(|q| q.notify.as_raw_fd());
        if Some(fd) == notify_of(&self.tx) {
            if let Some(tx) = self.tx.as_ref() {
                let _ = tx.notify.read();
            }
            self.process_tx(ops);
        } else if Some(fd) == notify_of(&self.rx) {
            if let Some(rx) = self.rx.as_ref() {
                let _ = rx.notify.read();
            }
            self.process_rx(ops);
        } else if fd == self.listener.as_raw_fd() {
            self.on_listener(ops);
        } else if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd, ops);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.on_stream(key, events.event_set(), ops);
        } else {
            // An fd that is no longer ours: stop watching it.
            let _ = ops.remove(events);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut ok = ops.add(Events::new(&self.listener, EventSet::IN)).is_ok();
        for q in [&self.rx, &self.tx].into_iter().flatten() {
            ok &= ops.add(Events::new(&q.notify, EventSet::IN)).is_ok();
        }
        // A handler started again after a snapshot: its streams into the fresh epoll set.
        for fd in self.handshakes.keys() {
            ok &= ops.add(Events::new_raw(*fd, EventSet::IN)).is_ok();
        }
        for c in self.conns.values_mut() {
            c.registered = EventSet::empty();
            sync_interest(c, ops);
        }
        if !ok {
            self.broken = true;
            self.interrupt.set_needs_reset();
            return;
        }
        self.process_tx(ops);
    }
}
