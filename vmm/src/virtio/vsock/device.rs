//! The virtio-vsock device: its CID, its listening socket, and its worker's lifetime.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vm_memory::GuestMemoryMmap;

use super::event_handler::VsockHandler;
use super::{metrics, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::counters::Counters;
use crate::virtio::worker::Worker;
use crate::virtio::{features, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// A virtio-vsock device.
pub struct Vsock {
    pub(super) id: String,
    pub(super) cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    acked: u64,
    counters: Arc<Counters>,
    pub(super) worker: Option<Worker<VsockHandler>>,
    /// The event queue (transport reset events after a restore: `persist.rs`).
    pub(super) event: Option<ActiveQueue>,
    /// Guest memory and the interrupt, while active (for the event queue).
    pub(super) active: Option<(GuestMemoryMmap, Arc<dyn VirtioInterrupt>)>,
    /// The worker's handler while a snapshot is written.
    pub(super) parked: Option<VsockHandler>,
}

impl Vsock {
    /// Device `id` for guest `cid`, listening on `socket` (which must not exist yet).
    pub fn new(id: &str, cid: u64, socket: &Path) -> std::io::Result<Vsock> {
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        Ok(Vsock {
            id: id.to_string(),
            cid,
            socket: socket.to_path_buf(),
            listener,
            acked: 0,
            counters: Counters::new(metrics::NAMES),
            worker: None,
            event: None,
            active: None,
            parked: None,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        crate::virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                EVENT_QUEUE => self.event = Some(q),
                _ => {}
            }
        }
        self.active = Some((mem.clone(), Arc::clone(&interrupt)));
        let listener = self.listener.try_clone().map_err(ActivateError::Backend)?;
        let handler = VsockHandler::new(
            (rx, tx),
            listener,
            self.socket.clone(),
            self.cid,
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
        self.parked = None;
        self.event = None;
        self.active = None;
        if let Some(worker) = self.worker.take() {
            // The handler's connections close with it; the listener stays with the device.
            if worker.stop().is_none() {
                return false;
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

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}
