//! virtio-net (virtio 1.2, 5.1) on a host tap: a receive and a transmit queue per queue
//! pair (several pairs: VIRTIO_NET_F_MQ, a control queue, one queue of a multiqueue tap per
//! pair), the virtio-net header on every frame shared with the tap (IFF_VNET_HDR), mergeable
//! receive buffers, checksum and TCP segmentation offloads negotiated with the guest and
//! applied to the tap, MAC, MTU and link status in the configuration space.
//!
//! `device.rs` is the `VirtioDevice`, `event_handler.rs` its worker's subscriber (dispatch
//! and the transmit path), `rx.rs` the receive path, `ctrl.rs` the control queue's commands,
//! `tap.rs` the tap, `metrics.rs` its counters. docs/decisions/0011 (receive path, offloads)
//! and 0017 (multiqueue) give the reasons.

mod ctrl;
mod device;
mod event_handler;
pub mod metrics;
#[cfg(test)]
mod path_tests;
mod persist;
mod rx;
pub mod tap;

pub use device::{Net, NetParams};
pub use event_handler::NetHandler;
/// What the fuzz harness (`virtio::fuzz_net`) builds a handler from.
#[cfg(any(test, feature = "fuzz"))]
pub use event_handler::{NetMode, NetPair};

use virtio_bindings::virtio_net as vn;

/// The receive queue (of pair 0; pair `p` has `2p`).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (of pair 0; pair `p` has `2p + 1`).
pub const TX_QUEUE: u16 = 1;
/// The MTU the guest is told about (and frames are checked against) when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// The virtio-net header with VERSION_1 or MRG_RXBUF (`num_buffers` included).
pub const HDR_LEN: usize = 12;
/// The legacy header without MRG_RXBUF.
pub const LEGACY_HDR_LEN: usize = 10;
/// The largest frame (without header) on either path: a 64 KiB GSO packet plus an Ethernet
/// and a VLAN header.
pub const MAX_FRAME: usize = 65535 + 14 + 4;
/// Ethernet plus VLAN header: what a non-GSO frame may carry on top of the MTU.
pub const L2_OVERHEAD: usize = 14 + 4;
/// Frames moved per event before the worker looks at its other events.
pub const BUDGET: usize = 256;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    use super::vn;

    const fn bit(n: u32) -> u64 {
        1 << n
    }
    /// The device handles partial checksums (guest to host).
    pub const CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
    /// The driver handles partial checksums (host to guest).
    pub const GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
    /// The MTU field is valid.
    pub const MTU: u64 = bit(vn::VIRTIO_NET_F_MTU);
    /// The MAC field is valid.
    pub const MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
    /// The driver takes TSOv4.
    pub const GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
    /// The driver takes TSOv6.
    pub const GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
    /// The driver takes TSO with ECN.
    pub const GUEST_ECN: u64 = bit(vn::VIRTIO_NET_F_GUEST_ECN);
    /// The device takes TSOv4.
    pub const HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
    /// The device takes TSOv6.
    pub const HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
    /// The device takes TSO with ECN.
    pub const HOST_ECN: u64 = bit(vn::VIRTIO_NET_F_HOST_ECN);
    /// Receive frames may span several buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = bit(vn::VIRTIO_NET_F_MRG_RXBUF);
    /// The status field is valid.
    pub const STATUS: u64 = bit(vn::VIRTIO_NET_F_STATUS);
    /// A control queue (offered with more than one queue pair).
    pub const CTRL_VQ: u64 = bit(vn::VIRTIO_NET_F_CTRL_VQ);
    /// Several queue pairs, chosen with VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (needs CTRL_VQ).
    pub const MQ: u64 = bit(vn::VIRTIO_NET_F_MQ);
}

/// The link is up (configuration `status`).
pub const S_LINK_UP: u16 = vn::VIRTIO_NET_S_LINK_UP as u16;
