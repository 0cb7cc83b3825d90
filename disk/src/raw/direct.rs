//! O_DIRECT for raw images: the host's alignment rules, aligned bounce buffers, and the
//! bounce paths for requests that do not meet the rules.
//!
//! A request goes straight to the caller's buffers when its offset and every buffer's length
//! are multiples of the offset alignment and every buffer's address is a multiple of the memory
//! alignment. Otherwise it is copied through an aligned bounce buffer; a write that does not
//! cover whole host blocks reads the partial blocks first (read-modify-write), which is only
//! safe if nothing else writes those blocks at the same time; that is why
//! [`crate::Capabilities::logical_block_size`] is the offset alignment under O_DIRECT.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};

use rustix::fs::{AtFlags, StatxFlags};

use super::RawDisk;
use crate::iov::{scatter, Segs, SegsMut};
use crate::Result;

/// Alignment assumed when the host does not say (the largest logical block size in common use).
pub(crate) const DEFAULT_ALIGN: u32 = 4096;

/// Largest chunk a single bounce-buffered transfer handles.
const DIRECT_CHUNK: u64 = 1 << 20;

/// The host's O_DIRECT alignment rules for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectAlign {
    /// Buffer address alignment.
    pub mem: u32,
    /// File offset and length alignment.
    pub offset: u32,
}

impl DirectAlign {
    /// Asks the kernel (`statx` `STATX_DIOALIGN`, Linux 6.1; `BLKSSZGET` for block devices);
    /// falls back to 4096 for both.
    pub(crate) fn probe(file: &File) -> DirectAlign {
        let fallback = DirectAlign {
            mem: DEFAULT_ALIGN,
            offset: DEFAULT_ALIGN,
        };
        if let Ok(st) = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
            let have = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN);
            let (mem, offset) = (st.stx_dio_mem_align, st.stx_dio_offset_align);
            if have && valid_align(mem) && valid_align(offset) {
                return DirectAlign { mem, offset };
            }
        }
        let is_bdev = file
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device());
        if is_bdev {
            if let Ok(lbs) = rustix::fs::ioctl_blksszget(file) {
                if valid_align(lbs) {
                    return DirectAlign {
                        mem: lbs,
                        offset: lbs,
                    };
                }
            }
        }
        fallback
    }

    /// Whether a request can go to the host without a bounce buffer.
    pub(crate) fn fits(
        &self,
        lens_addrs: impl Iterator<Item = (usize, usize)>,
        offset: u64,
    ) -> bool {
        let (m, o) = (self.mem as usize, self.offset as usize);
        offset.is_multiple_of(u64::from(self.offset))
            && lens_addrs
                .into_iter()
                .all(|(len, addr)| len % o == 0 && addr % m == 0)
    }

    /// Largest of the two alignments, used for bounce buffers.
    pub(crate) fn bounce(&self) -> u64 {
        u64::from(self.mem.max(self.offset)).max(u64::from(DEFAULT_ALIGN))
    }
}

fn valid_align(a: u32) -> bool {
    a.is_power_of_two() && a <= 1 << 16
}

/// A heap buffer whose start is aligned, found by offsetting into a larger Vec.
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes starting at a multiple of `align` (a power of two).
    pub(crate) fn new(len: usize, align: usize) -> AlignedBuf {
        let storage = vec![0u8; len + align];
        let addr = storage.as_ptr() as usize;
        let start = (align - addr % align) % align;
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl RawDisk {
    fn bounce_align(&self) -> u64 {
        self.direct.map_or(u64::from(DEFAULT_ALIGN), |a| a.bounce())
    }

    fn block_align(&self) -> u64 {
        self.direct
            .map_or(u64::from(DEFAULT_ALIGN), |a| u64::from(a.offset))
    }

    /// Reads an aligned span into a bounce buffer, zero-filling past the end of the file.
    fn read_aligned(&self, buf: &mut AlignedBuf, offset: u64) -> Result<()> {
        let slice = buf.as_mut_slice();
        let mut done = 0usize;
        while done < slice.len() {
            let n = self
                .file
                .read_at(&mut slice[done..], offset + done as u64)
                .map_err(|e| self.err_io(e, "read", offset))?;
            if n == 0 {
                slice[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `segs.len()` bytes at `offset` through bounce buffers.
    pub(super) fn read_bounced(&self, mut segs: SegsMut<'_>, offset: u64) -> Result<()> {
        let (align, block) = (self.bounce_align(), self.block_align());
        let total = segs.len() as u64;
        let mut done = 0u64;
        while done < total {
            let pos = offset + done;
            let start = pos / block * block;
            let want = (total - done).min(DIRECT_CHUNK);
            let end = (pos + want).div_ceil(block) * block;
            let mut bounce = AlignedBuf::new((end - start) as usize, align as usize);
            self.read_aligned(&mut bounce, start)?;
            let skip = (pos - start) as usize;
            let mut piece = segs.take(want as usize);
            scatter(&mut piece, &bounce.as_slice()[skip..skip + want as usize]);
            done += want;
        }
        Ok(())
    }

    /// Writes `segs.len()` bytes at `offset` through bounce buffers, reading partial host
    /// blocks first.
    pub(super) fn write_bounced(&self, mut segs: Segs<'_>, offset: u64) -> Result<()> {
        let (align, block) = (self.bounce_align(), self.block_align());
        let total = segs.len() as u64;
        let mut done = 0u64;
        while done < total {
            let pos = offset + done;
            let start = pos / block * block;
            let want = (total - done).min(DIRECT_CHUNK);
            let end = (pos + want).div_ceil(block) * block;
            let mut bounce = AlignedBuf::new((end - start) as usize, align as usize);
            if start != pos || end != pos + want {
                self.read_aligned(&mut bounce, start)?;
            }
            let mut at = (pos - start) as usize;
            for s in segs.take(want as usize) {
                bounce.as_mut_slice()[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            self.file
                .write_all_at(bounce.as_slice(), start)
                .map_err(|e| self.err_io(e, "write", start))?;
            done += want;
        }
        // An aligned tail write may have extended the file past the virtual size.
        let size = self.size();
        if (offset + total).div_ceil(block) * block > size {
            self.file
                .set_len(size)
                .map_err(|e| self.err_io(e, "truncate", size))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_aligned_buf_any_length_start_is_aligned() {
        let mut b = AlignedBuf::new(3 * 4096, 4096);
        let addr = b.as_mut_slice().as_ptr() as usize;
        assert_eq!(addr % 4096, 0);
        assert_eq!(b.as_slice().len(), 3 * 4096);
    }

    #[test]
    fn test_direct_align_fits_misaligned_length_or_address_refused() {
        let a = DirectAlign {
            mem: 512,
            offset: 4096,
        };

        let ok = a.fits([(4096, 512), (8192, 1024)].into_iter(), 8192);
        let bad_len = a.fits([(512, 4096)].into_iter(), 0);
        let bad_addr = a.fits([(4096, 100)].into_iter(), 0);
        let bad_off = a.fits([(4096, 4096)].into_iter(), 512);

        assert!(ok);
        assert!(!bad_len && !bad_addr && !bad_off);
    }
}
