//! Network-namespace helpers for the virtio-net and virtio-vsock tests: a namespace made by
//! the test and deleted when it ends (with everything in it: taps, addresses), commands run
//! inside it, and waiting for a line in a guest's serial file.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use testkit::HANG_GUARD;

/// A private network namespace, deleted on drop.
pub struct NetNs {
    /// Its name (under /run/netns).
    pub name: String,
}

impl NetNs {
    /// Creates `strata-<tag>-<pid>-<n>` with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "strata-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.run_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME program args...`, not yet run.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// Runs `program args` in the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("run {program} in {}: {e}", self.name))
    }

    /// Runs `program args` in the namespace; panics unless it succeeds.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The interfaces in the namespace (`ip -o link` names).
    pub fn links(&self) -> Vec<String> {
        self.run_ok("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// `ping -c COUNT` from the namespace (the host side); returns (sent, received) and the
    /// output.
    pub fn ping(&self, addr: &str, count: u32, size: u32) -> (u32, u32, String) {
        let out = self.run(
            "ping",
            &[
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                // A deadline, not a per-reply timeout: with -W, ping stops waiting two
                // round trips after the first reply, too soon for a guest on a loaded host.
                "-w",
                "120",
                "-s",
                &size.to_string(),
                addr,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let stats = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("");
        let num = |word: &str| -> u32 {
            stats
                .split(", ")
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"), text)
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens belong to the
    /// namespace) and returns what it returned.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: setns on a descriptor this thread owns, for this thread only (a
                // network namespace is per thread); it changes no memory.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the namespace thread panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Runs a host command; panics unless it succeeds.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed (and reaped) when dropped, so that a failing test leaves no VMM
/// running.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    /// Whether the child still runs.
    pub fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().map(|s| s.is_none()).unwrap_or(false))
    }

    /// Waits for the child and returns its output.
    pub fn wait_with_output(mut self) -> std::process::Output {
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("wait for the child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `file` holds a line containing `marker` (the guest got there), or `alive`
/// says the process ended; returns the file's text.
pub fn wait_for_line(file: &Path, marker: &str, alive: impl FnMut() -> bool) -> String {
    wait_for_line_within(file, marker, alive, HANG_GUARD)
}

/// [`wait_for_line`] with a hang guard of `limit` (Linux boots on a loaded PVM host).
pub fn wait_for_line_within(
    file: &Path,
    marker: &str,
    mut alive: impl FnMut() -> bool,
    limit: std::time::Duration,
) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.contains(marker)) {
            return text;
        }
        assert!(
            alive(),
            "the VMM ended before the guest printed '{marker}':\n{text}"
        );
        assert!(
            start.elapsed() < limit,
            "the guest never printed '{marker}':\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A host listener on `path` (a vsock device's `PATH_<port>`) that reads one line from the
/// guest, answers it upper-cased and returns what it read.
pub fn upper_server(path: &Path) -> JoinHandle<String> {
    let listener = UnixListener::bind(path).expect("bind host listener");
    std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept the guest");
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let _ = r.read_line(&mut line);
        let mut w = s;
        let _ = w.write_all(line.to_uppercase().as_bytes());
        line
    })
}
