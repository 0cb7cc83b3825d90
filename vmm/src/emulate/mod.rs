//! Userspace fallback for instructions the host's KVM instruction emulator lacks (PVM hosts).
