//! Raw images: sparse map, hole punching, O_DIRECT and resize, checked against qemu-img.

mod common;

use common::{qemu_img, scratch, Rng};
use disk::raw::Extent;
use disk::{Format, OpenOptions, RawDisk};

const MIB: u64 = 1 << 20;

#[test]
fn test_raw_allocation_map_reports_written_data_and_holes() {
    let dir = scratch("raw-map");
    let img = dir.join("a.raw");
    disk::create(&img, Format::Raw, 8 * MIB, &Default::default()).expect("create");
    let d = RawDisk::open(&img, &OpenOptions::default()).expect("open");
    d.write_at(&[1u8; 4096], 2 * MIB).expect("write");
    d.flush().expect("flush");

    let map = d.allocation_map(0, 8 * MIB).expect("map");

    assert_eq!(
        map,
        vec![
            Extent {
                offset: 0,
                len: 2 * MIB,
                allocated: false
            },
            Extent {
                offset: 2 * MIB,
                len: 4096,
                allocated: true
            },
            Extent {
                offset: 2 * MIB + 4096,
                len: 6 * MIB - 4096,
                allocated: false
            },
        ]
    );
}

#[test]
fn test_raw_write_zeroes_punches_hole_and_reads_zero() {
    let dir = scratch("raw-zero");
    let img = dir.join("z.raw");
    std::fs::write(&img, vec![0xffu8; 4 * MIB as usize]).expect("file");
    let d = RawDisk::open(&img, &OpenOptions::default()).expect("open");

    d.write_zeroes(MIB, MIB).expect("zero");
    d.discard(3 * MIB, 4096).expect("discard");
    let mut buf = vec![1u8; MIB as usize];
    d.read_at(&mut buf, MIB).expect("read");
    let map = d.allocation_map(MIB, MIB).expect("map");

    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(
        map,
        vec![Extent {
            offset: MIB,
            len: MIB,
            allocated: false
        }]
    );
    assert_eq!(d.size(), 4 * MIB);
}

#[test]
fn test_raw_direct_unaligned_io_matches_buffered() {
    let dir = scratch("raw-direct");
    let img = dir.join("d.raw");
    // A size that is not a multiple of the direct-I/O alignment.
    disk::create(&img, Format::Raw, 3 * MIB + 1000, &Default::default()).expect("create");
    let mut expected = vec![0u8; (3 * MIB + 1000) as usize];
    let opts = OpenOptions {
        direct: true,
        ..Default::default()
    };
    let d = RawDisk::open(&img, &opts).expect("open O_DIRECT");
    let mut rng = Rng(5);
    for _ in 0..50 {
        let off = rng.below(expected.len() as u64);
        let len = (1 + rng.below(20000)).min(expected.len() as u64 - off);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        d.write_at(&data, off).expect("write");
        expected[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    d.flush().expect("flush");

    let mut back = vec![0u8; expected.len()];
    d.read_at(&mut back, 0).expect("read");

    assert!(back == expected);
    assert!(std::fs::read(&img).expect("file") == expected);
}

#[test]
fn test_raw_resize_grow_qemu_sees_new_size() {
    let dir = scratch("raw-resize");
    let img = dir.join("r.raw");
    disk::create(&img, Format::Raw, MIB, &Default::default()).expect("create");
    let mut d = disk::open(&img, Format::Raw, &OpenOptions::default()).expect("open");

    d.resize(5 * MIB).expect("resize");
    let out = qemu_img(&[
        "info",
        "-f",
        "raw",
        "--output=json",
        &img.display().to_string(),
    ]);

    assert_eq!(d.size(), 5 * MIB);
    assert!(out.contains("\"virtual-size\": 5242880"), "{out}");
}

#[test]
fn test_raw_read_past_end_out_of_bounds() {
    let dir = scratch("raw-oob");
    let img = dir.join("o.raw");
    disk::create(&img, Format::Raw, 4096, &Default::default()).expect("create");
    let d = RawDisk::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("open");

    let err = d.read_at(&mut [0u8; 2], 4095).expect_err("out of bounds");
    let werr = d.write_at(&[0u8; 1], 0).expect_err("read-only");

    assert_eq!(err.kind(), disk::ErrorKind::OutOfBounds);
    assert_eq!(werr.kind(), disk::ErrorKind::Unsupported);
}

#[test]
fn test_raw_try_clone_own_fd_sees_same_data() {
    let dir = scratch("raw-clone");
    let img = dir.join("c.raw");
    disk::create(&img, Format::Raw, MIB, &Default::default()).expect("create");
    let a = RawDisk::open(&img, &OpenOptions::default()).expect("open");

    let b = a.try_clone().expect("clone");
    b.write_at(&[0x3cu8; 512], 4096)
        .expect("write through clone");
    drop(b);
    let mut back = [0u8; 512];
    a.read_at(&mut back, 4096).expect("read through original");

    assert_eq!(back, [0x3cu8; 512]);
}

#[test]
fn test_raw_shared_by_threads_disjoint_writes_all_land() {
    let dir = scratch("raw-threads");
    let img = dir.join("t.raw");
    disk::create(&img, Format::Raw, 4 * MIB, &Default::default()).expect("create");
    let d = std::sync::Arc::new(RawDisk::open(&img, &OpenOptions::default()).expect("open"));

    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let off = u64::from(t) * MIB + i * 16384;
                    d.write_at(&[t + 1; 16384], off).expect("write");
                }
                d.flush().expect("flush");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let file = std::fs::read(&img).expect("file");

    for t in 0..4usize {
        let region = &file[t * MIB as usize..(t + 1) * MIB as usize];
        assert!(
            region.iter().all(|&b| b == t as u8 + 1),
            "thread {t}'s writes"
        );
    }
}
