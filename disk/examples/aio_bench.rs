//! Random-read benchmark through `disk::aio` (run by hand; see bench/disk-aio.sh).
//!
//! `aio_bench PATH FORMAT QD COUNT [direct]`: COUNT reads of 4 KiB at random 4 KiB-aligned
//! offsets, QD of them in flight, through `SharedDisk::engine` (io_uring for raw, the
//! worker adapter for qcow2/vmdk). Prints `engine=.. qd=.. iops=..`.

use std::time::Instant;

use disk::aio::{Completion, Request};
use disk::{Format, OpenOptions, SharedDisk};

const BS: usize = 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: aio_bench PATH FORMAT QD COUNT [direct]".into());
    }
    let format: Format = args[2].parse()?;
    let qd: usize = args[3].parse()?;
    let count: u64 = args[4].parse()?;
    let direct = args.get(5).is_some_and(|a| a == "direct");
    let options = OpenOptions {
        read_only: true,
        direct,
        ..Default::default()
    };
    let disk = SharedDisk::open(std::path::Path::new(&args[1]), format, &options)?;
    let blocks = disk.size() / BS as u64;
    let mut engine = disk.engine(qd as u32)?;
    // One aligned 4 KiB buffer per slot; the token is the slot.
    let mut storage = vec![0u8; (qd + 1) * BS];
    let base = storage.as_mut_ptr() as usize;
    let first = (BS - base % BS) % BS;
    let iovecs: Vec<libc::iovec> = (0..qd)
        .map(|i| libc::iovec {
            iov_base: storage[first + i * BS..].as_mut_ptr().cast(),
            iov_len: BS,
        })
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_offset = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * BS as u64
    };
    let (mut submitted, mut completed) = (0u64, 0u64);
    let mut done: Vec<Completion> = Vec::with_capacity(qd);
    let start = Instant::now();
    for slot in 0..qd.min(count as usize) {
        // SAFETY: `storage` outlives the engine, which is dropped before it below.
        let r = unsafe { Request::read(next_offset(), &iovecs[slot..slot + 1])? };
        engine.submit(r, slot as u64)?;
        submitted += 1;
    }
    engine.commit()?;
    while completed < count {
        engine.wait()?;
        engine.completions(&mut done);
        for c in done.drain(..) {
            c.result?;
            completed += 1;
            if submitted < count {
                let slot = c.token as usize;
                // SAFETY: as above.
                let r = unsafe { Request::read(next_offset(), &iovecs[slot..slot + 1])? };
                engine.submit(r, c.token)?;
                submitted += 1;
            }
        }
        engine.commit()?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "engine={} format={} direct={direct} qd={qd} reads={count} iops={:.0}",
        engine.name(),
        format.name(),
        count as f64 / secs
    );
    drop(engine);
    drop(storage);
    Ok(())
}
