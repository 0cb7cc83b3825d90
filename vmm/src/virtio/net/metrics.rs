//! virtio-net counters.

/// Frames delivered to the guest.
pub const RX_FRAMES: usize = 0;
/// Bytes delivered to the guest (headers excluded).
pub const RX_BYTES: usize = 1;
/// Frames sent by the guest to the tap.
pub const TX_FRAMES: usize = 2;
/// Bytes sent by the guest (headers excluded).
pub const TX_BYTES: usize = 3;
/// Frames from the tap that did not fit the guest's (non-mergeable) receive buffer.
pub const RX_DROPPED: usize = 4;
/// Receive chains too short for a header, or outside guest RAM: returned empty.
pub const RX_BAD_CHAIN: usize = 5;
/// Transmit chains too short for a header or outside guest RAM.
pub const TX_MALFORMED: usize = 6;
/// Transmit frames longer than the MTU allows (or than 64 KiB), dropped.
pub const TX_OVERSIZE: usize = 7;
/// Transmit frames the tap refused (a header it rejects), dropped.
pub const TX_ERRORS: usize = 8;
/// Times the guest had no receive buffer while frames waited (the tap was then not polled).
pub const RX_NO_BUFFERS: usize = 9;
/// Times a queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 10;
/// Control-queue commands answered VIRTIO_NET_OK.
pub const CTRL_OK: usize = 11;
/// Control-queue commands answered VIRTIO_NET_ERR (unknown, not negotiated, bad values).
pub const CTRL_ERR: usize = 12;
/// Control-queue chains without a status byte to answer in (used with 0 bytes).
pub const CTRL_MALFORMED: usize = 13;
/// The first per-pair counter: pair `p` has `rx_frames_pair<p>` at `PAIR_BASE + 2p` and
/// `tx_frames_pair<p>` at `PAIR_BASE + 2p + 1`.
pub const PAIR_BASE: usize = 14;

/// Pair `p`'s received-frames counter.
pub const fn rx_frames_pair(p: usize) -> usize {
    PAIR_BASE + 2 * p
}

/// Pair `p`'s sent-frames counter.
pub const fn tx_frames_pair(p: usize) -> usize {
    PAIR_BASE + 2 * p + 1
}

/// The counter names of a device with `pairs` queue pairs.
pub fn names(pairs: usize) -> &'static [&'static str] {
    let n = (PAIR_BASE + 2 * pairs).min(NAMES.len());
    &NAMES[..n]
}

/// The counter names, in index order.
pub const NAMES: &[&str] = &[
    "rx_frames",
    "rx_bytes",
    "tx_frames",
    "tx_bytes",
    "rx_dropped",
    "rx_bad_chain",
    "tx_malformed",
    "tx_oversize",
    "tx_errors",
    "rx_no_buffers",
    "queue_broken",
    "ctrl_ok",
    "ctrl_err",
    "ctrl_malformed",
    "rx_frames_pair0",
    "tx_frames_pair0",
    "rx_frames_pair1",
    "tx_frames_pair1",
    "rx_frames_pair2",
    "tx_frames_pair2",
    "rx_frames_pair3",
    "tx_frames_pair3",
    "rx_frames_pair4",
    "tx_frames_pair4",
    "rx_frames_pair5",
    "tx_frames_pair5",
    "rx_frames_pair6",
    "tx_frames_pair6",
    "rx_frames_pair7",
    "tx_frames_pair7",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_net_metrics_pair_names_match_indices() {
        let max = usize::from(crate::config::MAX_QUEUE_PAIRS);

        assert_eq!(names(max).len(), NAMES.len());
        assert_eq!(names(1).len(), PAIR_BASE + 2);
        assert_eq!(NAMES[rx_frames_pair(max - 1)], "rx_frames_pair7");
        assert_eq!(NAMES[tx_frames_pair(1)], "tx_frames_pair1");
        assert_eq!(NAMES[CTRL_MALFORMED], "ctrl_malformed");
    }
}
