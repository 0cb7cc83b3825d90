//! What Strata's integration tests share: whether KVM is there (and saying so when it is not),
//! child processes with a hang guard, runs stopped on a guest-side event, scratch directories and
//! files that Debian packages provide.
//!
//! No test asserts on wall time: [`HANG_GUARD`] only kills a child that hangs, and
//! [`run_until`] stops a guest when it has printed what the test waits for, not after N seconds.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child that has not finished after this long is killed: a guard against hangs, not a
/// speed assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// Whether /dev/kvm exists. When it does not, a KVM test skips: this says why on the real
/// standard error (not the test harness's captured one, so the skip shows in the run's output);
/// under `CI=true` a missing /dev/kvm fails the test instead, since CI must not skip silently.
pub fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a KVM test")
        .to_string();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: /dev/kvm is absent and CI=true: KVM tests must run in CI"
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipping {test}: /dev/kvm is absent on this host"
    );
    false
}

/// Whether this host's KVM is PVM (software nested virtualization: guest ring 0 goes through
/// KVM's instruction emulator, so Strata's fallback emulator runs what that emulator lacks).
/// Tests use it to assert exactly what each kind of host does, rather than accepting either.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A file a Debian package provides: a missing one fails the test naming the package (.ci/run
/// installs it), never skips it.
pub fn require(path: &str, package: &str) -> String {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package {package} (.ci/run does)"
    );
    path.to_string()
}

/// A fresh scratch directory unique to this process and `test`.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// What a child process produced.
#[derive(Debug)]
pub struct Run {
    /// Standard output (the serial console for `strata run`).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (None if killed by a signal).
    pub status: Option<i32>,
}

impl Run {
    /// Lines of standard output.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn read_all<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        s
    })
}

/// Waits for `child`, killing it after [`HANG_GUARD`].
fn wait_guarded(child: &mut Child, start: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command with standard input closed and a hang guard, capturing its output.
pub fn run_command(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let mut child = spawn(cmd);
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let status = wait_guarded(&mut child, start);
    Run {
        stdout: String::from_utf8_lossy(&out.join().expect("join")).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().expect("join")).into_owned(),
        status: status.code(),
    }
}

/// Runs a command with `stdin` as its standard input (writing `input` to it first when it is a
/// pipe, then closing it) and a hang guard, capturing its output.
pub fn run_command_with_stdin(cmd: &mut Command, stdin: Stdio, input: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let writer = child.stdin.take().map(|mut pipe| {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let status = wait_guarded(&mut child, start);
    if let Some(w) = writer {
        let _ = w.join();
    }
    Run {
        stdout: String::from_utf8_lossy(&out.join().expect("join")).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().expect("join")).into_owned(),
        status: status.code(),
    }
}

/// Runs a command until its standard output contains every one of `markers` (a guest-side
/// event: the guest printed what the test waits for), then sends it SIGTERM and collects
/// everything it printed. A command that never prints them all runs until it exits by itself or
/// [`HANG_GUARD`] kills it; the test then fails on what is missing from the output.
pub fn run_until(cmd: &mut Command, markers: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = spawn(cmd);
    let mut stdout = child.stdout.take().expect("stdout");
    let err = read_all(child.stderr.take().expect("stderr"));
    let (seen_tx, seen_rx) = mpsc::channel::<()>();
    let markers: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    let out = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut seen = false;
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            all.extend_from_slice(&chunk[..n]);
            if !seen {
                let text = String::from_utf8_lossy(&all);
                if markers.iter().all(|m| text.contains(m.as_str())) {
                    seen = true;
                    let _ = seen_tx.send(());
                }
            }
        }
        all
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if seen_rx.try_recv().is_ok() {
            terminate(&child);
            break wait_guarded(&mut child, start);
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        stdout: String::from_utf8_lossy(&out.join().expect("join")).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().expect("join")).into_owned(),
        status: status.code(),
    }
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Sends SIGUSR1 to a child once it handles SIGUSR1 (before that the signal would kill it):
/// returns false, sending nothing, if the child exited first.
pub fn signal_usr1(child: &mut Child) -> bool {
    if !wait_until_caught(child, libc::SIGUSR1) {
        return false;
    }
    let _ = Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status();
    true
}

/// Waits until `child` handles `signal`: catches it (the `SigCgt` mask of /proc/PID/status)
/// or blocks it in its main thread to read it from a signalfd (`SigBlk`); false if it exited
/// first. Only once the child has exec'd (between fork and exec a child still runs this
/// process's image), and a mask that blocks nearly every signal does not count: programs
/// block everything for a moment around fork, and a signal sent then is not handled.
pub fn wait_until_caught(child: &mut Child, signal: libc::c_int) -> bool {
    let status_file = format!("/proc/{}/status", child.id());
    let exe_file = format!("/proc/{}/exe", child.id());
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    let bit = 1u64 << (signal - 1);
    let mask = |status: &str, field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0)
    };
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let status = std::fs::read_to_string(&status_file).unwrap_or_default();
        let execd = std::fs::read_link(&exe_file)
            .ok()
            .is_some_and(|e| Some(e) != own_exe);
        // A mask blocking (nearly) every signal is a fork in progress, not a signalfd reader.
        let blocked = Some(mask(&status, "SigBlk:")).filter(|m| m.count_ones() < 16);
        let handled = execd && (mask(&status, "SigCgt:") | blocked.unwrap_or(0)) & bit != 0;
        if handled {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_run_until_marker_stops_child_with_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'one re'; sleep 0.1; echo ady; exec sleep 100"]);

        let run = run_until(&mut cmd, &["ready", "one"]);

        assert_eq!(run.stdout, "one ready\n");
        assert_eq!(run.status, None, "killed by SIGTERM, not exited: {run:?}");
    }

    #[test]
    fn test_run_until_child_exits_without_marker() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; exit 3"]);

        let run = run_until(&mut cmd, &["one", "never"]);

        assert_eq!((run.stdout.as_str(), run.status), ("one\n", Some(3)));
    }

    #[test]
    fn test_signal_usr1_waits_for_the_handler() {
        // The shell traps USR1 only after a pause: a signal sent earlier would kill it.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "sleep 0.3; trap 'echo got; exit 7' USR1; while :; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");

        let sent = signal_usr1(&mut child);
        let out = child.wait_with_output().expect("wait");

        assert!(sent);
        assert_eq!(
            (out.status.code(), out.stdout),
            (Some(7), b"got\n".to_vec())
        );
    }

    #[test]
    fn test_run_command_captures_both_streams() {
        let run = run_command(Command::new("sh").args(["-c", "echo out; echo err >&2"]));

        assert_eq!(
            (run.stdout.as_str(), run.stderr.as_str()),
            ("out\n", "err\n")
        );
        assert_eq!(run.status, Some(0));
    }
}
