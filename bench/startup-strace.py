#!/usr/bin/env python3
"""Start-up breakdown (issue 13 item 3): where exec -> first guest instruction -> exit goes,
for Strata, Firecracker and Cloud Hypervisor, from strace timestamps.

Run by hand (never in CI), as root, after `cargo build --release`:
  python3 bench/startup-strace.py [--firecracker PATH] [--cloud-hypervisor PATH] [--runs 11]

Each VMM boots the `density` guest (prints one line and ends the VM; 128 MiB, 1 vCPU, the
same argv as bench/density.py) under
  strace -f --seccomp-bpf -ttt -e trace=execve,openat,ioctl,write,exit_group,rseq
(only these calls stop the tracee, so the tracing costs little beside them). For every run the
time of the first occurrence of each step after execve is taken; the table gives the median
over the runs, in ms since execve, per VMM. strace still adds a stop per traced call, so
absolute figures are above untraced runs (bench/density.py); the shares are what to read.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import density  # noqa: E402  (bench/density.py: the VMMs' argv and the guests)

# (label, predicate on one strace line): the first line after execve that matches.
STEPS = [
    ("libraries loaded, libc set up (first rseq)", lambda l: l.startswith("rseq(")),
    ("/dev/kvm opened", lambda l: '"/dev/kvm"' in l),
    ("KVM_CREATE_VM", lambda l: "KVM_CREATE_VM" in l),
    ("guest RAM registered (first KVM_SET_USER_MEMORY_REGION)",
     lambda l: "KVM_SET_USER_MEMORY_REGION" in l),
    ("KVM_CREATE_VCPU", lambda l: "KVM_CREATE_VCPU" in l),
    ("first KVM_RUN (guest's first instruction)", lambda l: "KVM_RUN" in l),
]
LINE_RE = re.compile(r'^(\d+) +(\d+\.\d+) (.*)$')


def parse(path):
    """Per step, ms since execve; plus the guest line written and the last exit."""
    rows = []
    with open(path) as f:
        for raw in f:
            m = LINE_RE.match(raw.rstrip("\n"))
            if m:
                rows.append((int(m.group(1)), float(m.group(2)), m.group(3)))
    t0 = next(t for _, t, l in rows if l.startswith("execve("))
    out = {}
    for label, pred in STEPS:
        hit = next((t for _, t, l in rows if pred(l)), None)
        out[label] = None if hit is None else (hit - t0) * 1e3
    # The guest's line reaches the console in one write or byte by byte (Cloud Hypervisor
    # writes to a duplicate of stdout): the first write after which one descriptor's
    # concatenated output (stderr aside) holds the whole line.
    text = {}
    out["guest line written"] = None
    for _, t, l in rows:
        m = re.match(r'write\((\d+), "((?:[^"\\]|\\.)*)"', l)
        if m and m.group(1) != "2":
            fd = m.group(1)
            text[fd] = text.get(fd, "") + m.group(2).encode().decode("unicode_escape")
            if density.LINE.decode() in text[fd]:
                out["guest line written"] = (t - t0) * 1e3
                break
    ends = [t for _, t, l in rows if "+++ exited" in l]
    main_pid = rows[0][0]
    main_end = [t for p, t, l in rows if p == main_pid and "+++ exited" in l]
    out["VMM process exited"] = (main_end[0] - t0) * 1e3 if main_end else None
    out["last traced process exited (Strata: its KVM reaper)"] = (max(ends) - t0) * 1e3 if ends else None
    return out


def run_once(vmm, kernel, tmp, i):
    trace = os.path.join(tmp, f"{vmm.name.split()[0]}-{i}.strace")
    argv = ["strace", "-f", "--seccomp-bpf", "-ttt", "-s", "256", "-o", trace,
            "-e", "trace=execve,openat,ioctl,write,exit_group,rseq"] + vmm.argv(kernel, i)
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, timeout=60)
    steps = parse(trace)
    if steps["guest line written"] is None:
        raise RuntimeError(f"{vmm.name}: no guest line in {trace} (exit {p.returncode})")
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--firecracker")
    ap.add_argument("--cloud-hypervisor")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--memory-mib", type=int, default=128)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="strata-startup-")
    mib = args.memory_mib
    vmms = density.vmms_from([], args.firecracker, args.cloud_hypervisor, mib, tmp)
    kernel = density.guest("density")
    runs = {v.name: [] for v in vmms}
    for i in range(args.runs):  # interleaved, as bench/density.py pairs its runs
        for v in vmms:
            runs[v.name].append(run_once(v, kernel, tmp, i))
    labels = list(runs[vmms[0].name][0].keys())
    print(f"{args.runs} runs per VMM, median ms since execve (strace -f --seccomp-bpf), "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| step | " + " | ".join(v.name for v in vmms) + " |")
    print("|---|" + "---|" * len(vmms))
    for label in labels:
        cells = []
        for v in vmms:
            xs = [r[label] for r in runs[v.name] if r[label] is not None]
            cells.append(f"{statistics.median(xs):.2f}" if xs else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\ntraces in {tmp}")


if __name__ == "__main__":
    main()
