//! Guest memory in a snapshot: written to one sparse file (only pages that are resident and
//! not all zero; the rest stays a hole), and brought back either mapped MAP_PRIVATE from that
//! file (copy on write, each page read on first touch) or through userfaultfd
//! (`uffd.rs`: anonymous memory the VMM fills from the file page by page as the guest touches
//! it).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_memory::{GuestRegionMmap, MmapRegion};

use super::format::{MemoryRegion, MemoryState, MEMORY_FILE};
use super::SnapshotError;

const PAGE: usize = 4096;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Which pages of `[ptr, ptr + len)` are resident (mincore); all of them if it fails.
fn resident(ptr: *mut u8, len: usize) -> Vec<bool> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: `ptr` is the page-aligned start of a mapping of at least `len` bytes that the
    // caller keeps alive; `vec` has one byte per page of that range, as mincore writes.
    let rc = unsafe { libc::mincore(ptr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return vec![true; pages];
    }
    vec.iter().map(|b| b & 1 != 0).collect()
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: reinterpreting initialized bytes as u64 words is sound for any bit pattern;
        // `align_to` only hands out the aligned middle part as words.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Writes `mem` to `dir/memory`: the file is as large as guest RAM, and only pages that hold
/// something are written. `scan_all`: look at every page, not only resident ones (memory
/// mapped from a file or filled through userfaultfd has pages that are data but not
/// resident). Returns the layout and how many bytes were written.
///
/// The caller guarantees nothing writes guest memory meanwhile (vCPUs paused, device workers
/// quiesced).
pub fn save(
    mem: &GuestMemoryMmap,
    dir: &Path,
    scan_all: bool,
) -> Result<(MemoryState, u64), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::create(&path).map_err(io_err("create the memory file", &path))?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let ptr = region.as_ptr();
        // SAFETY: the region's host mapping is `len` bytes at `ptr`, alive as long as `mem`;
        // the caller guarantees no vCPU or device writes it while this slice is read.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        let present = if scan_all {
            vec![true; len.div_ceil(PAGE)]
        } else {
            resident(ptr, len)
        };
        let mut run: Option<usize> = None;
        for (i, &p) in present.iter().chain(std::iter::once(&false)).enumerate() {
            let start = i * PAGE;
            let data = p && !is_zero(&bytes[start..(start + PAGE).min(len)]);
            match (data, run) {
                (true, None) => run = Some(start),
                (false, Some(from)) => {
                    let to = start.min(len);
                    file.write_all_at(&bytes[from..to], offset + from as u64)
                        .map_err(io_err("write the memory file", &path))?;
                    written += (to - from) as u64;
                    run = None;
                }
                _ => {}
            }
        }
        regions.push(MemoryRegion {
            guest_addr: region.start_addr().0,
            size: len as u64,
            file_offset: offset,
        });
        offset += len as u64;
    }
    file.set_len(offset)
        .map_err(io_err("size the memory file", &path))?;
    file.sync_all()
        .map_err(io_err("sync the memory file", &path))?;
    Ok((
        MemoryState {
            file: MEMORY_FILE.to_string(),
            size: offset,
            regions,
        },
        written,
    ))
}

/// Opens the memory file and checks its size against the state's.
pub fn open(dir: &Path, state: &MemoryState) -> Result<File, SnapshotError> {
    let path = dir.join(&state.file);
    let file = File::open(&path).map_err(io_err("open the memory file", &path))?;
    let len = file
        .metadata()
        .map_err(io_err("read the size of the memory file", &path))?
        .len();
    if len != state.size {
        return Err(SnapshotError::MemorySize {
            path,
            found: len,
            want: state.size,
        });
    }
    Ok(file)
}

/// Guest memory mapped MAP_PRIVATE from the memory file: nothing is read until the guest (or
/// KVM, or a device) touches a page; writes stay in this process.
pub fn map_private(file: &File, state: &MemoryState) -> Result<GuestMemoryMmap, SnapshotError> {
    let mut regions = Vec::with_capacity(state.regions.len());
    for r in &state.regions {
        let fo = FileOffset::new(
            file.try_clone().map_err(SnapshotError::MapMemory)?,
            r.file_offset,
        );
        let mapping: MmapRegion = MmapRegionBuilder::new(r.size as usize)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::MapMemory(std::io::Error::other(e.to_string())))?;
        regions.push(region(mapping, r.guest_addr)?);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::MapMemory(std::io::Error::other(e.to_string())))
}

/// One guest region over `mapping`.
pub(super) fn region(mapping: MmapRegion, guest: u64) -> Result<GuestRegionMmap, SnapshotError> {
    GuestRegionMmap::new(mapping, GuestAddress(guest)).ok_or_else(|| {
        SnapshotError::MapMemory(std::io::Error::other(format!(
            "region at {guest:#x} overflows"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("strata-snapmem-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn test_memory_save_is_sparse_and_maps_back_private() {
        let dir = scratch("roundtrip");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"world", GuestAddress(0x70_0000)).unwrap();

        let (state, written) = save(&mem, &dir, false).unwrap();
        let file = open(&dir, &state).unwrap();
        let back = map_private(&file, &state).unwrap();
        back.write_slice(b"HELLO", GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 5];

        assert_eq!(state.size, 8 << 20);
        assert_eq!(written, 2 * PAGE as u64);
        back.read_slice(&mut buf, GuestAddress(0x70_0000)).unwrap();
        assert_eq!(&buf, b"world");
        back.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"HELLO");
        // MAP_PRIVATE: the file keeps what the snapshot wrote.
        let mut on_disk = [0u8; 5];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(&on_disk, b"hello");
        let blocks = std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap());
        assert!(blocks * 512 < 1 << 20, "not sparse: {blocks} blocks");
    }

    #[test]
    fn test_memory_open_wrong_size_refused() {
        let dir = scratch("size");
        std::fs::write(dir.join(MEMORY_FILE), [0u8; 4096]).unwrap();
        let state = MemoryState {
            file: MEMORY_FILE.into(),
            size: 8192,
            regions: vec![],
        };

        let e = open(&dir, &state).unwrap_err().to_string();

        assert!(e.contains("4096 bytes") && e.contains("8192"), "{e}");
    }
}
