//! Reading physical memory through the start code's identity map, which
//! covers the first 4 GiB.

use crate::{bail, Error};

/// End of the identity map.
pub const MAPPED_END: u64 = 1 << 32;

/// Fails unless `[addr, addr + len)` lies in the identity map.
pub fn check_mapped(addr: u64, len: u64) -> Result<(), Error> {
    match addr.checked_add(len) {
        Some(end) if end <= MAPPED_END => Ok(()),
        _ => bail!("{len:#x} bytes at {addr:#x} are not mapped (only the first 4 GiB are)"),
    }
}

/// The `len` bytes at physical address `addr`.
///
/// # Safety
/// The range must be RAM that nothing writes while the slice lives
/// (boot information, modules), and lie in the identity map.
pub unsafe fn bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Reads a little-endian integer at physical address `addr`.
///
/// # Safety
/// As for [`bytes`].
pub unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller's contract; unaligned reads are fine on x86.
    unsafe { (addr as *const T).read_unaligned() }
}

/// The NUL-terminated string at `addr` (at most 64 KiB; the valid UTF-8
/// prefix), or "" for address 0.
///
/// # Safety
/// As for [`bytes`], for every byte up to the NUL.
pub unsafe fn cstr(addr: u64) -> &'static str {
    if addr == 0 || check_mapped(addr, 1).is_err() {
        return "";
    }
    let limit = (MAPPED_END - addr).min(0x1_0000) as usize;
    // SAFETY: the caller's contract; the loop stops at the NUL.
    let all = unsafe { bytes(addr, limit) };
    let len = all.iter().position(|&b| b == 0).unwrap_or(limit);
    match core::str::from_utf8(&all[..len]) {
        Ok(s) => s,
        // The prefix up to valid_up_to() is valid UTF-8.
        Err(e) => core::str::from_utf8(&all[..e.valid_up_to()]).unwrap_or(""),
    }
}
