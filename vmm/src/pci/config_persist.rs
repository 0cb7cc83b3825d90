//! A PCI configuration space in a snapshot: the registers the guest can write (command,
//! interrupt line, capability fields such as MSI-X control and the PCI-configuration-access
//! window) and each BAR's address. The read-only parts (IDs, capabilities, write masks) are
//! rebuilt from the device at restore and only the writable bits are taken from the state, so
//! a state file cannot change what the device is.

use serde::{Deserialize, Serialize};

use super::{PciConfiguration, CONFIG_SIZE, NUM_BARS};

/// One BAR as the guest left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarState {
    /// Its address.
    pub addr: u64,
    /// The guest wrote all ones to the low dword and has not written an address since.
    pub probing_low: bool,
    /// The same for the high dword of a 64-bit BAR.
    pub probing_high: bool,
}

/// A configuration space in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciConfigState {
    /// The 64 dwords (the BAR dwords are carried in `bars`).
    pub regs: Vec<u32>,
    /// The six BARs (None where the device has none or a 64-bit BAR's high half).
    pub bars: Vec<Option<BarState>>,
}

impl PciConfiguration {
    /// The space's state.
    pub fn save_state(&self) -> PciConfigState {
        PciConfigState {
            regs: self.regs.to_vec(),
            bars: self
                .bars
                .iter()
                .map(|b| {
                    b.map(|b| BarState {
                        addr: b.addr,
                        probing_low: b.probing.0,
                        probing_high: b.probing.1,
                    })
                })
                .collect(),
        }
    }

    /// Takes `s` into this space, created for the same device: the writable bits of every
    /// register and each BAR's address, which must fit the BAR (aligned to its size, an I/O
    /// BAR below 64 KiB, a 32-bit BAR below 4 GiB).
    pub fn restore_state(&mut self, s: &PciConfigState) -> Result<(), String> {
        if s.regs.len() != CONFIG_SIZE / 4 || s.bars.len() != NUM_BARS {
            return Err(format!(
                "{} configuration registers and {} BARs in the snapshot, expected {} and {}",
                s.regs.len(),
                s.bars.len(),
                CONFIG_SIZE / 4,
                NUM_BARS
            ));
        }
        let mut bars = self.bars;
        for (i, (bar, saved)) in bars.iter_mut().zip(&s.bars).enumerate() {
            match (bar.as_mut(), saved) {
                (None, None) => {}
                (Some(b), Some(saved)) => {
                    let limit = match b.kind {
                        super::BarKind::Io => 0x1_0000,
                        super::BarKind::Mem32 => 1 << 32,
                        super::BarKind::Mem64 => u64::MAX,
                    };
                    let fits = saved.addr & (b.size - 1) == 0
                        && saved
                            .addr
                            .checked_add(b.size - 1)
                            .is_some_and(|e| e < limit);
                    if !fits {
                        return Err(format!("BAR {i} at {:#x} does not fit", saved.addr));
                    }
                    b.addr = saved.addr;
                    b.probing = (saved.probing_low, saved.probing_high);
                }
                _ => return Err(format!("BAR {i} is not the device's")),
            }
        }
        for (i, reg) in self.regs.iter_mut().enumerate() {
            let mask = self.writable[i];
            *reg = (*reg & !mask) | (s.regs[i] & mask);
        }
        self.bars = bars;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BarKind, PciHeader};
    use super::*;

    fn space() -> PciConfiguration {
        let mut c = PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            ..Default::default()
        });
        c.add_bar(0, BarKind::Io, 0x100, 0xc000).unwrap();
        c.add_bar(4, BarKind::Mem64, 0x8000, 0xc000_0000).unwrap();
        c
    }

    #[test]
    fn test_pci_config_state_round_trip_keeps_moved_bars_and_writable_bits() {
        let mut src = space();
        src.write_reg(1, 0, &[0x07, 0x04]);
        src.write_reg(15, 0, &[11]);
        src.write_reg(8, 0, &0xd000_0000u32.to_le_bytes());
        src.write_reg(4, 0, &0xc100u32.to_le_bytes());
        let mut dst = space();

        dst.restore_state(&src.save_state()).unwrap();

        for reg in 0..CONFIG_SIZE / 4 {
            assert_eq!(dst.read_reg(reg), src.read_reg(reg), "register {reg}");
        }
        assert_eq!(dst.bar(4).unwrap().addr, 0xd000_0000);
        assert_eq!(dst.bar(0).unwrap().addr, 0xc100);
    }

    #[test]
    fn test_pci_config_state_read_only_bits_and_bad_bars_refused() {
        let mut state = space().save_state();
        state.regs[0] = 0xdead_beef;
        let mut dst = space();
        dst.restore_state(&state).unwrap();
        let misaligned = {
            let mut s = state.clone();
            s.bars[4].as_mut().unwrap().addr = 0xd000_0010;
            s
        };
        let io_too_high = {
            let mut s = state.clone();
            s.bars[0].as_mut().unwrap().addr = 0x1_0000;
            s
        };
        let missing = {
            let mut s = state.clone();
            s.bars[4] = None;
            s
        };
        let short = {
            let mut s = state.clone();
            s.regs.pop();
            s
        };

        assert_eq!(dst.read_reg(0), 0x1042_1af4);
        for bad in [misaligned, io_too_high, missing, short] {
            assert!(space().restore_state(&bad).is_err(), "{bad:?}");
        }
    }
}
