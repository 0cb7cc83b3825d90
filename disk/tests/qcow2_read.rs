//! qcow2 images made and written by qemu-img/qemu-io read back byte-exact by this crate.

mod common;

use std::path::Path;

use common::{qemu_img, qemu_io, qemu_to_raw, scratch};
use disk::{Format, OpenOptions};

fn read_all(img: &Path, opts: &OpenOptions) -> Vec<u8> {
    let mut d = disk::open(img, Format::Qcow2, opts).expect("open");
    let mut buf = vec![0u8; d.size() as usize];
    // Odd-sized chunks exercise cluster splitting.
    let mut pos = 0usize;
    while pos < buf.len() {
        let n = (buf.len() - pos).min(77_777);
        d.read_at(&mut buf[pos..pos + n], pos as u64).expect("read");
        pos += n;
    }
    buf
}

fn make_written(dir: &Path, name: &str, opts: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    let p = img.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, &p, "8M"]);
    qemu_io(
        &img,
        "qcow2",
        &[
            "write -P 0xab 0 64k",
            "write -P 0x11 1000 3000",
            "write -P 0x22 3M 1M",
            "write -P 0x33 7M 1M",
            "write -z 3M 64k",
            "write -P 0x44 8383000 1000",
        ],
    );
    img
}

#[test]
fn test_qcow2_read_qemu_written_versions_and_cluster_sizes_match_qemu() {
    let dir = scratch("read-variants");
    let variants = [
        "compat=0.10,cluster_size=512",
        "compat=0.10,cluster_size=65536",
        "compat=1.1,cluster_size=512",
        "compat=1.1,cluster_size=2M",
        "compat=1.1,refcount_bits=1",
        "compat=1.1,refcount_bits=64,cluster_size=4096",
        "compat=1.1,lazy_refcounts=on",
    ];
    for (i, v) in variants.iter().enumerate() {
        let img = make_written(&dir, &format!("v{i}.qcow2"), v);
        let expected = qemu_to_raw(&img, "qcow2");
        let got = read_all(
            &img,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        );
        assert!(got == expected, "contents differ for {v}");
    }
}

#[test]
fn test_qcow2_read_compressed_zlib_and_zstd_match_qemu() {
    let dir = scratch("read-compressed");
    let raw = dir.join("src.raw");
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = ((i / 333) % 251) as u8;
    }
    data[(2 << 20)..].fill(0x5a);
    std::fs::write(&raw, &data).expect("write raw");
    for (ctype, cs) in [
        ("zlib", "65536"),
        ("zstd", "65536"),
        ("zlib", "512"),
        ("zstd", "2M"),
    ] {
        let img = dir.join(format!("c-{ctype}-{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ctype},cluster_size={cs}"),
            &raw.display().to_string(),
            &img.display().to_string(),
        ]);
        let got = read_all(
            &img,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        );
        assert!(got == data, "compressed {ctype}/{cs} differs");
    }
}

#[test]
fn test_qcow2_read_three_deep_backing_chain_with_zero_clusters_matches_qemu() {
    let dir = scratch("read-chain");
    let base = dir.join("base.raw");
    let mid = dir.join("mid.qcow2");
    let mid2 = dir.join("mid2.qcow2");
    let top = dir.join("top.qcow2");
    common::qemu_img_create(&base, "raw", "4M");
    qemu_io(&base, "raw", &["write -P 0x01 0 4M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &mid.display().to_string(),
    ]);
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0x02 64k 128k",
            "write -z 1M 64k",
            "write -P 0x07 1000 10",
        ],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &mid2.display().to_string(),
    ]);
    qemu_io(
        &mid2,
        "qcow2",
        &["write -P 0x03 2M 64k", "write -z 100k 8k", "write -z 3M 1M"],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid2.qcow2",
        "-F",
        "qcow2",
        &top.display().to_string(),
    ]);
    qemu_io(&top, "qcow2", &["write -P 0x04 3M 4k", "write -z 64k 64k"]);
    let expected = qemu_to_raw(&top, "qcow2");

    let opts = OpenOptions {
        read_only: true,
        allow_backing: true,
        ..Default::default()
    };
    let got = read_all(&top, &opts);

    assert!(got == expected, "chain contents differ");
}

#[test]
fn test_qcow2_open_backing_not_allowed_refused() {
    let dir = scratch("read-nobacking");
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    common::qemu_img_create(&base, "qcow2", "1M");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &top.display().to_string(),
    ]);

    let err = disk::open(&top, Format::Qcow2, &OpenOptions::default())
        .err()
        .expect("refused");

    assert_eq!(err.kind(), disk::ErrorKind::Unsupported);
    assert!(err.to_string().contains("backing"), "{err}");
}

#[test]
fn test_qcow2_open_backing_without_format_refused_unless_stated() {
    let dir = scratch("read-nofmt");
    let base = dir.join("base.raw");
    let top = dir.join("top.qcow2");
    std::fs::write(&base, vec![0x9u8; 1 << 20]).expect("base");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &top.display().to_string(),
    ]);
    // Turn the backing-format header extension into an unknown (ignored) one.
    let mut bytes = std::fs::read(&top).expect("read top");
    let at = bytes[..4096]
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&top, bytes).expect("write top");
    let mut opts = OpenOptions {
        read_only: true,
        allow_backing: true,
        ..Default::default()
    };

    let err = disk::open(&top, Format::Qcow2, &opts)
        .err()
        .expect("refused");
    opts.backing_format = Some(Format::Raw);
    let got = read_all(&top, &opts);

    assert!(err.to_string().contains("never probed"), "{err}");
    assert!(got.iter().all(|&b| b == 9));
}

#[test]
fn test_qcow2_read_internal_snapshot_image_active_layer_matches_qemu() {
    let dir = scratch("read-snap");
    let img = make_written(&dir, "s.qcow2", "compat=1.1");
    let p = img.display().to_string();
    qemu_img(&["snapshot", "-c", "snap1", &p]);
    qemu_io(&img, "qcow2", &["write -P 0x55 0 128k", "write -z 7M 64k"]);
    let expected = qemu_to_raw(&img, "qcow2");

    let got = read_all(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    );
    let info = disk::info(&img, Format::Qcow2).expect("info");

    assert!(got == expected);
    let snaps = info.qcow2.expect("qcow2 info").snapshots;
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "snap1");
}

#[test]
fn test_qcow2_info_fields_match_creation_options() {
    let dir = scratch("info");
    let img = dir.join("i.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=1.1,refcount_bits=8,lazy_refcounts=on,compression_type=zstd,cluster_size=4096",
        &img.display().to_string(),
        "5M",
    ]);

    let info = disk::info(&img, Format::Qcow2).expect("info");

    assert_eq!(info.virtual_size, 5 << 20);
    assert_eq!(info.cluster_size, Some(4096));
    let q = info.qcow2.expect("qcow2");
    assert_eq!(q.compat, "1.1");
    assert_eq!(q.refcount_bits, 8);
    assert!(q.lazy_refcounts);
    assert!(!q.dirty && !q.corrupt);
    assert_eq!(q.compression_type, disk::CompressionType::Zstd);
}
