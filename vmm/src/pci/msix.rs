//! MSI-X (PCI 3.0, 6.8.2): the vector table and pending-bit array a device exposes in a BAR,
//! the capability's enable and function-mask bits, and delivery through one irqfd per vector
//! on a GSI whose KVM route is the vector's message.
//!
//! Routes follow the table: when the guest writes a vector's address or data, its GSI's route
//! is replaced. Masking is done here, not in KVM: a masked (or function-masked) vector's
//! interrupt sets its pending bit instead of writing the irqfd, and unmasking delivers it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::kvm::irq::{EventWiring, IrqError, MsiMessage};

/// The MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    msg: MsiMessage,
    control: u32,
}

impl Default for Entry {
    /// Vectors start masked (PCI 3.0).
    fn default() -> Entry {
        Entry {
            msg: MsiMessage::default(),
            control: VECTOR_MASKED,
        }
    }
}

/// One function's MSI-X state.
pub struct MsixConfig {
    table: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    wiring: Arc<dyn EventWiring>,
}

impl MsixConfig {
    /// `gsis.len()` vectors, vector `i` raised through an irqfd on `gsis[i]`.
    pub fn new(gsis: Vec<u32>, wiring: Arc<dyn EventWiring>) -> Result<MsixConfig, IrqError> {
        let mut irqfds = Vec::with_capacity(gsis.len());
        for &gsi in &gsis {
            let fd = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|source| IrqError::CreateEventFd { gsi, source })?;
            wiring.register_irqfd(&fd, gsi)?;
            irqfds.push(fd);
        }
        Ok(MsixConfig {
            table: vec![Entry::default(); gsis.len()],
            pending: vec![false; gsis.len()],
            enabled: false,
            function_masked: false,
            gsis,
            irqfds,
            wiring,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the pending-bit array in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        (self.table.len() as u64).div_ceil(64) * 8
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.table[v].control & VECTOR_MASKED != 0
    }

    /// The capability's message control bits changed.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & MSIX_ENABLE != 0;
        self.function_masked = control & MSIX_FUNCTION_MASK != 0;
        self.deliver_unmasked_pending();
    }

    /// Raises `vector` (or marks it pending while masked). Vectors past the table are ignored.
    pub fn trigger(&mut self, vector: u16) -> std::io::Result<()> {
        let v = usize::from(vector);
        if v >= self.table.len() || !self.enabled {
            return Ok(());
        }
        if self.masked(v) {
            self.pending[v] = true;
            return Ok(());
        }
        self.irqfds[v].write(1)
    }

    fn deliver_unmasked_pending(&mut self) {
        if !self.enabled {
            return;
        }
        for v in 0..self.table.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                let _ = self.irqfds[v].write(1);
            }
        }
    }

    /// A guest read of the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let mut bytes = [0u8; 16];
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        if let Some(e) = self.table.get(index) {
            bytes[0..4].copy_from_slice(&e.msg.address_lo.to_le_bytes());
            bytes[4..8].copy_from_slice(&e.msg.address_hi.to_le_bytes());
            bytes[8..12].copy_from_slice(&e.msg.data.to_le_bytes());
            bytes[12..16].copy_from_slice(&e.control.to_le_bytes());
        }
        let at = (offset % MSIX_ENTRY_SIZE) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(at + i).copied().unwrap_or(0);
        }
    }

    /// A guest write to the table at `offset` (dword or qword accesses within one entry).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Result<(), IrqError> {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        let at = (offset % MSIX_ENTRY_SIZE) as usize;
        if index >= self.table.len() || at + data.len() > 16 || !matches!(data.len(), 4 | 8) {
            return Ok(());
        }
        let old = self.table[index];
        let e = &mut self.table[index];
        for (i, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match at + i * 4 {
                0 => e.msg.address_lo = v,
                4 => e.msg.address_hi = v,
                8 => e.msg.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        let new = *e;
        if new.msg != old.msg {
            self.wiring.set_msi_route(self.gsis[index], new.msg)?;
        }
        if new.control != old.control {
            self.deliver_unmasked_pending();
        }
        Ok(())
    }

    /// A guest read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8).fold(0u8, |acc, bit| {
                let set = self.pending.get(first + bit).copied().unwrap_or(false);
                acc | u8::from(set) << bit
            });
        }
    }

    /// Back to the state after reset: disabled, every vector masked with no message and no
    /// pending bit (the routes stay until the guest writes new messages).
    pub fn reset(&mut self) {
        self.table.iter_mut().for_each(|e| *e = Entry::default());
        self.pending.iter_mut().for_each(|p| *p = false);
        self.enabled = false;
        self.function_masked = false;
    }
}

#[path = "msix_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::irq::mock::{RecordingWiring, WiringCall};

    fn msix(n: u32) -> (MsixConfig, Arc<RecordingWiring>) {
        let wiring = Arc::new(RecordingWiring::default());
        let m = MsixConfig::new((24..24 + n).collect(), wiring.clone()).unwrap();
        (m, wiring)
    }

    fn program(m: &mut MsixConfig, v: u64, data: u32) {
        m.write_table(v * 16, &0xfee0_0000u32.to_le_bytes())
            .unwrap();
        m.write_table(v * 16 + 4, &0u32.to_le_bytes()).unwrap();
        m.write_table(v * 16 + 8, &data.to_le_bytes()).unwrap();
    }

    #[test]
    fn test_msix_new_registers_one_irqfd_per_vector() {
        let (m, wiring) = msix(3);

        let irqfds = wiring
            .calls()
            .iter()
            .filter(|c| matches!(c, WiringCall::Irqfd(_, _, None)))
            .count();

        assert_eq!((m.len(), irqfds), (3, 3));
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
    }

    #[test]
    fn test_msix_table_write_sets_route_of_vector_gsi() {
        let (mut m, wiring) = msix(2);

        program(&mut m, 1, 0x4031);
        let mut entry = [0u8; 16];
        m.read_table(16, &mut entry);

        let table = wiring.table.lock().unwrap();
        assert_eq!(
            table.routes(25),
            &[crate::kvm::irq::Route::Msi(MsiMessage {
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x4031
            })]
        );
        assert_eq!(&entry[8..16], &[0x31, 0x40, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn test_msix_masked_vector_pends_and_unmask_delivers() {
        let (mut m, _w) = msix(2);
        program(&mut m, 0, 0x4030);
        m.set_control(MSIX_ENABLE);

        m.trigger(0).unwrap();
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        let early = m.irqfds[0].read().is_ok();
        m.write_table(12, &0u32.to_le_bytes()).unwrap();

        assert_eq!(pba[0], 1);
        assert!(!early);
        assert_eq!(m.irqfds[0].read().unwrap(), 1);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn test_msix_function_mask_and_disabled_hold_interrupts() {
        let (mut m, _w) = msix(1);
        program(&mut m, 0, 0x4030);
        m.write_table(12, &0u32.to_le_bytes()).unwrap();

        m.trigger(0).unwrap();
        let while_disabled = m.irqfds[0].read().is_ok();
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        m.trigger(0).unwrap();
        let while_masked = m.irqfds[0].read().is_ok();
        m.set_control(MSIX_ENABLE);

        assert!(!while_disabled && !while_masked);
        assert_eq!(m.irqfds[0].read().unwrap(), 1);
    }

    #[test]
    fn test_msix_out_of_range_accesses_ignored() {
        let (mut m, wiring) = msix(1);
        let before = wiring.calls().len();

        m.write_table(16, &[1, 2, 3, 4]).unwrap();
        m.write_table(2, &[1, 2]).unwrap();
        m.trigger(7).unwrap();
        let mut b = [0xaau8; 4];
        m.read_table(32, &mut b);

        assert_eq!(wiring.calls().len(), before);
        assert_eq!(b, [0; 4]);
    }
}
