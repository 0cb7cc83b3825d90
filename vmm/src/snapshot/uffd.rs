//! Lazy restore through userfaultfd: guest memory is anonymous, registered for missing-page
//! faults, and a thread (`uffd-memory`) fills each page the guest, KVM or a device touches
//! first from the memory file (UFFDIO_COPY), or with zeros where the file has nothing
//! (UFFDIO_ZEROPAGE). The VMM reads the file itself, so the file could as well come from
//! elsewhere; the handler ends when the VM does.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

use super::format::MemoryState;
use super::memory::region;
use super::SnapshotError;

const PAGE: u64 = 4096;
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` (32 bytes, packed): event, then for a page fault flags and address.
const MSG_LEN: usize = 32;

/// One registered region: host address range and where it starts in the file.
#[derive(Clone, Copy)]
struct Span {
    host: u64,
    len: u64,
    file_offset: u64,
}

/// The running fault handler; stopped and joined when dropped.
pub struct UffdHandler {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for UffdHandler {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the `#[repr(C)]` structure `request` takes, valid and writable for the
    // call; the kernel reads and writes only within it.
    let rc = unsafe { libc::ioctl(fd, request, arg as *mut T) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn userfaultfd() -> std::io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes flags only and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Anonymous guest memory laid out as `state` says, registered with a new userfaultfd whose
/// faults a `uffd-memory` thread serves from `file`.
pub fn restore(
    file: File,
    state: &MemoryState,
) -> Result<(GuestMemoryMmap, UffdHandler), SnapshotError> {
    let err = SnapshotError::Userfaultfd;
    let uffd = userfaultfd().map_err(err)?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api).map_err(err)?;
    let mut regions = Vec::new();
    for r in &state.regions {
        let mapping: MmapRegion = MmapRegionBuilder::new(r.size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::MapMemory(std::io::Error::other(e.to_string())))?;
        regions.push(region(mapping, r.guest_addr)?);
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::MapMemory(std::io::Error::other(e.to_string())))?;
    let mut spans = Vec::new();
    for (r, saved) in mem.iter().zip(&state.regions) {
        let span = Span {
            host: r.as_ptr() as u64,
            len: r.len(),
            file_offset: saved.file_offset,
        };
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: span.host,
                len: span.len,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg).map_err(err)?;
        spans.push(span);
    }
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
    let stop_thread = stop.try_clone().map_err(err)?;
    let thread = std::thread::Builder::new()
        .name("uffd-memory".into())
        .spawn(move || serve(&uffd, &stop_thread, &file, &spans))
        .map_err(err)?;
    Ok((
        mem,
        UffdHandler {
            stop,
            thread: Some(thread),
        },
    ))
}

/// The handler thread: waits for faults (or the stop eventfd) and fills each page.
fn serve(uffd: &OwnedFd, stop: &EventFd, file: &File, spans: &[Span]) {
    let mut page = vec![0u8; PAGE as usize];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let mut msg = [0u8; MSG_LEN];
        // SAFETY: `msg` is MSG_LEN writable bytes; the kernel writes at most that many.
        let n = unsafe { libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_LEN) };
        if n != MSG_LEN as isize || msg[0] != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&msg[16..24]);
        let addr = u64::from_le_bytes(addr) & !(PAGE - 1);
        if let Some(span) = spans
            .iter()
            .find(|s| addr >= s.host && addr < s.host + s.len)
        {
            fill(uffd.as_raw_fd(), file, span, addr, &mut page);
        }
    }
}

/// Fills the page at host address `addr` from the file (zeros where the file has none).
fn fill(uffd: RawFd, file: &File, span: &Span, addr: u64, page: &mut [u8]) {
    let offset = span.file_offset + (addr - span.host);
    page.fill(0);
    let _ = file.read_at(page, offset);
    let result = if page.iter().all(|&b| b == 0) {
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: addr,
                len: PAGE,
            },
            ..Default::default()
        };
        ioctl(uffd, UFFDIO_ZEROPAGE, &mut z)
    } else {
        let mut c = UffdioCopy {
            dst: addr,
            src: page.as_ptr() as u64,
            len: PAGE,
            ..Default::default()
        };
        ioctl(uffd, UFFDIO_COPY, &mut c)
    };
    // EEXIST: another fault on the same page was served first; nothing else can be done
    // for the faulting thread, which retries the access and faults again if need be.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn test_uffd_restore_fills_pages_from_file_on_touch() {
        let dir = std::env::temp_dir().join(format!("strata-uffd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(b"lazy", GuestAddress(0x2000)).unwrap();
        let (state, _) = super::super::memory::save(&mem, &dir, false).unwrap();
        let file = super::super::memory::open(&dir, &state).unwrap();

        let (back, handler) = match restore(file, &state) {
            Ok(r) => r,
            // userfaultfd for kernel faults needs privilege (or vm.unprivileged_userfaultfd);
            // unit tests run unprivileged too. CI runs as root and must not skip.
            Err(SnapshotError::Userfaultfd(e))
                if e.raw_os_error() == Some(libc::EPERM)
                    && std::env::var("CI").as_deref() != Ok("true") =>
            {
                eprintln!("skipped: userfaultfd needs privilege here ({e})");
                return;
            }
            Err(e) => panic!("userfaultfd restore failed: {e}"),
        };
        let mut buf = [0u8; 4];
        back.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        let mut zero = [1u8; 4];
        back.read_slice(&mut zero, GuestAddress(0x30_0000)).unwrap();
        drop(handler);

        assert_eq!(&buf, b"lazy");
        assert_eq!(zero, [0; 4]);
    }
}
