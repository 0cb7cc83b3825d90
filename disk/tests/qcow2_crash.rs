//! Crash safety: a child process writes to a qcow2 image and is SIGKILLed mid-way; the image
//! must have no corruption (leaks allowed) and every write acknowledged by a completed flush
//! must read back intact.

mod common;

use std::path::Path;
use std::process::Command;

use common::{qemu_img_status, scratch, Rng};
use disk::{CreateOptions, Discard, Format, OpenOptions, Qcow2, ReadAt, WriteAt};

const CHILD_ENV: &str = "STRATA_QCOW2_CRASH_CHILD";
const SLOT: u64 = 6000;
const SLOTS: u64 = 4000;
const WRITES_PER_FLUSH: u64 = 17;

/// Slot order and contents of write `i` (deterministic from the seed).
fn plan(seed: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..SLOTS).collect();
    let mut rng = Rng(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

fn payload(i: u64, seed: u64) -> Vec<u8> {
    let len = 1 + (i * 7919 + seed) % SLOT;
    (0..len)
        .map(|j| (i as u8).wrapping_mul(31) ^ (j as u8) ^ 0xa5)
        .collect()
}

/// The child: writes slots in random order, flushing periodically and recording after each
/// completed flush how many writes it covers. Runs only when re-executed by the parent.
#[test]
#[ignore = "child process of test_qcow2_sigkill_during_writes_no_corruption_flushed_data_intact"]
fn test_qcow2_crash_child_process() {
    let spec = std::env::var(CHILD_ENV).expect("run by the crash test only");
    let (img, rest) = spec.split_once('|').expect("spec");
    let (progress, seed) = rest.split_once('|').expect("spec");
    let seed: u64 = seed.parse().expect("seed");
    let mut d = Qcow2::open(Path::new(img), &OpenOptions::default()).expect("child open");
    for (i, slot) in plan(seed).into_iter().enumerate() {
        let i = i as u64;
        let data = payload(i, seed);
        d.write_at(&data, slot * SLOT).expect("child write");
        if i % 11 == 5 {
            // Zero and rewrite to exercise frees across flushes.
            d.write_zeroes(slot * SLOT, data.len() as u64)
                .expect("child zero");
            d.write_at(&data, slot * SLOT).expect("child rewrite");
        }
        if (i + 1).is_multiple_of(WRITES_PER_FLUSH) {
            d.flush().expect("child flush");
            let tmp = format!("{progress}.tmp");
            std::fs::write(&tmp, (i + 1).to_string()).expect("progress");
            std::fs::rename(&tmp, progress).expect("progress rename");
        }
    }
    // Finished before the parent killed us: idle until killed.
    loop {
        std::thread::park();
    }
}

fn read_progress(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn crash_round(dir: &Path, seed: u64, kill_after: u64, cluster: u64) {
    let img = dir.join(format!("crash-{seed}.qcow2"));
    let progress = dir.join(format!("crash-{seed}.progress"));
    let o = CreateOptions {
        cluster_size: Some(cluster),
        refcount_bits: Some(4),
        ..Default::default()
    };
    disk::create(&img, Format::Qcow2, SLOT * SLOTS, &o).expect("create");
    let spec = format!("{}|{}|{seed}", img.display(), progress.display());
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "test_qcow2_crash_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    // Wait (bounded, not asserted on time) for enough completed flushes, then SIGKILL.
    for _ in 0..60_000 {
        if read_progress(&progress) >= kill_after {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    let acked = read_progress(&progress);

    let (code, text) = qemu_img_status(&["check", "-f", "qcow2", &img.display().to_string()]);
    let mut d = Qcow2::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("reopen");
    let order = plan(seed);
    let mut bad = Vec::new();
    for i in 0..acked {
        let want = payload(i, seed);
        let mut got = vec![0u8; want.len()];
        d.read_at(&mut got, order[i as usize] * SLOT)
            .expect("read back");
        if got != want {
            bad.push(i);
        }
    }

    eprintln!("seed {seed}: {acked} writes acknowledged, qemu-img check exit {code}");
    assert!(
        acked >= kill_after,
        "child made too little progress ({acked})"
    );
    assert!(
        code == 0 || code == 3,
        "qemu-img check found corruption (exit {code}): {text}"
    );
    assert!(
        bad.is_empty(),
        "acknowledged writes lost: {:?} of {acked}",
        &bad[..bad.len().min(10)]
    );
}

#[test]
fn test_qcow2_sigkill_during_writes_no_corruption_flushed_data_intact() {
    let dir = scratch("crash");
    for (seed, kill_after, cluster) in [
        (11, 17, 4096),
        (23, 170, 512),
        (37, 680, 65536),
        (41, 1360, 1024),
    ] {
        crash_round(&dir, seed, kill_after, cluster);
    }
}

#[test]
fn test_qcow2_crash_leaks_repaired_by_check() {
    let dir = scratch("crash-repair");
    crash_round(&dir, 53, 340, 4096);
    let img = dir.join("crash-53.qcow2");

    let r = disk::check(&img, Format::Qcow2, true).expect("repair");
    let after = disk::check(&img, Format::Qcow2, false).expect("recheck");
    let mut d = Qcow2::open(&img, &OpenOptions::default()).expect("open rw after repair");
    d.discard(0, SLOT).expect("discard");
    d.flush().expect("flush");
    drop(d);

    assert_eq!(r.corruptions, 0, "{:?}", r.messages);
    assert_eq!(
        (after.leaks, after.corruptions),
        (0, 0),
        "{:?}",
        after.messages
    );
    common::assert_qemu_check_clean(&img);
}
