//! hostile: a virtio driver that breaks the rules, for
//! strata/tests/virtio_hostile.rs (issue 8, item 9).
//!
//! ```text
//! transport=mmio|pci  seed=N  witness-seed=M  [only=CASE]
//! ```
//!
//! It finds two virtio-blk devices and an rng on one transport. The first
//! disk is the victim: every case resets it, sets it up again and does one
//! thing a driver must not do (descriptors outside RAM or in the MMIO hole,
//! loops, zero and 4 GiB lengths, wrong directions, chains longer than the
//! queue, nested indirect tables, bad queue sizes and ring addresses,
//! notifications before DRIVER_OK, out-of-range configuration, register
//! and BAR writes, a reset with requests in flight), then prints what the
//! device did:
//!
//! ```text
//! case NAME: used len=L status=S     the chain came back; S is the status byte
//!                                    (255: the device did not write it)
//! case NAME: needs-reset             the device set DEVICE_NEEDS_RESET
//! case NAME: silent                  nothing within the wait
//! case NAME: <other words>           cases that check something else
//! ```
//!
//! Then it resets the victim, drives it normally (16 sectors read and
//! checked against the pattern of `seed`), reads 8 sectors of the second
//! disk (the witness, pattern `witness-seed`) and 64 bytes of the rng, and
//! checks that a canary page right after the data buffer is untouched:
//! `case NAME: recovered`. Any failure there is an `error:` line.
#![no_std]

use kit::dma::{Dma, DmaBuf};
use kit::io::{rdtsc, Mmio};
use kit::pattern::{fill_sector, SECTOR};
use kit::pci::{Bar, Function};
use kit::virtio::blk::{self, Blk};
use kit::virtio::queue::{Desc, Virtq, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use kit::virtio::rng::Rng;
use kit::virtio::{self, Device, Kind, Transport, ID_BLK, ID_RNG};
use kit::virtio::{
    F_INDIRECT_DESC, F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_NEEDS_RESET,
};
use kit::{bail, err, println, Boot, Error};

kit::guest!("hostile", main);

/// The queue size the cases use (the device offers more).
const QSIZE: u16 = 128;
/// How long a case waits for the device, in TSC cycles (about a second).
const WAIT: u64 = 1 << 31;
/// Far beyond any RAM the test gives the guest.
const BEYOND_RAM: u64 = 0x10_0000_0000;
/// The local APIC: inside the 32-bit MMIO hole.
const LAPIC: u64 = 0xfee0_0000;
/// Canary byte.
const CANARY: u8 = 0xa5;

const N: u16 = DESC_F_NEXT;
const W: u16 = DESC_F_WRITE;
const I: u16 = DESC_F_INDIRECT;

/// What the cases share.
struct Env {
    victim: Option<Transport>,
    witness: Blk,
    rng: Rng,
    seed: u32,
    witness_seed: u32,
    /// Header at 0, status byte at 16.
    req: DmaBuf,
    /// Two pages of data, then the canary page.
    data: DmaBuf,
    canary: DmaBuf,
    /// Indirect tables.
    table: DmaBuf,
    table2: DmaBuf,
    /// Recovery reads.
    check: DmaBuf,
    small: DmaBuf,
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

fn main(boot: &mut Boot) -> Result<(), Error> {
    let kind = match boot.cmdline.get("transport") {
        Some("mmio") => Kind::Mmio,
        Some("pci") => Kind::Pci,
        other => bail!("transport={other:?}: mmio or pci"),
    };
    let number = |key| boot.cmdline.number(key).map_err(|v| err!("bad {key}={v}"));
    let seed = number("seed")?.unwrap_or(1) as u32;
    let witness_seed = number("witness-seed")?.unwrap_or(2) as u32;
    let only = boot.cmdline.get("only");
    let mut devices = virtio::find(kind, &boot.cmdline)?;
    let dma = &mut boot.dma;
    let victim = devices.take(ID_BLK).ok_or_else(|| err!("no victim disk"))?;
    let witness = devices
        .take(ID_BLK)
        .ok_or_else(|| err!("no witness disk"))?;
    let rng = devices.take(ID_RNG).ok_or_else(|| err!("no rng"))?;
    let mut env = Env {
        victim: Some(victim),
        witness: Blk::new(witness, dma)?,
        rng: Rng::new(rng, dma)?,
        seed,
        witness_seed,
        req: dma.alloc(4096, 4096)?,
        data: dma.alloc(8192, 4096)?,
        canary: dma.alloc(4096, 4096)?,
        table: dma.alloc(8192, 4096)?,
        table2: dma.alloc(4096, 4096)?,
        check: dma.alloc(16 * SECTOR, 4096)?,
        small: dma.alloc(4096, 4096)?,
    };
    if env.canary.addr() != env.data.addr() + env.data.len() as u64 {
        bail!("the canary page does not follow the data buffer");
    }
    env.canary.as_mut_slice().fill(CANARY);
    for (name, case) in CASES {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        case(&mut env, dma, name)?;
        recover(&mut env, dma, name)?;
    }
    Ok(())
}

type Case = fn(&mut Env, &mut Dma, &str) -> Result<(), Error>;

const CASES: &[(&str, Case)] = &[
    ("addr-beyond-ram", addr_beyond_ram),
    ("addr-mmio-hole", addr_mmio_hole),
    ("addr-own-registers", addr_own_registers),
    ("addr-wraps", addr_wraps),
    ("header-beyond-ram", header_beyond_ram),
    ("status-in-hole", status_in_hole),
    ("zero-len-data", zero_len_data),
    ("zero-len-header", zero_len_header),
    ("len-4g-read", len_4g_read),
    ("len-4g-write", len_4g_write),
    ("status-readable", status_readable),
    ("read-into-readable", read_into_readable),
    ("write-from-writable", write_from_writable),
    ("loop", chain_loop),
    ("next-out-of-range", next_out_of_range),
    ("head-out-of-range", head_out_of_range),
    ("avail-idx-ahead", avail_idx_ahead),
    ("chain-longer-than-queue", chain_longer_than_queue),
    ("indirect-in-indirect", indirect_in_indirect),
    ("indirect-beyond-ram", indirect_beyond_ram),
    ("indirect-bad-len", indirect_bad_len),
    ("queue-size-0", |e, m, n| queue_size(e, m, n, 0)),
    ("queue-size-3", |e, m, n| queue_size(e, m, n, 3)),
    ("queue-size-1024", |e, m, n| queue_size(e, m, n, 1024)),
    ("rings-in-hole", rings_in_hole),
    ("notify-before-driver-ok", notify_before_driver_ok),
    (
        "driver-ok-without-features-ok",
        driver_ok_without_features_ok,
    ),
    ("notify-unknown-queue", notify_unknown_queue),
    ("config-out-of-range", config_out_of_range),
    ("registers-out-of-range", registers_out_of_range),
    ("bar-moves", bar_moves),
    ("reset-mid-request", reset_mid_request),
];

// Set-up and observation.

/// Resets the victim, negotiates INDIRECT_DESC, sets up queue 0 (QSIZE)
/// and, with `ok`, sets DRIVER_OK.
fn open(env: &mut Env, dma: &mut Dma, ok: bool) -> Result<(Device, Virtq), Error> {
    let t = env.victim.take().ok_or_else(|| err!("victim lost"))?;
    let mut dev = Device::init(t, F_INDIRECT_DESC)?;
    let vq = dev.queue(dma, 0, QSIZE)?;
    if ok {
        dev.driver_ok();
    }
    env.req.write::<u8>(16, 0xff);
    Ok((dev, vq))
}

/// Gives the victim's transport back for [`recover`].
fn close(env: &mut Env, dev: Device) {
    env.victim = Some(dev.transport);
}

/// A read (IN) header at sector 0 in `req`.
fn header(env: &mut Env, kind: u32) -> u64 {
    env.req.write::<u32>(0, kind);
    env.req.write::<u32>(4, 0);
    env.req.write::<u64>(8, 0);
    env.req.write::<u8>(16, 0xff);
    env.req.addr()
}

/// Writes `descs` at 0.., makes descriptor 0 available and notifies.
fn post(vq: &mut Virtq, descs: &[Desc]) {
    for (i, x) in descs.iter().enumerate() {
        vq.write_desc(i as u16, *x);
    }
    vq.push_avail(0);
    vq.kick();
}

/// The usual three descriptors around a data descriptor.
fn three(env: &mut Env, kind: u32, data: Desc) -> [Desc; 3] {
    let hdr = header(env, kind);
    [
        d(hdr, 16, N, 1),
        d(data.addr, data.len, data.flags | N, 2),
        d(hdr + 16, 1, W, 0),
    ]
}

enum Seen {
    Used { len: u32, status: u8, reset: bool },
    NeedsReset,
    Silent,
}

fn observe(env: &Env, dev: &Device, vq: &Virtq) -> Seen {
    let start = rdtsc();
    loop {
        if vq.used_idx() != 0 {
            return Seen::Used {
                len: vq.used_elem(0).len,
                status: env.req.read::<u8>(16),
                reset: dev.transport.status() & STATUS_NEEDS_RESET != 0,
            };
        }
        if dev.transport.status() & STATUS_NEEDS_RESET != 0 {
            return Seen::NeedsReset;
        }
        if rdtsc().wrapping_sub(start) > WAIT {
            return Seen::Silent;
        }
        core::hint::spin_loop();
    }
}

fn report(name: &str, seen: Seen) {
    match seen {
        Seen::Used { len, status, reset } => println!(
            "case {name}: used len={len} status={status}{}",
            if reset { " needs-reset" } else { "" }
        ),
        Seen::NeedsReset => println!("case {name}: needs-reset"),
        Seen::Silent => println!("case {name}: silent"),
    }
}

/// Posts `descs`, reports what the device did, gives the victim back.
fn simple(env: &mut Env, dma: &mut Dma, name: &str, descs: &[Desc]) -> Result<(), Error> {
    let (dev, mut vq) = open(env, dma, true)?;
    // The header was written by the caller; open() reset the status byte.
    post(&mut vq, descs);
    report(name, observe(env, &dev, &vq));
    close(env, dev);
    Ok(())
}

fn with_three(
    env: &mut Env,
    dma: &mut Dma,
    name: &str,
    kind: u32,
    data: Desc,
) -> Result<(), Error> {
    let (dev, mut vq) = open(env, dma, true)?;
    let descs = three(env, kind, data);
    post(&mut vq, &descs);
    report(name, observe(env, &dev, &vq));
    close(env, dev);
    Ok(())
}

/// Resets the victim and checks that it, the witness disk, the rng and
/// the canary are all fine.
fn recover(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut t = env.victim.take().ok_or_else(|| err!("victim lost"))?;
    t.set_status(0);
    if t.status() != 0 {
        bail!("case {name}: status {:#x} after a reset", t.status());
    }
    let mut victim = Blk::new(t, dma)?;
    victim.read(0, &mut env.check, 16 * SECTOR)?;
    verify(&env.check, env.seed, 16).map_err(|e| err!("case {name}: victim: {e}"))?;
    env.victim = Some(victim.dev.transport);
    env.witness.read(0, &mut env.check, 8 * SECTOR)?;
    verify(&env.check, env.witness_seed, 8).map_err(|e| err!("case {name}: witness: {e}"))?;
    env.rng.fill(&mut env.small, 64)?;
    if let Some(at) = env.canary.as_slice().iter().position(|&b| b != CANARY) {
        bail!("case {name}: canary byte {at} changed");
    }
    println!("case {name}: recovered");
    Ok(())
}

fn verify(buf: &DmaBuf, seed: u32, sectors: usize) -> Result<(), Error> {
    let mut want = [0u8; SECTOR];
    for (lba, got) in buf.as_slice()[..sectors * SECTOR]
        .chunks_exact(SECTOR)
        .enumerate()
    {
        fill_sector(seed, lba as u64, &mut want);
        if got != want {
            bail!("sector {lba} does not hold the pattern of seed {seed}");
        }
    }
    Ok(())
}

/// The victim's register window (virtio-mmio) or common configuration
/// (virtio-pci).
fn registers(t: &Transport) -> Result<Mmio, Error> {
    match t {
        Transport::Mmio(m) => Ok(m.regs()),
        Transport::Pci(p) => Ok(p.common()),
        Transport::PciLegacy(_) => bail!("legacy transport"),
    }
}

// The cases.

fn addr_beyond_ram(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    with_three(env, dma, name, blk::T_IN, d(BEYOND_RAM, 4096, W, 0))
}

fn addr_mmio_hole(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    with_three(env, dma, name, blk::T_IN, d(LAPIC, 4096, W, 0))
}

/// Data "read" into the device's own registers: must not reach them.
fn addr_own_registers(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let regs = registers(env.victim.as_ref().ok_or_else(|| err!("victim lost"))?)?;
    with_three(env, dma, name, blk::T_IN, d(regs.base(), 512, W, 0))
}

fn addr_wraps(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    with_three(env, dma, name, blk::T_IN, d(u64::MAX - 0xfff, 0x2000, W, 0))
}

fn header_beyond_ram(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[0].addr = BEYOND_RAM;
    simple(env, dma, name, &descs)
}

fn status_in_hole(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[2].addr = LAPIC;
    simple(env, dma, name, &descs)
}

fn zero_len_data(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let data = env.data.addr();
    with_three(env, dma, name, blk::T_IN, d(data, 0, W, 0))
}

fn zero_len_header(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[0].len = 0;
    simple(env, dma, name, &descs)
}

/// 4 GiB less one sector into the data buffer (which the canary follows).
fn len_4g_read(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let data = env.data.addr();
    with_three(env, dma, name, blk::T_IN, d(data, 0xffff_fe00, W, 0))
}

/// 4 GiB less one sector written from the data buffer (the host checks the
/// image is unchanged).
fn len_4g_write(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let data = env.data.addr();
    with_three(env, dma, name, blk::T_OUT, d(data, 0xffff_fe00, 0, 0))
}

/// The status descriptor is device-readable.
fn status_readable(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[2].flags = 0;
    simple(env, dma, name, &descs)
}

/// A read whose data buffer is device-readable.
fn read_into_readable(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let data = env.data.addr();
    with_three(env, dma, name, blk::T_IN, d(data, 4096, 0, 0))
}

/// A write whose data buffer is device-writable.
fn write_from_writable(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let data = env.data.addr();
    with_three(env, dma, name, blk::T_OUT, d(data, 4096, W, 0))
}

/// header -> data -> status -> header -> ...
fn chain_loop(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[2].flags |= N;
    descs[2].next = 0;
    simple(env, dma, name, &descs)
}

fn next_out_of_range(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    descs[1].next = QSIZE + 7;
    simple(env, dma, name, &descs)
}

/// The available ring names descriptor QSIZE + 72.
fn head_out_of_range(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (dev, mut vq) = open(env, dma, true)?;
    let descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    for (i, x) in descs.iter().enumerate() {
        vq.write_desc(i as u16, *x);
    }
    vq.push_avail(QSIZE + 72);
    vq.kick();
    report(name, observe(env, &dev, &vq));
    close(env, dev);
    Ok(())
}

/// avail.idx a whole queue and more ahead of what the device has seen.
fn avail_idx_ahead(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (dev, mut vq) = open(env, dma, true)?;
    vq.set_avail_idx(QSIZE + 5);
    vq.kick();
    report(name, observe(env, &dev, &vq));
    close(env, dev);
    Ok(())
}

/// An indirect table of 2 * QSIZE descriptors: header, 254 data sectors,
/// status.
fn chain_longer_than_queue(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let hdr = header(env, blk::T_IN);
    let n = 2 * QSIZE;
    let table_len = usize::from(n) * 16;
    if table_len > env.table.len() {
        bail!("indirect table too small");
    }
    let data = env.data.addr();
    for i in 0..n {
        let x = match i {
            0 => d(hdr, 16, N, 1),
            i if i == n - 1 => d(hdr + 16, 1, W, 0),
            i => d(data + u64::from(i % 16) * 512, 512, W | N, i + 1),
        };
        write_table(&mut env.table, i, x);
    }
    let descs = [d(env.table.addr(), table_len as u32, I, 0)];
    simple(env, dma, name, &descs)
}

fn write_table(t: &mut DmaBuf, i: u16, x: Desc) {
    let off = usize::from(i) * 16;
    t.write(off, x.addr);
    t.write(off + 8, x.len);
    t.write(off + 12, x.flags);
    t.write(off + 14, x.next);
}

fn indirect_in_indirect(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let inner = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    for (i, x) in inner.iter().enumerate() {
        write_table(&mut env.table2, i as u16, *x);
    }
    let hdr = env.req.addr();
    write_table(&mut env.table, 0, d(hdr, 16, N, 1));
    write_table(&mut env.table, 1, d(env.table2.addr(), 48, I, 0));
    let descs = [d(env.table.addr(), 32, I, 0)];
    simple(env, dma, name, &descs)
}

fn indirect_beyond_ram(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    header(env, blk::T_IN);
    simple(env, dma, name, &[d(BEYOND_RAM, 48, I, 0)])
}

fn indirect_bad_len(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let inner = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    for (i, x) in inner.iter().enumerate() {
        write_table(&mut env.table, i as u16, *x);
    }
    simple(env, dma, name, &[d(env.table.addr(), 40, I, 0)])
}

/// Queue 0 of `size` entries (not a power of two, 0, or above the
/// maximum), then DRIVER_OK.
fn queue_size(env: &mut Env, dma: &mut Dma, name: &str, size: u16) -> Result<(), Error> {
    let t = env.victim.take().ok_or_else(|| err!("victim lost"))?;
    let mut dev = Device::init(t, F_INDIRECT_DESC)?;
    let notifier = dev.transport.notifier(0);
    let vq = Virtq::new(dma, 0, size, notifier)?;
    dev.transport.queue_setup(&vq)?;
    dev.driver_ok();
    let seen = if dev.transport.status() & STATUS_NEEDS_RESET != 0 {
        Seen::NeedsReset
    } else {
        Seen::Silent
    };
    report(name, seen);
    close(env, dev);
    Ok(())
}

/// The descriptor table moved into the MMIO hole before DRIVER_OK.
fn rings_in_hole(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (mut dev, _vq) = open(env, dma, false)?;
    let regs = registers(&dev.transport)?;
    match dev.transport {
        Transport::Mmio(_) => {
            regs.write32(0x30, 0); // QueueSel
            regs.write32(0x44, 0); // QueueReady
            regs.write64_split(0x80, LAPIC);
            regs.write32(0x44, 1);
        }
        _ => {
            regs.write16(0x16, 0); // queue_select
            regs.write64_split(0x20, LAPIC);
        }
    }
    dev.driver_ok();
    let seen = if dev.transport.status() & STATUS_NEEDS_RESET != 0 {
        Seen::NeedsReset
    } else {
        Seen::Silent
    };
    report(name, seen);
    close(env, dev);
    Ok(())
}

/// A read posted and notified before DRIVER_OK: nothing may happen until
/// DRIVER_OK, then it is served.
fn notify_before_driver_ok(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (mut dev, mut vq) = open(env, dma, false)?;
    let descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    post(&mut vq, &descs);
    let before = match observe(env, &dev, &vq) {
        Seen::Silent => "silent",
        Seen::NeedsReset => "needs-reset",
        Seen::Used { .. } => "used",
    };
    dev.driver_ok();
    let after = observe(env, &dev, &vq);
    let status = match after {
        Seen::Used { status, .. } => status,
        _ => 0xee,
    };
    let data = verify(&env.data, env.seed, 8).is_ok();
    println!(
        "case {name}: before driver-ok {before}, after status={status} data={}",
        if data { "ok" } else { "wrong" }
    );
    close(env, dev);
    Ok(())
}

/// DRIVER_OK on a modern interface without FEATURES_OK.
fn driver_ok_without_features_ok(env: &mut Env, _dma: &mut Dma, name: &str) -> Result<(), Error> {
    let mut t = env.victim.take().ok_or_else(|| err!("victim lost"))?;
    t.set_status(0);
    t.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    t.set_driver_features(F_VERSION_1);
    t.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    let seen = if t.status() & STATUS_NEEDS_RESET != 0 {
        Seen::NeedsReset
    } else {
        Seen::Silent
    };
    report(name, seen);
    env.victim = Some(t);
    Ok(())
}

/// Notifications for queues the device does not have, then a good read.
fn notify_unknown_queue(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (dev, mut vq) = open(env, dma, true)?;
    match dev.transport {
        Transport::Mmio(ref m) => {
            for q in [1, 7, 0xffff, 0xffff_ffff] {
                m.regs().write32(0x50, q);
            }
        }
        Transport::Pci(ref p) => {
            let (notify, mult) = p.notify();
            for q in [1u16, 7, 0xffff] {
                notify.write16(0, q);
                notify
                    .offset(u64::from(q) * u64::from(mult.max(1)) % 0x1000)
                    .write16(0, q);
            }
        }
        Transport::PciLegacy(_) => {}
    }
    let descs = three(env, blk::T_IN, d(env.data.addr(), 4096, W, 0));
    post(&mut vq, &descs);
    report(name, observe(env, &dev, &vq));
    close(env, dev);
    Ok(())
}

/// Writes all over the device configuration space and past its end, at
/// every width; the capacity must read the same afterwards.
fn config_out_of_range(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (dev, _vq) = open(env, dma, true)?;
    let before = dev.config().read64(0);
    let window = match dev.transport {
        Transport::Mmio(ref m) => Some((m.regs().offset(0x100), 0xf00)),
        Transport::Pci(ref p) => {
            // The device configuration structure's own window is not kept
            // by the kit: reach it through the config accessor below.
            let _ = p;
            None
        }
        Transport::PciLegacy(_) => None,
    };
    match window {
        Some((w, len)) => scribble(w, len),
        None => {
            let c = dev.config();
            for off in (0..0x1000u16).step_by(4) {
                c.write8(off, 0xff);
                c.write8(off + 1, 0xff);
            }
        }
    }
    let after = dev.config().read64(0);
    println!(
        "case {name}: capacity {}",
        if before == after {
            "unchanged"
        } else {
            "changed"
        }
    );
    close(env, dev);
    Ok(())
}

/// 32-, 16- and 8-bit writes of ones over `len` bytes of `w`, and reads.
fn scribble(w: Mmio, len: u64) {
    for off in (0..len).step_by(4) {
        w.write32(off, 0xffff_ffff);
        w.write16(off + 2, 0xffff);
        w.write8(off + 1, 0xff);
        let _ = w.read32(off);
    }
}

/// Queue registers with a selector naming no queue, feature selectors out
/// of range, registers past the defined ones.
fn registers_out_of_range(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (dev, _vq) = open(env, dma, false)?;
    let regs = registers(&dev.transport)?;
    let (max, features) = match dev.transport {
        Transport::Mmio(_) => {
            regs.write32(0x30, 0xffff); // QueueSel
            regs.write32(0x38, 8); // QueueNum
            regs.write64_split(0x80, BEYOND_RAM);
            regs.write32(0x44, 1); // QueueReady
            let max = regs.read32(0x34);
            regs.write32(0x14, 0x7fff_ffff); // DeviceFeaturesSel
            let features = regs.read32(0x10);
            for off in [
                0x0c, 0x18, 0x1c, 0x48, 0x54, 0x58, 0x5c, 0x6c, 0xb0, 0xfc, 0xf8,
            ] {
                regs.write32(off, 0xffff_ffff);
            }
            (max, features)
        }
        _ => {
            regs.write16(0x16, 0xffff); // queue_select
            regs.write16(0x18, 8); // queue_size
            regs.write64_split(0x20, BEYOND_RAM);
            regs.write16(0x1c, 1); // queue_enable
            let max = u32::from(regs.read16(0x18));
            regs.write32(0x00, 0x7fff_ffff); // device_feature_select
            let features = regs.read32(0x04);
            scribble(regs.offset(0x40), 0x7c0);
            (max, features)
        }
    };
    let mut dev = dev;
    dev.driver_ok();
    let reset = dev.transport.status() & STATUS_NEEDS_RESET != 0;
    println!(
        "case {name}: queue max {max:#x} features {features:#x}{}",
        if reset { " needs-reset" } else { "" }
    );
    close(env, dev);
    Ok(())
}

/// virtio-pci: the victim's memory BAR moved onto RAM, onto the witness's
/// BAR, far above any address, and sized while decoding; restored each
/// time (the witness must answer meanwhile). virtio-mmio: nothing to move.
fn bar_moves(env: &mut Env, _dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (Some(Transport::Pci(victim)), Transport::Pci(witness)) =
        (env.victim.as_ref(), &env.witness.dev.transport)
    else {
        println!("case {name}: no BARs");
        return Ok(());
    };
    let (vf, wf) = (*victim.function(), *witness.function());
    let (index, addr, wide) = memory_bar(&vf, victim.common().base())?;
    let (_, witness_addr, _) = memory_bar(&wf, witness.common().base())?;
    let targets = [env.data.addr(), witness_addr, 0x7fff_ffff_0000_0000];
    let mut witness_ok = 0;
    for to in targets {
        vf.set_bar(index, to, wide);
        env.witness.read(0, &mut env.check, 8 * SECTOR)?;
        witness_ok += u32::from(verify(&env.check, env.witness_seed, 8).is_ok());
        vf.set_bar(index, addr, wide);
    }
    let off = kit::pci::BAR0 + index * 4;
    vf.bdf.write32(off, 0xffff_ffff);
    if wide {
        vf.bdf.write32(off + 4, 0xffff_ffff);
    }
    vf.set_bar(index, addr, wide);
    println!("case {name}: witness answered {witness_ok} of 3");
    Ok(())
}

/// The memory BAR of `f` that holds `inside`: (index, address, 64-bit).
fn memory_bar(f: &Function, inside: u64) -> Result<(u8, u64, bool), Error> {
    for i in 0..6u8 {
        if let Bar::Memory { addr, size, wide } = f.bar(i) {
            if addr <= inside && inside < addr + size {
                return Ok((i, addr, wide));
            }
        }
    }
    bail!("{}: no memory BAR holds {inside:#x}", f.bdf)
}

/// Sixteen reads in flight, then a reset at once.
fn reset_mid_request(env: &mut Env, dma: &mut Dma, name: &str) -> Result<(), Error> {
    let (mut dev, mut vq) = open(env, dma, true)?;
    let hdr = header(env, blk::T_IN);
    let data = env.check.addr();
    for i in 0..16u16 {
        let at = 3 * i;
        vq.write_desc(at, d(hdr, 16, N, at + 1));
        vq.write_desc(
            at + 1,
            d(data + u64::from(i % 16) * 512, 512, W | N, at + 2),
        );
        vq.write_desc(at + 2, d(env.small.addr() + u64::from(i), 1, W, 0));
        vq.push_avail(at);
    }
    vq.kick();
    dev.transport.set_status(0);
    let status = dev.transport.status();
    println!("case {name}: status {status} after the reset");
    close(env, dev);
    Ok(())
}
