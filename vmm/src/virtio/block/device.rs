//! The virtio-blk device: features and configuration space from the image's capabilities,
//! and its worker's lifetime.

use std::sync::Arc;
use std::time::Duration;

use disk::{Capabilities, SharedDisk};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::GuestMemoryMmap;

use super::event_handler::BlockHandler;
use super::{feature, metrics, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX};
use crate::counters::Counters;
use crate::virtio::worker::Worker;
use crate::virtio::{features, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Sectors one discard or write-zeroes request may cover (the device's `max_*_sectors`).
const MAX_RANGE_SECTORS: u32 = 0x3fff_ffff;

/// A virtio-blk device on an open image.
pub struct Block {
    id: String,
    disk: SharedDisk,
    caps: Capabilities,
    serial: [u8; ID_BYTES],
    acked: u64,
    counters: Arc<Counters>,
    worker: Option<Worker<BlockHandler>>,
    /// The worker's largest polling window (zero: no polling; docs/decisions/0016).
    poll_max: Duration,
}

impl Block {
    /// Device `id` (its worker thread is `virtio-<id>`) on `disk`; `serial` is what GET_ID
    /// answers (at most 20 bytes; longer is cut).
    pub fn new(id: &str, disk: SharedDisk, serial: &str) -> Block {
        let mut s = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Block {
            id: id.to_string(),
            caps: disk.capabilities(),
            disk,
            serial: s,
            acked: 0,
            counters: Counters::new(metrics::NAMES),
            worker: None,
            poll_max: Duration::ZERO,
        }
    }

    /// Makes the worker poll its queue after each batch for an adaptive window of at most
    /// `max` (docs/decisions/0016).
    pub fn with_polling(mut self, max: Duration) -> Block {
        self.poll_max = max;
        self
    }

    /// The configuration space (virtio 1.2, 5.2.4), 60 bytes.
    fn config(&self) -> [u8; 60] {
        let c = &self.caps;
        let mut b = [0u8; 60];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.disk.size() / SECTOR_SIZE).to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &c.logical_block_size.to_le_bytes());
        let ratio = (c.physical_block_size / c.logical_block_size.max(1)).max(1);
        put(24, &[ratio.trailing_zeros() as u8, 0]);
        put(26, &1u16.to_le_bytes());
        put(34, &1u16.to_le_bytes());
        if c.discard {
            put(36, &MAX_RANGE_SECTORS.to_le_bytes());
            put(40, &1u32.to_le_bytes());
            let align = (u64::from(c.discard_alignment) / SECTOR_SIZE).max(1) as u32;
            put(44, &align.to_le_bytes());
        }
        if c.write_zeroes {
            put(48, &MAX_RANGE_SECTORS.to_le_bytes());
            put(52, &1u32.to_le_bytes());
            put(56, &[u8::from(c.write_zeroes_may_unmap)]);
        }
        b
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let c = &self.caps;
        let mut f = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::TOPOLOGY;
        for (offered, bit) in [
            (c.read_only, feature::RO),
            (c.flush, feature::FLUSH),
            (c.discard, feature::DISCARD),
            (c.write_zeroes, feature::WRITE_ZEROES),
        ] {
            if offered {
                f |= bit;
            }
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        crate::virtio::read_config_bytes(&config, offset, data);
    }

    /// Only `writeback` is writable in the spec, and only with CONFIG_WCE, which is not
    /// offered: writes are ignored.
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
        let engine = self
            .disk
            .engine_inline(u32::from(QUEUE_SIZE))
            .map_err(|e| ActivateError::Backend(std::io::Error::other(e.to_string())))?;
        let handler = BlockHandler::new(
            engine,
            queue,
            mem,
            Arc::clone(&interrupt),
            Arc::clone(&self.counters),
            self.serial,
        )
        .with_polling(self.poll_max);
        self.worker = Some(Worker::spawn_with_exit(
            format!("virtio-{}", self.id),
            handler,
            interrupt,
            BlockHandler::settle,
        )?);
        Ok(())
    }

    /// Stops the worker; dropping its handler waits for the requests the engine holds.
    fn reset(&mut self) -> bool {
        if let Some(worker) = self.worker.take() {
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

#[path = "persist.rs"]
mod persist;
