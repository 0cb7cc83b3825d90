//! counter: counts in ring 3 and prints `count N` (N = 1, 2, 3, ...)
//! every `every=K` iterations of a busy loop, forever, or until
//! `limit=L` lines when given. For pause/resume and snapshot tests: the
//! host checks the numbers are consecutive.
#![no_std]

use core::sync::atomic::{AtomicU64, Ordering};
use kit::{bail, println, Boot, Error};

kit::guest!("counter", main);

/// Lines printed so far; a static, so that it lives in guest memory
/// (and so in a snapshot).
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Busy-loop iterations between lines without `every=`.
const DEFAULT_EVERY: u64 = 100_000;

fn main(boot: &mut Boot) -> Result<(), Error> {
    let every = match boot.cmdline.number("every") {
        Ok(n) => n.unwrap_or(DEFAULT_EVERY),
        Err(v) => bail!("bad every={v}"),
    };
    let limit = match boot.cmdline.number("limit") {
        Ok(n) => n.unwrap_or(0),
        Err(v) => bail!("bad limit={v}"),
    };
    println!("counter: every={every} limit={limit}");
    loop {
        for i in 0..every {
            core::hint::black_box(i);
        }
        let n = COUNT.load(Ordering::Relaxed) + 1;
        COUNT.store(n, Ordering::Relaxed);
        println!("count {n}");
        if n == limit {
            return Ok(());
        }
    }
}
