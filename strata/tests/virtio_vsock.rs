//! virtio-vsock with the hybrid Unix-socket backend, driven by the guest kit's `net` guest:
//! the host connects through the device's socket (`CONNECT <port>`, answered `OK <port>`)
//! and gets its data back from the guest's echo; the guest connects to a host port and gets
//! the host listener's answer; over virtio-mmio and virtio-pci; hostile packets (a bad
//! length, an unknown op, a flood past the credit) are dropped or reset and counted; bad
//! `--vsock` options fail with one line naming the option.

mod common;
mod net_common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::api::ApiVmm;
use common::{kvm_available, pseudo_random, scratch, strata_bin};
use net_common::{upper_server, wait_for_line, KillOnDrop};

/// A guard against hangs (Strata stops the guest and exits 124), not a speed assertion.
const TIMEOUT: &str = "240";
/// What the host sends through the guest's echo (more than one credit window).
const ECHO_BYTES: usize = 600_000;

fn spawn_strata(serial: &Path, cmdline: &str, vsock: &str, extra: &[&str]) -> Child {
    Command::new(strata_bin())
        .args(["run", "--kernel"])
        .arg(test_guests::net())
        .args(["--cmdline", cmdline, "--timeout", TIMEOUT])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(["--vsock", vsock])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata")
}

/// Connects to the device's socket, asks for guest `port`, returns the stream and the
/// `OK` line.
fn connect(socket: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(socket).expect("connect to the vsock socket");
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("CONNECT");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        assert_eq!(s.read(&mut b).expect("read OK line"), 1, "{line:?}");
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

fn both_directions(tag: &str, transport: &str) {
    let dir = scratch(tag);
    let serial = dir.join("serial.txt");
    let socket = dir.join("v.sock");
    let host_port = upper_server(&dir.join("v.sock_5000"));
    let cmdline = format!(
        "transport={transport} op=vsock-info op=vsock-echo port=1234 op=vsock-connect port=5000 text=hello-host exit=3"
    );
    let vsock = format!("cid=42,socket={}", socket.display());
    let mut child = KillOnDrop(Some(spawn_strata(
        &serial,
        &cmdline,
        &vsock,
        &["--transport", transport],
    )));
    wait_for_line(&serial, "vsock: listening on port 1234", || child.alive());
    let data = pseudo_random(ECHO_BYTES, 7);

    let (mut s, ok) = connect(&socket, 1234);
    let mut reader = s.try_clone().expect("clone");
    let echo = std::thread::spawn(move || {
        let mut got = vec![0u8; ECHO_BYTES];
        reader.read_exact(&mut got).map(|()| got)
    });
    s.write_all(&data).expect("send to the guest");
    let got = echo.join().expect("reader").expect("read the echo");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let out = child.wait_with_output();
    let guest_line = host_port.join().expect("host listener");

    let text = std::fs::read_to_string(&serial).expect("serial");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(ok, "OK 1073741824\n");
    assert!(got == data, "the echo differs from what was sent");
    assert_eq!(guest_line, "hello-host\n");
    assert!(text.contains("vsock: cid=42"), "{text}");
    assert!(
        text.contains(&format!("vsock: echoed {ECHO_BYTES} bytes on port 1234")),
        "{text}"
    );
    assert!(text.contains("vsock: host answered HELLO-HOST"), "{text}");
    assert_eq!(out.status.code(), Some(3), "{text}\n{stderr}");
    assert!(!socket.exists(), "the device's socket outlived the VM");
}

#[test]
fn test_virtio_vsock_host_and_guest_connections_over_mmio() {
    if !kvm_available() {
        return;
    }
    both_directions("vsock-mmio", "mmio");
}

#[test]
fn test_virtio_vsock_host_and_guest_connections_over_pci() {
    if !kvm_available() {
        return;
    }
    both_directions("vsock-pci", "pci");
}

#[test]
fn test_virtio_vsock_hostile_packets_dropped_reset_and_counted() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("vsock-hostile");
    let serial = dir.join("serial.txt");
    let socket = dir.join("v.sock");
    let api = dir.join("api.sock");
    // A host listener that accepts and never reads: the guest's flood piles up in the VMM.
    let listener = UnixListener::bind(dir.join("v.sock_5001")).expect("bind");
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let cmdline = "transport=mmio op=vsock-hostile port=5001 op=vsock-echo port=1 exit=3";
    let child = Command::new(strata_bin())
        .arg("run")
        .arg("--api-socket")
        .arg(&api)
        .arg("--kernel")
        .arg(test_guests::net())
        .args(["--cmdline", cmdline, "--timeout", TIMEOUT])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(["--vsock", &format!("cid=3,socket={}", socket.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strata");
    let vmm = ApiVmm {
        child,
        socket: api,
        dir: dir.clone(),
    };

    let text = wait_for_line(&serial, "vsock: listening on port 1", || true);
    let bad = vmm.counter("vsock0", "bad_packets");
    let unknown = vmm.counter("vsock0", "unknown_ops");
    let credit = vmm.counter("vsock0", "credit_violations");
    let held = holder.join().expect("holder");
    // The device still serves: the host reaches the guest's echo.
    let (mut s, _) = connect(&socket, 1);
    s.write_all(b"still-alive").expect("write");
    let mut back = [0u8; 11];
    s.read_exact(&mut back).expect("echo");
    drop(s);
    wait_for_line(&serial, "done", || true);
    let ended = vmm.shutdown();

    assert!(
        text.contains("vsock: unknown op answered with RST"),
        "{text}"
    );
    assert!(
        text.contains("vsock: flood past the credit reset after"),
        "{text}"
    );
    assert_eq!((bad, unknown, credit), (1, 1, 1));
    assert!(held.is_ok());
    assert_eq!(&back, b"still-alive");
    assert_eq!(ended.status, Some(0), "{}", ended.stderr);
}

#[test]
fn test_virtio_vsock_bad_options_fail_with_one_line_naming_vsock() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("vsock-bad");
    let run = |vsock: &str| {
        let out = Command::new(strata_bin())
            .args(["run", "--kernel"])
            .arg(test_guests::net())
            .args(["--serial", "null", "--vsock", vsock])
            .output()
            .expect("run strata");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let taken = dir.join("taken.sock");
    std::fs::write(&taken, b"").expect("create a file");

    let missing = run("cid=3,socket=/nonexistent-strata-dir/v.sock");
    let low_cid = run(&format!("cid=2,socket={}", dir.join("v.sock").display()));
    let exists = run(&format!("cid=3,socket={}", taken.display()));

    for (result, want) in [
        (missing, "invalid vsock: socket=/nonexistent-strata-dir/v.sock: directory /nonexistent-strata-dir does not exist"),
        (low_cid, "invalid vsock: cid=2 is reserved"),
        (exists, "unable to listen on the vsock socket"),
    ] {
        let (status, stderr) = result;
        assert_ne!(status, Some(0), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "expected '{want}' in: {stderr}");
    }
}
