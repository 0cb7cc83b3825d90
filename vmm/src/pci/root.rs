//! The PCI root: bus 0's functions, configuration mechanism #1 (ports 0xCF8 address,
//! 0xCFC-0xCFF data) and the BAR regions on the buses.
//!
//! Port 0xCF9 lies inside the address register; byte accesses to it go to the reset control
//! register (`devices::reset`) handed to [`PciConfigIo::new`], as on PIIX/ICH chipsets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{BarKind, PciConfiguration, PciHeader};
use super::{BarWrite, PciDevice, CLASS_HOST_BRIDGE, DEVICE_HOST_BRIDGE, VENDOR_INTEL};
use crate::devices::{bus, Bus, BusDevice, BusError, SharedBusDevice};
use crate::virtio::transport::read_le;

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(dev: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// A BAR as it sits on its bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedBar {
    /// The BAR index.
    pub bar: usize,
    /// Port I/O or memory.
    pub kind: BarKind,
    /// Where it is mapped.
    pub base: u64,
    /// Its size.
    pub size: u64,
}

struct Slot {
    device: SharedPciDevice,
    bars: Vec<MappedBar>,
}

/// Errors adding a function.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// The device number is taken or out of range.
    #[error("PCI device number {0} is taken or out of range")]
    SlotTaken(u8),
    /// A BAR could not be placed on its bus.
    #[error("unable to map BAR {bar} of PCI device {device}")]
    MapBar {
        /// Device number.
        device: u8,
        /// The BAR.
        bar: usize,
        /// The cause.
        #[source]
        source: BusError,
    },
}

/// Bus 0 and its functions (function 0 of each device only).
pub struct PciRoot {
    slots: BTreeMap<u8, Slot>,
    pio: Bus,
    mmio: Bus,
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0, whose BARs go on `pio` and `mmio`.
    pub fn new(pio: Bus, mmio: Bus) -> PciRoot {
        let bridge = HostBridge(PciConfiguration::new(&PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_HOST_BRIDGE,
            class: CLASS_HOST_BRIDGE,
            ..Default::default()
        }));
        let mut slots = BTreeMap::new();
        slots.insert(
            0,
            Slot {
                device: Arc::new(Mutex::new(bridge)),
                bars: Vec::new(),
            },
        );
        PciRoot { slots, pio, mmio }
    }

    fn bus_of(&self, kind: BarKind) -> &Bus {
        match kind {
            BarKind::Io => &self.pio,
            BarKind::Mem32 | BarKind::Mem64 => &self.mmio,
        }
    }

    /// Adds `device` as device number `slot` and maps its `bars`.
    pub fn add_device(
        &mut self,
        slot: u8,
        device: SharedPciDevice,
        bars: &[MappedBar],
    ) -> Result<(), PciRootError> {
        if slot > 31 || self.slots.contains_key(&slot) {
            return Err(PciRootError::SlotTaken(slot));
        }
        for (i, b) in bars.iter().enumerate() {
            let region = Arc::new(Mutex::new(PciBarRegion {
                device: device.clone(),
                bar: b.bar,
            }));
            if let Err(source) = self.bus_of(b.kind).insert(region, b.base, b.size) {
                for done in &bars[..i] {
                    let _ = self.bus_of(done.kind).remove(done.base);
                }
                return Err(PciRootError::MapBar {
                    device: slot,
                    bar: b.bar,
                    source,
                });
            }
        }
        self.slots.insert(
            slot,
            Slot {
                device,
                bars: bars.to_vec(),
            },
        );
        Ok(())
    }

    /// Configuration read of 00:`device`.`function`, dword `reg`; absent functions read as
    /// all ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, reg: usize) -> u32 {
        if bus != 0 || function != 0 {
            return 0xffff_ffff;
        }
        match self.slots.get(&device) {
            Some(slot) => lock(&slot.device).read_config_register(reg),
            None => 0xffff_ffff,
        }
    }

    /// Configuration write; a BAR given a new address moves on its bus (if the new range is
    /// free; otherwise the BAR stays mapped where it was).
    pub fn config_write(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        if bus != 0 || function != 0 {
            return;
        }
        let Some(slot) = self.slots.get(&device) else {
            return;
        };
        let dev = slot.device.clone();
        let write = lock(&dev).write_config_register(reg, offset, data);
        if let Some(w) = write {
            self.move_bar(device, &dev, w);
        }
    }

    fn move_bar(&mut self, device: u8, dev: &SharedPciDevice, w: BarWrite) {
        let (pio, mmio) = (self.pio.clone(), self.mmio.clone());
        let Some(slot) = self.slots.get_mut(&device) else {
            return;
        };
        let Some(mapped) = slot.bars.iter_mut().find(|m| m.bar == w.bar) else {
            return;
        };
        if mapped.base == w.addr {
            return;
        }
        let bus = if mapped.kind == BarKind::Io {
            pio
        } else {
            mmio
        };
        if bus.relocate(mapped.base, w.addr, mapped.size).is_ok() {
            let old = mapped.base;
            mapped.base = w.addr;
            lock(dev).bar_moved(w.bar, old, w.addr);
        }
    }

    /// Moves every BAR whose function's configuration space names another address than
    /// where it is mapped (after a restore wrote the saved addresses into the functions).
    /// Fails naming the first BAR whose new range is taken.
    pub fn sync_bars(&mut self) -> Result<(), String> {
        let (pio, mmio) = (self.pio.clone(), self.mmio.clone());
        for (&device, slot) in self.slots.iter_mut() {
            for mapped in slot.bars.iter_mut() {
                let Some(addr) = lock(&slot.device).bar_address(mapped.bar) else {
                    continue;
                };
                if addr == mapped.base {
                    continue;
                }
                let bus = if mapped.kind == BarKind::Io {
                    &pio
                } else {
                    &mmio
                };
                bus.relocate(mapped.base, addr, mapped.size).map_err(|e| {
                    format!(
                        "PCI device {device} BAR {} cannot move to {addr:#x}: {e}",
                        mapped.bar
                    )
                })?;
                let old = mapped.base;
                mapped.base = addr;
                lock(&slot.device).bar_moved(mapped.bar, old, addr);
            }
        }
        Ok(())
    }

    /// Where BAR `bar` of device `device` is mapped.
    pub fn bar_base(&self, device: u8, bar: usize) -> Option<u64> {
        let slot = self.slots.get(&device)?;
        slot.bars.iter().find(|m| m.bar == bar).map(|m| m.base)
    }
}

/// The host bridge: a header and nothing else.
struct HostBridge(PciConfiguration);

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.0.read_reg(reg)
    }
    fn write_config_register(
        &mut self,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) -> Option<BarWrite> {
        self.0.write_reg(reg, offset, data)
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn bar_moved(&mut self, _bar: usize, _old: u64, _new: u64) {}
}

/// One BAR of a function on a bus.
pub struct PciBarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

/// First port of configuration mechanism #1.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports it covers (address 0xCF8-0xCFB, data 0xCFC-0xCFF).
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// Address register: enable bit.
const CONFIG_ENABLE: u32 = 1 << 31;

/// Configuration mechanism #1 as a device on the port-I/O bus.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    reset: Option<SharedBusDevice>,
}

impl PciConfigIo {
    /// The ports of `root`; byte accesses to 0xCF9 go to `reset`.
    pub fn new(root: Arc<Mutex<PciRoot>>, reset: Option<SharedBusDevice>) -> PciConfigIo {
        PciConfigIo {
            root,
            address: 0,
            reset,
        }
    }

    fn root(&self) -> MutexGuard<'_, PciRoot> {
        self.root.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (bus, device, function, dword register) of the address register.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }

    fn reset_port(&self, offset: u64, len: usize) -> Option<&SharedBusDevice> {
        self.reset.as_ref().filter(|_| offset == 1 && len == 1)
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let Some(reset) = self.reset_port(offset, data.len()) {
            bus::lock(reset).read(PCI_CONFIG_IO_BASE + 1, 0, data);
            return;
        }
        if offset < 4 {
            read_le(u64::from(self.address), offset as usize, data);
            return;
        }
        match self.target() {
            Some((b, d, f, reg)) => {
                let v = self.root().config_read(b, d, f, reg);
                read_le(u64::from(v), (offset - 4) as usize, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some(reset) = self.reset_port(offset, data.len()) {
            bus::lock(reset).write(PCI_CONFIG_IO_BASE + 1, 0, data);
            return;
        }
        if offset < 4 {
            for (i, &b) in data.iter().enumerate().take(4 - offset as usize) {
                let shift = (offset as usize + i) * 8;
                self.address = (self.address & !(0xff << shift)) | u32::from(b) << shift;
            }
            return;
        }
        let at = (offset - 4) as usize;
        if let Some((b, d, f, reg)) = self.target() {
            if at + data.len() <= 4 {
                self.root().config_write(b, d, f, reg, at, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::reset::ResetControl;
    use crate::vm_events::{vm_events, VmEvent};

    /// A function with one 4 KiB memory BAR whose bytes read as the low byte of the offset;
    /// records moves.
    struct Probe {
        config: PciConfiguration,
        moves: Vec<(usize, u64, u64)>,
    }

    impl PciDevice for Probe {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.config.read_reg(reg)
        }
        fn write_config_register(
            &mut self,
            reg: usize,
            offset: usize,
            data: &[u8],
        ) -> Option<BarWrite> {
            self.config.write_reg(reg, offset, data)
        }
        fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
        fn bar_moved(&mut self, bar: usize, old: u64, new: u64) {
            self.moves.push((bar, old, new));
        }
        fn bar_address(&self, bar: usize) -> Option<u64> {
            self.config.bar(bar).map(|b| b.addr)
        }
    }

    fn setup() -> (
        PciConfigIo,
        Bus,
        Arc<Mutex<Probe>>,
        crate::vm_events::VmEventQueue,
    ) {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let mut root = PciRoot::new(pio, mmio.clone());
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            ..Default::default()
        });
        config
            .add_bar(0, BarKind::Mem32, 0x1000, 0xc000_0000)
            .unwrap();
        let probe = Arc::new(Mutex::new(Probe {
            config,
            moves: Vec::new(),
        }));
        let bar = MappedBar {
            bar: 0,
            kind: BarKind::Mem32,
            base: 0xc000_0000,
            size: 0x1000,
        };
        root.add_device(3, probe.clone(), &[bar]).unwrap();
        let (events, queue) = vm_events().unwrap();
        let reset: SharedBusDevice =
            Arc::new(Mutex::new(ResetControl::default().with_vm_events(events)));
        let io = PciConfigIo::new(Arc::new(Mutex::new(root)), Some(reset));
        (io, mmio, probe, queue)
    }

    fn select(io: &mut PciConfigIo, device: u32, reg: u32) {
        let a = CONFIG_ENABLE | device << 11 | reg << 2;
        io.write(PCI_CONFIG_IO_BASE, 0, &a.to_le_bytes());
    }

    fn read32(io: &mut PciConfigIo, device: u32, reg: u32) -> u32 {
        select(io, device, reg);
        let mut b = [0u8; 4];
        io.read(PCI_CONFIG_IO_BASE, 4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn test_pci_config_io_host_bridge_device_and_empty_slot() {
        let (mut io, _mmio, _probe, _q) = setup();

        assert_eq!(read32(&mut io, 0, 0), 0x0d57_8086);
        assert_eq!(read32(&mut io, 0, 2) >> 8, CLASS_HOST_BRIDGE);
        assert_eq!(read32(&mut io, 3, 0), 0x1044_1af4);
        assert_eq!(read32(&mut io, 4, 0), 0xffff_ffff);
    }

    #[test]
    fn test_pci_config_io_byte_reads_at_data_port_offsets() {
        let (mut io, _mmio, _probe, _q) = setup();
        select(&mut io, 3, 0);
        let mut b = [0u8; 1];
        let mut w = [0u8; 2];

        io.read(PCI_CONFIG_IO_BASE, 5, &mut b);
        io.read(PCI_CONFIG_IO_BASE, 6, &mut w);

        assert_eq!(b, [0x1a]);
        assert_eq!(u16::from_le_bytes(w), 0x1044);
    }

    #[test]
    fn test_pci_config_io_disabled_address_reads_ones_and_address_reads_back() {
        let (mut io, _mmio, _probe, _q) = setup();
        io.write(PCI_CONFIG_IO_BASE, 0, &0x1800u32.to_le_bytes());
        let mut d = [0u8; 4];
        let mut a = [0u8; 4];

        io.read(PCI_CONFIG_IO_BASE, 4, &mut d);
        io.read(PCI_CONFIG_IO_BASE, 0, &mut a);

        assert_eq!(d, [0xff; 4]);
        assert_eq!(u32::from_le_bytes(a), 0x1800);
    }

    #[test]
    fn test_pci_config_io_byte_at_cf9_reaches_reset_control() {
        let (mut io, _mmio, _probe, queue) = setup();
        select(&mut io, 3, 0);

        io.write(PCI_CONFIG_IO_BASE, 1, &[0x06]);

        assert_eq!(queue.drain(), vec![VmEvent::Reset]);
        assert_eq!(read32(&mut io, 3, 0), 0x1044_1af4);
    }

    #[test]
    fn test_pci_root_bar_write_relocates_bus_region_and_tells_device() {
        let (mut io, mmio, probe, _q) = setup();
        let mut b = [0u8; 1];

        select(&mut io, 3, 4);
        io.write(PCI_CONFIG_IO_BASE, 4, &0xffff_ffffu32.to_le_bytes());
        let still = mmio.contains(0xc000_0010);
        io.write(PCI_CONFIG_IO_BASE, 4, &0xc010_0000u32.to_le_bytes());
        mmio.read(0xc010_0020, &mut b);

        assert!(still);
        assert!(!mmio.contains(0xc000_0010));
        assert_eq!(b, [0x20]);
        assert_eq!(
            probe.lock().unwrap().moves,
            vec![(0, 0xc000_0000, 0xc010_0000)]
        );
    }

    #[test]
    fn test_pci_root_slot_taken_rejected() {
        let mut root = PciRoot::new(Bus::new(), Bus::new());
        let bridge = HostBridge(PciConfiguration::new(&PciHeader::default()));

        let err = root.add_device(0, Arc::new(Mutex::new(bridge)), &[]);

        assert!(matches!(err, Err(PciRootError::SlotTaken(0))));
    }

    #[test]
    fn test_pci_root_sync_bars_moves_mapping_to_restored_address() {
        let (io, mmio, probe, _q) = setup();
        let mut state = probe.lock().unwrap().config.save_state();
        state.bars[0].as_mut().unwrap().addr = 0xc001_0000;
        probe.lock().unwrap().config.restore_state(&state).unwrap();

        io.root().sync_bars().unwrap();
        let mut b = [0u8; 1];
        mmio.read(0xc001_0020, &mut b);

        assert_eq!(b, [0x20]);
        assert_eq!(io.root().bar_base(3, 0), Some(0xc001_0000));
        assert_eq!(
            probe.lock().unwrap().moves,
            vec![(0, 0xc000_0000, 0xc001_0000)]
        );
    }
}
