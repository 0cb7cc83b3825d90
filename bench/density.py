#!/usr/bin/env python3
"""Density benchmark (issue 13): start, stop and pack one-line microVMs, Strata vs peers.

Run by hand (never in CI), after `cargo build --release`:
  python3 bench/density.py [--strata [LABEL=]PATH ...] [--firecracker PATH]
                           [--cloud-hypervisor PATH] [--qemu]
                           [--pairs 30] [--counts 1,10,100] [--repeats 5] [--memory-mib 128]

Guests: the `density` test guest (PVH; prints one line, then ends the VM through Cloud
Hypervisor's ACPI shutdown port, the i8042 reset or the debug-exit port) and `density-stay`
(prints its line and halts). Every VMM gets 1 vCPU and the same RAM and boots the same ELF.

Measures, for each VMM in the same run:
1. exec -> exit of one VM, paired runs (each round runs every VMM once, in turn): median, p90.
2. N VMs started at once (the one-line guest): wall time until every one has printed its line
   and exited (median of --repeats rounds, interleaved between VMMs), and VMs started per core
   per second (N / time / CPUs); failures counted.
3. N VMs of `density-stay` started at once: once every one has printed its line, the PSS of
   each VMM process (/proc/PID/smaps_rollup), mean per VM; then they are killed.
Prints Markdown tables and the commands, ready for docs/benchmarks.md.
"""
import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = b"strata-density-guest up"


def guest(name):
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    return subprocess.check_output([exe, name], text=True).strip()


class Vmm:
    """How to start one VM of a guest with a given VMM."""

    def __init__(self, name, argv_for, tmp):
        self.name = name
        self.argv_for = argv_for
        self.tmp = tmp

    def argv(self, kernel, index):
        return self.argv_for(kernel, index)


def strata(path, mib):
    return lambda kernel, i: [path, "run", "--kernel", kernel, "--memory", f"size={mib}M"]


def firecracker(path, mib, tmp):
    def argv(kernel, i):
        cfg = os.path.join(tmp, f"fc-{i}.json")
        with open(cfg, "w") as f:
            json.dump({
                "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
                "drives": [],
                "machine-config": {"vcpu_count": 1, "mem_size_mib": mib},
            }, f)
        return [path, "--no-api", "--config-file", cfg, "--level", "Error",
                "--id", f"density-{os.getpid()}-{i}"]
    return argv


def cloud_hypervisor(path, mib):
    return lambda kernel, i: [path, "--kernel", kernel, "--memory", f"size={mib}M",
                              "--cpus", "boot=1", "--serial", "tty", "--console", "off"]


def qemu(mib):
    return lambda kernel, i: ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu",
                              "qemu64", "-m", f"{mib}M", "-nodefaults", "-no-user-config",
                              "-nographic", "-serial", "stdio", "-device",
                              "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", kernel]


def vmms_from(strata_specs, firecracker_path, cloud_hypervisor_path, mib, tmp,
              with_qemu=False):
    """The VMMs a bench compares, from its options: each `--strata` spec (PATH or LABEL=PATH;
    none: the release build), then the peers whose paths are given, then QEMU microvm."""
    vmms = []
    for spec in strata_specs or [os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata")]:
        label, _, path = spec.rpartition("=")
        vmms.append(Vmm(label or "Strata", strata(path, mib), tmp))
    if firecracker_path:
        vmms.append(Vmm("Firecracker", firecracker(firecracker_path, mib, tmp), tmp))
    if cloud_hypervisor_path:
        vmms.append(Vmm("Cloud Hypervisor", cloud_hypervisor(cloud_hypervisor_path, mib), tmp))
    if with_qemu:
        vmms.append(Vmm("QEMU microvm", qemu(mib), tmp))
    return vmms


def start(vmm, kernel, i):
    return subprocess.Popen(vmm.argv(kernel, i), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def one_exit(vmm, kernel):
    t = time.perf_counter()
    p = start(vmm, kernel, 0)
    out, _ = p.communicate()
    dt = (time.perf_counter() - t) * 1e3
    if LINE not in out:
        raise RuntimeError(f"{vmm.name}: no guest line (exit {p.returncode}): {out[:200]!r}")
    return dt


def many_exit(vmm, kernel, n):
    t = time.perf_counter()
    procs = [start(vmm, kernel, i) for i in range(n)]
    ok = 0
    for p in procs:
        out, _ = p.communicate()
        ok += LINE in out
    return time.perf_counter() - t, n - ok


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def many_pss(vmm, kernel, n):
    procs = [start(vmm, kernel, i) for i in range(n)]
    failed = 0
    try:
        for p in procs:
            got = b""
            while LINE not in got:
                chunk = p.stdout.read1(4096) if hasattr(p.stdout, "read1") else p.stdout.read(1)
                if not chunk:
                    failed += 1
                    break
                got += chunk
        time.sleep(0.2)
        pss = [pss_kib(p.pid) for p in procs if p.poll() is None]
        pss = [x for x in pss if x is not None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
    return (statistics.mean(pss) if pss else float("nan")), failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", action="append",
                    help="PATH or LABEL=PATH of a strata binary (default target/x86_64-unknown-linux-gnu/release/strata);"
                         " repeat to compare builds in the same run")
    ap.add_argument("--firecracker")
    ap.add_argument("--cloud-hypervisor")
    ap.add_argument("--qemu", action="store_true")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--counts", default="1,10,100")
    ap.add_argument("--repeats", type=int, default=5,
                    help="rounds of N-at-once starts per count; the table gives the median")
    ap.add_argument("--memory-mib", type=int, default=128)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    tmp = tempfile.mkdtemp(prefix="strata-density-")
    mib = args.memory_mib
    vmms = vmms_from(args.strata, args.firecracker, args.cloud_hypervisor, mib, tmp,
                     with_qemu=args.qemu)
    exiting, staying = guest("density"), guest("density-stay")
    cpus = os.cpu_count()
    print(f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: "
          f"{platform.node()}, {cpus} CPUs, {platform.release()}; load average "
          f"{os.getloadavg()[0]:.1f}; {mib} MiB, 1 vCPU\n")

    times = {v.name: [] for v in vmms}
    for _ in range(args.pairs):
        for v in vmms:
            times[v.name].append(one_exit(v, exiting))
    print("| VMM | exec -> exit median (ms) | p90 (ms) | vs Firecracker |")
    print("|---|---|---|---|")
    fc = statistics.median(times["Firecracker"]) if "Firecracker" in times else None
    for v in vmms:
        t = sorted(times[v.name])
        med = statistics.median(t)
        ratio = f"{med / fc:.2f}x" if fc else "-"
        print(f"| {v.name} | {med:.1f} | {t[int(len(t) * 0.9) - 1]:.1f} | {ratio} |")

    print(f"\n| VMM | N | all printed and exited, median of {args.repeats} (ms) | "
          "VMs per core per second | failed (all rounds) | "
          "PSS per VM, all running (KiB) | failed (stay) |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        walls = {v.name: [] for v in vmms}
        fails = {v.name: 0 for v in vmms}
        for _ in range(args.repeats):  # interleaved: each round starts N of every VMM in turn
            for v in vmms:
                wall, failed = many_exit(v, exiting, n)
                walls[v.name].append(wall)
                fails[v.name] += failed
        for v in vmms:
            wall = statistics.median(walls[v.name])
            pss, failed_stay = many_pss(v, staying, n)
            print(f"| {v.name} | {n} | {wall * 1e3:.0f} | {n / wall / cpus:.1f} | "
                  f"{fails[v.name]} | {pss:.0f} | {failed_stay} |")
    print(f"\nLoad average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
