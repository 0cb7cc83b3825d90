//! virtio-net in a snapshot. Quiescing stops the worker and sends every frame the guest
//! queued for transmission; the worker then stays stopped until the snapshot is written
//! (frames arriving on the tap meanwhile wait in the tap), so nothing writes guest memory
//! while it is saved. A frame already read from the tap but not yet delivered stays with the
//! source VM (a restored VM does not get it: one frame lost, as on a wire).
//!
//! The device's own state is its MAC and how many queue pairs the driver switched on
//! (VQ_PAIRS_SET: a restored device attaches and serves that many tap queues). The tap is not
//! state: a restore opens it again by the
//! name in the configuration (or creates a new one), and the negotiated features set its
//! header size and offloads again at activation. A MAC given in the restore's configuration
//! (a clone's, docs/decisions/0018) wins over the snapshot's.

use serde::{Deserialize, Serialize};

use super::Net;
use crate::config::MacAddr;
use crate::virtio::persist::{QueuePosition, VirtioPersist};
use crate::virtio::worker::Worker;

/// virtio-net's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The MAC the guest was given.
    pub mac: MacAddr,
    /// Queue pairs the driver had switched on (VQ_PAIRS_SET; 1 without multiqueue).
    #[serde(default = "one")]
    pub active_pairs: usize,
}

fn one() -> usize {
    1
}

impl VirtioPersist for Net {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        let Some(worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let mut handler = worker
            .stop()
            .ok_or_else(|| format!("the worker of {} ended", self.id))?;
        for p in 0..handler.pairs.len() {
            handler.process_tx(p);
        }
        let positions = handler.positions();
        self.active_pairs = handler.active_pairs;
        self.parked = Some(handler);
        Ok(positions)
    }

    fn resume_after_snapshot(&mut self) -> Result<(), String> {
        let Some(handler) = self.parked.take() else {
            return Ok(());
        };
        let interrupt = handler.interrupt();
        let worker = Worker::spawn(format!("virtio-{}", self.id), handler, interrupt)
            .map_err(|e| e.to_string())?;
        self.worker = Some(worker);
        Ok(())
    }

    fn save_state(&self) -> serde_json::Value {
        serde_json::to_value(NetState {
            mac: MacAddr(self.params.mac),
            active_pairs: self.active_pairs,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let s: NetState = serde_json::from_value(state.clone())
            .map_err(|e| format!("invalid virtio-net state: {e}"))?;
        if s.active_pairs == 0 || s.active_pairs > self.pairs {
            return Err(format!(
                "virtio-net {}: {} queue pairs in use in the snapshot, the device has {}",
                self.id, s.active_pairs, self.pairs
            ));
        }
        self.active_pairs = s.active_pairs;
        if !self.params.mac_configured {
            self.params.mac = s.mac.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;
    use crate::virtio::net::tap::Tap;
    use crate::virtio::net::NetParams;

    /// A device with `pairs` queue pairs on socketpair "taps".
    fn net(pairs: usize) -> Net {
        let taps = (0..pairs)
            .map(|_| {
                let mut fds = [0; 2];
                // SAFETY: socketpair writes two fds into the array, which the test then owns.
                let r = unsafe {
                    libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr())
                };
                assert_eq!(r, 0);
                // SAFETY: both fds were just created and are owned by nothing else.
                let (a, _b) =
                    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
                Tap::from_file(a.into())
            })
            .collect();
        let params = NetParams {
            mac: [0x52, 0x54, 0, 0, 0, 1],
            mtu: None,
            queue_size: 256,
            offload_csum: false,
            offload_tso: false,
            mac_configured: false,
        };
        Net::new("net0", taps, params)
    }

    #[test]
    fn test_net_state_carries_active_pairs_and_refuses_more_than_the_device_has() {
        // Arrange
        let mut src = net(2);
        src.active_pairs = 2;
        let saved = src.save_state();
        let mut dst = net(2);
        let mut small = net(1);
        // Act
        let restored = dst.restore_state(&saved);
        let refused = small.restore_state(&saved).unwrap_err();
        let old = dst.restore_state(&serde_json::json!({"mac": "52:54:00:00:00:01"}));
        // Assert
        assert_eq!(restored, Ok(()));
        assert!(refused.contains("2 queue pairs in use"), "{refused}");
        assert_eq!(old, Ok(()));
        assert_eq!(
            dst.active_pairs, 1,
            "a state without the field means one pair"
        );
    }
}
