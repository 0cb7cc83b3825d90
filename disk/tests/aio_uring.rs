//! The io_uring engine on raw images, buffered and O_DIRECT: many requests in flight,
//! completions matched to tokens, results checked against the file and qemu-img.

mod common;

use std::path::Path;

use common::{
    assert_tokens_ok, collect, iovecs, qemu_img_status, random_bytes, random_split, scratch,
    Placed, Rng,
};
use disk::aio::{Engine, Request, RingMode, UringEngine};
use disk::{ErrorKind, Format, OpenOptions, SharedDisk};

const MIB: u64 = 1 << 20;
const REGION: u64 = 64 << 10;

fn open(img: &Path, direct: bool, read_only: bool) -> SharedDisk {
    let o = OpenOptions {
        direct,
        read_only,
        ..Default::default()
    };
    SharedDisk::open(img, Format::Raw, &o).expect("open")
}

fn raw_image(dir: &Path, size: u64) -> std::path::PathBuf {
    let img = dir.join("a.raw");
    disk::create(&img, Format::Raw, size, &Default::default()).expect("create");
    img
}

fn readable_now(e: &dyn Engine) -> bool {
    readable_within(e, 0)
}

/// Whether the engine's notifier becomes readable within `secs` seconds.
fn readable_within(e: &dyn Engine, secs: i64) -> bool {
    let fd = e.notifier();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&ts)).expect("poll") > 0
}

#[test]
fn test_uring_many_in_flight_writes_and_reads_tokens_matched() {
    let dir = scratch("uring-many");
    let n = 200u64;
    let img = raw_image(&dir, n * REGION);
    let disk = open(&img, false, false);
    // Depth 16: the ring holds 32 at most, so most of the 200 wait in the engine's backlog.
    let mut e = UringEngine::new(disk.clone(), 16).expect("engine");
    let mut rng = Rng(31);
    let mut expected = vec![0u8; (n * REGION) as usize];
    let mut writes: Vec<(Vec<Vec<u8>>, Vec<libc::iovec>)> = Vec::new();
    let mut spans = Vec::new();
    for i in 0..n {
        let len = 1 + rng.below(REGION) as usize;
        let off = i * REGION + rng.below(REGION - len as u64 + 1);
        let data = random_bytes(&mut rng, len);
        let mut bufs = common::split_into(&data, &random_split(&mut rng, len, 6));
        let iov = iovecs(&mut bufs);
        expected[off as usize..off as usize + len].copy_from_slice(&data);
        spans.push((off, len));
        writes.push((bufs, iov));
    }

    for (i, (_, iov)) in writes.iter().enumerate() {
        let (off, _) = spans[i];
        // SAFETY: the buffers live in `writes` until every completion is collected below.
        let r = unsafe { Request::write(off, iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    let done = collect(&mut e, n as usize);
    assert_tokens_ok(&done, n);
    assert_eq!(e.in_flight(), 0);

    let mut reads: Vec<(Vec<Vec<u8>>, Vec<libc::iovec>)> = spans
        .iter()
        .map(|&(_, len)| {
            let mut bufs: Vec<Vec<u8>> = random_split(&mut rng, len, 5)
                .into_iter()
                .map(|l| vec![0u8; l])
                .collect();
            let iov = iovecs(&mut bufs);
            (bufs, iov)
        })
        .collect();
    for (i, (_, iov)) in reads.iter_mut().enumerate().rev() {
        // SAFETY: the buffers live in `reads` until every completion is collected below.
        let r = unsafe { Request::read(spans[i].0, iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    let done = collect(&mut e, n as usize);

    assert_tokens_ok(&done, n);
    for (i, (bufs, _)) in reads.iter().enumerate() {
        let (off, len) = spans[i];
        let got: Vec<u8> = bufs.concat();
        assert!(
            got == expected[off as usize..off as usize + len],
            "read {i} differs"
        );
    }
    drop(e);
    assert!(std::fs::read(&img).expect("file") == expected);
    let exp = dir.join("expected.raw");
    std::fs::write(&exp, &expected).expect("expected");
    let (code, text) = qemu_img_status(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &img.display().to_string(),
        &exp.display().to_string(),
    ]);
    assert_eq!(code, 0, "qemu-img compare: {text}");
}

/// One O_DIRECT request of the test below: its disk range and its buffers.
struct DirectIo {
    off: u64,
    bufs: Vec<Placed>,
    iov: Vec<libc::iovec>,
}

/// Requests in three shapes (by `i % 3`): aligned buffers (straight to the kernel),
/// misaligned buffers at an aligned offset (bounce buffer), misaligned offset and length
/// (synchronous read-modify-write). Each stays inside its own 64 KiB region.
fn direct_requests(rng: &mut Rng, n: u64, fill: bool) -> Vec<DirectIo> {
    (0..n)
        .map(|i| {
            let (off, lens, misalign) = match i % 3 {
                0 => (i * REGION + 8192, vec![4096, 8192, 4096], 0),
                1 => (i * REGION + 4096, vec![4096 * 3], 1 + (i as usize % 7)),
                _ => (i * REGION + 777, vec![1000, 3333], 0),
            };
            let mut bufs: Vec<Placed> = lens.iter().map(|&l| Placed::new(l, misalign)).collect();
            if fill {
                for b in &mut bufs {
                    let data = random_bytes(rng, b.as_slice().len());
                    b.as_mut_slice().copy_from_slice(&data);
                }
            }
            let iov = bufs.iter_mut().map(|b| b.iovec()).collect();
            DirectIo { off, bufs, iov }
        })
        .collect()
}

#[test]
fn test_uring_direct_aligned_bounced_and_unaligned_requests_round_trip() {
    let dir = scratch("uring-direct");
    let n = 60u64;
    let img = raw_image(&dir, n * REGION + 1000);
    let disk = open(&img, true, false);
    let mut e = UringEngine::new(disk, 32).expect("engine");
    let caps = e.capabilities();
    // The three shapes below need buffers at odd addresses to be misaligned for O_DIRECT.
    assert!(caps.direct && caps.buffer_alignment >= 2, "{caps:?}");
    let mut rng = Rng(32);
    let writes = direct_requests(&mut rng, n, true);
    let mut expected = vec![0u8; (n * REGION + 1000) as usize];
    for w in &writes {
        let data: Vec<u8> = w.bufs.iter().flat_map(|b| b.as_slice().to_vec()).collect();
        expected[w.off as usize..w.off as usize + data.len()].copy_from_slice(&data);
    }

    for (i, w) in writes.iter().enumerate() {
        // SAFETY: `writes` outlives the collection of every completion below.
        let r = unsafe { Request::write(w.off, &w.iov) }.expect("request");
        e.submit(r, i as u64).expect("submit");
    }
    assert_tokens_ok(&collect(&mut e, n as usize), n);
    let mut reads = direct_requests(&mut rng, n, false);
    for (i, r) in reads.iter_mut().enumerate() {
        // SAFETY: `reads` outlives the collection of every completion below.
        let req = unsafe { Request::read(r.off, &r.iov) }.expect("request");
        e.submit(req, i as u64).expect("submit");
    }
    let flush_token = n;
    e.submit(Request::flush(), flush_token).expect("flush");
    let done = collect(&mut e, n as usize + 1);

    assert_tokens_ok(&done, n + 1);
    for (i, r) in reads.iter().enumerate() {
        let got: Vec<u8> = r.bufs.iter().flat_map(|b| b.as_slice().to_vec()).collect();
        let want = &expected[r.off as usize..r.off as usize + got.len()];
        assert!(got == want, "O_DIRECT read {i} (shape {}) differs", i % 3);
    }
    drop(e);
    assert!(std::fs::read(&img).expect("file") == expected);
}

#[test]
fn test_uring_direct_request_reaches_kernel_without_commit() {
    // O_DIRECT requests enter the kernel in `submit` (a batch entered at once is plugged:
    // the device idles until the last request is prepared); buffered ones wait for commit.
    let dir = scratch("uring-eager");
    let img = raw_image(&dir, MIB);
    std::fs::write(&img, vec![0x5au8; MIB as usize]).expect("fill");
    let mut direct = UringEngine::new(open(&img, true, true), 4).expect("engine");
    let mut buf = Placed::new(4096, 0);
    let iov = [buf.iovec()];

    // SAFETY: `buf` outlives the completion collected below.
    let r = unsafe { Request::read(8192, &iov) }.expect("request");
    direct.submit(r, 3).expect("submit");
    let started = readable_within(&direct, 10);
    let mut out = Vec::new();
    direct.completions(&mut out);

    assert!(started, "the O_DIRECT read did not finish without a commit");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, 3);
    assert!(out[0].result.is_ok());
    assert!(buf.as_slice().iter().all(|&b| b == 0x5a));
}

#[test]
fn test_uring_discard_write_zeroes_flush_complete_and_read_zero() {
    let dir = scratch("uring-zero");
    let img = dir.join("z.raw");
    std::fs::write(&img, vec![0x42u8; 4 * MIB as usize]).expect("file");
    let disk = open(&img, false, false);
    let mut e = UringEngine::new(disk.clone(), 8).expect("engine");

    e.submit(Request::discard(0, MIB), 1).expect("discard");
    e.submit(Request::write_zeroes(MIB, MIB, true), 2)
        .expect("zeroes unmap");
    e.submit(Request::write_zeroes(2 * MIB, MIB, false), 3)
        .expect("zeroes keep");
    e.submit(Request::flush(), 0).expect("flush");
    let done = collect(&mut e, 4);
    let raw = disk::RawDisk::open(&img, &OpenOptions::default()).expect("reopen");
    let mut buf = vec![1u8; 4 * MIB as usize];
    raw.read_at(&mut buf, 0).expect("read");

    assert_tokens_ok(&done, 4);
    assert!(buf[MIB as usize..3 * MIB as usize].iter().all(|&b| b == 0));
    assert!(buf[3 * MIB as usize..].iter().all(|&b| b == 0x42));
    assert!(raw
        .allocation_map(MIB, MIB)
        .expect("map")
        .iter()
        .all(|x| !x.allocated));
    assert!(raw
        .allocation_map(2 * MIB, MIB)
        .expect("map")
        .iter()
        .all(|x| x.allocated));
}

#[test]
fn test_uring_out_of_range_and_read_only_refused_without_completion() {
    let dir = scratch("uring-refuse");
    let img = raw_image(&dir, MIB);
    let mut e = UringEngine::new(open(&img, false, true), 4).expect("engine");
    let mut buf = vec![0u8; 4096];
    let iov = iovecs(std::slice::from_mut(&mut buf));

    // SAFETY: refused requests never touch the buffer; it outlives them anyway.
    let past = unsafe { Request::read(MIB - 100, &iov) }.expect("request");
    let past_err = e.submit(past, 1).expect_err("past end");
    // SAFETY: as above.
    let write = unsafe { Request::write(0, &iov) }.expect("request");
    let ro_err = e.submit(write, 2).expect_err("read-only");
    // SAFETY: as above.
    let wrap = unsafe { Request::read(u64::MAX - 10, &iov) }.expect("request");
    let wrap_err = e.submit(wrap, 3).expect_err("wrap");
    let mut out = Vec::new();
    e.completions(&mut out);

    assert_eq!(past_err.kind(), ErrorKind::OutOfBounds);
    assert_eq!(ro_err.kind(), ErrorKind::Unsupported);
    assert_eq!(wrap_err.kind(), ErrorKind::OutOfBounds);
    assert_eq!(e.in_flight(), 0);
    assert!(out.is_empty());
    assert!(
        !readable_now(&e),
        "refused requests must not signal the notifier"
    );
}

#[test]
fn test_uring_notifier_readable_only_while_completions_wait() {
    let dir = scratch("uring-notify");
    let img = raw_image(&dir, MIB);
    let mut e = UringEngine::new(open(&img, false, false), 4).expect("engine");
    let mut buf = vec![7u8; 4096];
    let iov = iovecs(std::slice::from_mut(&mut buf));
    let idle = readable_now(&e);

    // SAFETY: `buf` outlives the completion collected below.
    let r = unsafe { Request::read(4096, &iov) }.expect("request");
    e.submit(r, 9).expect("submit");
    e.wait().expect("wait");
    let ready = readable_now(&e);
    let mut out = Vec::new();
    e.completions(&mut out);
    let after = readable_now(&e);

    assert!(!idle && ready && !after);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, 9);
    assert!(out[0].result.is_ok());
    assert_eq!(buf, vec![0u8; 4096]);
}

#[test]
fn test_shared_disk_engine_raw_is_io_uring_qcow2_is_sync() {
    let dir = scratch("engine-pick");
    let img = raw_image(&dir, MIB);
    let q = dir.join("a.qcow2");
    common::qemu_img_create(&q, "qcow2", "1M");
    let qd = SharedDisk::open(&q, Format::Qcow2, &OpenOptions::default()).expect("open");

    let raw_engine = open(&img, false, false).engine(8).expect("engine");
    let qcow2_engine = qd.engine(8).expect("engine");

    assert_eq!(raw_engine.name(), "io_uring");
    assert_eq!(qcow2_engine.name(), "sync-worker");
}

/// Writes `fill` at `off` through `e` and waits for the completion on this thread.
fn write_one(e: &mut UringEngine, off: u64, fill: u8, token: u64) -> Vec<u8> {
    let mut buf = vec![fill; 4096];
    let iov = iovecs(std::slice::from_mut(&mut buf));
    // SAFETY: `buf` outlives the completion collected before returning.
    let r = unsafe { Request::write(off, &iov) }.expect("request");
    e.submit(r, token).expect("submit");
    let done = collect(e, 1);
    assert_eq!(done[0].token, token);
    assert!(done[0].result.is_ok());
    buf
}

#[test]
fn test_uring_new_picks_deferred_where_kernel_has_it_else_plain() {
    let dir = scratch("uring-mode");
    let img = raw_image(&dir, MIB);
    let disk = open(&img, false, false);

    let deferred = UringEngine::with_mode(disk.clone(), 8, RingMode::Deferred);
    let plain = UringEngine::with_mode(disk.clone(), 8, RingMode::Plain).expect("plain ring");
    let picked = UringEngine::new(disk, 8).expect("engine");

    match deferred {
        Ok(d) => {
            assert_eq!(d.mode(), RingMode::Deferred);
            assert_eq!(picked.mode(), RingMode::Deferred);
        }
        // An older kernel: the fallback is a plain ring, never an error.
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert_eq!(picked.mode(), RingMode::Plain);
        }
    }
    assert_eq!(plain.mode(), RingMode::Plain);
}

#[test]
fn test_uring_both_modes_write_then_read_back_same_data() {
    let dir = scratch("uring-modes-rw");
    let img = raw_image(&dir, MIB);
    let disk = open(&img, false, false);
    let modes: Vec<UringEngine> = [RingMode::Plain, RingMode::Deferred]
        .into_iter()
        .filter_map(|m| UringEngine::with_mode(disk.clone(), 8, m).ok())
        .collect();
    assert!(!modes.is_empty());

    for (i, mut e) in modes.into_iter().enumerate() {
        let off = i as u64 * 8192;
        let wrote = write_one(&mut e, off, 0x40 + i as u8, 1);
        let mut back = vec![0u8; 4096];
        let iov = iovecs(std::slice::from_mut(&mut back));
        // SAFETY: `back` outlives the completion collected below.
        let r = unsafe { Request::read(off, &iov) }.expect("request");
        e.submit(r, 2).expect("submit");
        let done = collect(&mut e, 1);

        assert_eq!(done.len(), 1);
        assert_eq!(done[0].token, 2);
        assert!(done[0].result.is_ok());
        assert_eq!(back, wrote, "mode {:?}", e.mode());
    }
}

#[test]
fn test_uring_engine_handed_between_threads_after_settle_keeps_serving() {
    let dir = scratch("uring-threads");
    let img = raw_image(&dir, MIB);
    let mut e = UringEngine::new(open(&img, false, false), 8).expect("engine");
    let mut buf = vec![0x11u8; 4096];
    let iov = iovecs(std::slice::from_mut(&mut buf));

    // A worker thread submits and settles without collecting; this thread then collects
    // the completion, submits on its own (a new issuer for a Deferred ring), and a second
    // worker does the same again.
    // SAFETY: `buf` outlives the completion collected after the thread ends.
    let r = unsafe { Request::write(0, &iov) }.expect("request");
    let mut e = std::thread::scope(|s| {
        s.spawn(|| {
            e.submit(r, 5).expect("submit");
            e.commit().expect("commit");
            e.settle().expect("settle");
            e
        })
        .join()
        .expect("thread")
    });
    let mut first = Vec::new();
    e.completions(&mut first);
    let here = write_one(&mut e, 4096, 0x22, 6);
    let there = std::thread::scope(|s| {
        s.spawn(|| write_one(&mut e, 8192, 0x33, 7))
            .join()
            .expect("thread")
    });
    drop(e);

    assert_eq!(first.len(), 1);
    assert_eq!(first[0].token, 5);
    assert!(first[0].result.is_ok());
    let file = std::fs::read(&img).expect("file");
    assert_eq!(&file[..4096], &buf[..]);
    assert_eq!(&file[4096..8192], &here[..]);
    assert_eq!(&file[8192..12288], &there[..]);
}
