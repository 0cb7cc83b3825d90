//! What a snapshot needs of the virtio-rng worker's handler.

use std::sync::Arc;

use super::RngHandler;
use crate::virtio::VirtioInterrupt;

impl RngHandler {
    /// The interrupt the worker raises (to start it again).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        Arc::clone(&self.interrupt)
    }
}
