//! The harness of the cargo-fuzz target `net_queue` (vmm/fuzz/, outside the workspace) and of
//! the test that replays its seeds: arbitrary bytes become a virtio-net transmit queue and
//! receive queue (virtio-queue's mock queues: descriptor tables, available rings, guest memory
//! contents) and frames the host writes into the tap, which a [`NetHandler`] serves as the
//! device's worker does (`process_tx`, `process_rx`). The tap is one end of a SOCK_SEQPACKET
//! socketpair (frame boundaries kept as a tap keeps them); the harness holds the other end.
//!
//! Input layout (short inputs are zero-padded):
//! - byte 0: bit 0 MRG_RXBUF (and with it a 12-byte header), bit 1 a 12-byte header without
//!   it (VERSION_1), bit 2 HOST_TSO, bit 3 event index on the receive queue, bit 4 on the
//!   transmit queue, bits 5 and 6 a second round on the receive and on the transmit queue
//!   (the driver makes byte 8 more entries available and the device runs again);
//! - byte 1: bits 0-3 the receive queue's size, bits 4-7 the transmit queue's (`1 << (n % 9)`);
//! - bytes 2-3: the MTU; 4-5: the receive `avail.idx`; 6-7: the transmit `avail.idx`;
//! - byte 8: the second round's extra available entries; byte 9: host frames (`% 9`);
//! - bytes 10-25: eight little-endian frame lengths (from 0xff00 on: longer than the
//!   device's receive buffer by the low byte);
//! - then the receive queue's 16 bytes per descriptor and 2 per available-ring entry, the same
//!   for the transmit queue, and the rest copied into guest memory at [`DATA`].
//!
//! Guest memory has a hole (two regions), so descriptors can point below, inside, between and
//! beyond RAM. Whatever the input, the harness checks: no panic and no access outside guest
//! memory (the mapping would fault); every used id below the queue size; at most one used
//! element per available entry taken (the used ids are a sub-multiset of the heads taken); a
//! used length never larger than the chain's writable bytes; after DEVICE_NEEDS_RESET neither
//! queue is served again and nothing more reaches the tap; every frame on the tap carries a
//! header and at most [`MAX_FRAME`] bytes, a non-GSO frame at most MTU + [`L2_OVERHEAD`], a
//! GSO frame only with HOST_TSO; and each frame on the tap is the readable bytes of a used
//! transmit chain, in used-ring order. The used-ring checks are skipped when a receive buffer
//! overlaps the rings or an indirect table (the device may then overwrite them with a frame).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::fuzz::{self, byte, le16, overlaps, Interrupt, Walk};
use super::net::tap::Tap;
use super::net::{
    metrics, NetHandler, NetMode, NetPair, HDR_LEN, L2_OVERHEAD, LEGACY_HDR_LEN, MAX_FRAME,
};
use super::{ActiveQueue, Queue, QueueT};
use crate::counters::Counters;

/// Where the input's tail lands in guest memory.
pub const DATA: u64 = 0x1000;
/// The receive and transmit queues' rings, and the room each takes (256 entries: < 0x2000).
const RX_RINGS: u64 = 0x6_0000;
const TX_RINGS: u64 = 0x7_0000;
const RING_SPAN: u64 = 0x2000;
/// Guest RAM: [0, LOW_END) and [HIGH, HIGH + HIGH_LEN).
const LOW_END: u64 = 0x8_0000;
const HIGH: u64 = 0x10_0000;
const HIGH_LEN: usize = 0x4_0000;
/// Frames the host writes into the tap at most.
const HOST_FRAMES: usize = 8;
/// Bytes before the receive queue's descriptors.
const HEAD_BYTES: usize = 10 + 2 * HOST_FRAMES;
/// Larger than any datagram the socketpair takes, so a frame is never cut when read.
const HOST_BUF: usize = 0x4_0000;

/// What one input did (the replay test checks the well-formed seeds with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOutcome {
    /// The transmit queue's `used.idx`.
    pub tx_used: u16,
    /// The receive queue's `used.idx`.
    pub rx_used: u16,
    /// Frames that reached the host side of the tap.
    pub tap_frames: usize,
    /// Frames the device copied into receive buffers (its `rx_frames` counter).
    pub rx_frames: u64,
    /// Whether the device set DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
}

/// One queue of the input: its mock rings, filled, and where its used ring is.
struct Ring<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    used: GuestAddress,
    size: u16,
}

impl<'a> Ring<'a> {
    /// The queue of `size` entries at `at`: its descriptors and available ring from
    /// `data[from..]`, `avail.idx` = `avail`.
    fn new(mem: &'a GuestMemoryMmap, at: u64, size: u16, data: &[u8], from: usize) -> Ring<'a> {
        let (mock, used) = fuzz::mock_queue(mem, at, size, data, from);
        Ring { mock, used, size }
    }

    fn set_avail(&self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// The queue the driver configured, as the device gets it at activation.
    fn active(&self, index: u16, event_idx: bool) -> Option<ActiveQueue> {
        let mut queue = self.mock.create_queue::<Queue>().ok()?;
        queue.try_set_used_ring_address(self.used).ok()?;
        queue.set_event_idx(event_idx);
        Some(ActiveQueue {
            index,
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).ok()?,
        })
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(self.used.unchecked_add(2)).unwrap_or(0)
    }

    /// Used element `i` (modulo the size): id and length.
    fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
        let id = mem.read_obj(at).unwrap_or(0);
        let len = mem.read_obj(at.unchecked_add(4)).unwrap_or(0);
        (id, len)
    }

    /// Available-ring entry `pos` (modulo the size).
    fn avail_head(&self, mem: &GuestMemoryMmap, pos: u16) -> u16 {
        let at = self
            .mock
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(pos % self.size));
        mem.read_obj(at).unwrap_or(0)
    }

    /// The memory the device reads chains from: the rings, and every indirect table a
    /// descriptor of the table names.
    fn metadata(&self, mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
        let start = self.mock.desc_table_addr().raw_value();
        let mut spans = vec![(start, RING_SPAN)];
        for i in 0..u64::from(self.size) {
            let Some(d) = read_desc(mem, GuestAddress(start + 16 * i)) else {
                continue;
            };
            if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                spans.push((d.addr, u64::from(d.len)));
            }
        }
        spans
    }
}

/// A split-ring descriptor's address, length and flags.
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
}

fn read_desc(mem: &GuestMemoryMmap, at: GuestAddress) -> Option<Desc> {
    let raw: [u8; 16] = mem.read_obj(at).ok()?;
    let word = |i: usize, n: usize| {
        raw[i..i + n]
            .iter()
            .rev()
            .fold(0u64, |v, b| v << 8 | *b as u64)
    };
    Some(Desc {
        addr: word(0, 8),
        len: word(8, 4) as u32,
        flags: word(12, 2) as u16,
    })
}

/// Chain `head` of the table at `table` walked in guest memory (`fuzz::walk`).
fn walk(mem: &GuestMemoryMmap, table: GuestAddress, size: u16, head: u16) -> Walk {
    fuzz::walk(
        |at| mem.read_obj(GuestAddress(at)).ok(),
        table.0,
        size,
        head,
    )
}

/// Host frame `i` of `len` bytes (a byte pattern; its header is whatever the pattern makes).
fn host_frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 7 + i) as u8).collect()
}

/// Reads every frame waiting on the host side.
fn drain(host: &File, buf: &mut [u8], frames: &mut Vec<Vec<u8>>) {
    while let Ok(n) = (&*host).read(buf) {
        frames.push(buf[..n].to_vec());
    }
}

/// What the transmit path enforces on every frame it writes to the tap.
fn check_tap_frame(f: &[u8], mode: NetMode) {
    let hdr = mode.hdr_len;
    assert!(
        f.len() >= hdr && f.len() <= hdr + MAX_FRAME,
        "a {}-byte frame reached the tap (header {hdr})",
        f.len()
    );
    let gso = f[1] & 0x7f != 0;
    if gso {
        assert!(
            mode.host_tso,
            "a GSO frame reached the tap without HOST_TSO"
        );
    } else {
        let most = usize::from(mode.mtu) + L2_OVERHEAD;
        assert!(
            f.len() - hdr <= most,
            "a {}-byte non-GSO frame reached the tap with MTU {}",
            f.len() - hdr,
            mode.mtu
        );
    }
}

/// Used ids below the size, each used no more often than taken, used lengths within the
/// chain's writable bytes.
fn check_used(mem: &GuestMemoryMmap, ring: &Ring, name: &str, next_avail: u16) {
    let used = ring.used_idx(mem);
    assert!(
        used <= next_avail,
        "{name}: used.idx {used} beyond the {next_avail} chains taken"
    );
    let mut taken: HashMap<u16, u32> = HashMap::new();
    for pos in 0..next_avail {
        *taken.entry(ring.avail_head(mem, pos)).or_default() += 1;
    }
    // The ring holds the last `size` used elements.
    for i in used.saturating_sub(ring.size)..used {
        let (id, len) = ring.used_elem(mem, i);
        assert!(
            id < u32::from(ring.size),
            "{name}: used id {id} with queue size {}",
            ring.size
        );
        let left = taken.entry(id as u16).or_default();
        assert!(*left > 0, "{name}: chain {id} used more often than taken");
        *left -= 1;
        let room = walk(mem, ring.mock.desc_table_addr(), ring.size, id as u16).writable;
        assert!(
            u64::from(len) <= room,
            "{name}: used length {len} for chain {id} with {room} writable bytes"
        );
    }
}

/// What the input's first bytes choose.
struct Input {
    mode: NetMode,
    rx_size: u16,
    tx_size: u16,
    rx_avail: u16,
    tx_avail: u16,
    /// Entries made available in the second round.
    more: u16,
    rx_event_idx: bool,
    tx_event_idx: bool,
    rx_again: bool,
    tx_again: bool,
    /// The frames the host writes into the tap before receive runs.
    frames: Vec<Vec<u8>>,
}

impl Input {
    fn parse(data: &[u8]) -> Input {
        let flags = byte(data, 0);
        let mergeable = flags & 1 != 0;
        let mode = NetMode {
            hdr_len: if mergeable || flags & 2 != 0 {
                HDR_LEN
            } else {
                LEGACY_HDR_LEN
            },
            mergeable,
            mtu: le16(data, 2),
            host_tso: flags & 4 != 0,
            mq: false,
        };
        let n = usize::from(byte(data, 9)) % (HOST_FRAMES + 1);
        let frames = (0..n)
            .map(|i| {
                let v = le16(data, 10 + 2 * i);
                let len = if v >= 0xff00 {
                    HDR_LEN + MAX_FRAME + usize::from(v & 0xff)
                } else {
                    usize::from(v)
                };
                host_frame(i, len)
            })
            .collect();
        Input {
            mode,
            rx_size: 1u16 << (byte(data, 1) % 16 % 9),
            tx_size: 1u16 << (byte(data, 1) / 16 % 9),
            rx_avail: le16(data, 4),
            tx_avail: le16(data, 6),
            more: u16::from(byte(data, 8)),
            rx_event_idx: flags & 8 != 0,
            tx_event_idx: flags & 0x10 != 0,
            rx_again: flags & 0x20 != 0,
            tx_again: flags & 0x40 != 0,
            frames,
        }
    }
}

/// The guest memory and the two queues' rings as the input makes them.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: Ring<'a>,
    tx: Ring<'a>,
    /// Whether a receive buffer overlaps a ring or an indirect table.
    clobbered: bool,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap, input: &Input, data: &[u8]) -> Guest<'a> {
        let rx_at = HEAD_BYTES;
        let tx_at = rx_at + 18 * usize::from(input.rx_size);
        let tail_at = tx_at + 18 * usize::from(input.tx_size);
        let rx = Ring::new(mem, RX_RINGS, input.rx_size, data, rx_at);
        let tx = Ring::new(mem, TX_RINGS, input.tx_size, data, tx_at);
        rx.set_avail(input.rx_avail);
        tx.set_avail(input.tx_avail);
        if let Some(tail) = data.get(tail_at..) {
            let room = (RX_RINGS - DATA) as usize;
            let _ = mem.write_slice(&tail[..tail.len().min(room)], GuestAddress(DATA));
        }
        // Receive writes land where the receive chains say: if that can be a ring or an
        // indirect table, the rings read afterwards are no longer what the device wrote.
        let table = rx.mock.desc_table_addr();
        let rx_segs: Vec<(u64, u64)> = (0..rx.size)
            .flat_map(|h| walk(mem, table, rx.size, h).segs)
            .collect();
        let mut metadata = rx.metadata(mem);
        metadata.extend(tx.metadata(mem));
        let clobbered = overlaps(&rx_segs, &metadata);
        Guest {
            mem,
            rx,
            tx,
            clobbered,
        }
    }

    /// Where each queue is: (next_avail, next_used) as the device has them, used.idx in
    /// guest memory.
    fn state(&self, h: &NetHandler) -> [Option<(u16, u16)>; 4] {
        let q = |q: &Option<ActiveQueue>| {
            q.as_ref()
                .map(|q| (q.queue.next_avail(), q.queue.next_used()))
        };
        let pair = h.pairs.first();
        [
            pair.and_then(|p| q(&p.rx)),
            pair.and_then(|p| q(&p.tx)),
            Some((self.rx.used_idx(self.mem), 0)),
            Some((self.tx.used_idx(self.mem), 0)),
        ]
    }

    /// The used-ring rules, and each frame on the tap a used transmit chain's readable bytes,
    /// in used-ring order.
    fn check_rings(&self, h: &NetHandler, frames: &[Vec<u8>]) {
        let next = |q: &Option<ActiveQueue>| q.as_ref().map_or(0, |q| q.queue.next_avail());
        let pair = h.pairs.first();
        check_used(
            self.mem,
            &self.rx,
            "receive",
            pair.map_or(0, |p| next(&p.rx)),
        );
        check_used(
            self.mem,
            &self.tx,
            "transmit",
            pair.map_or(0, |p| next(&p.tx)),
        );
        let tx_used = self.tx.used_idx(self.mem);
        assert!(
            frames.len() <= usize::from(tx_used),
            "more frames than transmit chains"
        );
        if tx_used > self.tx.size {
            return;
        }
        let mut matched = 0;
        for i in 0..tx_used {
            let (id, _) = self.tx.used_elem(self.mem, i);
            let w = walk(
                self.mem,
                self.tx.mock.desc_table_addr(),
                self.tx.size,
                id as u16,
            );
            if frames
                .get(matched)
                .is_some_and(|f| f.len() as u64 == w.readable)
            {
                matched += 1;
            }
        }
        assert_eq!(
            matched,
            frames.len(),
            "a frame on the tap matches no transmit chain"
        );
    }
}

/// Runs the worker's steps (transmit, receive, the second rounds, receive and transmit once
/// more) and returns the frames that reached the tap; once DEVICE_NEEDS_RESET is set, no
/// queue may move and no frame may reach the tap.
fn drive(
    handler: &mut NetHandler,
    guest: &Guest,
    input: &Input,
    host: &File,
    interrupt: &Interrupt,
) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; HOST_BUF];
    let mut frames = Vec::new();
    let mut at_reset = None;
    for step in 0..6 {
        match step {
            0 | 5 => handler.process_tx(0),
            1 | 4 => {
                let _ = handler.process_rx(0);
            }
            2 if input.rx_again => {
                guest.rx.set_avail(input.rx_avail.wrapping_add(input.more));
                let _ = handler.process_rx(0);
            }
            3 if input.tx_again => {
                guest.tx.set_avail(input.tx_avail.wrapping_add(input.more));
                handler.process_tx(0);
            }
            _ => {}
        }
        drain(host, &mut buf, &mut frames);
        if at_reset.is_none() && interrupt.needs_reset.load(Ordering::SeqCst) {
            at_reset = Some((guest.state(handler), frames.len()));
            // A frame that would be received if the queue were still served.
            let _ = (&*host).write(&host_frame(0, 100));
        }
    }
    if let Some((before, sent)) = at_reset {
        assert_eq!(
            guest.state(handler),
            before,
            "a queue served after DEVICE_NEEDS_RESET"
        );
        assert_eq!(frames.len(), sent, "a frame sent after DEVICE_NEEDS_RESET");
    }
    frames
}

/// Runs one input; panics only when the device broke one of the rules above.
pub fn net_queue(data: &[u8]) -> NetOutcome {
    let input = Input::parse(data);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH), HIGH_LEN),
    ]) else {
        return NetOutcome::default();
    };
    let guest = Guest::new(&mem, &input, data);
    let (Some(rx), Some(tx), Some((tap, host))) = (
        guest.rx.active(0, input.rx_event_idx),
        guest.tx.active(1, input.tx_event_idx),
        Tap::socketpair().ok(),
    ) else {
        return NetOutcome::default();
    };
    for f in &input.frames {
        let _ = (&host).write(f);
    }
    let interrupt = Arc::new(Interrupt::default());
    let counters = Counters::new(metrics::NAMES);
    let mut handler = NetHandler::new(
        vec![NetPair::new(Some(rx), Some(tx), tap)],
        None,
        input.mode,
        mem.clone(),
        interrupt.clone(),
        counters.clone(),
    );

    let frames = drive(&mut handler, &guest, &input, &host, &interrupt);

    for f in &frames {
        check_tap_frame(f, input.mode);
    }
    if !guest.clobbered {
        guest.check_rings(&handler, &frames);
    }
    NetOutcome {
        tx_used: guest.tx.used_idx(&mem),
        rx_used: guest.rx.used_idx(&mem),
        tap_frames: frames.len(),
        rx_frames: counters.get(metrics::RX_FRAMES),
        needs_reset: interrupt.needs_reset.load(Ordering::SeqCst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each well-formed seed of make_seeds.py must give.
    fn expected(name: &str) -> Option<NetOutcome> {
        let o = |tx_used, tap_frames, rx_used, rx_frames| NetOutcome {
            tx_used,
            rx_used,
            tap_frames,
            rx_frames,
            needs_reset: false,
        };
        Some(match name {
            "tx-one" => o(1, 1, 0, 0),
            "tx-legacy-hdr" => o(1, 1, 0, 0),
            "tx-indirect" => o(1, 1, 0, 0),
            "tx-gso-tso" => o(1, 1, 0, 0),
            "tx-gso-without-tso" | "tx-over-mtu" | "tx-short" => o(1, 0, 0, 0),
            "rx-one" | "rx-one-event-idx" => o(0, 0, 1, 1),
            "rx-legacy-hdr" => o(0, 0, 1, 1),
            "rx-mergeable-spans" => o(0, 0, 3, 1),
            "rx-more-buffers-later" => o(0, 0, 3, 1),
            "rx-too-small-dropped" => o(0, 0, 1, 1),
            "tx-and-rx" => o(2, 2, 2, 2),
            "rx-bad-chain-mid-frame" => o(0, 0, 3, 1),
            "avail-ahead" => NetOutcome {
                needs_reset: true,
                ..o(0, 0, 0, 0)
            },
            _ => return None,
        })
    }

    /// The seeds and fixed crashes in vmm/fuzz/seeds/net_queue, replayed (CI runs no fuzzer).
    #[test]
    fn test_net_queue_fuzz_seeds_replay_without_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/net_queue");
        let (mut n, mut checked) = (0, 0);
        for entry in std::fs::read_dir(&dir).expect("read the seed directory") {
            let path = entry.expect("seed entry").path();
            let data = std::fs::read(&path).expect("read a seed");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");

            let outcome = net_queue(&data);

            if let Some(want) = expected(name) {
                assert_eq!(outcome, want, "seed {name}");
                checked += 1;
            }
            n += 1;
        }
        assert!(n >= 12, "only {n} seeds in {}", dir.display());
        assert!(checked >= 10, "only {checked} well-formed seeds checked");
    }

    #[test]
    fn test_net_queue_empty_and_all_ones_inputs_served_nothing() {
        let empty = net_queue(&[]);
        let ones = net_queue(&[0xff; 4096]);

        assert_eq!(empty, NetOutcome::default());
        assert_eq!((ones.tx_used, ones.rx_used, ones.tap_frames), (0, 0, 0));
    }
}
