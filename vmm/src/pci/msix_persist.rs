//! MSI-X in a snapshot: the vector table, the pending bits and the capability's enable and
//! function-mask bits. At restore each programmed vector's GSI gets its route again (the
//! irqfds were registered when the device was created).

use serde::{Deserialize, Serialize};

use super::{Entry, MsixConfig};
use crate::kvm::irq::MsiMessage;

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixEntryState {
    /// Message address, low.
    pub address_lo: u32,
    /// Message address, high.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// MSI-X in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixState {
    /// The table.
    pub table: Vec<MsixEntryState>,
    /// The pending bits.
    pub pending: Vec<bool>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

impl MsixConfig {
    /// Its state.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            table: self
                .table
                .iter()
                .map(|e| MsixEntryState {
                    address_lo: e.msg.address_lo,
                    address_hi: e.msg.address_hi,
                    data: e.msg.data,
                    control: e.control,
                })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Takes `s` (same number of vectors) and routes every programmed vector's GSI to its
    /// message again. Nothing is delivered: pending bits stay pending until unmasked.
    pub fn restore_state(&mut self, s: &MsixState) -> Result<(), String> {
        if s.table.len() != self.table.len() || s.pending.len() != self.table.len() {
            return Err(format!(
                "{} MSI-X vectors in the snapshot, the device has {}",
                s.table.len(),
                self.table.len()
            ));
        }
        for (i, saved) in s.table.iter().enumerate() {
            let msg = MsiMessage {
                address_lo: saved.address_lo,
                address_hi: saved.address_hi,
                data: saved.data,
            };
            if msg != MsiMessage::default() {
                self.wiring
                    .set_msi_route(self.gsis[i], msg)
                    .map_err(|e| format!("MSI-X vector {i}: {e}"))?;
            }
            self.table[i] = Entry {
                msg,
                control: saved.control & super::VECTOR_MASKED,
            };
        }
        self.pending.clone_from(&s.pending);
        self.enabled = s.enabled;
        self.function_masked = s.function_masked;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kvm::irq::mock::RecordingWiring;

    #[test]
    fn test_msix_state_round_trip_reroutes_programmed_vectors() {
        let w1 = Arc::new(RecordingWiring::default());
        let mut src = MsixConfig::new(vec![24, 25], w1).unwrap();
        src.write_table(16, &0xfee0_0000u32.to_le_bytes()).unwrap();
        src.write_table(24, &0x4041u32.to_le_bytes()).unwrap();
        src.set_control(super::super::MSIX_ENABLE);
        src.trigger(1).unwrap();
        let w2 = Arc::new(RecordingWiring::default());
        let mut dst = MsixConfig::new(vec![24, 25], w2.clone()).unwrap();

        dst.restore_state(&src.save_state()).unwrap();

        let table = w2.table.lock().unwrap();
        assert_eq!(
            table.routes(25),
            &[crate::kvm::irq::Route::Msi(MsiMessage {
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x4041
            })]
        );
        assert!(table.routes(24).is_empty());
        assert_eq!(dst.save_state(), src.save_state());
        assert!(dst.save_state().pending[1]);
    }

    #[test]
    fn test_msix_state_other_vector_count_refused() {
        let src = MsixConfig::new(vec![24], Arc::new(RecordingWiring::default())).unwrap();
        let mut dst = MsixConfig::new(vec![24, 25], Arc::new(RecordingWiring::default())).unwrap();

        assert!(dst.restore_state(&src.save_state()).is_err());
    }
}
