//! virtio: finds the virtio devices of one transport, starts a driver for
//! each blk (up to four, `disk=0..3` in discovery order), rng and console
//! device, and runs the operations its command line lists, in order:
//!
//! ```text
//! transport=mmio|pci|pci-legacy  op=NAME [ARG=VALUE ...]  op=NAME ...
//! ```
//!
//! guests/README.md lists the operations and what they print.
#![no_std]

use kit::cmdline::{Cmdline, Op};
use kit::crc32::Crc32;
use kit::dma::{Dma, DmaBuf};
use kit::io::rdtsc;
use kit::pattern::{fill_sector, SECTOR};
use kit::virtio::blk::{self, Blk};
use kit::virtio::console::Console;
use kit::virtio::rng::Rng;
use kit::virtio::{self, Kind, ID_BLK, ID_CONSOLE, ID_RNG};
use kit::{bail, err, println, Boot, Error};

kit::guest!("virtio", main);

/// Disks the guest drives at most.
const MAX_DISKS: usize = 4;
/// Sectors per request of the bulk operations (64 KiB).
const CHUNK_SECTORS: u64 = 128;
/// Most bytes `op=rng` and `op=console-read` take.
const MAX_BYTES: u64 = 4096;
/// Buffer of the bench operations (`qd` times `bs` at most).
const BENCH_BYTES: usize = 16 << 20;
/// RTC seconds the TSC's rate is measured over (once, at the first bench).
const CALIBRATION_SECONDS: u32 = 2;

/// The started drivers and the buffers the operations share.
struct Drivers {
    disks: [Option<Blk>; MAX_DISKS],
    rng: Option<Rng>,
    console: Option<Console>,
    /// Bulk-transfer buffer: CHUNK_SECTORS sectors.
    chunk: DmaBuf,
    /// Small-transfer buffer: MAX_BYTES bytes.
    small: DmaBuf,
    /// The bench operations' buffer (allocated at the first one).
    bench: Option<DmaBuf>,
    /// TSC cycles per second (measured at the first bench).
    tsc_hz: Option<u64>,
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
    let dma = &mut boot.dma;
    let mut drivers = Drivers {
        disks: [const { None }; MAX_DISKS],
        rng: None,
        console: None,
        chunk: dma.alloc((CHUNK_SECTORS * SECTOR as u64) as usize, 4096)?,
        small: dma.alloc(MAX_BYTES as usize, 4096)?,
        bench: None,
        tsc_hz: None,
    };
    for slot in drivers.disks.iter_mut() {
        match devices.take(ID_BLK) {
            Some(t) => *slot = Some(Blk::new(t, dma)?),
            None => break,
        }
    }
    drivers.rng = devices.take(ID_RNG).map(|t| Rng::new(t, dma)).transpose()?;
    drivers.console = devices
        .take(ID_CONSOLE)
        .map(|t| Console::new(t, dma))
        .transpose()?;
    for op in boot.cmdline.ops() {
        if op.name.starts_with("bench-") {
            bench_op(&mut drivers, dma, op)?;
        } else {
            run_op(&mut drivers, op)?;
        }
    }
    Ok(())
}

fn run_op(d: &mut Drivers, op: Op) -> Result<(), Error> {
    match op.name {
        "rng" => return rng(d, op.args),
        "console-write" => return console_write(d, op.args),
        "console-read" => return console_read(d, op.args),
        _ => {}
    }
    let n = number(op.args, "disk")?.unwrap_or(0) as usize;
    let disk = d
        .disks
        .get_mut(n)
        .and_then(Option::as_mut)
        .ok_or_else(|| err!("op={}: no disk {n}", op.name))?;
    let chunk = &mut d.chunk;
    match op.name {
        "blk-info" => blk_info(n, disk),
        "blk-id" => {
            let (id, len) = disk.id()?;
            let id = core::str::from_utf8(&id[..len]).unwrap_or("(not UTF-8)");
            println!("blk{n}: id={id}");
            Ok(())
        }
        "blk-write" | "blk-verify" | "blk-read-crc" => blk_bulk(n, disk, chunk, op),
        "blk-flush" => {
            disk.flush()?;
            println!("blk{n}: flushed");
            Ok(())
        }
        "blk-discard" | "blk-write-zeroes" => blk_discard(n, disk, op),
        "blk-loop" => blk_loop(n, disk, chunk, op),
        other => bail!("unknown op={other}"),
    }
}

fn number(args: Cmdline, key: &str) -> Result<Option<u64>, Error> {
    args.number(key).map_err(|v| err!("bad {key}={v}"))
}

fn blk_info(n: usize, disk: &Blk) -> Result<(), Error> {
    let flag = |f| u8::from(disk.has(f));
    println!(
        "blk{n}: capacity={} blk_size={} ro={} flush={} discard={} write_zeroes={}",
        disk.capacity,
        disk.blk_size(),
        flag(blk::F_RO),
        flag(blk::F_FLUSH),
        flag(blk::F_DISCARD),
        flag(blk::F_WRITE_ZEROES)
    );
    println!(
        "blk{n}: features offered={:#018x} accepted={:#018x}",
        disk.dev.offered, disk.dev.features
    );
    Ok(())
}

/// blk-write (the pattern), blk-verify (read and compare with the
/// pattern) and blk-read-crc, `CHUNK_SECTORS` at a time.
fn blk_bulk(n: usize, disk: &mut Blk, chunk: &mut DmaBuf, op: Op) -> Result<(), Error> {
    let seed = number(op.args, "seed")?.unwrap_or(1) as u32;
    let start = number(op.args, "sector")?.unwrap_or(0);
    let count = match number(op.args, "sectors")? {
        Some(count) => count,
        None => disk.capacity.saturating_sub(start),
    };
    let mut crc = Crc32::new();
    let mut sector = start;
    while sector < start + count {
        let here = (start + count - sector).min(CHUNK_SECTORS);
        let len = (here * SECTOR as u64) as usize;
        if op.name == "blk-write" {
            fill_chunk(chunk, seed, sector, here);
            disk.write(sector, chunk, len)?;
        } else {
            disk.read(sector, chunk, len)?;
            crc.update(&chunk.as_slice()[..len]);
            if op.name == "blk-verify" {
                verify_chunk(chunk, seed, sector, here)?;
            }
        }
        sector += here;
    }
    match op.name {
        "blk-write" => println!("blk{n}: wrote {count} sectors at {start} seed={seed}"),
        "blk-verify" => println!("blk{n}: verified {count} sectors at {start} seed={seed}"),
        _ => println!(
            "blk{n}: read {count} sectors at {start} crc32={:08x}",
            crc.finish()
        ),
    }
    Ok(())
}

/// blk-loop: `count` writes of one chunk each, write `i` (from 1) with seed `i` into slot
/// `(i - 1) % slots` (slot `k` is sectors `k * CHUNK_SECTORS ..`), printing `blk<n>: loop i`
/// after each: a disk workload with a serial stream, for snapshot tests.
fn blk_loop(n: usize, disk: &mut Blk, chunk: &mut DmaBuf, op: Op) -> Result<(), Error> {
    let count = number(op.args, "count")?.unwrap_or(100);
    let slots = number(op.args, "slots")?.unwrap_or(16).max(1);
    if slots * CHUNK_SECTORS > disk.capacity {
        bail!("op=blk-loop: slots={slots} do not fit the disk");
    }
    let len = (CHUNK_SECTORS * SECTOR as u64) as usize;
    for i in 1..=count {
        let sector = ((i - 1) % slots) * CHUNK_SECTORS;
        fill_chunk(chunk, i as u32, sector, CHUNK_SECTORS);
        disk.write(sector, chunk, len)?;
        println!("blk{n}: loop {i}");
    }
    Ok(())
}

fn fill_chunk(chunk: &mut DmaBuf, seed: u32, first: u64, sectors: u64) {
    let bytes = &mut chunk.as_mut_slice()[..(sectors as usize) * SECTOR];
    for (i, s) in bytes.chunks_exact_mut(SECTOR).enumerate() {
        if let Ok(s) = s.try_into() {
            fill_sector(seed, first + i as u64, s);
        }
    }
}

fn verify_chunk(chunk: &DmaBuf, seed: u32, first: u64, sectors: u64) -> Result<(), Error> {
    let mut want = [0u8; SECTOR];
    let bytes = &chunk.as_slice()[..(sectors as usize) * SECTOR];
    for (i, got) in bytes.chunks_exact(SECTOR).enumerate() {
        fill_sector(seed, first + i as u64, &mut want);
        if got != want {
            bail!(
                "blk: sector {} does not hold the pattern of seed {seed}",
                first + i as u64
            );
        }
    }
    Ok(())
}

fn blk_discard(n: usize, disk: &mut Blk, op: Op) -> Result<(), Error> {
    let sector = number(op.args, "sector")?.unwrap_or(0);
    let Some(count) = number(op.args, "sectors")? else {
        bail!("op={}: sectors= missing", op.name);
    };
    let count =
        u32::try_from(count).map_err(|_| err!("op={}: sectors={count} too many", op.name))?;
    let unmap = number(op.args, "unmap")?.unwrap_or(0) != 0;
    let (feature, kind, what, done) = if op.name == "blk-discard" {
        (blk::F_DISCARD, blk::T_DISCARD, "discard", "discarded")
    } else {
        (
            blk::F_WRITE_ZEROES,
            blk::T_WRITE_ZEROES,
            "write-zeroes",
            "zeroed",
        )
    };
    if !disk.has(feature) {
        println!("blk{n}: {what} not offered");
        return Ok(());
    }
    disk.discard_or_zero(kind, sector, count, unmap)?;
    println!("blk{n}: {done} {count} sectors at {sector}");
    Ok(())
}

/// bench-randread (random `bs`-aligned reads) and bench-seqread
/// (consecutive reads, wrapping at the end): `ios` reads of `bs` bytes
/// with `qd` in flight, timed with the TSC.
fn bench_op(d: &mut Drivers, dma: &mut Dma, op: Op) -> Result<(), Error> {
    let n = number(op.args, "disk")?.unwrap_or(0) as usize;
    let random = match op.name {
        "bench-randread" => true,
        "bench-seqread" => false,
        other => bail!("unknown op={other}"),
    };
    let bs = number(op.args, "bs")?.unwrap_or(if random { 4096 } else { 1 << 20 });
    let qd = number(op.args, "qd")?.unwrap_or(1);
    let ios = number(op.args, "ios")?.unwrap_or(10_000);
    if bs == 0 || bs % SECTOR as u64 != 0 || bs > u64::from(u32::MAX) {
        bail!("op={}: bs={bs} (a multiple of 512)", op.name);
    }
    if !(1..=blk::MAX_IN_FLIGHT as u64).contains(&qd) || qd * bs > BENCH_BYTES as u64 {
        bail!(
            "op={}: qd={qd} (1 to {}, qd*bs at most {BENCH_BYTES})",
            op.name,
            blk::MAX_IN_FLIGHT
        );
    }
    if d.bench.is_none() {
        d.bench = Some(dma.alloc(BENCH_BYTES, 4096)?);
    }
    if d.tsc_hz.is_none() {
        d.tsc_hz = kit::clock::tsc_hz(CALIBRATION_SECONDS);
    }
    let Some(hz) = d.tsc_hz else {
        bail!(
            "op={}: the CMOS RTC does not tick (QEMU microvm: add rtc=on)",
            op.name
        );
    };
    let (Some(disk), Some(buf)) = (d.disks.get_mut(n).and_then(Option::as_mut), &d.bench) else {
        bail!("op={}: no disk {n}", op.name);
    };
    let per = bs / SECTOR as u64;
    let slots = disk.capacity / per;
    if slots == 0 {
        bail!("op={}: bs={bs} is larger than disk {n}", op.name);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut i = 0u64;
    let mut next = move || {
        i += 1;
        if random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * per
        } else {
            ((i - 1) % slots) * per
        }
    };
    let cycles = run_bench(disk, buf, bs, qd.min(ios), ios, &mut next)?;
    let iops = ios * hz / cycles.max(1);
    let mib_x10 = ((ios * bs) >> 20) * hz * 10 / cycles.max(1);
    let kind = if random { "randread" } else { "seqread" };
    println!(
        "blk{n}: bench {kind} bs={bs} qd={qd} ios={ios} cycles={cycles} tsc_hz={hz} iops={iops} mib_s={}.{}",
        mib_x10 / 10,
        mib_x10 % 10
    );
    Ok(())
}

/// Keeps `qd` reads in flight until `ios` have finished; returns the TSC
/// cycles from the first submission to the last completion.
fn run_bench(
    disk: &mut Blk,
    buf: &DmaBuf,
    bs: u64,
    qd: u64,
    ios: u64,
    next: &mut impl FnMut() -> u64,
) -> Result<u64, Error> {
    let addr = |tag: usize| buf.addr() + tag as u64 * bs;
    let start = rdtsc();
    for tag in 0..qd as usize {
        disk.start(tag, blk::T_IN, next(), addr(tag), bs as usize)?;
    }
    disk.kick();
    let (mut submitted, mut completed) = (qd, 0u64);
    let mut progress = start;
    while completed < ios {
        let mut restarted = false;
        while let Some(tag) = disk.poll()? {
            completed += 1;
            progress = rdtsc();
            if submitted < ios {
                disk.start(tag, blk::T_IN, next(), addr(tag), bs as usize)?;
                submitted += 1;
                restarted = true;
            }
        }
        if restarted {
            disk.kick();
        } else if rdtsc().wrapping_sub(progress) > kit::virtio::queue::TIMEOUT_CYCLES {
            bail!("bench: the device did not answer ({completed} of {ios} done)");
        }
    }
    Ok(rdtsc().wrapping_sub(start))
}

fn rng(d: &mut Drivers, args: Cmdline) -> Result<(), Error> {
    let rng = d
        .rng
        .as_mut()
        .ok_or_else(|| err!("op=rng: no rng device"))?;
    let len = number(args, "bytes")?.unwrap_or(64);
    if !(2..=MAX_BYTES).contains(&len) {
        bail!("op=rng: bytes={len} (2 to {MAX_BYTES})");
    }
    let len = len as usize;
    d.small.as_mut_slice().fill(0);
    rng.fill(&mut d.small, len)?;
    let bytes = &d.small.as_slice()[..len];
    if bytes.iter().all(|&b| b == bytes[0]) {
        bail!("rng: {len} bytes all equal to {:#04x}", bytes[0]);
    }
    println!("rng: read {len} bytes, not all equal");
    Ok(())
}

fn console_write(d: &mut Drivers, args: Cmdline) -> Result<(), Error> {
    let console = d
        .console
        .as_mut()
        .ok_or_else(|| err!("op=console-write: no console device"))?;
    let text = args.get("text").unwrap_or("hello-from-the-guest");
    console.write(text.as_bytes())?;
    console.write(b"\n")?;
    println!("console: wrote {} bytes", text.len() + 1);
    Ok(())
}

fn console_read(d: &mut Drivers, args: Cmdline) -> Result<(), Error> {
    let console = d
        .console
        .as_mut()
        .ok_or_else(|| err!("op=console-read: no console device"))?;
    let max = number(args, "bytes")?.unwrap_or(256).min(MAX_BYTES) as usize;
    let mut line = [0u8; MAX_BYTES as usize];
    let mut len = 0;
    while len < max && !line[..len].contains(&b'\n') {
        len += console.read(&mut line[len..max])?;
    }
    let text = &line[..len];
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    kit::print!("console: read ");
    for &b in text {
        kit::serial::putc(if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'?'
        });
    }
    println!();
    Ok(())
}
