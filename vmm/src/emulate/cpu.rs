//! Guest CPU state, guest-physical memory access and the x86 page walk.
//!
//! The emulator never talks to KVM: the vCPU loop fills a [`CpuState`] from KVM_GET_REGS,
//! KVM_GET_SREGS and KVM_GET_FPU, and hands guest memory over as a [`GuestMemoryAccess`].

use iced_x86::Register;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::Stop;

/// RFLAGS bits the emulator reads or writes.
pub mod flags {
    /// Carry flag.
    pub const CF: u64 = 1 << 0;
    /// Parity flag.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry flag.
    pub const AF: u64 = 1 << 4;
    /// Zero flag.
    pub const ZF: u64 = 1 << 6;
    /// Sign flag.
    pub const SF: u64 = 1 << 7;
    /// Trap flag.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable flag.
    pub const IF: u64 = 1 << 9;
    /// Direction flag.
    pub const DF: u64 = 1 << 10;
    /// Overflow flag.
    pub const OF: u64 = 1 << 11;
    /// I/O privilege level (two bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task flag.
    pub const NT: u64 = 1 << 14;
    /// Resume flag.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode flag.
    pub const VM: u64 = 1 << 17;
    /// Alignment check / SMAP override flag.
    pub const AC: u64 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u64 = 1 << 19;
    /// Virtual interrupt pending flag.
    pub const VIP: u64 = 1 << 20;
    /// CPUID-available flag.
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// Control-register bits the emulator checks.
pub(crate) mod cr {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_LA57: u64 = 1 << 12;
    pub const CR4_CET: u64 = 1 << 23;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// CPU features the guest was given (from its CPUID) that change what an instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CPUID.7.0:EBX.SMAP: CLAC/STAC exist (otherwise they raise #UD).
    pub smap: bool,
    /// CPUID.80000001h:ECX.ABM: LZCNT exists (otherwise F3 0F BD is BSR).
    pub lzcnt: bool,
    /// CPUID.7.0:EBX.BMI1: TZCNT exists (otherwise F3 0F BC is BSF).
    pub bmi1: bool,
    /// CPUID.80000008h:EAX[7:0]: physical address width, for reserved-bit checks in the page walk.
    pub phys_addr_bits: u8,
    /// MXCSR_MASK as FXSAVE reports it: bits outside it are reserved (LDMXCSR/FXRSTOR raise #GP).
    pub mxcsr_mask: u32,
    /// FXSAVE stores the x87 error pointers (FOP, FIP, FDP) only when an unmasked exception is
    /// pending (FSW.ES), zeros otherwise (AMD; probed by running FXSAVE, since a CPU seen here
    /// does it although its CPUID.80000008h:EBX.XSaveErPtr says it always stores them).
    pub fxsave_pointers_on_error_only: bool,
}

impl GuestFeatures {
    /// The host CPU's features: what a guest sees when the VMM passes the host CPUID through.
    pub fn host() -> Self {
        static HOST: std::sync::OnceLock<GuestFeatures> = std::sync::OnceLock::new();
        *HOST.get_or_init(Self::probe_host)
    }

    fn probe_host() -> Self {
        // CPUID is unprivileged and has no side effects.
        let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
        let ext1 = core::arch::x86_64::__cpuid(0x8000_0001);
        let ext8 = core::arch::x86_64::__cpuid(0x8000_0008);
        GuestFeatures {
            smap: leaf7.ebx & (1 << 20) != 0,
            lzcnt: ext1.ecx & (1 << 5) != 0,
            bmi1: leaf7.ebx & (1 << 3) != 0,
            phys_addr_bits: (ext8.eax & 0xff) as u8,
            mxcsr_mask: host_mxcsr_mask(),
            fxsave_pointers_on_error_only: host_fxsave_pointers_on_error_only(),
        }
    }
}

/// Whether the host's FXSAVE stores zero error pointers when no x87 exception is pending: runs
/// FLD1 (which sets FIP) and looks at what FXSAVE stored.
fn host_fxsave_pointers_on_error_only() -> bool {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let (mut backup, mut probe) = (Area([0; 512]), Area([0; 512]));
    // SAFETY: the host's x87/SSE state is saved to `backup` first and restored last; both
    // areas are 512 bytes and 16-byte aligned, as FXSAVE/FXRSTOR require. FNINIT and FLD1
    // change only x87 state, which the FXRSTOR puts back.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{bk}]", "fninit", "fld1", "fxsave64 [{p}]", "fxrstor64 [{bk}]",
            bk = in(reg) backup.0.as_mut_ptr(), p = in(reg) probe.0.as_mut_ptr(),
            options(nostack)
        );
    }
    probe.0[8..16].iter().all(|&b| b == 0)
}

/// The host's MXCSR_MASK, read once with a native FXSAVE.
fn host_mxcsr_mask() -> u32 {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let mut area = Area([0; 512]);
    // SAFETY: FXSAVE writes exactly 512 bytes to a 16-byte aligned buffer, which `area` is;
    // it changes no register. FXSR is part of the x86_64 baseline.
    unsafe {
        core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack));
    }
    let mask = u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]]);
    // A zero mask means the CPU predates MXCSR_MASK; the architectural default applies.
    if mask == 0 {
        0xffbf
    } else {
        mask
    }
}

/// The operating mode of the guest CPU, from CR0.PE, RFLAGS.VM, EFER.LMA and CS.L/CS.D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// Real-address mode.
    Real,
    /// Virtual-8086 mode.
    Virtual8086,
    /// Protected mode (or compatibility mode) with a 16-bit code segment.
    Protected16,
    /// Protected mode (or compatibility mode) with a 32-bit code segment.
    Protected32,
    /// 64-bit mode.
    Long64,
}

impl CpuMode {
    /// Default code size in bits (what the decoder needs).
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Protected16 => 16,
            CpuMode::Protected32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

impl std::fmt::Display for CpuMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            CpuMode::Real => "real mode",
            CpuMode::Virtual8086 => "virtual-8086 mode",
            CpuMode::Protected16 => "16-bit protected mode",
            CpuMode::Protected32 => "32-bit protected mode",
            CpuMode::Long64 => "64-bit mode",
        };
        f.write_str(name)
    }
}

/// Everything the emulator may read or change in the vCPU.
///
/// Fill it from KVM_GET_REGS / KVM_GET_SREGS / KVM_GET_FPU; after [`super::emulate`] write back
/// the parts its [`super::Writeback`] names.
#[derive(Clone, Copy, Debug)]
pub struct CpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, descriptor-table and control registers, EFER.
    pub sregs: kvm_sregs,
    /// x87, MMX and SSE state in FXSAVE terms.
    pub fpu: kvm_fpu,
    /// XCR0 (0 if the guest never enabled XSAVE).
    pub xcr0: u64,
    /// CPU features the guest sees.
    pub features: GuestFeatures,
}

impl CpuState {
    /// A state from KVM's register sets, with the host's CPU features.
    pub fn new(regs: kvm_regs, sregs: kvm_sregs, fpu: kvm_fpu) -> Self {
        CpuState {
            regs,
            sregs,
            fpu,
            xcr0: 0,
            features: GuestFeatures::host(),
        }
    }

    /// The current operating mode.
    pub fn mode(&self) -> CpuMode {
        if self.sregs.cr0 & cr::CR0_PE == 0 {
            CpuMode::Real
        } else if self.regs.rflags & flags::VM != 0 {
            CpuMode::Virtual8086
        } else if self.sregs.efer & cr::EFER_LMA != 0 && self.sregs.cs.l != 0 {
            CpuMode::Long64
        } else if self.sregs.cs.db != 0 {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The current privilege level (SS.DPL in protected mode, as KVM reports it).
    pub fn cpl(&self) -> u8 {
        match self.mode() {
            CpuMode::Real => 0,
            CpuMode::Virtual8086 => 3,
            _ => self.sregs.ss.dpl & 3,
        }
    }

    /// The segment register `reg` (ES, CS, SS, DS, FS or GS).
    pub(crate) fn segment(&self, reg: Register) -> Option<&kvm_segment> {
        Some(match reg {
            Register::ES => &self.sregs.es,
            Register::CS => &self.sregs.cs,
            Register::SS => &self.sregs.ss,
            Register::DS => &self.sregs.ds,
            Register::FS => &self.sregs.fs,
            Register::GS => &self.sregs.gs,
            _ => return None,
        })
    }

    /// Reads a general-purpose register of any size (AH..BH included).
    pub(crate) fn gpr(&self, reg: Register) -> Option<u64> {
        let full = reg.full_register();
        let value = match full {
            Register::RIP => self.regs.rip,
            _ => *self.gpr64_ref(full)?,
        };
        Some(match reg.size() {
            1 if is_high_byte(reg) => (value >> 8) & 0xff,
            1 => value & 0xff,
            2 => value & 0xffff,
            4 => value & 0xffff_ffff,
            _ => value,
        })
    }

    /// Writes a general-purpose register with the architectural width rules: 32-bit writes
    /// zero the upper half, 8- and 16-bit writes keep the other bits.
    pub(crate) fn set_gpr(&mut self, reg: Register, value: u64) -> Result<(), Stop> {
        let high = is_high_byte(reg);
        let size = reg.size();
        let slot = self
            .gpr64_mut(reg.full_register())
            .ok_or(Stop::Unsupported("register operand"))?;
        *slot = match size {
            1 if high => (*slot & !0xff00) | ((value & 0xff) << 8),
            1 => (*slot & !0xff) | (value & 0xff),
            2 => (*slot & !0xffff) | (value & 0xffff),
            4 => value & 0xffff_ffff,
            _ => value,
        };
        Ok(())
    }

    fn gpr64_ref(&self, full: Register) -> Option<&u64> {
        let r = &self.regs;
        Some(match full {
            Register::RAX => &r.rax,
            Register::RCX => &r.rcx,
            Register::RDX => &r.rdx,
            Register::RBX => &r.rbx,
            Register::RSP => &r.rsp,
            Register::RBP => &r.rbp,
            Register::RSI => &r.rsi,
            Register::RDI => &r.rdi,
            Register::R8 => &r.r8,
            Register::R9 => &r.r9,
            Register::R10 => &r.r10,
            Register::R11 => &r.r11,
            Register::R12 => &r.r12,
            Register::R13 => &r.r13,
            Register::R14 => &r.r14,
            Register::R15 => &r.r15,
            _ => return None,
        })
    }

    fn gpr64_mut(&mut self, full: Register) -> Option<&mut u64> {
        let r = &mut self.regs;
        Some(match full {
            Register::RAX => &mut r.rax,
            Register::RCX => &mut r.rcx,
            Register::RDX => &mut r.rdx,
            Register::RBX => &mut r.rbx,
            Register::RSP => &mut r.rsp,
            Register::RBP => &mut r.rbp,
            Register::RSI => &mut r.rsi,
            Register::RDI => &mut r.rdi,
            Register::R8 => &mut r.r8,
            Register::R9 => &mut r.r9,
            Register::R10 => &mut r.r10,
            Register::R11 => &mut r.r11,
            Register::R12 => &mut r.r12,
            Register::R13 => &mut r.r13,
            Register::R14 => &mut r.r14,
            Register::R15 => &mut r.r15,
            _ => return None,
        })
    }
}

fn is_high_byte(reg: Register) -> bool {
    matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    )
}

/// Guest-physical memory as the emulator needs it.
///
/// Implemented for every vm-memory [`GuestMemoryBackend`] (so for `GuestMemoryMmap`); a failed
/// access (MMIO, unmapped) returns `false` and stops the VM with a clear error.
pub trait GuestMemoryAccess {
    /// Reads `buf.len()` bytes at guest-physical address `gpa`.
    fn read_phys(&self, gpa: GuestAddress, buf: &mut [u8]) -> bool;
    /// Writes `buf` at guest-physical `gpa`.
    fn write_phys(&self, gpa: GuestAddress, buf: &[u8]) -> bool;
    /// Atomically compares the 8 bytes at `gpa` with `expected` and, if equal, stores `new`.
    /// Returns the old value, or `None` if the bytes are not in RAM.
    fn compare_exchange_u64(&self, gpa: GuestAddress, expected: u64, new: u64) -> Option<u64>;
    /// Atomically compares the 16 aligned bytes at `gpa` with `expected` and, if equal, stores
    /// `new`. Returns the old value, or `None` if the bytes are not in RAM.
    fn compare_exchange_u128(&self, gpa: GuestAddress, expected: u128, new: u128) -> Option<u128>;
}

impl<M: GuestMemoryBackend + ?Sized> GuestMemoryAccess for M {
    fn read_phys(&self, gpa: GuestAddress, buf: &mut [u8]) -> bool {
        self.read_slice(buf, gpa).is_ok()
    }

    fn write_phys(&self, gpa: GuestAddress, buf: &[u8]) -> bool {
        self.write_slice(buf, gpa).is_ok()
    }

    fn compare_exchange_u64(&self, gpa: GuestAddress, expected: u64, new: u64) -> Option<u64> {
        let slice = self.get_slice(gpa, 8).ok()?;
        let guard = slice.ptr_guard_mut();
        let ptr = guard.as_ptr();
        let (mut lo, mut hi) = (expected as u32, (expected >> 32) as u32);
        // SAFETY: `ptr` points to 8 bytes of mapped guest RAM (get_slice checked the range and
        // `guard` keeps the mapping alive). LOCK CMPXCHG8B works at any alignment and only
        // touches those 8 bytes and EDX:EAX; RBX is saved and restored around it because LLVM
        // reserves it.
        unsafe {
            core::arch::asm!(
                "xchg {b:r}, rbx",
                "lock cmpxchg8b [{p}]",
                "mov rbx, {b:r}",
                p = in(reg) ptr,
                b = inout(reg) (new as u32) as u64 => _,
                inout("eax") lo,
                inout("edx") hi,
                in("ecx") (new >> 32) as u32,
                options(nostack),
            );
        }
        Some(u64::from(lo) | (u64::from(hi) << 32))
    }

    fn compare_exchange_u128(&self, gpa: GuestAddress, expected: u128, new: u128) -> Option<u128> {
        if !gpa.0.is_multiple_of(16) {
            return None;
        }
        let slice = self.get_slice(gpa, 16).ok()?;
        let guard = slice.ptr_guard_mut();
        let ptr = guard.as_ptr();
        let (mut lo, mut hi) = (expected as u64, (expected >> 64) as u64);
        // SAFETY: `ptr` points to 16 bytes of mapped guest RAM, 16-byte aligned (guest RAM
        // regions are page aligned and `gpa` is aligned), as LOCK CMPXCHG16B requires; it only
        // touches those bytes and RDX:RAX. RBX is saved and restored because LLVM reserves it.
        unsafe {
            core::arch::asm!(
                "xchg {b}, rbx",
                "lock cmpxchg16b [{p}]",
                "mov rbx, {b}",
                p = in(reg) ptr,
                b = inout(reg) new as u64 => _,
                inout("rax") lo,
                inout("rdx") hi,
                in("rcx") (new >> 64) as u64,
                options(nostack),
            );
        }
        Some(u128::from(lo) | (u128::from(hi) << 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::long_mode_state;

    #[test]
    fn test_gpr_width_rules() {
        let mut state = long_mode_state();
        state.regs.rax = 0x1111_2222_3333_4444;
        state.set_gpr(Register::AH, 0xff).unwrap();
        assert_eq!(state.regs.rax, 0x1111_2222_3333_ff44);
        state.set_gpr(Register::AX, 0xabcd).unwrap();
        assert_eq!(state.regs.rax, 0x1111_2222_3333_abcd);
        state.set_gpr(Register::EAX, 0x1).unwrap();
        assert_eq!(state.regs.rax, 1);
        assert_eq!(state.gpr(Register::AH), Some(0));
    }
}
