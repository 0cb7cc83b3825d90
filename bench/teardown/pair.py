#!/usr/bin/env python3
"""exec -> exit of two Strata builds on the same guest, paired runs (docs/decisions/0014).

Run by hand:  python3 bench/teardown/pair.py OLD_STRATA NEW_STRATA [--runs 30]
(for example the strata binary of a checkout before the reaper and of one after it).
The guest is the PVH test guest, which prints a few lines and exits; 128 MiB of RAM.
"""
import argparse
import os
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    exe = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/guest-path")
    guest = subprocess.check_output([exe, "pvh"], text=True).strip()
    res = {"old": [], "new": []}
    for _ in range(args.runs):
        for key in ("old", "new"):
            cmd = [getattr(args, key), "run", "--kernel", guest, "--memory", "size=128M",
                   "--cmdline", "bench"]
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            res[key].append((time.perf_counter() - t) * 1e3)
    print("| build | exec -> exit median (ms) | min (ms) |")
    print("|---|---|---|")
    for key in ("old", "new"):
        print(f"| {key}: {getattr(args, key)} | {statistics.median(res[key]):.1f} | {min(res[key]):.1f} |")


if __name__ == "__main__":
    main()
