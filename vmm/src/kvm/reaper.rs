//! Ending a VM off the critical path (docs/decisions/0014).
//!
//! The kernel destroys a KVM VM when the last file descriptor on it is closed, in the process
//! that closes it. With the in-kernel irqchip and PIT that destruction waits for SRCU grace
//! periods (`kvm_free_pit` -> `kvm_pit_set_reinject`, and the grace period the irqchip's GSI
//! routing set-up leaves in flight): 15-25 ms measured here, nearly all of it asleep. A VMM
//! that closes its VM and then exits makes its caller wait that long for the exit.
//!
//! [`release`] forks a short-lived child (the reaper) that inherits the process's KVM file
//! descriptors and closes everything else at once (so no pipe, socket or disk image stays open
//! on its account). It then waits on a pipe, the gate, until the VMM has closed its own KVM
//! descriptors (cheaply, as they are no longer the last ones) and dropped the [`Reaper`], and
//! only then closes the KVM descriptors, paying for the destruction itself. A VMM that exits
//! closes the gate by exiting. Guest RAM is mapped `MADV_DONTFORK` (`memory.rs`), so the fork
//! copies no guest page tables and the RAM is freed when the VMM exits, not when the reaper does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The prefix /proc/self/fd shows for KVM's anonymous-inode files (`kvm-vm`, `kvm-vcpu:N`, and
/// their stats files).
const KVM_FD_PREFIX: &str = "anon_inode:kvm-";

/// This process's KVM file descriptors, ascending.
fn kvm_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<RawFd> = dir
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with(KVM_FD_PREFIX))
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// Closes descriptors `first..=last` (close_range(2)); a range the kernel refuses is ignored.
fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes descriptors; it is async-signal-safe (a raw system call),
    // which matters in the forked child.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
}

/// The reaper's body (in the forked child: raw system calls only, no allocation, no locks):
/// closes every descriptor but `spare` (sorted: the KVM ones and the gate's read end), waits
/// until the gate's write end is closed everywhere, then closes the KVM descriptors `keep`.
fn reap(spare: &[RawFd], keep: &[RawFd], gate: RawFd) -> ! {
    let mut next: u32 = 0;
    for &fd in spare {
        let fd = fd as u32;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX);
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`, a valid buffer on this stack.
        let n = unsafe { libc::read(gate, (&mut byte as *mut u8).cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    for &fd in keep {
        // SAFETY: `fd` is one of this process's descriptors (inherited at fork); closing it
        // is the reaper's whole job.
        unsafe { libc::close(fd) };
    }
    // SAFETY: _exit ends the child without running the parent's atexit handlers or
    // destructors, as a forked child of a multithreaded process must.
    unsafe { libc::_exit(0) }
}

/// Forks a reaper that keeps `keep` and the gate's read end `gate` and closes everything else;
/// its pid, or None when fork failed.
fn spawn(keep: &[RawFd], gate: RawFd) -> Option<libc::pid_t> {
    let mut spare = keep.to_vec();
    spare.push(gate);
    spare.sort_unstable();
    // SAFETY: the child runs only `reap`, which makes raw system calls on memory that the fork
    // copied and never returns; the parent continues as after any fork.
    match unsafe { libc::fork() } {
        0 => reap(&spare, keep, gate),
        p if p < 0 => None,
        pid => Some(pid),
    }
}

/// The VMM's side of a reaper: while it lives, the reaper waits; dropping it (after the VM's
/// descriptors are closed) lets the reaper destroy the VM.
#[derive(Debug, Default)]
pub struct Reaper {
    /// The gate's write end: held, never written; closing it is the signal.
    _gate: Option<OwnedFd>,
}

/// Hands the final close of this process's KVM descriptors to a reaper process, so that the
/// VM's destruction no longer delays the caller. Call it before the VM's descriptors are closed
/// and drop the returned [`Reaper`] after. Where there is nothing to hand over or a pipe or
/// fork fails, the Reaper is empty and the closes pay for the destruction themselves, as
/// without a reaper.
pub fn release() -> Reaper {
    let keep = kvm_fds();
    if keep.is_empty() {
        return Reaper::default();
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, a valid array of two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Reaper::default();
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let Some(pid) = spawn(&keep, read.as_raw_fd()) else {
        return Reaper::default();
    };
    drop(read);
    // The reaper is this process's child: something must wait for it, or it stays a zombie
    // for as long as the VMM runs (an API server runs many VMs in turn). A thread blocked in
    // waitpid costs nothing and dies with the process; without one, the child is reaped when
    // this process exits.
    let _ = std::thread::Builder::new()
        .name("kvm-reaper-wait".into())
        .spawn(move || {
            let mut status = 0;
            // SAFETY: waits for our own child `pid`; `status` is a valid out pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        });
    Reaper { _gate: Some(write) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn test_kvm_fds_plain_file_not_listed() {
        let file = std::fs::File::open("/proc/self/status").unwrap();

        let fds = kvm_fds();

        assert!(!fds.contains(&file.as_raw_fd()));
    }

    #[test]
    fn test_kvm_fds_vm_fd_listed() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("test_kvm_fds_vm_fd_listed: skipped, /dev/kvm is absent");
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "/dev/kvm is absent and CI=true"
            );
            return;
        }
        let vm = kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap();

        let fds = kvm_fds();

        assert!(
            fds.contains(&vm.as_raw_fd()),
            "{fds:?} lacks {}",
            vm.as_raw_fd()
        );
    }

    fn waitpid_nohang(pid: libc::pid_t) -> Option<i32> {
        let mut status = -1;
        // SAFETY: a non-blocking wait for our own child; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        (waited == pid).then_some(status)
    }

    #[test]
    fn test_spawn_reaper_waits_for_gate_then_exits_cleanly() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned here alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

        let pid = spawn(&[file.as_raw_fd()], read.as_raw_fd()).unwrap();
        drop(read);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before_gate = waitpid_nohang(pid);
        drop(write);
        let mut status = -1;
        // SAFETY: waits for the child just forked; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };

        assert_eq!(before_gate, None, "the reaper ended before its gate closed");
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
