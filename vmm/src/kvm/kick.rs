//! Kicking a vCPU thread out of KVM_RUN: one real-time signal whose handler sets the thread's
//! own `kvm_run.immediate_exit` (Firecracker's design).
//!
//! Each vCPU thread publishes a pointer to its `kvm_run` structure in a thread-local while it
//! runs. The handler, running on the signalled thread, sets `immediate_exit` there. A signal
//! that lands while the thread is inside KVM_RUN makes it return `EINTR`; one that lands just
//! before (between the thread's last look at its commands and the ioctl) leaves
//! `immediate_exit` set, so the next KVM_RUN returns `EINTR` at once without entering the
//! guest. Either way one signal is enough: there is no signal loop.
//!
//! KVM_RUN with `immediate_exit` set still completes the port I/O or MMIO instruction whose
//! exit the thread just handled, which is what pausing relies on.

use std::cell::Cell;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    set_immediate_exit(1);
}

/// Installs the kick handler for the process (once; later calls return the first result).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static RESULT: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    *RESULT.get_or_init(|| register_signal_handler(kick_signal(), kick_handler))
}

/// Sets `immediate_exit` of this thread's vCPU (nothing if the thread runs none). Safe to
/// call from the kick handler: it only reads a thread-local and writes one byte.
pub(super) fn set_immediate_exit(value: u8) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was published by `KickBinding::bind` for this thread's vCPU,
        // whose `kvm_run` mapping outlives the binding (the binding is dropped before the
        // vCPU's fd); `immediate_exit` is a plain byte that KVM reads on entry.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(value) };
    }
}

/// While alive, kicks sent to this thread reach `fd`'s `kvm_run`.
pub(super) struct KickBinding {
    _not_send: std::marker::PhantomData<*mut kvm_run>,
}

impl KickBinding {
    /// Publishes `fd`'s `kvm_run` for this thread. Drop the binding before `fd`.
    pub(super) fn bind(fd: &mut VcpuFd) -> KickBinding {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        KickBinding {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for KickBinding {
    fn drop(&mut self) {
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_set_immediate_exit_without_binding_is_ignored() {
        set_immediate_exit(1);

        assert!(KVM_RUN.with(Cell::get).is_null());
    }

    #[test]
    fn test_install_kick_handler_twice_succeeds() {
        assert!(install_kick_handler().is_ok());
        assert!(install_kick_handler().is_ok());
    }
}
