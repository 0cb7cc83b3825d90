//! Helpers shared by the QEMU boot tests: running QEMU, making modules,
//! matching the guests' output.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A guest that has not finished after this long is killed (hang guard,
/// not a speed assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// Whether /dev/kvm exists (saying why a test skips when not; failing under `CI=true`).
#[allow(unused_imports)]
pub use testkit::kvm_available;

/// IEEE CRC-32 (zlib), the checksum the guests print.
pub use test_guests::crc32;

/// A scratch directory for the files of one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-guests-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes a deterministic module of `len` bytes; returns its path and CRC.
pub fn make_module(dir: &Path, name: &str, len: usize, seed: u32) -> (PathBuf, u32) {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("write module");
    (path, crc32(&data))
}

/// What a QEMU run produced.
pub struct Run {
    /// The serial output.
    pub out: String,
    /// QEMU's exit status ((guest code << 1) | 1 for isa-debug-exit).
    pub status: Option<i32>,
}

/// Runs QEMU with KVM, the common options plus `args`, serial on stdout.
pub fn qemu(args: &[&str]) -> Run {
    qemu_accel("kvm", args)
}

/// Runs QEMU with accelerator `accel` ("kvm" or "tcg"), the common options
/// plus `args`, serial on stdout.
pub fn qemu_accel(accel: &str, args: &[&str]) -> Run {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-cpu", "qemu64", "-m", "128"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-no-reboot",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run qemu-system-x86_64 (is it installed?)");
    let mut stdout = child.stdout.take().expect("qemu stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for qemu") {
            break s;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            break child.wait().expect("wait for killed qemu");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().expect("serial reader");
    Run {
        out: String::from_utf8_lossy(&out).into_owned(),
        status: status.code(),
    }
}

/// Glob match: `?` matches one character, `*` any run of characters.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

pub fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses "mem: 0x<16 hex> 0x<16 hex> <dec>" into (base, length, type).
pub fn parse_mem(line: &str) -> Option<(u64, u64, u32)> {
    let rest = line.strip_prefix("mem: 0x")?;
    let (base, rest) = rest.split_once(" 0x")?;
    let (len, ty) = rest.split_once(' ')?;
    if !is_hex(base, 16)
        || !is_hex(len, 16)
        || ty.is_empty()
        || !ty.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((
        u64::from_str_radix(base, 16).ok()?,
        u64::from_str_radix(len, 16).ok()?,
        ty.parse().ok()?,
    ))
}

/// Checks `out`, from the guest's first line on, against `expected` line
/// by line. An expected line
/// "mem: *" stands for one or more well-formed memory-map lines of which
/// one must be usable RAM (type 1) covering 0x100000; other expected lines
/// are globs (see [`glob`]).
pub fn check_output(out: &str, expected: &[String]) {
    // Firmware and boot loaders may write to COM1 before the guest does.
    let start = out.find("strata-test-guest ").unwrap_or(0);
    let out = &out[start..];
    let lines: Vec<&str> = out.lines().collect();
    let mut i = 0;
    for exp in expected {
        if exp == "mem: *" {
            let mems: Vec<&str> = lines[i..]
                .iter()
                .take_while(|l| l.starts_with("mem: "))
                .copied()
                .collect();
            assert!(!mems.is_empty(), "no mem lines at line {i} of:\n{out}");
            let parsed: Vec<_> = mems.iter().map(|l| parse_mem(l)).collect();
            assert!(
                parsed.iter().all(Option::is_some),
                "malformed mem line in:\n{out}"
            );
            assert!(
                parsed
                    .iter()
                    .flatten()
                    .any(|&(b, l, t)| t == 1 && b <= 0x10_0000 && b + l > 0x10_0000),
                "no RAM at 1 MiB in:\n{out}"
            );
            i += mems.len();
            continue;
        }
        let line = lines
            .get(i)
            .unwrap_or_else(|| panic!("missing line {exp:?} in:\n{out}"));
        assert!(
            glob(exp.as_bytes(), line.as_bytes()),
            "line {i}: expected {exp:?}, got {line:?} in:\n{out}"
        );
        i += 1;
    }
    assert_eq!(i, lines.len(), "extra lines in:\n{out}");
}

/// The lines every guest starts with.
pub fn header(name: &str, protocol: &str, cmdline: &str) -> Vec<String> {
    vec![
        format!("strata-test-guest {name}"),
        format!("protocol: {protocol}"),
        format!("cmdline: {cmdline}"),
        "mem: *".to_string(),
    ]
}

pub fn module_line(size: usize, crc: u32, string: &str) -> String {
    format!("module: 0x???????? 0x{size:08x} crc32={crc:08x} {string}")
}
