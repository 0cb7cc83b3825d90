#!/usr/bin/env python3
"""Send human-monitor (HMP) commands to a QEMU started with `-monitor unix:PATH,server,nowait`.

Usage: scripts/qemu-monitor.py PATH 'info registers' 'x/4i $pc' ...
Prints each command's output (without the "(qemu)" prompts) to stdout.
"""
import socket
import sys
import time


def read_until_prompt(sock, timeout=10.0):
    """Read until the "(qemu) " prompt appears; return the text before it."""
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"(qemu) "):
        if time.monotonic() > deadline:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf[: -len(b"(qemu) ")] if buf.endswith(b"(qemu) ") else buf


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(50):
        try:
            sock.connect(sys.argv[1])
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(f"cannot connect to {sys.argv[1]}")
    read_until_prompt(sock)  # banner
    for cmd in sys.argv[2:]:
        sock.sendall(cmd.encode() + b"\n")
        out = read_until_prompt(sock).decode("utf-8", "replace")
        # HMP echoes the command line (with terminal escapes); drop the first line.
        lines = out.replace("\r", "").split("\n")[1:]
        print("\n".join(line for line in lines if line is not None).rstrip("\n"))


if __name__ == "__main__":
    main()
