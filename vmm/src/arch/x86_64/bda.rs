//! The two BIOS data area words kernels read when no firmware ran: the EBDA segment (0x40e) and
//! the base memory size in KiB (0x413). Xen, for one, places its real-mode trampoline from
//! them and triple-faults when both are zero.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::EBDA_START;

/// BDA word: segment of the extended BIOS data area.
const BDA_EBDA_SEGMENT: GuestAddress = GuestAddress(0x40e);
/// BDA word: base memory size in KiB.
const BDA_BASE_MEMORY_KIB: GuestAddress = GuestAddress(0x413);

/// Writes the BDA words describing the EBDA at [`EBDA_START`] and base memory below it.
pub fn setup_bios_data_area(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj((EBDA_START.0 >> 4) as u16, BDA_EBDA_SEGMENT)?;
    mem.write_obj((EBDA_START.0 >> 10) as u16, BDA_BASE_MEMORY_KIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_setup_bios_data_area_words() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_bios_data_area(&mem).unwrap();
        assert_eq!(mem.read_obj::<u16>(BDA_EBDA_SEGMENT).unwrap(), 0x9fc0);
        assert_eq!(mem.read_obj::<u16>(BDA_BASE_MEMORY_KIB).unwrap(), 639);
    }
}
