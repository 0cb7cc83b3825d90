//! qcow2 images written by this crate pass `qemu-img check` and `qemu-img compare` against the
//! expected raw contents.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_qemu_check_clean, assert_qemu_compare, qemu_img, qemu_io, qemu_to_raw, scratch, Rng,
};
use disk::{
    CompressionType, CreateOptions, Discard, Format, OpenOptions, Qcow2, Qcow2Version, ReadAt,
    Resize, WriteAt,
};

const SIZE: u64 = 8 << 20;

fn rw() -> OpenOptions {
    OpenOptions::default()
}

/// Applies random writes, zeroes and discards to `img` and to `expected`.
fn random_ops(img: &Path, opts: &OpenOptions, expected: &mut [u8], seed: u64, ops: usize) {
    let mut d = Qcow2::open(img, opts).expect("open rw");
    let mut rng = Rng(seed);
    let size = expected.len() as u64;
    for i in 0..ops {
        let off = rng.below(size);
        let len = (1 + rng.below(if i % 5 == 0 { 300_000 } else { 9000 })).min(size - off);
        match rng.below(10) {
            0 => {
                d.write_zeroes(off, len).expect("write_zeroes");
                expected[off as usize..(off + len) as usize].fill(0);
            }
            1 => {
                d.discard(off, len).expect("discard");
                // Discarded data may read back as anything: take what we now read.
                d.read_at(&mut expected[off as usize..(off + len) as usize], off)
                    .expect("read after discard");
            }
            _ => {
                let byte = (rng.next() & 0xff) as u8;
                let data: Vec<u8> = (0..len).map(|j| byte ^ (j as u8)).collect();
                d.write_at(&data, off).expect("write");
                expected[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
        }
        if i % 37 == 0 {
            d.flush().expect("flush");
        }
    }
    let mut back = vec![0u8; expected.len()];
    d.read_at(&mut back, 0).expect("read back");
    assert!(back == expected, "our own read-back differs");
    d.flush().expect("final flush");
}

fn write_raw(path: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(path, data).expect("write expected raw");
    path.to_path_buf()
}

#[test]
fn test_qcow2_create_random_writes_all_variants_pass_qemu_check_and_compare() {
    let dir = scratch("write-variants");
    let variants: Vec<(&str, CreateOptions)> = vec![
        ("v3-64k", CreateOptions::default()),
        (
            "v2-512",
            CreateOptions {
                version: Qcow2Version::V2,
                cluster_size: Some(512),
                ..Default::default()
            },
        ),
        (
            "v2-64k",
            CreateOptions {
                version: Qcow2Version::V2,
                ..Default::default()
            },
        ),
        (
            "v3-2m",
            CreateOptions {
                cluster_size: Some(2 << 20),
                ..Default::default()
            },
        ),
        (
            "v3-rc1",
            CreateOptions {
                refcount_bits: Some(1),
                cluster_size: Some(4096),
                ..Default::default()
            },
        ),
        (
            "v3-rc64-512",
            CreateOptions {
                refcount_bits: Some(64),
                cluster_size: Some(512),
                ..Default::default()
            },
        ),
        (
            "v3-rc2",
            CreateOptions {
                refcount_bits: Some(2),
                cluster_size: Some(1024),
                ..Default::default()
            },
        ),
        (
            "v3-rc4-lazy",
            CreateOptions {
                refcount_bits: Some(4),
                lazy_refcounts: true,
                ..Default::default()
            },
        ),
        (
            "v3-rc8",
            CreateOptions {
                refcount_bits: Some(8),
                ..Default::default()
            },
        ),
        (
            "v3-rc32-zstd",
            CreateOptions {
                refcount_bits: Some(32),
                compression_type: CompressionType::Zstd,
                ..Default::default()
            },
        ),
    ];
    for (i, (name, o)) in variants.iter().enumerate() {
        let img = dir.join(format!("{name}.qcow2"));
        disk::create(&img, Format::Qcow2, SIZE, o).expect("create");
        assert_qemu_check_clean(&img);
        let mut expected = vec![0u8; SIZE as usize];

        random_ops(&img, &rw(), &mut expected, 0x1234 + i as u64, 150);

        assert_qemu_check_clean(&img);
        assert_qemu_compare(
            &img,
            &write_raw(&dir.join(format!("{name}.raw")), &expected),
        );
    }
}

#[test]
fn test_qcow2_write_over_backing_chain_copies_on_write() {
    let dir = scratch("write-cow");
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    common::qemu_img_create(&base, "qcow2", "8M");
    qemu_io(
        &base,
        "qcow2",
        &["write -P 0x61 0 8M", "write -P 0x62 1M 64k"],
    );
    let o = CreateOptions {
        backing_file: Some("base.qcow2".into()),
        backing_format: Some(Format::Qcow2),
        ..Default::default()
    };
    disk::create(&top, Format::Qcow2, SIZE, &o).expect("create top");
    let mut expected = qemu_to_raw(&base, "qcow2");
    let opts = OpenOptions {
        allow_backing: true,
        ..Default::default()
    };

    random_ops(&top, &opts, &mut expected, 77, 120);

    assert_qemu_check_clean(&top);
    assert_qemu_compare(&top, &write_raw(&dir.join("top.raw"), &expected));
    assert_qemu_check_clean(&base);
}

#[test]
fn test_qcow2_write_v2_over_backing_zeroes_read_back_zero() {
    let dir = scratch("write-v2-backing");
    let base = dir.join("base.raw");
    let top = dir.join("top.qcow2");
    std::fs::write(&base, vec![0x77u8; SIZE as usize]).expect("base");
    let o = CreateOptions {
        version: Qcow2Version::V2,
        backing_file: Some("base.raw".into()),
        backing_format: Some(Format::Raw),
        ..Default::default()
    };
    disk::create(&top, Format::Qcow2, SIZE, &o).expect("create");
    let mut expected = vec![0x77u8; SIZE as usize];
    {
        let mut d = Qcow2::open(
            &top,
            &OpenOptions {
                allow_backing: true,
                ..Default::default()
            },
        )
        .expect("open");
        d.write_zeroes(65536, 3 * 65536 + 100).expect("zero");
        d.flush().expect("flush");
    }
    expected[65536..65536 + 3 * 65536 + 100].fill(0);

    assert_qemu_check_clean(&top);
    assert_qemu_compare(&top, &write_raw(&dir.join("top.raw"), &expected));
}

#[test]
fn test_qcow2_write_compressed_zlib_zstd_qemu_reads_same() {
    let dir = scratch("write-compressed");
    for ctype in [CompressionType::Zlib, CompressionType::Zstd] {
        let img = dir.join(format!("{ctype:?}.qcow2"));
        let o = CreateOptions {
            compression_type: ctype,
            ..Default::default()
        };
        disk::create(&img, Format::Qcow2, 2 << 20, &o).expect("create");
        let mut expected = vec![0u8; 2 << 20];
        {
            let mut d = Qcow2::open(&img, &rw()).expect("open");
            for c in 0..32u64 {
                let data: Vec<u8> = (0..65536u64).map(|j| ((j / (c + 3)) % 7) as u8).collect();
                d.write_compressed(c * 65536, &data)
                    .expect("compressed write");
                expected[(c * 65536) as usize..((c + 1) * 65536) as usize].copy_from_slice(&data);
            }
            // Overwrite a compressed cluster partially: copy-on-write from compressed data.
            d.write_at(&[0xee; 100], 5 * 65536 + 7).expect("write");
            expected[5 * 65536 + 7..5 * 65536 + 107].fill(0xee);
            d.flush().expect("flush");
        }

        assert_qemu_check_clean(&img);
        assert_qemu_compare(
            &img,
            &write_raw(&dir.join(format!("{ctype:?}.raw")), &expected),
        );
    }
}

#[test]
fn test_qcow2_resize_grow_l1_then_write_end_passes_check() {
    let dir = scratch("write-resize");
    let img = dir.join("r.qcow2");
    let o = CreateOptions {
        cluster_size: Some(512),
        ..Default::default()
    };
    disk::create(&img, Format::Qcow2, 1 << 20, &o).expect("create");
    let new_size = 64u64 << 20;
    {
        let mut d = Qcow2::open(&img, &rw()).expect("open");
        d.write_at(&[1u8; 5000], 1000).expect("write");
        d.resize(new_size).expect("resize");
        d.write_at(&[2u8; 5000], new_size - 5000)
            .expect("write end");
        d.flush().expect("flush");
    }
    let mut expected = vec![0u8; new_size as usize];
    expected[1000..6000].fill(1);
    expected[new_size as usize - 5000..].fill(2);

    assert_qemu_check_clean(&img);
    assert_qemu_compare(&img, &write_raw(&dir.join("r.raw"), &expected));
}

#[test]
fn test_qcow2_write_image_with_internal_snapshot_keeps_snapshot() {
    let dir = scratch("write-snapshot");
    let img = dir.join("s.qcow2");
    let p = img.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &p, "8M"]);
    qemu_io(
        &img,
        "qcow2",
        &[
            "write -c -P 0x32 1M 64k",
            "write -P 0x31 0 1M",
            "write -P 0x31 1088k 6080k",
        ],
    );
    qemu_img(&["snapshot", "-c", "before", &p]);
    let before = qemu_to_raw(&img, "qcow2");
    let mut expected = before.clone();

    random_ops(&img, &rw(), &mut expected, 99, 100);

    assert_qemu_check_clean(&img);
    assert_qemu_compare(&img, &write_raw(&dir.join("now.raw"), &expected));
    let snap_raw = dir.join("snap.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "-l",
        "before",
        &p,
        &snap_raw.display().to_string(),
    ]);
    assert!(
        std::fs::read(&snap_raw).expect("snap raw") == before,
        "snapshot contents changed"
    );
}

#[test]
fn test_qcow2_check_leak_reported_and_repaired() {
    let dir = scratch("check-leak");
    let img = dir.join("l.qcow2");
    disk::create(&img, Format::Qcow2, 1 << 20, &CreateOptions::default()).expect("create");
    // Leak one cluster: append it and give it refcount 1 in refcount block 0.
    let mut bytes = std::fs::read(&img).expect("read");
    let rt = u64::from_be_bytes(bytes[48..56].try_into().expect("8 bytes")) as usize;
    let rb = u64::from_be_bytes(bytes[rt..rt + 8].try_into().expect("8 bytes")) as usize;
    let leaked = bytes.len().div_ceil(65536);
    bytes.resize((leaked + 1) * 65536, 0);
    bytes[rb + 2 * leaked..rb + 2 * leaked + 2].copy_from_slice(&1u16.to_be_bytes());
    std::fs::write(&img, &bytes).expect("write");

    let before = disk::check(&img, Format::Qcow2, false).expect("check");
    let repaired = disk::check(&img, Format::Qcow2, true).expect("repair");
    let after = disk::check(&img, Format::Qcow2, false).expect("recheck");

    assert_eq!(
        (before.leaks, before.corruptions),
        (1, 0),
        "{:?}",
        before.messages
    );
    assert_eq!(repaired.leaks_fixed, 1);
    assert_eq!((after.leaks, after.corruptions), (0, 0));
    assert_qemu_check_clean(&img);
}

#[test]
fn test_qcow2_check_clean_qemu_image_reports_nothing() {
    let dir = scratch("check-clean");
    let img = dir.join("c.qcow2");
    common::qemu_img_create(&img, "qcow2", "4M");
    qemu_io(&img, "qcow2", &["write -c -P 2 2M 64k", "write -P 1 0 1M"]);
    qemu_img(&["snapshot", "-c", "s", &img.display().to_string()]);

    let r = disk::check(&img, Format::Qcow2, false).expect("check");

    assert_eq!((r.leaks, r.corruptions), (0, 0), "{:?}", r.messages);
    assert!(r.allocated_clusters > 16);
}

#[test]
fn test_qcow2_write_top_of_three_deep_chain_with_zero_clusters_matches() {
    let dir = scratch("write-chain");
    let base = dir.join("base.raw");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    std::fs::write(&base, vec![0x42u8; SIZE as usize]).expect("base");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &mid.display().to_string(),
    ]);
    qemu_io(&mid, "qcow2", &["write -z 0 1M", "write -P 0x43 2M 100k"]);
    let o = CreateOptions {
        cluster_size: Some(512),
        backing_file: Some("mid.qcow2".into()),
        backing_format: Some(Format::Qcow2),
        ..Default::default()
    };
    disk::create(&top, Format::Qcow2, SIZE, &o).expect("create top");
    let mut expected = qemu_to_raw(&mid, "qcow2");
    let opts = OpenOptions {
        allow_backing: true,
        ..Default::default()
    };

    random_ops(&top, &opts, &mut expected, 4242, 100);

    assert_qemu_check_clean(&top);
    assert_qemu_compare(&top, &write_raw(&dir.join("top.raw"), &expected));
}
