//! Compressed clusters: raw deflate with a 4 KiB window (as QEMU), and Zstandard.

use std::io::Read;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::CompressionType;
use crate::{Error, ErrorKind, Result};

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg).with_operation("decompress")
}

/// Decompresses one cluster from `input` (which may carry trailing bytes) into `out`,
/// which must be filled exactly.
pub(crate) fn decompress(ty: CompressionType, input: &[u8], out: &mut [u8]) -> Result<()> {
    match ty {
        CompressionType::Zlib => {
            let mut d = Decompress::new_with_window_bits(false, 12);
            let status = d
                .decompress(input, out, FlushDecompress::Finish)
                .map_err(|e| corrupt(format!("bad deflate data: {e}")))?;
            if d.total_out() as usize != out.len() {
                return Err(corrupt(format!(
                    "deflate data ended after {} of {} bytes ({status:?})",
                    d.total_out(),
                    out.len()
                )));
            }
            Ok(())
        }
        CompressionType::Zstd => {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| corrupt(format!("bad zstd frame: {e}")))?;
            dec.read_exact(out)
                .map_err(|e| corrupt(format!("bad zstd data: {e}")))
        }
    }
}

/// Compresses one cluster; `None` when compression would not save space.
pub(crate) fn compress(ty: CompressionType, input: &[u8]) -> Option<Vec<u8>> {
    let out = match ty {
        CompressionType::Zlib => {
            // Measured on text (docs/benchmarks.md): zlib-rs at level 6 gave 23% larger
            // output than qemu-img (C zlib, level 6); level 7 is within 6% of qemu-img's size
            // at about its CPU cost.
            let mut c = Compress::new_with_window_bits(Compression::new(7), false, 12);
            let mut out = vec![0u8; input.len()];
            match c.compress(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => {}
                _ => return None,
            }
            out.truncate(c.total_out() as usize);
            out
        }
        CompressionType::Zstd => {
            ruzstd::encoding::compress_to_vec(input, ruzstd::encoding::CompressionLevel::Fastest)
        }
    };
    (out.len() < input.len()).then_some(out)
}

/// Bytes per sample in [`looks_incompressible`].
const SAMPLE: usize = 4096;
/// Samples taken, evenly spaced from the start to the end.
const SAMPLES: usize = 4;

/// Whether fast deflate of every sample saves less than 3% (false for inputs under
/// `SAMPLES * SAMPLE` bytes, which are always compressed).
pub(crate) fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < SAMPLES * SAMPLE {
        return false;
    }
    // First sample at the start, last at the end.
    let step = (data.len() - SAMPLE) / (SAMPLES - 1);
    (0..SAMPLES).all(|k| {
        let s = &data[k * step..k * step + SAMPLE];
        let mut c = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(2 * SAMPLE);
        match c.compress_vec(s, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => out.len() * 100 >= SAMPLE * 97,
            _ => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_compress_roundtrip_both_types_equal() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            let c = compress(ty, &data).expect("compressible");
            let mut out = vec![0u8; data.len()];
            decompress(ty, &c, &mut out).expect("decompress");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn test_looks_incompressible_random_yes_compressible_tail_no() {
        // Arrange
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut tail_zero = random.clone();
        tail_zero[60000..].fill(0);

        // Act + Assert
        assert!(looks_incompressible(&random));
        assert!(!looks_incompressible(&tail_zero));
        assert!(!looks_incompressible(&random[..8192]));
    }

    #[test]
    fn test_decompress_garbage_is_corrupt_error() {
        let mut out = vec![0u8; 4096];
        let err = decompress(CompressionType::Zstd, &[1, 2, 3, 4, 5], &mut out).expect_err("bad");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
}
