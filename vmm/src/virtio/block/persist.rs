//! virtio-blk in a snapshot: quiescing stops the worker, answers every request it took and
//! every one available, flushes the image and starts the worker again (it then finds nothing
//! to do while the vCPUs are paused). The device has no state of its own: the image is the
//! disk, named in the snapshot with its size.

use super::Block;
use crate::virtio::persist::{QueuePosition, VirtioPersist};
use crate::virtio::worker::Worker;

impl VirtioPersist for Block {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        let Some(worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let mut handler = worker
            .stop()
            .ok_or_else(|| format!("the worker of {} ended", self.id))?;
        let drained = handler.drain();
        let flushed = self
            .disk
            .flush()
            .map_err(|e| format!("unable to flush the disk: {e}"));
        let position = handler.position();
        let interrupt = handler.interrupt();
        let worker = Worker::spawn_with_exit(
            format!("virtio-{}", self.id),
            handler,
            interrupt,
            super::BlockHandler::settle,
        )
        .map_err(|e| e.to_string())?;
        self.worker = Some(worker);
        drained?;
        flushed?;
        Ok(vec![position])
    }
}
