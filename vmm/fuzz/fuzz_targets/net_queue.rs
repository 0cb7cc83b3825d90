//! virtio-net's queue handling (transmit and receive queues, frames from the tap) with
//! arbitrary descriptor tables, available rings, guest memory contents and device modes
//! through virtio-queue's mock queues (the harness and the input layout:
//! vmm/src/virtio/fuzz_net.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::virtio::fuzz_net::net_queue(data);
});
