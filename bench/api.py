#!/usr/bin/env python3
"""API benchmark: Strata's REST API vs QEMU's QMP, in the same run.

Run by hand (never in CI):  python3 bench/api.py [--starts 20] [--requests 1000]
Builds nothing: run `cargo build --release` first. Measures
  1. process start -> first answer: `strata run --api-socket` until `GET vmm.ping` is answered,
     QEMU (`-M microvm -S`, QMP on a Unix socket) until `query-status` is answered (greeting
     and `qmp_capabilities` included);
  2. request latency, p50 and p99 over N requests on one connection, with the ring-3 counter
     guest running: Strata `GET vm.info` (keep-alive; and one new connection per request, as
     ch-remote does), QEMU `query-status`.
Prints a Markdown table ready for docs/benchmarks.md.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATA = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata")
QEMU = "qemu-system-x86_64"


def guest_path(name):
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    return subprocess.check_output([exe, name], text=True).strip()


def connect(path, proc):
    """Connects to a Unix socket as soon as it accepts; fails if the process exits first."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            time.sleep(0.0001)


def http(sock, method, path, keep_alive=True):
    """One HTTP request on `sock`; returns (status, body)."""
    conn = "" if keep_alive else "Connection: close\r\n"
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{conn}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, v = line.split(":", 1)
        if k.lower() == "content-length":
            length = int(v)
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest[:length]


class Qmp:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.line()  # greeting
        self.execute("qmp_capabilities")

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command):
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            msg = self.line()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(msg)


def qemu_cmd(sock, kernel=None, paused=False):
    cmd = [QEMU, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "qemu64", "-m", "128",
           "-nodefaults", "-no-user-config", "-display", "none", "-serial", "null",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    if kernel:
        cmd += ["-kernel", kernel, "-append", "every=20000"]
    if paused:
        cmd += ["-S"]
    return cmd


def start_strata(tmp):
    path = os.path.join(tmp, "api.sock")
    t0 = time.perf_counter()
    p = subprocess.Popen([STRATA, "run", "--api-socket", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = connect(path, p)
    status, _ = http(s, "GET", "/api/v1/vmm.ping")
    t1 = time.perf_counter()
    assert status == 200
    http(s, "PUT", "/api/v1/vmm.shutdown")
    s.close()
    p.wait()
    return t1 - t0


def start_qemu(tmp):
    path = os.path.join(tmp, "qmp.sock")
    t0 = time.perf_counter()
    p = subprocess.Popen(qemu_cmd(path, paused=True),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = connect(path, p)
    qmp = Qmp(s)
    qmp.execute("query-status")
    t1 = time.perf_counter()
    qmp.execute("quit")
    s.close()
    p.wait()
    return t1 - t0


def start_true():
    """The floor: spawning /bin/true and waiting for it, measured the same way."""
    t0 = time.perf_counter()
    subprocess.run(["/bin/true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def percentiles(samples):
    xs = sorted(samples)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def latency_strata(tmp, n, kernel):
    path = os.path.join(tmp, "api.sock")
    p = subprocess.Popen([STRATA, "run", "--api-socket", path, "--kernel", kernel,
                          "--cmdline", "every=20000", "--serial", "null"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = connect(path, p)
    keep, fresh = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, body = http(s, "GET", "/api/v1/vm.info")
            keep.append(time.perf_counter() - t0)
            assert status == 200 and b'"Running"' in body
        for _ in range(n):
            t0 = time.perf_counter()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            status, _ = http(c, "GET", "/api/v1/vm.info", keep_alive=False)
            c.close()
            fresh.append(time.perf_counter() - t0)
            assert status == 200
        http(s, "PUT", "/api/v1/vmm.shutdown")
    finally:
        s.close()
        p.wait()
    return keep, fresh


def latency_qemu(tmp, n, kernel):
    path = os.path.join(tmp, "qmp.sock")
    p = subprocess.Popen(qemu_cmd(path, kernel=kernel),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = connect(path, p)
    qmp = Qmp(s)
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status = qmp.execute("query-status")
            samples.append(time.perf_counter() - t0)
            assert status["status"] == "running"
        qmp.execute("quit")
    finally:
        s.close()
        p.wait()
    return samples


def ms(x):
    return f"{x * 1000:.3f}"


def main():
    global STRATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--strata", default=STRATA, help="the strata binary (default: %(default)s)")
    args = ap.parse_args()
    STRATA = args.strata
    kernel = guest_path("counter")
    with tempfile.TemporaryDirectory() as tmp:
        strata_starts, qemu_starts, true_starts = [], [], []
        for _ in range(args.starts):
            strata_starts.append(start_strata(tmp))
            qemu_starts.append(start_qemu(tmp))
            true_starts.append(start_true())
        keep, fresh = latency_strata(tmp, args.requests, kernel)
        qmp = latency_qemu(tmp, args.requests, kernel)
    print(f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: "
          f"{platform.node()} {os.cpu_count()} CPUs, {platform.release()}; "
          f"load average {os.getloadavg()[0]:.1f}; "
          f"starts: {args.starts} paired; requests: {args.requests} per line\n")
    print("| measure | Strata (ms) | QEMU QMP (ms) |")
    print("|---|---|---|")
    print(f"| process start -> first answer, median | {ms(statistics.median(strata_starts))} "
          f"| {ms(statistics.median(qemu_starts))} |")
    print(f"| (floor: spawn /bin/true and wait, median) | {ms(statistics.median(true_starts))} | |")
    k50, k99 = percentiles(keep)
    q50, q99 = percentiles(qmp)
    f50, f99 = percentiles(fresh)
    print(f"| request p50, one connection (vm.info / query-status) | {ms(k50)} | {ms(q50)} |")
    print(f"| request p99, one connection (vm.info / query-status) | {ms(k99)} | {ms(q99)} |")
    print(f"| request p50 / p99, new connection each (vm.info) | {ms(f50)} / {ms(f99)} | - |")


if __name__ == "__main__":
    main()
