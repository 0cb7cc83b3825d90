//! The smaller `strata img` verbs: create, check, resize, snapshot, compare, map, bench,
//! and every verb's `--help`.

use std::path::{Path, PathBuf};

use disk::ops::{self, BenchOptions, Comparison};
use disk::vmdk::Subformat;
use disk::{CompressionType, CreateOptions, Format, OpenOptions, Qcow2Version};
use serde_json::json;

use super::args::{parse_bool, parse_size, split_options, Args, Spec};
use super::convert::Progress;
use super::info::{pretty, snapshot_table};
use super::{Failure, VerbResult};

/// Help text for one verb.
pub fn help(verb: &str) -> &'static str {
    match verb {
        "create" => "usage: strata img create -f FMT [-o OPTIONS] [-b BACKING -F BACKING_FMT] [-u] FILE [SIZE]
  Creates an image. SIZE takes k, M, G, T suffixes; without SIZE the backing file's size is used.
  -o options: cluster_size, backing_file, backing_fmt, compression_type=zlib|zstd,
     subformat=monolithicSparse|streamOptimized (vmdk), refcount_bits, compat=0.10|1.1,
     lazy_refcounts=on|off",
        "info" => "usage: strata img info -f FMT [--output human|json] [--backing-chain] FILE
  Describes an image with qemu-img's field names. Backing files are described only when
  the image records their format.",
        "convert" => "usage: strata img convert -f FMT -O FMT [-c] [-o OPTIONS] [-p] [-S SPARSE_SIZE] [-n] SRC DST
  Copies SRC into a new image DST (or an existing one with -n). All-zero ranges are not
  written (granularity -S, default 4k; -S 0 writes everything). -c compresses (qcow2 zlib
  or zstd per compression_type; vmdk needs -o subformat=streamOptimized, which is always
  compressed). -p shows progress.",
        "check" => "usage: strata img check -f FMT [-r leaks|all] [--output human|json] FILE
  Checks metadata consistency. Exit status: 0 no problems, 1 check failed to run,
  2 corruptions, 3 leaks only.",
        "resize" => "usage: strata img resize -f FMT [--shrink] FILE [+|-]SIZE
  Sets (or with + or -, changes) the virtual size. Shrinking needs --shrink.",
        "snapshot" => "usage: strata img snapshot -f qcow2 -l|-c NAME|-a NAME|-d NAME FILE
  Lists, creates, applies (reverts to) or deletes internal snapshots.",
        "compare" => "usage: strata img compare -f FMT -F FMT [-s] [-p] FILE1 FILE2
  Compares contents. Exit status: 0 identical, 1 different (first differing offset printed),
  2 error. Images of different sizes are equal when the extra part reads as zeroes (-s: never).",
        "map" => "usage: strata img map -f FMT [--output human|json] FILE
  Prints where the image's data lives (qemu-img map's fields), through the backing chain.",
        "bench" => "usage: strata img bench -f FMT [-c COUNT] [-d DEPTH] [-s BUFSIZE] [-w] [-S STEP] [-o OFFSET]
                  [--pattern N] [-i FLUSH_INTERVAL] [-t none|writeback] FILE
  Sends COUNT requests of BUFSIZE bytes at OFFSET, OFFSET+STEP, ... (wrapping), as qemu-img
  bench does, and prints the time taken. Requests are issued one at a time; DEPTH is shown
  but not used. -t none (O_DIRECT) works for raw images only.",
        _ => super::USAGE,
    }
}

/// Turns `-o key=value` pairs into create options for `format`.
pub fn create_options(
    pairs: &[(String, String)],
    format: Format,
) -> Result<CreateOptions, Failure> {
    let mut o = CreateOptions::default();
    for (k, v) in pairs {
        let applies = match (k.as_str(), format) {
            ("preallocation", _) if v == "off" => true,
            ("size", _) => continue,
            ("subformat", f) => f == Format::Vmdk,
            (_, f) => f == Format::Qcow2,
        };
        if !applies {
            return Err(Failure::new(format!(
                "option '{k}={v}' is not supported for {} images",
                format.name()
            )));
        }
        match k.as_str() {
            "cluster_size" => o.cluster_size = Some(parse_size(v)?),
            "backing_file" => o.backing_file = Some(v.clone()),
            "backing_fmt" => o.backing_format = Some(v.parse()?),
            "compression_type" => {
                o.compression_type = match v.as_str() {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => return Err(Failure::new(format!("unknown compression_type '{v}'"))),
                }
            }
            "subformat" => {
                o.vmdk_subformat = match v.as_str() {
                    "monolithicSparse" => Subformat::MonolithicSparse,
                    "streamOptimized" => Subformat::StreamOptimized,
                    _ => {
                        return Err(Failure::new(format!(
                        "subformat '{v}' is not supported (monolithicSparse or streamOptimized)"
                    )))
                    }
                }
            }
            "refcount_bits" => {
                o.refcount_bits = Some(v.parse().map_err(|_| format!("bad refcount_bits '{v}'"))?)
            }
            "compat" => {
                o.version = match v.as_str() {
                    "0.10" | "v2" => Qcow2Version::V2,
                    "1.1" | "v3" => Qcow2Version::V3,
                    _ => return Err(Failure::new(format!("unknown compat '{v}' (0.10 or 1.1)"))),
                }
            }
            "lazy_refcounts" => o.lazy_refcounts = parse_bool(k, v)?,
            "extended_l2" if !parse_bool(k, v)? => {}
            "preallocation" => {}
            _ => {
                return Err(Failure::new(format!(
                    "unknown or unsupported option '{k}={v}'"
                )))
            }
        }
    }
    Ok(o)
}

/// Resolves a backing file name against the directory of the image naming it.
fn backing_path(image: &Path, name: &str) -> PathBuf {
    match Path::new(name) {
        p if p.is_absolute() => p.to_path_buf(),
        p => image.parent().unwrap_or(Path::new("")).join(p),
    }
}

pub fn create(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "-o", "-b", "-F"],
        flags: &["-u", "-q"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let mut o = create_options(&split_options(&a.all("-o"))?, format)?;
    if let Some(b) = a.get("-b") {
        o.backing_file = Some(b.to_string());
    }
    if let Some(f) = a.format_opt("-F")? {
        o.backing_format = Some(f);
    }
    if o.backing_file.is_some() && o.backing_format.is_none() {
        return Err(Failure::new(
            "give the backing file's format with -F raw|qcow2|vmdk; Strata never guesses it",
        ));
    }
    let (file, size) = match a.positional.as_slice() {
        [f] => (f, None),
        [f, s] => (f, Some(parse_size(s)?)),
        _ => return Err(Failure::new("expected FILE [SIZE]")),
    };
    let size = match (size, &o.backing_file, o.backing_format) {
        (Some(s), _, _) => s,
        (None, Some(b), Some(bf)) => {
            disk::info(&backing_path(Path::new(file), b), bf)?.virtual_size
        }
        _ => {
            return Err(Failure::new(
                "give a size (or a backing file to take it from)",
            ))
        }
    };
    if !a.has("-q") {
        let mut line = format!("Formatting '{file}', fmt={} size={size}", format.name());
        if let (Some(b), Some(bf)) = (&o.backing_file, o.backing_format) {
            line += &format!(" backing_file={b} backing_fmt={}", bf.name());
        }
        println!("{line}");
    }
    disk::create(Path::new(file), format, size, &o)?;
    Ok(0)
}

pub fn check(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "-r", "--output"],
        flags: &["-q", "-U", "--force-share"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let json = a.json()?;
    let file = &a.expect(1, "one image file")?[0];
    let repair = match a.get("-r") {
        None => false,
        Some("leaks") | Some("all") => true,
        Some(r) => return Err(Failure::new(format!("-r must be leaks or all, not '{r}'"))),
    };
    let path = Path::new(file);
    if format != Format::Qcow2 {
        // Opening proves the image is readable; there is no metadata to check.
        disk::open(
            path,
            format,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )?;
        println!("This image format does not support checks");
        return Ok(63);
    }
    let r = disk::check(path, format, repair).map_err(|e| Failure::from(e).with_status(1))?;
    let leaks = r.leaks.saturating_sub(r.leaks_fixed);
    let frag = ops::frag_info(path, &OpenOptions::default());
    let f = frag.unwrap_or_default();
    if json {
        let mut v = json!({
            "image-end-offset": r.image_end_offset,
            "total-clusters": f.total_clusters,
            "check-errors": 0,
            "allocated-clusters": f.allocated_clusters,
            "fragmented-clusters": f.fragmented_clusters,
            "compressed-clusters": f.compressed_clusters,
            "filename": file,
            "format": format.name(),
        });
        for (k, n) in [
            ("corruptions", r.corruptions),
            ("leaks", leaks),
            ("leaks-fixed", r.leaks_fixed),
        ] {
            if n > 0 {
                v[k] = json!(n);
            }
        }
        println!("{}", pretty(&v));
    } else if !a.has("-q") {
        print_check(&r, leaks, &f);
    }
    Ok(if r.corruptions > 0 {
        2
    } else if leaks > 0 {
        3
    } else {
        0
    })
}

fn print_check(r: &disk::CheckReport, leaks: u64, f: &ops::FragInfo) {
    for m in &r.messages {
        println!("{m}");
    }
    if r.leaks_fixed > 0 {
        println!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    0 corruptions\n",
            r.leaks_fixed
        );
    }
    if r.corruptions > 0 {
        println!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
            r.corruptions
        );
    }
    if leaks > 0 {
        println!(
            "\n{leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data."
        );
    }
    if r.corruptions == 0 && leaks == 0 {
        println!("No errors were found on the image.");
    }
    let pct = |n: u64| {
        if f.total_clusters == 0 {
            0.0
        } else {
            n as f64 * 100.0 / f.total_clusters as f64
        }
    };
    let of_alloc = |n: u64| {
        if f.allocated_clusters == 0 {
            0.0
        } else {
            n as f64 * 100.0 / f.allocated_clusters as f64
        }
    };
    println!(
        "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
        f.allocated_clusters,
        f.total_clusters,
        pct(f.allocated_clusters),
        of_alloc(f.fragmented_clusters),
        of_alloc(f.compressed_clusters)
    );
    println!("Image end offset: {}", r.image_end_offset);
}

pub fn resize(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f"],
        flags: &["--shrink", "-q"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let p = a.expect(2, "FILE [+|-]SIZE")?;
    let mut d = disk::open(Path::new(&p[0]), format, &OpenOptions::default())?;
    let cur = d.size();
    let spec = p[1].as_str();
    let new = if let Some(s) = spec.strip_prefix('+') {
        cur.checked_add(parse_size(s)?).ok_or("size overflows")?
    } else if let Some(s) = spec.strip_prefix('-') {
        cur.checked_sub(parse_size(s)?)
            .ok_or("the image would shrink below zero")?
    } else {
        parse_size(spec)?
    };
    if new < cur && !a.has("--shrink") {
        return Err(Failure::new(
            "shrinking loses data at the end of the disk; use --shrink to confirm",
        ));
    }
    d.resize(new)?;
    d.flush()?;
    if !a.has("-q") {
        println!("Image resized.");
    }
    Ok(0)
}

pub fn snapshot(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "-c", "-a", "-d"],
        flags: &["-l", "-q", "-U"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    if format != Format::Qcow2 {
        return Err(Failure::new("internal snapshots need a qcow2 image"));
    }
    let file = &a.expect(1, "one image file")?[0];
    let actions = ["-l", "-c", "-a", "-d"].iter().filter(|f| a.has(f)).count();
    if actions != 1 {
        return Err(Failure::new(
            "give exactly one of -l, -c NAME, -a NAME, -d NAME",
        ));
    }
    let read_only = a.has("-l");
    let o = OpenOptions {
        read_only,
        allow_backing: true,
        ..Default::default()
    };
    let mut q = disk::Qcow2::open(Path::new(file), &o)?;
    if read_only {
        let snaps = q.snapshots()?;
        if !snaps.is_empty() {
            print!("Snapshot list:\n{}", snapshot_table(&snaps));
        }
    } else if let Some(n) = a.get("-c") {
        q.snapshot_create(n)?;
    } else if let Some(n) = a.get("-a") {
        q.snapshot_apply(n)?;
    } else if let Some(n) = a.get("-d") {
        q.snapshot_delete(n)?;
    }
    if !read_only {
        disk::WriteAt::flush(&mut q)?;
    }
    Ok(0)
}

pub fn compare(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "-F", "-T"],
        flags: &["-s", "-p", "-q", "-U", "--force-share"],
    };
    let a = Args::parse(argv, &spec).map_err(|e| Failure::new(e).with_status(2))?;
    let fa = a.format("-f").map_err(|e| Failure::new(e).with_status(2))?;
    let fb = a.format("-F").map_err(|e| Failure::new(e).with_status(2))?;
    let p = a
        .expect(2, "two image files")
        .map_err(|e| Failure::new(e).with_status(2))?;
    let options = ops::CompareOptions {
        a_format: fa,
        b_format: fb,
        open: OpenOptions {
            read_only: true,
            allow_backing: true,
            ..Default::default()
        },
        strict: a.has("-s"),
    };
    let mut progress = Progress::new(a.has("-p"));
    let mut cb = |d: u64, t: u64| progress.update(d, t);
    let r = ops::compare(Path::new(&p[0]), Path::new(&p[1]), &options, &mut cb)
        .map_err(|e| Failure::from(e).with_status(2))?;
    progress.finish();
    let quiet = a.has("-q");
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    match r {
        Comparison::Identical { size_mismatch } => {
            if size_mismatch {
                say("Warning: Image size mismatch!".into());
            }
            say("Images are identical.".into());
            Ok(0)
        }
        Comparison::Mismatch {
            offset,
            beyond_common,
        } => {
            if beyond_common {
                say("Warning: Image size mismatch!".into());
            }
            say(format!("Content mismatch at offset {offset}!"));
            Ok(1)
        }
        Comparison::SizeMismatch => {
            say("Strict mode: Image size mismatch!".into());
            Ok(1)
        }
    }
}

pub fn map(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "--output", "--start-offset", "--max-length"],
        flags: &["-U", "--force-share"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let json = a.json()?;
    let file = &a.expect(1, "one image file")?[0];
    let o = OpenOptions {
        read_only: true,
        allow_backing: true,
        ..Default::default()
    };
    let entries = ops::map(Path::new(file), format, &o)?;
    if json {
        let lines: Vec<String> = entries
            .iter()
            .map(|e| {
                let mut s = format!(
                    "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
                    e.start, e.length, e.depth, e.present, e.zero, e.data
                );
                if let Some(off) = e.offset {
                    s += &format!(", \"offset\": {off}");
                }
                s + "}"
            })
            .collect();
        println!("[{}]", lines.join(",\n"));
        return Ok(0);
    }
    println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
    for e in entries.iter().filter(|e| e.data) {
        let Some(off) = e.offset else {
            return Err(Failure::new(
                "the image has compressed clusters, which have no host offset to show; use --output json",
            ));
        };
        println!(
            "{:<16}{:<16}{:<16}{}",
            hex(e.start),
            hex(e.length),
            hex(off),
            e.filename.display()
        );
    }
    Ok(0)
}

fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

pub fn bench(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &[
            "-f",
            "-c",
            "-d",
            "-s",
            "-S",
            "-o",
            "-t",
            "-i",
            "--pattern",
            "--flush-interval",
        ],
        flags: &["-w", "-q", "-n", "--no-drain", "-U", "--force-share"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let file = &a.expect(1, "one image file")?[0];
    let num = |name: &str, default: u64| -> Result<u64, Failure> {
        match a.get(name) {
            None => Ok(default),
            Some(v) => Ok(parse_size(v)?),
        }
    };
    let o = BenchOptions {
        count: num("-c", 75000)?,
        depth: num("-d", 64)?,
        bufsize: num("-s", 4096)?,
        offset: num("-o", 0)?,
        step: num("-S", 0)?,
        write: a.has("-w"),
        pattern: u8::try_from(num("--pattern", 0)?).map_err(|_| "--pattern must be 0..255")?,
        flush_interval: num("-i", num("--flush-interval", 0)?)?,
        direct: match a.get("-t") {
            None | Some("writeback") => false,
            Some("none") => true,
            Some(t) => {
                return Err(Failure::new(format!(
                    "cache mode must be none or writeback, not '{t}'"
                )))
            }
        },
    };
    let step = if o.step == 0 { o.bufsize } else { o.step };
    let mut started = || {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            o.count,
            if o.write { "write" } else { "read" },
            o.bufsize,
            o.depth,
            o.offset,
            step
        )
    };
    let open = OpenOptions {
        allow_backing: true,
        ..Default::default()
    };
    let r = ops::bench(Path::new(file), format, &o, &open, &mut started)?;
    println!("Run completed in {:.3} seconds.", r.elapsed.as_secs_f64());
    Ok(0)
}
