//! Shared helpers for the `strata` binary's integration tests: run the binary in a child
//! process (through `testkit`), build small files.
#![allow(dead_code)]

use std::process::Command;

pub mod api;

#[allow(unused_imports)]
pub use testkit::{
    host_is_pvm, kvm_available, require, run_command, run_until, scratch, Run, HANG_GUARD,
};

/// Path of the `strata` binary under test.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// Runs `strata` with `args`, standard input closed, killing it after [`HANG_GUARD`].
pub fn strata(args: &[&str]) -> Run {
    run_command(Command::new(strata_bin()).args(args))
}

/// Runs `strata` with `args` until its serial output contains every one of `markers` (a
/// guest-side event), then stops it with SIGTERM (exit status 143, registers reported).
pub fn strata_until(args: &[&str], markers: &[&str]) -> Run {
    run_until(Command::new(strata_bin()).args(args), markers)
}

/// The `vmlinux` scripts/build-linux.sh built for `variant` (`virtio`, `int3-patch`, ...) in
/// the build cache (`$STRATA_CACHE`, by default `~/.cache/strata`); panics naming the command
/// that builds it when it is missing.
pub fn linux_vmlinux(variant: &str) -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("STRATA_CACHE").unwrap_or(format!("{home}/.cache/strata"));
    let vmlinux = std::path::Path::new(&cache)
        .join(format!("linux-6.1-{variant}"))
        .join("vmlinux");
    assert!(
        vmlinux.is_file(),
        "{} is missing: run scripts/build-linux.sh --{variant}",
        vmlinux.display()
    );
    vmlinux
}

/// IEEE CRC-32 (zlib), the checksum the test guests print.
#[allow(unused_imports)]
pub use test_guests::crc32;

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A minimal ELF64 executable with one PT_LOAD segment of `code` at `paddr`.
pub fn elf64(paddr: u64, code: &[u8]) -> Vec<u8> {
    let data_off = 64 + 56;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&paddr.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&(data_off as u64).to_le_bytes());
    e.extend_from_slice(&paddr.to_le_bytes());
    e.extend_from_slice(&paddr.to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}
