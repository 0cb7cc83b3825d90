//! The disk pattern the blk guest writes and the host recreates to check
//! it: every 512-byte sector is a function of (seed, sector number).
//! Pure code, shared with the host crate (`test_guests::pattern`).

/// Bytes in a virtio-blk sector.
pub const SECTOR: usize = 512;

/// Fills `buf` with sector `lba` of the pattern for `seed`: `strata-p`,
/// the seed and the sector number's low 32 bits (little-endian), then an
/// xorshift64 stream seeded by both.
pub fn fill_sector(seed: u32, lba: u64, buf: &mut [u8; SECTOR]) {
    buf[..8].copy_from_slice(b"strata-p");
    buf[8..12].copy_from_slice(&seed.to_le_bytes());
    buf[12..16].copy_from_slice(&(lba as u32).to_le_bytes());
    let mut x = (u64::from(seed) << 32 | 0x5eed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ lba.wrapping_mul(0xd1b5_4a32_d192_ed03);
    x |= 1;
    for chunk in buf[16..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fill_sector_differs_by_seed_and_lba() {
        // Arrange
        let (mut a, mut b, mut c) = ([0; SECTOR], [0; SECTOR], [0; SECTOR]);

        // Act
        fill_sector(1, 0, &mut a);
        fill_sector(1, 1, &mut b);
        fill_sector(2, 0, &mut c);

        // Assert
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(&a[..8], b"strata-p");
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
    }
}
