//! PCI Express enhanced configuration access (ECAM) for bus 0: a 1 MiB window on the MMIO bus
//! (the ACPI MCFG table points at it) where the configuration space of 00:dd.f register r is at
//! `dd << 15 | f << 12 | r`. Accesses go to the same [`PciRoot`] as ports 0xCF8/0xCFC.
//! Functions have the 256-byte conventional space: the extended space reads as all ones and
//! ignores writes, as do accesses that cross a dword.

use std::sync::{Arc, Mutex, MutexGuard};

use super::PciRoot;
use crate::devices::{Bus, BusDevice, BusError};

/// Size of bus 0's window: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS0_SIZE: u64 = 1 << 20;
/// Dwords of the conventional configuration space.
const CONFIG_DWORDS: usize = 64;

/// The ECAM window of bus 0.
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    /// The window of `root`'s bus.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciEcam {
        PciEcam { root }
    }

    fn root(&self) -> MutexGuard<'_, PciRoot> {
        self.root.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (device, function, dword register, byte in the dword) of a `len`-byte access at
    /// `offset`, or None outside the conventional space or across a dword.
    fn decode(offset: u64, len: usize) -> Option<(u8, u8, usize, usize)> {
        if offset >= ECAM_BUS0_SIZE {
            return None;
        }
        let device = ((offset >> 15) & 0x1f) as u8;
        let function = ((offset >> 12) & 0x7) as u8;
        let reg = ((offset & 0xfff) >> 2) as usize;
        let byte = (offset & 3) as usize;
        (reg < CONFIG_DWORDS && len > 0 && byte + len <= 4).then_some((device, function, reg, byte))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let Some((device, function, reg, byte)) = Self::decode(offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        let value = self
            .root()
            .config_read(0, device, function, reg)
            .to_le_bytes();
        data.copy_from_slice(&value[byte..byte + data.len()]);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((device, function, reg, byte)) = Self::decode(offset, data.len()) {
            self.root()
                .config_write(0, device, function, reg, byte, data);
        }
    }
}

/// Puts the ECAM window of `root` on `mmio` at `base`.
pub fn register(mmio: &Bus, root: Arc<Mutex<PciRoot>>, base: u64) -> Result<(), BusError> {
    mmio.insert(
        Arc::new(Mutex::new(PciEcam::new(root))),
        base,
        ECAM_BUS0_SIZE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::root::{PciConfigIo, PCI_CONFIG_IO_BASE};

    fn setup() -> (Bus, Bus, Arc<Mutex<PciRoot>>) {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let root = Arc::new(Mutex::new(PciRoot::new(pio.clone(), mmio.clone())));
        (pio, mmio, root)
    }

    #[test]
    fn test_ecam_reads_match_config_ports() {
        let (_pio, mmio, root) = setup();
        register(&mmio, root.clone(), 0xe000_0000).unwrap();
        let mut io = PciConfigIo::new(root, None);
        let mut by_port = [0u8; 4];
        BusDevice::write(
            &mut io,
            PCI_CONFIG_IO_BASE,
            0,
            &0x8000_0000u32.to_le_bytes(),
        );
        BusDevice::read(&mut io, PCI_CONFIG_IO_BASE, 4, &mut by_port);

        let mut dword = [0u8; 4];
        mmio.read(0xe000_0000, &mut dword);
        let mut word = [0u8; 2];
        mmio.read(0xe000_0002, &mut word);

        assert_eq!(dword, by_port, "host bridge ID through ECAM and 0xcfc");
        assert_eq!(word, [by_port[2], by_port[3]]);
    }

    #[test]
    fn test_ecam_empty_slot_extended_space_and_straddling_read_all_ones() {
        let (_pio, mmio, root) = setup();
        register(&mmio, root, 0xe000_0000).unwrap();

        let mut empty = [0u8; 4];
        mmio.read(0xe000_0000 + (5 << 15), &mut empty);
        let mut extended = [0u8; 4];
        mmio.read(0xe000_0100, &mut extended);
        let mut straddle = [0u8; 4];
        mmio.read(0xe000_0002, &mut straddle);
        let mut function1 = [0u8; 4];
        mmio.read(0xe000_1000, &mut function1);

        assert_eq!(empty, [0xff; 4]);
        assert_eq!(extended, [0xff; 4]);
        assert_eq!(straddle, [0xff; 4]);
        assert_eq!(function1, [0xff; 4]);
    }

    #[test]
    fn test_ecam_write_reaches_host_bridge_register() {
        let (_pio, mmio, root) = setup();
        register(&mmio, root.clone(), 0xe000_0000).unwrap();

        // Command register (offset 4): the host bridge keeps what its write mask allows.
        mmio.write(0xe000_0004, &[0x06, 0x00]);
        let via_root = root.lock().unwrap().config_read(0, 0, 0, 1);
        let mut via_ecam = [0u8; 4];
        mmio.read(0xe000_0004, &mut via_ecam);

        assert_eq!(u32::from_le_bytes(via_ecam), via_root);
    }
}
