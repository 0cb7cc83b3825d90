//! Refcounts, allocation, metadata updates and snapshot operations on hostile images.
#![no_main]
use disk::{Discard, DiskSize, OpenOptions, Qcow2, Resize, WriteAt};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::image_file("write", data);
    if let Ok(mut q) = Qcow2::open(&path, &OpenOptions::default()) {
        let size = q.size();
        if size == 0 {
            return;
        }
        let buf = vec![0x5au8; 3000];
        for i in 0..8u64 {
            let off = (i * 0x8123) % size;
            let n = (size - off).min(3000) as usize;
            let _ = q.write_at(&buf[..n], off);
        }
        let _ = q.write_zeroes(0, size.min(0x20000));
        let _ = q.discard(size / 2, (size / 2).min(0x10000));
        let _ = q.write_compressed(0, &vec![0u8; (q.size().min(512)) as usize]);
        let _ = q.resize(size.saturating_add(1 << 20));
        let _ = q.flush();
        // Snapshot table and refcount walks on hostile images.
        if let Ok(list) = q.snapshots() {
            if let Some(s) = list.first() {
                let _ = q.snapshot_apply(&s.id);
                let _ = q.snapshot_delete(&s.name);
            }
        }
        let _ = q.snapshot_create("fuzz");
        let _ = q.write_at(&buf[..16.min(q.size() as usize)], 0);
        let _ = q.snapshot_apply("fuzz");
        let _ = q.flush();
    }
});
