//! Vectored (scatter-gather) reads and writes on every format, against images made by
//! qemu-img/qemu-io and checked with qemu-img.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};

use common::{
    assert_qemu_check_clean, assert_qemu_compare_fmt, qemu_img, qemu_img_status, qemu_io,
    qemu_to_raw, random_bytes, random_split, scratch, split_into, Rng,
};
use disk::{Disk, ErrorKind, Format, OpenOptions};

const MIB: u64 = 1 << 20;

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        allow_backing: true,
        ..Default::default()
    }
}

fn rw() -> OpenOptions {
    OpenOptions {
        allow_backing: true,
        ..Default::default()
    }
}

/// Reads the whole disk in random chunks, each scattered over random buffers.
fn read_all_vectored(d: &mut dyn Disk, rng: &mut Rng) -> Vec<u8> {
    let size = d.size() as usize;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = (1 + rng.below(300_000) as usize).min(size - out.len());
        let mut bufs: Vec<Vec<u8>> = random_split(rng, n, 9)
            .into_iter()
            .map(|l| vec![0xeeu8; l])
            .collect();
        let mut iov: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        d.read_vectored_at(&mut iov, out.len() as u64)
            .expect("vectored read");
        for b in &bufs {
            out.extend_from_slice(b);
        }
    }
    out
}

/// Random vectored writes, mirrored into `expected`.
fn write_random_vectored(d: &mut dyn Disk, expected: &mut [u8], rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let off = rng.below(expected.len() as u64) as usize;
        let len = (1 + rng.below(200_000) as usize).min(expected.len() - off);
        let data = random_bytes(rng, len);
        let bufs = split_into(&data, &random_split(rng, len, 8));
        let iov: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        d.write_vectored_at(&iov, off as u64)
            .expect("vectored write");
        expected[off..off + len].copy_from_slice(&data);
    }
}

fn pattern_raw(path: &Path, size: usize) {
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = ((i / 333) % 251) as u8;
    }
    data[size / 2..size / 2 + 300_000].fill(0);
    std::fs::write(path, &data).expect("write raw");
}

/// base.qcow2 and overlay.qcow2 (4 KiB clusters, backing base), both written by qemu-io.
fn qcow2_with_backing(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    common::qemu_img_create(&base, "qcow2", "8M");
    qemu_io(
        &base,
        "qcow2",
        &[
            "write -P 0x11 0 3M",
            "write -P 0x22 5M 1M",
            "write -P 0x33 7340000 9000",
        ],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &overlay.display().to_string(),
    ]);
    qemu_io(
        &overlay,
        "qcow2",
        &[
            "write -P 0x44 1000 70000",
            "write -P 0x55 2M 512k",
            "write -z 5100k 64k",
            "write -P 0x66 8380000 8608",
        ],
    );
    overlay
}

#[test]
fn test_vectored_read_qcow2_with_backing_matches_qemu() {
    let dir = scratch("vec-read-backing");
    let overlay = qcow2_with_backing(&dir);
    let expected = qemu_to_raw(&overlay, "qcow2");
    let mut d = disk::open(&overlay, Format::Qcow2, &ro()).expect("open");

    let got = read_all_vectored(d.as_mut(), &mut Rng(11));

    assert!(
        got == expected,
        "vectored read differs from qemu-img convert"
    );
}

#[test]
fn test_vectored_read_qcow2_compressed_zlib_zstd_matches_qemu() {
    let dir = scratch("vec-read-compressed");
    let raw = dir.join("src.raw");
    pattern_raw(&raw, 3 << 20);
    for ctype in ["zlib", "zstd"] {
        let img = dir.join(format!("{ctype}.qcow2"));
        let opts = format!("compression_type={ctype}");
        qemu_img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &opts,
            &raw.display().to_string(),
            &img.display().to_string(),
        ]);
        let expected = std::fs::read(&raw).expect("raw");
        let mut d = disk::open(&img, Format::Qcow2, &ro()).expect("open");

        let got = read_all_vectored(d.as_mut(), &mut Rng(12));

        assert!(
            got == expected,
            "compressed ({ctype}) vectored read differs"
        );
    }
}

#[test]
fn test_vectored_read_vmdk_subformats_match_qemu() {
    let dir = scratch("vec-read-vmdk");
    let raw = dir.join("src.raw");
    pattern_raw(&raw, 3 << 20);
    let expected = std::fs::read(&raw).expect("raw");
    for sub in [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
    ] {
        let img = dir.join(format!("{sub}.vmdk"));
        let opts = format!("subformat={sub}");
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &opts,
            &raw.display().to_string(),
            &img.display().to_string(),
        ]);
        let mut d = disk::open(&img, Format::Vmdk, &ro()).expect("open");

        let got = read_all_vectored(d.as_mut(), &mut Rng(13));

        assert!(got == expected, "vmdk {sub} vectored read differs");
    }
}

#[test]
fn test_vectored_write_qcow2_with_backing_passes_qemu_check_and_compare() {
    let dir = scratch("vec-write-qcow2");
    let overlay = qcow2_with_backing(&dir);
    let mut expected = qemu_to_raw(&overlay, "qcow2");
    let mut rng = Rng(21);
    {
        let mut d = disk::open(&overlay, Format::Qcow2, &rw()).expect("open");

        write_random_vectored(d.as_mut(), &mut expected, &mut rng, 80);
        d.flush().expect("flush");
        let back = read_all_vectored(d.as_mut(), &mut rng);

        assert!(back == expected, "read-back differs before reopening");
    }
    let exp_path = dir.join("expected.raw");
    std::fs::write(&exp_path, &expected).expect("expected");

    assert_qemu_check_clean(&overlay);
    assert_qemu_compare_fmt(&overlay, "qcow2", &exp_path);
}

#[test]
fn test_vectored_write_vmdk_sparse_and_flat_pass_qemu_check_and_compare() {
    let dir = scratch("vec-write-vmdk");
    for sub in ["monolithicSparse", "monolithicFlat"] {
        let img = dir.join(format!("{sub}.vmdk"));
        let opts = format!("subformat={sub}");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &opts,
            &img.display().to_string(),
            "6M",
        ]);
        qemu_io(&img, "vmdk", &["write -P 0x77 100k 300k"]);
        let mut expected = qemu_to_raw(&img, "vmdk");
        let mut rng = Rng(22);
        {
            let mut d = disk::open(&img, Format::Vmdk, &rw()).expect("open");

            write_random_vectored(d.as_mut(), &mut expected, &mut rng, 40);
            d.flush().expect("flush");
        }
        let exp_path = dir.join(format!("{sub}.expected.raw"));
        std::fs::write(&exp_path, &expected).expect("expected");

        let (code, text) = qemu_img_status(&["check", "-f", "vmdk", &img.display().to_string()]);
        assert_eq!(code, 0, "qemu-img check {sub}: {text}");
        assert_qemu_compare_fmt(&img, "vmdk", &exp_path);
    }
}

#[test]
fn test_vectored_write_raw_matches_file() {
    let dir = scratch("vec-write-raw");
    let img = dir.join("r.raw");
    disk::create(&img, Format::Raw, 5 * MIB + 77, &Default::default()).expect("create");
    let mut expected = vec![0u8; (5 * MIB + 77) as usize];
    let mut rng = Rng(23);
    let mut d = disk::open(&img, Format::Raw, &rw()).expect("open");

    write_random_vectored(d.as_mut(), &mut expected, &mut rng, 60);
    let back = read_all_vectored(d.as_mut(), &mut rng);

    assert!(back == expected);
    assert!(std::fs::read(&img).expect("file") == expected);
}

#[test]
fn test_vectored_past_end_out_of_bounds_and_nothing_written() {
    let dir = scratch("vec-oob");
    let cases = [
        (Format::Raw, "raw"),
        (Format::Qcow2, "qcow2"),
        (Format::Vmdk, "vmdk"),
    ];
    for (format, name) in cases {
        let img = dir.join(format!("o.{name}"));
        qemu_img(&["create", "-q", "-f", name, &img.display().to_string(), "1M"]);
        let mut d = disk::open(&img, format, &rw()).expect("open");
        let size = d.size();
        let (a, b) = ([0xabu8; 100], [0xcdu8; 100]);

        let werr = d
            .write_vectored_at(&[IoSlice::new(&a), IoSlice::new(&b)], size - 100)
            .expect_err("write past end");
        let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
        let rerr = d
            .read_vectored_at(
                &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
                size - 100,
            )
            .expect_err("read past end");
        let huge = d
            .read_vectored_at(&mut [IoSliceMut::new(&mut x)], u64::MAX - 10)
            .expect_err("offset overflow");
        let mut tail = [1u8; 100];
        d.read_at(&mut tail, size - 100).expect("tail");

        assert_eq!(werr.kind(), ErrorKind::OutOfBounds, "{name}");
        assert_eq!(rerr.kind(), ErrorKind::OutOfBounds, "{name}");
        assert_eq!(huge.kind(), ErrorKind::OutOfBounds, "{name}");
        assert_eq!(tail, [0u8; 100], "{name}: a refused write changed data");
    }
}

/// `qemu-img map` entries covering `offset`: (zero, has host offset).
fn qemu_map_at(img: &Path, offset: u64) -> (bool, bool) {
    let out = qemu_img(&[
        "map",
        "-f",
        "qcow2",
        "--output=json",
        &img.display().to_string(),
    ]);
    for line in out.lines() {
        let field = |k: &str| -> Option<u64> {
            let at = line.find(&format!("\"{k}\": "))? + k.len() + 4;
            line[at..].split([',', '}']).next()?.trim().parse().ok()
        };
        let (Some(start), Some(len)) = (field("start"), field("length")) else {
            continue;
        };
        if (start..start + len).contains(&offset) {
            return (line.contains("\"zero\": true"), line.contains("\"offset\""));
        }
    }
    panic!("qemu-img map has no entry for {offset}: {out}");
}

#[test]
fn test_qcow2_write_zeroes_without_unmap_keeps_cluster_allocated() {
    let dir = scratch("vec-zero-keep");
    let img = dir.join("z.qcow2");
    common::qemu_img_create(&img, "qcow2", "4M");
    qemu_io(&img, "qcow2", &["write -P 0x99 0 4M"]);
    {
        let mut d = disk::open(&img, Format::Qcow2, &rw()).expect("open");

        d.write_zeroes_unmap(0, MIB, false).expect("zero keep");
        d.write_zeroes_unmap(2 * MIB, MIB, true)
            .expect("zero unmap");
        let mut buf = vec![1u8; 3 * MIB as usize];
        d.read_at(&mut buf, 0).expect("read");
        d.flush().expect("flush");

        assert!(buf[..MIB as usize].iter().all(|&b| b == 0));
        assert!(buf[2 * MIB as usize..].iter().all(|&b| b == 0));
    }

    assert_eq!(
        qemu_map_at(&img, 4096),
        (true, true),
        "kept: zero with a host cluster"
    );
    assert_eq!(
        qemu_map_at(&img, 2 * MIB + 4096),
        (true, false),
        "unmapped: no host cluster"
    );
    assert_qemu_check_clean(&img);
}

#[test]
fn test_raw_write_zeroes_without_unmap_keeps_range_allocated() {
    let dir = scratch("vec-zero-raw");
    let img = dir.join("z.raw");
    std::fs::write(&img, vec![0x5au8; 4 * MIB as usize]).expect("file");
    let d = disk::RawDisk::open(&img, &rw()).expect("open");

    d.write_zeroes_unmap(0, MIB, false).expect("keep");
    d.write_zeroes_unmap(2 * MIB, MIB, true).expect("unmap");
    let mut buf = vec![1u8; 4 * MIB as usize];
    d.read_at(&mut buf, 0).expect("read");
    let kept = d.allocation_map(0, MIB).expect("map");
    let punched = d.allocation_map(2 * MIB, MIB).expect("map");

    assert!(buf[..MIB as usize].iter().all(|&b| b == 0));
    assert!(buf[2 * MIB as usize..3 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
    assert!(buf[3 * MIB as usize..].iter().all(|&b| b == 0x5a));
    assert!(kept.iter().all(|e| e.allocated), "{kept:?}");
    assert!(punched.iter().all(|e| !e.allocated), "{punched:?}");
}
