//! virtio-rng in a snapshot: quiescing stops the worker, serves every available request and
//! starts the worker again. No state of its own (entropy is not state).

use super::Rng;
use crate::virtio::persist::{QueuePosition, VirtioPersist};
use crate::virtio::worker::Worker;
use crate::virtio::QueueT;

impl VirtioPersist for Rng {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        let Some(worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let mut handler = worker
            .stop()
            .ok_or_else(|| format!("the worker of {} ended", self.id))?;
        handler.process_queue();
        let q = &handler.queue;
        let position = QueuePosition {
            index: q.index,
            next_avail: q.queue.next_avail(),
            next_used: q.queue.next_used(),
        };
        let interrupt = handler.interrupt();
        let worker = Worker::spawn(format!("virtio-{}", self.id), handler, interrupt)
            .map_err(|e| e.to_string())?;
        self.worker = Some(worker);
        Ok(vec![position])
    }
}
