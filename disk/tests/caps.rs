//! Capability answers per format and open mode.

mod common;

use common::{qemu_img, scratch};
use disk::{Capabilities, Format, OpenOptions, SharedDisk};

fn caps(path: &std::path::Path, format: Format, read_only: bool, direct: bool) -> Capabilities {
    let o = OpenOptions {
        read_only,
        direct,
        ..Default::default()
    };
    let c = disk::open(path, format, &o).expect("open").capabilities();
    let shared = SharedDisk::open(path, format, &o).expect("open shared");
    assert_eq!(
        shared.capabilities(),
        c,
        "SharedDisk answers as the image does"
    );
    c
}

#[test]
fn test_caps_raw_writable_buffered_offers_everything() {
    let dir = scratch("caps-raw");
    let img = dir.join("a.raw");
    disk::create(&img, Format::Raw, 1 << 20, &Default::default()).expect("create");

    let c = caps(&img, Format::Raw, false, false);

    assert_eq!(c.format, Format::Raw);
    assert!(!c.read_only && c.flush && c.write_zeroes && c.resize);
    // The scratch directory is on a file system that punches holes (ext4, xfs, tmpfs).
    assert!(c.discard && c.write_zeroes_may_unmap);
    assert_eq!(c.logical_block_size, 512);
    assert!(c.physical_block_size.is_power_of_two() && c.physical_block_size >= 512);
    assert_eq!(c.discard_alignment, c.physical_block_size);
    assert!(!c.direct);
    assert_eq!(c.buffer_alignment, 1);
}

#[test]
fn test_caps_raw_read_only_offers_no_writes() {
    let dir = scratch("caps-raw-ro");
    let img = dir.join("a.raw");
    disk::create(&img, Format::Raw, 1 << 20, &Default::default()).expect("create");

    let c = caps(&img, Format::Raw, true, false);

    assert!(c.read_only);
    assert!(!c.flush && !c.discard && !c.write_zeroes && !c.write_zeroes_may_unmap && !c.resize);
    assert_eq!(c.discard_alignment, 0);
}

#[test]
fn test_caps_raw_direct_reports_host_alignment() {
    let dir = scratch("caps-raw-direct");
    let img = dir.join("a.raw");
    disk::create(&img, Format::Raw, 1 << 20, &Default::default()).expect("create");

    let c = caps(&img, Format::Raw, false, true);

    assert!(c.direct);
    assert!(c.logical_block_size.is_power_of_two() && c.logical_block_size >= 512);
    assert!(c.physical_block_size >= c.logical_block_size);
    assert!(c.buffer_alignment.is_power_of_two());
}

#[test]
fn test_caps_qcow2_rw_and_ro() {
    let dir = scratch("caps-qcow2");
    let img = dir.join("a.qcow2");
    let p = img.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=65536",
        &p,
        "1M",
    ]);

    let w = caps(&img, Format::Qcow2, false, false);
    let r = caps(&img, Format::Qcow2, true, false);

    assert!(!w.read_only && w.flush && w.discard && w.write_zeroes && w.write_zeroes_may_unmap);
    assert!(w.resize);
    assert_eq!(w.discard_alignment, 65536);
    assert_eq!((w.logical_block_size, w.physical_block_size), (512, 4096));
    assert!(!w.direct);
    assert!(r.read_only && !r.flush && !r.discard && !r.write_zeroes && !r.resize);
}

#[test]
fn test_caps_vmdk_sparse_writable_stream_read_only() {
    let dir = scratch("caps-vmdk");
    let sparse = dir.join("s.vmdk");
    let stream = dir.join("t.vmdk");
    common::qemu_img_create(&sparse, "vmdk", "1M");
    let opts = "subformat=streamOptimized";
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        opts,
        &stream.display().to_string(),
        "1M",
    ]);

    let s = caps(&sparse, Format::Vmdk, false, false);
    let t = caps(&stream, Format::Vmdk, false, false);

    assert!(!s.read_only && s.flush && s.write_zeroes);
    assert!(!s.discard && !s.write_zeroes_may_unmap && !s.resize);
    assert!(
        t.read_only,
        "an existing streamOptimized image cannot be written in place"
    );
    assert!(!t.write_zeroes);
}
