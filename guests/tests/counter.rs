//! Runs the Rust `counter` guest under QEMU: its `count N` lines are
//! consecutive, with a limit and across QMP stop/cont cycles (the
//! yardstick for Strata's pause/resume).
//!
//! Needs `qemu-system-x86_64`; skipped (with a message) when /dev/kvm is
//! absent.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn kernel() -> &'static str {
    test_guests::counter().to_str().expect("utf-8 path")
}

/// The numbers of the complete `count N` lines in `out`.
fn counts(out: &str) -> Vec<u64> {
    let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .map(|n| n.parse().expect("count N"))
        .collect()
}

#[test]
fn test_counts_complete_lines_parsed() {
    assert_eq!(counts("count 1\ncount 2\ncount 3"), [1, 2]);
    assert_eq!(counts("x\ncount 7\n"), [7]);
}

#[test]
fn test_counter_limit_lines_are_consecutive() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let cmdline = "every=1000 limit=300 exit=5";

    // Act
    let run = qemu(&[
        "-M",
        "microvm,acpi=off",
        "-kernel",
        kernel(),
        "-append",
        cmdline,
    ]);

    // Assert
    let mut expected = header("counter", "pvh", cmdline);
    expected.push("counter: every=1000 limit=300".into());
    expected.extend((1..=300).map(|n| format!("count {n}")));
    expected.push("done".into());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(5 << 1 | 1));
}

/// A QMP connection: greeting read, capabilities negotiated.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &std::path::Path) -> Self {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > HANG_GUARD => panic!("connect QMP: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let writer = stream.try_clone().expect("clone QMP socket");
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.line();
        assert!(greeting.contains("\"QMP\""), "QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities");
        qmp
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read QMP");
        assert!(!line.is_empty(), "QMP closed");
        line
    }

    /// Runs `command`; skips events until its `return`.
    fn execute(&mut self, command: &str) {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}").expect("write QMP");
        loop {
            let line = self.line();
            if line.contains("\"return\"") {
                return;
            }
            assert!(!line.contains("\"error\""), "QMP {command}: {line}");
        }
    }
}

/// Waits until the guest has printed a count above `above`; returns it.
fn wait_count_above(out: &Mutex<String>, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let last = counts(&out.lock().expect("output lock")).last().copied();
        if let Some(n) = last.filter(|&n| n > above) {
            return n;
        }
        assert!(start.elapsed() < HANG_GUARD, "counter stuck at {last:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn test_counter_stop_cont_cycles_lose_and_repeat_nothing() {
    if !kvm_available() {
        return;
    }
    // Arrange: the counter runs forever; QMP on a socket.
    let dir = scratch("counter-qmp");
    let sock = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "qemu64",
            "-m",
            "128",
            "-M",
            "microvm,acpi=off",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-kernel", kernel(), "-append", "every=20000"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("qemu stdout");
    let out = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&out);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            sink.lock()
                .expect("output lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut qmp = Qmp::connect(&sock);

    // Act: 10 stop/cont cycles, each after the guest has made progress.
    let mut seen = 0;
    for _ in 0..10 {
        seen = wait_count_above(&out, seen);
        qmp.execute("stop");
        qmp.execute("cont");
    }
    let last = wait_count_above(&out, seen);
    let _ = child.kill();
    let _ = child.wait();
    reader.join().expect("stdout reader");

    // Assert
    let out = out.lock().expect("output lock");
    let got = counts(&out);
    let want: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, want, "counts not consecutive in:\n{out}");
    assert!(got.len() as u64 >= last);
    let _ = std::fs::remove_dir_all(&dir);
}
