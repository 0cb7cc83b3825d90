//! Header, extensions, L1/L2, zero and compressed clusters: open read-only and read.
#![no_main]
use disk::{DiskSize, OpenOptions, Qcow2, ReadAt};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::image_file("read", data);
    let opts = OpenOptions { read_only: true, ..Default::default() };
    if let Ok(mut q) = Qcow2::open(&path, &opts) {
        let size = q.size();
        let mut buf = vec![0u8; 4096];
        for i in 0..64u64 {
            let off = (i * 0x1_0000 + i * 517) % size.max(1);
            let n = (size - off.min(size)).min(4096) as usize;
            let _ = q.read_at(&mut buf[..n], off);
        }
    }
    let _ = disk::info(&path, disk::Format::Qcow2);
});
