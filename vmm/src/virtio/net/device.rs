//! The virtio-net device: what it offers, its configuration space, and its worker's lifetime.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use vm_memory::GuestMemoryMmap;

use super::event_handler::{self, NetHandler, NetPair};
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
    /// One tap queue per pair (empty while the worker holds them).
    taps: Vec<Tap>,
    /// Queue pairs (the number of taps).
    pub(super) pairs: usize,
    pub(super) params: NetParams,
    /// Two queues per pair, then (with more than one pair) the control queue.
    queue_sizes: Vec<u16>,
    acked: u64,
    counters: Arc<Counters>,
    pub(super) worker: Option<Worker<NetHandler>>,
    /// The worker's handler while a snapshot is written (`persist.rs`).
    pub(super) parked: Option<NetHandler>,
    /// Pairs the driver uses (VQ_PAIRS_SET), as of the last snapshot's quiesce or a
    /// restore; an activation starts the worker with that many (1 after a reset).
    pub(super) active_pairs: usize,
}

impl Net {
    /// Device `id` (its worker thread is `virtio-<id>`) with one queue pair per tap queue in
    /// `taps` (more than one: VIRTIO_NET_F_MQ and a control queue).
    pub fn new(id: &str, taps: Vec<Tap>, params: NetParams) -> Net {
        let pairs = taps.len().max(1);
        let queues = if pairs > 1 { 2 * pairs + 1 } else { 2 };
        Net {
            id: id.to_string(),
            taps,
            pairs,
            queue_sizes: vec![params.queue_size; queues],
            params,
            acked: 0,
            counters: Counters::new(metrics::names(pairs)),
            worker: None,
            parked: None,
            active_pairs: 1,
        }
    }

    /// The configuration space: mac, status, max_virtqueue_pairs, mtu.
    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.params.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&(self.pairs as u16).to_le_bytes());
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

    /// Sets the tap's header size and offloads (on an attached queue: a detached one refuses
    /// every ioctl but TUNSETQUEUE), then leaves only pair 0's queue attached: the driver
    /// uses one pair until it sets more.
    fn prepare_taps(&mut self) -> Result<(), super::tap::TapError> {
        for tap in self.taps.iter_mut() {
            tap.set_attached(true)?;
        }
        let hdr_len = Net::hdr_len(self.acked);
        for tap in self.taps.iter() {
            tap.set_vnet_hdr_size(hdr_len as i32)?;
            tap.set_offload(Net::tap_offloads(self.acked))?;
        }
        for tap in self.taps.iter_mut().skip(1) {
            tap.set_attached(false)?;
        }
        Ok(())
    }

    /// Sorts the enabled queues into pairs (each with its tap queue) and the control queue,
    /// whose index depends on MQ: 2N with it, 2 without (virtio 1.2, 5.1.2).
    fn sort_queues(&mut self, queues: Vec<ActiveQueue>) -> (Vec<NetPair>, Option<ActiveQueue>) {
        let mq = self.acked & f::MQ != 0;
        let used_pairs = if mq { self.pairs } else { 1 };
        let ctrl_index = (self.acked & f::CTRL_VQ != 0).then_some(2 * used_pairs as u16);
        let mut rx: Vec<Option<ActiveQueue>> = (0..self.pairs).map(|_| None).collect();
        let mut tx: Vec<Option<ActiveQueue>> = (0..self.pairs).map(|_| None).collect();
        let mut ctrl = None;
        for q in queues {
            let i = usize::from(q.index);
            if Some(q.index) == ctrl_index {
                ctrl = Some(q);
            } else if i < 2 * used_pairs && i % 2 == 0 {
                rx[i / 2] = Some(q);
            } else if i < 2 * used_pairs {
                tx[i / 2] = Some(q);
            }
        }
        let pairs = std::mem::take(&mut self.taps)
            .into_iter()
            .zip(rx.into_iter().zip(tx))
            .map(|(tap, (rx, tx))| NetPair::new(rx, tx, tap))
            .collect();
        (pairs, ctrl)
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
        if self.pairs > 1 {
            v |= f::CTRL_VQ | f::MQ;
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
        if self.acked & f::CTRL_VQ == 0 {
            // MQ depends on the control queue (virtio 1.2, 5.1.3.1).
            self.acked &= !f::MQ;
        }
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
        if self.taps.len() != self.pairs {
            return Err(ActivateError::Backend(std::io::Error::other(
                "the tap was lost by a failed reset",
            )));
        }
        if let Err(e) = self.prepare_taps() {
            return Err(ActivateError::Backend(std::io::Error::other(e.to_string())));
        }
        let (pairs, ctrl) = self.sort_queues(queues);
        let active = self.active_pairs.clamp(1, pairs.len().max(1));
        for tap in self.taps.iter_mut().take(active).skip(1) {
            if let Err(e) = tap.set_attached(true) {
                return Err(ActivateError::Backend(std::io::Error::other(e.to_string())));
            }
        }
        let hdr_len = Net::hdr_len(self.acked);
        let mut handler = NetHandler::new(
            pairs,
            ctrl,
            event_handler::NetMode {
                hdr_len,
                mergeable: self.acked & f::MRG_RXBUF != 0,
                mtu: self.params.mtu.unwrap_or(DEFAULT_MTU),
                host_tso: self.acked & (f::HOST_TSO4 | f::HOST_TSO6) != 0,
                mq: self.acked & f::MQ != 0,
            },
            mem,
            Arc::clone(&interrupt),
            self.counters.clone(),
        );
        handler.active_pairs = active;
        self.worker = Some(Worker::spawn(
            format!("virtio-{}", self.id),
            handler,
            interrupt,
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(handler) = self.parked.take() {
            self.taps = handler.pairs.into_iter().map(|p| p.tap).collect();
        }
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.taps = handler.pairs.into_iter().map(|p| p.tap).collect(),
                None => return false,
            }
        }
        self.acked = 0;
        self.active_pairs = 1;
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
