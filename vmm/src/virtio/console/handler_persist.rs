//! What a snapshot needs of the virtio-console worker's handler.

use std::sync::Arc;

use super::ConsoleHandler;
use crate::virtio::persist::QueuePosition;
use crate::virtio::{QueueT, VirtioInterrupt};

impl ConsoleHandler {
    /// Writes out every transmit chain the guest has queued (the worker is stopped).
    pub fn drain_tx(&mut self) {
        self.process_tx();
    }

    /// Where each active queue is.
    pub fn positions(&self) -> Vec<QueuePosition> {
        [&self.rx, &self.tx]
            .into_iter()
            .flatten()
            .map(|q| QueuePosition {
                index: q.index,
                next_avail: q.queue.next_avail(),
                next_used: q.queue.next_used(),
            })
            .collect()
    }

    /// The interrupt the worker raises (to start it again).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        Arc::clone(&self.interrupt)
    }
}
