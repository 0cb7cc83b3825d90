#!/usr/bin/env python3
"""Writes the blk_queue seeds (seeds/blk_queue/): well-formed and malformed virtio-blk
requests in the harness's input layout (vmm/src/virtio/fuzz.rs)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "blk_queue")
DATA = 0x1000
W, N, I = 2, 1, 4


def d(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def hdr(kind, sector=0):
    return struct.pack("<IIQ", kind, 0, sector)


def seed(name, size_log2, chains, tail, flags=0, avail=None, descs=None):
    size = 1 << size_log2
    table = b"".join(descs or [])
    table = table.ljust(16 * size, b"\0")[: 16 * size]
    ring = b"".join(struct.pack("<H", h) for h in chains).ljust(2 * size, b"\0")[: 2 * size]
    idx = len(chains) if avail is None else avail
    blob = bytes([size_log2 | flags]) + struct.pack("<H", idx) + table + ring + tail
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(blob)


def main():
    os.makedirs(OUT, exist_ok=True)
    # Tail layout: headers at DATA, DATA+0x20, ...; data at DATA+0x1000; status at DATA+0x100.
    tail = bytearray(0x3000)
    for i, (kind, sector) in enumerate([(0, 0), (1, 8), (4, 0), (8, 0), (11, 0), (13, 0)]):
        tail[0x20 * i : 0x20 * i + 16] = hdr(kind, sector)
    tail[0x200:0x210] = struct.pack("<QII", 0, 8, 0)  # discard/write-zeroes segment
    tail = bytes(tail)
    h = lambda i: DATA + 0x20 * i
    st = lambda i: DATA + 0x100 + i
    buf = DATA + 0x1000
    read = [d(h(0), 16, N, 1), d(buf, 4096, W | N, 2), d(st(0), 1, W)]
    seed("read", 4, [0], tail, descs=read)
    seed("read-event-idx", 4, [0], tail, flags=0x10, descs=read)
    seed("read-qcow2", 4, [0], tail, flags=0x20, descs=read)
    seed("read-reset", 4, [0], tail, flags=0x40, descs=read)
    write = [d(h(1), 16, N, 1), d(buf, 4096, N, 2), d(st(1), 1, W)]
    seed("write", 4, [0], tail, descs=write)
    seed("write-qcow2", 4, [0], tail, flags=0x20, descs=write)
    several = [
        d(h(2), 16, N, 1), d(st(2), 1, W),
        d(h(3), 16, N, 3), d(buf, 20, W | N, 4), d(st(3), 1, W),
        d(h(4), 16, N, 6), d(DATA + 0x200, 16, N, 7), d(st(4), 1, W),
        d(h(5), 16, N, 9), d(DATA + 0x200, 16, N, 10), d(st(5), 1, W),
    ]
    seed("flush-getid-discard-zeroes", 5, [0, 2, 5, 8], tail, descs=several)
    seed("flush-getid-discard-zeroes-qcow2", 5, [0, 2, 5, 8], tail, flags=0x20, descs=several)
    # Indirect: the table at DATA+0x2000 holds the read.
    t = bytearray(tail)
    t[0x2000:0x2030] = b"".join(read)
    seed("indirect", 3, [0], bytes(t), descs=[d(DATA + 0x2000, 48, I)])
    nested = bytearray(tail)
    nested[0x2000:0x2020] = d(h(0), 16, N, 1) + d(DATA + 0x2800, 48, I)
    nested[0x2800:0x2830] = b"".join(read)
    seed("indirect-nested", 3, [0], bytes(nested), descs=[d(DATA + 0x2000, 32, I)])
    seed("loop", 2, [0], tail, descs=[d(h(0), 16, N, 1), d(buf, 512, W | N, 2), d(st(0), 1, W | N, 0)])
    seed("beyond-ram", 2, [0], tail, descs=[d(h(0), 16, N, 1), d(0x9_0000, 4096, W | N, 2), d(st(0), 1, W)])
    seed("len-4g", 2, [0], tail, descs=[d(h(0), 16, N, 1), d(buf, 0xFFFFFE00, W | N, 2), d(st(0), 1, W)])
    seed("head-out-of-range", 2, [9], tail, descs=read)
    seed("avail-ahead", 2, [0], tail, avail=9, descs=read)
    seed("many", 8, list(range(0, 255, 3)), tail, descs=read * 85)


if __name__ == "__main__":
    main()
