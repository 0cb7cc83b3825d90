#!/usr/bin/env python3
"""Run a command (typically QEMU with -serial stdio), prefix each output line with the elapsed
wall time, and stop it when a pattern shows up or a time limit passes.

Usage: scripts/timed-run.py [--until REGEX] [--timeout SECONDS] [--after SECONDS] -- CMD ARGS...
  --until    stop (SIGTERM) once an output line matches REGEX (then wait --after more seconds)
  --timeout  stop after this many seconds (default 300)
Output lines look like "[  12.345] text". The last line reports how and when it ended:
"[  t] == matched", "== exited rc=N" or "== timeout".
"""
import argparse
import os
import re
import selectors
import signal
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--until")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--after", type=float, default=0.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        sys.exit(__doc__)
    pat = re.compile(args.until) if args.until else None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = start + args.timeout
    how = "timeout"

    def emit(raw):
        text = raw.decode("utf-8", "replace").replace("\r", "")
        print(f"[{time.monotonic() - start:8.3f}] {text}", flush=True)
        return text

    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
            if proc.poll() is not None:
                how = f"exited rc={proc.returncode}"
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            proc.wait()
            how = f"exited rc={proc.returncode}"
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = emit(line)
            if pat and how == "timeout" and pat.search(text):
                how = "matched"
                deadline = time.monotonic() + args.after
    if buf:
        emit(buf)
    end = time.monotonic() - start
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"[{end:8.3f}] == {how}", flush=True)


if __name__ == "__main__":
    main()
