#!/usr/bin/env python3
"""virtio-blk benchmark: Strata vs QEMU 7.2 running the same guest, io_uring on the host as the
ceiling.

Run by hand (never in CI):  cargo build --release && python3 bench/virtio-blk.py
Needs qemu-system-x86_64, qemu-img, fio and fincore (util-linux-extra).

The guest is the kit's `virtio` guest (guests/rust/virtio.rs); in ring 3 it keeps `qd` reads
in flight on one virtio-blk device, polls the used ring, and times them with the TSC, whose rate
it measures against the CMOS RTC (op=bench-randread, op=bench-seqread). Every VM runs three
operations in one boot: 4 KiB random reads at QD1 (5,000) and QD32 (50,000), 1 MiB sequential
reads at QD4 (512 MiB).

Images (DIR, default /tmp/strata-blk-bench): a 2 GiB raw file of random data and a qcow2 copy
(qemu-img convert: every cluster allocated). Modes: raw with O_DIRECT (Strata direct=on, QEMU
cache=none), raw through the page cache and qcow2 through the page cache (before every reader
in these two, fio job and VM alike, the file is evicted from the page cache and read with
`cat` until `fincore` finds all of it cached: this host drops cached pages of a 2 GiB file in
the background, and a cache built by qemu-img's writes, in small folios, reads slower than
one `cat` read ahead; see `warm`). The host ceiling
is fio's io_uring engine on the raw file in the same mode.

A/B runs: --modes (direct,cache,qcow2), --vmms (fio,strata-mmio,strata-pci,qemu-microvm,
qemu-q35), --strata PATH (another build), --boot-runs 0 (no boot table).

--rounds N: every mode N times, the readers' order reversed every other round (so that no
reader always runs first, after fio or after the other VMM); each cell is the median of the
N rounds with the lowest and highest, and the targets are judged on the medians. One round
swings by 20-30% on this host, more than most gaps between the VMMs.

VMMs: Strata over virtio-mmio and virtio-pci; QEMU -M microvm (virtio-mmio v2) and -M q35
(virtio-pci modern), each with aio=io_uring.

--paired N: qcow2 against raw inside one Strata VM per transport, both images attached (raw
as disk 0, qcow2 as disk 1, page cache), the guest alternating between them N times (which
goes first swaps every pair) at QD1, QD32 and 1 MiB; each line is the median of the N
qcow2/raw ratios with their range. Both images are warmed once before each VM. The two
readers of a pair run within a second of each other, so the host's drift between rounds,
which moves separate VMs' figures by 20-30%, cancels out of the ratio.

Boot-to-first-byte: exec -> first serial byte of the `pvh` guest (which touches no device)
with no disk, one raw disk and one qcow2 disk (virtio-mmio), `--boot-runs` interleaved runs,
medians: what attaching a disk costs before the guest runs.

Prints a Markdown table and the commands, ready for docs/benchmarks.md.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import statistics
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QD1_IOS = 5000
QD32_IOS = 50000
SEQ_IOS = 512
SEQ_QD = 4

COMMANDS = []
FAILURES = []


def guest_path(name):
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    return subprocess.check_output([exe, name], text=True).strip()


def run(cmd, timeout=120):
    """A command's output; one that runs past `timeout` seconds (a VM whose guest stopped
    hearing from its disk) is killed and gives its output so far, which then lacks the
    missing bench lines ("failed"), so that one stuck VM cannot hold the whole run."""
    COMMANDS.append(" ".join(cmd))
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        return p.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return out + f"\n(killed after {timeout} s)"


def make_images(d):
    os.makedirs(d, exist_ok=True)
    raw, qcow2 = os.path.join(d, "a.raw"), os.path.join(d, "a.qcow2")
    if not os.path.exists(raw):
        with open(raw, "wb") as f:
            for _ in range(2048):
                f.write(os.urandom(1 << 20))
    if not os.path.exists(qcow2):
        subprocess.check_call(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
    return raw, qcow2


def cached_fraction(path):
    """The fraction of `path`'s pages in the page cache, by `fincore` (util-linux)."""
    out = subprocess.check_output(["fincore", "--bytes", "--noheadings", "--raw",
                                   "--output", "RES,SIZE", path], text=True).split()
    return int(out[0]) / max(int(out[1]), 1)


def evict(path):
    """Drops `path`'s clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    """Evicts `path` from the page cache, then reads it in until fincore finds all of it
    there; returns the cached fraction found. Done before every reader in a page-cache mode,
    fio and each VMM alike: this host drops cached pages of a 2 GiB file in the background,
    and the speed of a cached read depends on how the cache was built. Pages qemu-img wrote
    sit in 4 KiB folios, pages read ahead by `cat` in large ones: 1 MiB reads of the qcow2
    copy ran at 0.6x of raw until it was evicted and read again, then at 1.0x
    (`filemap_get_read_batch` 14% of the worker's time, against 1%)."""
    evict(path)
    for _ in range(5):
        subprocess.check_call(["cat", path], stdout=subprocess.DEVNULL)
        got = cached_fraction(path)
        if got >= 0.999:
            break
    return got


def guest_ops(transport):
    return (f"transport={transport} op=bench-randread qd=1 ios={QD1_IOS} "
            f"op=bench-randread qd=32 ios={QD32_IOS} "
            f"op=bench-seqread qd={SEQ_QD} ios={SEQ_IOS} exit=0")


# The guest's line for one bench operation: disk, kind, queue depth, IOPS, MiB/s.
BENCH = re.compile(r"blk(\d+): bench (\w+) bs=\d+ qd=(\d+) .* iops=(\d+) mib_s=([\d.]+)")


def parse(out):
    """(QD1 IOPS, QD32 IOPS, seq MiB/s) from a guest's output."""
    got = {}
    for m in BENCH.finditer(out):
        kind, qd, iops, mib = m.group(2), int(m.group(3)), int(m.group(4)), float(m.group(5))
        got[(kind, qd)] = mib if kind == "seqread" else iops
    # A line the guest did not report (it gave up waiting for the device) stays None and is
    # printed as "failed", with the guest's last line, rather than ending the whole run.
    cells = tuple(got.get(k) for k in (("randread", 1), ("randread", 32), ("seqread", SEQ_QD)))
    if None in cells:
        last = [l for l in out.splitlines() if l.strip()][-1:] or ["(no output)"]
        print(f"a guest did not report every bench line: {last[0]}", file=sys.stderr)
        FAILURES.append(last[0])
    return cells


STRATA = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata")


def strata(kernel, transport, path, fmt, direct):
    disk = f"path={path},format={fmt},readonly=on" + (",direct=on" if direct else "")
    return [STRATA, "run", "--kernel", kernel,
            "--transport", transport, "--disk", disk, "--cmdline", guest_ops(transport)]


def qemu(kernel, machine, path, fmt, direct, aio):
    drive = f"file={path},if=none,id=d0,format={fmt},readonly=on,aio={aio}"
    if direct:
        drive += ",cache=none"
    if machine == "microvm":
        m = ["-M", "microvm,acpi=off,rtc=on", "-global", "virtio-mmio.force-legacy=false"]
        dev, transport = "virtio-blk-device,drive=d0", "mmio"
    else:
        m = ["-M", "q35"]
        dev, transport = "virtio-blk-pci,drive=d0,disable-legacy=on", "pci"
    return (["qemu-system-x86_64"] + m + ["-enable-kvm", "-cpu", "qemu64", "-m", "128",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-drive", drive,
            "-device", dev, "-kernel", kernel, "-append", guest_ops(transport)])


def fio(path, direct, rw, bs, qd, ios):
    out = run(["fio", "--name=b", f"--filename={path}", "--ioengine=io_uring", f"--rw={rw}",
               f"--bs={bs}", f"--direct={int(direct)}", f"--iodepth={qd}",
               f"--number_ios={ios}", "--size=2g", "--norandommap", "--readonly",
               "--output-format=json"])
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    return job["iops"] if rw == "randread" else job["bw_bytes"] / (1 << 20)


def first_byte(cmd):
    """Seconds from exec to the first byte on standard output (the serial port)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    p.stdout.read()
    p.wait()
    if not first:
        sys.exit(f"no output from {cmd}")
    return t1 - t0


def boot_rows(raw, qcow2, runs):
    pvh = guest_path("pvh")
    base = [os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/strata"), "run", "--kernel", pvh,
            "--cmdline", "bench"]
    cases = [("no disk", base),
             ("one raw disk (mmio)", base + ["--disk", f"path={raw},format=raw,readonly=on"]),
             ("one qcow2 disk (mmio)", base + ["--disk", f"path={qcow2},format=qcow2,readonly=on"])]
    for _, cmd in cases:
        COMMANDS.append(" ".join(cmd))
    times = {name: [] for name, _ in cases}
    for _ in range(runs):
        for name, cmd in cases:
            times[name].append(first_byte(cmd) * 1000)
    return [(name, statistics.median(v), min(v), max(v)) for name, v in times.items()]


def measure_mode(mode, kernel, want_vmms, cached, reverse):
    """One round of one mode: fio (raw images) and each VMM; [((label, reader), cells)]."""
    _, label, path, fmt, direct = mode
    # Page-cache modes: the file is read in (and checked with fincore) before *every*
    # reader, fio and each VM alike, not once per mode.
    before = (lambda: cached.append((label, warm(path)))) if not direct else (lambda: None)
    readers = []
    if fmt == "raw" and "fio" in want_vmms:
        readers.append(("fio", "host: fio io_uring", None))
    readers += [("strata-mmio", "strata, virtio-mmio", strata(kernel, "mmio", path, fmt, direct)),
                ("strata-pci", "strata, virtio-pci", strata(kernel, "pci", path, fmt, direct)),
                ("qemu-microvm", "qemu microvm, aio=io_uring",
                 qemu(kernel, "microvm", path, fmt, direct, "io_uring")),
                ("qemu-q35", "qemu q35, aio=io_uring",
                 qemu(kernel, "q35", path, fmt, direct, "io_uring"))]
    readers = [r for r in readers if r[0] in want_vmms]
    out = []
    for key, name, cmd in (reversed(readers) if reverse else readers):
        if cmd is None:
            host = []
            for rw, bs, qd, ios in (("randread", "4k", 1, QD1_IOS),
                                    ("randread", "4k", 32, QD32_IOS),
                                    ("read", "1m", SEQ_QD, SEQ_IOS)):
                before()
                host.append(fio(path, direct, rw, bs, qd, ios))
            got = tuple(host)
        else:
            before()
            got = parse(run(cmd))
        print(f"{label:18} {name:28} {got}", file=sys.stderr)
        out.append(((label, name), got))
    # The table lists readers in their usual order whatever order they ran in.
    return sorted(out, key=lambda x: [r[1] for r in readers].index(x[0][1]))


PAIRED_QD1_IOS = 20000


def paired(kernel, transport, raw, qcow2, pairs):
    """qcow2/raw ratios from one VM reading both images in turn (see --paired); returns
    {line: [ratio per pair]} for the lines QD1, QD32 and 1 MiB."""
    for path in (raw, qcow2):
        warm(path)
    ops = []
    for i in range(pairs):
        for disk in ((0, 1) if i % 2 == 0 else (1, 0)):
            ops += [f"op=bench-randread disk={disk} qd=1 ios={PAIRED_QD1_IOS}",
                    f"op=bench-randread disk={disk} qd=32 ios={QD32_IOS}",
                    f"op=bench-seqread disk={disk} qd={SEQ_QD} ios={SEQ_IOS}"]
    cmd = [STRATA, "run", "--kernel", kernel, "--transport", transport,
           "--disk", f"path={raw},format=raw,readonly=on",
           "--disk", f"path={qcow2},format=qcow2,readonly=on",
           "--cmdline", f"transport={transport} " + " ".join(ops) + " exit=0"]
    got = {}  # (line, disk) -> [figure per pair, in order]
    for m in BENCH.finditer(run(cmd, timeout=600)):
        disk, kind, qd = int(m.group(1)), m.group(2), int(m.group(3))
        line = {("randread", 1): "QD1", ("randread", 32): "QD32"}.get((kind, qd), "1 MiB")
        got.setdefault((line, disk), []).append(
            float(m.group(5)) if kind == "seqread" else int(m.group(4)))
    out = {}
    for line in ("QD1", "QD32", "1 MiB"):
        r, q = got.get((line, 0), []), got.get((line, 1), [])
        if len(r) != pairs or len(q) != pairs:
            FAILURES.append(f"paired {transport} {line}: {len(r)} raw and {len(q)} qcow2 "
                            f"figures of {pairs}")
            continue
        out[line] = [b / a for a, b in zip(r, q)]
    return out


def medians(rounds):
    """Per cell: (median, lowest, highest) over the rounds; None if a round failed."""
    cells = []
    for i in range(3):
        v = [r[i] for r in rounds]
        cells.append(None if None in v else (statistics.median(v), min(v), max(v)))
    return tuple(cells)


def verdicts(rows):
    """Issue 8 item 10's targets, judged on the medians."""
    get = {(label, name): cells for label, name, cells in rows}
    out = []
    pairs = (("strata, virtio-mmio", "qemu microvm, aio=io_uring"),
             ("strata, virtio-pci", "qemu q35, aio=io_uring"))
    names = ("QD1", "QD32", f"1 MiB QD{SEQ_QD}")
    met = total = 0
    for label in ("raw, O_DIRECT", "raw, page cache", "qcow2, page cache"):
        for s, q in pairs:
            if (label, s) not in get or (label, q) not in get:
                continue
            for i, n in enumerate(names):
                a, b = get[(label, s)][i], get[(label, q)][i]
                if a is None or b is None:
                    continue
                total += 1
                if a[0] >= b[0]:
                    met += 1
                else:
                    out.append(f"  below QEMU: {label}, {s}, {n}: {a[0]:,.0f} vs {b[0]:,.0f} "
                               f"({a[0] / b[0]:.2f}x)")
    if total:
        out.insert(0, f"At least QEMU: {met} of {total} cells (medians)")
    fio = get.get(("raw, O_DIRECT", "host: fio io_uring"))
    for s, _ in pairs:
        v = get.get(("raw, O_DIRECT", s))
        if fio and v and fio[1] and v[1]:
            out.append(f"Raw O_DIRECT QD32 vs fio: {s}: {v[1][0] / fio[1][0]:.2f}x (target 0.9x)")
        raw, q = get.get(("raw, page cache", s)), get.get(("qcow2, page cache", s))
        if raw and q:
            ratios = ", ".join(f"{n} {q[i][0] / raw[i][0]:.2f}x" for i, n in enumerate(names)
                               if q[i] and raw[i])
            out.append(f"qcow2 / raw (page cache): {s}: {ratios} (target 0.8x)")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.environ.get("DIR", "/tmp/strata-blk-bench"))
    ap.add_argument("--boot-runs", type=int, default=20)
    ap.add_argument("--skip-io", action="store_true")
    ap.add_argument("--modes", default="direct,cache,qcow2",
                    help="comma-separated subset of direct (raw O_DIRECT), cache (raw page "
                         "cache), qcow2 (qcow2 page cache); for A/B runs")
    ap.add_argument("--vmms", default="fio,strata-mmio,strata-pci,qemu-microvm,qemu-q35",
                    help="comma-separated subset of the readers; for A/B runs")
    ap.add_argument("--strata", default=None, help="the strata binary (default: this tree's)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every mode this many times, the readers' order reversed "
                         "every other round; cells are medians [lowest-highest]")
    ap.add_argument("--paired", type=int, default=0,
                    help="N pairs: qcow2 against raw inside one Strata VM per transport "
                         "(after the other modes)")
    args = ap.parse_args()
    global STRATA
    if args.strata:
        STRATA = args.strata
    want_modes = set(args.modes.split(","))
    want_vmms = set(args.vmms.split(","))
    load_start = os.getloadavg()
    kernel = guest_path("virtio")
    raw, qcow2 = make_images(args.dir)
    boot = boot_rows(raw, qcow2, args.boot_runs) if args.boot_runs > 0 else []
    if args.skip_io:
        modes = []
    else:
        modes = [m for m in (("direct", "raw, O_DIRECT", raw, "raw", True),
                             ("cache", "raw, page cache", raw, "raw", False),
                             ("qcow2", "qcow2, page cache", qcow2, "qcow2", False))
                 if m[0] in want_modes]
    cached = []
    # results[(mode label, reader name)] = [(QD1, QD32, seq) per round]; `order` keeps the
    # table's row order.
    results, order = {}, []
    for rnd in range(args.rounds):
        for mode in modes:
            # Every other round runs the readers in the reverse order, so that no reader
            # always goes first (after fio, or after the other VMM).
            for key, got in measure_mode(mode, kernel, want_vmms, cached, rnd % 2 == 1):
                if key not in results:
                    order.append(key)
                results.setdefault(key, []).append(got)
    paired_rows = [(t, paired(kernel, t, raw, qcow2, args.paired))
                   for t in ("mmio", "pci")] if args.paired else []
    rows = [(label, name, medians(results[(label, name)])) for label, name in order]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_end = os.getloadavg()
    print(f"Date: {now}; machine: {platform.node()} {os.cpu_count()} CPUs, {platform.release()}")
    print(f"Load average (1/5/15 min) at start {load_start}, at end {load_end}")
    print()
    print("| boot case | exec -> first serial byte median (ms) | min | max |")
    print("|---|---|---|---|")
    for name, med, lo, hi in boot:
        print(f"| {name} | {med:.1f} | {lo:.1f} | {hi:.1f} |")
    print()
    print(f"| image | reader | 4 KiB rand QD1 IOPS | 4 KiB rand QD32 IOPS | 1 MiB seq QD{SEQ_QD} MiB/s |")
    print("|---|---|---|---|---|")
    def cell(v):
        if v is None:
            return "failed"
        med, lo, hi = v
        return f"{med:,.0f}" if args.rounds == 1 else f"{med:,.0f} [{lo:,.0f}-{hi:,.0f}]"
    for label, name, (q1, q32, seq) in rows:
        print(f"| {label} | {name} | {cell(q1)} | {cell(q32)} | {cell(seq)} |")
    print()
    for line in verdicts(rows):
        print(line)
    if args.paired:
        print(f"qcow2 / raw inside one VM ({args.paired} pairs; median ratio [lowest-highest]; "
              f"target 0.8x):")
        print()
        print("| transport | QD1 | QD32 | 1 MiB QD4 |")
        print("|---|---|---|---|")
        for transport, ratios in paired_rows:
            lines = (ratios.get(k) for k in ("QD1", "QD32", "1 MiB"))
            cells = [f"{statistics.median(v):.2f}x [{min(v):.2f}-{max(v):.2f}]" if v
                     else "failed" for v in lines]
            print(f"| strata, virtio-{transport} | " + " | ".join(cells) + " |")
        print()
    for f in FAILURES:
        print(f"failed: {f}")
    if cached:
        low = min(f for _, f in cached)
        print(f"Page cache before each page-cache reader (fincore): {len(cached)} checks, "
              f"lowest {low:.1%} of the file cached")
    print()
    print("Commands as run:")
    print()
    for c in dict.fromkeys(COMMANDS):
        print(f"    {c}")


if __name__ == "__main__":
    main()
