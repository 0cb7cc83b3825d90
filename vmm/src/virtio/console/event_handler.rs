//! The virtio-console worker's event subscriber: the two queues' notify eventfds and the
//! backend's input.
//!
//! Output: every transmit chain's readable bytes go to the backend in order. Input: bytes are
//! read from the backend only while fewer than [`MAX_PENDING_INPUT`] wait for receive buffers;
//! when the guest gives none, the input fd leaves the epoll set until the guest posts buffers
//! (a level-triggered fd that is never read would otherwise wake the worker forever). Input
//! that cannot be polled (a regular file, /dev/null) is read whenever buffers are available,
//! until its end.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::device::ConsoleBackend;
use super::{metrics, MAX_CHAIN_OUTPUT, MAX_PENDING_INPUT};
use crate::counters::Counters;
use crate::virtio::queue::{BrokenQueue, Chain};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

/// How the backend's input is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// No input, or it ended.
    Closed,
    /// In the epoll set (`true`) or taken out while no receive buffer is free (`false`).
    Polled(bool),
    /// Not pollable: read whenever receive buffers are available.
    AlwaysReady,
}

/// What the worker owns while the device runs.
pub struct ConsoleHandler {
    /// The receive queue, if the driver enabled it.
    pub rx: Option<ActiveQueue>,
    /// The transmit queue, if the driver enabled it.
    pub tx: Option<ActiveQueue>,
    /// Output and input.
    pub backend: ConsoleBackend,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<Counters>,
    pending: VecDeque<u8>,
    input: Input,
    buf: Vec<u8>,
    broken: bool,
}

impl ConsoleHandler {
    /// A handler serving `rx` and `tx` with `backend`.
    pub fn new(
        rx: Option<ActiveQueue>,
        tx: Option<ActiveQueue>,
        backend: ConsoleBackend,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
    ) -> ConsoleHandler {
        ConsoleHandler {
            rx,
            tx,
            backend,
            mem,
            interrupt,
            counters,
            pending: VecDeque::new(),
            input: Input::Closed,
            buf: vec![0; 4096],
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

    /// Writes every pending transmit chain to the output.
    pub fn process_tx(&mut self) {
        let ConsoleHandler {
            tx,
            backend,
            mem,
            interrupt,
            counters,
            buf,
            broken,
            ..
        } = self;
        let Some(tx) = tx.as_mut().filter(|_| !*broken) else {
            return;
        };
        let result = tx.serve(mem, interrupt.as_ref(), |chain| {
            write_chain(chain, mem, backend, buf, counters);
            0
        });
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Moves pending input into receive buffers while both exist.
    pub fn process_rx(&mut self) {
        if self.input == Input::AlwaysReady {
            self.read_input();
        }
        if self.broken || self.pending.is_empty() {
            return;
        }
        let Some(rx) = self.rx.as_mut() else {
            return;
        };
        let mut delivered = 0;
        let result = (|| -> Result<(), BrokenQueue> {
            while !self.pending.is_empty() {
                let Some(chain) = rx.pop(&self.mem)? else {
                    if rx.rearm(&self.mem)? {
                        continue;
                    }
                    break;
                };
                let head = chain.head_index();
                let len = fill_chain(chain, &self.mem, &mut self.pending, &self.counters);
                rx.push_used(&self.mem, head, len)?;
                delivered += 1;
            }
            Ok(())
        })();
        if delivered > 0 {
            rx.signal_used(&self.mem, self.interrupt.as_ref());
        }
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Reads what input there is, up to [`MAX_PENDING_INPUT`] held bytes; returns false when
    /// the input ended or failed.
    fn read_input(&mut self) -> bool {
        let Some(input) = self.backend.input.as_mut() else {
            return false;
        };
        while self.pending.len() < MAX_PENDING_INPUT {
            let room = (MAX_PENDING_INPUT - self.pending.len()).min(self.buf.len());
            match input.read(&mut self.buf[..room]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend(&self.buf[..n]);
                    if self.input != Input::AlwaysReady {
                        // One read per readiness event: the epoll says when there is more.
                        return true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn input_fd(&self) -> Option<RawFd> {
        self.backend.input.as_ref().map(|f| f.as_raw_fd())
    }

    /// The input fd is readable (or hung up).
    fn on_input(&mut self, events: Events, ops: &mut EventOps) {
        let alive = self.read_input();
        self.process_rx();
        let Some(fd) = self.input_fd() else { return };
        if !alive || events.event_set().contains(EventSet::HANG_UP) && self.pending.is_empty() {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            self.input = Input::Closed;
        } else if self.pending.len() >= MAX_PENDING_INPUT {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            self.input = Input::Polled(false);
        }
    }

    /// The guest posted receive buffers: deliver, and watch the input again if it was paused.
    fn on_rx_notify(&mut self, ops: &mut EventOps) {
        self.process_rx();
        if self.input == Input::Polled(false) && self.pending.len() < MAX_PENDING_INPUT {
            if let Some(fd) = self.input_fd() {
                if ops.add(Events::new_raw(fd, EventSet::IN)).is_ok() {
                    self.input = Input::Polled(true);
                }
            }
        }
    }
}

/// Writes the chain's readable bytes (at most [`MAX_CHAIN_OUTPUT`]) to the output.
fn write_chain(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    backend: &mut ConsoleBackend,
    buf: &mut [u8],
    counters: &Counters,
) {
    let mut taken = 0usize;
    for desc in chain.readable() {
        let mut left = desc.len() as usize;
        let mut addr = desc.addr();
        while left > 0 {
            let n = left.min(buf.len());
            if taken + n > MAX_CHAIN_OUTPUT {
                counters.add(metrics::TX_DROPPED, left as u64);
                break;
            }
            if mem.read_slice(&mut buf[..n], addr).is_err() {
                counters.inc(metrics::ERRORS);
                return;
            }
            let dropped = backend.output.write(&buf[..n]);
            counters.add(metrics::TX_BYTES, (n - dropped) as u64);
            counters.add(metrics::TX_DROPPED, dropped as u64);
            taken += n;
            left -= n;
            match addr.checked_add(n as u64) {
                Some(next) => addr = next,
                None => break,
            }
        }
    }
}

/// Moves pending bytes into the chain's writable buffers; returns the bytes written.
fn fill_chain(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    pending: &mut VecDeque<u8>,
    counters: &Counters,
) -> u32 {
    let mut written = 0usize;
    for desc in chain.writable() {
        if pending.is_empty() {
            break;
        }
        let n = (desc.len() as usize).min(pending.len());
        let bytes: Vec<u8> = pending.iter().take(n).copied().collect();
        if mem.write_slice(&bytes, desc.addr()).is_err() {
            counters.inc(metrics::ERRORS);
            break;
        }
        pending.drain(..n);
        written += n;
    }
    counters.add(metrics::RX_BYTES, written as u64);
    written as u32
}

impl MutEventSubscriber for ConsoleHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if self.rx.as_ref().is_some_and(|q| q.notify.as_raw_fd() == fd) {
            if let Some(q) = &self.rx {
                let _ = q.notify.read();
            }
            self.on_rx_notify(ops);
        } else if self.tx.as_ref().is_some_and(|q| q.notify.as_raw_fd() == fd) {
            if let Some(q) = &self.tx {
                let _ = q.notify.read();
            }
            self.process_tx();
        } else if Some(fd) == self.input_fd() {
            self.on_input(events, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for q in [&self.rx, &self.tx].into_iter().flatten() {
            if ops.add(Events::new(&q.notify, EventSet::IN)).is_err() {
                self.broken = true;
                self.interrupt.set_needs_reset();
                return;
            }
        }
        if let Some(fd) = self.input_fd() {
            self.input = match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => Input::Polled(true),
                // EPERM: regular files and /dev/null cannot be polled; they are always
                // readable.
                Err(_) => Input::AlwaysReady,
            };
        }
        // Whatever the driver queued before DRIVER_OK.
        self.process_tx();
        self.process_rx();
    }
}

#[path = "handler_persist.rs"]
mod persist;

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::super::device::ConsoleOutput;
    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    fn active(vq: &MockSplitQueue<GuestMemoryMmap>, index: u16) -> ActiveQueue {
        ActiveQueue {
            index,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    fn input_file(bytes: &[u8]) -> File {
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(bytes).unwrap();
        drop(w);
        File::from(std::os::fd::OwnedFd::from(r))
    }

    #[test]
    fn test_console_tx_chain_bytes_written_in_order() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        vq.add_desc_chains(
            &[desc(0x8000, 6, VRING_DESC_F_NEXT, 1), desc(0x9000, 3, 0, 0)],
            0,
        )
        .unwrap();
        m.write_slice(b"hello ", GuestAddress(0x8000)).unwrap();
        m.write_slice(b"hvc", GuestAddress(0x9000)).unwrap();
        let sink = Sink::default();
        let backend = ConsoleBackend::new(ConsoleOutput::Writer(Box::new(sink.clone())), None);
        let irq = Arc::new(CountingInterrupt::default());
        let counters = Counters::new(metrics::NAMES);
        let mut h = ConsoleHandler::new(
            None,
            Some(active(&vq, 1)),
            backend,
            m.clone(),
            irq.clone(),
            counters.clone(),
        );

        h.process_tx();

        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hello hvc");
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(counters.get(metrics::TX_BYTES), 9);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn test_console_rx_input_split_across_buffers_and_kept_until_buffers() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        let backend = ConsoleBackend::new(ConsoleOutput::Discard, Some(input_file(b"abcdef")));
        let irq = Arc::new(CountingInterrupt::default());
        let counters = Counters::new(metrics::NAMES);
        let mut h = ConsoleHandler::new(
            Some(active(&vq, 0)),
            None,
            backend,
            m.clone(),
            irq.clone(),
            counters.clone(),
        );
        h.input = Input::Polled(true);

        assert!(h.read_input());
        h.process_rx();
        let held = h.pending.len();
        vq.add_desc_chains(
            &[
                desc(0x8000, 4, VRING_DESC_F_WRITE, 0),
                desc(0x9000, 4, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        h.process_rx();

        let mut got = [0u8; 6];
        m.read_slice(&mut got[..4], GuestAddress(0x8000)).unwrap();
        m.read_slice(&mut got[4..], GuestAddress(0x9000)).unwrap();
        assert_eq!(held, 6);
        assert_eq!(&got, b"abcdef");
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().len(), 2);
        assert_eq!(counters.get(metrics::RX_BYTES), 6);
        assert!(!h.read_input(), "end of input not seen");
    }

    #[test]
    fn test_console_tx_buffer_outside_ram_counted_and_chain_completed() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        vq.add_desc_chains(&[desc(0xffff_0000, 16, 0, 0)], 0)
            .unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let counters = Counters::new(metrics::NAMES);
        let mut h = ConsoleHandler::new(
            None,
            Some(active(&vq, 1)),
            ConsoleBackend::null(),
            m.clone(),
            irq,
            counters.clone(),
        );

        h.process_tx();

        assert_eq!(counters.get(metrics::ERRORS), 1);
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn test_console_pty_output_dropped_when_nobody_reads() {
        let backend = ConsoleBackend::pty().unwrap();
        let path = backend.pty_path().unwrap().to_path_buf();
        let ConsoleOutput::Pty(_) = &backend.output else {
            panic!("not a pty backend");
        };
        let mut backend = backend;
        let big = vec![b'x'; 1 << 20];

        let dropped = backend.output.write(&big);

        assert!(path.starts_with("/dev/pts"), "{path:?}");
        assert!(dropped > 0 && dropped < big.len(), "dropped {dropped}");
    }
}
