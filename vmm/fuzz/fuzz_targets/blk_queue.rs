//! virtio-blk's queue handling with arbitrary descriptor tables, available rings and guest
//! memory contents through virtio-queue's mock queue (the harness and the input layout:
//! vmm/src/virtio/fuzz.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::virtio::fuzz::blk_queue(data);
});
