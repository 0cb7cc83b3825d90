#!/usr/bin/env python3
"""Transport benchmark: what a virtio device costs at boot under virtio-mmio and virtio-pci.

Run by hand (never in CI):
    python3 bench/transport.py [--runs 20] [--virtio-guest PATH] [--linux VMLINUX --linux-runs 3]
Builds nothing: run `cargo build --release` first. Two measurements, runs interleaved:

1. exec -> first serial byte of the `pvh` test guest (which touches no device) with no virtio
   device, with an rng on virtio-mmio, with an rng on virtio-pci: what creating the device and
   its transport costs the VMM before the guest runs (ioeventfds, irqfds, PCI root).
2. With --virtio-guest (the guest kit's `virtio` guest): exec -> the guest's `rng: read` line,
   a guest that finds the device (mmio: the command line; pci: a bus-0 scan through 0xCF8),
   negotiates, sets up a queue and reads 64 bytes, per transport (mmio, pci modern,
   pci legacy).
3. With --linux (a PVH vmlinux with the virtio-mmio, virtio-pci, console and rng drivers and no
   root device): exec -> `VFS: Unable to mount root` on the serial console, with an rng and a
   console (hvc0) on each transport: the whole kernel boot including device discovery.

Prints Markdown tables of medians (and min/max), ready for docs/benchmarks.md.
"""
import argparse
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATA = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata")


def guest_path(name):
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    return subprocess.check_output([exe, name], text=True).strip()


def time_to(cmd, marker):
    """Seconds from exec to the first stdout line containing `marker` (b"" = first byte)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    try:
        if not marker:
            if not p.stdout.read(1):
                raise RuntimeError(f"no output from {cmd}")
            t = time.perf_counter() - t0
        else:
            t = None
            for line in p.stdout:
                if marker in line:
                    t = time.perf_counter() - t0
                    break
            if t is None:
                raise RuntimeError(f"{marker!r} never appeared: {cmd}")
        p.stdout.read()
    finally:
        p.wait()
    return t


def table(title, results):
    print(f"\n{title}\n")
    print("| case | median (ms) | min (ms) | max (ms) |")
    print("|---|---|---|---|")
    for name, xs in results.items():
        ms = [x * 1000 for x in xs]
        print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--virtio-guest", help="path of the guest kit's virtio.elf")
    ap.add_argument("--linux", help="path of a PVH vmlinux with the virtio drivers")
    ap.add_argument("--linux-runs", type=int, default=3)
    args = ap.parse_args()
    pvh = guest_path("pvh")
    base = [STRATA, "run", "--kernel", pvh, "--cmdline", "bench"]
    boot_cases = {
        "no device": base,
        "rng on mmio": base + ["--rng", "src=/dev/urandom", "--transport", "mmio"],
        "rng on pci": base + ["--rng", "src=/dev/urandom", "--transport", "pci"],
    }
    guest_cases = {}
    if args.virtio_guest:
        for name, guest_tr, tr in (("mmio", "mmio", "mmio"), ("pci modern", "pci", "pci"),
                                   ("pci legacy", "pci-legacy", "pci")):
            guest_cases[name] = [STRATA, "run", "--kernel", args.virtio_guest, "--cmdline",
                                 f"transport={guest_tr} op=rng", "--rng", "src=/dev/urandom",
                                 "--transport", tr]
    boot = {k: [] for k in boot_cases}
    guest = {k: [] for k in guest_cases}
    for _ in range(args.runs):
        for name, cmd in boot_cases.items():
            boot[name].append(time_to(cmd, b""))
        for name, cmd in guest_cases.items():
            guest[name].append(time_to(cmd, b"rng: read"))
    linux_cases = {}
    if args.linux:
        cl = ("console=ttyS0 console=hvc0 reboot=k panic=-1 noxsave "
              "clearcpuid=288,295,308,151,141 rodata=off")
        for tr in ("mmio", "pci"):
            linux_cases[f"Linux, rng + console on {tr}"] = [
                STRATA, "run", "--kernel", args.linux, "--memory", "size=256M", "--cmdline", cl,
                "--rng", "src=/dev/urandom", "--console", "null", "--transport", tr,
                "--timeout", "600"]
    linux = {k: [] for k in linux_cases}
    for _ in range(args.linux_runs if linux_cases else 0):
        for name, cmd in linux_cases.items():
            linux[name].append(time_to(cmd, b"VFS: Unable to mount root"))
    print(f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: "
          f"{platform.node()} {os.cpu_count()} CPUs, {platform.release()}; runs: {args.runs}, "
          f"interleaved; load average at the end: {os.getloadavg()[0]:.1f}")
    table("exec -> first serial byte, `pvh` guest (device set-up cost)", boot)
    if guest:
        table("exec -> `rng: read`, `virtio` guest (find, negotiate, one request)", guest)
    if linux:
        table(f"exec -> `VFS: Unable to mount root`, Linux ({args.linux_runs} runs)", linux)
    print("\nCommands:\n")
    for cmd in list(boot_cases.values()) + list(guest_cases.values()) + list(linux_cases.values()):
        print("    " + " ".join(cmd))


if __name__ == "__main__":
    main()
