//! `strata run` options turned into the one config schema.
//!
//! Each option's `key=value[,key=value]` list becomes a JSON object under the schema's field
//! for that option (a bare word is the option's primary key: `--cpus 2` is `--cpus boot=2`),
//! merged over the config file if one is given, then deserialized once into `VmConfig`.
//! There is no second parser: the schema's serde rules (names, aliases, `deny_unknown_fields`)
//! decide what is valid.

use std::path::PathBuf;

use serde_json::{Map, Value};
use vmm::config::{ConfigError, VmConfig};

/// An option of `strata run` and where it goes in the schema.
struct OptionSpec {
    /// The option's name without dashes.
    name: &'static str,
    /// The schema path it fills.
    path: &'static [&'static str],
    /// For `key=value` options: the key a bare word stands for. None: the value is a scalar.
    primary: Option<&'static str>,
    /// Repeatable: each occurrence appends one element to the array at `path` (devices of
    /// which a VM can have several); otherwise a later occurrence overrides an earlier one.
    repeat: bool,
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "kernel",
        path: &["payload", "kernel"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "initrd",
        path: &["payload", "initramfs"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "cmdline",
        path: &["payload", "cmdline"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "cpus",
        path: &["cpus"],
        primary: Some("boot"),
        repeat: false,
    },
    OptionSpec {
        name: "memory",
        path: &["memory"],
        primary: Some("size"),
        repeat: false,
    },
    OptionSpec {
        name: "serial",
        path: &["serial"],
        primary: Some("mode"),
        repeat: false,
    },
    OptionSpec {
        name: "vga",
        path: &["vga"],
        primary: Some("mode"),
        repeat: false,
    },
    OptionSpec {
        name: "timeout",
        path: &["timeout"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "emulation-fallback",
        path: &["emulation_fallback"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "transport",
        path: &["transport"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "console",
        path: &["console"],
        primary: Some("mode"),
        repeat: false,
    },
    OptionSpec {
        name: "disk",
        path: &["disks"],
        primary: Some("path"),
        repeat: true,
    },
    OptionSpec {
        name: "rng",
        path: &["rng"],
        primary: Some("src"),
        repeat: false,
    },
    OptionSpec {
        name: "net",
        path: &["net"],
        primary: Some("tap"),
        repeat: true,
    },
    OptionSpec {
        name: "vsock",
        path: &["vsock"],
        primary: Some("socket"),
        repeat: false,
    },
    OptionSpec {
        name: "acpi",
        path: &["acpi"],
        primary: None,
        repeat: false,
    },
    OptionSpec {
        name: "firmware",
        path: &["payload", "firmware"],
        primary: None,
        repeat: false,
    },
];

/// The usage text of `strata run`.
pub const RUN_USAGE: &str =
    "usage: strata run [--api-socket PATH] [--config FILE] [--kernel PATH] [--initrd PATH]
                  [--cmdline STR] [--cpus boot=N] [--memory size=SIZE[,thp=on|off]]
                  [--serial stdio|null|off|file=PATH] [--vga off|text[,file=PATH]]
                  [--timeout SECS] [--emulation-fallback on|off]
                  [--transport mmio|pci] [--rng src=PATH[,transport=mmio|pci]]
                  [--console off|null|tty|file=PATH|pty[,transport=mmio|pci]]
                  [--disk path=PATH,format=raw|qcow2|vmdk[,readonly=on][,direct=on][,backing=on]
                          [,id=ID][,serial=SERIAL][,transport=mmio|pci][,boot=on][,poll_queue=on|off]]...
                  [--net [tap=NAME][,mac=MAC][,ip=ADDR,mask=MASK][,mtu=N][,num_queues=2N]
                         [,queue_size=N][,offload_csum=on|off][,offload_tso=on|off][,id=ID][,transport=..]]...
                  [--vsock cid=N,socket=PATH[,id=ID][,transport=mmio|pci]]
                  [--acpi on|off] [--firmware PATH]
       strata run [--api-socket PATH] --restore source_url=file:///DIR[,resume=on]
                  [,memory=mmap|uffd][,overlay_dir=DIR][,net_mac=MAC][,net_tap=NAME]
                  [,vsock_cid=N][,vsock_socket=PATH]
With --api-socket, serves Cloud Hypervisor's REST API on that Unix socket until vmm.shutdown;
VM options then create and boot that VM at once, otherwise the VMM waits for vm.create.";

/// `--restore`'s (and `strata remote restore`'s) `key=value` list as `vm.restore`'s body: a
/// bare word is `source_url`; `on`/`off` are booleans; the schema (`RestoreConfig`) decides
/// what is valid.
pub fn parse_restore(value: &str) -> Result<vmm::snapshot::RestoreConfig, ConfigError> {
    let mut object = Map::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (key, v) = part.split_once('=').unwrap_or(("source_url", part));
        let v = match v {
            "on" | "true" => Value::Bool(true),
            "off" | "false" => Value::Bool(false),
            other => Value::String(other.to_string()),
        };
        object.insert(key.to_string(), v);
    }
    serde_json::from_value(Value::Object(object))
        .map_err(|e| option_error("restore", e.to_string()))
}

/// Takes `--restore SPEC` out of the arguments of `strata run`.
pub fn take_restore(
    args: &[String],
) -> Result<(Option<vmm::snapshot::RestoreConfig>, Vec<String>), ConfigError> {
    let mut spec = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--restore" {
            Some(
                it.next()
                    .cloned()
                    .ok_or_else(|| option_error("restore", "missing value"))?,
            )
        } else {
            arg.strip_prefix("--restore=").map(str::to_string)
        };
        match value {
            Some(_) if spec.is_some() => return Err(option_error("restore", "given twice")),
            Some(v) => spec = Some(parse_restore(&v)?),
            None => rest.push(arg.clone()),
        }
    }
    if spec.is_some() && !rest.is_empty() {
        return Err(option_error(
            "restore",
            "the snapshot holds the VM's configuration: no other VM option may be given",
        ));
    }
    Ok((spec, rest))
}

/// Takes `--api-socket PATH` (a VMM option, not part of the VM's configuration) out of the
/// arguments of `strata run`.
pub fn take_api_socket(args: &[String]) -> Result<(Option<PathBuf>, Vec<String>), ConfigError> {
    let mut socket = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--api-socket" {
            Some(
                it.next()
                    .cloned()
                    .ok_or_else(|| option_error("api-socket", "missing value"))?,
            )
        } else {
            arg.strip_prefix("--api-socket=").map(str::to_string)
        };
        match value {
            Some(_) if socket.is_some() => return Err(option_error("api-socket", "given twice")),
            Some(v) => socket = Some(PathBuf::from(v)),
            None => rest.push(arg.clone()),
        }
    }
    Ok((socket, rest))
}

fn option_error(option: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Option {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// Turns `key=value,key=value` (or a bare primary value) into a JSON object.
fn key_values(spec: &OptionSpec, primary: &str, value: &str) -> Result<Value, ConfigError> {
    let mut map = Map::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None => (primary, item),
        };
        if map
            .insert(k.to_string(), Value::String(v.to_string()))
            .is_some()
        {
            return Err(option_error(spec.name, format!("'{k}' given twice")));
        }
    }
    // `file=PATH` alone means mode file.
    if primary == "mode" && map.contains_key("file") && !map.contains_key("mode") {
        map.insert("mode".into(), Value::String("file".into()));
    }
    Ok(Value::Object(map))
}

/// Sets `path` in `root` to `value`, merging objects; with `append`, pushes `value` onto the
/// array at `path` instead (an array from the config file keeps its elements).
fn merge_at(root: &mut Value, path: &[&str], value: Value, append: bool) {
    let mut node = root;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .map(|m| m.entry(key.to_string()).or_insert(Value::Null))
            .unwrap_or_else(|| unreachable!("node was made an object above"));
    }
    if append {
        match node {
            Value::Array(items) => items.push(value),
            node => *node = Value::Array(vec![value]),
        }
        return;
    }
    match (node, value) {
        (Value::Object(dst), Value::Object(src)) => dst.extend(src),
        (node, value) => *node = value,
    }
}

/// Parses the arguments of `strata run` into a validated-by-serde `VmConfig`.
pub fn parse_run_args(args: &[String]) -> Result<VmConfig, ConfigError> {
    let mut root = Value::Object(Map::new());
    let mut overrides: Vec<(&OptionSpec, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.strip_prefix("--") {
            Some(rest) => match rest.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (rest.to_string(), None),
            },
            None => return Err(option_error("", format!("unexpected argument '{arg}'"))),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| option_error(&name, "missing value"))?,
        };
        if name == "config" {
            let path = PathBuf::from(&value);
            root = serde_json::to_value(VmConfig::from_file(&path)?)
                .map_err(|e| option_error("config", e.to_string()))?;
            continue;
        }
        let spec = OPTIONS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ConfigError::UnknownOption(name.clone()))?;
        overrides.push((spec, value));
    }
    for (spec, value) in overrides {
        let v = match spec.primary {
            Some(primary) => key_values(spec, primary, &value)?,
            None => Value::String(value),
        };
        // Check the option on its own first, so an error names the option.
        let mut probe = Value::Object(Map::new());
        merge_at(&mut probe, spec.path, v.clone(), spec.repeat);
        if let Some(Value::Object(m)) = probe.get_mut("payload") {
            m.entry("kernel").or_insert(Value::String(String::new()));
        }
        serde_json::from_value::<VmConfig>(with_payload(probe))
            .map_err(|e| option_error(spec.name, e.to_string()))?;
        merge_at(&mut root, spec.path, v, spec.repeat);
    }
    serde_json::from_value(with_payload(root)).map_err(|e| option_error("config", e.to_string()))
}

/// The schema requires a payload object; an absent kernel is reported by validation.
fn with_payload(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.entry("payload").or_insert(Value::Object(Map::new()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::config::ConsoleMode;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_parse_run_args_defaults() {
        let c = parse_run_args(&args(&["--kernel", "k"])).unwrap();
        assert_eq!(c.cpus.boot_vcpus, 1);
        assert_eq!(c.memory.size, 128 << 20);
        assert_eq!(c.serial.mode, ConsoleMode::Stdio);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn test_parse_run_args_key_values() {
        let c = parse_run_args(&args(&[
            "--kernel=k",
            "--cpus",
            "boot=2",
            "--memory",
            "size=64M",
            "--serial",
            "file=/tmp/x",
            "--cmdline",
            "a=b c",
            "--timeout",
            "5",
            "--emulation-fallback",
            "off",
        ]))
        .unwrap();
        assert_eq!(c.cpus.boot_vcpus, 2);
        assert_eq!(c.memory.size, 64 << 20);
        assert_eq!(c.serial.mode, ConsoleMode::File);
        assert_eq!(c.serial.file, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.payload.cmdline.as_deref(), Some("a=b c"));
        assert_eq!(c.timeout, Some(5));
        assert!(!c.emulation_fallback);
    }

    #[test]
    fn test_parse_run_args_rng_and_transport() {
        let c = parse_run_args(&args(&[
            "--kernel",
            "k",
            "--transport",
            "pci",
            "--rng",
            "src=/dev/random,transport=mmio",
        ]))
        .unwrap();

        let rng = c.rng.unwrap();

        assert_eq!(c.transport, vmm::config::Transport::Pci);
        assert_eq!(rng.src, PathBuf::from("/dev/random"));
        assert_eq!(rng.transport, Some(vmm::config::Transport::Mmio));
    }

    #[test]
    fn test_parse_run_args_rng_bare_path_is_src() {
        let c = parse_run_args(&args(&["--kernel", "k", "--rng", "/dev/urandom"])).unwrap();

        assert_eq!(c.rng.unwrap().src, PathBuf::from("/dev/urandom"));
    }

    #[test]
    fn test_parse_run_args_console_modes() {
        let file = parse_run_args(&args(&["--kernel", "k", "--console", "file=/tmp/c"])).unwrap();
        let pty =
            parse_run_args(&args(&["--kernel", "k", "--console", "pty,transport=pci"])).unwrap();

        assert_eq!(file.console.mode, ConsoleMode::File);
        assert_eq!(file.console.file, Some(PathBuf::from("/tmp/c")));
        assert_eq!(pty.console.mode, ConsoleMode::Pty);
        assert_eq!(pty.console.transport, Some(vmm::config::Transport::Pci));
    }

    #[test]
    fn test_parse_run_args_bad_transport_names_option() {
        let e = parse_run_args(&args(&["--kernel", "k", "--transport", "usb"])).unwrap_err();

        assert!(
            e.to_string().starts_with("invalid value for --transport"),
            "{e}"
        );
    }

    #[test]
    fn test_parse_run_args_disks_append_in_order() {
        let c = parse_run_args(&args(&[
            "--kernel",
            "k",
            "--disk",
            "path=a.qcow2,format=qcow2",
            "--disk",
            "b.raw,format=raw,readonly=on,serial=S1",
        ]))
        .unwrap();

        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.disks[0].path, PathBuf::from("a.qcow2"));
        assert_eq!(c.disks[1].format, vmm::config::DiskFormat::Raw);
        assert!(c.disks[1].readonly);
        assert_eq!(c.disks[1].serial.as_deref(), Some("S1"));
    }

    #[test]
    fn test_parse_run_args_disk_without_format_names_option() {
        let e = parse_run_args(&args(&["--kernel", "k", "--disk", "a.img"])).unwrap_err();

        assert!(
            e.to_string()
                .starts_with("invalid value for --disk: missing field `format`"),
            "{e}"
        );
    }

    #[test]
    fn test_merge_at_repeatable_appends_to_array_from_file() {
        let mut root = serde_json::json!({"disks": [{"path": "a"}]});

        merge_at(
            &mut root,
            &["disks"],
            serde_json::json!({"path": "b"}),
            true,
        );
        merge_at(
            &mut root,
            &["disks"],
            serde_json::json!({"path": "c"}),
            true,
        );
        merge_at(&mut root, &["fresh"], serde_json::json!(1), true);

        assert_eq!(
            root,
            serde_json::json!({"disks": [{"path": "a"}, {"path": "b"}, {"path": "c"}], "fresh": [1]})
        );
    }

    #[test]
    fn test_parse_run_args_unknown_key_names_option() {
        let e = parse_run_args(&args(&["--kernel", "k", "--cpus", "bogus=1"])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid value for --cpus: unknown field `bogus`"),
            "{msg}"
        );
    }

    #[test]
    fn test_parse_run_args_unknown_option() {
        let e = parse_run_args(&args(&["--kernal", "k"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option --kernal (see strata run --help)"
        );
    }

    #[test]
    fn test_take_api_socket_splits_it_out() {
        let (socket, rest) = take_api_socket(&args(&[
            "--kernel",
            "k",
            "--api-socket",
            "/tmp/s",
            "--cpus",
            "2",
        ]))
        .unwrap();

        assert_eq!(socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(rest, args(&["--kernel", "k", "--cpus", "2"]));
        assert!(take_api_socket(&args(&["--api-socket=/a", "--api-socket=/b"])).is_err());
        assert_eq!(take_api_socket(&args(&[])).unwrap(), (None, vec![]));
    }

    #[test]
    fn test_parse_run_args_bad_number() {
        let e = parse_run_args(&args(&["--kernel", "k", "--cpus", "boot=x"])).unwrap_err();
        assert!(e.to_string().contains("--cpus"), "{e}");
    }

    #[test]
    fn test_parse_run_args_net_repeats_and_vsock() {
        let c = parse_run_args(&args(&[
            "--kernel",
            "k",
            "--net",
            "tap=t0,mac=52:54:00:00:00:01,ip=10.0.0.1,mask=255.255.255.0",
            "--net",
            "mtu=9000,transport=pci",
            "--vsock",
            "cid=3,socket=/tmp/v.sock",
        ]))
        .unwrap();

        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].tap.as_deref(), Some("t0"));
        assert_eq!(
            c.net[0].mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(c.net[1].mtu, Some(9000));
        assert_eq!(c.vsock.as_ref().map(|v| v.cid), Some(3));
    }

    #[test]
    fn test_parse_run_args_bad_mac_names_option() {
        let e = parse_run_args(&args(&["--kernel", "k", "--net", "mac=52:54:00"])).unwrap_err();

        assert!(
            e.to_string()
                .starts_with("invalid value for --net: '52:54:00' is not a MAC"),
            "{e}"
        );
    }
}
