#!/usr/bin/env python3
"""Boot benchmark: Strata vs QEMU booting the same PVH test guest, paired runs.

Run by hand (never in CI):  python3 bench/boot.py [--runs 20]
Builds nothing: run `cargo build --release` first. Prints a Markdown table of medians for
exec -> first serial byte, exec -> exit, and peak RSS (ru_maxrss of the VMM process), plus the
exact commands, ready to paste into docs/benchmarks.md.
"""
import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guest_path(name):
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    return subprocess.check_output([exe, name], text=True).strip()


def measure(cmd):
    """Returns (seconds to first stdout byte, seconds to exit, peak RSS KiB, exit status).

    Peak RSS comes from GNU time wrapping the VMM: ru_maxrss seen by this Python process would
    include the forked Python image from before exec.
    """
    with tempfile.NamedTemporaryFile("r") as rss_file:
        wrapped = ["/usr/bin/time", "-q", "-f", "%M %x", "-o", rss_file.name] + cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        first = p.stdout.read(1)
        t1 = time.perf_counter()
        p.stdout.read()
        p.wait()
        t2 = time.perf_counter()
        rss, code = rss_file.read().split()[-2:]
    if not first:
        raise RuntimeError(f"no output from {cmd}")
    return t1 - t0, t2 - t0, int(rss), int(code)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--memory", default="128M")
    args = ap.parse_args()
    kernel = guest_path("pvh")
    strata = [os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata"), "run", "--kernel", kernel,
              "--memory", f"size={args.memory}", "--cmdline", "bench"]
    qemu = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "qemu64", "-m", args.memory,
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", kernel, "-append", "bench"]
    results = {"strata": [], "qemu": []}
    for _ in range(args.runs):
        for name, cmd in (("strata", strata), ("qemu", qemu)):
            first, total, rss, code = measure(cmd)
            expected = 0 if name == "strata" else 1
            if code != expected:
                raise RuntimeError(f"{name} exited {code}, expected {expected}")
            results[name].append((first, total, rss))
    print(f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: "
          f"{platform.node()} {os.cpu_count()} CPUs, {platform.release()}; runs: {args.runs} paired")
    print("\n| VMM | exec -> first serial byte (ms) | exec -> exit (ms) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    med = {}
    for name, rows in results.items():
        f = statistics.median(r[0] for r in rows) * 1000
        t = statistics.median(r[1] for r in rows) * 1000
        m = statistics.median(r[2] for r in rows) / 1024
        med[name] = (f, t, m)
        print(f"| {name} | {f:.1f} | {t:.1f} | {m:.1f} |")
    s, q = med["strata"], med["qemu"]
    print(f"\nStrata/QEMU: first byte {s[0] / q[0]:.2f}x, exit {s[1] / q[1]:.2f}x, RSS {s[2] / q[2]:.2f}x")
    print("\nCommands:\n")
    print("    " + " ".join(strata))
    print("    " + " ".join(qemu))


if __name__ == "__main__":
    main()
