//! Hostile and unusual qcow2 headers: refused with clear errors, never a panic; dirty images
//! repaired as QEMU does.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_qemu_check_clean, qemu_img, qemu_to_raw, scratch};
use disk::{ErrorKind, Format, OpenOptions, Qcow2, ReadAt};

fn qemu_image(dir: &Path, name: &str, opts: &str) -> PathBuf {
    let img = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        &img.display().to_string(),
        "1M",
    ]);
    img
}

fn patch(img: &Path, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(img).expect("read");
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(img, b).expect("write");
}

fn open_err(img: &Path) -> disk::Error {
    Qcow2::open(
        img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect_err("must be refused")
}

#[test]
fn test_qcow2_open_1k_file_claiming_64tib_l1_refused_naming_field() {
    let dir = scratch("hostile-l1");
    let img = qemu_image(&dir, "h.qcow2", "compat=1.1");
    let mut b = std::fs::read(&img).expect("read");
    b.truncate(1024);
    b[24..32].copy_from_slice(&(64u64 << 40).to_be_bytes());
    b[36..40].copy_from_slice(&(1u32 << 17).to_be_bytes());
    std::fs::write(&img, b).expect("write");

    let err = open_err(&img);

    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    assert!(err.to_string().contains("l1_table_offset"), "{err}");
    assert_eq!(err.offset(), Some(40));
}

#[test]
fn test_qcow2_open_feature_bits_refused_with_reason() {
    let dir = scratch("hostile-features");
    let cases: [(&str, u64, &str); 3] = [
        ("unknown", 1 << 20, "unknown incompatible"),
        ("datafile", 1 << 2, "external data file"),
        ("extl2", 1 << 4, "extended L2"),
    ];
    for (name, bits, why) in cases {
        let img = qemu_image(&dir, &format!("{name}.qcow2"), "compat=1.1");
        patch(&img, 72, &bits.to_be_bytes());

        let err = open_err(&img);

        assert_eq!(err.kind(), ErrorKind::Unsupported, "{name}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
}

#[test]
fn test_qcow2_open_encrypted_refused() {
    let dir = scratch("hostile-crypt");
    let img = qemu_image(&dir, "c.qcow2", "compat=1.1");
    patch(&img, 32, &1u32.to_be_bytes());

    let err = open_err(&img);

    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("encrypted"), "{err}");
}

#[test]
fn test_qcow2_open_bad_fields_invalid_format() {
    let dir = scratch("hostile-fields");
    let cases: [(&str, usize, Vec<u8>, &str); 5] = [
        (
            "cluster_bits",
            20,
            30u32.to_be_bytes().to_vec(),
            "cluster_bits",
        ),
        (
            "refcount_order",
            96,
            7u32.to_be_bytes().to_vec(),
            "refcount_order",
        ),
        (
            "nb_snapshots",
            60,
            70000u32.to_be_bytes().to_vec(),
            "nb_snapshots",
        ),
        (
            "reftable",
            56,
            100_000u32.to_be_bytes().to_vec(),
            "refcount_table_clusters",
        ),
        ("magic", 0, b"QFI\0".to_vec(), "magic"),
    ];
    for (name, at, bytes, field) in cases {
        let img = qemu_image(&dir, &format!("{name}.qcow2"), "compat=1.1");
        patch(&img, at, &bytes);

        let err = open_err(&img);

        assert_eq!(err.kind(), ErrorKind::InvalidFormat, "{name}: {err}");
        assert!(err.to_string().contains(field), "{name}: {err}");
    }
}

#[test]
fn test_qcow2_open_l2_entry_reserved_bits_corrupt_on_read() {
    let dir = scratch("hostile-l2");
    let img = dir.join("l.qcow2");
    common::qemu_img_create(&img, "qcow2", "1M");
    common::qemu_io(&img, "qcow2", &["write -P 1 0 64k"]);
    let b = std::fs::read(&img).expect("read");
    let l1 = u64::from_be_bytes(b[40..48].try_into().expect("8")) as usize;
    let l2 =
        (u64::from_be_bytes(b[l1..l1 + 8].try_into().expect("8")) & 0x00ff_ffff_ffff_fe00) as usize;
    let e = u64::from_be_bytes(b[l2..l2 + 8].try_into().expect("8")) | 0x100;
    patch(&img, l2, &e.to_be_bytes());
    let mut d = Qcow2::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("open");

    let err = d.read_at(&mut [0u8; 16], 0).expect_err("corrupt entry");

    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_qcow2_open_dirty_lazy_refcounts_image_repaired_and_cleared() {
    let dir = scratch("dirty");
    let img = dir.join("d.qcow2");
    let p = img.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &p,
        "4M",
    ]);
    // qemu-io aborts without closing: refcounts are stale and the dirty bit stays set.
    let _ = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 7 0 1M",
            "-c",
            "write -P 8 2M 64k",
            "-c",
            "abort",
            &p,
        ])
        .output()
        .expect("qemu-io");
    let before = disk::info(&img, Format::Qcow2)
        .expect("info")
        .qcow2
        .expect("qcow2");
    let (code, _) = common::qemu_img_status(&["check", "-f", "qcow2", &p]);

    drop(Qcow2::open(&img, &OpenOptions::default()).expect("rw open repairs"));
    let after = disk::info(&img, Format::Qcow2)
        .expect("info")
        .qcow2
        .expect("qcow2");

    assert!(before.dirty, "qemu-io abort should leave the image dirty");
    assert_ne!(code, 0, "stale refcounts expected before repair");
    assert!(!after.dirty);
    assert!(
        after.lazy_refcounts,
        "the user's lazy_refcounts flag is kept"
    );
    assert_qemu_check_clean(&img);
    let raw = qemu_to_raw(&img, "qcow2");
    assert!(raw[..1 << 20].iter().all(|&x| x == 7));
    assert!(raw[2 << 20..(2 << 20) + 65536].iter().all(|&x| x == 8));
}
