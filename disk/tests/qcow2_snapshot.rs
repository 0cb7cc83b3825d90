//! Internal snapshots made, applied and deleted by this crate, checked with qemu-img; and
//! snapshots made by qemu-img, applied and deleted by this crate.

mod common;

use std::path::Path;

use common::{
    assert_qemu_check_clean, assert_qemu_compare, qemu_img, qemu_io, qemu_to_raw, scratch, Rng,
};
use disk::{CreateOptions, Format, OpenOptions, Qcow2, ReadAt, WriteAt};

const SIZE: u64 = 4 << 20;

fn scribble(d: &mut Qcow2, expected: &mut [u8], seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..60 {
        let off = rng.below(SIZE);
        let len = (1 + rng.below(70_000)).min(SIZE - off);
        let b = rng.next() as u8;
        d.write_at(&vec![b; len as usize], off).expect("write");
        expected[off as usize..(off + len) as usize].fill(b);
    }
    d.flush().expect("flush");
}

fn snapshot_raw(img: &Path, name: &str) -> Vec<u8> {
    let out = img.with_extension(format!("{name}.raw"));
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "-l",
        name,
        &img.display().to_string(),
        &out.display().to_string(),
    ]);
    std::fs::read(out).expect("snapshot raw")
}

#[test]
fn test_qcow2_snapshot_create_then_write_qemu_sees_both_versions() {
    let dir = scratch("snap-create");
    for (tag, o) in [
        ("v3", CreateOptions::default()),
        (
            "v2-512",
            CreateOptions {
                version: disk::Qcow2Version::V2,
                cluster_size: Some(512),
                ..Default::default()
            },
        ),
        (
            "rc64",
            CreateOptions {
                refcount_bits: Some(64),
                cluster_size: Some(4096),
                ..Default::default()
            },
        ),
    ] {
        let img = dir.join(format!("{tag}.qcow2"));
        disk::create(&img, Format::Qcow2, SIZE, &o).expect("create");
        let mut d = Qcow2::open(&img, &OpenOptions::default()).expect("open");
        let mut expected = vec![0u8; SIZE as usize];
        scribble(&mut d, &mut expected, 1);
        let at_snap = expected.clone();

        let info = d.snapshot_create("first").expect("snapshot");
        scribble(&mut d, &mut expected, 2);
        d.write_compressed(0, &vec![9u8; o.cluster_size.unwrap_or(65536) as usize])
            .expect("compressed");
        expected[..o.cluster_size.unwrap_or(65536) as usize].fill(9);
        drop(d);

        assert_eq!(info.id, "1");
        assert_qemu_check_clean(&img);
        let raw = dir.join(format!("{tag}.raw"));
        std::fs::write(&raw, &expected).expect("raw");
        assert_qemu_compare(&img, &raw);
        assert!(
            snapshot_raw(&img, "first") == at_snap,
            "{tag}: snapshot contents differ"
        );
        let list = qemu_img(&["snapshot", "-l", &img.display().to_string()]);
        assert!(list.contains("first"), "{list}");
    }
}

#[test]
fn test_qcow2_snapshot_apply_qemu_snapshot_restores_contents() {
    let dir = scratch("snap-apply");
    let img = dir.join("a.qcow2");
    let p = img.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &p,
        "4M",
    ]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 1 0 1M", "write -c -P 2 2M 4k", "write -z 3M 64k"],
    );
    qemu_img(&["snapshot", "-c", "s1", &p]);
    let at_snap = qemu_to_raw(&img, "qcow2");
    qemu_io(&img, "qcow2", &["write -P 3 512k 1M", "write -P 4 2M 8k"]);
    let mut d = Qcow2::open(&img, &OpenOptions::default()).expect("open");

    d.snapshot_apply("s1").expect("apply");
    let mut now = vec![0u8; SIZE as usize];
    d.read_at(&mut now, 0).expect("read");
    d.write_at(&[7u8; 10000], 100).expect("write after apply");
    d.flush().expect("flush");
    drop(d);

    assert!(now == at_snap, "applied contents differ");
    assert_qemu_check_clean(&img);
    assert!(
        snapshot_raw(&img, "s1") == at_snap,
        "snapshot changed by writes after apply"
    );
}

#[test]
fn test_qcow2_snapshot_delete_frees_clusters_check_clean() {
    let dir = scratch("snap-delete");
    let img = dir.join("d.qcow2");
    let p = img.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &p,
        "4M",
    ]);
    qemu_io(&img, "qcow2", &["write -P 1 0 2M", "write -c -P 2 3M 4k"]);
    qemu_img(&["snapshot", "-c", "q1", &p]);
    qemu_io(&img, "qcow2", &["write -P 3 0 1M"]);
    let expected = qemu_to_raw(&img, "qcow2");
    let mut d = Qcow2::open(&img, &OpenOptions::default()).expect("open");
    d.snapshot_create("ours").expect("create");
    let mut mirror = expected.clone();
    scribble(&mut d, &mut mirror, 5);

    d.snapshot_delete("q1").expect("delete qemu's");
    d.snapshot_delete("ours").expect("delete ours");
    let left = d.snapshots().expect("list");
    d.write_at(&[8u8; 5000], 4000).expect("write");
    mirror[4000..9000].fill(8);
    d.flush().expect("flush");
    drop(d);

    assert!(left.is_empty());
    assert_qemu_check_clean(&img);
    let raw = dir.join("d.raw");
    std::fs::write(&raw, &mirror).expect("raw");
    assert_qemu_compare(&img, &raw);
    let r = disk::check(&img, Format::Qcow2, false).expect("our check");
    assert_eq!((r.leaks, r.corruptions), (0, 0), "{:?}", r.messages);
}

#[test]
fn test_qcow2_snapshot_unknown_name_is_error() {
    let dir = scratch("snap-unknown");
    let img = dir.join("u.qcow2");
    disk::create(&img, Format::Qcow2, SIZE, &CreateOptions::default()).expect("create");
    let mut d = Qcow2::open(&img, &OpenOptions::default()).expect("open");

    let err = d.snapshot_apply("nope").expect_err("unknown");

    assert!(err.to_string().contains("nope"), "{err}");
}
