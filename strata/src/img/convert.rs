//! `strata img convert` and its progress display.

use std::io::{IsTerminal, Write};
use std::path::Path;

use disk::ops::{self, ConvertOptions};
use disk::{CacheMode, OpenOptions};

use super::args::{parse_size, split_options, Args, Spec};
use super::verbs::create_options;
use super::{Failure, VerbResult};

/// Progress output: a redrawn bar on a terminal, whole-ten-percent lines otherwise.
pub struct Progress {
    enabled: bool,
    tty: bool,
    last: i64,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            tty: std::io::stdout().is_terminal(),
            last: -1,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let mut out = std::io::stdout().lock();
        if self.tty {
            let step = (pct * 100.0) as i64;
            if step != self.last {
                self.last = step;
                let _ = write!(out, "    ({pct:.2}/100%)\r");
                let _ = out.flush();
            }
        } else {
            let step = (pct / 10.0) as i64;
            if step != self.last {
                self.last = step;
                let _ = writeln!(out, "progress: {}%", step * 10);
            }
        }
    }

    pub fn finish(&mut self) {
        if self.enabled && self.tty {
            println!();
        }
    }
}

pub fn convert(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "-O", "-o", "-S", "-t", "-T", "-m", "-B", "-F"],
        flags: &["-c", "-p", "-n", "-q", "-U", "-W", "--force-share"],
    };
    let a = Args::parse(argv, &spec)?;
    let src_format = a.format("-f")?;
    let dst_format = a.format("-O")?;
    let files = a.expect(
        2,
        "a source and a target file (strata img convert -f FMT -O FMT SRC DST)",
    )?;
    if a.get("-B").is_some() {
        return Err(Failure::new(
            "-B (a backing file for the target) is not supported",
        ));
    }
    let pairs = split_options(&a.all("-o"))?;
    let create = create_options(&pairs, dst_format)?;
    if create.backing_file.is_some() {
        return Err(Failure::new(
            "backing_file is not supported for convert targets",
        ));
    }
    let sparse_size = match a.get("-S") {
        Some(s) => parse_size(s)?,
        None => 4096,
    };
    // As qemu-img: the target defaults to `unsafe` (never synced); the source is only read,
    // so -T is validated and has no other effect.
    let dst_cache = match a.get("-t") {
        Some(t) => t.parse::<CacheMode>()?,
        None => CacheMode::Unsafe,
    };
    if let Some(t) = a.get("-T") {
        t.parse::<CacheMode>()?;
    }
    let o = ConvertOptions {
        src_format,
        src_open: OpenOptions {
            read_only: true,
            allow_backing: true,
            backing_format: None,
            ..Default::default()
        },
        dst_format,
        create,
        compress: a.has("-c"),
        sparse_size,
        existing: a.has("-n"),
        dst_cache,
        ..Default::default()
    };
    let mut progress = Progress::new(a.has("-p") && !a.has("-q"));
    progress.update(0, 1);
    let mut cb = |d: u64, t: u64| progress.update(d, t);
    ops::convert(Path::new(&files[0]), Path::new(&files[1]), &o, &mut cb)?;
    progress.finish();
    Ok(0)
}
