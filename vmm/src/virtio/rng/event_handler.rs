//! The virtio-rng worker's event subscriber: the request queue's notify eventfd.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::device::EntropySource;
use super::{metrics, MAX_REQUEST_BYTES};
use crate::counters::Counters;
use crate::virtio::queue::Chain;
use crate::virtio::{ActiveQueue, VirtioInterrupt};

/// What the worker owns while the device runs.
pub struct RngHandler {
    /// The request queue.
    pub queue: ActiveQueue,
    /// Where the entropy comes from.
    pub source: EntropySource,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<Counters>,
    buf: Vec<u8>,
    broken: bool,
}

impl RngHandler {
    /// A handler serving `queue` from `source`.
    pub fn new(
        queue: ActiveQueue,
        source: EntropySource,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        counters: Arc<Counters>,
    ) -> RngHandler {
        RngHandler {
            queue,
            source,
            mem,
            interrupt,
            counters,
            buf: vec![0; MAX_REQUEST_BYTES],
            broken: false,
        }
    }

    /// Serves every pending request.
    pub fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let RngHandler {
            queue,
            source,
            mem,
            interrupt,
            counters,
            buf,
            ..
        } = self;
        let result = queue.serve(mem, interrupt.as_ref(), |chain| {
            fill_chain(chain, mem, source, buf, counters)
        });
        if result.is_err() {
            self.broken = true;
            self.counters.inc(metrics::QUEUE_BROKEN);
            self.interrupt.set_needs_reset();
        }
    }
}

/// Fills the chain's writable buffers, at most [`MAX_REQUEST_BYTES`] in all; returns the bytes
/// written.
fn fill_chain(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    source: &mut EntropySource,
    buf: &mut [u8],
    counters: &Counters,
) -> u32 {
    counters.inc(metrics::REQUESTS);
    let mut written = 0usize;
    for desc in chain.writable() {
        let want = (desc.len() as usize).min(buf.len() - written);
        if want == 0 {
            break;
        }
        let chunk = &mut buf[..want];
        let n = match source.fill(chunk) {
            Ok(n) => n,
            Err(_) => {
                counters.inc(metrics::ERRORS);
                break;
            }
        };
        if mem.write_slice(&chunk[..n], desc.addr()).is_err() {
            counters.inc(metrics::ERRORS);
            break;
        }
        written += n;
        if n < want {
            break;
        }
    }
    counters.add(metrics::BYTES, written as u64);
    written as u32
}

impl MutEventSubscriber for RngHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.queue.notify.read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.queue.notify, EventSet::IN))
            .is_err()
        {
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
