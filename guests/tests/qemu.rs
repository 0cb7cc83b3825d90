//! Boots every test guest under QEMU with KVM and checks the exact lines
//! it prints on COM1 and its exit status. These runs are the yardstick
//! Strata's own boot tests are compared against.
//!
//! Needs `qemu-system-x86_64`; skipped (with a message) when /dev/kvm is
//! absent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A guest that has not finished after this long is killed (hang guard,
/// not a speed assertion).
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Whether KVM is usable; prints why the test is skipped if not.
fn kvm_available() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("skipping: /dev/kvm is absent");
    }
    ok
}

/// IEEE CRC-32 (zlib), bitwise.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A scratch directory for the files of one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-guests-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes a deterministic module of `len` bytes; returns its path and CRC.
fn make_module(dir: &Path, name: &str, len: usize, seed: u32) -> (PathBuf, u32) {
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
struct Run {
    /// The serial output.
    out: String,
    /// QEMU's exit status ((guest code << 1) | 1 for isa-debug-exit).
    status: Option<i32>,
}

/// Runs QEMU with the common options plus `args`, serial on stdout.
fn qemu(args: &[&str]) -> Run {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-enable-kvm", "-cpu", "qemu64", "-m", "128"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
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
fn glob(pattern: &[u8], text: &[u8]) -> bool {
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

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses "mem: 0x<16 hex> 0x<16 hex> <dec>" into (base, length, type).
fn parse_mem(line: &str) -> Option<(u64, u64, u32)> {
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

/// Checks `out` against `expected` line by line. An expected line
/// "mem: *" stands for one or more well-formed memory-map lines of which
/// one must be usable RAM (type 1) covering 0x100000; other expected lines
/// are globs (see [`glob`]).
fn check_output(out: &str, expected: &[String]) {
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
fn header(name: &str, protocol: &str, cmdline: &str) -> Vec<String> {
    vec![
        format!("strata-test-guest {name}"),
        format!("protocol: {protocol}"),
        format!("cmdline: {cmdline}"),
        "mem: *".to_string(),
    ]
}

fn module_line(size: usize, crc: u32, string: &str) -> String {
    format!("module: 0x???????? 0x{size:08x} crc32={crc:08x} {string}")
}

#[test]
fn test_glob_wildcards_match() {
    assert!(glob(b"a?c*", b"abcdef"));
    assert!(glob(b"*", b""));
    assert!(!glob(b"a?c", b"ac"));
    assert!(!glob(b"abc", b"abd"));
}

#[test]
fn test_pvh_module_and_exit_code_reported() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("pvh");
    let (module, crc) = make_module(&dir, "mod.bin", 3000, 1);
    let cmdline = "console=ttyS0 exit=7 foo";
    let kernel = test_guests::pvh().to_str().expect("utf-8 path");

    // Act
    let run = qemu(&[
        "-M",
        "microvm",
        "-kernel",
        kernel,
        "-append",
        cmdline,
        "-initrd",
        module.to_str().expect("path"),
    ]);

    // Assert
    let mut expected = header("pvh", "pvh", cmdline);
    expected.push(module_line(3000, crc, ""));
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(7 << 1 | 1));
}

#[test]
fn test_pvh_no_cmdline_exits_zero() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let kernel = test_guests::pvh().to_str().expect("utf-8 path");

    // Act
    let run = qemu(&["-M", "microvm", "-kernel", kernel]);

    // Assert
    let mut expected = header("pvh", "pvh", "");
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(1));
}

/// Boots a multiboot image under `-M pc` (QEMU boots multiboot1 only) with
/// two modules and checks the report.
fn check_multiboot(name: &str, kernel: &Path) {
    // Arrange
    let dir = scratch(name);
    let (m1, crc1) = make_module(&dir, "a.bin", 3000, 2);
    let (m2, crc2) = make_module(&dir, "b.bin", 5000, 3);
    let kernel = kernel.to_str().expect("utf-8 path");
    let initrd = format!("{} arg1 arg2,{}", m1.display(), m2.display());
    let cmdline = "hello multiboot exit=3";

    // Act
    let run = qemu(&[
        "-M", "pc", "-kernel", kernel, "-append", cmdline, "-initrd", &initrd,
    ]);

    // Assert: QEMU passes the kernel path as the first cmdline word.
    let mut expected = header(name, "multiboot1", &format!("{kernel} {cmdline}"));
    expected.push(module_line(
        3000,
        crc1,
        &format!("{} arg1 arg2", m1.display()),
    ));
    expected.push(module_line(5000, crc2, &m2.display().to_string()));
    expected.push("bootloader: qemu".to_string());
    expected.push("meminfo: lower=639 upper=*".to_string());
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(3 << 1 | 1));
}

#[test]
fn test_multiboot1_elf_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot1-elf", test_guests::multiboot1_elf());
    }
}

#[test]
fn test_multiboot1_aout_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot1-aout", test_guests::multiboot1_aout());
    }
}

#[test]
fn test_multiboot2_via_multiboot1_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot2", test_guests::multiboot2());
    }
}

#[test]
fn test_linux_bzimage_initrd_reported() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("linux");
    let (initrd, crc) = make_module(&dir, "initrd.img", 4096 + 123, 4);
    let kernel = test_guests::linux_bzimage().to_str().expect("utf-8 path");
    let cmdline = "root=/dev/null exit=5 quiet";

    // Act
    let run = qemu(&[
        "-M",
        "pc",
        "-kernel",
        kernel,
        "-append",
        cmdline,
        "-initrd",
        initrd.to_str().expect("path"),
    ]);

    // Assert
    let mut expected = header("linux", "linux", cmdline);
    expected.push(format!(
        "initrd: 0x???????? 0x{:08x} crc32={crc:08x}",
        4096 + 123
    ));
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(5 << 1 | 1));
}
