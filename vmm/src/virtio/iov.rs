//! Guest buffers as host iovecs, for system calls that read or write guest memory directly
//! (virtio-blk's requests, virtio-net's `writev` to the tap: docs/decisions/0011), and copies
//! between a host buffer and a list of guest segments.
//!
//! An [`IoVecs`] lives only for one system call: it is filled, used and cleared by the
//! worker; the pointers in it point into guest RAM (which outlives the worker) or into a
//! buffer the caller holds for that call.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The most iovecs one `readv`/`writev` takes (Linux's UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// Reusable iovec storage of the worker.
#[derive(Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: the raw pointers are only dereferenced by the kernel during a system call made by
// the thread that owns the `IoVecs`; they are cleared before the next use, never shared.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Empties the list.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The iovecs, for a system call.
    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.0
    }

    /// Adds `len` bytes of guest memory at `addr` after skipping `skip` of them (split where
    /// RAM regions end); false if a byte is not guest RAM or the list would grow past
    /// [`MAX_IOVECS`].
    pub fn push_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        skip: usize,
    ) -> bool {
        if skip >= len {
            return true;
        }
        let Some(addr) = addr.0.checked_add(skip as u64) else {
            return false;
        };
        push_guest_iovecs(mem, GuestAddress(addr), len - skip, &mut self.0, MAX_IOVECS)
    }

    /// Adds a host buffer only read by `writev`; false past [`MAX_IOVECS`]. The list keeps a
    /// raw pointer: the buffer must outlive the system call that uses the list (the unsafe
    /// `Tap::writev` call site says why it does).
    pub fn push_host_ro(&mut self, buf: &[u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        if self.0.len() >= MAX_IOVECS {
            return false;
        }
        self.0.push(libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        });
        true
    }
}

/// Appends to `out` the host iovecs of `len` bytes of guest RAM at `addr`, split where RAM
/// regions end; false if a byte is not guest RAM or `out` would hold more than `max`.
pub fn push_guest_iovecs(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    out: &mut Vec<libc::iovec>,
    max: usize,
) -> bool {
    let mut covered = 0;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let Ok(slice) = slice else {
            return false;
        };
        if out.len() >= max {
            return false;
        }
        covered += slice.len();
        out.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        });
    }
    covered == len
}

/// Guest segments `(address, length)` of one or more chains, in order.
pub type Segments = [(GuestAddress, usize)];

/// Reads the first `out.len()` bytes of the concatenated `segs` into `out`; the bytes read.
pub fn read_from(
    mem: &GuestMemoryMmap,
    segs: &Segments,
    out: &mut [u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for &(addr, len) in segs {
        if done >= out.len() {
            break;
        }
        let n = len.min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], addr)?;
        done += n;
    }
    Ok(done)
}

/// Writes `bytes` across the concatenated `segs`, in order (what does not fit is not
/// written).
pub fn write_to(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    segs: &Segments,
) -> Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut off = 0;
    for &(addr, len) in segs {
        if off >= bytes.len() {
            break;
        }
        let n = len.min(bytes.len() - off);
        mem.write_slice(&bytes[off..off + n], addr)?;
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
        ])
        .unwrap()
    }

    #[test]
    fn test_iovecs_push_guest_across_regions_splits_outside_ram_refused() {
        let m = mem();
        let mut iov = IoVecs::default();

        let across = iov.push_guest(&m, GuestAddress(0xff00), 0x200, 0x10);
        let outside = iov.push_guest(&m, GuestAddress(0x1_ff00), 0x200, 0);

        assert!(across);
        assert_eq!(
            iov.as_slice().len(),
            3,
            "two pieces, then the first of the refused one"
        );
        assert_eq!(iov.as_slice()[0].iov_len, 0xf0);
        assert_eq!(iov.as_slice()[1].iov_len, 0x100);
        assert!(!outside);
    }

    #[test]
    fn test_iovecs_past_max_refused() {
        let m = mem();
        let mut iov = IoVecs::default();
        for i in 0..MAX_IOVECS {
            assert!(iov.push_guest(&m, GuestAddress(i as u64 * 16), 16, 0));
        }

        let pushed = iov.push_host_ro(&[0u8; 4]);

        assert!(!pushed);
        assert_eq!(iov.as_slice().len(), MAX_IOVECS);
    }

    #[test]
    fn test_read_from_spans_segments_stops_at_out_len() {
        let m = mem();
        m.write_slice(&[1, 2, 3, 4], GuestAddress(0x100)).unwrap();
        m.write_slice(&[5, 6, 7, 8], GuestAddress(0x200)).unwrap();
        let segs = [
            (GuestAddress(0x100), 4),
            (GuestAddress(0x200), 4),
            (GuestAddress(0x300), 8),
        ];

        let mut out = [0u8; 6];
        let n = read_from(&m, &segs, &mut out).unwrap();

        assert_eq!(n, 6);
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    }
}
