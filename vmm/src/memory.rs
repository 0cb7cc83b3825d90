//! Guest RAM: anonymous host memory mapped in as few regions (and so KVM memslots) as possible.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is more than this host has.
    #[error("memory size {requested} MiB is more than this host can give ({available} MiB of RAM and swap)")]
    TooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        available: u64,
    },
    /// mmap failed.
    #[error("unable to allocate {size} MiB of guest memory: {reason}")]
    Allocate {
        /// MiB.
        size: u64,
        /// The cause.
        reason: String,
    },
}

/// Total RAM plus swap of the host, in bytes, from /proc/meminfo (None if unreadable).
fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
}

/// Allocates `size` bytes of guest RAM laid out around the 32-bit MMIO hole; with `thp`, asks
/// for transparent huge pages on it (a hint: hosts with THP off or `never` ignore it).
pub fn create_guest_memory(size: u64, thp: bool) -> Result<GuestMemoryMmap, MemoryError> {
    if let Some(host) = host_memory() {
        if size > host {
            return Err(MemoryError::TooLarge {
                requested: size >> 20,
                available: host >> 20,
            });
        }
    }
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(base, len)| (base, len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate {
        size: size >> 20,
        reason: e.to_string(),
    })?;
    if thp {
        for region in mem.iter() {
            // SAFETY: the range is exactly one of our own anonymous mappings (the region's
            // host address and length); MADV_HUGEPAGE only changes how the kernel backs it,
            // never its contents or its validity.
            let _ = unsafe {
                libc::madvise(
                    region.as_ptr().cast(),
                    region.len() as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    dont_fork(&mem);
    Ok(mem)
}

/// Marks guest RAM `MADV_DONTFORK`: a fork (the KVM reaper, `kvm/reaper.rs`) then copies no
/// guest page tables, and the RAM is freed when the VMM exits. QEMU does the same with its RAM.
/// Advice the kernel refuses changes nothing but the fork's cost, so it is not an error.
pub(crate) fn dont_fork(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        // SAFETY: the range is exactly one of `mem`'s own mappings; MADV_DONTFORK changes
        // only what a fork inherits, never the mapping's contents in this process.
        unsafe {
            libc::madvise(
                region.as_ptr().cast::<libc::c_void>(),
                region.len() as usize,
                libc::MADV_DONTFORK,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_create_guest_memory_small_is_one_region() {
        let m = create_guest_memory(16 << 20, true).unwrap();
        assert_eq!(m.num_regions(), 1);
    }

    #[test]
    fn test_create_guest_memory_beyond_host_refused() {
        let e = create_guest_memory(1 << 50, false).unwrap_err();
        assert!(
            e.to_string().contains("more than this host can give"),
            "{e}"
        );
    }
}
