//! Helpers shared by the disk integration tests: scratch directories, qemu-img/qemu-io
//! invocation (required: the tests fail, never skip, without them) and a tiny PRNG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory under Cargo's per-target temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required for these tests (install qemu-utils): {e}"));
    out
}

/// Runs qemu-img, panicking with its output on failure.
pub fn qemu_img(args: &[&str]) -> String {
    let out = run("qemu-img", args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-img and returns (exit code, stdout + stderr) without asserting.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = run("qemu-img", args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs qemu-io commands against an image of the given format.
pub fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut args: Vec<String> = vec!["-f".into(), fmt.into()];
    for c in cmds {
        args.push("-c".into());
        args.push((*c).into());
    }
    args.push(img.display().to_string());
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = run("qemu-io", &refs);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "qemu-io {cmds:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts `qemu-img check` finds no corruption and no leaks.
pub fn assert_qemu_check_clean(img: &Path) {
    let (code, text) = qemu_img_status(&["check", "-f", "qcow2", &img.display().to_string()]);
    assert_eq!(code, 0, "qemu-img check {}: {text}", img.display());
}

/// Asserts the qcow2 image's guest contents equal the raw file's.
pub fn assert_qemu_compare(img: &Path, raw: &Path) {
    let (code, text) = qemu_img_status(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &img.display().to_string(),
        &raw.display().to_string(),
    ]);
    assert_eq!(code, 0, "qemu-img compare: {text}");
}

/// Converts any image to raw with qemu-img and returns the bytes.
pub fn qemu_to_raw(img: &Path, fmt: &str) -> Vec<u8> {
    let out = img.with_extension("expected.raw");
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        &img.display().to_string(),
        &out.display().to_string(),
    ]);
    std::fs::read(&out).expect("read converted raw")
}

/// Xorshift PRNG: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
