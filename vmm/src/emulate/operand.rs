//! Operands: effective addresses, segmentation checks and memory-operand access.

use iced_x86::{OpKind, Register};

use super::cpu::{self, CpuMode, CpuState, GuestMemoryAccess};
use super::paging::{self, Access};
use super::{Ctx, Fault, Stop};

/// Converts segment `seg` : offset `ea` into a linear address for an access of `len` bytes,
/// with the limit, type and canonical checks of the current mode.
pub(crate) fn segment_linear(
    state: &CpuState,
    seg_reg: Register,
    ea: u64,
    len: usize,
    write: bool,
) -> Result<u64, Stop> {
    let fault = if seg_reg == Register::SS {
        Fault::ss(0)
    } else {
        Fault::gp(0)
    };
    let seg = state
        .segment(seg_reg)
        .ok_or(Stop::Unsupported("segment register"))?;
    let last = ea.wrapping_add(len.saturating_sub(1) as u64);
    if state.mode() == CpuMode::Long64 {
        let base = if matches!(seg_reg, Register::FS | Register::GS) {
            seg.base
        } else {
            0
        };
        let la = base.wrapping_add(ea);
        let la_last = base.wrapping_add(last);
        if !is_canonical(state, la) || !is_canonical(state, la_last) {
            return Err(fault.into());
        }
        return Ok(la);
    }
    let protected = matches!(state.mode(), CpuMode::Protected16 | CpuMode::Protected32);
    if protected {
        check_segment_type(seg, write, fault)?;
    }
    let code = seg.type_ & 8 != 0;
    let expand_down = protected && !code && seg.type_ & 4 != 0;
    let limit = u64::from(seg.limit);
    let in_limit = if expand_down {
        let upper = if seg.db != 0 { 0xffff_ffff } else { 0xffff };
        ea > limit && last <= upper && last >= ea
    } else {
        last <= limit && last >= ea
    };
    if !in_limit {
        return Err(fault.into());
    }
    Ok(seg.base.wrapping_add(ea) & 0xffff_ffff)
}

/// Protected-mode segment type checks for a data access.
fn check_segment_type(
    seg: &kvm_bindings::kvm_segment,
    write: bool,
    fault: Fault,
) -> Result<(), Stop> {
    let code = seg.type_ & 8 != 0;
    let rw = seg.type_ & 2 != 0;
    if seg.unusable != 0 || seg.present == 0 {
        return Err(fault.into());
    }
    let bad = if write { code || !rw } else { code && !rw };
    if bad {
        return Err(fault.into());
    }
    Ok(())
}

/// Whether `la` is canonical for the guest's linear-address width (48 or 57 bits).
pub(crate) fn is_canonical(state: &CpuState, la: u64) -> bool {
    let bits = if state.sregs.cr4 & cpu::cr::CR4_LA57 != 0 {
        57
    } else {
        48
    };
    let shift = 64 - bits;
    (((la << shift) as i64) >> shift) as u64 == la
}

impl<M: GuestMemoryAccess + ?Sized> Ctx<'_, M> {
    /// Whether operand `op` is a memory operand.
    pub fn is_mem(&self, op: u32) -> bool {
        self.instr.op_kind(op) == OpKind::Memory
    }

    /// Offset (effective address) of the memory operand, wrapped to the address size.
    pub fn effective_address(&self) -> Result<u64, Stop> {
        let state = &*self.state;
        let op = (0..self.instr.op_count())
            .find(|&i| self.instr.op_kind(i) == OpKind::Memory)
            .ok_or(Stop::Unsupported("no memory operand"))?;
        self.instr
            .virtual_address(op, 0, |reg, _, _| {
                if reg.is_segment_register() {
                    Some(0)
                } else {
                    state.gpr(reg)
                }
            })
            .ok_or(Stop::Unsupported("memory operand addressing"))
    }

    /// Linear address of the memory operand for an access of `len` bytes.
    pub fn mem_address(&self, len: usize, write: bool) -> Result<u64, Stop> {
        let ea = self.effective_address()?;
        segment_linear(self.state, self.instr.memory_segment(), ea, len, write)
    }

    /// Reads the memory operand into `buf`.
    pub fn read_mem(&self, buf: &mut [u8]) -> Result<(), Stop> {
        let la = self.mem_address(buf.len(), false)?;
        paging::read_linear(self.state, self.mem, la, buf, Access::READ)
    }

    /// Reads the memory operand into `buf` after checking it is `align`-byte aligned (#GP(0)).
    pub fn read_mem_aligned(&self, buf: &mut [u8], align: u64) -> Result<(), Stop> {
        let la = self.mem_address(buf.len(), false)?;
        if la % align != 0 {
            return Err(Fault::gp(0).into());
        }
        paging::read_linear(self.state, self.mem, la, buf, Access::READ)
    }

    /// Writes `buf` to the memory operand.
    pub fn write_mem(&self, buf: &[u8]) -> Result<(), Stop> {
        let la = self.mem_address(buf.len(), true)?;
        paging::write_linear(self.state, self.mem, la, buf, Access::WRITE)
    }

    /// Writes `buf` to the memory operand after checking it is `align`-byte aligned (#GP(0)).
    pub fn write_mem_aligned(&self, buf: &[u8], align: u64) -> Result<(), Stop> {
        let la = self.mem_address(buf.len(), true)?;
        if la % align != 0 {
            return Err(Fault::gp(0).into());
        }
        paging::write_linear(self.state, self.mem, la, buf, Access::WRITE)
    }

    /// Reads an integer register-or-memory operand of `size` bytes (1, 2, 4 or 8).
    pub fn read_rm(&self, op: u32, size: usize) -> Result<u64, Stop> {
        if self.is_mem(op) {
            let mut buf = [0u8; 8];
            self.read_mem(&mut buf[..size])?;
            return Ok(u64::from_le_bytes(buf));
        }
        self.state
            .gpr(self.instr.op_register(op))
            .ok_or(Stop::Unsupported("register operand"))
    }

    /// Writes an integer register-or-memory operand of `size` bytes.
    pub fn write_rm(&mut self, op: u32, size: usize, value: u64) -> Result<(), Stop> {
        if self.is_mem(op) {
            return self.write_mem(&value.to_le_bytes()[..size]);
        }
        let reg = self.instr.op_register(op);
        self.state.set_gpr(reg, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{flat32_state, long_mode_state};

    #[test]
    fn test_segment_linear_noncanonical_64bit_gp() {
        // Arrange
        let state = long_mode_state();
        // Act
        let result = segment_linear(&state, Register::DS, 0x0000_8000_0000_0000, 8, false);
        // Assert
        assert_eq!(result, Err(Stop::Fault(Fault::gp(0))));
    }

    #[test]
    fn test_segment_linear_noncanonical_stack_ss() {
        let state = long_mode_state();
        let result = segment_linear(&state, Register::SS, 0x0000_8000_0000_0000, 8, false);
        assert_eq!(result, Err(Stop::Fault(Fault::ss(0))));
    }

    #[test]
    fn test_segment_linear_fs_base_added_in_64bit() {
        let mut state = long_mode_state();
        state.sregs.fs.base = 0x1000;
        state.sregs.ds.base = 0x5000;
        assert_eq!(
            segment_linear(&state, Register::FS, 0x10, 4, false),
            Ok(0x1010)
        );
        assert_eq!(
            segment_linear(&state, Register::DS, 0x10, 4, false),
            Ok(0x10)
        );
    }

    #[test]
    fn test_segment_linear_beyond_limit_32bit_gp() {
        let mut state = flat32_state();
        state.sregs.ds.limit = 0xfff;
        state.sregs.ds.base = 0x10000;
        assert_eq!(
            segment_linear(&state, Register::DS, 0xffc, 4, false),
            Ok(0x10ffc)
        );
        assert_eq!(
            segment_linear(&state, Register::DS, 0xffd, 4, false),
            Err(Stop::Fault(Fault::gp(0)))
        );
    }

    #[test]
    fn test_segment_linear_write_to_code_segment_gp() {
        let state = flat32_state();
        assert_eq!(
            segment_linear(&state, Register::CS, 0x100, 4, false),
            Ok(0x100)
        );
        assert_eq!(
            segment_linear(&state, Register::CS, 0x100, 4, true),
            Err(Stop::Fault(Fault::gp(0)))
        );
    }

    #[test]
    fn test_segment_linear_expand_down_valid_above_limit() {
        let mut state = flat32_state();
        state.sregs.ss.type_ = 7; // read/write, expand-down, accessed
        state.sregs.ss.limit = 0xfff;
        assert_eq!(
            segment_linear(&state, Register::SS, 0x1000, 4, true),
            Ok(0x1000)
        );
        assert_eq!(
            segment_linear(&state, Register::SS, 0xffe, 4, true),
            Err(Stop::Fault(Fault::ss(0)))
        );
    }
}
