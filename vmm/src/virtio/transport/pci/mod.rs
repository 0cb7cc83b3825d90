//! virtio-pci (virtio 1.2, 4.1) as a [`PciDevice`]: the modern interface (vendor
//! capabilities pointing into BAR 4: common configuration, notify, ISR, device configuration;
//! MSI-X table and PBA in the same BAR) and, for device types that have a transitional PCI
//! device ID, the legacy 0.9.5 interface in I/O BAR 0 as well.
//!
//! Notifications arrive through ioeventfds: one per queue at its own address in BAR 4's notify
//! region (any write), and on a transitional device one per queue at BAR 0 + 0x10 (16-bit
//! write of the queue index); both move with their BAR. Interrupts leave through MSI-X irqfds
//! or INTA# (`interrupt.rs`).
//!
//! `common.rs` is the modern common configuration structure, `legacy.rs` the I/O BAR.

mod common;
pub mod interrupt;
mod legacy;
pub mod persist;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::interrupt::PciInterrupt;
use super::{TransportError, VirtioCommon};
use crate::kvm::irq::{EventWiring, NotifyAddress, NotifyMatch};
use crate::pci::config::{BarKind, BarWrite, PciConfiguration, PciHeader};
use crate::pci::msix::{MsixConfig, MSIX_CAP_ID, MSIX_ENABLE, MSIX_FUNCTION_MASK};
use crate::pci::root::MappedBar;
use crate::pci::PciDevice;
use crate::virtio::{VirtioDevice, VirtioInterrupt};

/// The virtio PCI vendor ID.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// The memory BAR of the modern interface (64-bit: BARs 4 and 5).
pub const MODERN_BAR: usize = 4;
/// The I/O BAR of the legacy interface.
pub const LEGACY_BAR: usize = 0;
/// Size of the modern BAR.
pub const MODERN_BAR_SIZE: u64 = 0x8000;
/// Size of the legacy I/O BAR.
pub const LEGACY_BAR_SIZE: u64 = 0x100;
/// Common configuration structure in the modern BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// ISR in the modern BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device configuration in the modern BAR.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Notify region in the modern BAR: queue `n` at `NOTIFY_OFFSET + n * NOTIFY_MULTIPLIER`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table in the modern BAR.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending-bit array in the modern BAR.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Size of each region.
const REGION_SIZE: u64 = 0x1000;
/// Dword of the command register.
const COMMAND_REG: usize = 1;
/// Command register: INTx disable.
const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Virtio vendor capability types.
mod cap {
    pub const VENDOR_ID: u8 = 0x09;
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI_CFG: u8 = 5;
}

/// The transitional (0.9.5) PCI device ID of a virtio device type, if it has one.
pub fn transitional_device_id(device_type: u32) -> Option<u16> {
    Some(match device_type {
        1 => 0x1000,
        2 => 0x1001,
        3 => 0x1003,
        4 => 0x1005,
        5 => 0x1002,
        8 => 0x1004,
        9 => 0x1009,
        _ => return None,
    })
}

/// The PCI class code QEMU gives a virtio device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,
        2 => 0x01_00_00,
        3 => 0x07_80_00,
        _ => 0xff_00_00,
    }
}

/// Where a virtio-pci function sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciPlacement {
    /// Address of the modern BAR.
    pub modern_bar: u64,
    /// Port of the legacy I/O BAR (transitional devices only).
    pub legacy_bar: Option<u64>,
    /// One GSI per MSI-X vector (queues + 1 for configuration changes).
    pub msi_gsis: Vec<u32>,
    /// The IOAPIC pin of INTA#.
    pub intx_gsi: u32,
}

/// A virtio device behind virtio-pci.
pub struct VirtioPciDevice {
    common: VirtioCommon,
    config: PciConfiguration,
    interrupt: Arc<PciInterrupt>,
    dyn_interrupt: Arc<dyn VirtioInterrupt>,
    wiring: Arc<dyn EventWiring>,
    modern_base: u64,
    legacy_base: Option<u64>,
    msix_cap: usize,
    pci_cfg_cap: usize,
}

impl VirtioPciDevice {
    /// Puts `device` on PCI at `place`: registers the notify ioeventfds, one irqfd per MSI-X
    /// vector and the INTx irqfd with its resample eventfd. A transitional device gets the
    /// legacy I/O BAR only if `place` has one.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        wiring: Arc<dyn EventWiring>,
        place: &PciPlacement,
    ) -> Result<VirtioPciDevice, TransportError> {
        let device_type = device.device_type();
        let common = VirtioCommon::new(device, mem)?;
        let transitional =
            transitional_device_id(device_type).filter(|_| place.legacy_bar.is_some());
        let header = PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR,
            device_id: transitional
                .unwrap_or(MODERN_DEVICE_ID_BASE.wrapping_add(device_type as u16)),
            revision: if transitional.is_some() { 0 } else { 1 },
            class: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR,
            subsystem_id: device_type as u16,
            interrupt_pin: 1,
            interrupt_line: place.intx_gsi as u8,
        };
        let mut config = PciConfiguration::new(&header);
        let bar_err = |e| TransportError::Pci(format!("{e}"));
        config
            .add_bar(
                MODERN_BAR,
                BarKind::Mem64,
                MODERN_BAR_SIZE,
                place.modern_bar,
            )
            .map_err(bar_err)?;
        let legacy_base = place.legacy_bar.filter(|_| transitional.is_some());
        if let Some(port) = legacy_base {
            config
                .add_bar(LEGACY_BAR, BarKind::Io, LEGACY_BAR_SIZE, port)
                .map_err(bar_err)?;
        }
        let msix = MsixConfig::new(place.msi_gsis.clone(), Arc::clone(&wiring))?;
        let (msix_cap, pci_cfg_cap) =
            add_capabilities(&mut config, common.queue_count(), msix.len()).map_err(bar_err)?;
        let intx = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        wiring.register_irqfd_resample(&intx, &resample, place.intx_gsi)?;
        let interrupt = Arc::new(PciInterrupt::new(
            common.queue_count(),
            common.status_handle(),
            Arc::new(Mutex::new(msix)),
            intx,
            resample,
        ));
        let dev = VirtioPciDevice {
            common,
            config,
            dyn_interrupt: interrupt.clone(),
            interrupt,
            wiring,
            modern_base: place.modern_bar,
            legacy_base,
            msix_cap,
            pci_cfg_cap,
        };
        dev.wire_notifies(MODERN_BAR, place.modern_bar, true)?;
        if let Some(port) = legacy_base {
            dev.wire_notifies(LEGACY_BAR, port, true)?;
        }
        Ok(dev)
    }

    /// The BARs to map: the modern BAR and, on a transitional device, the legacy I/O BAR.
    pub fn bars(&self) -> Vec<MappedBar> {
        let mut bars = vec![MappedBar {
            bar: MODERN_BAR,
            kind: BarKind::Mem64,
            base: self.modern_base,
            size: MODERN_BAR_SIZE,
        }];
        if let Some(port) = self.legacy_base {
            bars.push(MappedBar {
                bar: LEGACY_BAR,
                kind: BarKind::Io,
                base: port,
                size: LEGACY_BAR_SIZE,
            });
        }
        bars
    }

    /// Whether the legacy interface is offered.
    pub fn is_transitional(&self) -> bool {
        self.legacy_base.is_some()
    }

    /// Stops the device's worker (the VM is ending).
    pub fn shutdown(&mut self) {
        self.common.shutdown();
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<crate::counters::Counters> {
        self.common.device.counters()
    }

    /// Registers (or unregisters) every queue's notify ioeventfd for BAR `bar` at `base`.
    fn wire_notifies(&self, bar: usize, base: u64, register: bool) -> Result<(), TransportError> {
        for (i, fd) in self.common.notifies().iter().enumerate() {
            let (addr, datamatch) = if bar == LEGACY_BAR {
                (
                    NotifyAddress::Pio(base + legacy::QUEUE_NOTIFY),
                    NotifyMatch::U16(i as u16),
                )
            } else {
                let off = NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
                (NotifyAddress::Mmio(base + off), NotifyMatch::Any)
            };
            if register {
                self.wiring.register_ioevent(fd, addr, datamatch)?;
            } else {
                self.wiring.unregister_ioevent(fd, addr, datamatch)?;
            }
        }
        Ok(())
    }

    /// A write of the status byte, from either interface.
    fn write_status(&mut self, value: u8) {
        if self.common.write_status(value, &self.dyn_interrupt) {
            self.interrupt.reset();
        }
    }

    fn read_modern(&mut self, offset: u64, data: &mut [u8]) {
        match offset / REGION_SIZE * REGION_SIZE {
            COMMON_OFFSET => self.read_common(offset, data),
            ISR_OFFSET => {
                data.fill(0);
                if offset == ISR_OFFSET {
                    if let Some(b) = data.first_mut() {
                        *b = self.interrupt.take_isr();
                    }
                }
            }
            DEVICE_OFFSET => self.common.device.read_config(offset - DEVICE_OFFSET, data),
            MSIX_TABLE_OFFSET => self
                .interrupt
                .msix()
                .read_table(offset - MSIX_TABLE_OFFSET, data),
            MSIX_PBA_OFFSET => self
                .interrupt
                .msix()
                .read_pba(offset - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write_modern(&mut self, offset: u64, data: &[u8]) {
        match offset / REGION_SIZE * REGION_SIZE {
            COMMON_OFFSET => self.write_common(offset, data),
            DEVICE_OFFSET => self
                .common
                .device
                .write_config(offset - DEVICE_OFFSET, data),
            NOTIFY_OFFSET => {
                let queue = (offset - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                self.common.notify(queue as u32);
            }
            MSIX_TABLE_OFFSET => {
                let _ = self
                    .interrupt
                    .msix()
                    .write_table(offset - MSIX_TABLE_OFFSET, data);
            }
            _ => {}
        }
    }

    /// The capability fields of the VIRTIO_PCI_CAP_PCI_CFG window: (bar, offset, length).
    fn pci_cfg_window(&self) -> (u8, u64, usize) {
        let c = self.pci_cfg_cap;
        (
            self.config.byte(c + 4),
            u64::from(self.config.dword_at(c + 8)),
            self.config.dword_at(c + 12) as usize,
        )
    }

    fn pci_cfg_data_reg(&self) -> usize {
        (self.pci_cfg_cap + 16) / 4
    }
}

/// Adds the virtio vendor capabilities and MSI-X; returns the offsets of the MSI-X and the
/// PCI-configuration-access capabilities.
fn add_capabilities(
    config: &mut PciConfiguration,
    queues: usize,
    vectors: usize,
) -> Result<(usize, usize), crate::pci::config::PciConfigError> {
    let vendor = |cfg_type: u8, len: u8, offset: u64, length: u64| {
        let mut c = vec![cap::VENDOR_ID, 0, len, cfg_type, MODERN_BAR as u8, 0, 0, 0];
        c.extend_from_slice(&(offset as u32).to_le_bytes());
        c.extend_from_slice(&(length as u32).to_le_bytes());
        c
    };
    config.add_capability(&vendor(cap::COMMON, 16, COMMON_OFFSET, 0x38), &[])?;
    let notify_len = (queues as u64 * u64::from(NOTIFY_MULTIPLIER)).max(4);
    let mut notify = vendor(cap::NOTIFY, 20, NOTIFY_OFFSET, notify_len);
    notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
    config.add_capability(&notify, &[])?;
    config.add_capability(&vendor(cap::ISR, 16, ISR_OFFSET, 1), &[])?;
    config.add_capability(&vendor(cap::DEVICE, 16, DEVICE_OFFSET, REGION_SIZE), &[])?;
    let mut pci_cfg = vendor(cap::PCI_CFG, 20, 0, 0);
    pci_cfg.extend_from_slice(&[0; 4]);
    let mut pci_cfg_mask = vec![0u8; 20];
    pci_cfg_mask[4] = 0xff;
    pci_cfg_mask[8..20].fill(0xff);
    let pci_cfg_cap = config.add_capability(&pci_cfg, &pci_cfg_mask)?;
    let control = (vectors.max(1) - 1) as u16;
    let mut msix = vec![MSIX_CAP_ID, 0];
    msix.extend_from_slice(&control.to_le_bytes());
    msix.extend_from_slice(&(MSIX_TABLE_OFFSET as u32 | MODERN_BAR as u32).to_le_bytes());
    msix.extend_from_slice(&(MSIX_PBA_OFFSET as u32 | MODERN_BAR as u32).to_le_bytes());
    let control_mask = ((MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8) as u8;
    let msix_cap = config.add_capability(&msix, &[0, 0, 0, control_mask])?;
    Ok((msix_cap, pci_cfg_cap))
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_reg() {
            let (bar, offset, len) = self.pci_cfg_window();
            let mut data = [0u8; 4];
            if bar as usize == MODERN_BAR && matches!(len, 1 | 2 | 4) {
                self.read_modern(offset, &mut data[..len]);
            }
            return u32::from_le_bytes(data);
        }
        self.config.read_reg(reg)
    }

    fn write_config_register(
        &mut self,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) -> Option<BarWrite> {
        let write = self.config.write_reg(reg, offset, data);
        if reg == COMMAND_REG {
            let disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
            self.interrupt.set_intx_disabled(disabled);
        } else if reg == self.msix_cap / 4 {
            let control = (self.config.dword_at(self.msix_cap) >> 16) as u16;
            self.interrupt.msix().set_control(control);
        } else if reg == self.pci_cfg_data_reg() {
            let (bar, at, len) = self.pci_cfg_window();
            let value = self.config.read_reg(reg).to_le_bytes();
            if bar as usize == MODERN_BAR && matches!(len, 1 | 2 | 4) {
                self.write_modern(at, &value[..len]);
            }
        }
        write
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            MODERN_BAR => self.read_modern(offset, data),
            LEGACY_BAR if self.legacy_base.is_some() => self.read_legacy(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            MODERN_BAR => self.write_modern(offset, data),
            LEGACY_BAR if self.legacy_base.is_some() => self.write_legacy(offset, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, old: u64, new: u64) {
        // A failed re-registration leaves notifications to the BAR write path (an exit).
        let _ = self.wire_notifies(bar, old, false);
        let _ = self.wire_notifies(bar, new, true);
        match bar {
            MODERN_BAR => self.modern_base = new,
            LEGACY_BAR => self.legacy_base = Some(new),
            _ => {}
        }
    }

    fn bar_address(&self, bar: usize) -> Option<u64> {
        self.config.bar(bar).map(|b| b.addr)
    }
}

#[cfg(test)]
mod tests;
