//! The synchronous adapter (qcow2 and vmdk through the engine interface), and the promise
//! that a slow flush on one image never blocks another.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};

use common::{
    assert_qemu_check_clean, assert_qemu_compare_fmt, assert_tokens_ok, collect, iovecs, qemu_img,
    qemu_io, qemu_to_raw, random_bytes, random_split, scratch, split_into, Rng,
};
use disk::aio::{Engine, Request, SyncEngine, SyncMode};
use disk::{
    Capabilities, Discard, Disk, DiskSize, ErrorKind, Format, OpenOptions, QueryCapabilities,
    ReadAt, Resize, SharedDisk, WriteAt,
};

const REGION: u64 = 64 << 10;

fn rw_backing() -> OpenOptions {
    OpenOptions {
        allow_backing: true,
        ..Default::default()
    }
}

/// Writes `n` random pieces, one inside each 64 KiB region, through the engine; then reads
/// them all back through it and checks them. Returns the image's expected contents.
fn write_and_read_back(e: &mut dyn Engine, mut expected: Vec<u8>, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let n = expected.len() as u64 / REGION;
    let mut writes = Vec::new();
    for i in 0..n {
        let len = 1 + rng.below(REGION) as usize;
        let off = i * REGION + rng.below(REGION - len as u64 + 1);
        let data = random_bytes(&mut rng, len);
        let mut bufs = split_into(&data, &random_split(&mut rng, len, 6));
        let iov = iovecs(&mut bufs);
        expected[off as usize..off as usize + len].copy_from_slice(&data);
        writes.push((off, len, bufs, iov));
    }
    for (i, (off, _, _, iov)) in writes.iter().enumerate() {
        // SAFETY: `writes` outlives the collection of every completion below.
        let r = unsafe { Request::write(*off, iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    e.submit(Request::flush(), n).expect("flush");
    assert_tokens_ok(&collect(e, n as usize + 1), n + 1);

    let reads: Vec<(Vec<Vec<u8>>, Vec<libc::iovec>)> = writes
        .iter()
        .map(|(_, len, _, _)| {
            let mut bufs: Vec<Vec<u8>> = random_split(&mut rng, *len, 4)
                .into_iter()
                .map(|l| vec![0u8; l])
                .collect();
            let iov = iovecs(&mut bufs);
            (bufs, iov)
        })
        .collect();
    for (i, (_, iov)) in reads.iter().enumerate() {
        // SAFETY: `reads` outlives the collection of every completion below.
        let r = unsafe { Request::read(writes[i].0, iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    assert_tokens_ok(&collect(e, n as usize), n);
    for (i, (bufs, _)) in reads.iter().enumerate() {
        let (off, len) = (writes[i].0 as usize, writes[i].1);
        assert!(
            bufs.concat() == expected[off..off + len],
            "read {i} differs"
        );
    }
    expected
}

fn qcow2_overlay(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    common::qemu_img_create(&base, "qcow2", "4M");
    qemu_io(&base, "qcow2", &["write -P 0x31 0 4M"]);
    let o = "cluster_size=4096";
    let ov = overlay.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        o,
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &ov,
    ]);
    qemu_io(&overlay, "qcow2", &["write -P 0x32 1M 100k"]);
    overlay
}

#[test]
fn test_sync_worker_qcow2_with_backing_passes_qemu_check_and_compare() {
    let dir = scratch("sync-qcow2");
    let overlay = qcow2_overlay(&dir);
    let start = qemu_to_raw(&overlay, "qcow2");
    let disk = SharedDisk::open(&overlay, Format::Qcow2, &rw_backing()).expect("open");
    let mut e = SyncEngine::new(disk, SyncMode::Worker).expect("engine");

    let expected = write_and_read_back(&mut e, start, 41);
    drop(e);

    let exp = dir.join("expected.raw");
    std::fs::write(&exp, &expected).expect("expected");
    assert_qemu_check_clean(&overlay);
    assert_qemu_compare_fmt(&overlay, "qcow2", &exp);
}

#[test]
fn test_sync_inline_vmdk_round_trip_passes_qemu_compare() {
    let dir = scratch("sync-vmdk");
    let img = dir.join("a.vmdk");
    common::qemu_img_create(&img, "vmdk", "2M");
    let disk = SharedDisk::open(&img, Format::Vmdk, &OpenOptions::default()).expect("open");
    let mut e = SyncEngine::new(disk, SyncMode::Inline).expect("engine");

    let expected = write_and_read_back(&mut e, vec![0u8; 2 << 20], 42);
    let discard = e
        .submit(Request::discard(0, 4096), 99)
        .expect_err("vmdk offers no discard");
    drop(e);

    assert_eq!(discard.kind(), ErrorKind::Unsupported);
    let exp = dir.join("expected.raw");
    std::fs::write(&exp, &expected).expect("expected");
    assert_qemu_compare_fmt(&img, "vmdk", &exp);
}

#[test]
fn test_sync_qcow2_out_of_range_refused_without_completion() {
    let dir = scratch("sync-oob");
    let img = dir.join("a.qcow2");
    common::qemu_img_create(&img, "qcow2", "1M");
    let disk = SharedDisk::open(&img, Format::Qcow2, &OpenOptions::default()).expect("open");
    let mut e = SyncEngine::new(disk, SyncMode::Worker).expect("engine");
    let mut buf = vec![0u8; 8192];
    let iov = iovecs(std::slice::from_mut(&mut buf));

    // SAFETY: a refused request never touches the buffer, which outlives it anyway.
    let r = unsafe { Request::write((1 << 20) - 4096, &iov) }.expect("request");
    let err = e.submit(r, 1).expect_err("past end");
    let zeroes = e.submit(Request::write_zeroes(1 << 20, 1, true), 2);
    e.submit(Request::flush(), 3).expect("flush");
    let done = collect(&mut e, 1);

    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    assert_eq!(zeroes.expect_err("past end").kind(), ErrorKind::OutOfBounds);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, 3);
}

/// A disk whose flush announces itself and then waits to be released.
struct SlowFlush {
    started: Sender<()>,
    release: Receiver<()>,
}

impl DiskSize for SlowFlush {
    fn size(&self) -> u64 {
        1 << 20
    }
}
impl ReadAt for SlowFlush {
    fn read_at(&mut self, buf: &mut [u8], _: u64) -> disk::Result<()> {
        buf.fill(0);
        Ok(())
    }
}
impl WriteAt for SlowFlush {
    fn write_at(&mut self, _: &[u8], _: u64) -> disk::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> disk::Result<()> {
        let _ = self.started.send(());
        let _ = self.release.recv();
        Ok(())
    }
}
impl Discard for SlowFlush {
    fn discard(&mut self, _: u64, _: u64) -> disk::Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, _: u64, _: u64) -> disk::Result<()> {
        Ok(())
    }
}
impl Resize for SlowFlush {
    fn resize(&mut self, _: u64) -> disk::Result<()> {
        Ok(())
    }
}
impl QueryCapabilities for SlowFlush {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            format: Format::Raw,
            read_only: false,
            flush: true,
            discard: false,
            write_zeroes: false,
            write_zeroes_may_unmap: false,
            resize: false,
            logical_block_size: 512,
            physical_block_size: 512,
            discard_alignment: 0,
            direct: false,
            buffer_alignment: 1,
        }
    }
}
impl Disk for SlowFlush {}

#[test]
fn test_slow_flush_on_one_image_does_not_block_another() {
    let dir = scratch("sync-slow-flush");
    let (started_tx, started) = channel();
    let (release, release_rx) = channel();
    let slow = SharedDisk::from_disk(Box::new(SlowFlush {
        started: started_tx,
        release: release_rx,
    }));
    let other_img = dir.join("b.qcow2");
    common::qemu_img_create(&other_img, "qcow2", "1M");
    qemu_io(&other_img, "qcow2", &["write -P 0x5c 0 64k"]);
    let other = SharedDisk::open(&other_img, Format::Qcow2, &OpenOptions::default()).expect("open");
    let mut a = SyncEngine::new(slow.clone(), SyncMode::Worker).expect("engine a");
    let mut b = SyncEngine::new(other.clone(), SyncMode::Worker).expect("engine b");
    let mut buf = vec![0u8; 4096];
    let iov = iovecs(std::slice::from_mut(&mut buf));

    a.submit(Request::flush(), 1).expect("flush a");
    started.recv().expect("flush a started");
    // SAFETY: `buf` outlives the completion collected below.
    let r = unsafe { Request::read(0, &iov) }.expect("request");
    b.submit(r, 2).expect("read b");
    let b_done = collect(&mut b, 1);
    // Direct use of the other image from this thread is not blocked either.
    let mut direct = [0u8; 16];
    other.read_at(&mut direct, 100).expect("direct read");
    let mut a_early = Vec::new();
    a.completions(&mut a_early);
    release.send(()).expect("release");
    let a_done = collect(&mut a, 1);

    assert_eq!(b_done.len(), 1);
    assert!(b_done[0].result.is_ok());
    assert_eq!(buf, vec![0x5cu8; 4096]);
    assert_eq!(direct, [0x5cu8; 16]);
    assert!(a_early.is_empty(), "the flush was still blocked");
    assert_eq!(a_done[0].token, 1);
    // Vectored helpers of the trait default implementations stay usable on custom disks.
    let mut x = [1u8; 3];
    slow.read_vectored_at(&mut [IoSliceMut::new(&mut x)], 0)
        .expect("read");
    slow.write_vectored_at(&[IoSlice::new(&x)], 0)
        .expect("write");
    assert_eq!(x, [0u8; 3]);
}
