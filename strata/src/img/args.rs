//! Argument parsing for `strata img` verbs: qemu-img's short and long options, sizes and
//! `-o key=value,...` lists.

use disk::Format;

/// An argv error: the message printed after "strata img VERB: ".
pub type ArgError = String;

/// Parsed options and positional arguments of one verb.
#[derive(Debug, Default)]
pub struct Args {
    opts: Vec<(String, Option<String>)>,
    /// Positional arguments in order.
    pub positional: Vec<String>,
}

/// The options a verb accepts: those taking a value, and plain flags.
pub struct Spec<'a> {
    /// Options followed by a value (`-f qcow2`, `--output=json`).
    pub valued: &'a [&'a str],
    /// Options without a value.
    pub flags: &'a [&'a str],
}

impl Args {
    /// Parses `argv` (after the verb) against `spec`.
    pub fn parse(argv: &[String], spec: &Spec) -> Result<Args, ArgError> {
        let mut out = Args::default();
        let mut i = 0;
        while i < argv.len() {
            let a = &argv[i];
            i += 1;
            if a == "--" {
                out.positional.extend(argv[i..].iter().cloned());
                break;
            }
            if !a.starts_with('-') || a == "-" || is_negative_size(a) {
                out.positional.push(a.clone());
                continue;
            }
            if let Some((k, v)) = a.split_once('=').filter(|_| a.starts_with("--")) {
                if !spec.valued.contains(&k) {
                    return Err(format!("unknown option '{k}'"));
                }
                out.opts.push((k.to_string(), Some(v.to_string())));
            } else if spec.valued.contains(&a.as_str()) {
                let v = argv
                    .get(i)
                    .ok_or_else(|| format!("option '{a}' needs a value"))?;
                i += 1;
                out.opts.push((a.clone(), Some(v.clone())));
            } else if spec.flags.contains(&a.as_str()) {
                out.opts.push((a.clone(), None));
            } else {
                return Err(format!("unknown option '{a}'"));
            }
        }
        Ok(out)
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every value given for `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.opts
            .iter()
            .filter(|(k, _)| k == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    /// Whether the flag `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == name)
    }

    /// The format given with `name` (`-f`, `-F`, `-O`); formats are never guessed.
    pub fn format(&self, name: &str) -> Result<Format, ArgError> {
        let Some(f) = self.get(name) else {
            return Err(format!(
                "give the image format with {name} raw|qcow2|vmdk; Strata never guesses it"
            ));
        };
        f.parse::<Format>().map_err(|e| e.to_string())
    }

    /// An optional format given with `name`.
    pub fn format_opt(&self, name: &str) -> Result<Option<Format>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.format(name).map(Some),
        }
    }

    /// The output mode of `--output` (human or json).
    pub fn json(&self) -> Result<bool, ArgError> {
        match self.get("--output") {
            None | Some("human") => Ok(false),
            Some("json") => Ok(true),
            Some(o) => Err(format!("--output must be human or json, not '{o}'")),
        }
    }

    /// Exactly `n` positional arguments, or an error naming what they are.
    pub fn expect(&self, n: usize, what: &str) -> Result<&[String], ArgError> {
        if self.positional.len() != n {
            return Err(format!("expected {what}"));
        }
        Ok(&self.positional)
    }
}

fn is_negative_size(a: &str) -> bool {
    a.len() > 1 && a[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// Parses a size the way qemu-img does: a number with an optional suffix b, k/K, M, G, T,
/// P or E (powers of 1024); decimals allowed with a suffix ("1.5G").
pub fn parse_size(s: &str) -> Result<u64, ArgError> {
    let bad = || format!("invalid size '{s}' (use a number with an optional k, M, G or T suffix)");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * (1u64 << shift) as f64;
    if shift == 0 || !v.is_finite() || v >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Splits `-o` option lists ("a=1,b=2", repeated `-o` accumulate) into key/value pairs.
pub fn split_options(lists: &[&str]) -> Result<Vec<(String, String)>, ArgError> {
    let mut out = Vec::new();
    for list in lists {
        for item in list.split(',').filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, "on"));
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

/// qemu's on/off booleans.
pub fn parse_bool(key: &str, v: &str) -> Result<bool, ArgError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("option {key} must be on or off, not '{v}'")),
    }
}

/// Formats a byte count as qemu's `size_to_str` does ("388 KiB", "1 GiB", "4.2 MiB").
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // Switch to the next unit once the number would reach 1000.
    let scaled = val as f64 / (1000.0 / 1024.0);
    let mut i = 0usize;
    while i + 1 < SUFFIXES.len() && scaled >= (1u64 << ((i + 1) * 10)) as f64 {
        i += 1;
    }
    let v = val as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", g3(v), SUFFIXES[i])
}

/// `printf("%0.3g")` for values below 1000.
fn g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.log10().floor() as i64).max(0) as usize;
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_suffixes_match_qemu_img() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999999E").is_err());
    }

    #[test]
    fn test_size_to_str_values_match_qemu_img() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(397312), "388 KiB");
        assert_eq!(size_to_str(1 << 30), "1 GiB");
        assert_eq!(size_to_str(4407296), "4.2 MiB");
        assert_eq!(size_to_str(200704), "196 KiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
    }

    #[test]
    fn test_args_parse_unknown_option_is_error() {
        let spec = Spec {
            valued: &["-f"],
            flags: &["-p"],
        };
        let argv: Vec<String> = ["-x", "a"].iter().map(|s| s.to_string()).collect();
        assert!(Args::parse(&argv, &spec).is_err());
        let argv: Vec<String> = ["-f", "raw", "-p", "a", "-1G"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&argv, &spec).expect("parse");
        assert_eq!(a.get("-f"), Some("raw"));
        assert!(a.has("-p"));
        assert_eq!(a.positional, vec!["a".to_string(), "-1G".to_string()]);
    }
}
