//! Helpers for the `strata img` tests: scratch directories, running strata img, qemu-img and
//! qemu-io (required: the tests fail, never skip, without them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh scratch directory under Cargo's per-target temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("img-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The result of running a command.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

fn run(mut cmd: Command) -> Run {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (qemu-utils is required): {e}"));
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `strata img ARGS` in `dir`.
pub fn strata(dir: &Path, args: &[&str]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.arg("img").args(args).current_dir(dir);
    run(c)
}

/// Runs `strata img ARGS` in `dir`, asserting success; returns stdout.
pub fn strata_ok(dir: &Path, args: &[&str]) -> String {
    let r = strata(dir, args);
    assert_eq!(
        r.status, 0,
        "strata img {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// Runs qemu-img in `dir`.
pub fn qemu_img(dir: &Path, args: &[&str]) -> Run {
    let mut c = Command::new("qemu-img");
    c.args(args).current_dir(dir);
    run(c)
}

/// Runs qemu-img in `dir`, asserting success; returns stdout.
pub fn qemu_img_ok(dir: &Path, args: &[&str]) -> String {
    let r = qemu_img(dir, args);
    assert_eq!(
        r.status, 0,
        "qemu-img {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// Runs qemu-io commands on `img` (format `fmt`) in `dir`, asserting success.
pub fn qemu_io(dir: &Path, fmt: &str, img: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]).current_dir(dir);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(img);
    let r = run(c);
    assert!(
        r.status == 0 && !r.stdout.contains("error") && !r.stdout.contains("failed"),
        "qemu-io {cmds:?} failed: {}{}",
        r.stdout,
        r.stderr
    );
}

/// Asserts that `qemu-img check` finds no problems.
pub fn assert_qemu_check(dir: &Path, fmt: &str, img: &str) {
    let r = qemu_img(dir, &["check", "-f", fmt, img]);
    assert_eq!(
        r.status, 0,
        "qemu-img check {img}: {}{}",
        r.stdout, r.stderr
    );
}

/// Asserts that qemu-img and strata img both find the two images identical.
pub fn assert_identical(dir: &Path, fa: &str, a: &str, fb: &str, b: &str) {
    let q = qemu_img(dir, &["compare", "-f", fa, "-F", fb, a, b]);
    assert_eq!(
        q.status, 0,
        "qemu-img compare {a} {b}: {}{}",
        q.stdout, q.stderr
    );
    let s = strata(dir, &["compare", "-f", fa, "-F", fb, a, b]);
    assert_eq!(
        s.status, 0,
        "strata img compare {a} {b}: {}{}",
        s.stdout, s.stderr
    );
    assert!(s.stdout.contains("Images are identical."));
}

/// A qcow2 image with a backing file, made and written by qemu-img and qemu-io: data,
/// zero clusters, compressed clusters, a discarded range, and data only in the backing file.
/// Returns (top, base) file names inside `dir`.
pub fn qemu_chain(dir: &Path) -> (&'static str, &'static str) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "3M"]);
    qemu_io(
        dir,
        "qcow2",
        "base.qcow2",
        &[
            "write -P 0x11 0 192k",
            "write -P 0x22 1M 64k",
            "write -c -P 0x33 2M 64k",
        ],
    );
    qemu_img_ok(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "4M",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "top.qcow2",
        &[
            "write -P 0x44 64k 4k",
            "write -z 1M 64k",
            "write -c -P 0x55 3M 64k",
            "write -P 0x66 3276800 100000",
            "discard 2M 64k",
        ],
    );
    ("top.qcow2", "base.qcow2")
}
