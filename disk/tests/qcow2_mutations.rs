//! A deterministic, CI-friendly complement to `disk/fuzz`: corrupt a qemu-made image one field
//! at a time and drive every entry point; each must return (Ok or a clear error), never panic
//! or hang.

mod common;

use common::{qemu_img, qemu_io, scratch, Rng};
use disk::{Discard, DiskSize, Format, OpenOptions, Qcow2, ReadAt, WriteAt};

/// Drives open/read/info/check/write/snapshot paths; returns whether the read-only open worked.
fn exercise(path: &std::path::Path) -> bool {
    let _ = disk::info(path, Format::Qcow2);
    let _ = disk::check(path, Format::Qcow2, false);
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let opened = match Qcow2::open(path, &ro) {
        Ok(mut q) => {
            let mut buf = vec![0u8; 1536];
            let size = q.size();
            for off in [0u64, 512, 4096, 9000] {
                if off + 1536 <= size {
                    let _ = q.read_at(&mut buf, off);
                }
            }
            true
        }
        Err(_) => false,
    };
    if let Ok(mut q) = Qcow2::open(path, &OpenOptions::default()) {
        let size = q.size();
        let _ = q.write_at(&[1u8; 700], 100.min(size.saturating_sub(700)));
        let _ = q.write_zeroes(0, size.min(2048));
        let _ = q.snapshot_create("m");
        let _ = q.snapshot_apply("s1");
        let _ = q.flush();
    }
    let _ = disk::check(path, Format::Qcow2, true);
    opened
}

#[test]
fn test_qcow2_mutated_images_never_panic() {
    let dir = scratch("mutations");
    let seed = dir.join("seed.qcow2");
    let p = seed.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &p,
        "16k",
    ]);
    qemu_io(
        &seed,
        "qcow2",
        &["write -c -P 3 0 512", "write -P 1 1k 2k", "write -z 4k 1k"],
    );
    qemu_img(&["snapshot", "-c", "s1", &p]);
    qemu_io(&seed, "qcow2", &["write -P 2 1k 512"]);
    let original = std::fs::read(&seed).expect("seed");
    let mut rng = Rng(0xfeed);
    let work = dir.join("m.qcow2");
    let mut refused = 0;

    let seed_ok = exercise(&seed);
    for _ in 0..300 {
        let mut b = original.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(b.len() as u64) as usize;
            match rng.below(3) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = 0xff,
                _ => b[at] = rng.next() as u8,
            }
        }
        std::fs::write(&work, &b).expect("write mutant");
        if !exercise(&work) {
            refused += 1;
        }
    }

    assert!(seed_ok, "the unmodified image must open");
    assert!(refused > 0, "some header mutations must be refused");
}
