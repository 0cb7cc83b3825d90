#!/usr/bin/env python3
"""Writes the seeds of the blk_queue, net_queue and vsock_queue targets (seeds/<target>/):
well-formed and malformed virtio-blk requests, virtio-net transmit chains, receive buffers and
host frames, and virtio-vsock packets with host actions, each in its harness's input layout
(vmm/src/virtio/fuzz.rs, fuzz_net.rs, fuzz_vsock.rs)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "blk_queue")
DATA = 0x1000
W, N, I = 2, 1, 4
HIGH_RAM = 0x10_0000


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


NET_OUT = os.path.join(HERE, "seeds", "net_queue")
MRG, HDR12, TSO, RX_EVIDX, TX_EVIDX, RX_AGAIN, TX_AGAIN = 1, 2, 4, 8, 0x10, 0x20, 0x40


def net_queue(descs, chains, log2):
    size = 1 << log2
    table = b"".join(descs).ljust(16 * size, b"\0")[: 16 * size]
    ring = b"".join(struct.pack("<H", h) for h in chains).ljust(2 * size, b"\0")[: 2 * size]
    return table + ring


def net_seed(name, flags=MRG, rx=((), ()), tx=((), ()), frames=(), tail=b"", mtu=1500,
             rx_avail=None, tx_avail=None, more=0, rx_log2=4, tx_log2=4):
    """One net_queue input (layout: vmm/src/virtio/fuzz_net.rs)."""
    rx_avail = len(rx[1]) if rx_avail is None else rx_avail
    tx_avail = len(tx[1]) if tx_avail is None else tx_avail
    head = bytes([flags, rx_log2 | tx_log2 << 4])
    head += struct.pack("<HHHBB", mtu, rx_avail, tx_avail, more, len(frames))
    head += b"".join(struct.pack("<H", n) for n in frames).ljust(16, b"\0")
    blob = head + net_queue(rx[0], rx[1], rx_log2) + net_queue(tx[0], tx[1], tx_log2) + tail
    with open(os.path.join(NET_OUT, name), "wb") as f:
        f.write(blob)


def net_seeds():
    """Writes seeds/net_queue/: well-formed transmit and receive chains (the replay test in
    fuzz_net.rs checks what each gives) and edge cases."""
    os.makedirs(NET_OUT, exist_ok=True)
    # Tail (at DATA): a plain header at 0, a GSO header at 0x20, frame bytes at 0x100, an
    # indirect table at 0x2000; receive buffers from DATA+0x4000.
    tail = bytearray(0x2100)
    tail[0x21] = 1  # gso_type TCPv4
    for i in range(0x100, 0x2000):
        tail[i] = i * 7 & 0xFF
    hdr, gso, payload, buf = DATA, DATA + 0x20, DATA + 0x100, DATA + 0x4000
    tx_one = ([d(hdr, 12, N, 1), d(payload, 60)], [0])
    net_seed("tx-one", tx=tx_one, tail=bytes(tail))
    net_seed("tx-legacy-hdr", flags=0, tx=([d(hdr, 10, N, 1), d(payload, 60)], [0]), tail=bytes(tail))
    ind = bytearray(tail)
    ind[0x2000:0x2020] = d(hdr, 12, N, 1) + d(payload, 60)
    net_seed("tx-indirect", tx=([d(DATA + 0x2000, 32, I)], [0]), tail=bytes(ind))
    tx_gso = ([d(gso, 12, N, 1), d(payload, 2000)], [0])
    net_seed("tx-gso-tso", flags=MRG | TSO, tx=tx_gso, tail=bytes(tail))
    net_seed("tx-gso-without-tso", tx=tx_gso, tail=bytes(tail))
    net_seed("tx-over-mtu", tx=([d(hdr, 12, N, 1), d(payload, 1500 + 18 + 1)], [0]), tail=bytes(tail))
    net_seed("tx-short", tx=([d(hdr, 4)], [0]), tail=bytes(tail))
    rx_two = ([d(buf, 2048, W), d(buf + 0x1000, 2048, W)], [0, 1])
    net_seed("rx-one", rx=([d(buf, 2048, W)], [0]), frames=[100])
    net_seed("rx-one-event-idx", flags=MRG | RX_EVIDX | TX_EVIDX, rx=([d(buf, 2048, W)], [0]), frames=[100])
    net_seed("rx-legacy-hdr", flags=0, rx=([d(buf, 2048, W)], [0]), frames=[100])
    three = [d(buf, 512, W), d(buf + 0x1000, 512, W), d(buf + 0x2000, 512, W)]
    net_seed("rx-mergeable-spans", rx=(three, [0, 1, 2]), frames=[1200])
    net_seed("rx-more-buffers-later", flags=MRG | RX_AGAIN, rx=(three, [0, 1, 2]), rx_avail=1, more=2, frames=[1200])
    net_seed("rx-too-small-dropped", flags=0, rx=([d(buf, 256, W)], [0]), frames=[1000, 100])
    net_seed("tx-and-rx", tx=([d(hdr, 12, N, 1), d(payload, 60), d(hdr, 12, N, 3), d(payload, 1000)], [0, 2]),
             rx=rx_two, frames=[100, 1500], tail=bytes(tail))
    # A chain with no writable byte in the middle of a mergeable frame, and too few buffers:
    # the frame waits; once the driver posts one more it takes all three.
    bad_mid = [d(buf, 512, W), d(buf + 0x1000, 512), d(buf + 0x2000, 1024, W)]
    net_seed("rx-bad-chain-mid-frame", flags=MRG | RX_AGAIN, rx=(bad_mid, [0, 1, 2]), rx_avail=2, more=1, frames=[1200])
    net_seed("avail-ahead", tx=(tx_one[0], [0]), tx_avail=300, rx=([d(buf, 2048, W)], [0]), frames=[100], tail=bytes(tail))
    # Edges, checked only by the harness's rules.
    net_seed("rx-beyond-ram", rx=([d(0x9_0000, 2048, W), d(0x13_FF00, 2048, W)], [0, 1]), frames=[100, 100])
    net_seed("rx-over-own-ring", rx=([d(0x6_0000, 4096, W)], [0]), frames=[3000])
    net_seed("tx-loop", tx=([d(hdr, 12, N, 1), d(payload, 60, N, 0)], [0]), tail=bytes(tail))
    net_seed("tx-len-4g", tx=([d(hdr, 12, N, 1), d(payload, 0xFFFFFFF0)], [0]), tail=bytes(tail))
    net_seed("rx-frame-longer-than-buffer", rx=([d(buf, 0x8000, W)] * 16, list(range(16))), frames=[0xFF10, 0xFFFF])
    net_seed("tx-64k-gso", flags=MRG | TSO, tx=([d(gso, 12, N, 1), d(HIGH_RAM, 0x1_0000 + 17)], [0]), tail=bytes(tail))
    net_seed("max-sizes", flags=MRG | HDR12 | RX_EVIDX | TX_EVIDX | RX_AGAIN | TX_AGAIN, rx_log2=8, tx_log2=8,
             rx=([d(buf + 0x100 * i, 0x100, W) for i in range(256)], list(range(256))), rx_avail=200, more=56,
             tx=(tx_one[0] * 128, list(range(0, 256, 2))), tx_avail=128, frames=[60, 1514, 9000, 100, 0, 5, 64, 0xFF00],
             tail=bytes(tail))


# vsock_queue (vmm/src/virtio/fuzz_vsock.rs): TX/RX queues, rounds, host actions.
VSOCK_OUT = os.path.join(HERE, "seeds", "vsock_queue")
GUEST_CID, HOST_CID, STREAM = 3, 2, 1
REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE = 1, 2, 3, 4, 5, 6
H_ACCEPT, H_WRITE, H_READ, H_SHUT, H_CLOSE, H_CONNECT = 1, 2, 4, 8, 16, 32


def vhdr(op, src_port=5000, dst_port=1024, length=0, flags=0, buf_alloc=65536, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", GUEST_CID, HOST_CID, src_port, dst_port, length,
                       STREAM, op, flags, buf_alloc, fwd_cnt)


def vsock_seed(name, packets, ring, rounds, tx_avail, rx_avail=8, payload=b"", extra=None,
               extra_descs=()):
    """packets: headers at DATA + 0x40*i (a packet with a payload gets it from DATA+0x6000
    in a second descriptor); ring: TX available-ring heads; rounds: (tx_add, rx_add, act,
    len) after activation. RX: 8 buffers of 0x500 bytes at DATA+0x2000+0x800*i; the payload
    at DATA+0x6000, after them."""
    tx_log2, rx_log2 = 4, 3
    tx_size, rx_size = 1 << tx_log2, 1 << rx_log2
    tail = bytearray(0x6000 + len(payload))
    tx_descs = []
    for i, (h, with_payload) in enumerate(packets):
        tail[0x40 * i : 0x40 * i + 44] = h
        if with_payload:
            plen = struct.unpack_from("<I", h, 24)[0]
            tx_descs.append(d(DATA + 0x40 * i, 44, N, len(tx_descs) + 1))
            tx_descs.append(d(DATA + 0x6000, plen))
        else:
            tx_descs.append(d(DATA + 0x40 * i, 44))
    tx_descs.extend(extra_descs)
    tail[0x6000:] = payload
    if extra:
        for at, blob in extra:
            tail[at : at + len(blob)] = blob
    rx_descs = [d(DATA + 0x2000 + 0x800 * i, 0x500, W) for i in range(rx_size)]
    table = b"".join(tx_descs).ljust(16 * tx_size, b"\0")[: 16 * tx_size]
    tx_ring = b"".join(struct.pack("<H", x) for x in ring).ljust(2 * tx_size, b"\0")
    rx_table = b"".join(rx_descs)
    rx_ring = b"".join(struct.pack("<H", i) for i in range(rx_size))
    rec = b"".join(bytes(r) for r in rounds).ljust(16, b"\0")
    flags = tx_log2 | ((max(len(rounds), 1) - 1) << 5)
    blob = (bytes([flags, rx_log2]) + struct.pack("<HH", tx_avail, rx_avail) + rec + table
            + tx_ring[: 2 * tx_size] + rx_table + rx_ring + bytes(tail))
    with open(os.path.join(VSOCK_OUT, name), "wb") as f:
        f.write(blob)


def vsock_main():
    os.makedirs(VSOCK_OUT, exist_ok=True)
    data = bytes(i % 251 for i in range(3000))
    # REQUEST to port 1024 (listening), then 3000 bytes of RW; the host accepts, reads them
    # and writes 4 * 257 bytes back, which the device sends as RW.
    vsock_seed("request-rw", [(vhdr(REQUEST), False), (vhdr(RW, length=3000), True)],
               [0, 1], [(1, 0, H_ACCEPT, 0), (0, 0, H_READ | H_WRITE, 4)], 1, payload=data)
    vsock_seed("request-shutdown",
               [(vhdr(REQUEST), False), (vhdr(SHUTDOWN, flags=3), False)],
               [0, 1], [(1, 0, H_ACCEPT, 0)], 1)
    vsock_seed("request-rst", [(vhdr(REQUEST), False), (vhdr(RST), False)],
               [0, 1], [(1, 0, H_ACCEPT, 0)], 1)
    vsock_seed("unknown-op", [(vhdr(99), False)], [0], [], 1)
    vsock_seed("request-no-listener", [(vhdr(REQUEST, dst_port=2000), False)], [0], [], 1)
    vsock_seed("bad-len", [(vhdr(RW, length=100), False)], [0], [], 1)
    # The host connects to the device's socket for guest port 77; the guest accepts
    # (RESPONSE to the device's first host port) and sends 5 bytes.
    hp = 1 << 30
    vsock_seed("host-connect",
               [(vhdr(RESPONSE, src_port=77, dst_port=hp), False),
                (vhdr(RW, src_port=77, dst_port=hp, length=5), True)],
               [0, 1], [(0, 0, H_CONNECT, 77), (1, 0, 0, 0), (1, 0, H_READ, 0)], 0,
               payload=b"hello")
    # A guest that ignores credit: 5, then 15 packets of 60000 bytes to a host that does not
    # read (the first 5 wait within the buffer, the rest break the credit: RST).
    big = bytes(60000)
    vsock_seed("credit-flood", [(vhdr(REQUEST), False), (vhdr(RW, length=60000), True)],
               [0] + [1] * 15, [(5, 0, H_ACCEPT, 0), (15, 2, 0, 0)], 1, payload=big)
    # Data after the guest shut its sending side; the host half-closes and closes.
    vsock_seed("shutdown-then-rw",
               [(vhdr(REQUEST), False), (vhdr(SHUTDOWN, flags=2), False),
                (vhdr(RW, length=3000), True)],
               [0, 1, 2], [(1, 0, H_ACCEPT | H_SHUT, 0), (1, 2, H_CLOSE, 0)], 1, payload=data)
    # A credit update from the guest and a host that writes more than the guest's credit.
    vsock_seed("credit-update",
               [(vhdr(REQUEST, buf_alloc=512), False),
                (vhdr(CREDIT_UPDATE, buf_alloc=4096, fwd_cnt=512), False)],
               [0, 1], [(0, 0, H_ACCEPT | H_WRITE, 8), (1, 2, H_WRITE, 8)], 1)
    # More REQUESTs than the host listener's backlog (4) while the host accepts none.
    vsock_seed("request-backlog", [(vhdr(REQUEST, src_port=5000 + i), False) for i in range(8)],
               list(range(8)), [(0, 0, H_ACCEPT, 0)], 8)
    # Indirect: the RW's header and payload through an indirect table at DATA+0x1000.
    ind = d(DATA + 0x40, 44, N, 1) + d(DATA + 0x6000, 5)
    vsock_seed("indirect", [(vhdr(REQUEST), False)], [0, 1], [(1, 0, H_ACCEPT | H_READ, 0)],
               1, payload=b"world", extra=[(0x40, vhdr(RW, length=5)), (0x1000, ind)],
               extra_descs=[d(DATA + 0x1000, 32, I)])


if __name__ == "__main__":
    main()
    net_seeds()
    vsock_main()
