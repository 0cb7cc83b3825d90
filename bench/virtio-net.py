#!/usr/bin/env python3
"""virtio-net and virtio-vsock throughput, by hand (docs/benchmarks.md, "virtio-net").

The kit's `net` guest, the same image under Strata and under QEMU (`-netdev tap,vhost=off`,
virtio-net on microvm/virtio-mmio, or q35/virtio-pci for the UDP lines), each run in a
private network namespace made and deleted here:

- guest -> host: `op=net-blast` sends N frames of 64 bytes (then of 1514 bytes, the size of a
  UDP datagram with a 1472-byte payload); the rate is read from the tap's rx_packets counter
  on the host side, sampled every 5 ms, between 10% and 90% of the frames.
- host -> guest: the host writes frames of 64 (then 1514) bytes into the tap through an
  AF_PACKET socket for a fixed time, as fast as it can (yielding the CPU after every 64
  frames, see below), then an end marker; the guest's `op=net-sink` counts what reached it:
  received / sending time.
- UDP, 1472-byte payloads (a datagram fills a 1500-byte MTU), over virtio-mmio (QEMU:
  microvm) and virtio-pci (QEMU: q35): the guest builds and parses Ethernet, IPv4 and UDP
  itself (`op=udp-send`, `op=udp-sink`), the host end is an ordinary UDP socket on the host
  side of the tap. guest -> host: after the socket's go datagram the guest sends N datagrams
  as fast as its transmit ring takes them; the socket (512 MiB receive buffer, kernel
  receive timestamps) counts them: MiB/s of payload between the 10% and 90% datagrams'
  timestamps, lost = sent - received. host -> guest: after one ping (the kernel resolves the
  guest by ARP, which the guest answers) the socket sends datagrams for a fixed time like the
  raw sender; the guest counts what it got: MiB/s = payload received / sending time.
- vsock: round trips of 1 byte through the guest's echo (`CONNECT 1234`), and echo throughput
  with 64 KiB writes. QEMU has no userspace vsock backend (vhost-vsock only, and this host has
  no /dev/vhost-vsock); with `--firecracker PATH`, Firecracker's hybrid vsock (the same Unix
  socket convention) runs the same guest over virtio-mmio as the yardstick. `--only-vsock`
  runs these two lines alone; `--vsock-rounds N` runs N interleaved rounds (Strata,
  Firecracker, Strata, ...) and reports each VMM's median and min-max. BENCH_PROFILE=1 prints
  each VMM thread's CPU time and context switches per round trip and per 64 KiB echoed;
  BENCH_VSOCK_PROFILE=1 attaches `strace -c -f` to the VMM for each phase (slows it down:
  diagnostics, not results).

Placement: the script's threads and each VMM's threads other than its vCPU share the first
CPU, the vCPU has the second (`pin()`; QEMU runs with `-name debug-threads=on` so that its
vCPU thread is named). BENCH_PROFILE=1 prints each VMM thread's CPU time during the UDP lines
(host -> guest: the sending; guest -> host: from the go datagram to the last one received).

Usage: run as root, after `cargo build --release`; on a shared host under `chrt -f 2` (the
VMMs and the host -> guest sender then run at SCHED_FIFO 1, the samplers at 2):
    chrt -f 2 python3 bench/virtio-net.py --strata target/x86_64-unknown-linux-gnu/release/strata \
        --guest $(cargo run -q --release -p test-guests --bin guest-path -- net)
With `--rounds N` each virtio-net line runs N times per VMM, interleaved, and the verdict is
on the medians (the spread is printed); `--no-vsock` skips the vsock lines; `--peer-strata
PATH` puts a second Strata build in QEMU's column (A/B).
"""

import argparse
import ctypes
import inspect
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

NS = "strata-bench-net"
HOST_IP, GUEST_IP = "10.79.0.1", "10.79.0.2"
MAC = "52:54:00:be:ec:01"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def in_ns(fn, *a):
    """Runs fn(*a) with this thread in the namespace (AF_PACKET sockets and
    /proc/thread-self/net are per namespace)."""
    fd = os.open(f"/run/netns/{NS}", os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(fd)
        return fn(*a)
    finally:
        setns(own)
        os.close(fd)
        os.close(own)


def wait_line(path, marker, proc, limit=300):
    start = time.time()
    while time.time() - start < limit:
        try:
            with open(path) as f:
                text = f.read()
            if marker in text:
                return text
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"VMM ended before '{marker}': {open(path).read()}")
        time.sleep(0.005)
    raise RuntimeError(f"no '{marker}'")


def realtime():
    """Whether the script runs under SCHED_FIFO (`chrt -f 2`)."""
    return os.sched_getscheduler(0) == os.SCHED_FIFO


def vmm_prefix():
    """Under `chrt -f 2` the VMMs run at FIFO priority 1, below the script's own samplers (a
    sampler at the VMM's priority would wait behind a spinning vCPU until the run ended)."""
    return ["chrt", "-f", "1"] if realtime() else []


CPUS = sorted(os.sched_getaffinity(0))[:2]


def pin(pid):
    """Puts the vCPU threads of VMM `pid` (Strata's `vcpu0`, QEMU's `CPU 0/KVM`, Firecracker's
    `fc_vcpu 0`) on the second CPU and its other threads on the first, where the script's own
    threads run (main() pins them). Without it, under SCHED_FIFO, the VMM's I/O thread can be
    queued behind the spinning vCPU on one CPU while the spinning sender holds the other,
    and never run: both VMMs starved that way in trials."""
    if len(CPUS) < 2:
        return
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                threads[int(tid)] = (name, int(f.read().split()[0]))
        except OSError:
            pass
    # The vCPU is the busiest thread with a vCPU's name: a thread a vCPU thread started
    # carries its name until it first runs (Strata's device workers name themselves).
    named = [t for t, (name, _) in threads.items()
             if name.startswith(("vcpu", "CPU ", "fc_vcpu"))]
    vcpu = max(named, key=lambda t: threads[t][1], default=None)
    for tid in threads:
        try:
            os.sched_setaffinity(tid, {CPUS[1]} if tid == vcpu else {CPUS[0]})
        except OSError:
            pass


def vmm_cmd(vmm, args, guest, cmdline, serial, tap, transport="mmio"):
    return vmm_prefix() + vmm_cmd_plain(vmm, args, guest, cmdline, serial, tap, transport)


def vmm_cmd_plain(vmm, args, guest, cmdline, serial, tap, transport="mmio"):
    """`vmm` running `guest` on `tap` over virtio-mmio (QEMU: microvm) or virtio-pci (QEMU:
    q35, modern only)."""
    if vmm == "qemu" and args.peer_strata:
        # An A/B of two Strata builds: the "qemu" column runs the other one.
        return vmm_cmd_plain("strata", argparse.Namespace(strata=args.peer_strata), guest,
                             cmdline, serial, tap, transport)
    if vmm == "strata":
        return [args.strata, "run", "--kernel", guest, "--cmdline", cmdline, "--timeout", "600",
                "--serial", f"file={serial}", "--net", f"tap={tap},mac={MAC},ip={HOST_IP}",
                "--transport", transport]
    if transport == "mmio":
        machine = ["-M", "microvm,acpi=off", "-global", "virtio-mmio.force-legacy=false"]
        device = "virtio-net-device"
    else:
        machine, device = ["-M", "q35"], "virtio-net-pci,disable-legacy=on"
    return ["qemu-system-x86_64"] + machine + [
            "-name", "bench,debug-threads=on", "-accel", "kvm", "-cpu", "qemu64",
            "-m", "128", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-serial", f"file:{serial}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", f"{device},netdev=n0,mac={MAC}", "-kernel", guest,
            "-append", cmdline]


def start(vmm, args, cmdline, marker, transport="mmio"):
    tap = "btap0"
    if vmm == "qemu":
        sh("ip", "netns", "exec", NS, "ip", "tuntap", "add", tap, "mode", "tap")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{HOST_IP}/24", "dev", tap)
        sh("ip", "netns", "exec", NS, "ip", "link", "set", tap, "up")
    serial = tempfile.mktemp(prefix="strata-bench-net-")
    cmd = vmm_cmd(vmm, args, args.guest, f"transport={transport} {cmdline}", serial, tap,
                  transport)
    proc = subprocess.Popen(["ip", "netns", "exec", NS] + cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_line(serial, marker, proc)
    pin(proc.pid)
    return proc, serial, tap


def finish(vmm, proc, tap):
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if vmm == "qemu":
        sh("ip", "netns", "exec", NS, "ip", "link", "del", tap, check=False)


def rx_packets(tap):
    """The tap's received-packets counter (frames the VMM wrote), in the caller's namespace."""
    with open("/proc/thread-self/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == tap:
                return int(rest.split()[1])
    raise RuntimeError(f"no {tap} in /proc/thread-self/net/dev")


def guest_to_host(vmm, args, size):
    n = args.frames
    # The tap must exist before the blast starts: a first op waits for the host's go.
    proc, serial, tap = start(vmm, args, f"op=net-sink op=net-blast frames={n} size={size}",
                              "net: sink ready")
    samples = []

    def blast():
        base = rx_packets(tap)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((tap, 0))
        s.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb6" + b"\0" * 50)
        while True:
            c = rx_packets(tap) - base
            samples.append((time.perf_counter(), c))
            if c >= n or proc.poll() is not None:
                break
            time.sleep(0.005)

    in_ns(blast)
    finish(vmm, proc, tap)
    lo = next(t for t, c in samples if c >= n * 0.1)
    hi_t, hi_c = next((t, c) for t, c in samples if c >= n * 0.9)
    lo_c = next(c for t, c in samples if c >= n * 0.1)
    return (hi_c - lo_c) / (hi_t - lo)


def send_for(s, data, seconds):
    """Sends `data` on socket `s` as fast as it goes for `seconds`, in bursts of 64; returns
    (messages sent, seconds taken). Under `chrt` the sender spins at the VMMs' priority and
    yields after every burst: a sender that never blocks would otherwise keep the VMM's I/O
    thread (Strata's worker, QEMU's main loop) off the CPU the spinning vCPU leaves."""
    own = os.sched_getparam(0).sched_priority
    if realtime():
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    t0 = time.perf_counter()
    sent = 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(64):
            try:
                s.send(data)
                sent += 1
            except OSError:
                pass
        os.sched_yield()
    took = time.perf_counter() - t0
    if realtime():
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(own))
    return sent, took


def host_to_guest(vmm, args, size):
    proc, serial, tap = start(vmm, args, "op=net-sink", "net: sink ready")
    frame = b"\x52\x54\x00\xbe\xec\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5"
    frame += b"\x5a" * (size - len(frame))
    end = b"\x52\x54\x00\xbe\xec\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb6" + b"\0" * 50
    elapsed = []

    def send():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((tap, 0))
        sent, took = send_for(s, frame, args.seconds)
        elapsed.append(took)
        time.sleep(0.2)
        for _ in range(500):
            try:
                s.send(end)
            except OSError:
                break  # the guest got it, exited, and the tap went away
            time.sleep(0.01)
            if proc.poll() is not None:
                break
        return sent

    sent = in_ns(send)
    finish(vmm, proc, tap)
    text = open(serial).read()
    line = [l for l in text.splitlines() if l.startswith("net: received")]
    got = int(line[0].split()[2]) if line else 0
    return got / elapsed[0], sent

UDP_PAYLOAD = 1472
MIB = 1 << 20


def thread_stats(pid, switches=False):
    """Per thread of process `pid`: (name, tid, CPU seconds run so far from schedstat,
    context switches or 0 unless `switches`); empty once the process has exited."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out  # it has exited
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run = int(f.read().split()[0]) / 1e9
            sw = 0
            if switches:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    sw = sum(int(l.split()[1]) for l in f if "ctxt_switches" in l)
            out.append((name, tid, run, sw))
        except OSError:
            pass
    return out


def thread_cpu(pid):
    """CPU time (s) each thread of process `pid` has run so far, by thread name and id."""
    return {f"{name}/{tid}": run for name, tid, run, _ in thread_stats(pid)}


# Prints thread_cpu(pid) when started and, once the process is gone, each thread's last
# figure, one JSON line each (run as `python3 -c CPU_SAMPLER PID`): the same functions as
# above, in a process of its own (as a thread it waited on the interpreter lock).
CPU_SAMPLER = ("import json, os, sys, time\n" + inspect.getsource(thread_stats) + "\n"
               + inspect.getsource(thread_cpu) + """
pid = int(sys.argv[1])
first = thread_cpu(pid)
last = dict(first)
print(json.dumps(first), flush=True)
while True:
    now = thread_cpu(pid)
    if not now:
        break
    last.update(now)  # threads that ended keep their last figure
    time.sleep(0.02)
print(json.dumps(last), flush=True)
""")


def profile(label, pid, before, after):
    """With BENCH_PROFILE=1, prints the CPU each thread of `pid` used between two
    thread_cpu() samples (to standard error)."""
    if os.environ.get("BENCH_PROFILE") != "1":
        return
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    busy = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(used.items()) if v > 0.01)
    print(f"profile {label}: {busy}", file=sys.stderr)


def udp_guest_to_host(vmm, args, transport):
    """The guest's `op=udp-send` sends `args.datagrams` datagrams of 1472 payload bytes to a
    UDP socket on the host end of the tap (after the socket's go datagram, from whose
    sender the guest takes MAC, address and port). The socket has a 512 MiB receive buffer
    and kernel receive timestamps (SO_TIMESTAMPNS), and is drained at normal priority (it
    runs in the gaps the real-time VMM leaves and catches up after): rate = payload bytes
    between the 10% and 90% datagrams' kernel timestamps. Returns (MiB/s, received, lost)."""
    n = args.datagrams
    proc, serial, tap = start(vmm, args, f"op=udp-send ip={GUEST_IP} port=5000 count={n} "
                              f"size={UDP_PAYLOAD}", "net: udp ready", transport)
    stamps, wrong = [], [0]
    # The VMM's threads' CPU, sampled until it exits (the receiver drains the socket later),
    # by a child process: a sampler thread here would wait for the GIL, which the receiver
    # holds while it runs at normal priority behind the real-time VMM.
    sampler = subprocess.Popen([sys.executable, "-c", CPU_SAMPLER, str(proc.pid)],
                               stdout=subprocess.PIPE, text=True)

    def receive():
        if realtime():
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 512 * MIB)  # SO_RCVBUFFORCE
        s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
        s.bind((HOST_IP, 5000))
        s.settimeout(1.0)
        done_at = None
        while True:
            if not stamps:
                s.sendto(b"go", (GUEST_IP, 5000))
            try:
                data, anc, _, addr = s.recvmsg(2048, 64)
            except socket.timeout:
                if proc.poll() is not None or done_at is not None:
                    break
                if "net: udp sent" in open(serial).read():
                    done_at = time.time()
                continue
            ts = next((struct.unpack("qq", d[:16]) for lvl, t, d in anc
                       if lvl == socket.SOL_SOCKET and t == 35), None)
            if ts is None or len(data) != UDP_PAYLOAD or addr != (GUEST_IP, 5000):
                wrong[0] += 1
                continue
            stamps.append(ts[0] + ts[1] / 1e9)
            if len(stamps) == n:
                break

    in_ns(receive)
    finish(vmm, proc, tap)
    first, last = (json.loads(line) for line in sampler.communicate()[0].splitlines()[:2])
    profile(f"{vmm} udp guest->host {transport} ({len(stamps)} datagrams)", proc.pid, first,
            last)
    text = open(serial).read()
    if "net: udp sent" not in text:
        raise RuntimeError(f"{vmm}: the guest did not finish sending:\n{text}")
    got = len(stamps)
    if wrong[0] or got < n * 0.2:
        raise RuntimeError(f"{vmm}: {got} datagrams of {n}, {wrong[0]} not the guest's")
    lo, hi = int(got * 0.1), int(got * 0.9)
    return (hi - lo) * UDP_PAYLOAD / (stamps[hi] - stamps[lo]) / MIB, got, n - got


def udp_host_to_guest(vmm, args, transport):
    """A UDP socket on the host end of the tap sends datagrams of 1472 payload bytes to the
    guest's `op=udp-sink` for `args.seconds` (the kernel resolves the guest by ARP first:
    one ping, which the sink also answers), as fast as it can, yielding after every 64 like
    the raw sender; then `end` datagrams. Rate = payload bytes the guest counted / sending
    time. Returns (MiB/s, datagrams received, datagrams the host sent)."""
    proc, serial, tap = start(vmm, args, f"op=udp-sink ip={GUEST_IP} port=5001",
                              "net: udp sink ready", transport)
    sh("ip", "netns", "exec", NS, "ping", "-n", "-c", "1", "-w", "30", GUEST_IP)
    payload = bytes(j & 0xff for j in range(UDP_PAYLOAD))
    elapsed = []

    def send():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((GUEST_IP, 5001))
        cpu0, own0 = thread_cpu(proc.pid), time.thread_time()
        sent, took = send_for(s, payload, args.seconds)
        elapsed.append(took)
        profile(f"{vmm} udp host->guest {transport} (sender {time.thread_time() - own0:.2f}s)",
                proc.pid, cpu0, thread_cpu(proc.pid))
        time.sleep(0.2)
        for _ in range(500):
            try:
                s.send(b"end")
            except OSError:
                pass
            time.sleep(0.01)
            if proc.poll() is not None:
                break
        return sent

    sent = in_ns(send)
    finish(vmm, proc, tap)
    text = open(serial).read()
    line = [l for l in text.splitlines() if l.startswith("net: udp received")]
    if not line:
        raise RuntimeError(f"{vmm}: no 'net: udp received':\n{text}")
    got, nbytes = int(line[0].split()[3]), int(line[0].split()[5])
    return nbytes / elapsed[0] / MIB, got, sent


def vsock_vmm(vmm, args, d, sock, serial):
    """Starts `vmm` with the guest echoing on vsock port 1234 (twice) and the hybrid vsock's
    Unix socket at `sock`: Strata, or Firecracker (same `CONNECT <port>` convention; its
    serial port is its stdout; the guest finds the device on `virtio_mmio.device=`)."""
    cmdline = "transport=mmio op=vsock-echo port=1234 conns=2"
    if vmm == "strata":
        argv = [args.strata, "run", "--kernel", args.guest, "--cmdline", cmdline,
                "--timeout", "600", "--serial", f"file={serial}", "--vsock", f"cid=3,socket={sock}"]
        return subprocess.Popen(vmm_prefix() + argv, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    cfg = os.path.join(d, "fc.json")
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": args.guest,
                                   "boot_args": f"console=ttyS0 {cmdline}"},
                   "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
                   "vsock": {"guest_cid": 3, "uds_path": sock}}, f)
    out = open(serial, "w")
    return subprocess.Popen(vmm_prefix() + [args.firecracker, "--no-api", "--config-file", cfg,
                                            "--level", "Error", "--id", f"bench-{os.getpid()}"],
                            stdout=out, stderr=subprocess.DEVNULL)


def vsock(vmm, args):
    d = tempfile.mkdtemp(prefix="strata-bench-vsock-")
    sock = os.path.join(d, "v.sock")
    serial = os.path.join(d, "serial.txt")
    proc = vsock_vmm(vmm, args, d, sock, serial)
    wait_line(serial, "listening on port 1234", proc)
    pin(proc.pid)

    def conn():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(b"CONNECT 1234\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        return s

    s = conn()
    rtts = []
    prof, cpu0 = vsock_profile(proc.pid, "rtt"), vsock_thread_cpu(proc.pid)
    for _ in range(args.rtts):
        t = time.perf_counter()
        s.sendall(b"x")
        s.recv(1)
        rtts.append(time.perf_counter() - t)
    vsock_cpu_report(vmm, "round trips", proc.pid, cpu0, args.rtts)
    vsock_profile_end(prof, f"{vmm} round trips", args.rtts)
    s.shutdown(socket.SHUT_WR)
    s.recv(10)
    s.close()
    s = conn()
    total = args.vsock_mib << 20
    got = [0]

    def reader():
        while got[0] < total:
            b = s.recv(1 << 16)
            if not b:
                break
            got[0] += len(b)

    r = threading.Thread(target=reader)
    prof, cpu0 = vsock_profile(proc.pid, "echo"), vsock_thread_cpu(proc.pid)
    t = time.perf_counter()
    r.start()
    chunk = b"\xa5" * (1 << 16)
    for _ in range(total >> 16):
        s.sendall(chunk)
    r.join()
    dt = time.perf_counter() - t
    vsock_cpu_report(vmm, "64 KiB echo writes", proc.pid, cpu0, total >> 16)
    vsock_profile_end(prof, f"{vmm} 64 KiB echo writes", total >> 16)
    s.shutdown(socket.SHUT_WR)
    s.close()
    if vmm == "firecracker":
        # The kit ends a VM through the debug-exit port, which Firecracker does not have:
        # after `done` the guest halts.
        wait_line(serial, "done", proc)
        proc.kill()
    proc.wait(timeout=60)
    return statistics.median(rtts) * 1e6, got[0] / dt / (1 << 20)


def interleaved(args, measure):
    """Runs `measure(vmm)` `args.rounds` times for each of Strata and QEMU, interleaved
    (Strata, QEMU, QEMU, Strata, Strata, QEMU, ...: the order flips every round so that
    neither VMM always goes first); returns {vmm: [result, ...]}. A result is a number or a
    tuple whose first element is the figure compared."""
    res = {"strata": [], "qemu": []}
    for i in range(args.rounds):
        for v in ("strata", "qemu") if i % 2 == 0 else ("qemu", "strata"):
            res[v].append(measure(v))
    return res


def figure(result):
    return result[0] if isinstance(result, tuple) else result


def median_round(results):
    """The round whose figure is the median (the lower middle one for an even count)."""
    ordered = sorted(results, key=figure)
    return ordered[(len(ordered) - 1) // 2]


def net_row(label, res, cell, digits):
    """One table row: per VMM the median round's figure (with `cell`'s details of that
    round) and the spread (lowest-highest figure of all rounds), then the verdict on the
    medians; the per-round figures follow in a second row for the record."""
    med = {v: median_round(r) for v, r in res.items()}
    fig = {v: figure(med[v]) for v in res}
    spread = {v: (min(map(figure, r)), max(map(figure, r))) for v, r in res.items()}
    fmt = lambda x: f"{x:.{digits}f}"

    def show(v):
        lo, hi = spread[v]
        extra = cell(med[v]) if isinstance(med[v], tuple) else ""
        return f"{fmt(fig[v])}{extra} [{fmt(lo)}-{fmt(hi)}]"

    gap = (fig["strata"] / fig["qemu"] - 1) * 100 if fig["qemu"] else float("inf")
    verdict = "met" if fig["strata"] >= fig["qemu"] else "**not met**"
    overlap = spread["strata"][0] <= spread["qemu"][1] and spread["qemu"][0] <= spread["strata"][1]
    note = "; ranges overlap" if overlap else ""
    print(f"| {label} | {show('strata')} | {show('qemu')} | {verdict} ({gap:+.0f}%{note}) |")
    rounds = lambda v: " ".join(fmt(figure(x)) for x in res[v])
    print(f"| (rounds, in order) | {rounds('strata')} | {rounds('qemu')} | |", flush=True)


def net_lines(args):
    """The eight virtio-net lines (or those the options select), each measured in
    `args.rounds` interleaved rounds per VMM; medians, spreads and verdicts."""
    print("| test (median [lowest-highest] of the rounds) | strata | qemu | verdict on the medians |")
    print("|---|---|---|---|")
    for size in () if args.only_udp else (64, 1514):
        res = interleaved(args, lambda v: guest_to_host(v, args, size))
        net_row(f"guest->host {size}-byte frames (pps)", res, None, 0)
        res = interleaved(args, lambda v: host_to_guest(v, args, size))
        net_row(f"host->guest {size}-byte frames (pps received; host sent)", res,
                lambda r: f" ({r[1]})", 0)
    directions = args.udp_directions.split(",")
    for t in args.udp_transports.split(","):
        if "g2h" in directions:
            res = interleaved(args, lambda v: udp_guest_to_host(v, args, t))
            net_row(f"UDP guest->host, 1472-byte payloads, {t} (MiB/s at the host socket; "
                    "received, lost)", res, lambda r: f" ({r[1]}, {r[2]} lost)", 1)
        if "h2g" in directions:
            res = interleaved(args, lambda v: udp_host_to_guest(v, args, t))
            net_row(f"UDP host->guest, 1472-byte payloads, {t} (MiB/s the guest received; "
                    "received of sent)", res, lambda r: f" ({r[1]} of {r[2]})", 1)


def vsock_profile(pid, phase):
    """BENCH_VSOCK_PROFILE=1: attaches `strace -c -f` to VMM `pid` for one vsock phase and
    returns the process; vsock_profile_end() prints its syscall counts. Tracing slows the
    VMM down: the figures of a profiled run are not results."""
    if not os.environ.get("BENCH_VSOCK_PROFILE"):
        return None
    out = tempfile.mktemp(prefix=f"strata-bench-strace-{phase}-")
    p = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=open(out + ".err", "w"))
    # strace opens its output file before it attaches; a SIGINT before that kills it silently.
    for _ in range(300):
        if os.path.exists(out) or p.poll() is not None:
            break
        time.sleep(0.01)
    time.sleep(0.5)
    return p, out


def vsock_profile_end(prof, label, n):
    if prof is None:
        return
    p, out = prof
    p.send_signal(2)
    p.wait()
    print(f"-- {label}: syscalls per {n} (strace -c -f)")
    if not os.path.exists(out):
        print(open(out + ".err").read())
        return
    for line in open(out).read().splitlines():
        f = line.split()
        if len(f) >= 5 and f[3].isdigit():
            print(f"   {f[-1]:20} {int(f[3]) / n:8.2f}")


def vsock_thread_cpu(pid):
    """CPU time (s) of each thread of `pid` by name (schedstat), and its context switches."""
    out = {}
    for name, _, run, sw in thread_stats(pid, switches=True):
        a, b = out.get(name, (0, 0))
        out[name] = (a + run, b + sw)
    return out


def vsock_cpu_report(vmm, label, pid, before, n):
    """BENCH_PROFILE=1: each VMM thread's CPU time and context switches per unit of work."""
    if not os.environ.get("BENCH_PROFILE"):
        return
    after = vsock_thread_cpu(pid)
    for name, (run, sw) in sorted(after.items()):
        run0, sw0 = before.get(name, (0, 0))
        print(f"   {vmm} {name:16} {(run - run0) / n * 1e6:8.1f} us CPU, "
              f"{(sw - sw0) / n:6.2f} switches per {label}")


def vsock_rounds(args):
    """`--vsock-rounds N`: N interleaved rounds (Strata, Firecracker, Strata, ...) of the two
    vsock lines; prints every round, then the median and spread (min-max) per VMM."""
    vmms = ["strata"] + (["firecracker"] if args.firecracker else [])
    res = {v: ([], []) for v in vmms}
    for i in range(args.vsock_rounds):
        for v in vmms:
            rtt, mibs = vsock(v, args)
            res[v][0].append(rtt)
            res[v][1].append(mibs)
            print(f"round {i + 1} {v}: rtt {rtt:.1f} us, {mibs:.1f} MiB/s", flush=True)
    cell = lambda xs: (f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})")
    print(f"| vsock line ({args.vsock_rounds} rounds, median (min-max)) | "
          + " | ".join(vmms) + " |")
    print("|---|" + "---|" * len(vmms))
    print("| round trip, 1 byte (us, median of each round) | "
          + " | ".join(cell(res[v][0]) for v in vmms) + " |")
    print("| echo throughput, 64 KiB writes (MiB/s each way) | "
          + " | ".join(cell(res[v][1]) for v in vmms) + " |")
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--strata", default="target/x86_64-unknown-linux-gnu/release/strata")
    p.add_argument("--guest", required=True)
    p.add_argument("--frames", type=int, default=200000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--datagrams", type=int, default=100000)
    p.add_argument("--udp-transports", default="mmio,pci",
                   help="transports of the UDP lines (mmio: QEMU microvm; pci: QEMU q35)")
    p.add_argument("--udp-directions", default="g2h,h2g",
                   help="g2h: guest -> host, h2g: host -> guest")
    p.add_argument("--only-udp", action="store_true", help="the UDP lines alone")
    p.add_argument("--rounds", type=int, default=1,
                   help="virtio-net lines: interleaved rounds per VMM (median, spread, verdict)")
    p.add_argument("--no-vsock", action="store_true", help="the virtio-net lines alone")
    p.add_argument("--peer-strata", help="A/B: run this Strata binary in QEMU's place")
    p.add_argument("--rtts", type=int, default=2000)
    p.add_argument("--vsock-mib", type=int, default=256)
    p.add_argument("--firecracker", help="Firecracker binary: its vsock as a yardstick")
    p.add_argument("--only-vsock", action="store_true", help="the vsock lines alone")
    p.add_argument("--vsock-rounds", type=int, default=1,
                   help="interleaved rounds of the vsock lines (Strata, Firecracker, ...)")
    args = p.parse_args()
    if args.only_vsock:
        os.sched_setaffinity(0, CPUS[:1])
        print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; machine: {os.uname().nodename} "
              f"{os.cpu_count()} CPUs, {os.uname().release}; load {os.getloadavg()}")
        vsock_rounds(args)
        print(f"load after: {os.getloadavg()}")
        return
    # The script's threads (senders, receivers, samplers) and the VMMs' I/O threads share the
    # first CPU, the vCPU has the second (pin()).
    os.sched_setaffinity(0, CPUS[:1])
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "add", NS)
    try:
        print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; machine: {os.uname().nodename} "
              f"{os.cpu_count()} CPUs, {os.uname().release}")
        net_lines(args)
        if args.only_udp or args.no_vsock:
            return
        print("| test | strata | qemu |")
        print("|---|---|---|")
        rtt, mibs = vsock("strata", args)
        fc_rtt, fc_mibs = vsock("firecracker", args) if args.firecracker else (None, None)
        fc = lambda v: "n/a" if v is None else f"{v:.1f}"
        print(f"| vsock round trip, 1 byte (us, median) | {rtt:.1f} | n/a (Firecracker "
              f"{fc(fc_rtt)}) |")
        print(f"| vsock echo throughput, 64 KiB writes (MiB/s each way) | {mibs:.1f} | n/a "
              f"(Firecracker {fc(fc_mibs)}) |")
    finally:
        sh("ip", "netns", "del", NS, check=False)


if __name__ == "__main__":
    sys.exit(main())
