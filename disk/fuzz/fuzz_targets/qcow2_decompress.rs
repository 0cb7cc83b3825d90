//! Compressed cluster payloads (zlib and zstd).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let ty = if data[0] & 1 == 0 { disk::CompressionType::Zlib } else { disk::CompressionType::Zstd };
    let cluster_bits = 9 + (data[1] % 13) as u32;
    let _ = disk::qcow2::fuzz_decompress(ty, &data[2..], 1 << cluster_bits);
});
