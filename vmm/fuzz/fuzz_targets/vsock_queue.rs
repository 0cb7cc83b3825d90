//! virtio-vsock's guest-facing packet handling: arbitrary transmit and receive queues (guest
//! packets, receive buffers) through virtio-queue's mock queue, served by the vsock event
//! handler against host Unix sockets, over several rounds (the harness and the input
//! layout: vmm/src/virtio/fuzz_vsock.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::virtio::fuzz_vsock::vsock_queue(data);
});
