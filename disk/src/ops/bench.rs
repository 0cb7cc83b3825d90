//! A request-rate benchmark with `qemu-img bench`'s request pattern.
//!
//! `count` requests of `bufsize` bytes go to `offset`, `offset + step`, ... wrapping at the
//! end of the image. Requests are issued one after another (the library's images are
//! synchronous); `depth` is accepted for compatibility and reported back.

use std::path::Path;
use std::time::{Duration, Instant};

use super::Image;
use crate::{Error, ErrorKind, Format, OpenOptions, Result};

/// Parameters of [`bench`] (qemu-img bench's flags).
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Number of requests (`-c`).
    pub count: u64,
    /// Requested queue depth (`-d`); see the module documentation.
    pub depth: u64,
    /// Request size (`-s`).
    pub bufsize: u64,
    /// First offset (`-o`).
    pub offset: u64,
    /// Distance between requests (`-S`); 0 means `bufsize`.
    pub step: u64,
    /// Write instead of read (`-w`).
    pub write: bool,
    /// Byte written by write requests (`--pattern`).
    pub pattern: u8,
    /// Flush after this many write requests (`-i`); 0: never.
    pub flush_interval: u64,
    /// Bypass the host page cache (`-t none`; raw images only).
    pub direct: bool,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            count: 75000,
            depth: 64,
            bufsize: 4096,
            offset: 0,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            direct: false,
        }
    }
}

/// What a benchmark run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchReport {
    /// Requests completed.
    pub requests: u64,
    /// Wall-clock time of the requests (opening and closing excluded).
    pub elapsed: Duration,
}

/// Runs the benchmark on `path` (format `format`).
pub fn bench(
    path: &Path,
    format: Format,
    o: &BenchOptions,
    open: &OpenOptions,
) -> Result<BenchReport> {
    if o.direct && format != Format::Raw {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "cache mode 'none' (O_DIRECT) is only available for raw images",
        ));
    }
    let opts = OpenOptions {
        read_only: !o.write,
        direct: o.direct,
        ..open.clone()
    };
    let mut img = Image::open(path, format, &opts)?;
    let size = img.size();
    if o.bufsize == 0 || o.bufsize > size || o.bufsize > 64 << 20 {
        return Err(Error::new(
            ErrorKind::OutOfBounds,
            format!(
                "request size {} does not fit the image ({size} bytes)",
                o.bufsize
            ),
        ));
    }
    let step = if o.step == 0 { o.bufsize } else { o.step };
    let mut buf = vec![o.pattern; o.bufsize as usize];
    let disk = img.disk();
    let mut offset = o.offset % size;
    let start = Instant::now();
    for i in 0..o.count {
        if offset + o.bufsize > size {
            offset = 0;
        }
        if o.write {
            disk.write_at(&buf, offset)?;
            if o.flush_interval != 0 && (i + 1) % o.flush_interval == 0 {
                disk.flush()?;
            }
        } else {
            disk.read_at(&mut buf, offset)?;
        }
        offset = (offset + step) % size;
    }
    let elapsed = start.elapsed();
    if o.write {
        disk.flush()?;
    }
    Ok(BenchReport {
        requests: o.count,
        elapsed,
    })
}
