//! x86_64 machine set-up: memory layout, boot-time CPU state, CPUID, MSRs, LAPIC, MP table.

pub mod bda;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
