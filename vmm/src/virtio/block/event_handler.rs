//! The virtio-blk worker's event subscriber: the request queue's notify eventfd and the I/O
//! engine's completion eventfd.
//!
//! A notification pops chains while fewer than a queue's worth of requests are in flight,
//! turns each into an engine request whose iovecs are the guest buffers' host addresses, and
//! commits the batch; a completion writes the status byte and returns the chain. Requests the
//! engine refuses (out of range, a write to a read-only image, an operation the image does not
//! offer) and malformed chains are answered at once.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use disk::aio::{Completion, Engine, Request};
use disk::ErrorKind;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::request::{self, total, BlkRequest, Op, Segment};
use super::{metrics, status, ID_BYTES, QUEUE_SIZE};
use crate::counters::Counters;
use crate::virtio::iov;
use crate::virtio::poll::AdaptivePoll;
use crate::virtio::queue::BrokenQueue;
use crate::virtio::{ActiveQueue, QueueT, VirtioInterrupt};

/// A request the engine holds.
struct InFlight {
    head: u16,
    status: GuestAddress,
    /// Bytes the device writes into the chain besides the status byte (reads).
    data_in: u32,
    /// Which counters the completion adds to, and how many bytes.
    counter: usize,
    bytes: u64,
}

/// What the worker owns while the device runs. The engine comes first so that it is dropped
/// (waiting for every request the kernel or its thread still holds) before the guest memory
/// its requests point into.
pub struct BlockHandler {
    engine: Box<dyn Engine>,
    /// The request queue.
    pub queue: ActiveQueue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<Counters>,
    serial: [u8; ID_BYTES],
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    done: Vec<Completion>,
    answered: bool,
    stalled: bool,
    broken: bool,
    /// The polling window after each batch (zero until [`BlockHandler::with_polling`]).
    poll: AdaptivePoll,
}

impl BlockHandler {
    /// A handler serving `queue` through `engine`.
    pub fn new(
        engine: Box<dyn Engine>,
        queue: ActiveQueue,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
        serial: [u8; ID_BYTES],
    ) -> BlockHandler {
        let depth = usize::from(QUEUE_SIZE);
        BlockHandler {
            engine,
            queue,
            mem,
            interrupt,
            counters,
            serial,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            done: Vec::new(),
            answered: false,
            stalled: false,
            broken: false,
            poll: AdaptivePoll::new(std::time::Duration::ZERO),
        }
    }

    /// Polls the queue and the engine after each batch, for a self-tuning window of at most
    /// `max` (docs/decisions/0016); zero never polls.
    pub fn with_polling(mut self, max: std::time::Duration) -> BlockHandler {
        self.poll = AdaptivePoll::new(max);
        self
    }

    fn fail(&mut self, _e: BrokenQueue) {
        if !self.broken {
            self.broken = true;
            self.counters.inc(metrics::QUEUE_BROKEN);
            self.interrupt.set_needs_reset();
        }
    }

    /// Starts every available request (as many as there are free slots).
    pub fn process_queue(&mut self) {
        self.serve(true);
    }

    /// Starts every available request and commits them as one batch; `rearm` asks the driver
    /// to notify again once the ring is empty (not while polling).
    fn serve(&mut self, rearm: bool) {
        if self.broken {
            return;
        }
        let result = self.pop_and_start(rearm);
        if let Err(e) = self.engine.commit() {
            // The accepted requests stay queued in the engine and start at the next commit.
            let _ = e;
        }
        self.signal();
        if let Err(e) = result {
            self.fail(e);
        }
    }

    fn pop_and_start(&mut self, rearm: bool) -> Result<(), BrokenQueue> {
        loop {
            if self.free.is_empty() {
                self.stalled = true;
                return Ok(());
            }
            let mem = self.mem.clone();
            let Some(chain) = self.queue.pop(&mem)? else {
                if rearm && self.queue.rearm(&mem)? {
                    continue;
                }
                return Ok(());
            };
            match request::parse(chain, &mem, self.queue.queue.size()) {
                Ok(req) => self.start(req)?,
                Err(head) => {
                    self.counters.inc(metrics::BAD_CHAINS);
                    self.queue.push_used(&mem, head, 0)?;
                    self.answered = true;
                }
            }
        }
    }

    /// Submits `req` to the engine, or answers it now.
    fn start(&mut self, req: BlkRequest) -> Result<(), BrokenQueue> {
        let (engine_req, counter, bytes, data_in) = match &req.op {
            Op::Read { offset, data } => {
                let Some(iov) = iovecs(&self.mem, data) else {
                    return self.answer(&req, status::IOERR, 0);
                };
                // SAFETY: the iovecs point into guest RAM mapped by `self.mem`, which this
                // handler keeps alive until after `self.engine` is dropped (field order), and
                // dropping the engine waits for its requests; the driver does not touch a
                // buffer it made available until the device puts the chain in the used ring,
                // which happens only after the completion (a driver that does anyway can only
                // corrupt its own data: the disk crate bounces overlapping buffers).
                let r = unsafe { Request::read(*offset, &iov) };
                (r, metrics::READS, total(data), total(data) as u32)
            }
            Op::Write { offset, data } => {
                let Some(iov) = iovecs(&self.mem, data) else {
                    return self.answer(&req, status::IOERR, 0);
                };
                // SAFETY: as for reads above; the engine only reads these buffers.
                let r = unsafe { Request::write(*offset, &iov) };
                (r, metrics::WRITES, total(data), 0)
            }
            Op::Flush => (Ok(Request::flush()), metrics::FLUSHES, 0, 0),
            Op::Discard { offset, len } => {
                (Ok(Request::discard(*offset, *len)), metrics::DISCARDS, 0, 0)
            }
            Op::WriteZeroes { offset, len, unmap } => (
                Ok(Request::write_zeroes(*offset, *len, *unmap)),
                metrics::DISCARDS,
                0,
                0,
            ),
            Op::GetId { data } => {
                let written = self.write_id(data);
                return self.answer(&req, status::OK, written);
            }
            Op::Unsupported => return self.answer(&req, status::UNSUPP, 0),
            Op::Invalid => return self.answer(&req, status::IOERR, 0),
        };
        let Ok(engine_req) = engine_req else {
            return self.answer(&req, status::IOERR, 0);
        };
        let Some(slot) = self.free.pop() else {
            return self.answer(&req, status::IOERR, 0);
        };
        match self.engine.submit(engine_req, slot as u64) {
            Ok(()) => {
                self.slots[slot] = Some(InFlight {
                    head: req.head,
                    status: req.status,
                    data_in,
                    counter,
                    bytes,
                });
                Ok(())
            }
            Err(e) => {
                self.free.push(slot);
                let refused = match e.kind() {
                    ErrorKind::Unsupported if counter == metrics::DISCARDS => status::UNSUPP,
                    _ => status::IOERR,
                };
                self.answer(&req, refused, 0)
            }
        }
    }

    /// Writes the device ID (NUL-padded, not terminated at 20 bytes) into `data`; returns the
    /// bytes written.
    fn write_id(&self, data: &[Segment]) -> u32 {
        let mut written = 0usize;
        for s in data {
            let n = (ID_BYTES - written).min(s.len as usize);
            if n == 0
                || self
                    .mem
                    .write_slice(&self.serial[written..written + n], s.addr)
                    .is_err()
            {
                break;
            }
            written += n;
        }
        written as u32
    }

    /// Writes the status byte and returns the chain with `data_in` + 1 bytes written.
    fn answer(&mut self, req: &BlkRequest, st: u8, data_in: u32) -> Result<(), BrokenQueue> {
        self.finish(req.head, req.status, st, data_in)
    }

    fn finish(
        &mut self,
        head: u16,
        at: GuestAddress,
        st: u8,
        data_in: u32,
    ) -> Result<(), BrokenQueue> {
        match st {
            status::IOERR => self.counters.inc(metrics::IO_ERRORS),
            status::UNSUPP => self.counters.inc(metrics::UNSUPPORTED),
            _ => {}
        }
        let len = match self.mem.write_obj(st, at) {
            Ok(()) => data_in.saturating_add(1),
            Err(_) => 0,
        };
        self.answered = true;
        let mem = self.mem.clone();
        self.queue.push_used(&mem, head, len)
    }

    fn signal(&mut self) {
        if std::mem::take(&mut self.answered) {
            let mem = self.mem.clone();
            self.queue.signal_used(&mem, self.interrupt.as_ref());
        }
    }

    /// Answers every finished request, then starts what waited for a free slot; returns how
    /// many requests finished.
    pub fn process_completions(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.done);
        self.engine.completions(&mut done);
        let finished = done.len();
        let mut result = Ok(());
        for c in done.drain(..) {
            let Some(f) = usize::try_from(c.token)
                .ok()
                .and_then(|slot| self.slots.get_mut(slot))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(c.token as usize);
            let st = if c.result.is_ok() {
                self.counters.inc(f.counter);
                let bytes_counter = match f.counter {
                    metrics::READS => Some(metrics::READ_BYTES),
                    metrics::WRITES => Some(metrics::WRITE_BYTES),
                    _ => None,
                };
                if let Some(b) = bytes_counter {
                    self.counters.add(b, f.bytes);
                }
                status::OK
            } else {
                status::IOERR
            };
            let data_in = if st == status::OK { f.data_in } else { 0 };
            if result.is_ok() && !self.broken {
                result = self.finish(f.head, f.status, st, data_in);
            }
        }
        self.done = done;
        self.signal();
        if let Err(e) = result {
            self.fail(e);
        } else if std::mem::take(&mut self.stalled) {
            self.process_queue();
        }
        finished
    }

    fn engine_fd(&self) -> RawFd {
        self.engine.notifier().as_raw_fd()
    }
}

/// The host iovecs of `segs` (split where guest RAM regions end); None if any byte is not
/// guest RAM.
fn iovecs(mem: &GuestMemoryMmap, segs: &[Segment]) -> Option<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(segs.len());
    for s in segs {
        let len = usize::try_from(s.len).ok()?;
        if !iov::push_guest_iovecs(mem, s.addr, len, &mut iov, usize::MAX) {
            return None;
        }
    }
    Some(iov)
}

impl MutEventSubscriber for BlockHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.poll.woke(std::time::Instant::now());
        self.counters.inc(metrics::WAKEUPS);
        let fd = events.fd();
        if fd == self.queue.notify.as_raw_fd() {
            let _ = self.queue.notify.read();
            self.process_queue();
        } else if fd == self.engine_fd() {
            self.process_completions();
        }
        self.poll_phase();
        let in_flight = self.engine.in_flight() > 0;
        self.poll.sleeping(std::time::Instant::now(), in_flight);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let queue = ops.add(Events::new(&self.queue.notify, EventSet::IN));
        let engine = ops.add(Events::new_raw(self.engine_fd(), EventSet::IN));
        if queue.is_err() || engine.is_err() {
            self.broken = true;
            self.interrupt.set_needs_reset();
            return;
        }
        // Requests the driver queued before DRIVER_OK.
        self.process_queue();
    }
}

#[path = "handler_persist.rs"]
mod persist;
#[path = "handler_poll.rs"]
mod poll;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use disk::{Format, OpenOptions, SharedDisk};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::super::kind;
    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool, next: Option<u16>) -> RawDescriptor {
        let mut flags = 0;
        if write {
            flags |= VRING_DESC_F_WRITE;
        }
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT;
        }
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next.unwrap_or(0)))
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    /// A 64 KiB raw image with `read_only`.
    fn image(read_only: bool) -> SharedDisk {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "strata-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, vec![0u8; 65536]).unwrap();
        let options = OpenOptions {
            read_only,
            ..Default::default()
        };
        let disk = SharedDisk::open(&path, Format::Raw, &options).unwrap();
        std::fs::remove_file(&path).unwrap();
        disk
    }

    fn handler(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        disk: &SharedDisk,
    ) -> (BlockHandler, Arc<Counters>) {
        let counters = Counters::new(metrics::NAMES);
        let q = ActiveQueue {
            index: 0,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let mut serial = [0u8; ID_BYTES];
        serial[..5].copy_from_slice(b"SER-1");
        let engine = disk.engine(u32::from(QUEUE_SIZE)).unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let h = BlockHandler::new(engine, q, m.clone(), irq, counters.clone(), serial);
        (h, counters)
    }

    /// Serves what is queued and waits for every engine completion.
    fn drive(h: &mut BlockHandler) {
        h.process_queue();
        while h.engine.in_flight() > 0 {
            h.engine.wait().unwrap();
            h.process_completions();
        }
    }

    fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    fn status_at(m: &GuestMemoryMmap, at: u64) -> u8 {
        m.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn test_blk_write_then_read_back_through_engine() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        header(&m, 0x1000, kind::OUT, 3);
        m.write_slice(&[0x5a; 512], GuestAddress(0x2000)).unwrap();
        header(&m, 0x3000, kind::IN, 3);
        vq.add_desc_chains(
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, false, Some(2)),
                d(0x2800, 1, true, None),
            ],
            0,
        )
        .unwrap();
        let disk = image(false);
        let (mut h, counters) = handler(&m, &vq, &disk);
        drive(&mut h);
        vq.add_desc_chains(
            &[d(0x3000, 16, false, Some(4)), d(0x4000, 513, true, None)],
            3,
        )
        .unwrap();

        drive(&mut h);

        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(back, [0x5a; 512]);
        assert_eq!(
            (status_at(&m, 0x2800), status_at(&m, 0x4200)),
            (status::OK, status::OK)
        );
        assert_eq!(used(&vq, 0), (0, 1));
        assert_eq!(used(&vq, 1), (3, 513));
        assert_eq!(counters.get(metrics::WRITE_BYTES), 512);
        assert_eq!(counters.get(metrics::READ_BYTES), 512);
        let mut on_disk = [0u8; 512];
        disk.read_at(&mut on_disk, 3 * 512).unwrap();
        assert_eq!(on_disk, [0x5a; 512]);
    }

    #[test]
    fn test_blk_out_of_range_and_unknown_type_answered_at_once() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        header(&m, 0x1000, kind::IN, 128);
        header(&m, 0x3000, 77, 0);
        vq.add_desc_chains(
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 513, true, None),
                d(0x3000, 16, false, Some(3)),
                d(0x4000, 1, true, None),
            ],
            0,
        )
        .unwrap();
        let (mut h, counters) = handler(&m, &vq, &image(false));

        drive(&mut h);

        assert_eq!(status_at(&m, 0x2200), status::IOERR);
        assert_eq!(status_at(&m, 0x4000), status::UNSUPP);
        assert_eq!((used(&vq, 0), used(&vq, 1)), ((0, 1), (2, 1)));
        assert_eq!(counters.get(metrics::IO_ERRORS), 1);
        assert_eq!(counters.get(metrics::UNSUPPORTED), 1);
    }

    #[test]
    fn test_blk_get_id_and_chain_without_status_byte() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        header(&m, 0x1000, kind::GET_ID, 0);
        header(&m, 0x3000, kind::FLUSH, 0);
        vq.add_desc_chains(
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 21, true, None),
                d(0x3000, 16, false, None),
            ],
            0,
        )
        .unwrap();
        let (mut h, counters) = handler(&m, &vq, &image(false));

        drive(&mut h);

        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(&id[..6], b"SER-1\0");
        assert_eq!(used(&vq, 0), (0, 21));
        assert_eq!(used(&vq, 1), (2, 0));
        assert_eq!(counters.get(metrics::BAD_CHAINS), 1);
    }

    #[test]
    fn test_blk_write_to_read_only_image_ioerr_and_buffer_outside_ram_ioerr() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        header(&m, 0x1000, kind::OUT, 0);
        header(&m, 0x3000, kind::IN, 0);
        vq.add_desc_chains(
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, false, Some(2)),
                d(0x2800, 1, true, None),
                d(0x3000, 16, false, Some(4)),
                d(0xfff0_0000, 512, true, Some(5)),
                d(0x3800, 1, true, None),
            ],
            0,
        )
        .unwrap();
        let (mut h, _c) = handler(&m, &vq, &image(true));

        drive(&mut h);

        assert_eq!(status_at(&m, 0x2800), status::IOERR);
        assert_eq!(status_at(&m, 0x3800), status::IOERR);
        assert_eq!(vq.used().idx().load(), 2);
    }

    /// A handler that polls, with its window grown to 8 us by two short sleeps.
    fn polling(h: BlockHandler) -> BlockHandler {
        let mut h = h.with_polling(std::time::Duration::from_micros(64));
        let t = std::time::Instant::now();
        for i in 0..2u64 {
            h.poll
                .sleeping(t + std::time::Duration::from_micros(i), false);
            h.poll.woke(t + std::time::Duration::from_micros(i + 1));
        }
        h
    }

    #[test]
    fn test_blk_poll_phase_takes_requests_posted_without_notify() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        let (h, counters) = handler(&m, &vq, &image(false));
        let mut h = polling(h);
        assert_eq!(h.poll.window(), std::time::Duration::from_micros(8));
        header(&m, 0x1000, kind::IN, 0);
        vq.add_desc_chains(
            &[d(0x1000, 16, false, Some(1)), d(0x2000, 513, true, None)],
            0,
        )
        .unwrap();

        h.poll_phase();
        drive(&mut h);

        assert_eq!(counters.get(metrics::POLLED_BATCHES), 1);
        assert_eq!(status_at(&m, 0x2200), status::OK);
        assert_eq!(used(&vq, 0), (0, 513));
        // Notifications are on again once the phase ends.
        let flags: u16 = m.read_obj(vq.used_addr()).unwrap();
        assert_eq!(flags, 0);
    }

    #[test]
    fn test_blk_poll_phase_without_polling_leaves_queue_alone() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        let (mut h, counters) = handler(&m, &vq, &image(false));
        header(&m, 0x1000, kind::IN, 0);
        vq.add_desc_chains(
            &[d(0x1000, 16, false, Some(1)), d(0x2000, 513, true, None)],
            0,
        )
        .unwrap();

        h.poll_phase();

        assert_eq!(counters.get(metrics::POLLED_BATCHES), 0);
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(h.queue.queue.next_avail(), 0);
    }
}
