//! A `strata run --api-socket` child and a tiny HTTP client for it, for the API tests.
//!
//! The child's standard output and error go to files (a pipe nobody reads could fill and block
//! the guest). Waiting is always for an event (the socket accepting, a state the API reports),
//! never for a length of time; [`HANG_GUARD`] only kills a child that hangs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{scratch, strata_bin, HANG_GUARD};

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The head (status line and headers).
    pub head: String,
    /// The body.
    pub body: String,
}

/// A running `strata run --api-socket`.
pub struct ApiVmm {
    /// The child.
    pub child: Child,
    /// The API socket.
    pub socket: PathBuf,
    /// The scratch directory (standard output and error files).
    pub dir: PathBuf,
}

/// What the child left when it ended.
#[derive(Debug)]
pub struct Ended {
    /// Exit status (None if killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ApiVmm {
    /// Starts `strata run --api-socket DIR/api.sock ARGS` and waits until it answers a ping.
    pub fn start(test: &str, args: &[&str]) -> ApiVmm {
        let dir = scratch(test);
        let socket = dir.join("api.sock");
        ApiVmm::start_at(&dir, &socket, args)
    }

    /// The same, on a given socket path; panics (with the child's standard error) if the
    /// child exits before it serves.
    pub fn start_at(dir: &Path, socket: &Path, args: &[&str]) -> ApiVmm {
        let mut vmm = ApiVmm::spawn(dir, socket, args);
        let start = Instant::now();
        loop {
            if let Some(status) = vmm.child.try_wait().expect("wait") {
                panic!(
                    "strata exited with {status} before serving: {}",
                    vmm.read_file("stderr")
                );
            }
            if UnixStream::connect(socket).is_ok() {
                return vmm;
            }
            assert!(start.elapsed() < HANG_GUARD, "strata never served");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Spawns the child without waiting for it to serve.
    pub fn spawn(dir: &Path, socket: &Path, args: &[&str]) -> ApiVmm {
        let out = File::create(dir.join("stdout")).expect("stdout file");
        let err = File::create(dir.join("stderr")).expect("stderr file");
        let child = Command::new(strata_bin())
            .arg("run")
            .arg("--api-socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn strata");
        ApiVmm {
            child,
            socket: socket.to_owned(),
            dir: dir.to_owned(),
        }
    }

    fn read_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// One request on a new connection.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        send(&mut s, method, path, body, false);
        read_answer(&mut s).expect("an answer")
    }

    /// `call` for a path under `/api/v1/`.
    pub fn api(&self, method: &str, name: &str, body: Option<&str>) -> Answer {
        self.call(method, &format!("/api/v1/{name}"), body)
    }

    /// The VM's state as `vm.info` reports it ("none" without a VM).
    pub fn state(&self) -> String {
        let a = self.api("GET", "vm.info", None);
        if a.status == 404 {
            return "none".into();
        }
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("vm.info JSON");
        v["state"].as_str().expect("state").to_string()
    }

    /// Asks `vm.info` until the state is `want` (the guest or the VMM gets there by itself).
    pub fn wait_state(&self, want: &str) {
        let start = Instant::now();
        while self.state() != want {
            assert!(start.elapsed() < HANG_GUARD, "never reached state {want}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A counter of `vm.counters` (`group`, `name`).
    pub fn counter(&self, group: &str, name: &str) -> u64 {
        let a = self.api("GET", "vm.counters", None);
        assert_eq!(a.status, 200, "{a:?}");
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("counters JSON");
        v[group][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {group}.{name} in {}", a.body))
    }

    /// Waits for the child to end (killing it after the hang guard).
    pub fn wait(mut self) -> Ended {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > HANG_GUARD {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        Ended {
            status: status.code(),
            stdout: self.read_file("stdout"),
            stderr: self.read_file("stderr"),
        }
    }

    /// `vmm.shutdown`, then waits for the child to end.
    pub fn shutdown(self) -> Ended {
        let a = self.api("PUT", "vmm.shutdown", None);
        assert_eq!(a.status, 204, "{a:?}");
        self.wait()
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes one request; `keep_alive` false adds `Connection: close`.
pub fn send(s: &mut UnixStream, method: &str, path: &str, body: Option<&str>, keep_alive: bool) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if !keep_alive {
        req.push_str("Connection: close\r\n");
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).expect("write request");
}

/// Reads one answer (head, then a Content-Length body); None if the connection closed first.
pub fn read_answer<R: Read>(s: &mut R) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
