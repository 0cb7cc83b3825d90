//! The virtio-net device: what it offers, its configuration space, and its worker's lifetime.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use vm_memory::GuestMemoryMmap;

use super::event_handler::{self, NetHandler};
use super::tap::{offload, Tap};
use super::{features as f, metrics, DEFAULT_MTU, HDR_LEN, LEGACY_HDR_LEN, S_LINK_UP};
use crate::counters::Counters;
use crate::virtio::worker::Worker;
use crate::virtio::{features, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// What a virtio-net device is made of, besides its tap.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU), if configured.
    pub mtu: Option<u16>,
    /// Entries of each queue.
    pub queue_size: u16,
    /// Offer checksum offload.
    pub offload_csum: bool,
    /// Offer TCP segmentation offload.
    pub offload_tso: bool,
    /// `mac` was configured (not generated): a restore keeps it instead of the snapshot's.
    pub mac_configured: bool,
}

/// A virtio-net device on a tap.
pub struct Net {
    pub(super) id: String,
    tap: Option<Tap>,
    pub(super) params: NetParams,
    queue_sizes: [u16; 2],
    acked: u64,
    counters: Arc<Counters>,
    pub(super) worker: Option<Worker<NetHandler>>,
    /// The worker's handler while a snapshot is written (`persist.rs`).
    pub(super) parked: Option<NetHandler>,
}

impl Net {
    /// Device `id` (its worker thread is `virtio-<id>`) on `tap`.
    pub fn new(id: &str, tap: Tap, params: NetParams) -> Net {
        Net {
            id: id.to_string(),
            tap: Some(tap),
            queue_sizes: [params.queue_size; 2],
            params,
            acked: 0,
            counters: Counters::new(metrics::NAMES),
            worker: None,
            parked: None,
        }
    }

    /// The configuration space: mac, status, max_virtqueue_pairs, mtu.
    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.params.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.params.mtu.unwrap_or(DEFAULT_MTU).to_le_bytes());
        c
    }

    /// The tap's offload flags for what the guest accepted on receive.
    fn tap_offloads(acked: u64) -> u32 {
        let mut flags = 0;
        if acked & f::GUEST_CSUM != 0 {
            flags |= offload::CSUM;
            if acked & f::GUEST_TSO4 != 0 {
                flags |= offload::TSO4;
            }
            if acked & f::GUEST_TSO6 != 0 {
                flags |= offload::TSO6;
            }
            if acked & f::GUEST_ECN != 0 && flags & (offload::TSO4 | offload::TSO6) != 0 {
                flags |= offload::TSO_ECN;
            }
        }
        flags
    }

    /// The header length the negotiated features give.
    fn hdr_len(acked: u64) -> usize {
        if acked & (features::VERSION_1 | f::MRG_RXBUF) != 0 {
            HDR_LEN
        } else {
            LEGACY_HDR_LEN
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut v = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | f::MAC
            | f::STATUS
            | f::MRG_RXBUF;
        if self.params.mtu.is_some() {
            v |= f::MTU;
        }
        if self.params.offload_csum {
            v |= f::CSUM | f::GUEST_CSUM;
            if self.params.offload_tso {
                v |= f::HOST_TSO4
                    | f::HOST_TSO6
                    | f::HOST_ECN
                    | f::GUEST_TSO4
                    | f::GUEST_TSO6
                    | f::GUEST_ECN;
            }
        }
        v
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
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
                super::RX_QUEUE => rx = Some(q),
                super::TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let tap = self.tap.take().ok_or_else(|| {
            ActivateError::Backend(std::io::Error::other("the tap was lost by a failed reset"))
        })?;
        let hdr_len = Net::hdr_len(self.acked);
        let configured = tap
            .set_vnet_hdr_size(hdr_len as i32)
            .and_then(|()| tap.set_offload(Net::tap_offloads(self.acked)));
        if let Err(e) = configured {
            self.tap = Some(tap);
            return Err(ActivateError::Backend(std::io::Error::other(e.to_string())));
        }
        let handler = NetHandler::new(
            event_handler::NetQueues { rx, tx },
            tap,
            event_handler::NetMode {
                hdr_len,
                mergeable: self.acked & f::MRG_RXBUF != 0,
                mtu: self.params.mtu.unwrap_or(DEFAULT_MTU),
                host_tso: self.acked & (f::HOST_TSO4 | f::HOST_TSO6) != 0,
            },
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
        if let Some(handler) = self.parked.take() {
            self.tap = Some(handler.tap);
        }
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.tap = Some(handler.tap),
                None => return false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_net_offloads_follow_guest_features() {
        let all = f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN;

        assert_eq!(Net::tap_offloads(0), 0);
        assert_eq!(Net::tap_offloads(f::GUEST_TSO4), 0);
        assert_eq!(Net::tap_offloads(f::GUEST_CSUM), offload::CSUM);
        assert_eq!(
            Net::tap_offloads(all),
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN
        );
    }

    #[test]
    fn test_net_header_length_by_features() {
        assert_eq!(Net::hdr_len(0), LEGACY_HDR_LEN);
        assert_eq!(Net::hdr_len(f::MRG_RXBUF), HDR_LEN);
        assert_eq!(Net::hdr_len(features::VERSION_1), HDR_LEN);
    }
}
