//! The CMOS RTC's state in a snapshot: the index register and the NVRAM (the clock itself is
//! the host's and is not carried).

use serde::{Deserialize, Serialize};

use super::{Rtc, NVRAM_SIZE};
use crate::snapshot::persist::Persist;

/// The RTC as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtcSnapshot {
    /// The selected register.
    pub index: u8,
    /// NMI disabled by the last index write.
    pub nmi_disabled: bool,
    /// The 128 NVRAM bytes.
    pub nvram: Vec<u8>,
}

impl Persist for Rtc {
    const KIND: &'static str = "cmos-rtc";
    const VERSION: u32 = 1;
    type State = RtcSnapshot;

    fn save(&self) -> RtcSnapshot {
        RtcSnapshot {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            nvram: self.nvram.to_vec(),
        }
    }

    fn restore(&mut self, s: RtcSnapshot) -> Result<(), String> {
        if s.nvram.len() != NVRAM_SIZE {
            return Err(format!("{} NVRAM bytes, not {NVRAM_SIZE}", s.nvram.len()));
        }
        self.index = s.index;
        self.nmi_disabled = s.nmi_disabled;
        self.nvram.copy_from_slice(&s.nvram);
        Ok(())
    }
}
