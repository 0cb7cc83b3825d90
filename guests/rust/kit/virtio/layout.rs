//! Where the three parts of a split virtqueue of `size` entries lie in
//! its memory. The legacy interfaces (virtio-pci 0.9.5, virtio-mmio v1)
//! fix this layout: descriptors, then the available ring, then the used
//! ring at the next 4096-byte boundary; the modern ones accept it too.
//! Pure code, unit-tested on the host.

/// Alignment of the used ring in the legacy layout (and of the memory).
pub const ALIGN: usize = 4096;
/// Bytes per descriptor.
pub const DESC_SIZE: usize = 16;

/// Byte offsets of a split virtqueue's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Entries (a power of two for a well-behaved driver).
    pub size: u16,
    /// Offset of the available ring (flags, idx, ring[size], used_event).
    pub avail: usize,
    /// Offset of the used ring (flags, idx, ring[size] of (id, len), avail_event).
    pub used: usize,
    /// Total bytes.
    pub total: usize,
}

const fn align_up(x: usize) -> usize {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

impl Layout {
    /// The legacy layout for `size` entries (descriptors at offset 0).
    pub const fn new(size: u16) -> Self {
        let n = size as usize;
        let avail = DESC_SIZE * n;
        let used = align_up(avail + 6 + 2 * n);
        Self {
            size,
            avail,
            used,
            total: used + align_up(6 + 8 * n),
        }
    }

    /// Offset of available-ring slot `i` (mod size).
    pub const fn avail_slot(&self, i: u16) -> usize {
        self.avail + 4 + 2 * (i % self.size) as usize
    }

    /// Offset of used-ring element `i` (mod size).
    pub const fn used_elem(&self, i: u16) -> usize {
        self.used + 4 + 8 * (i % self.size) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_256_matches_the_legacy_formula() {
        // Arrange / Act: the spec's vring_size(256, 4096).
        let l = Layout::new(256);

        // Assert
        assert_eq!(l.avail, 4096);
        assert_eq!(l.used, 8192);
        assert_eq!(l.total, 8192 + 4096);
        assert_eq!(l.avail_slot(257), 4096 + 4 + 2);
        assert_eq!(l.used_elem(3), 8192 + 4 + 24);
    }

    #[test]
    fn test_layout_small_queue_fits_in_two_pages() {
        let l = Layout::new(8);
        assert_eq!((l.avail, l.used, l.total), (128, 4096, 8192));
    }
}
