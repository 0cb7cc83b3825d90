//! Strata's VMM library.
//!
//! The library takes a [`config::VmConfig`] and actions ([`control::actions::VmmAction`]) and
//! runs a VM from them; it never sees argv or HTTP.
//! ARCHITECTURE.md at the top of the repository describes the boot sequence and the threads;
//! the modules below follow it.
#![deny(missing_docs)]

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod config;
pub mod control;
pub mod counters;
pub mod device_manager;
pub mod devices;
pub mod emulate;
pub mod firmware;
pub mod kvm;
pub mod memory;
pub mod pci;
pub mod resources;
pub mod snapshot;
pub mod virtio;
pub mod vm;
pub mod vm_events;
pub mod vmm;

pub use control::outcome::VmOutcome;
pub use vm::{Vm, VmmError};
pub use vmm::{run, run_restored, Vmm, VmmExit};
