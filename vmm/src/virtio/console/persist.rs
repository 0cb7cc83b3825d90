//! virtio-console in a snapshot: quiescing stops the worker, writes out every transmit chain
//! the guest queued and starts the worker again. The receive queue never holds a buffer it
//! took (it takes one only to fill it at once). Host input the worker read but the guest has
//! not received yet is not carried: the restored VM's console starts with none pending.

use super::Console;
use crate::virtio::persist::{QueuePosition, VirtioPersist};
use crate::virtio::worker::Worker;

impl VirtioPersist for Console {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        let Some(worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let mut handler = worker
            .stop()
            .ok_or_else(|| format!("the worker of {} ended", self.id))?;
        handler.drain_tx();
        let positions = handler.positions();
        let interrupt = handler.interrupt();
        let worker = Worker::spawn(format!("virtio-{}", self.id), handler, interrupt)
            .map_err(|e| e.to_string())?;
        self.worker = Some(worker);
        Ok(positions)
    }
}
