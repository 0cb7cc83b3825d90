//! Cache modes: the default open syncs on flush; `CacheMode::Unsafe` keeps the same writes
//! without syncing, and the result is still a valid image.

mod common;

use common::{assert_qemu_check_clean, assert_qemu_compare, scratch};
use disk::{CacheMode, CreateOptions, Format, OpenOptions, Qcow2, WriteAt};

const SIZE: u64 = 4 << 20;

/// Writes a pattern to a fresh image opened with `cache`; returns its sync count.
fn write_and_flush(name: &str, cache: CacheMode) -> (std::path::PathBuf, Vec<u8>, u64) {
    let dir = scratch(name);
    let img = dir.join("a.qcow2");
    disk::create(&img, Format::Qcow2, SIZE, &CreateOptions::default()).expect("create");
    let mut expected = vec![0u8; SIZE as usize];
    let opts = OpenOptions {
        cache,
        ..Default::default()
    };
    let mut q = Qcow2::open(&img, &opts).expect("open");
    for (i, off) in [0u64, 1 << 20, 3 << 20].into_iter().enumerate() {
        let data = vec![i as u8 + 1; 200_000];
        q.write_at(&data, off).expect("write");
        expected[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    q.flush().expect("flush");
    let syncs = q.sync_count();
    drop(q);
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, &expected).expect("write expected");
    (img, expected, syncs)
}

#[test]
fn test_qcow2_default_cache_flush_syncs() {
    // Arrange + Act
    let (img, _, syncs) = write_and_flush("cache-default", CacheMode::default());

    // Assert: data+refcounts, L2 and L1 are each made durable in order.
    assert!(syncs >= 3, "default open synced only {syncs} times");
    assert_qemu_check_clean(&img);
}

#[test]
fn test_qcow2_unsafe_cache_flush_never_syncs_and_image_valid() {
    // Arrange + Act
    let (img, _, syncs) = write_and_flush("cache-unsafe", CacheMode::Unsafe);

    // Assert
    assert_eq!(syncs, 0);
    assert_qemu_check_clean(&img);
    assert_qemu_compare(&img, &img.with_file_name("expected.raw"));
}

#[test]
fn test_cache_mode_parse_qemu_names_and_rejects_others() {
    // Arrange
    let names = ["none", "writeback", "unsafe", "directsync", "writethrough"];

    // Act
    let parsed: Vec<CacheMode> = names.iter().map(|n| n.parse().expect("parse")).collect();

    // Assert
    assert_eq!(parsed.iter().filter(|m| !m.syncs()).count(), 1);
    assert_eq!(parsed[2], CacheMode::Unsafe);
    assert!("fast".parse::<CacheMode>().is_err());
}
