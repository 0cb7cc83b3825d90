//! Comparing two images' contents, as `qemu-img compare` does.
//!
//! Ranges both images' metadata report as zero are skipped without reading. A size
//! difference is allowed when the larger image's extra part reads as zeroes (unless strict).
//! Mismatch offsets are reported at 512-byte sector granularity, as qemu-img reports them.

use std::path::Path;

use super::{is_zero, Image, Status};
use crate::{Format, OpenOptions, Result};

/// Transfer size for comparisons.
const CHUNK: u64 = 2 << 20;
/// Granularity of reported mismatch offsets.
const SECTOR: u64 = 512;

/// The outcome of [`compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Same contents (the smaller image padded with zeroes).
    Identical {
        /// The virtual sizes differ.
        size_mismatch: bool,
    },
    /// The contents differ; `offset` is the first differing sector's byte offset.
    Mismatch {
        /// First differing offset.
        offset: u64,
        /// The sizes differ and the difference lies in the larger image's extra part.
        beyond_common: bool,
    },
    /// Strict mode: the sizes differ.
    SizeMismatch,
}

/// How to compare (`qemu-img compare`'s options).
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Format of the first image (`-f`).
    pub a_format: Format,
    /// Format of the second image (`-F`).
    pub b_format: Format,
    /// How both images are opened (read-only is forced).
    pub open: OpenOptions,
    /// Images of different sizes differ (`-s`), even when the extra part reads as zeroes.
    pub strict: bool,
}

/// Compares image `a` with image `b`.
pub fn compare(
    a: &Path,
    b: &Path,
    options: &CompareOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison> {
    let o = OpenOptions {
        read_only: true,
        ..options.open.clone()
    };
    let (fa, fb, strict) = (options.a_format, options.b_format, options.strict);
    let mut ia = Image::open(a, fa, &o)?;
    let mut ib = Image::open(b, fb, &o)?;
    let (sa, sb) = (ia.size(), ib.size());
    let size_mismatch = sa != sb;
    if strict && size_mismatch {
        return Ok(Comparison::SizeMismatch);
    }
    let common = sa.min(sb);
    let total = sa.max(sb);
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < common {
        let n = CHUNK.min(common - off);
        let (x, y) = (&mut ba[..n as usize], &mut bb[..n as usize]);
        let za = read(&mut ia, x, off)?;
        let zb = read(&mut ib, y, off)?;
        if !(za && zb) && x != y {
            let i = x
                .iter()
                .zip(y.iter())
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            let offset = (off + i as u64) / SECTOR * SECTOR;
            return Ok(Comparison::Mismatch {
                offset,
                beyond_common: false,
            });
        }
        off += n;
        progress(off, total);
    }
    let bigger = if sa > sb { &mut ia } else { &mut ib };
    while off < total {
        let n = CHUNK.min(total - off);
        let x = &mut ba[..n as usize];
        if !read(bigger, x, off)? && !is_zero(x) {
            let i = x.iter().position(|&p| p != 0).unwrap_or(0);
            return Ok(Comparison::Mismatch {
                offset: (off + i as u64) / SECTOR * SECTOR,
                beyond_common: true,
            });
        }
        off += n;
        progress(off, total);
    }
    Ok(Comparison::Identical { size_mismatch })
}

/// Fills `buf` from `offset`; returns true when the metadata says the range is all zeroes.
fn read(img: &mut Image, buf: &mut [u8], offset: u64) -> Result<bool> {
    let runs = img.status(offset, buf.len() as u64)?;
    if runs.iter().all(|r| r.2 == Status::Zero) {
        buf.fill(0);
        return Ok(true);
    }
    for (at, n, s) in runs {
        let r = (at - offset) as usize..(at - offset + n) as usize;
        match s {
            Status::Zero => buf[r].fill(0),
            Status::Data => img.read(&mut buf[r], at)?,
        }
    }
    Ok(false)
}
