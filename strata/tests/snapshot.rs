//! Snapshots (issue 12): a paused VM saved with `vm.snapshot` and brought back with
//! `strata run --restore` or `vm.restore` continues exactly where it was (the counter guest's
//! numbers, the virtio guest's disk loop and its serial stream, nothing lost or repeated; the
//! disk checked with qemu-img); ten clones of one snapshot run at once, each on its own qcow2
//! overlay; damaged snapshots get a one-line error and no VM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::api::ApiVmm;
use common::{kvm_available, require, scratch, strata, strata_bin, HANG_GUARD};

/// Slots of the blk-loop workload (64 KiB each) and its number of writes.
const SLOTS: u64 = 32;
const LOOPS: u64 = 600;
const CHUNK_SECTORS: u64 = 128;

/// The numbers after `prefix` on each complete line of `out`.
fn numbers(out: &str, prefix: &str) -> Vec<u64> {
    let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Waits until `file` holds a line `prefix N` with N above `above`; returns N.
fn wait_number(file: &Path, prefix: &str, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let out = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(&n) = numbers(&out, prefix).last().filter(|&&n| n > above) {
            return n;
        }
        assert!(start.elapsed() < HANG_GUARD, "no `{prefix}` above {above}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Pauses `vmm`, snapshots it to `dir`, shuts it down; returns its whole output.
fn snapshot_and_stop(vmm: ApiVmm, dir: &Path) -> String {
    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);
    let body = format!(r#"{{"destination_url":"file://{}"}}"#, dir.display());
    let a = vmm.api("PUT", "vm.snapshot", Some(&body));
    assert_eq!(a.status, 204, "{a:?}");
    let end = vmm.shutdown();
    assert_eq!(end.status, Some(0), "{end:?}");
    end.stdout
}

/// `strata run --restore SPEC` in a child, its output in `dir`.
fn spawn_restore(spec: &str, dir: &Path) -> Child {
    std::fs::create_dir_all(dir).expect("dir");
    Command::new(strata_bin())
        .args(["run", "--restore", spec])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr"))
        .spawn()
        .expect("spawn strata")
}

fn wait_child(mut child: Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code();
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            return child.wait().expect("wait").code();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn assert_consecutive(got: &[u64], what: &str) {
    let want: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, want.as_slice(), "{what}: not consecutive");
}

fn counter_snapshot_restores(test: &str, memory: &str, extra: &[&str]) {
    let kernel = test_guests::counter().to_str().expect("utf8").to_string();
    let mut args = vec![
        "--kernel",
        &kernel,
        "--cmdline",
        "every=20000",
        "--memory",
        "size=64M",
    ];
    args.extend_from_slice(extra);
    let vmm = ApiVmm::start(test, &args);
    let seen = wait_number(&vmm.dir.join("stdout"), "count ", 20);
    let snap = vmm.dir.join("snap");
    let before = snapshot_and_stop(vmm, &snap);

    let out = snap.parent().expect("dir").join("restored");
    let spec = format!(
        "source_url=file://{},resume=on,memory={memory}",
        snap.display()
    );
    let child = spawn_restore(&spec, &out);
    let last = wait_number(&out.join("stdout"), "count ", seen + 200);
    testkit::terminate(&child);
    let status = wait_child(child);

    assert_eq!(status, Some(143));
    let after = std::fs::read_to_string(out.join("stdout")).expect("stdout");
    // The source's last line may end mid-way: the restored guest finishes it.
    let whole = format!("{before}{after}");
    let got = numbers(&whole, "count ");
    assert_consecutive(&got, "counter across the snapshot");
    assert!(got.len() as u64 >= last);
}

#[test]
fn test_snapshot_counter_restored_mmap_continues_without_loss_or_repeat() {
    if !kvm_available() {
        return;
    }
    counter_snapshot_restores("snap-counter-mmap", "mmap", &[]);
}

#[test]
fn test_snapshot_counter_restored_uffd_continues_without_loss_or_repeat() {
    if !kvm_available() {
        return;
    }
    counter_snapshot_restores("snap-counter-uffd", "uffd", &[]);
}

#[test]
fn test_snapshot_counter_with_pci_devices_restored_continues_without_loss_or_repeat() {
    if !kvm_available() {
        return;
    }
    // The PCI root, a transitional function (rng) and a modern-only one (vsock) in the
    // snapshot; the guest counts without driving them.
    let dir = scratch("snap-counter-pci-sock");
    let vsock = format!("cid=5,socket={}", dir.join("v.sock").display());
    counter_snapshot_restores(
        "snap-counter-pci",
        "mmap",
        &[
            "--transport",
            "pci",
            "--rng",
            "src=/dev/urandom",
            "--vsock",
            &vsock,
        ],
    );
}

/// The raw image the blk-loop workload leaves after `LOOPS` writes.
fn expected_disk(path: &Path, size: u64) {
    let mut img = vec![0u8; size as usize];
    for i in (LOOPS - SLOTS + 1)..=LOOPS {
        let sector = ((i - 1) % SLOTS) * CHUNK_SECTORS;
        let bytes = test_guests::pattern_bytes(i as u32, sector, CHUNK_SECTORS);
        let at = (sector * 512) as usize;
        img[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    std::fs::write(path, img).expect("write expected image");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new(require("/usr/bin/qemu-img", "qemu-utils"))
        .args(args)
        .output()
        .expect("qemu-img")
}

fn assert_disk(disk: &Path, expected: &Path) {
    let check = qemu_img(&["check", "-f", "qcow2", disk.to_str().expect("utf8")]);
    assert!(check.status.success(), "{check:?}");
    let cmp = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        disk.to_str().expect("utf8"),
        expected.to_str().expect("utf8"),
    ]);
    assert!(cmp.status.success(), "{cmp:?}");
}

/// Boots the virtio guest's blk-loop on a fresh qcow2 disk, snapshots it mid-way; returns
/// the scratch directory, the snapshot, the disk and the source's output.
fn blk_loop_snapshot(test: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    blk_loop_snapshot_over(test, "mmio")
}

/// [`blk_loop_snapshot`] with the guest's `transport=` (mmio, pci or pci-legacy).
fn blk_loop_snapshot_over(test: &str, transport: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let dir = scratch(test);
    let disk = dir.join("disk.qcow2");
    let made = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        disk.to_str().expect("utf8"),
        "4M",
    ]);
    assert!(made.status.success(), "{made:?}");
    let kernel = test_guests::virtio().to_str().expect("utf8").to_string();
    let cmdline = format!("transport={transport} op=blk-loop count={LOOPS} slots={SLOTS}");
    let vm_transport = if transport == "mmio" { "mmio" } else { "pci" };
    let disk_opt = format!("path={},format=qcow2", disk.display());
    // The rng and the console are active too (the guest starts their drivers): their
    // quiescing and reactivation run as well.
    let console = format!("file={}", dir.join("console.out").display());
    let vmm = ApiVmm::start_at(
        &dir,
        &dir.join("api.sock"),
        &[
            "--kernel",
            &kernel,
            "--cmdline",
            &cmdline,
            "--memory",
            "size=64M",
            "--disk",
            &disk_opt,
            "--rng",
            "src=/dev/urandom",
            "--console",
            &console,
            "--transport",
            vm_transport,
        ],
    );
    wait_number(&vmm.dir.join("stdout"), "blk0: loop ", 50);
    let out = std::fs::read_to_string(vmm.dir.join("stdout")).expect("stdout");
    assert!(
        out.contains(" rng\n") && out.contains(" console\n"),
        "{out}"
    );
    let snap = dir.join("snap");
    let before = snapshot_and_stop(vmm, &snap);
    let done = numbers(&before, "blk0: loop ");
    assert!(
        done.last().is_some_and(|&n| n < LOOPS),
        "the workload finished before the snapshot"
    );
    (dir, snap, disk, before)
}

#[test]
fn test_snapshot_blk_loop_restored_finishes_with_disk_and_serial_intact() {
    if !kvm_available() {
        return;
    }
    blk_loop_restores("snap-blk", "mmio");
}

#[test]
fn test_snapshot_blk_loop_over_pci_restored_finishes_with_disk_and_serial_intact() {
    if !kvm_available() {
        return;
    }
    blk_loop_restores("snap-blk-pci", "pci");
}

#[test]
fn test_snapshot_blk_loop_over_pci_legacy_restored_finishes_with_disk_and_serial_intact() {
    if !kvm_available() {
        return;
    }
    blk_loop_restores("snap-blk-pci-legacy", "pci-legacy");
}

/// The blk-loop workload snapshotted mid-way over `transport` and restored: every loop once,
/// in order, and the disk what the guest wrote.
fn blk_loop_restores(test: &str, transport: &str) {
    let (dir, snap, disk, before) = blk_loop_snapshot_over(test, transport);

    let out = dir.join("restored");
    let spec = format!("source_url=file://{},resume=on", snap.display());
    let status = wait_child(spawn_restore(&spec, &out));

    let after = std::fs::read_to_string(out.join("stdout")).expect("stdout");
    assert_eq!(status, Some(0), "{after}");
    let got = numbers(&format!("{before}{after}"), "blk0: loop ");
    assert_consecutive(&got, "blk-loop across the snapshot");
    assert_eq!(got.len() as u64, LOOPS);
    let expected = dir.join("expected.raw");
    expected_disk(&expected, 4 << 20);
    assert_disk(&disk, &expected);
}

#[test]
fn test_snapshot_ten_clones_run_at_once_on_their_own_overlays() {
    if !kvm_available() {
        return;
    }
    let (dir, snap, disk, before) = blk_loop_snapshot("snap-clones");
    let base_before = std::fs::read(&disk).expect("disk");

    let children: Vec<(PathBuf, Child)> = (0..10)
        .map(|i| {
            let out = dir.join(format!("clone{i}"));
            let spec = format!(
                "source_url=file://{},resume=on,overlay_dir={}",
                snap.display(),
                out.join("overlays").display()
            );
            let child = spawn_restore(&spec, &out);
            (out, child)
        })
        .collect();
    let results: Vec<(PathBuf, Option<i32>)> = children
        .into_iter()
        .map(|(out, child)| (out, wait_child(child)))
        .collect();

    let expected = dir.join("expected.raw");
    expected_disk(&expected, 4 << 20);
    for (out, status) in results {
        let after = std::fs::read_to_string(out.join("stdout")).expect("stdout");
        assert_eq!(status, Some(0), "{}: {after}", out.display());
        let got = numbers(&format!("{before}{after}"), "blk0: loop ");
        assert_consecutive(&got, &out.display().to_string());
        assert_eq!(got.len() as u64, LOOPS);
        let overlay = out.join("overlays").join("blk0.qcow2");
        let info = qemu_img(&["info", overlay.to_str().expect("utf8")]);
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        assert!(
            info.contains(&format!("backing file: {}", disk.display())),
            "{info}"
        );
        assert_disk(&overlay, &expected);
    }
    assert!(
        std::fs::read(&disk).expect("disk") == base_before,
        "a clone wrote to the snapshot's disk"
    );
}

#[test]
fn test_snapshot_api_running_vm_refused_and_restore_over_existing_vm_refused() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::counter().to_str().expect("utf8").to_string();
    let vmm = ApiVmm::start(
        "snap-api-states",
        &["--kernel", &kernel, "--memory", "size=64M"],
    );
    let body = format!(r#"{{"destination_url":"file://{}/s"}}"#, vmm.dir.display());

    let running = vmm.api("PUT", "vm.snapshot", Some(&body));
    let restore = vmm.api(
        "PUT",
        "vm.restore",
        Some(&format!(
            r#"{{"source_url":"file://{}/s"}}"#,
            vmm.dir.display()
        )),
    );
    let no_body = vmm.api("PUT", "vm.snapshot", None);
    let bad_url = {
        assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);
        vmm.api(
            "PUT",
            "vm.snapshot",
            Some(r#"{"destination_url":"http://x/y"}"#),
        )
    };

    assert_eq!(running.status, 405, "{running:?}");
    assert!(running.body.contains("it is Running"), "{}", running.body);
    assert_eq!(restore.status, 405, "{restore:?}");
    assert_eq!(no_body.status, 400, "{no_body:?}");
    assert_eq!(bad_url.status, 400, "{bad_url:?}");
    assert!(bad_url.body.contains("file:///"), "{}", bad_url.body);
    // The scratch directory holds the VMM's output and socket: never written into.
    let occupied = format!(r#"{{"destination_url":"file://{}"}}"#, vmm.dir.display());
    let occupied = vmm.api("PUT", "vm.snapshot", Some(&occupied));
    assert_eq!(occupied.status, 400, "{occupied:?}");
    assert!(
        occupied.body.contains("not an empty directory"),
        "{}",
        occupied.body
    );
    assert_eq!(vmm.shutdown().status, Some(0));
}

#[test]
fn test_snapshot_api_restore_comes_back_paused_then_resumes() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::counter().to_str().expect("utf8").to_string();
    let vmm = ApiVmm::start(
        "snap-api-restore-src",
        &[
            "--kernel",
            &kernel,
            "--cmdline",
            "every=20000",
            "--memory",
            "size=64M",
        ],
    );
    let seen = wait_number(&vmm.dir.join("stdout"), "count ", 10);
    let snap = vmm.dir.join("snap");
    let before = snapshot_and_stop(vmm, &snap);
    let target = ApiVmm::start("snap-api-restore-dst", &[]);

    let body = format!(r#"{{"source_url":"file://{}"}}"#, snap.display());
    let restored = target.api("PUT", "vm.restore", Some(&body));
    let paused_state = target.state();
    let tx = target.counter("serial0", "tx_bytes");
    let tx_again = target.counter("serial0", "tx_bytes");
    let resumed = target.api("PUT", "vm.resume", None);
    wait_number(&target.dir.join("stdout"), "count ", seen + 100);
    let end = target.shutdown();

    assert_eq!(restored.status, 204, "{restored:?}");
    assert_eq!(paused_state, "Paused");
    assert_eq!(
        (tx, tx_again),
        (0, 0),
        "a restored VM must not run before vm.resume"
    );
    assert_eq!(resumed.status, 204);
    let got = numbers(&format!("{before}{}", end.stdout), "count ");
    assert_consecutive(&got, "counter across vm.restore");
}

/// Something done to a copy of a snapshot.
type Damage = Box<dyn Fn(&Path)>;

/// Takes one small snapshot of the counter guest for the bad-input tests.
fn small_snapshot(test: &str) -> PathBuf {
    let kernel = test_guests::counter().to_str().expect("utf8").to_string();
    let vmm = ApiVmm::start(test, &["--kernel", &kernel, "--memory", "size=32M"]);
    wait_number(&vmm.dir.join("stdout"), "count ", 1);
    let snap = vmm.dir.join("snap");
    snapshot_and_stop(vmm, &snap);
    snap
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for f in ["state.json", "memory"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

#[test]
fn test_snapshot_damaged_state_or_memory_gets_one_line_error_and_no_vm() {
    if !kvm_available() {
        return;
    }
    let snap = small_snapshot("snap-bad");
    let state = std::fs::read(snap.join("state.json")).expect("state");
    let root = snap.parent().expect("dir").to_path_buf();
    let mut cases: Vec<(&str, Damage, &str)> = Vec::new();
    let s = state.clone();
    cases.push((
        "truncated",
        Box::new(move |d| std::fs::write(d.join("state.json"), &s[..s.len() / 2]).unwrap()),
        "truncated state file",
    ));
    let s = state.clone();
    cases.push((
        "corrupted",
        Box::new(move |d| {
            let mut b = s.clone();
            let at = b.len() - 10;
            b[at] ^= 0x20;
            std::fs::write(d.join("state.json"), b).unwrap()
        }),
        "checksum",
    ));
    let s = state.clone();
    cases.push((
        "version",
        Box::new(move |d| {
            let mut b = s.clone();
            b[8] = 99;
            std::fs::write(d.join("state.json"), b).unwrap()
        }),
        "unsupported snapshot format version 99",
    ));
    cases.push((
        "memory-size",
        Box::new(|d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory"))
                .unwrap();
            f.set_len(4096).unwrap();
        }),
        "the snapshot's memory is",
    ));
    cases.push((
        "missing",
        Box::new(|d| std::fs::remove_file(d.join("state.json")).unwrap()),
        "unable to read the state file",
    ));

    for (name, damage, want) in cases {
        let dir = root.join(name);
        copy_snapshot(&snap, &dir);
        damage(&dir);
        let spec = format!("source_url=file://{},resume=on", dir.display());

        let run = strata(&["run", "--restore", &spec]);

        assert_eq!(run.status, Some(1), "{name}: {run:?}");
        assert_eq!(run.stdout, "", "{name}: a VM ran");
        let err = run.stderr.trim_end();
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
}

#[test]
fn test_snapshot_disk_changed_since_snapshot_refused() {
    if !kvm_available() {
        return;
    }
    let (_dir, snap, disk, _) = blk_loop_snapshot("snap-disk-size");
    let grown = qemu_img(&[
        "resize",
        "-q",
        "-f",
        "qcow2",
        disk.to_str().expect("utf8"),
        "8M",
    ]);
    assert!(grown.status.success(), "{grown:?}");

    let spec = format!("source_url=file://{}", snap.display());
    let run = strata(&["run", "--restore", &spec]);

    assert_eq!(run.status, Some(1), "{run:?}");
    let err = run.stderr.trim_end();
    assert!(err.contains("does not match the snapshot"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn test_snapshot_restore_with_other_vm_options_refused() {
    let run = strata(&["run", "--restore", "source_url=file:///x", "--kernel", "k"]);

    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("no other VM option"), "{}", run.stderr);
}
