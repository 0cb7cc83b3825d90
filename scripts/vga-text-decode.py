#!/usr/bin/env python3
"""Decode a dump of VGA text memory (0xb8000, 80x25 cells of 2 bytes: char, attribute).

Usage: scripts/vga-text-decode.py DUMP [--attrs]
  DUMP is e.g. the file written by the QEMU monitor command `pmemsave 0xb8000 4000 DUMP`.
Prints 25 lines of 80 characters (code page 437 bytes 0x20..0x7e as ASCII, 0x00 as space,
anything else as '.'), each prefixed with its row number "NN|". With --attrs, a second block
prints each cell's attribute byte as a hex digit pair per row (fg low nibble, bg high nibble).
"""
import sys

COLS, ROWS = 80, 25


def decode(data):
    """Return the 25 text rows of an 80x25 VGA text buffer."""
    rows = []
    for r in range(ROWS):
        line = []
        for c in range(COLS):
            i = 2 * (r * COLS + c)
            ch = data[i] if i < len(data) else 0
            line.append(chr(ch) if 0x20 <= ch < 0x7F else (" " if ch == 0 else "."))
        rows.append("".join(line))
    return rows


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data = open(sys.argv[1], "rb").read()
    for r, line in enumerate(decode(data)):
        print(f"{r:02d}|{line}")
    if "--attrs" in sys.argv[2:]:
        for r in range(ROWS):
            attrs = [data[2 * (r * COLS + c) + 1] for c in range(COLS)]
            print(f"{r:02d}|" + " ".join(f"{a:02x}" for a in attrs))


if __name__ == "__main__":
    main()
