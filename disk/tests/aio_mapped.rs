//! The qcow2 io_uring engine (`SharedDisk::engine_inline` on a qcow2 image): reads of
//! allocated clusters go through io_uring on the image file, the rest inline; results are
//! checked against qemu-img's view of images qemu-io wrote.

mod common;

use std::path::{Path, PathBuf};

use common::{collect, iovecs, qemu_io, qemu_to_raw, scratch, Rng};
use disk::aio::Request;
use disk::{Format, OpenOptions, SharedDisk};

const K: u64 = 1024;

/// A 1 MiB qcow2 image (64 KiB clusters) with, by cluster: 0-2 data, 3-4 unallocated, 5
/// data, 6 unallocated, 7 zero, 8-9 unallocated, 10 compressed, the rest unallocated.
fn mixed_image(dir: &Path) -> PathBuf {
    let img = dir.join("mixed.qcow2");
    common::qemu_img_create(&img, "qcow2", "1M");
    qemu_io(
        &img,
        "qcow2",
        &[
            "write -P 0x11 0 192k",
            "write -P 0x22 320k 64k",
            "write -z 448k 64k",
            "write -c -P 0x33 640k 64k",
            "write -P 0x44 130k 3k",
        ],
    );
    img
}

fn open(img: &Path, read_only: bool) -> SharedDisk {
    let o = OpenOptions {
        read_only,
        ..Default::default()
    };
    SharedDisk::open(img, Format::Qcow2, &o).expect("open")
}

#[test]
fn test_mapped_qcow2_many_reads_in_flight_match_qemu_img() {
    let dir = scratch("mapped-reads");
    let img = mixed_image(&dir);
    let expected = qemu_to_raw(&img, "qcow2");
    let disk = open(&img, true);
    let mut e = disk.engine_inline(32).expect("engine");
    let mut rng = Rng(7);
    // Reads of every shape: inside one cluster, across data clusters, across data and
    // unallocated, zero and compressed clusters; 40 in flight at once.
    let spans: Vec<(u64, usize)> = (0..40)
        .map(|_| {
            let len = 512 * (1 + rng.below(400)) as usize;
            let off = 512 * rng.below((1 << 20) / 512 - len as u64 / 512 + 1);
            (off, len)
        })
        .collect();
    let mut bufs: Vec<Vec<Vec<u8>>> = spans
        .iter()
        .map(|&(_, len)| vec![vec![0xee; len / 2], vec![0xee; len - len / 2]])
        .collect();
    let iovs: Vec<Vec<libc::iovec>> = bufs.iter_mut().map(|b| iovecs(b)).collect();

    for (i, iov) in iovs.iter().enumerate() {
        // SAFETY: `bufs` outlives the completions collected below.
        let r = unsafe { Request::read(spans[i].0, iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    let done = collect(e.as_mut(), spans.len());

    assert_eq!(e.name(), "qcow2-io_uring");
    common::assert_tokens_ok(&done, spans.len() as u64);
    for (i, &(off, len)) in spans.iter().enumerate() {
        let got = bufs[i].concat();
        assert!(
            got[..] == expected[off as usize..off as usize + len],
            "read {i} ({len} bytes at {off:#x}) differs"
        );
    }
}

#[test]
fn test_mapped_qcow2_allocated_read_goes_to_kernel_unallocated_runs_inline() {
    let dir = scratch("mapped-split");
    let img = mixed_image(&dir);
    let mut e = open(&img, true).engine_inline(8).expect("engine");
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    let ia = iovecs(std::slice::from_mut(&mut a));
    let ib = iovecs(std::slice::from_mut(&mut b));

    // SAFETY: `a` and `b` outlive the completions collected below.
    let allocated = unsafe { Request::read(64 * K, &ia) }.expect("request");
    e.submit(allocated, 0).expect("submit");
    let before_commit = e.has_completions();
    // SAFETY: as above.
    let unallocated = unsafe { Request::read(200 * K, &ib) }.expect("request");
    e.submit(unallocated, 1).expect("submit");
    let inline_done = e.has_completions();
    let done = collect(e.as_mut(), 2);

    // The allocated read waits for the ring (nothing done before the commit); the
    // unallocated one was answered inside submit.
    assert!(!before_commit);
    assert!(inline_done);
    common::assert_tokens_ok(&done, 2);
    assert_eq!(a, vec![0x11; 4096]);
    assert_eq!(b, vec![0u8; 4096]);
}

#[test]
fn test_mapped_qcow2_writes_then_reads_round_trip_and_pass_qemu_check() {
    let dir = scratch("mapped-write");
    let img = mixed_image(&dir);
    let mut expected = qemu_to_raw(&img, "qcow2");
    let disk = open(&img, false);
    let mut e = disk.engine_inline(8).expect("engine");
    // A write over data, unallocated and zero clusters; then reads of it (now allocated:
    // through the ring) with a second write in between that overlaps nothing in flight.
    let mut w = vec![vec![0x5au8; 300 * K as usize]];
    let wi = iovecs(&mut w);
    let mut w2 = vec![vec![0xa5u8; 8 * K as usize]];
    let w2i = iovecs(&mut w2);
    let mut back = vec![vec![0u8; 300 * K as usize]];
    let bi = iovecs(&mut back);

    // SAFETY: every buffer outlives the completions collected below.
    let r = unsafe { Request::write(250 * K, &wi) }.expect("request");
    e.submit(r, 0).expect("submit");
    collect(e.as_mut(), 1);
    // SAFETY: as above.
    let r = unsafe { Request::read(250 * K, &bi) }.expect("request");
    e.submit(r, 1).expect("submit");
    // SAFETY: as above.
    let r = unsafe { Request::write(900 * K, &w2i) }.expect("request");
    e.submit(r, 2).expect("submit");
    let done = collect(e.as_mut(), 2);
    e.submit(Request::flush(), 3).expect("flush");
    let flushed = collect(e.as_mut(), 1);
    drop(e);
    drop(disk);

    assert!(done.iter().chain(&flushed).all(|c| c.result.is_ok()));
    assert_eq!(back[0], w[0]);
    expected[250 * K as usize..550 * K as usize].fill(0x5a);
    expected[900 * K as usize..908 * K as usize].fill(0xa5);
    let exp = dir.join("expected.raw");
    std::fs::write(&exp, &expected).expect("expected");
    common::assert_qemu_compare(&img, &exp);
    common::assert_qemu_check_clean(&img);
}
