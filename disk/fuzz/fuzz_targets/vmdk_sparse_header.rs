//! Fuzzes a whole sparse extent file: header validation, embedded descriptor, footer lookup and
//! a few reads at the start, middle and end of the disk.
#![no_main]

use disk::vmdk::{self, header::SparseHeader};
use disk::{DiskSize, OpenOptions, ReadAt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 512 {
        let mut h = [0u8; 512];
        h.copy_from_slice(&data[..512]);
        if let Ok(header) = SparseHeader::parse(&h) {
            let _ = header.layout(data.len() as u64);
            let _ = header.descriptor_range(data.len() as u64);
        }
    }
    let path = std::env::temp_dir().join(format!("strata-fuzz-hdr-{}.vmdk", std::process::id()));
    std::fs::write(&path, data).expect("scratch image");
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    if let Ok(mut img) = vmdk::open(&path, &opts) {
        let mut buf = [0u8; 4096];
        let size = img.size();
        for at in [0, size / 2 / 512 * 512, size.saturating_sub(4096)] {
            let n = (size - at).min(4096) as usize;
            let _ = img.read_at(&mut buf[..n], at);
        }
    }
});
