//! The snapshot state-file parser: header, checksum, JSON body, cross-checks. Run with
//! `cargo fuzz run state_file seeds/state_file` from vmm/fuzz. The checksum makes random
//! mutations of a valid file fail early; `fix_crc` below gives the body parser a chance too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::snapshot::format::parse(data);
    // The same bytes with the header's length and checksum made right for the body.
    if data.len() >= 32 {
        let body = &data[32..];
        let mut fixed = data[..32].to_vec();
        fixed[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        fixed[24..28].copy_from_slice(&vmm::snapshot::format::crc32(body).to_le_bytes());
        fixed.extend_from_slice(body);
        let _ = vmm::snapshot::format::parse(&fixed);
    }
});
