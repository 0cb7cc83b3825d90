//! virtio-vsock in a snapshot, as Firecracker does it: the queues are carried, the host-side
//! connections are not. Quiescing stops the worker, which stays stopped until the snapshot is
//! written (the source VM keeps its connections and goes on with them if it is resumed); the
//! restored device starts with none and, once activated, puts a
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event in the event queue, on which the guest drops
//! every connection it had and reads its CID again (a clone may have a new one:
//! docs/decisions/0018). No state of the device's own: the CID and the socket are the
//! configuration's.

use vm_memory::{Bytes, GuestAddress};

use super::Vsock;
use crate::virtio::persist::{QueuePosition, VirtioPersist};
use crate::virtio::worker::Worker;
use crate::virtio::QueueT;

/// virtio_vsock_event.id of a transport reset.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    /// Puts a transport reset event in the event queue and interrupts the guest; does nothing
    /// if the guest posted no event buffer (it then keeps its connections, which the device
    /// answers with RST).
    pub fn send_transport_reset(&mut self) -> Result<(), String> {
        let (Some(q), Some((mem, irq))) = (self.event.as_mut(), self.active.as_ref()) else {
            return Ok(());
        };
        let Some(chain) = q.pop(mem).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let head = chain.head_index();
        let room = chain
            .writable()
            .next()
            .filter(|d| d.len() >= 4)
            .map(|d| d.addr());
        let written = match room {
            Some(addr) => {
                mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), GuestAddress(addr.0))
                    .map_err(|e| format!("unable to write the reset event: {e}"))?;
                4
            }
            None => 0,
        };
        q.push_used(mem, head, written).map_err(|e| e.to_string())?;
        q.signal_used(mem, irq.as_ref());
        Ok(())
    }
}

impl VirtioPersist for Vsock {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        let Some(worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let handler = worker
            .stop()
            .ok_or_else(|| format!("the worker of {} ended", self.id))?;
        let mut positions = handler.positions();
        positions.extend(self.event.as_ref().map(|q| QueuePosition {
            index: q.index,
            next_avail: q.queue.next_avail(),
            next_used: q.queue.next_used(),
        }));
        self.parked = Some(handler);
        Ok(positions)
    }

    fn resume_after_snapshot(&mut self) -> Result<(), String> {
        let Some(handler) = self.parked.take() else {
            return Ok(());
        };
        let interrupt = handler.interrupt();
        let worker = Worker::spawn(format!("virtio-{}", self.id), handler, interrupt)
            .map_err(|e| e.to_string())?;
        self.worker = Some(worker);
        Ok(())
    }

    fn restored(&mut self) -> Result<(), String> {
        self.send_transport_reset()
    }
}
