//! Shared helpers for the `strata` binary's integration tests: run the binary in a child
//! process with a hang guard, build small files, check KVM is present.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run that has not finished after this long is killed: a guard against hangs, not a
/// speed assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(240);

/// What a `strata` run produced.
#[derive(Debug)]
pub struct Run {
    /// Standard output (the serial console).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (None if killed by a signal).
    pub status: Option<i32>,
}

impl Run {
    /// Lines of the serial output.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Path of the `strata` binary under test.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// Whether /dev/kvm exists; prints why a test is skipped if not.
pub fn kvm_available() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("skipping: /dev/kvm is absent on this host");
    }
    ok
}

/// Runs `strata` with `args`, standard input closed, killing it after [`HANG_GUARD`].
pub fn strata(args: &[&str]) -> Run {
    run_command(Command::new(strata_bin()).args(args))
}

/// Runs a command with a hang guard, capturing its output.
pub fn run_command(cmd: &mut Command) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        stdout: String::from_utf8_lossy(&out_thread.join().expect("join")).into_owned(),
        stderr: String::from_utf8_lossy(&err_thread.join().expect("join")).into_owned(),
        status: status.code(),
    }
}

/// A file a Debian package provides: a missing one fails the test naming the package (.ci/run
/// installs it), never skips it.
pub fn require(path: &str, package: &str) -> String {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package {package} (.ci/run does)"
    );
    path.to_string()
}

/// A scratch directory unique to this process and test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
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
