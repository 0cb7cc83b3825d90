//! The harness of the cargo-fuzz target `blk_queue` (vmm/fuzz/, outside the workspace) and
//! of the test that replays its seeds: arbitrary bytes become a virtio-blk request queue
//! (virtio-queue's mock queue: descriptor table, available ring, guest memory contents) that a
//! [`BlockHandler`] serves against a raw or qcow2 image, as the device's worker would.
//!
//! Input layout (short inputs are zero-padded):
//! - byte 0: bits 0-3 the queue size (`1 << (b % 9)`, 1 to 256), bit 4 event index, bit 5 a
//!   qcow2 image instead of raw, bit 6 drop the handler with requests in flight (a reset);
//! - bytes 1-2: `avail.idx` (little-endian);
//! - then 16 bytes per descriptor, 2 per available-ring entry (queue-size many of each);
//! - the rest is copied into guest memory at [`DATA`] (headers, data, indirect tables).
//!
//! Guest memory has a hole (two regions), so descriptors can point below, inside, between
//! and beyond RAM. The harness checks what the device must keep true whatever the input:
//! no panic, no access outside guest memory (the mapping would fault), at most one used
//! element per available entry, every used id below the queue size.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use disk::{Format, OpenOptions, SharedDisk};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::block::{metrics, BlockHandler, ID_BYTES, QUEUE_SIZE};
use super::{ActiveQueue, Queue, QueueT, VirtioInterrupt, VirtioInterruptType};
use crate::counters::Counters;

/// Where the input's tail lands in guest memory.
pub const DATA: u64 = 0x1000;
/// The mock queue's rings.
const RINGS: u64 = 0x6_0000;
/// Guest RAM: [0, LOW_END) and [HIGH, HIGH + HIGH_LEN).
const LOW_END: u64 = 0x8_0000;
const HIGH: u64 = 0x10_0000;
const HIGH_LEN: usize = 0x4_0000;
/// Image size.
const IMAGE_BYTES: u64 = 1 << 20;

/// An interrupt that remembers DEVICE_NEEDS_RESET (the three queue harnesses use it).
#[derive(Default)]
pub(crate) struct Interrupt {
    pub(crate) needs_reset: AtomicBool,
}

impl VirtioInterrupt for Interrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
        Ok(())
    }

    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// The two images, made once per process in the temporary directory.
fn image(qcow2: bool) -> &'static SharedDisk {
    static RAW: OnceLock<SharedDisk> = OnceLock::new();
    static QCOW2: OnceLock<SharedDisk> = OnceLock::new();
    let (cell, format, name) = if qcow2 {
        (&QCOW2, Format::Qcow2, "qcow2")
    } else {
        (&RAW, Format::Raw, "raw")
    };
    cell.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("strata-blk-fuzz-{}.{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        disk::create(&path, format, IMAGE_BYTES, &Default::default())
            .unwrap_or_else(|e| panic!("create the fuzz image {}: {e}", path.display()));
        let disk = SharedDisk::open(&path, format, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("open the fuzz image {}: {e}", path.display()));
        let _ = std::fs::remove_file(&path);
        disk
    })
}

/// Byte `i` of the input, zero past its end.
pub(crate) fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

/// The little-endian u16 at byte `i` of the input, zero past its end.
pub(crate) fn le16(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([byte(data, i), byte(data, i + 1)])
}

/// Whether any of `writes` overlaps any of `reads` (address, length; zero lengths never do).
pub(crate) fn overlaps(writes: &[(u64, u64)], reads: &[(u64, u64)]) -> bool {
    let mut merged: Vec<(u64, u64)> = reads
        .iter()
        .filter(|r| r.1 > 0)
        .map(|&(a, l)| (a, a.saturating_add(l)))
        .collect();
    merged.sort_unstable();
    let mut m: Vec<(u64, u64)> = Vec::with_capacity(merged.len());
    for (s, e) in merged {
        match m.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => m.push((s, e)),
        }
    }
    writes.iter().filter(|w| w.1 > 0).any(|&(a, l)| {
        let end = a.saturating_add(l);
        let i = m.partition_point(|r| r.1 <= a);
        m.get(i).is_some_and(|r| r.0 < end)
    })
}

/// One chain as virtio-queue 0.18's `DescriptorChain` yields it, walked by the net and
/// vsock harnesses to know what the device may write.
#[derive(Clone, Debug, Default)]
pub(crate) struct Walk {
    /// Readable bytes.
    pub(crate) readable: u64,
    /// Writable bytes.
    pub(crate) writable: u64,
    /// Writable segments (address, length).
    pub(crate) segs: Vec<(u64, u64)>,
    /// The descriptors read (address, 16).
    pub(crate) reads: Vec<(u64, u64)>,
}

/// Walks chain `head` of the table at `table` (of `size` entries) with the crate's rules: an
/// indirect descriptor switches to its table (not from inside one; its length a multiple of
/// 16), at most a table's size of descriptors, and the walk ends at 4 GiB of descriptor
/// lengths or at a descriptor `read` cannot give (`read(addr)`: the 16 bytes at `addr`).
pub(crate) fn walk(
    read: impl Fn(u64) -> Option<[u8; 16]>,
    table: u64,
    size: u16,
    head: u16,
) -> Walk {
    let mut w = Walk::default();
    let (mut table, mut qsize, mut next, mut ttl) = (table, size, head, size);
    let mut indirect = false;
    let mut yielded = 0u32;
    while ttl > 0 && next < qsize {
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        let Some(d) = read(at) else { break };
        w.reads.push((at, 16));
        let mut a = [0u8; 8];
        a.copy_from_slice(&d[..8]);
        let addr = u64::from_le_bytes(a);
        let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        let flags = u32::from(u16::from_le_bytes([d[12], d[13]]));
        let nxt = u16::from_le_bytes([d[14], d[15]]);
        if flags & VRING_DESC_F_INDIRECT != 0 {
            let Ok(n) = u16::try_from(len / 16) else {
                break;
            };
            if indirect || len % 16 != 0 {
                break;
            }
            (table, qsize, next, ttl, indirect) = (addr, n, 0, n, true);
            continue;
        }
        let Some(y) = yielded.checked_add(len) else {
            break;
        };
        yielded = y;
        if flags & VRING_DESC_F_WRITE != 0 {
            w.writable += u64::from(len);
            w.segs.push((addr, u64::from(len)));
        } else {
            w.readable += u64::from(len);
        }
        if flags & VRING_DESC_F_NEXT != 0 {
            next = nxt;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    w
}

/// Lays out a mock queue of `size` entries at `base` from the input at `at`: its descriptor
/// table (16 bytes per entry), then its available ring (2 bytes per entry; `avail.idx` is
/// left to the caller). Returns the mock and its used ring, zeroed, right after the
/// available ring (the mock's own lies over the end of a large available ring).
pub(crate) fn mock_queue<'a>(
    mem: &'a GuestMemoryMmap,
    base: u64,
    size: u16,
    data: &[u8],
    at: usize,
) -> (MockSplitQueue<'a, GuestMemoryMmap>, GuestAddress) {
    let vq = MockSplitQueue::create(mem, GuestAddress(base), size);
    let n = usize::from(size);
    let table: Vec<u8> = (0..16 * n).map(|i| byte(data, at + i)).collect();
    let _ = mem.write_slice(&table, vq.desc_table_addr());
    for i in 0..n {
        let o = at + 16 * n + 2 * i;
        let head = le16(data, o);
        let _ = vq.avail().ring().ref_at(i).map(|r| r.store(head));
    }
    let used = vq
        .avail_addr()
        .unchecked_add(6 + 2 * u64::from(size))
        .unchecked_align_up(4);
    let _ = mem.write_slice(&[0u8; 4], used);
    (vq, used)
}

fn used_idx(mem: &GuestMemoryMmap, used_ring: GuestAddress) -> u16 {
    mem.read_obj(used_ring.unchecked_add(2)).unwrap_or(0)
}

/// Runs one input; panics only when the device broke one of the rules above. Returns the
/// number of chains the device put in the used ring.
pub fn blk_queue(data: &[u8]) -> u16 {
    let flags = byte(data, 0);
    let size = 1u16 << (flags % 16 % 9);
    let event_idx = flags & 0x10 != 0;
    let qcow2 = flags & 0x20 != 0;
    let drop_early = flags & 0x40 != 0;
    let avail_idx = le16(data, 1);
    let descs_at = 3;
    let ring_at = descs_at + 16 * usize::from(size);
    let tail_at = ring_at + 2 * usize::from(size);

    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH), HIGH_LEN),
    ]) else {
        return 0;
    };
    let (vq, used_ring) = mock_queue(&mem, RINGS, size, data, descs_at);
    vq.avail().idx().store(avail_idx);
    if let Some(tail) = data.get(tail_at..) {
        let room = (RINGS - DATA) as usize;
        let _ = mem.write_slice(&tail[..tail.len().min(room)], GuestAddress(DATA));
    }
    let Ok(mut queue) = vq.create_queue::<Queue>() else {
        return 0;
    };
    if queue.try_set_used_ring_address(used_ring).is_err() {
        return 0;
    }
    queue.set_event_idx(event_idx);
    let Ok(notify) = EventFd::new(libc::EFD_NONBLOCK) else {
        return 0;
    };
    let active = ActiveQueue {
        index: 0,
        queue,
        notify,
    };
    let Ok(engine) = image(qcow2).engine_inline(u32::from(QUEUE_SIZE)) else {
        return 0;
    };
    let interrupt = Arc::new(Interrupt::default());
    let counters = Counters::new(metrics::NAMES);
    let mut handler = BlockHandler::new(
        engine,
        active,
        mem.clone(),
        interrupt.clone(),
        counters,
        [b'f'; ID_BYTES],
    );

    if drop_early {
        handler.process_queue();
        drop(handler);
        return used_idx(&mem, used_ring);
    }
    let _ = handler.drain();
    let used = used_idx(&mem, used_ring);
    let popped = handler.queue.queue.next_avail();
    assert!(
        used <= popped,
        "used.idx {used} beyond the {popped} chains taken"
    );
    // A broken queue takes nothing more after DEVICE_NEEDS_RESET.
    if interrupt.needs_reset.load(Ordering::SeqCst) {
        handler.process_queue();
        assert_eq!(used_idx(&mem, used_ring), used, "served after needs-reset");
    }
    for i in 0..used.min(size) {
        let at = used_ring.unchecked_add(4 + 8 * u64::from(i));
        let id: u32 = mem.read_obj(at).unwrap_or(0);
        assert!(id < u32::from(size), "used id {id} with queue size {size}");
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_overlaps_touching_ranges_do_not_overlap() {
        let reads = [(0x100, 0x10), (0x200, 0x10)];

        let touching = overlaps(&[(0x110, 0xf0)], &reads);
        let inside = overlaps(&[(0x1ff, 2)], &reads);

        assert!(!touching);
        assert!(inside);
    }

    /// The seeds and fixed crashes in vmm/fuzz/seeds/blk_queue, replayed (CI runs no fuzzer).
    #[test]
    fn test_blk_queue_fuzz_seeds_replay_without_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/blk_queue");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("read the seed directory") {
            let path = entry.expect("seed entry").path();
            let data = std::fs::read(&path).expect("read a seed");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");

            let used = blk_queue(&data);

            // Well-formed seeds are served whole (make_seeds.py writes them).
            let want = match name {
                "read" | "read-event-idx" | "read-qcow2" | "write" | "write-qcow2" => Some(1),
                "indirect" | "loop" | "beyond-ram" | "len-4g" => Some(1),
                "flush-getid-discard-zeroes" | "flush-getid-discard-zeroes-qcow2" => Some(4),
                "avail-ahead" => Some(0),
                _ => None,
            };
            if let Some(want) = want {
                assert_eq!(used, want, "seed {name}");
            }
            n += 1;
        }
        assert!(n >= 8, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn test_blk_queue_empty_and_all_ones_inputs_served() {
        let empty = blk_queue(&[]);
        let ones = blk_queue(&[0xff; 4096]);

        assert_eq!((empty, ones), (0, 0));
    }
}
