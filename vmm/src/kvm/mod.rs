//! Everything that talks to KVM: the VM file descriptor (memslots, irqchip, PIT), the device
//! wiring (ioeventfds, irqfds, GSI routing: `irq.rs`), the vCPUs with their run loop, and the
//! reaper that takes the VM's destruction off the VMM's exit path (`reaper.rs`).

mod fallback;
pub mod irq;
pub mod kick;
pub mod persist;
pub mod reaper;
pub mod vcpu;
pub mod vm;

pub use vcpu::{
    CpuMode, SavedVcpu, Vcpu, VcpuCommand, VcpuContext, VcpuEnd, VcpuError, VcpuEvent,
    VcpuEventKind, VcpuLink, VcpuReport, VcpuStop, VCPU_COUNTER_NAMES,
};
pub use vm::{KvmVm, VmError};
