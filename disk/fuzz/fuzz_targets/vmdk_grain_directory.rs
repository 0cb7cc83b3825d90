//! Fuzzes grain directory, redundant directory and grain tables behind a fixed valid header:
//! reads the whole (small) disk, writes into it (allocating grains and tables) and reads again.
#![no_main]

use disk::vmdk::{self, header::*};
use disk::{DiskSize, OpenOptions, ReadAt, WriteAt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header = SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST
            | if mode & 1 != 0 { FLAG_RGD } else { 0 }
            | if mode & 2 != 0 { FLAG_ZERO_GRAIN } else { 0 },
        capacity: 512,
        grain_size: 8,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 8,
        rgd_offset: 2,
        gd_offset: 1,
        overhead: 3,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    let mut file = header.to_bytes().to_vec();
    file.extend_from_slice(rest);
    let path = std::env::temp_dir().join(format!("strata-fuzz-gd-{}.vmdk", std::process::id()));
    std::fs::write(&path, &file).expect("scratch image");
    let Ok(mut img) = vmdk::open(&path, &OpenOptions::default()) else {
        return;
    };
    let size = img.size();
    let mut buf = vec![0u8; size as usize];
    let _ = img.read_at(&mut buf, 0);
    let at = u64::from(mode >> 2) * 4096 % size;
    let _ = img.write_at(&[0xa5; 6000][..(size - at).min(6000) as usize], at);
    let _ = img.flush();
    let _ = img.read_at(&mut buf, 0);
});
