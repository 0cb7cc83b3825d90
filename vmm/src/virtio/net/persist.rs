//! virtio-net in a snapshot. Quiescing stops the worker and sends every frame the guest
//! queued for transmission; the worker then stays stopped until the snapshot is written
//! (frames arriving on the tap meanwhile wait in the tap), so nothing writes guest memory
//! while it is saved. A frame already read from the tap but not yet delivered stays with the
//! source VM (a restored VM does not get it: one frame lost, as on a wire).
//!
//! The device's own state is its MAC. The tap is not state: a restore opens it again by the
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
}

impl VirtioPersist for Net {
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String> {
        if self.pairs > 1 {
            // Which pairs the driver switched on (VQ_PAIRS_SET) is not carried yet.
            return Err(format!(
                "{}: a snapshot of virtio-net with num_queues > 2 is not supported",
                self.id
            ));
        }
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
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let s: NetState = serde_json::from_value(state.clone())
            .map_err(|e| format!("invalid virtio-net state: {e}"))?;
        if !self.params.mac_configured {
            self.params.mac = s.mac.0;
        }
        Ok(())
    }
}
