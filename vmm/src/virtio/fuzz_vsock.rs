//! The harness of the cargo-fuzz target `vsock_queue` (vmm/fuzz/, outside the workspace) and
//! of the test that replays its seeds: arbitrary bytes become virtio-vsock's transmit queue
//! (guest packets: headers and payloads in arbitrary descriptor chains) and receive queue
//! (buffers the device fills), through virtio-queue's mock queue, served by a
//! [`VsockHandler`] in an `EventManager` as the device's worker runs it, with host sockets in
//! a temporary directory: the device's socket `PATH` and listeners on `PATH_1024` and
//! `PATH_1025`, so that guest REQUESTs connect and data reaches host streams.
//!
//! Input layout (short inputs are zero-padded):
//! - byte 0: bits 0-3 the transmit queue size (`1 << (b % 16 % 9)`, 1 to 256), bit 4 event
//!   index (both queues), bits 5-6 the rounds after activation (1 to 4);
//! - byte 1: bits 0-3 the receive queue size, as byte 0's;
//! - bytes 2-3, 4-5: the transmit and receive queues' first `avail.idx` (little-endian);
//! - bytes 6-21: 4 bytes per round: chains the guest adds to the transmit and to the receive
//!   queue (`avail.idx` grows by them; the ring's entries repeat), what the host does before
//!   the round ([`host`] bits) and a length for it;
//! - then 16 bytes per transmit descriptor, 2 per transmit available-ring entry, the same
//!   for the receive queue;
//! - the rest is copied into guest memory at [`DATA`] (headers, payloads, indirect tables).
//!
//! Round 0 is the activation (the handler's `init` serves the transmit queue); every round
//! then kicks both queues and runs the event loop until no event is left. Guest memory has a
//! hole (two regions), so descriptors can point below, inside, between and beyond RAM.
//!
//! What the device must keep true whatever the input, checked after every round: no panic;
//! no access outside guest memory (the mapping would fault); at most one used element per
//! available entry taken; every used id below the queue size and one the driver made
//! available; a used length never larger than the chain's writable bytes; nothing served
//! after DEVICE_NEEDS_RESET; and what the backend holds for the guest bounded: at most
//! [`CONN_BUF`] guest bytes per connection ([`Connection::take_from_guest`]'s credit check),
//! so at most connections x `CONN_BUF` in all, at most [`MAX_CONNECTIONS`] connections,
//! [`MAX_PENDING_CONTROL`] control packets and [`MAX_HANDSHAKES`] handshakes.
//!
//! The used ring's entries are checked against the chains as the round began (a copy of
//! guest memory): a round in which the receive buffers the guest offered overlap descriptor
//! tables, available or used rings (the device's writes could change what it reads next)
//! is served and checked for everything but the used ring's contents.
//!
//! [`Connection::take_from_guest`]: super::vsock
//! [`CONN_BUF`]: super::vsock::CONN_BUF

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventManager, SubscriberId, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::fuzz::{self, byte, le16, overlaps, Interrupt, Walk};
use super::vsock::packet::{Header, HDR_LEN};
use super::vsock::{
    metrics, Backlog, VsockHandler, CONN_BUF, MAX_CONNECTIONS, MAX_HANDSHAKES, MAX_PENDING_CONTROL,
    RX_QUEUE, TX_QUEUE,
};
use super::{ActiveQueue, Queue, QueueT};
use crate::counters::Counters;

/// Where the input's tail lands in guest memory.
pub const DATA: u64 = 0x1000;
/// The transmit and receive queues' rings.
const TX_RINGS: u64 = 0x6_0000;
const RX_RINGS: u64 = 0x7_0000;
/// Guest RAM: [0, LOW_END) and [HIGH, HIGH + HIGH_LEN).
const LOW_END: u64 = 0x8_0000;
const HIGH: u64 = 0x10_0000;
const HIGH_LEN: usize = 0x4_0000;
/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// The host ports with a listener.
pub const PORTS: [u32; 2] = [1024, 1025];
/// The longest `OK <port>\n` line.
const MAX_OK_LINE: usize = "OK 4294967295\n".len();
/// Event-loop passes per round at most (a worker that still has events after them is
/// checked all the same: it re-signals itself after a batch).
const PASSES: usize = 64;
/// The port listeners' backlog.
const BACKLOG: i32 = 4;
/// Host streams the harness keeps at most.
const HOST_STREAMS: usize = 16;

/// What the host does before a round (a round's third byte).
pub mod host {
    /// Accept the connections waiting on the port listeners.
    pub const ACCEPT: u8 = 1;
    /// Write `len * 257` bytes to every host stream.
    pub const WRITE: u8 = 2;
    /// Read what every host stream holds.
    pub const READ: u8 = 4;
    /// Shut the host streams' writing side.
    pub const SHUT_WRITE: u8 = 8;
    /// Close the host streams.
    pub const CLOSE: u8 = 16;
    /// Connect to the device's socket and send `CONNECT <len>\n`.
    pub const CONNECT: u8 = 32;
    /// Connect to the device's socket and send a bad line.
    pub const BAD_CONNECT: u8 = 64;
}

/// What one input did (for the seed replay test).
#[derive(Debug, Default)]
pub struct VsockRun {
    /// Used elements in the transmit and the receive queue.
    pub tx_used: u16,
    /// See `tx_used`.
    pub rx_used: u16,
    /// The ops of the packets in the receive queue's used buffers (rounds checked in full).
    pub rx_ops: Vec<u16>,
    /// Bytes the host streams read.
    pub host_read: usize,
    /// Connections the device counted as established.
    pub connections: u64,
    /// The device asked for a reset.
    pub needs_reset: bool,
    /// Rounds run (the activation included).
    pub rounds: usize,
    /// Rounds whose used rings were checked in full.
    pub checked_rounds: usize,
    /// The largest backlog seen after a round.
    pub max_backlog: Backlog,
}

/// Guest memory as a round began.
struct Snap {
    low: Vec<u8>,
    high: Vec<u8>,
}

impl Snap {
    fn take(mem: &GuestMemoryMmap) -> Snap {
        let mut low = vec![0u8; LOW_END as usize];
        let mut high = vec![0u8; HIGH_LEN];
        let _ = mem.read_slice(&mut low, GuestAddress(0));
        let _ = mem.read_slice(&mut high, GuestAddress(HIGH));
        Snap { low, high }
    }

    /// `len` bytes at `addr` if they lie in one region.
    fn get(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if end <= LOW_END {
            return self.low.get(addr as usize..end as usize);
        }
        let off = addr.checked_sub(HIGH)? as usize;
        self.high.get(off..off.checked_add(len)?)
    }
}

/// Chain `head` of the table at `table` walked in the round's snapshot (`fuzz::walk`).
fn walk(snap: &Snap, table: u64, size: u16, head: u16) -> Walk {
    fuzz::walk(
        |at| snap.get(at, 16).and_then(|d| d.try_into().ok()),
        table,
        size,
        head,
    )
}

/// One queue's rings and the chains its available window holds as a round begins.
struct Rings {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Heads in the window, walked.
    walks: HashMap<u16, Walk>,
}

impl Rings {
    fn avail_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Walks the chains between `next_avail` and `avail.idx` in `snap`.
    fn window(&mut self, snap: &Snap, next_avail: u16) {
        self.walks.clear();
        let idx = snap
            .get(self.avail + 2, 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        let count = idx.wrapping_sub(next_avail).min(self.size);
        for i in 0..count {
            let slot = u64::from(next_avail.wrapping_add(i) % self.size);
            let Some(b) = snap.get(self.avail + 4 + 2 * slot, 2) else {
                continue;
            };
            let head = u16::from_le_bytes([b[0], b[1]]);
            if !self.walks.contains_key(&head) {
                let w = walk(snap, self.desc, self.size, head);
                self.walks.insert(head, w);
            }
        }
    }
}

/// The temporary directory with the device's socket and the port listeners.
struct Host {
    dir: PathBuf,
    socket: PathBuf,
    ports: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    read: usize,
}

impl Host {
    fn new() -> Option<(Host, UnixListener)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("strata-vsock-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let socket = dir.join("v.sock");
        let listener = UnixListener::bind(&socket).ok()?;
        listener.set_nonblocking(true).ok()?;
        let mut ports = Vec::new();
        for p in PORTS {
            let l = UnixListener::bind(port_path(&socket, p)).ok()?;
            l.set_nonblocking(true).ok()?;
            // A host program's small backlog (socat's is 5): a guest can fill it.
            // SAFETY: listen() on a listening socket we own only changes its backlog.
            if unsafe { libc::listen(l.as_raw_fd(), BACKLOG) } != 0 {
                return None;
            }
            ports.push(l);
        }
        let host = Host {
            dir,
            socket,
            ports,
            streams: Vec::new(),
            read: 0,
        };
        Some((host, listener))
    }

    /// Does what `act` asks before a round.
    fn act(&mut self, act: u8, len: u8) {
        if act & host::ACCEPT != 0 {
            for l in &self.ports {
                while self.streams.len() < HOST_STREAMS {
                    let Ok((s, _)) = l.accept() else { break };
                    if s.set_nonblocking(true).is_ok() {
                        self.streams.push(s);
                    }
                }
            }
        }
        if act & (host::CONNECT | host::BAD_CONNECT) != 0 && self.streams.len() < HOST_STREAMS {
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                let line = if act & host::CONNECT != 0 {
                    format!("CONNECT {len}\n")
                } else {
                    format!("CONNECT x{len}\n")
                };
                if s.set_nonblocking(true).is_ok() && s.write_all(line.as_bytes()).is_ok() {
                    self.streams.push(s);
                }
            }
        }
        if act & host::WRITE != 0 {
            let bytes = vec![len; usize::from(len) * 257];
            for s in &mut self.streams {
                let _ = s.write(&bytes);
            }
        }
        if act & host::READ != 0 {
            let mut buf = vec![0u8; 64 << 10];
            for s in &mut self.streams {
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.read += n;
                }
            }
        }
        if act & host::SHUT_WRITE != 0 {
            for s in &self.streams {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
        if act & host::CLOSE != 0 {
            self.streams.clear();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `<socket>_<port>`: where a guest connecting to host port `port` arrives.
fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut p = socket.to_path_buf().into_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Lays one queue out from the input at `at`; returns its rings and the queue.
fn make_queue(
    mem: &GuestMemoryMmap,
    data: &[u8],
    at: usize,
    base: u64,
    size: u16,
    avail_idx: u16,
    event_idx: bool,
) -> Option<(Rings, Queue)> {
    let (vq, used) = fuzz::mock_queue(mem, base, size, data, at);
    vq.avail().idx().store(avail_idx);
    let mut queue = vq.create_queue::<Queue>().ok()?;
    queue.try_set_used_ring_address(used).ok()?;
    queue.set_event_idx(event_idx);
    let rings = Rings {
        size,
        desc: vq.desc_table_addr().0,
        avail: vq.avail_addr().0,
        used: used.0,
        walks: HashMap::new(),
    };
    Some((rings, queue))
}

/// Writing to a host stream the peer closed must fail with EPIPE, not kill the process (the
/// VMM's Rust `main` ignores SIGPIPE; libFuzzer's `main` does not).
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting SIGPIPE's disposition to SIG_IGN installs no handler code and
        // touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// The queue positions the device holds: (next_avail, next_used) for TX and RX.
fn positions(h: &VsockHandler) -> [(u16, u16); 2] {
    let pos = |q: &Option<ActiveQueue>| {
        q.as_ref()
            .map_or((0, 0), |q| (q.queue.next_avail(), q.queue.next_used()))
    };
    [pos(&h.tx), pos(&h.rx)]
}

fn used_idx(mem: &GuestMemoryMmap, rings: &Rings) -> u16 {
    mem.read_obj(GuestAddress(rings.used + 2)).unwrap_or(0)
}

/// Reads the packet header a used receive buffer starts with.
fn rx_header(mem: &GuestMemoryMmap, w: &Walk) -> Option<Header> {
    let mut hdr = [0u8; HDR_LEN];
    let mut off = 0;
    for &(addr, len) in &w.segs {
        if off == HDR_LEN {
            break;
        }
        let n = (len as usize).min(HDR_LEN - off);
        mem.read_slice(&mut hdr[off..off + n], GuestAddress(addr))
            .ok()?;
        off += n;
    }
    (off == HDR_LEN).then(|| Header::parse(&hdr))
}

/// Checks the used elements one queue added in a round against the chains it could take.
fn check_used(
    mem: &GuestMemoryMmap,
    rings: &Rings,
    from: u16,
    to: u16,
    rx: bool,
    run: &mut VsockRun,
) {
    assert_eq!(
        used_idx(mem, rings),
        to,
        "used.idx differs from the device's next_used"
    );
    let mut i = from;
    while i != to {
        let at = rings.used + 4 + 8 * u64::from(i % rings.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
        assert!(
            id < u32::from(rings.size),
            "used id {id} with queue size {}",
            rings.size
        );
        let w = rings
            .walks
            .get(&(id as u16))
            .unwrap_or_else(|| panic!("used id {id} was not made available"));
        assert!(
            u64::from(len) <= w.writable,
            "used length {len} beyond the chain's {} writable bytes",
            w.writable
        );
        if rx && len as usize >= HDR_LEN {
            if let Some(h) = rx_header(mem, w) {
                run.rx_ops.push(h.op);
            }
        }
        i = i.wrapping_add(1);
    }
}

/// Checks what the backend holds for the guest against the bounds the code enforces.
fn check_backlog(b: Backlog, run: &mut VsockRun) {
    assert!(b.connections <= MAX_CONNECTIONS, "{b:?}");
    assert!(
        b.max_guest_bytes <= CONN_BUF as usize,
        "a connection buffers {} guest bytes, beyond {CONN_BUF}: {b:?}",
        b.max_guest_bytes
    );
    assert!(
        b.guest_bytes <= b.connections * CONN_BUF as usize,
        "{} guest bytes buffered for {} connections: {b:?}",
        b.guest_bytes,
        b.connections
    );
    assert!(b.line_bytes <= b.connections * MAX_OK_LINE, "{b:?}");
    assert!(b.control <= MAX_PENDING_CONTROL, "{b:?}");
    assert!(b.handshakes <= MAX_HANDSHAKES, "{b:?}");
    if b.guest_bytes >= run.max_backlog.guest_bytes {
        run.max_backlog = b;
    }
}

/// (next_avail, next_used) of the transmit and the receive queue.
type Positions = [(u16, u16); 2];

/// One input's device, guest memory and host, between rounds.
struct Harness {
    mem: GuestMemoryMmap,
    tx: Rings,
    rx: Rings,
    kicks: [EventFd; 2],
    host: Host,
    manager: EventManager<VsockHandler>,
    id: Option<SubscriberId>,
    handler: Option<VsockHandler>,
    interrupt: Arc<Interrupt>,
    counters: Arc<Counters>,
    /// The queues' positions and used indexes when DEVICE_NEEDS_RESET was first seen.
    broken_at: Option<(Positions, [u16; 2])>,
}

/// Where the input's parts start.
const ROUNDS_AT: usize = 6;
const TX_AT: usize = ROUNDS_AT + 16;

impl Harness {
    /// Lays the input out: guest memory, both queues, the host sockets, the handler.
    fn new(data: &[u8]) -> Option<Harness> {
        let flags = byte(data, 0);
        let tx_size = 1u16 << (flags % 16 % 9);
        let rx_size = 1u16 << (byte(data, 1) % 16 % 9);
        let event_idx = flags & 0x10 != 0;
        let tx_avail = le16(data, 2);
        let rx_avail = le16(data, 4);
        let rx_at = TX_AT + 18 * usize::from(tx_size);
        let tail_at = rx_at + 18 * usize::from(rx_size);

        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), LOW_END as usize),
            (GuestAddress(HIGH), HIGH_LEN),
        ])
        .ok()?;
        if let Some(tail) = data.get(tail_at..) {
            let room = (TX_RINGS - DATA) as usize;
            let _ = mem.write_slice(&tail[..tail.len().min(room)], GuestAddress(DATA));
        }
        let (tx, tx_queue) = make_queue(&mem, data, TX_AT, TX_RINGS, tx_size, tx_avail, event_idx)?;
        let (rx, rx_queue) = make_queue(&mem, data, rx_at, RX_RINGS, rx_size, rx_avail, event_idx)?;
        let tx_notify = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let rx_notify = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let kicks = [tx_notify.try_clone().ok()?, rx_notify.try_clone().ok()?];
        let (host, listener) = Host::new()?;
        let manager = EventManager::<VsockHandler>::new().ok()?;
        let interrupt = Arc::new(Interrupt::default());
        let counters = Counters::new(metrics::NAMES);
        let queue = |index, queue, notify| {
            Some(ActiveQueue {
                index,
                queue,
                notify,
            })
        };
        let handler = VsockHandler::new(
            (
                queue(RX_QUEUE, rx_queue, rx_notify),
                queue(TX_QUEUE, tx_queue, tx_notify),
            ),
            listener,
            host.socket.clone(),
            GUEST_CID,
            mem.clone(),
            interrupt.clone(),
            counters.clone(),
        );
        Some(Harness {
            mem,
            tx,
            rx,
            kicks,
            host,
            manager,
            id: None,
            handler: Some(handler),
            interrupt,
            counters,
            broken_at: None,
        })
    }

    fn positions(&mut self) -> Option<Positions> {
        let h = self.manager.subscriber_mut(self.id?).ok()?;
        Some(positions(h))
    }

    /// Round `round` of `data`: round 0 activates the device; later ones let the host act
    /// and the guest add chains first. Then the device runs until it has no event left.
    fn round(&mut self, data: &[u8], round: usize, run: &mut VsockRun) -> Option<()> {
        if round > 0 {
            let r = ROUNDS_AT + 4 * (round - 1);
            self.host.act(byte(data, r + 2), byte(data, r + 3));
            for (rings, add) in [(&self.tx, byte(data, r)), (&self.rx, byte(data, r + 1))] {
                let at = GuestAddress(rings.avail + 2);
                let idx: u16 = self.mem.read_obj(at).unwrap_or(0);
                let _ = self.mem.write_obj(idx.wrapping_add(u16::from(add)), at);
            }
        }
        let before = self.positions().unwrap_or([(0, 0); 2]);
        let snap = Snap::take(&self.mem);
        self.tx.window(&snap, before[0].0);
        self.rx.window(&snap, before[1].0);
        let aliased = aliased(&self.tx, &self.rx);

        match self.handler.take() {
            Some(h) => self.id = Some(self.manager.add_subscriber(h)),
            None => {
                for k in &self.kicks {
                    let _ = k.write(1);
                }
            }
        }
        for _ in 0..PASSES {
            match self.manager.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let h = self.manager.subscriber_mut(self.id?).ok()?;
        let after = positions(h);
        check_backlog(h.backlog(), run);
        self.check_round(before, after, aliased, run);
        Some(())
    }

    /// The rules after a round that took the queues from `before` to `after`.
    fn check_round(
        &mut self,
        before: Positions,
        after: Positions,
        aliased: bool,
        run: &mut VsockRun,
    ) {
        let used_mem = [used_idx(&self.mem, &self.tx), used_idx(&self.mem, &self.rx)];
        for (q, name) in [(0, "transmit"), (1, "receive")] {
            let (next_avail, next_used) = after[q];
            assert!(
                next_used <= next_avail,
                "{name} queue: {next_used} used elements for {next_avail} chains taken"
            );
        }
        if let Some((pos, used)) = self.broken_at {
            assert_eq!(after, pos, "a queue served after DEVICE_NEEDS_RESET");
            assert_eq!(
                used_mem, used,
                "a used ring written after DEVICE_NEEDS_RESET"
            );
        } else if self.interrupt.needs_reset.load(Ordering::SeqCst) {
            self.broken_at = Some((after, used_mem));
        }
        if !aliased {
            check_used(&self.mem, &self.tx, before[0].1, after[0].1, false, run);
            check_used(&self.mem, &self.rx, before[1].1, after[1].1, true, run);
            run.checked_rounds += 1;
        }
        run.rounds += 1;
        run.tx_used = after[0].1;
        run.rx_used = after[1].1;
    }
}

/// Runs one input; panics only when the device broke one of the rules above.
pub fn vsock_queue(data: &[u8]) -> VsockRun {
    ignore_sigpipe();
    let mut run = VsockRun::default();
    let rounds = 1 + usize::from((byte(data, 0) >> 5) & 3);
    let Some(mut h) = Harness::new(data) else {
        return run;
    };
    for round in 0..=rounds {
        if h.round(data, round, &mut run).is_none() {
            break;
        }
    }
    run.needs_reset = h.interrupt.needs_reset.load(Ordering::SeqCst);
    run.connections = h.counters.get(metrics::CONNECTIONS);
    let Harness {
        manager, mut host, ..
    } = h;
    drop(manager);
    host.act(host::READ, 0);
    run.host_read = host.read;
    run
}

/// Whether the device's writes this round could change what it reads: receive buffers over
/// descriptors, available or used rings, or used rings over descriptors or available rings.
fn aliased(tx: &Rings, rx: &Rings) -> bool {
    let mut tables: Vec<(u64, u64)> = Vec::new();
    for rings in [tx, rx] {
        tables.extend(rings.walks.values().flat_map(|w| w.reads.iter().copied()));
        tables.push((rings.avail, rings.avail_len()));
    }
    let used = [(tx.used, tx.used_len()), (rx.used, rx.used_len())];
    let segs: Vec<(u64, u64)> = rx
        .walks
        .values()
        .flat_map(|w| w.segs.iter().copied())
        .collect();
    let mut all = tables.clone();
    all.extend(used);
    overlaps(&segs, &all) || overlaps(&used, &tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::packet::op;

    /// The seeds and fixed crashes in vmm/fuzz/seeds/vsock_queue, replayed (CI runs no fuzzer).
    #[test]
    fn test_vsock_queue_fuzz_seeds_replay_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/vsock_queue");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("read the seed directory") {
            let path = entry.expect("seed entry").path();
            let data = std::fs::read(&path).expect("read a seed");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");

            let run = vsock_queue(&data);

            // Well-formed seeds are served (make_seeds.py writes them).
            let ops = &run.rx_ops;
            match name {
                "request-rw" => {
                    assert_eq!(ops.first(), Some(&op::RESPONSE), "seed {name}: {run:?}");
                    assert_eq!(run.host_read, 3000, "seed {name}: {run:?}");
                    assert!(ops.contains(&op::RW), "seed {name}: {run:?}");
                }
                "request-shutdown" => {
                    assert_eq!(ops.first(), Some(&op::RESPONSE), "seed {name}: {run:?}");
                    assert!(ops.contains(&op::RST), "seed {name}: {run:?}");
                }
                "request-rst" => {
                    assert_eq!(ops, &[op::RESPONSE], "seed {name}: {run:?}");
                }
                "unknown-op" | "request-no-listener" => {
                    assert_eq!(ops, &[op::RST], "seed {name}: {run:?}");
                }
                "bad-len" => {
                    assert!(ops.is_empty(), "seed {name}: {run:?}");
                    assert_eq!(run.tx_used, 1, "seed {name}: {run:?}");
                }
                "host-connect" => {
                    assert_eq!(ops, &[op::REQUEST], "seed {name}: {run:?}");
                    assert_eq!(run.connections, 1, "seed {name}: {run:?}");
                    // "OK 1073741824\n", then the guest's "hello".
                    assert_eq!(run.host_read, 14 + 5, "seed {name}: {run:?}");
                }
                "request-backlog" => {
                    // The listener takes a few (its backlog of 4); the rest are refused
                    // without blocking the worker (a fixed hang).
                    let resp = ops.iter().filter(|&&o| o == op::RESPONSE).count();
                    let rst = ops.iter().filter(|&&o| o == op::RST).count();
                    assert_eq!((resp + rst, resp as u64), (8, run.connections), "{run:?}");
                    assert!(resp >= 1 && rst >= 1, "seed {name}: {run:?}");
                }
                "indirect" => {
                    assert_eq!(ops, &[op::RESPONSE], "seed {name}: {run:?}");
                    assert_eq!(run.host_read, 5, "seed {name}: {run:?}");
                }
                "credit-update" => {
                    // 512 bytes of credit, then 4096 more: two data packets at least.
                    let rw = ops.iter().filter(|&&o| o == op::RW).count();
                    assert!(rw >= 2, "seed {name}: {run:?}");
                }
                "credit-flood" => {
                    assert!(ops.contains(&op::RST), "seed {name}: {run:?}");
                    assert!(run.max_backlog.guest_bytes > 0, "seed {name}: {run:?}");
                }
                _ => {}
            }
            if matches!(name, "request-rw" | "request-shutdown" | "request-rst") {
                assert_eq!(run.connections, 1, "seed {name}: {run:?}");
            }
            if !name.starts_with("crash-") {
                assert!(!run.needs_reset, "seed {name}: {run:?}");
                // Their receive buffers overlap no ring or table: every round checked.
                assert_eq!(run.checked_rounds, run.rounds, "seed {name}: {run:?}");
                assert!(run.rounds >= 2, "seed {name}: {run:?}");
            }
            n += 1;
        }
        assert!(n >= 6, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn test_vsock_queue_empty_and_all_ones_inputs_served() {
        let empty = vsock_queue(&[]);
        let ones = vsock_queue(&[0xff; 8192]);

        assert_eq!((empty.tx_used, empty.rx_used), (0, 0));
        // Every avail.idx 0xffff, more than a queue ahead: broken at once.
        assert!(ones.needs_reset);
        assert_eq!((ones.tx_used, ones.rx_used), (0, 0));
    }
}
