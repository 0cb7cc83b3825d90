//! net: a polling virtio-net (and virtio-vsock) test guest. It finds the
//! devices of one transport and runs the operations its command line lists:
//!
//! ```text
//! transport=mmio|pci|pci-legacy [rxbuf=N] [mrg=0|1] [pairs=1|2] op=NAME [ARG=VALUE ...] ...
//! ```
//!
//! The `udp-` operations build and parse Ethernet, IPv4 and UDP headers
//! themselves (a UDP peer on the host is an ordinary socket).
//!
//! guests/README.md lists the operations and what they print.
#![no_std]

use kit::cmdline::{Cmdline, Op};
use kit::virtio::net::Net;
use kit::virtio::vsock::Vsock;
use kit::virtio::{self, Kind, ID_NET, ID_VSOCK};
use kit::{bail, err, println, Boot, Error};

kit::guest!("net", main);

/// The started drivers.
struct Drivers {
    net: Option<Net>,
    vsock: Option<Vsock>,
}

fn main(boot: &mut Boot) -> Result<(), Error> {
    let Some(name) = boot.cmdline.get("transport") else {
        bail!("no transport= on the command line (mmio, pci or pci-legacy)");
    };
    let kind = Kind::parse(name).ok_or_else(|| err!("unknown transport={name}"))?;
    let mut devices = virtio::find(kind, &boot.cmdline)?;
    for t in devices.iter() {
        println!("virtio: {t} {}", virtio::type_name(t.device_id()));
    }
    let rxbuf = number(boot.cmdline, "rxbuf")?.unwrap_or(2048) as usize;
    let mrg = number(boot.cmdline, "mrg")?.unwrap_or(1) != 0;
    let pairs = number(boot.cmdline, "pairs")?.unwrap_or(1) as usize;
    let dma = &mut boot.dma;
    let mut d = Drivers {
        net: devices
            .take(ID_NET)
            .map(|t| Net::new(t, dma, rxbuf, mrg, pairs))
            .transpose()?,
        vsock: devices
            .take(ID_VSOCK)
            .map(|t| Vsock::new(t, dma))
            .transpose()?,
    };
    for op in boot.cmdline.ops() {
        run_op(&mut d, op)?;
    }
    Ok(())
}

fn number(args: Cmdline, key: &str) -> Result<Option<u64>, Error> {
    args.number(key).map_err(|v| err!("bad {key}={v}"))
}

fn run_op(d: &mut Drivers, op: Op) -> Result<(), Error> {
    if op.name.starts_with("vsock-") {
        let v = d
            .vsock
            .as_mut()
            .ok_or_else(|| err!("op={}: no vsock device", op.name))?;
        return vsock_op(v, op);
    }
    let net = d
        .net
        .as_mut()
        .ok_or_else(|| err!("op={}: no net device", op.name))?;
    match op.name {
        "net-info" => {
            net.reread_mac();
            let m = net.mac;
            println!(
                "net: mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu={} link={} hdr={} mrg={}",
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                net.mtu,
                if net.link_up { "up" } else { "down" },
                net.hdr_len,
                u8::from(net.dev.has(kit::virtio::net::F_MRG_RXBUF))
            );
            Ok(())
        }
        "net-serve" => serve(net, op.args),
        "net-pairs" => {
            let n = number(op.args, "n")?.unwrap_or(2) as u16;
            let status = net.set_pairs(n)?;
            println!(
                "net: pairs set {n} of {} answered {}",
                net.max_pairs,
                if status == kit::virtio::net::CTRL_OK { "ok" } else { "err" }
            );
            Ok(())
        }
        "net-ctrl" => {
            let class = number(op.args, "class")?.unwrap_or(0) as u8;
            let cmd = number(op.args, "cmd")?.unwrap_or(0) as u8;
            let data = number(op.args, "data")?.unwrap_or(1) as u8;
            let status = net.ctrl_command(class, cmd, &[data])?;
            println!("net: ctrl class={class} cmd={cmd} answered {status}");
            Ok(())
        }
        "net-hostile" => hostile(net),
        "net-blast" => blast(net, op.args),
        "net-sink" => sink(net),
        "udp-send" => udp_send(net, op.args),
        "udp-sink" => udp_sink(net, op.args),
        other => bail!("unknown op={other}"),
    }
}

/// Parses `a.b.c.d`.
fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a received frame was.
enum Answered {
    Arp,
    Echo,
    Other,
}

/// Turns an ARP request for `ip` or an ICMP echo request to `ip` in
/// `f[..len]` into its reply, in place; returns the reply's length.
fn reply(f: &mut [u8], len: usize, mac: [u8; 6], ip: [u8; 4]) -> (Answered, usize) {
    if len < 42 {
        return (Answered::Other, 0);
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype == 0x0806 {
        // ARP: htype 1, ptype 0x0800, op 1 (request), target protocol address.
        if f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] || f[38..42] != ip {
            return (Answered::Other, 0);
        }
        let mut sender = [0u8; 10];
        sender.copy_from_slice(&f[22..32]);
        f[0..6].copy_from_slice(&sender[..6]);
        f[6..12].copy_from_slice(&mac);
        f[21] = 2;
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&ip);
        f[32..42].copy_from_slice(&sender);
        return (Answered::Arp, 42);
    }
    if ethertype != 0x0800 || f[14] >> 4 != 4 {
        return (Answered::Other, 0);
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    if ihl < 20 || total < ihl + 8 || 14 + total > len || f[23] != 1 || f[30..34] != ip {
        return (Answered::Other, 0);
    }
    let icmp = 14 + ihl;
    if f[icmp] != 8 {
        return (Answered::Other, 0);
    }
    let mut peer = [0u8; 6];
    peer.copy_from_slice(&f[6..12]);
    f[0..6].copy_from_slice(&peer);
    f[6..12].copy_from_slice(&mac);
    let mut src = [0u8; 4];
    src.copy_from_slice(&f[26..30]);
    f[26..30].copy_from_slice(&ip);
    f[30..34].copy_from_slice(&src);
    f[22] = 64;
    f[24..26].fill(0);
    let c = checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[icmp] = 0;
    f[icmp + 2..icmp + 4].fill(0);
    let c = checksum(&f[icmp..14 + total]);
    f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    (Answered::Echo, 14 + total)
}

/// `op=net-serve ip=A.B.C.D count=N [txpair=P]`: answers ARP and ICMP echo
/// until it has answered `count` echo requests; echo replies go out on pair
/// `txpair` (0 by default), ARP replies on pair 0; requests are taken from
/// every pair in use.
fn serve(net: &mut Net, args: Cmdline) -> Result<(), Error> {
    let ip_text = args
        .get("ip")
        .ok_or_else(|| err!("op=net-serve: ip= missing"))?;
    let ip = parse_ip(ip_text).ok_or_else(|| err!("op=net-serve: bad ip={ip_text}"))?;
    let count = number(args, "count")?.unwrap_or(20);
    let txpair = number(args, "txpair")?.unwrap_or(0) as usize;
    if txpair >= net.pairs_set_up() {
        bail!("op=net-serve: txpair={txpair} is not set up");
    }
    println!("net: ready ip={ip_text}");
    let (mut arps, mut echoes, mut largest) = (0u64, 0u64, 0usize);
    while echoes < count {
        let Some(len) = net.recv()? else {
            core::hint::spin_loop();
            continue;
        };
        let mac = net.mac;
        let (kind, out) = reply(net.frame_mut(), len, mac, ip);
        match kind {
            Answered::Arp => {
                arps += 1;
                net.tx_pair = 0;
            }
            Answered::Echo => {
                echoes += 1;
                largest = largest.max(len);
                net.tx_pair = txpair;
            }
            Answered::Other => continue,
        }
        net.send_frame(out)?;
    }
    println!(
        "net: answered {echoes} echo requests, {arps} arp requests, largest {largest} bytes in at most {} buffers",
        net.stats.max_buffers
    );
    if net.pairs_set_up() > 1 {
        let s = net.stats;
        println!(
            "net: frames per pair: rx {} {} tx {} {}",
            s.rx_pair[0], s.rx_pair[1], s.tx_pair[0], s.tx_pair[1]
        );
    }
    Ok(())
}

/// `op=net-hostile`: transmit chains the device must drop: a frame longer
/// than the MTU, a GSO frame the device was not asked to take, a chain
/// shorter than a header, a buffer outside RAM. Then waits until the device
/// has used them all (it answered each, without stopping).
fn hostile(net: &mut Net) -> Result<(), Error> {
    let hdr = net.hdr_len;
    let mtu = usize::from(net.mtu);
    let mut big = [0u8; 1800];
    big[12] = 0x88;
    big[13] = 0xb5;
    if mtu + 14 + 4 + 1 + hdr > 2048 {
        bail!("op=net-hostile: mtu {mtu} too large for the test");
    }
    net.send(&big[..mtu + 14 + 4 + 1], false)?;
    let mut gso = [0u8; 12];
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    gso[4] = 0xb4; // gso_size 1460
    gso[5] = 0x05;
    net.send_with_header(&gso[..hdr], &big[..200], false)?;
    net.send_raw(0x1000, 4, false)?;
    net.send_raw(0xf_0000_0000, hdr + 60, true)?;
    net.wait_tx_done()?;
    println!("net: hostile chains used");
    Ok(())
}

/// `op=net-blast frames=N size=S dst=MAC`: sends `N` UDP-like frames of `S`
/// bytes as fast as the queue takes them (benchmark).
fn blast(net: &mut Net, args: Cmdline) -> Result<(), Error> {
    let frames = number(args, "frames")?.unwrap_or(100_000);
    let size = number(args, "size")?.unwrap_or(64) as usize;
    if !(60..=1514).contains(&size) {
        bail!("op=net-blast: size={size} (60 to 1514)");
    }
    let mut f = [0u8; 1514];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&net.mac);
    f[12] = 0x88;
    f[13] = 0xb5; // local experimental ethertype: the host stack ignores it
    let start = kit::io::rdtsc();
    for i in 0..frames {
        f[14..22].copy_from_slice(&i.to_le_bytes());
        net.send(&f[..size], i % 32 == 31 || i + 1 == frames)?;
    }
    let cycles = kit::io::rdtsc().wrapping_sub(start);
    println!("net: sent {frames} frames of {size} bytes in {cycles} cycles");
    Ok(())
}

/// `op=net-sink`: counts received frames of ethertype 0x88b5 until one of
/// ethertype 0x88b6 arrives (benchmark).
fn sink(net: &mut Net) -> Result<(), Error> {
    println!("net: sink ready");
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        let Some(len) = net.recv()? else {
            core::hint::spin_loop();
            continue;
        };
        let f = net.frame();
        if len < 14 {
            continue;
        }
        match (f[12], f[13]) {
            (0x88, 0xb5) => {
                frames += 1;
                bytes += len as u64;
            }
            (0x88, 0xb6) => break,
            _ => {}
        }
    }
    println!("net: received {frames} frames, {bytes} bytes");
    Ok(())
}

/// Ethernet, IPv4 (no options) and UDP header bytes before a UDP payload.
const UDP_HDRS: usize = 14 + 20 + 8;

/// One end of a UDP exchange: MAC, IPv4 address, port.
#[derive(Clone, Copy)]
struct Endpoint {
    mac: [u8; 6],
    ip: [u8; 4],
    port: u16,
}

/// The UDP datagram in `f[..len]` if it is one to `ip`:`port` (IPv4, not a
/// fragment, header checksum right): its sender and where its payload is.
fn parse_udp(
    f: &[u8],
    len: usize,
    ip: [u8; 4],
    port: u16,
) -> Option<(Endpoint, core::ops::Range<usize>)> {
    if len < UDP_HDRS || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
    if ihl < 20 || total < ihl + 8 || 14 + total > len || f[23] != 17 || f[30..34] != ip {
        return None;
    }
    if fragment || checksum(&f[14..14 + ihl]) != 0 {
        return None;
    }
    let udp = 14 + ihl;
    let field = |at: usize| u16::from_be_bytes([f[udp + at], f[udp + at + 1]]);
    let ulen = usize::from(field(4));
    if field(2) != port || ulen < 8 || udp + ulen > 14 + total {
        return None;
    }
    let mut src = Endpoint {
        mac: [0; 6],
        ip: [0; 4],
        port: field(0),
    };
    src.mac.copy_from_slice(&f[6..12]);
    src.ip.copy_from_slice(&f[26..30]);
    Some((src, udp + 8..udp + ulen))
}

/// Writes the Ethernet, IPv4 and UDP headers of a datagram of `payload`
/// bytes from `from` to `to` with IP identification `id` into `f` (the
/// payload goes at [`UDP_HDRS`]); the IPv4 header checksum is computed, the
/// UDP checksum is 0 (none). Returns the frame's length.
fn udp_headers(f: &mut [u8], from: &Endpoint, to: &Endpoint, id: u16, payload: usize) -> usize {
    let total = 20 + 8 + payload;
    f[0..6].copy_from_slice(&to.mac);
    f[6..12].copy_from_slice(&from.mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[15] = 0;
    f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20..22].copy_from_slice(&[0x40, 0]); // don't fragment
    f[22] = 64;
    f[23] = 17;
    f[24..26].fill(0);
    f[26..30].copy_from_slice(&from.ip);
    f[30..34].copy_from_slice(&to.ip);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&from.port.to_be_bytes());
    f[36..38].copy_from_slice(&to.port.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    f[40..42].fill(0);
    14 + total
}

/// The payload of datagram `seq`: `seq` (u64 little-endian), then byte
/// `j mod 256` at offset `j`.
fn fill_payload(p: &mut [u8], seq: u64) {
    let head = p.len().min(8);
    p[..head].copy_from_slice(&seq.to_le_bytes()[..head]);
    for (j, b) in p.iter_mut().enumerate().skip(8) {
        *b = j as u8;
    }
}

/// Whether `p` is a payload [`fill_payload`] wrote (for any `seq`).
fn payload_ok(p: &[u8]) -> bool {
    p.len() >= 8 && p.iter().enumerate().skip(8).all(|(j, &b)| b == j as u8)
}

/// The `ip=` and `port=` of a UDP op: this guest's end (its MAC, that IP,
/// that port).
fn udp_local(net: &Net, args: Cmdline, op: &str) -> Result<Endpoint, Error> {
    let text = args.get("ip").ok_or_else(|| err!("op={op}: ip= missing"))?;
    let ip = parse_ip(text).ok_or_else(|| err!("op={op}: bad ip={text}"))?;
    let port = number(args, "port")?.unwrap_or(5000);
    let port = u16::try_from(port).map_err(|_| err!("op={op}: bad port={port}"))?;
    Ok(Endpoint {
        mac: net.mac,
        ip,
        port,
    })
}

/// Answers the ARP or ICMP echo request [`Net::recv`] returned as `len`
/// bytes, if it is one for `ip`.
fn answer(net: &mut Net, len: usize, ip: [u8; 4]) -> Result<(), Error> {
    let mac = net.mac;
    match reply(net.frame_mut(), len, mac, ip) {
        (Answered::Other, _) => Ok(()),
        (_, out) => net.send_frame(out),
    }
}

/// `op=udp-send ip=A.B.C.D [port=P] [count=N] [size=S]`: answers ARP and
/// ICMP echo for `ip` until a UDP datagram to `ip`:`P` (5000) arrives (the
/// host's go), then sends `N` (100000) datagrams of `S` (1472) payload bytes
/// back to its sender's MAC, address and port as fast as the transmit ring
/// takes them (notifying every 32), and waits until the device used them all.
fn udp_send(net: &mut Net, args: Cmdline) -> Result<(), Error> {
    let me = udp_local(net, args, "udp-send")?;
    let count = number(args, "count")?.unwrap_or(100_000);
    let size = number(args, "size")?.unwrap_or(1472) as usize;
    let most = usize::from(net.mtu).min(1500).saturating_sub(28);
    if size > most {
        bail!(
            "op=udp-send: size={size} (at most {most} with mtu {})",
            net.mtu
        );
    }
    println!("net: udp ready ip={} port={}", Ip(me.ip), me.port);
    let peer = loop {
        let Some(len) = net.recv()? else {
            core::hint::spin_loop();
            continue;
        };
        if let Some((src, _)) = parse_udp(net.frame(), len, me.ip, me.port) {
            break src;
        }
        answer(net, len, me.ip)?;
    };
    let mut f = [0u8; UDP_HDRS + 1500];
    fill_payload(&mut f[UDP_HDRS..UDP_HDRS + size], 0);
    let head = size.min(8);
    let start = kit::io::rdtsc();
    for i in 0..count {
        let len = udp_headers(&mut f, &me, &peer, i as u16, size);
        f[UDP_HDRS..UDP_HDRS + head].copy_from_slice(&i.to_le_bytes()[..head]);
        net.send(&f[..len], i % 32 == 31 || i + 1 == count)?;
    }
    net.wait_tx_done()?;
    let cycles = kit::io::rdtsc().wrapping_sub(start);
    println!(
        "net: udp sent {count} datagrams of {size} bytes to {}:{} in {cycles} cycles",
        Ip(peer.ip),
        peer.port
    );
    Ok(())
}

/// `op=udp-sink ip=A.B.C.D [port=P] [check=0|1]`: answers ARP and ICMP echo
/// for `ip` and counts the UDP datagrams to `ip`:`P` (5000) until one whose
/// payload is `end`; with `check=1` also the payloads that are not what
/// [`fill_payload`] writes.
fn udp_sink(net: &mut Net, args: Cmdline) -> Result<(), Error> {
    let me = udp_local(net, args, "udp-sink")?;
    let check = number(args, "check")?.unwrap_or(0) != 0;
    println!("net: udp sink ready ip={} port={}", Ip(me.ip), me.port);
    let (mut datagrams, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    loop {
        let Some(len) = net.recv()? else {
            core::hint::spin_loop();
            continue;
        };
        let Some((_, payload)) = parse_udp(net.frame(), len, me.ip, me.port) else {
            answer(net, len, me.ip)?;
            continue;
        };
        let p = &net.frame()[payload];
        if p == b"end" {
            break;
        }
        datagrams += 1;
        bytes += p.len() as u64;
        if check && !payload_ok(p) {
            bad += 1;
        }
    }
    println!("net: udp received {datagrams} datagrams, {bytes} payload bytes, {bad} bad");
    Ok(())
}

/// An IPv4 address, printed dotted.
struct Ip([u8; 4]);

impl core::fmt::Display for Ip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

fn vsock_op(v: &mut Vsock, op: Op) -> Result<(), Error> {
    match op.name {
        "vsock-info" => {
            println!("vsock: cid={}", v.cid);
            Ok(())
        }
        "vsock-wait-reset" => {
            println!("vsock: waiting for a transport reset");
            let id = v.wait_transport_reset()?;
            println!("vsock: transport reset event {id}, cid={}", v.cid);
            Ok(())
        }
        "vsock-echo" => {
            let port = number(op.args, "port")?.unwrap_or(1234) as u32;
            let conns = number(op.args, "conns")?.unwrap_or(1);
            println!("vsock: listening on port {port}");
            for _ in 0..conns {
                let n = v.echo_one(port)?;
                println!("vsock: echoed {n} bytes on port {port}");
            }
            Ok(())
        }
        "vsock-connect" => {
            let port = number(op.args, "port")?.unwrap_or(1234) as u32;
            let text = op.args.get("text").unwrap_or("hello-from-the-guest");
            let mut line = [0u8; 256];
            if text.len() >= line.len() {
                bail!("op=vsock-connect: text too long");
            }
            line[..text.len()].copy_from_slice(text.as_bytes());
            line[text.len()] = b'\n';
            let mut back = [0u8; 256];
            let n = v.connect_roundtrip(port, &line[..=text.len()], &mut back)?;
            let back = back[..n].strip_suffix(b"\n").unwrap_or(&back[..n]);
            kit::print!("vsock: host answered ");
            for &b in back {
                kit::serial::putc(if b.is_ascii_graphic() { b } else { b'?' });
            }
            println!();
            Ok(())
        }
        "vsock-hostile" => {
            let port = number(op.args, "port")?.unwrap_or(5001) as u32;
            vsock_hostile(v, port)
        }
        other => bail!("unknown op={other}"),
    }
}

/// `op=vsock-hostile port=P`: a packet whose `len` is not its payload
/// (dropped), an unknown op (answered with RST), and a connection to host
/// port P flooded past the credit the device gave (reset).
fn vsock_hostile(v: &mut Vsock, port: u32) -> Result<(), Error> {
    use kit::virtio::vsock::{Hdr, HOST_CID, MAX_PAYLOAD, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW};
    let base = Hdr {
        src_cid: v.cid,
        dst_cid: HOST_CID,
        dst_port: port,
        kind: 1,
        buf_alloc: 65536,
        ..Hdr::default()
    };
    v.send_raw(
        Hdr {
            src_port: 7000,
            op: OP_RW,
            len: 100,
            ..base
        },
        &[0u8; 10],
    )?;
    v.send_raw(
        Hdr {
            src_port: 7001,
            op: 99,
            ..base
        },
        &[],
    )?;
    let mut buf = [0u8; MAX_PAYLOAD];
    loop {
        let (h, _) = v.recv(&mut buf)?;
        if h.dst_port == 7001 && h.op == OP_RST {
            break;
        }
    }
    println!("vsock: unknown op answered with RST");
    v.send_raw(
        Hdr {
            src_port: 7002,
            op: OP_REQUEST,
            ..base
        },
        &[],
    )?;
    loop {
        let (h, _) = v.recv(&mut buf)?;
        if h.dst_port == 7002 && h.op == OP_RESPONSE {
            break;
        }
        if h.dst_port == 7002 && h.op == OP_RST {
            bail!("vsock: host port {port} refused");
        }
    }
    let data = [0x5au8; MAX_PAYLOAD];
    let mut sent = 0u64;
    loop {
        if sent > 64 << 20 {
            bail!("vsock: {sent} bytes past the credit and no RST");
        }
        v.send_raw(
            Hdr {
                src_port: 7002,
                op: OP_RW,
                len: MAX_PAYLOAD as u32,
                ..base
            },
            &data,
        )?;
        sent += MAX_PAYLOAD as u64;
        if let Some((h, _)) = v.try_recv(&mut buf)? {
            if h.dst_port == 7002 && h.op == OP_RST {
                break;
            }
        }
    }
    println!("vsock: flood past the credit reset after {sent} bytes");
    Ok(())
}
