//! The snapshot state-file parser: header, checksum, JSON body, cross-checks, and every
//! virtio device's entry decoded as its transport's state (virtio-mmio, virtio-pci: the PCI
//! configuration space, MSI-X, the common state). Run with `cargo fuzz run state_file
//! seeds/state_file` from vmm/fuzz. The checksum makes random mutations of a valid file fail
//! early; `fix_crc` below gives the body parser a chance too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::virtio::transport::mmio::persist::MmioState;
use vmm::virtio::transport::pci::persist::PciState;

fn parse_all(data: &[u8]) {
    let Ok(state) = vmm::snapshot::format::parse(data) else {
        return;
    };
    for d in &state.devices {
        if d.kind.starts_with("virtio-pci/") {
            let _ = serde_json::from_value::<PciState>(d.state.clone());
        } else if d.kind.starts_with("virtio-mmio/") {
            let _ = serde_json::from_value::<MmioState>(d.state.clone());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    // The same bytes with the header's length and checksum made right for the body.
    if data.len() >= 32 {
        let body = &data[32..];
        let mut fixed = data[..32].to_vec();
        fixed[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        fixed[24..28].copy_from_slice(&vmm::snapshot::format::crc32(body).to_le_bytes());
        fixed.extend_from_slice(body);
        parse_all(&fixed);
    }
});
