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

/// `qemu-img create -q -f FMT IMG SIZE`, panicking on failure.
pub fn qemu_img_create(img: &Path, fmt: &str, size: &str) {
    qemu_img(&["create", "-q", "-f", fmt, &img.display().to_string(), size]);
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

/// Cuts `len` bytes into 1 to `max_parts` buffer lengths at random points (empty buffers
/// included now and then, as a guest's descriptor chain may have them).
pub fn random_split(rng: &mut Rng, len: usize, max_parts: u64) -> Vec<usize> {
    let parts = 1 + rng.below(max_parts) as usize;
    let mut cuts: Vec<usize> = (1..parts)
        .map(|_| rng.below(len as u64 + 1) as usize)
        .collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Random bytes.
pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Splits `data` into owned buffers of the given lengths.
pub fn split_into(data: &[u8], lens: &[usize]) -> Vec<Vec<u8>> {
    let mut pos = 0;
    lens.iter()
        .map(|&n| {
            let v = data[pos..pos + n].to_vec();
            pos += n;
            v
        })
        .collect()
}

/// A heap buffer whose usable part starts `misalign` bytes past a 4096-byte boundary.
pub struct Placed {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Placed {
    pub fn new(len: usize, misalign: usize) -> Placed {
        let storage = vec![0u8; len + 8192];
        let addr = storage.as_ptr() as usize;
        let start = (4096 - addr % 4096) % 4096 + misalign;
        Placed {
            storage,
            start,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// An iovec over the usable part (valid while `self` lives and is not moved out of).
    pub fn iovec(&mut self) -> libc::iovec {
        let s = self.as_mut_slice();
        libc::iovec {
            iov_base: s.as_mut_ptr().cast(),
            iov_len: s.len(),
        }
    }
}

/// Iovecs over owned buffers.
pub fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<libc::iovec> {
    bufs.iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

/// Runs qemu-img compare between an image and a raw file.
pub fn assert_qemu_compare_fmt(img: &Path, fmt: &str, raw: &Path) {
    let (code, text) = qemu_img_status(&[
        "compare",
        "-f",
        fmt,
        "-F",
        "raw",
        &img.display().to_string(),
        &raw.display().to_string(),
    ]);
    assert_eq!(code, 0, "qemu-img compare {}: {text}", img.display());
}

/// Commits and collects completions until `n` have arrived.
pub fn collect(e: &mut dyn disk::aio::Engine, n: usize) -> Vec<disk::aio::Completion> {
    let mut out = Vec::new();
    e.commit().expect("commit");
    while out.len() < n {
        e.wait().expect("wait");
        e.completions(&mut out);
    }
    out
}

/// Asserts every token in `0..n` completed exactly once, successfully.
pub fn assert_tokens_ok(done: &[disk::aio::Completion], n: u64) {
    let mut seen = vec![false; n as usize];
    for c in done {
        assert!(c.token < n, "unknown token {}", c.token);
        assert!(!seen[c.token as usize], "token {} completed twice", c.token);
        seen[c.token as usize] = true;
        if let Err(e) = &c.result {
            panic!("request {} failed: {e}", c.token);
        }
    }
    assert!(seen.iter().all(|&s| s), "missing completions");
}
