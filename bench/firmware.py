#!/usr/bin/env python3
"""Firmware boot benchmark (issue 11 item 9): exec -> SeaBIOS jumps to the boot sector, Strata
`--firmware` vs QEMU `-M pc`, the same Debian bios-256k.bin and the same disk.

Run by hand (never in CI), after `cargo build --release`, under `chrt -f 1`:
  chrt -f 1 python3 bench/firmware.py [--pairs 3] [--disk IMG.qcow2]

The disk (built here unless --disk is given) is a qcow2 image with GRUB i386-pc in its MBR and
embedding area and an ext2 partition (what strata/tests/firmware_disk.rs builds); both VMMs
attach it as virtio-blk over PCI (Strata `transport=pci`, QEMU `if=virtio`) with 128 MiB and
1 vCPU. The event timed is SeaBIOS's own log line "Booting from 0000:7c00", printed on its
debug port 0x402 right before it jumps to the boot sector it loaded (Strata merges port 0x402
into its serial output; QEMU gets `-debugcon stdio -global isa-debugcon.iobase=0x402`).
Each pair runs Strata then QEMU; prints the medians and the ratio, ready for
docs/benchmarks.md.
"""
import argparse
import os
import platform
import statistics
import struct
import subprocess
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIOS = "/usr/share/seabios/bios-256k.bin"
MARK = b"Booting from 0000:7c00"
GRUB = "/usr/lib/grub/i386-pc"


def build_disk(tmp):
    """MBR boot.img + core.img (biosdisk, part_msdos, ext2) + an ext2 partition at 1 MiB."""
    root = os.path.join(tmp, "root")
    os.makedirs(os.path.join(root, "boot/grub"))
    with open(os.path.join(root, "boot/grub/grub.cfg"), "w") as f:
        f.write("set timeout=0\n")
    core, fs = os.path.join(tmp, "core.img"), os.path.join(tmp, "fs.img")
    subprocess.check_call(["grub-mkimage", "-O", "i386-pc", "-d", GRUB, "-o", core,
                           "-p", "(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2"])
    subprocess.check_call(["mke2fs", "-q", "-F", "-t", "ext2", "-d", root, fs, "8M"])
    mbr = bytearray(open(os.path.join(GRUB, "boot.img"), "rb").read())
    core_b, fs_b = open(core, "rb").read(), open(fs, "rb").read()
    mbr[0x1be:0x1ce] = struct.pack("<B3sB3sII", 0x80, b"\0\0\0", 0x83, b"\0\0\0", 2048,
                                   len(fs_b) // 512)
    # Entries 2-4 empty (boot.img's code runs into them; GRUB would reject the table).
    mbr[0x1ce:0x1fe] = bytes(0x30)
    raw = os.path.join(tmp, "disk.raw")
    with open(raw, "wb") as f:
        f.write(bytes(mbr) + core_b + b"\0" * (2048 * 512 - 512 - len(core_b)) + fs_b)
    img = os.path.join(tmp, "disk.qcow2")
    subprocess.check_call(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img])
    return img


def time_to_mark(cmd, limit=600):
    """Seconds from exec until MARK appears on the command's standard output."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    try:
        while MARK not in buf:
            chunk = p.stdout.read1(65536)
            if not chunk or time.monotonic() - start > limit:
                raise RuntimeError(f"no {MARK!r} from {cmd[0]}: {buf[-300:]!r}")
            buf += chunk
        return time.monotonic() - start
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--disk")
    args = ap.parse_args()
    strata = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata")
    with tempfile.TemporaryDirectory() as tmp:
        disk = args.disk or build_disk(tmp)
        cmds = {
            "Strata": [strata, "run", "--firmware", BIOS, "--memory", "128M",
                       "--disk", f"path={disk},format=qcow2,transport=pci"],
            "QEMU -M pc": ["qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-cpu", "qemu64",
                           "-m", "128", "-smp", "1", "-bios", BIOS, "-display", "none",
                           "-nodefaults", "-serial", "null", "-debugcon", "stdio",
                           "-global", "isa-debugcon.iobase=0x402", "-drive",
                           f"file={disk},if=virtio,format=qcow2"],
        }
        times = {k: [] for k in cmds}
        for _ in range(args.pairs):
            for name, cmd in cmds.items():
                times[name].append(time_to_mark(cmd))
    load = open("/proc/loadavg").read().split()[:3]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}; load average {' '.join(load)}")
    print("\n| VMM | exec -> 'Booting from 0000:7c00' median (s) | runs (s) |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {', '.join(f'{x:.2f}' for x in t)} |")
    s, q = statistics.median(times["Strata"]), statistics.median(times["QEMU -M pc"])
    print(f"\nStrata / QEMU: {s / q:.2f}x (target <= 0.5x)")
    print(f"command: chrt -f 1 python3 bench/firmware.py --pairs {args.pairs}")


if __name__ == "__main__":
    main()
