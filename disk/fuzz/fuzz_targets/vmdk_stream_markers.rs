//! Fuzzes compressed grains, grain markers and the stream footer behind a fixed
//! stream-optimized header; the directory is either at a fixed sector or found via a footer
//! (GD_AT_END) appended around the fuzzed body.
#![no_main]

use disk::vmdk::{self, header::*};
use disk::{DiskSize, OpenOptions, ReadAt};
use libfuzzer_sys::fuzz_target;

fn header(gd_offset: u64) -> SparseHeader {
    SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: 512,
        grain_size: 8,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 8,
        rgd_offset: 0,
        gd_offset,
        overhead: 1,
        unclean_shutdown: false,
        compress_algorithm: COMPRESS_DEFLATE,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file;
    if mode & 1 != 0 {
        file = header(GD_AT_END).to_bytes().to_vec();
        file.extend_from_slice(rest);
        file.resize(file.len().div_ceil(512) * 512, 0);
        file.extend_from_slice(&Marker::metadata(MARKER_FOOTER, 1));
        file.extend_from_slice(&header(u64::from(mode >> 1) + 1).to_bytes());
        file.extend_from_slice(&Marker::metadata(MARKER_EOS, 0));
    } else {
        file = header(u64::from(mode >> 1) + 1).to_bytes().to_vec();
        file.extend_from_slice(rest);
    }
    let path = std::env::temp_dir().join(format!("strata-fuzz-stream-{}.vmdk", std::process::id()));
    std::fs::write(&path, &file).expect("scratch image");
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let Ok(mut img) = vmdk::open(&path, &opts) else {
        return;
    };
    let mut buf = vec![0u8; img.size() as usize];
    for (i, chunk) in buf.chunks_mut(4096).enumerate() {
        let _ = img.read_at(chunk, i as u64 * 4096);
    }
});
