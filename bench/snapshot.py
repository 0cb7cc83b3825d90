#!/usr/bin/env python3
"""Snapshot benchmark: Strata's vm.snapshot / restore vs Firecracker's snapshot API and QEMU's
migrate-to-file / -incoming, in the same run, for the ring-3 counter guest (which prints
`count N` lines every 1000 ring-3 iterations) with 128 MiB and 1 GiB of RAM.

Run by hand (never in CI):  chrt -f 2 python3 bench/snapshot.py [--runs 3] [--sizes 128,1024]
                                [--firecracker PATH] [--no-qemu]
Builds nothing: run `cargo build --release` first. Measures, per size, the median of N runs:
  snapshot   Strata: `PUT vm.snapshot` of the paused guest until answered (state + sparse
             memory file written and synced). Firecracker: `PATCH /vm {"state":"Paused"}`,
             then `PUT /snapshot/create` (snapshot_type Full) until answered. QEMU: QMP
             `stop`, then `migrate exec:cat>FILE` until `query-migrate` says completed.
  restore answered
             the restore request on an already started VMM until answered, the VM resumed:
             Strata `PUT vm.restore {"resume":true}` (memory mapped MAP_PRIVATE);
             Firecracker `PUT /snapshot/load` (mem_backend File, resume_vm true).
  restore to running
             the same request until the restored guest ends the line it was printing when
             it was paused (its first newline: the guest-side event both VMMs see).
  process start to output
             a new VMM process until the restored guest's first newline: Strata
             `strata run --restore ...,resume=on`; Firecracker started, then `/snapshot/load`
             at once; QEMU `-incoming exec:cat FILE` (then QMP `cont` as soon as
             `query-status` leaves `inmigrate`).
Prints a Markdown table ready for docs/benchmarks.md.
"""
import argparse
import atexit
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from api import QEMU, STRATA, Qmp, connect, guest_path  # noqa: E402


CHILDREN = []


def child_priority():
    """Run under `chrt -f 2`, the script starts every VMM at SCHED_FIFO 1: a guest spinning in
    ring 3 (the counter guest never halts) then cannot starve the script that waits for its
    output. Without real-time scheduling, nothing changes."""
    if os.sched_getscheduler(0) == os.SCHED_FIFO:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def spawn(*args, **kwargs):
    p = subprocess.Popen(*args, preexec_fn=child_priority, **kwargs)
    CHILDREN.append(p)
    return p


@atexit.register
def kill_children():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_newline(path, proc=None):
    """Waits until `path` holds a newline: the restored guest finished the line it was
    printing when it was paused, so it ran (Strata hands the serial output over at every
    newline; Firecracker writes every byte)."""
    while True:
        try:
            with open(path, "rb") as f:
                if b"\n" in f.read():
                    return
        except FileNotFoundError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        time.sleep(0.0002)


def http(sock, method, path, body=None):
    data = body.encode() if body else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    sock.sendall(head.encode() + b"\r\n" + data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split()[1])
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest[:length]


def wait_count(path, above=0, proc=None):
    """Waits until `path` has a complete `count N` line with N > above; returns N."""
    while True:
        try:
            text = open(path, errors="replace").read()
        except FileNotFoundError:
            text = ""
        nums = [int(n) for n in re.findall(r"^count (\d+)\n", text, re.M)]
        if nums and nums[-1] > above:
            return nums[-1]
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        time.sleep(0.0002)


def strata_once(tmp, mib, kernel):
    serial = os.path.join(tmp, "s-serial")
    sock = os.path.join(tmp, "s.sock")
    p = spawn([STRATA, "run", "--api-socket", sock, "--kernel", kernel,
                          "--cmdline", "every=1000", "--memory", f"size={mib}M",
                          "--serial", f"file={serial}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connect(sock, p).close()
    wait_count(serial, 50, p)
    # A new connection per request: the guest may take longer than the server keeps an
    # idle connection open.
    s = connect(sock, p)
    assert http(s, "PUT", "/api/v1/vm.pause")[0] == 204
    s = connect(sock, p)
    snap = os.path.join(tmp, "s-snap")
    t0 = time.perf_counter()
    st, body = http(s, "PUT", "/api/v1/vm.snapshot", json.dumps({"destination_url": f"file://{snap}"}))
    t_snap = time.perf_counter() - t0
    assert st == 204, body
    http(connect(sock, p), "PUT", "/api/v1/vmm.shutdown")
    p.wait()
    # (a) vm.restore on a running VMM.
    sock2 = os.path.join(tmp, "s2.sock")
    p = spawn([STRATA, "run", "--api-socket", sock2],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = connect(sock2, p)
    os.remove(serial)
    t0 = time.perf_counter()
    st, body = http(s, "PUT", "/api/v1/vm.restore",
                    json.dumps({"source_url": f"file://{snap}", "resume": True}))
    t_restore = time.perf_counter() - t0
    assert st == 204, body
    wait_newline(serial, p)
    t_running = time.perf_counter() - t0
    http(connect(sock2, p), "PUT", "/api/v1/vmm.shutdown")
    p.wait()
    # (b) process start to the guest's next line.
    os.remove(serial)
    t0 = time.perf_counter()
    p = spawn([STRATA, "run", "--restore", f"source_url=file://{snap},resume=on"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_newline(serial, p)
    t_output = time.perf_counter() - t0
    p.terminate()
    p.wait()
    used = sum(os.stat(os.path.join(snap, f)).st_blocks * 512 for f in os.listdir(snap))
    shutil.rmtree(snap)
    return t_snap, t_restore, t_output, used, t_running


def fc_api(sock_path, proc, method, path, body):
    s = connect(sock_path, proc)
    st, out = http(s, method, path, json.dumps(body))
    s.close()
    if st not in (200, 204):
        raise RuntimeError(f"Firecracker {method} {path}: {st} {out!r}")


def firecracker_once(tmp, mib, kernel, fc):
    out = os.path.join(tmp, "f-out")
    sock = os.path.join(tmp, "f.sock")
    with open(out, "w") as f:
        p = spawn([fc, "--api-sock", sock, "--level", "Error", "--id", "snap-src"],
                             stdout=f, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    fc_api(sock, p, "PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "every=1000"})
    fc_api(sock, p, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib})
    fc_api(sock, p, "PUT", "/actions", {"action_type": "InstanceStart"})
    wait_count(out, 50, p)
    fc_api(sock, p, "PATCH", "/vm", {"state": "Paused"})
    state, mem = os.path.join(tmp, "f-state"), os.path.join(tmp, "f-mem")
    t0 = time.perf_counter()
    fc_api(sock, p, "PUT", "/snapshot/create",
           {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem})
    t_snap = time.perf_counter() - t0
    p.kill()
    p.wait()
    os.remove(sock)
    load = {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": True}

    def restore(started_at=None):
        with open(out, "w") as f:
            t_start = time.perf_counter()
            p = spawn([fc, "--api-sock", sock, "--level", "Error", "--id", "snap-dst"],
                                 stdout=f, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        s = connect(sock, p)
        s.close()
        t0 = time.perf_counter()
        fc_api(sock, p, "PUT", "/snapshot/load", load)
        t_answer = time.perf_counter() - t0
        wait_newline(out, p)
        t_end = time.perf_counter()
        p.kill()
        p.wait()
        os.remove(sock)
        return t_answer, t_end - t0, t_end - t_start
    # (a) on a started VMM (its API socket answering), (b) counted from the process start.
    t_restore, t_running, _ = restore()
    _, _, t_output = restore()
    used = sum(os.stat(x).st_blocks * 512 for x in (state, mem))
    os.remove(state)
    os.remove(mem)
    return t_snap, t_restore, t_output, used, t_running


def qemu_cmd(qmp, mib, serial, kernel=None, incoming=None):
    cmd = [QEMU, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "qemu64", "-m", str(mib),
           "-nodefaults", "-no-user-config", "-display", "none",
           "-serial", f"file:{serial}", "-qmp", f"unix:{qmp},server=on,wait=off"]
    if kernel:
        cmd += ["-kernel", kernel, "-append", "every=1000"]
    if incoming:
        cmd += ["-incoming", incoming]
    return cmd


def qemu_once(tmp, mib, kernel):
    serial = os.path.join(tmp, "q-serial")
    qsock = os.path.join(tmp, "q.sock")
    p = spawn(qemu_cmd(qsock, mib, serial, kernel=kernel),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = Qmp(connect(qsock, p))
    wait_count(serial, 50, p)
    qmp.execute("stop")
    state = os.path.join(tmp, "q-state")
    t0 = time.perf_counter()
    qmp.sock.sendall(json.dumps({"execute": "migrate",
                                 "arguments": {"uri": f"exec:cat > {state}"}}).encode() + b"\n")
    while True:
        msg = qmp.line()
        if "return" in msg:
            break
    while qmp.execute("query-migrate").get("status") != "completed":
        time.sleep(0.0005)
    t_snap = time.perf_counter() - t0
    qmp.execute("quit")
    p.wait()
    os.remove(serial)
    qsock2 = os.path.join(tmp, "q2.sock")
    t0 = time.perf_counter()
    p = spawn(qemu_cmd(qsock2, mib, serial, kernel=kernel,
                                  incoming=f"exec:cat {state}"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = Qmp(connect(qsock2, p))
    # The source was stopped, so the destination stays paused once the state is in: `cont`.
    while qmp.execute("query-status").get("status") == "inmigrate":
        time.sleep(0.0002)
    qmp.execute("cont")
    wait_newline(serial, p)
    t_output = time.perf_counter() - t0
    p.terminate()
    p.wait()
    used = os.stat(state).st_blocks * 512
    os.remove(state)
    return t_snap, t_output, used


def ms(xs):
    return f"{statistics.median(xs) * 1000:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="128,1024")
    ap.add_argument("--firecracker", help="the firecracker binary (v1.16.1 built from source)")
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()
    kernel = guest_path("counter")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mib in [int(x) for x in args.sizes.split(",")]:
            s = [strata_once(tmp, mib, kernel) for _ in range(args.runs)]
            rows.append(f"| {mib} MiB | Strata | {ms([x[0] for x in s])} | {ms([x[1] for x in s])} "
                        f"| {ms([x[4] for x in s])} | {ms([x[2] for x in s])} "
                        f"| {s[-1][3] >> 10} KiB |")
            if args.firecracker:
                f = [firecracker_once(tmp, mib, kernel, args.firecracker)
                     for _ in range(args.runs)]
                rows.append(f"| {mib} MiB | Firecracker | {ms([x[0] for x in f])} "
                            f"| {ms([x[1] for x in f])} | {ms([x[4] for x in f])} "
                            f"| {ms([x[2] for x in f])} | {f[-1][3] >> 10} KiB |")
            if not args.no_qemu:
                q = [qemu_once(tmp, mib, kernel) for _ in range(args.runs)]
                rows.append(f"| {mib} MiB | QEMU {QEMU} migrate/-incoming | {ms([x[0] for x in q])} "
                            f"| - | - | {ms([x[1] for x in q])} | {q[-1][2] >> 10} KiB |")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
          f"`python3 bench/snapshot.py {' '.join(sys.argv[1:])}`")
    print()
    print("| guest RAM | VMM | snapshot (ms) | restore answered (ms) | restore to running (ms) "
          "| process start to guest output (ms) | files on disk |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
