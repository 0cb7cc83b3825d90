//! PCI: one bus (bus 0) behind a host bridge at 00:00.0, configuration through ports
//! 0xCF8/0xCFC on the port-I/O bus (`root.rs`) and ECAM on the MMIO bus (`ecam.rs`, for ACPI's MCFG),
//! type-0 configuration spaces with BARs and capabilities (`config.rs`) and MSI-X (`msix.rs`).
//!
//! A function implements [`PciDevice`]; the root dispatches configuration accesses to it and
//! puts each of its BARs on the MMIO or port-I/O bus as a [`root::PciBarRegion`]. When the
//! guest writes a BAR a new address, the root moves the region on its bus
//! ([`crate::devices::Bus::relocate`]) and tells the device ([`PciDevice::bar_moved`]), which
//! moves whatever it registered at the old address (ioeventfds).

#![forbid(unsafe_code)]

pub mod config;
pub mod ecam;
pub mod msix;
pub mod root;

pub use config::{BarKind, BarWrite, PciConfiguration, PciHeader};
pub use root::{PciConfigIo, PciRoot};

/// A PCI function.
pub trait PciDevice: Send {
    /// Dword `reg` (0..64) of the configuration space.
    fn read_config_register(&mut self, reg: usize) -> u32;

    /// A write of `data` at byte `offset` (0..4) of dword `reg`; returns the BAR address it
    /// set, if it wrote one.
    fn write_config_register(&mut self, reg: usize, offset: usize, data: &[u8])
        -> Option<BarWrite>;

    /// A guest read at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` moved on its bus from `old` to `new`.
    fn bar_moved(&mut self, bar: usize, old: u64, new: u64);

    /// Where BAR `bar` is now as the function's configuration space says (a restore moves
    /// the BAR's mapping there: `PciRoot::sync_bars`); None for a function without it.
    fn bar_address(&self, _bar: usize) -> Option<u64> {
        None
    }
}

/// PCI vendor ID of Intel (the host bridge).
pub const VENDOR_INTEL: u16 = 0x8086;
/// The host bridge's device ID (Cloud Hypervisor's "virt PCIe host").
pub const DEVICE_HOST_BRIDGE: u16 = 0x0d57;
/// Class code of a host bridge.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
