//! Serving a queue from a device's worker: take the chains the driver made available, give
//! them back used, interrupt the driver when it asked to be, all through virtio-queue.
//!
//! A driver cannot make a worker spin or fail: one [`ActiveQueue::serve`] call serves at most
//! [`MAX_ROUNDS`] queue-fulls and then re-signals its own notify eventfd so that other events
//! (a stop, another queue) get their turn; a broken ring (an available index more than a queue
//! ahead, rings that stop being writable) marks the queue broken and the device
//! DEVICE_NEEDS_RESET; descriptor chains that loop or point outside RAM end where
//! virtio-queue's iterator stops them or where the memory access fails.

use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::GuestMemoryMmap;

use super::{ActiveQueue, QueueT, VirtioInterrupt, VirtioInterruptType};

/// Queue-fulls served per notification before yielding to other events.
pub const MAX_ROUNDS: usize = 4;

/// A chain as a worker sees it.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// The queue can no longer be used until the driver resets the device.
#[derive(Debug, thiserror::Error)]
#[error("virtio queue {index} is broken: {reason}")]
pub struct BrokenQueue {
    /// The queue.
    pub index: u16,
    /// What the driver did.
    pub reason: String,
}

impl ActiveQueue {
    /// The queue, broken by `e`.
    pub(crate) fn broken(&self, e: virtio_queue::Error) -> BrokenQueue {
        BrokenQueue {
            index: self.index,
            reason: e.to_string(),
        }
    }

    /// The next available chain, if any.
    pub fn pop<'m>(&mut self, mem: &'m GuestMemoryMmap) -> Result<Option<Chain<'m>>, BrokenQueue> {
        match self.queue.iter(mem) {
            Ok(mut it) => Ok(it.next()),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Whether the driver made chains available that the device has not taken yet.
    pub fn has_available(&self, mem: &GuestMemoryMmap) -> Result<bool, BrokenQueue> {
        let avail = self
            .queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| self.broken(e))?;
        Ok(avail.0 != self.queue.next_avail())
    }

    /// Puts chain `head` in the used ring with `len` bytes written.
    pub fn push_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), BrokenQueue> {
        self.queue
            .add_used(mem, head, len)
            .map_err(|e| self.broken(e))
    }

    /// Interrupts the driver if it wants to hear about the used buffers added since the last
    /// call: with EVENT_IDX the used-event index decides (virtio-queue), without it the
    /// available ring's VRING_AVAIL_F_NO_INTERRUPT flag does (virtio 1.2, 2.7.7.2: the device
    /// SHOULD NOT interrupt then; virtio-queue ignores the flag). A polling driver that sets it
    /// costs the VMM no irqfd write and its vCPU no interrupt per batch.
    pub fn signal_used(&mut self, mem: &GuestMemoryMmap, interrupt: &dyn VirtioInterrupt) {
        // Always asked, so that virtio-queue's count of used buffers since the last check
        // stays in step.
        let wanted = self.queue.needs_notification(mem).unwrap_or(true);
        if !wanted || (!self.queue.event_idx_enabled() && self.driver_suppresses_interrupts(mem)) {
            return;
        }
        let _ = interrupt.trigger(VirtioInterruptType::Queue(self.index));
    }

    /// Whether the available ring's flags say VRING_AVAIL_F_NO_INTERRUPT (read after a full
    /// fence, so that the used-ring writes before it are visible first; an unreadable ring
    /// counts as not suppressing).
    fn driver_suppresses_interrupts(&self, mem: &GuestMemoryMmap) -> bool {
        use vm_memory::{Bytes, GuestAddress};
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let addr = GuestAddress(self.queue.avail_ring());
        mem.load::<u16>(addr, std::sync::atomic::Ordering::Acquire)
            .map(|flags| {
                flags & virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16
                    != 0
            })
            .unwrap_or(false)
    }

    /// Asks the driver to notify again (with event index: for the next buffer); returns
    /// whether buffers arrived meanwhile.
    pub fn rearm(&mut self, mem: &GuestMemoryMmap) -> Result<bool, BrokenQueue> {
        self.queue
            .enable_notification(mem)
            .map_err(|e| self.broken(e))
    }

    /// Serves every available chain with `serve` (which returns the bytes it wrote into the
    /// chain), signals the driver, and re-arms notifications; returns the chains served.
    pub fn serve<F>(
        &mut self,
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
        mut serve: F,
    ) -> Result<usize, BrokenQueue>
    where
        F: FnMut(Chain<'_>) -> u32,
    {
        let mut served = 0;
        for _ in 0..MAX_ROUNDS {
            let limit = usize::from(self.queue.size());
            let mut round = 0;
            while round < limit {
                let Some(chain) = self.pop(mem)? else { break };
                let head = chain.head_index();
                let len = serve(chain);
                self.push_used(mem, head, len)?;
                round += 1;
            }
            served += round;
            if round > 0 {
                self.signal_used(mem, interrupt);
            }
            if !self.rearm(mem)? {
                return Ok(served);
            }
        }
        // More keeps coming: come back after the other events.
        let _ = self.notify.write(1);
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::transport::test_util::CountingInterrupt;
    use crate::virtio::Queue;
    use std::sync::atomic::Ordering;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn active(vq: &MockSplitQueue<GuestMemoryMmap>) -> ActiveQueue {
        ActiveQueue {
            index: 0,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    #[test]
    fn test_serve_writes_used_ring_and_interrupts() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                desc(0x8000, 0x100, VRING_DESC_F_WRITE, 0),
                desc(0x9000, 0x10, VRING_DESC_F_NEXT, 2),
                desc(0xa000, 0x20, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut q = active(&vq);
        let irq = CountingInterrupt::default();

        let served = q
            .serve(&m, &irq, |chain| chain.writable().map(|d| d.len()).sum())
            .unwrap();

        assert_eq!(served, 2);
        assert_eq!(vq.used().idx().load(), 2);
        let used = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!((used.id(), used.len()), (1, 0x20));
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn test_has_available_until_popped() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = active(&vq);
        let empty = q.has_available(&m).unwrap();
        vq.add_desc_chains(&[desc(0x8000, 0x100, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();

        let posted = q.has_available(&m).unwrap();
        assert!(q.pop(&m).unwrap().is_some());
        let taken = q.has_available(&m).unwrap();

        assert_eq!((empty, posted, taken), (false, true, false));
    }

    #[test]
    fn test_signal_used_no_interrupt_flag_skips_interrupt() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = active(&vq);
        let irq = CountingInterrupt::default();
        q.push_used(&m, 0, 0).unwrap();
        m.write_obj(1u16, vq.avail_addr()).unwrap();

        q.signal_used(&m, &irq);
        let suppressed = irq.queue.load(Ordering::SeqCst);
        m.write_obj(0u16, vq.avail_addr()).unwrap();
        q.push_used(&m, 1, 0).unwrap();
        q.signal_used(&m, &irq);

        assert_eq!(suppressed, 0);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn test_serve_avail_index_too_far_ahead_is_broken_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.avail().idx().store(17);
        let mut q = active(&vq);
        let irq = CountingInterrupt::default();

        let err = q.serve(&m, &irq, |_| 0).unwrap_err();

        assert_eq!(err.index, 0);
        assert_eq!(vq.used().idx().load(), 0);
    }

    #[test]
    fn test_serve_looping_chain_ends_within_queue_size() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        // 0 -> 1 -> 0 -> ...: a loop.
        vq.add_desc_chains(
            &[
                desc(0x8000, 0x10, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x9000, 0x10, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
        let mut q = active(&vq);
        let irq = CountingInterrupt::default();
        let mut seen = 0;

        q.serve(&m, &irq, |chain| {
            seen = chain.count();
            0
        })
        .unwrap();

        assert!(seen <= 4, "{seen} descriptors yielded");
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn test_serve_descriptor_outside_ram_fails_only_that_write() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(0xfff0_0000, 0x100, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let mut q = active(&vq);
        let irq = CountingInterrupt::default();

        let served = q
            .serve(&m, &irq, |chain| {
                let d = chain.writable().next().unwrap();
                match m.write_slice(&[1; 0x100], d.addr()) {
                    Ok(()) => d.len(),
                    Err(_) => 0,
                }
            })
            .unwrap();

        assert_eq!(served, 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    }

    #[test]
    fn test_serve_used_ring_outside_ram_is_broken_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(0x8000, 0x10, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let mut q = active(&vq);
        q.queue
            .try_set_used_ring_address(GuestAddress(0x20_0000))
            .unwrap();
        let irq = CountingInterrupt::default();

        assert!(q.serve(&m, &irq, |_| 0).is_err());
    }
}
