//! `strata img info`: qemu-img's human and JSON image descriptions.

use std::path::{Path, PathBuf};

use disk::{Format, ImageInfo, OpenOptions, SnapshotInfo};
use serde_json::{json, Map, Value};

use super::args::{size_to_str, Args, Spec};
use super::{Failure, VerbResult};

/// Longest backing chain printed.
const MAX_CHAIN: usize = 256;

/// One image's description plus what the generic `ImageInfo` lacks.
struct Described {
    path: PathBuf,
    info: ImageInfo,
    vmdk_create_type: Option<String>,
    full_backing: Option<PathBuf>,
}

pub fn info(argv: &[String]) -> VerbResult {
    let spec = Spec {
        valued: &["-f", "--output", "-U"],
        flags: &["--backing-chain", "--force-share", "-U"],
    };
    let a = Args::parse(argv, &spec)?;
    let format = a.format("-f")?;
    let json = a.json()?;
    let file = &a.expect(1, "one image file")?[0];
    let mut chain = vec![describe(Path::new(file), format)?];
    if a.has("--backing-chain") {
        while let Some(last) = chain.last() {
            let (Some(next), Some(fmt)) = (&last.full_backing, &last.info.backing_format) else {
                if let (Some(b), None) = (&last.info.backing_file, &last.info.backing_format) {
                    print_all(&chain, json);
                    return Err(Failure::new(format!(
                        "backing file '{b}' has no recorded format; Strata never guesses it"
                    )));
                }
                break;
            };
            if chain.len() >= MAX_CHAIN {
                return Err(Failure::new("backing chain too long (a loop?)"));
            }
            let fmt: Format = fmt.parse()?;
            let next = next.clone();
            chain.push(describe(&next, fmt)?);
        }
    }
    print_all(&chain, json);
    Ok(0)
}

fn print_all(chain: &[Described], json: bool) {
    if json {
        let v: Vec<Value> = chain.iter().map(to_json).collect();
        let out = if chain.len() == 1 && v.len() == 1 {
            v[0].clone()
        } else {
            Value::Array(v)
        };
        println!("{}", pretty(&out));
    } else {
        let texts: Vec<String> = chain.iter().map(to_human).collect();
        print!("{}", texts.join("\n"));
    }
}

fn describe(path: &Path, format: Format) -> Result<Described, Failure> {
    let info = disk::info(path, format)?;
    let vmdk_create_type = match format {
        Format::Vmdk => {
            let o = OpenOptions {
                read_only: true,
                ..Default::default()
            };
            Some(disk::vmdk::open(path, &o)?.create_type().to_string())
        }
        _ => None,
    };
    let full_backing = info.backing_file.as_ref().map(|b| match Path::new(b) {
        p if p.is_absolute() => p.to_path_buf(),
        p => path.parent().unwrap_or(Path::new("")).join(p),
    });
    Ok(Described {
        path: path.to_path_buf(),
        info,
        vmdk_create_type,
        full_backing,
    })
}

/// JSON with qemu-img's four-space indentation (string values never contain raw newlines,
/// so doubling each line's leading spaces is exact).
pub fn pretty(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let body = l.trim_start_matches(' ');
            let indent = l.len() - body.len();
            format!("{}{body}", " ".repeat(indent * 2))
        })
        .collect();
    lines.join("\n")
}

fn cluster_size(d: &Described) -> Option<u64> {
    match &d.vmdk_create_type {
        Some(t) if t.contains("Sparse") || t == "streamOptimized" => Some(65536),
        Some(_) => None,
        None => d.info.cluster_size,
    }
}

fn to_json(d: &Described) -> Value {
    let i = &d.info;
    let mut m = Map::new();
    m.insert("virtual-size".into(), json!(i.virtual_size));
    m.insert("filename".into(), json!(d.path.display().to_string()));
    if let Some(cs) = cluster_size(d) {
        m.insert("cluster-size".into(), json!(cs));
    }
    m.insert("format".into(), json!(i.format.name()));
    m.insert("actual-size".into(), json!(i.actual_size));
    let dirty = i.qcow2.as_ref().is_some_and(|q| q.dirty);
    m.insert("dirty-flag".into(), json!(dirty));
    if let Some(q) = &i.qcow2 {
        let mut data = Map::new();
        data.insert("compat".into(), json!(q.compat));
        data.insert("compression-type".into(), json!(compression(q)));
        data.insert("refcount-bits".into(), json!(q.refcount_bits));
        if q.compat != "0.10" {
            data.insert("lazy-refcounts".into(), json!(q.lazy_refcounts));
            data.insert("corrupt".into(), json!(q.corrupt));
            data.insert("extended-l2".into(), json!(q.extended_l2));
        }
        m.insert(
            "format-specific".into(),
            json!({"type": "qcow2", "data": data}),
        );
        if !q.snapshots.is_empty() {
            let snaps: Vec<Value> = q.snapshots.iter().map(snapshot_json).collect();
            m.insert("snapshots".into(), Value::Array(snaps));
        }
    }
    if let Some(t) = &d.vmdk_create_type {
        m.insert(
            "format-specific".into(),
            json!({"type": "vmdk", "data": {"create-type": t}}),
        );
    }
    if let Some(b) = &i.backing_file {
        m.insert("backing-filename".into(), json!(b));
    }
    if let Some(f) = &d.full_backing {
        m.insert(
            "full-backing-filename".into(),
            json!(f.display().to_string()),
        );
    }
    if let Some(f) = &i.backing_format {
        m.insert("backing-filename-format".into(), json!(f));
    }
    Value::Object(m)
}

fn compression(q: &disk::Qcow2Info) -> &'static str {
    match q.compression_type {
        disk::CompressionType::Zlib => "zlib",
        disk::CompressionType::Zstd => "zstd",
    }
}

fn snapshot_json(s: &SnapshotInfo) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(s.id));
    m.insert("name".into(), json!(s.name));
    m.insert("vm-state-size".into(), json!(s.vm_state_size));
    m.insert("date-sec".into(), json!(s.date_sec));
    m.insert("date-nsec".into(), json!(s.date_nsec));
    m.insert(
        "vm-clock-sec".into(),
        json!(s.vm_clock_nsec / 1_000_000_000),
    );
    m.insert(
        "vm-clock-nsec".into(),
        json!(s.vm_clock_nsec % 1_000_000_000),
    );
    if let Some(ic) = s.icount.filter(|&c| c != u64::MAX) {
        m.insert("icount".into(), json!(ic));
    }
    Value::Object(m)
}

fn to_human(d: &Described) -> String {
    let i = &d.info;
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        d.path.display(),
        i.format.name(),
        size_to_str(i.virtual_size),
        i.virtual_size,
        size_to_str(i.actual_size)
    );
    if let Some(cs) = cluster_size(d) {
        s += &format!("cluster_size: {cs}\n");
    }
    if let Some(b) = &i.backing_file {
        s += &format!("backing file: {b}");
        match &d.full_backing {
            Some(f) if f.as_os_str() != b.as_str() => {
                s += &format!(" (actual path: {})\n", f.display())
            }
            _ => s += "\n",
        }
    }
    if let Some(f) = &i.backing_format {
        s += &format!("backing file format: {f}\n");
    }
    if let Some(q) = &i.qcow2 {
        if !q.snapshots.is_empty() {
            s += "Snapshot list:\n";
            s += &snapshot_table(&q.snapshots);
        }
        s += "Format specific information:\n";
        s += &format!("    compat: {}\n", q.compat);
        s += &format!("    compression type: {}\n", compression(q));
        if q.compat != "0.10" {
            s += &format!("    lazy refcounts: {}\n", q.lazy_refcounts);
        }
        s += &format!("    refcount bits: {}\n", q.refcount_bits);
        if q.compat != "0.10" {
            s += &format!("    corrupt: {}\n", q.corrupt);
            s += &format!("    extended l2: {}\n", q.extended_l2);
        }
    }
    if let Some(t) = &d.vmdk_create_type {
        s += &format!("Format specific information:\n    create type: {t}\n");
    }
    s
}

/// The snapshot table as qemu-img prints it (`snapshot -l` and `info`).
pub fn snapshot_table(snaps: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    );
    for sn in snaps {
        let ns = sn.vm_clock_nsec;
        let secs = ns / 1_000_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (ns / 1_000_000) % 1000
        );
        let icount = match sn.icount {
            Some(c) if c != u64::MAX => c.to_string(),
            _ => String::new(),
        };
        s += &format!(
            "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
            sn.id,
            sn.name,
            size_to_str(sn.vm_state_size),
            utc_date(sn.date_sec as i64),
            clock,
            icount
        );
    }
    s
}

/// "YYYY-MM-DD HH:MM:SS" in UTC (civil-from-days, no time-zone database).
fn utc_date(t: i64) -> String {
    let days = t.div_euclid(86400);
    let rem = t.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_utc_date_known_timestamp_formats() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(1795232851), "2026-11-21 03:47:31");
    }
}
