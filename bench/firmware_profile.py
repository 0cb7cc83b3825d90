#!/usr/bin/env python3
"""Phase profile of a firmware boot (issue 11 item 9): runs a command and prints each line of
its standard output stamped with the seconds since exec, as it arrives, until a line holds MARK.
With SeaBIOS's log on stdout (Strata merges port 0x402 into its serial output; QEMU needs
`-debugcon stdio -global isa-debugcon.iobase=0x402`) this shows where SeaBIOS spends its time.

  python3 bench/firmware_profile.py 'Booting from 0000:7c00' \\
      target/x86_64-unknown-linux-gnu/release/strata run \\
      --firmware /usr/share/seabios/bios-256k.bin --disk path=disk.qcow2,format=qcow2
"""
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mark, cmd = sys.argv[1].encode(), sys.argv[2:]
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    try:
        while True:
            chunk = p.stdout.read1(65536)
            if not chunk:
                return
            t = time.monotonic() - start
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                print(f"{t:7.3f} {line.decode(errors='replace')}", flush=True)
                if mark in line:
                    return
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
