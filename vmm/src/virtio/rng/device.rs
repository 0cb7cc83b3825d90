//! The virtio-rng device: what it offers and its worker's lifetime.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vm_memory::GuestMemoryMmap;

use super::event_handler::RngHandler;
use super::{metrics, DEFAULT_SOURCE, QUEUE_SIZE};
use crate::counters::Counters;
use crate::virtio::worker::Worker;
use crate::virtio::{features, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Where entropy comes from.
pub enum EntropySource {
    /// getrandom(2): the kernel's urandom pool without a file descriptor.
    Getrandom,
    /// Reads of a file (a character device such as /dev/random, or a regular file whose
    /// bytes run out at its end).
    File(File),
}

impl EntropySource {
    /// The source `src` names: getrandom(2) for `/dev/urandom`, else the file opened for
    /// reading.
    pub fn open(src: &Path) -> std::io::Result<EntropySource> {
        if src == Path::new(DEFAULT_SOURCE) {
            return Ok(EntropySource::Getrandom);
        }
        Ok(EntropySource::File(File::open(src)?))
    }

    /// Fills the front of `buf`; returns how many bytes (fewer only at the end of a file).
    pub fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            EntropySource::Getrandom => {
                let mut done = 0;
                while done < buf.len() {
                    let rest = &mut buf[done..];
                    // SAFETY: the pointer and length describe `rest`, a live, writable
                    // slice; getrandom writes at most that many bytes into it.
                    let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                        continue;
                    }
                    done += n as usize;
                }
                Ok(done)
            }
            EntropySource::File(f) => {
                let mut done = 0;
                while done < buf.len() {
                    match f.read(&mut buf[done..]) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            }
        }
    }
}

/// A virtio-rng device.
pub struct Rng {
    id: String,
    source: Option<EntropySource>,
    acked: u64,
    counters: Arc<Counters>,
    worker: Option<Worker<RngHandler>>,
}

impl Rng {
    /// Device `id` (its worker thread is `virtio-<id>`) serving entropy from `source`.
    pub fn new(id: &str, source: EntropySource) -> Rng {
        Rng {
            id: id.to_string(),
            source: Some(source),
            acked: 0,
            counters: Counters::new(metrics::NAMES),
            worker: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let queue = queues.into_iter().find(|q| q.index == 0).ok_or_else(|| {
            ActivateError::InvalidQueues("the request queue is not enabled".into())
        })?;
        let source = self.source.take().ok_or_else(|| {
            ActivateError::Backend(std::io::Error::other("the entropy source was lost"))
        })?;
        let handler = RngHandler::new(
            queue,
            source,
            mem,
            Arc::clone(&interrupt),
            self.counters.clone(),
        );
        self.worker = Some(Worker::spawn(
            format!("virtio-{}", self.id),
            handler,
            interrupt,
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.source = Some(handler.source),
                None => return false,
            }
        }
        self.acked = 0;
        true
    }

    fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    fn persist(&mut self) -> Option<&mut dyn crate::virtio::persist::VirtioPersist> {
        Some(self)
    }
}

#[path = "persist.rs"]
mod persist;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    fn file_source(bytes: &[u8]) -> EntropySource {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "strata-rng-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        EntropySource::File(f)
    }

    fn handler(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        source: EntropySource,
    ) -> (RngHandler, Arc<CountingInterrupt>, Arc<Counters>) {
        let irq = Arc::new(CountingInterrupt::default());
        let counters = Counters::new(metrics::NAMES);
        let q = ActiveQueue {
            index: 0,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let h = RngHandler::new(q, source, m.clone(), irq.clone(), counters.clone());
        (h, irq, counters)
    }

    #[test]
    fn test_rng_fills_writable_buffers_from_source_and_skips_readable() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                desc(0x8000, 4, VRING_DESC_F_NEXT, 1),
                desc(0x9000, 3, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(0xa000, 2, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        m.write_slice(&[0xee; 4], GuestAddress(0x8000)).unwrap();
        let (mut h, irq, counters) = handler(&m, &vq, file_source(b"abcdefgh"));

        h.process_queue();

        let mut got = [0u8; 5];
        m.read_slice(&mut got[..3], GuestAddress(0x9000)).unwrap();
        m.read_slice(&mut got[3..], GuestAddress(0xa000)).unwrap();
        assert_eq!(&got, b"abcde");
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 5);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
        assert_eq!(counters.get(metrics::BYTES), 5);
    }

    #[test]
    fn test_rng_source_at_end_of_file_returns_short_request() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(0x9000, 16, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let (mut h, _irq, _c) = handler(&m, &vq, file_source(b"xyz"));

        h.process_queue();

        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 3);
    }

    #[test]
    fn test_rng_getrandom_huge_buffer_capped_and_outside_ram_counted() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                desc(0x10000, u32::MAX, VRING_DESC_F_WRITE, 0),
                desc(0xfff0_0000, 64, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let (mut h, _irq, counters) = handler(&m, &vq, EntropySource::Getrandom);

        h.process_queue();

        let used = |i| vq.used().ring().ref_at(i).unwrap().load().len();
        assert_eq!(
            (used(0), used(1)),
            (super::super::MAX_REQUEST_BYTES as u32, 0)
        );
        assert_eq!(counters.get(metrics::ERRORS), 1);
        let mut sample = [0u8; 64];
        m.read_slice(&mut sample, GuestAddress(0x10000)).unwrap();
        assert!(sample.iter().any(|&b| b != sample[0]));
    }

    #[test]
    fn test_rng_broken_ring_sets_needs_reset_once() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.avail().idx().store(100);
        let (mut h, _irq, counters) = handler(&m, &vq, EntropySource::Getrandom);

        h.process_queue();
        h.process_queue();

        assert_eq!(counters.get(metrics::QUEUE_BROKEN), 1);
    }

    #[test]
    fn test_rng_device_offers_and_needs_queue_zero() {
        let mut rng = Rng::new("rng0", EntropySource::Getrandom);
        let irq: Arc<dyn VirtioInterrupt> = Arc::new(CountingInterrupt::default());

        let err = rng.activate(mem(), irq, Vec::new());

        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_ne!(rng.features() & features::VERSION_1, 0);
        assert!(matches!(err, Err(ActivateError::InvalidQueues(_))));
    }

    #[test]
    fn test_rng_device_reset_takes_source_back_for_next_activation() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut rng = Rng::new("rng-test", EntropySource::Getrandom);
        let irq: Arc<dyn VirtioInterrupt> = Arc::new(CountingInterrupt::default());
        let q = || ActiveQueue {
            index: 0,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };

        rng.activate(m.clone(), irq.clone(), vec![q()]).unwrap();
        assert!(rng.reset());
        let again = rng.activate(m.clone(), irq, vec![q()]);

        assert!(again.is_ok());
        assert!(rng.reset());
    }
}
