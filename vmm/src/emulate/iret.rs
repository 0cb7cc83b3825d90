//! IRET in protected mode (KVM's emulator only handles real-mode IRET).

use super::cpu::GuestMemoryAccess;
use super::{Ctx, Stop};

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(_ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    Err(Stop::Unsupported("IRET outside 32-bit protected mode"))
}
