//! Fuzzes the descriptor parser, then opens the text as a descriptor file in a scratch
//! directory holding one small flat extent ("a.img") and reads from the result.
#![no_main]

use disk::vmdk::{self, Descriptor};
use disk::{DiskSize, OpenOptions, ReadAt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Descriptor::parse(data);
    let dir = std::env::temp_dir().join(format!("strata-fuzz-desc-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let extent = dir.join("a.img");
    if !extent.exists() {
        std::fs::write(&extent, vec![0x5au8; 8192]).expect("scratch extent");
    }
    let path = dir.join("d.vmdk");
    std::fs::write(&path, data).expect("scratch descriptor");
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    if let Ok(mut img) = vmdk::open(&path, &opts) {
        let mut buf = [0u8; 1024];
        let size = img.size();
        for at in [0, size / 2, size.saturating_sub(1024)] {
            let n = (size - at).min(1024) as usize;
            let _ = img.read_at(&mut buf[..n], at);
        }
    }
});
