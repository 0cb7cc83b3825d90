#!/usr/bin/env python3
"""Run a command (typically QEMU with -serial stdio), prefix each output line with the elapsed
wall time, and stop it when a pattern shows up or a time limit passes.

Usage: scripts/timed-run.py [--until REGEX] [--timeout SECONDS] [--after SECONDS]
                            [--send REGEX TEXT]... [--exec REGEX SHELLCMD]... -- CMD ARGS...
  --until    stop (SIGTERM) once an output line matches REGEX (then wait --after more seconds)
  --timeout  stop after this many seconds (default 300)
  --send     once an output line matches REGEX, write TEXT to CMD's stdin (Python escapes such
             as \x0f are decoded; e.g. QEMU's `-chardev stdio` console input). CMD's stdin is
             /dev/null unless --send is given.
  --exec     once an output line matches REGEX, start SHELLCMD (sh -c) in the background; its
             output lines are shown as "[  t] exec| text" (e.g. a ping, a QEMU monitor command).
             Each --send/--exec fires once, in the order given; several may share a REGEX.
             REGEX is matched against CMD's lines and against SHELLCMD's ("exec| ") lines.
Output lines look like "[  12.345] text". The last line reports how and when it ended:
"[  t] == matched", "== exited rc=N" or "== timeout"; then "[  t] exec rc=N: SHELLCMD" for each
started SHELLCMD (one still running at the end is stopped and shows rc=-15).
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
    ap.add_argument("--send", nargs=2, action="append", default=[], metavar=("REGEX", "TEXT"))
    ap.add_argument("--exec", nargs=2, action="append", default=[], metavar=("REGEX", "SHELLCMD"))
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        sys.exit(__doc__)
    pat = re.compile(args.until) if args.until else None
    # Pending triggers: (regex, kind, payload), fired once each.
    triggers = [(re.compile(r), "send", t.encode("latin-1").decode("unicode_escape").encode("latin-1"))
                for r, t in args.send]
    triggers += [(re.compile(r), "exec", c) for r, c in args.exec]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.PIPE if args.send else subprocess.DEVNULL,
                            start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, None)
    buf = b""
    deadline = start + args.timeout
    how = "timeout"
    children = []  # (Popen, shell command) started by --exec
    child_bufs = {}

    def emit(raw, prefix=""):
        text = raw.decode("utf-8", "replace").replace("\r", "")
        print(f"[{time.monotonic() - start:8.3f}] {prefix}{text}", flush=True)
        return text

    def fire(text):
        for trig in [t for t in triggers if t[0].search(text)]:
            triggers.remove(trig)
            _, kind, payload = trig
            if kind == "send":
                print(f"[{time.monotonic() - start:8.3f}] == send {payload!r}", flush=True)
                try:
                    proc.stdin.write(payload)
                    proc.stdin.flush()
                except OSError as err:
                    print(f"[{time.monotonic() - start:8.3f}] == send failed: {err}", flush=True)
            else:
                print(f"[{time.monotonic() - start:8.3f}] == exec {payload}", flush=True)
                child = subprocess.Popen(["sh", "-c", payload], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
                children.append((child, payload))
                child_bufs[child.stdout.fileno()] = b""
                sel.register(child.stdout, selectors.EVENT_READ, child)

    def child_output(key):
        fd = key.fileobj.fileno()
        chunk = os.read(fd, 65536)
        if not chunk:
            sel.unregister(key.fileobj)
            if child_bufs[fd]:
                emit(child_bufs[fd], "exec| ")
            return
        child_bufs[fd] += chunk
        while b"\n" in child_bufs[fd]:
            line, child_bufs[fd] = child_bufs[fd].split(b"\n", 1)
            fire(emit(line, "exec| "))

    done = False
    while not done and time.monotonic() < deadline:
        events = sel.select(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        if not events:
            if proc.poll() is not None:
                how = f"exited rc={proc.returncode}"
                break
            continue
        for key, _ in events:
            if key.data is not None:
                child_output(key)
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                how = f"exited rc={proc.returncode}"
                done = True
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = emit(line)
                fire(text)
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
    for child, command in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
        rc = child.wait()
        for key in [k for k in sel.get_map().values() if k.data is child]:
            while key.fileobj.fileno() in [k.fileobj.fileno() for k in sel.get_map().values()]:
                child_output(key)
        print(f"[{time.monotonic() - start:8.3f}] exec rc={rc}: {command}", flush=True)


if __name__ == "__main__":
    main()
