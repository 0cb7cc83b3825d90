//! Everything that talks to KVM: the VM file descriptor (memslots, irqchip, PIT, irqfds) and
//! the vCPUs with their run loop.

mod fallback;
pub mod vcpu;
pub mod vm;

pub use vcpu::{CpuMode, Vcpu, VcpuContext, VcpuEnd, VcpuError, VcpuReport, VcpuStop};
pub use vm::{KvmVm, VmError};
