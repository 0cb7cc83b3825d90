//! Strata's linuxboot option ROM (`linuxboot.S`, assembled by scripts/build-linuxboot-rom.sh
//! into the committed `linuxboot.bin`): with SeaBIOS, the BEV that boots a bzImage from
//! fw_cfg's legacy items, as QEMU's linuxboot_dma.bin does.

/// The fw_cfg file SeaBIOS runs it from.
pub const LINUXBOOT_FILE: &str = "genroms/strata-linuxboot.bin";
/// The `bootorder` line that makes it the first boot entry.
pub const LINUXBOOT_BOOTORDER: &str = "/rom@genroms/strata-linuxboot.bin\n";

const LINUXBOOT: &[u8; 512] = include_bytes!("linuxboot.bin");
/// Offset of the PnP header (the ROM header's word at 0x1a).
const PNP: usize = 0x20;
/// The PnP header's length and the offset of its checksum byte.
const PNP_LEN: usize = 32;
const PNP_CHECKSUM: usize = PNP + 9;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// The ROM with its PnP header's and its own checksums filled in (each sums to 0).
pub fn linuxboot_rom() -> Vec<u8> {
    let mut rom = LINUXBOOT.to_vec();
    rom[PNP_CHECKSUM] = 0;
    rom[PNP_CHECKSUM] = sum(&rom[PNP..PNP + PNP_LEN]).wrapping_neg();
    let last = rom.len() - 1;
    rom[last] = 0;
    rom[last] = sum(&rom).wrapping_neg();
    rom
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_linuxboot_rom_valid_option_rom_with_pnp_bev() {
        let rom = linuxboot_rom();

        assert_eq!(&rom[..3], &[0x55, 0xaa, 1], "signature, one 512-byte block");
        assert_eq!(sum(&rom), 0, "ROM checksum");
        let pnp = usize::from(u16::from_le_bytes([rom[0x1a], rom[0x1b]]));
        assert_eq!(pnp, PNP);
        assert_eq!(&rom[pnp..pnp + 4], b"$PnP");
        assert_eq!(sum(&rom[pnp..pnp + PNP_LEN]), 0, "PnP checksum");
        let bev = usize::from(u16::from_le_bytes([rom[pnp + 0x1a], rom[pnp + 0x1b]]));
        assert!(
            bev > pnp + PNP_LEN && bev < 0x1ff,
            "BEV {bev:#x} inside the ROM"
        );
        assert_eq!(rom[bev], 0xfa, "the BEV starts with cli");
    }
}
