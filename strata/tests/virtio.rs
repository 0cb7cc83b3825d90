//! Virtio devices under Strata, driven by the guest kit's `virtio` guest (the same guest
//! guests/tests/virtio.rs runs under QEMU): virtio-rng and virtio-console over virtio-mmio,
//! virtio-pci modern and virtio-pci legacy, console input from a file, a pipe and a
//! pseudo-terminal; the command-line announcements; bad device options.
//!
//! The guest prints on COM1, which these tests send to a file (`--serial file=`) so that
//! standard output carries what the guest wrote to the virtio console (`--console tty`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{kvm_available, scratch, strata, strata_bin};

/// The memory map of the default 128 MiB machine.
const MEM_128M: [&str; 3] = [
    "mem: 0x0000000000000000 0x000000000009fc00 1",
    "mem: 0x000000000009fc00 0x0000000000000400 2",
    "mem: 0x0000000000100000 0x0000000007f00000 1",
];

/// What the host types into the console and the guest writes to it.
const HOST_SAYS: &str = "host-says-hello";
const GUEST_SAYS: &str = "guest-says-hi";

/// A guard against hangs (Strata stops the guest and exits 124), not a speed assertion.
const TIMEOUT: &str = "240";

/// The ops every transport test runs, with `exit=3` so the status proves the guest finished.
fn ops(transport: &str) -> String {
    format!(
        "transport={transport} op=rng op=console-write text={GUEST_SAYS} op=console-read exit=3"
    )
}

/// The lines the guest prints on COM1 for `cmdline`, given what it found.
fn expected_serial(cmdline: &str, found: &[&str]) -> Vec<String> {
    let mut v = vec![
        "strata-test-guest virtio".to_string(),
        "protocol: pvh".to_string(),
        format!("cmdline: {cmdline}"),
    ];
    v.extend(MEM_128M.iter().map(|s| s.to_string()));
    v.extend(found.iter().map(|s| format!("virtio: {s}")));
    v.extend([
        "rng: read 64 bytes, not all equal".to_string(),
        format!("console: wrote {} bytes", GUEST_SAYS.len() + 1),
        format!("console: read {HOST_SAYS}"),
        "done".to_string(),
    ]);
    v
}

/// `strata run` of the virtio guest with an rng and a console on the terminal, COM1 to
/// `serial`, `stdin` as the console's input.
fn virtio_command(serial: &Path, cmdline: &str, extra: &[&str], stdin: Stdio) -> Command {
    let mut cmd = Command::new(strata_bin());
    cmd.args(["run", "--kernel"])
        .arg(test_guests::virtio())
        .args(["--cmdline", cmdline, "--timeout", TIMEOUT])
        .args(["--rng", "src=/dev/urandom", "--console", "tty"])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(extra)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn serial_lines(serial: &Path) -> Vec<String> {
    std::fs::read_to_string(serial)
        .unwrap_or_else(|e| panic!("read {}: {e}", serial.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn assert_run(out: &Output, serial: &Path, want: &[String]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial_lines(serial), want, "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{GUEST_SAYS}\n"),
        "virtio console output; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(stderr, "");
}

/// A file holding what the host types, as standard input (not pollable: the console reads it
/// whenever the guest has receive buffers).
fn stdin_file(dir: &Path) -> Stdio {
    let path = dir.join("input.txt");
    std::fs::write(&path, format!("{HOST_SAYS}\n")).expect("write input");
    Stdio::from(std::fs::File::open(path).expect("open input"))
}

#[test]
fn test_virtio_guest_rng_and_console_over_mmio() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("virtio-mmio");
    let serial = dir.join("serial.txt");
    let cmdline = ops("mmio");

    let out = virtio_command(
        &serial,
        &cmdline,
        &["--transport", "mmio"],
        stdin_file(&dir),
    )
    .output()
    .expect("run strata");

    let announced =
        format!("{cmdline} virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
    let found = ["mmio v2 0xd0000000 rng", "mmio v2 0xd0001000 console"];
    assert_run(&out, &serial, &expected_serial(&announced, &found));
}

#[test]
fn test_virtio_guest_rng_and_console_over_pci_modern_with_piped_input() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("virtio-pci");
    let serial = dir.join("serial.txt");
    let cmdline = ops("pci");
    let mut child = virtio_command(&serial, &cmdline, &["--transport", "pci"], Stdio::piped())
        .spawn()
        .expect("spawn strata");

    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(format!("{HOST_SAYS}\n").as_bytes())
        .expect("write console input");
    let out = child.wait_with_output().expect("wait strata");
    drop(input);

    let found = ["pci 00:01.0 rng", "pci 00:02.0 console"];
    assert_run(&out, &serial, &expected_serial(&cmdline, &found));
}

#[test]
fn test_virtio_guest_rng_and_console_over_pci_legacy() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("virtio-pci-legacy");
    let serial = dir.join("serial.txt");
    let cmdline = ops("pci-legacy");

    let out = virtio_command(&serial, &cmdline, &["--transport", "pci"], stdin_file(&dir))
        .output()
        .expect("run strata");

    let found = [
        "pci-legacy 00:01.0 0xc000 rng",
        "pci-legacy 00:02.0 0xc100 console",
    ];
    assert_run(&out, &serial, &expected_serial(&cmdline, &found));
}

#[test]
fn test_virtio_guest_console_transport_override_on_pci_machine() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("virtio-override");
    let serial = dir.join("serial.txt");
    let cmdline = format!("transport=mmio op=console-write text={GUEST_SAYS} exit=3");

    let out = Command::new(strata_bin())
        .args(["run", "--kernel"])
        .arg(test_guests::virtio())
        .args([
            "--cmdline",
            &cmdline,
            "--timeout",
            TIMEOUT,
            "--transport",
            "pci",
        ])
        .args([
            "--rng",
            "src=/dev/urandom",
            "--console",
            "tty,transport=mmio",
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run strata");

    // The rng took PCI device 1 and IRQ 5 (its INTx line); the console the first mmio window
    // and the next IRQ.
    let mut want = vec![
        "strata-test-guest virtio".to_string(),
        "protocol: pvh".to_string(),
        format!("cmdline: {cmdline} virtio_mmio.device=4K@0xd0000000:6"),
    ];
    want.extend(MEM_128M.iter().map(|s| s.to_string()));
    want.extend([
        "virtio: mmio v2 0xd0000000 console".to_string(),
        format!("console: wrote {} bytes", GUEST_SAYS.len() + 1),
        "done".to_string(),
    ]);
    assert_eq!(serial_lines(&serial), want);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{GUEST_SAYS}\n")
    );
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn test_virtio_guest_console_input_through_pty() {
    if !kvm_available() {
        return;
    }
    let cmdline = "transport=mmio op=console-read exit=4";
    let mut child = Command::new(strata_bin())
        .args(["run", "--kernel"])
        .arg(test_guests::virtio())
        .args([
            "--cmdline",
            cmdline,
            "--timeout",
            TIMEOUT,
            "--console",
            "pty",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("read stderr");
    let pty = first
        .trim_end()
        .strip_prefix("strata: virtio console on ")
        .unwrap_or_else(|| panic!("no pty announced: {first:?}"))
        .to_string();

    let mut term = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty)
        .unwrap_or_else(|e| panic!("open {pty}: {e}"));
    term.write_all(b"pty-says-hello\n").expect("write pty");
    let out = child.wait_with_output().expect("wait strata");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read stderr");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(pty.starts_with("/dev/pts/"), "{pty}");
    assert_eq!(
        &lines[lines.len() - 3..],
        [
            "virtio: mmio v2 0xd0000000 console",
            "console: read pty-says-hello",
            "done"
        ],
        "stderr: {rest}"
    );
    assert_eq!(out.status.code(), Some(4), "stderr: {rest}");
}

#[test]
fn test_virtio_mmio_announcements_go_before_init_arguments() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::pvh().to_string_lossy();
    let args = [
        "run",
        "--kernel",
        &kernel,
        "--cmdline",
        "quiet -- init-arg",
        "--rng",
        "/dev/urandom",
        "--console",
        "null",
    ];

    let run = strata(&args);

    let cmdline = "cmdline: quiet virtio_mmio.device=4K@0xd0000000:5 \
                   virtio_mmio.device=4K@0xd0001000:6 -- init-arg";
    assert_eq!(run.lines()[2], cmdline, "stderr: {}", run.stderr);
    assert_eq!(run.status, Some(0));
    assert_eq!(run.stderr, "");
}

#[test]
fn test_virtio_pci_devices_leave_cmdline_alone() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::pvh().to_string_lossy();
    let args = [
        "run",
        "--kernel",
        &kernel,
        "--cmdline",
        "plain",
        "--rng",
        "/dev/urandom",
        "--console",
        "null",
        "--transport",
        "pci",
    ];

    let run = strata(&args);

    assert_eq!(run.lines()[2], "cmdline: plain", "stderr: {}", run.stderr);
    assert_eq!(run.lines().last(), Some(&"done"));
    assert_eq!(run.status, Some(0));
}

#[test]
fn test_virtio_rng_missing_source_names_it() {
    let run = strata(&[
        "run",
        "--kernel",
        &test_guests::pvh().to_string_lossy(),
        "--rng",
        "src=/nonexistent/entropy",
    ]);

    assert_eq!(
        run.stderr,
        "strata: unable to open the rng source /nonexistent/entropy: No such file or directory \
         (os error 2)\n"
    );
    assert_eq!(run.status, Some(1));
}

#[test]
fn test_virtio_console_and_serial_both_on_terminal_refused() {
    let run = strata(&["run", "--kernel", "k", "--console", "tty"]);

    assert_eq!(
        run.stderr,
        "strata: invalid console: the serial port and the virtio console cannot both use the \
         terminal (add --serial off, null or file=PATH)\n"
    );
    assert_eq!(run.status, Some(1));
}

#[test]
fn test_virtio_bad_device_options_refused_naming_option() {
    let file = strata(&["run", "--kernel", "k", "--console", "mode=file"]);
    let transport = strata(&["run", "--kernel", "k", "--transport", "usb"]);
    let key = strata(&["run", "--kernel", "k", "--rng", "source=/dev/random"]);

    assert_eq!(
        file.stderr,
        "strata: invalid console: mode file needs file=PATH\n"
    );
    assert!(
        transport
            .stderr
            .starts_with("strata: invalid value for --transport: unknown variant `usb`"),
        "{}",
        transport.stderr
    );
    assert!(
        key.stderr
            .starts_with("strata: invalid value for --rng: unknown field `source`"),
        "{}",
        key.stderr
    );
    assert_eq!(
        (file.status, transport.status, key.status),
        (Some(1), Some(1), Some(1))
    );
}
