//! Refcount table/blocks and snapshot table walked by check, with leak repair.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::image_file("check", data);
    let _ = disk::check(&path, disk::Format::Qcow2, true);
});
