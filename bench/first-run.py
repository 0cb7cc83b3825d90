#!/usr/bin/env python3
"""exec -> first guest instruction, untraced (issue 13 item 3).

Run by hand (never in CI), as root, after `cargo build --release`:
  python3 bench/first-run.py [--strata [LABEL=]PATH ...] [--firecracker PATH]
                             [--cloud-hypervisor PATH] [--runs 30]

bench/startup-strace.py gives the step-by-step breakdown, but strace stops the process at
every traced call. Here the kernel's own tracepoints time two events per run without stopping
anything: `sched:sched_process_exec` (the VMM's execve) and the first
`syscalls:sys_enter_ioctl` with cmd KVM_RUN (0xae80), the moment the first vCPU enters the
guest. `perf record` starts each VMM; the runs of the VMMs are interleaved (each round runs
every VMM once) and the table gives the median, p10 and p90 in ms. Same guest and argv as
bench/density.py (the one-line `density` guest, 128 MiB, 1 vCPU).
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import density  # noqa: E402  (bench/density.py: the VMMs' argv and the guests)

KVM_RUN = 0xAE80


def one_run(argv, data):
    subprocess.run(["perf", "record", "-q", "-o", data, "-e", "sched:sched_process_exec",
                    "-e", "syscalls:sys_enter_ioctl", "--filter", f"cmd == {KVM_RUN:#x}",
                    "--", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60, check=False)
    out = subprocess.run(["perf", "script", "-i", data, "-F", "time,event"],
                         capture_output=True, text=True, check=True).stdout
    exec_at = run_at = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        t = float(parts[0].rstrip(":"))
        if "sched_process_exec" in parts[1] and exec_at is None:
            exec_at = t
        elif "sys_enter_ioctl" in parts[1] and exec_at is not None:
            run_at = t
            break
    if exec_at is None or run_at is None:
        return None
    return (run_at - exec_at) * 1000.0


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strata", action="append", default=[],
                    help="[LABEL=]PATH of a strata binary (repeatable)")
    ap.add_argument("--firecracker")
    ap.add_argument("--cloud-hypervisor")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--memory-mib", type=int, default=128)
    args = ap.parse_args()
    kernel = density.guest("density")
    tmp = tempfile.mkdtemp(prefix="first-run-")
    vmms = density.vmms_from(args.strata, args.firecracker, args.cloud_hypervisor,
                             args.memory_mib, tmp)
    results = {v.name: [] for v in vmms}
    failed = {v.name: 0 for v in vmms}
    load_before = os.getloadavg()
    for i in range(args.runs):
        for v in vmms:
            ms = one_run(v.argv(kernel, i), os.path.join(tmp, "perf.data"))
            if ms is None:
                failed[v.name] += 1
            else:
                results[v.name].append(ms)
    load_after = os.getloadavg()
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; "
          f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.release()}; "
          f"load before {load_before[0]:.1f}, after {load_after[0]:.1f}; runs: {args.runs}")
    print("command: " + " ".join(sys.argv))
    print()
    print("| VMM | exec -> first KVM_RUN, median (ms) | p10 | p90 | failed |")
    print("|---|---|---|---|---|")
    for name in results:
        v = results[name]
        if v:
            print(f"| {name} | {statistics.median(v):.2f} | {pct(v, 0.1):.2f} | "
                  f"{pct(v, 0.9):.2f} | {failed[name]} |")
        else:
            print(f"| {name} | - | - | - | {failed[name]} |")


if __name__ == "__main__":
    main()
