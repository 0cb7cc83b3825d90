//! The one configuration schema: the target of the CLI's options, the config file and the API body.
//!
//! Field names follow Cloud Hypervisor's `VmConfig` where it has the field; the short names used
//! on the command line (`--cpus boot=2`, `--memory size=128M`) are serde aliases of the same
//! fields, and numbers may be given as strings so that `key=value` options deserialize directly.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unable to read the config file.
    #[error("unable to read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid JSON or TOML for the schema.
    #[error("invalid config file {path}: {reason}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An option's value does not fit the schema.
    #[error("invalid value for --{option}: {reason}")]
    Option {
        /// The option, without dashes.
        option: String,
        /// What was wrong.
        reason: String,
    },
    /// A command-line option that does not exist.
    #[error("unknown option --{0} (see strata run --help)")]
    UnknownOption(String),
    /// A value is outside what the machine supports.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A whole VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// What to boot.
    pub payload: PayloadConfig,
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The 16550 UART on COM1.
    #[serde(default)]
    pub serial: ConsoleConfig,
    /// The VGA text console.
    #[serde(default)]
    pub vga: VgaConfig,
    /// Stop the guest after this many seconds and print every vCPU's state.
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u64>,
    /// Emulate in userspace the instructions the host's KVM instruction emulator lacks.
    #[serde(default = "default_true", deserialize_with = "de_bool")]
    pub emulation_fallback: bool,
    /// How virtio devices that do not name a transport are attached.
    #[serde(default)]
    pub transport: Transport,
    /// A virtio-rng device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// The virtio-console device (one port): off unless asked for.
    #[serde(default)]
    pub console: VirtioConsoleConfig,
    /// Disk images, each a virtio-blk device (`--disk`, repeatable).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network interfaces, each a virtio-net device on a tap (`--net`, repeatable).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device with a Unix-socket backend (`--vsock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// ACPI tables (RSDP, XSDT, FADT, MADT, MCFG, DSDT), the ACPI power button and S5; off
    /// keeps the machine with the MP table only.
    #[serde(default = "default_true", deserialize_with = "de_bool")]
    pub acpi: bool,
}

mod net;
pub use net::{MacAddr, NetConfig, VsockConfig, MAX_QUEUE_PAIRS};

/// An image format, always stated (never probed from the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    /// A plain file or block device.
    #[serde(alias = "raw")]
    Raw,
    /// qcow2 (versions 2 and 3).
    #[serde(alias = "qcow2")]
    Qcow2,
    /// vmdk.
    #[serde(alias = "vmdk")]
    Vmdk,
}

/// A disk image the guest sees as a virtio-blk device (Cloud Hypervisor's `--disk` spelling,
/// plus `format`, which Strata requires).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Open it read-only (the guest sees VIRTIO_BLK_F_RO).
    #[serde(default, deserialize_with = "de_bool")]
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT; raw images).
    #[serde(default, deserialize_with = "de_bool")]
    pub direct: bool,
    /// Follow a qcow2 image's backing file (refused otherwise).
    #[serde(default, deserialize_with = "de_bool")]
    pub backing: bool,
    /// The device's name (`blk0`, `blk1`, ... by default); its worker thread is `virtio-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What VIRTIO_BLK_T_GET_ID answers (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// This device's transport (the machine's `transport` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Let the device's worker poll the request queue for a few microseconds after each
    /// batch (self-tuning, zero while the disk is idle; docs/decisions/0016). `off` for hosts
    /// with fewer CPUs than busy threads.
    #[serde(default = "default_true", deserialize_with = "de_bool")]
    pub poll_queue: bool,
    /// The disk firmware boots from (`--firmware`: first in fw_cfg's `bootorder`; without
    /// one marked, the firmware boots the first disk it finds).
    #[serde(default, deserialize_with = "de_bool")]
    pub boot: bool,
}

/// The virtio-console device (Cloud Hypervisor's `--console off|null|tty|file=PATH|pty`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioConsoleConfig {
    /// Where output goes and input comes from: `Off` (no device), `Null` (a device whose
    /// output is discarded), `Stdio` (`tty`: standard output and input), `File` (output to
    /// `file`, no input) or `Pty` (a new pseudo-terminal, both ways; its path is printed).
    #[serde(default = "console_off", deserialize_with = "de_console_mode")]
    pub mode: ConsoleMode,
    /// Output file, with mode `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// This device's transport (the machine's `transport` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl Default for VirtioConsoleConfig {
    fn default() -> Self {
        VirtioConsoleConfig {
            mode: ConsoleMode::Off,
            file: None,
            transport: None,
        }
    }
}

fn console_off() -> ConsoleMode {
    ConsoleMode::Off
}

/// A virtio-rng device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Where entropy comes from: `/dev/urandom` (getrandom(2)) or a file to read.
    #[serde(default = "default_rng_src")]
    pub src: PathBuf,
    /// This device's transport (the machine's `transport` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            src: default_rng_src(),
            transport: None,
        }
    }
}

fn default_rng_src() -> PathBuf {
    PathBuf::from("/dev/urandom")
}

/// How a virtio device is attached to the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// virtio-mmio version 2, announced on the kernel command line
    /// (`virtio_mmio.device=4K@0xADDR:IRQ`).
    #[default]
    #[serde(alias = "mmio")]
    Mmio,
    /// virtio-pci on PCI bus 0: modern (1.x capabilities, MSI-X) and, for device types that
    /// have a transitional ID, the legacy 0.9.5 I/O BAR as well.
    #[serde(alias = "pci")]
    Pci,
}

fn default_true() -> bool {
    true
}

/// What to boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// Kernel image: ELF vmlinux, bzImage, PVH ELF or multiboot image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, or first module for PVH and multiboot.
    #[serde(default, alias = "initrd", skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Firmware (Cloud Hypervisor's `payload.firmware`): a raw BIOS image (SeaBIOS, qboot)
    /// started at the reset vector, or a PVH-entry ELF; the kernel, if any, then goes to the
    /// firmware through fw_cfg (docs/decisions/0015).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
}

/// vCPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// Number of vCPUs at boot.
    #[serde(alias = "boot", deserialize_with = "de_u8")]
    pub boot_vcpus: u8,
    /// Most vCPUs the VM may have (Cloud Hypervisor's field, for CPU hotplug). There is no
    /// hotplug: when given it must equal `boot_vcpus`.
    #[serde(
        default,
        alias = "max",
        deserialize_with = "de_opt_u8",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_vcpus: Option<u8>,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: None,
        }
    }
}

/// Guest RAM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Size in bytes; strings take K, M, G suffixes (powers of 1024).
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    /// Ask the host for transparent huge pages (madvise MADV_HUGEPAGE) on guest RAM, as Cloud
    /// Hypervisor (`thp=on`) and QEMU do: fewer TLB misses for the guest, and O_DIRECT disk I/O
    /// into guest buffers pins 2 MiB pages instead of 4 KiB ones. When absent: on if a disk
    /// has `direct=on` (a 1 MiB direct read into 4 KiB pages has 256 segments and the host
    /// block layer splits it; docs/decisions/0010), off otherwise, as in Firecracker: the
    /// first touch of each 2 MiB then costs 2 MiB of host memory, which took a one-line
    /// microVM from ~60 KiB to 2 MiB of resident guest RAM (docs/benchmarks.md, "Density").
    /// See [`VmConfig::guest_ram_thp`].
    #[serde(
        default,
        deserialize_with = "de_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub thp: Option<bool>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: 128 << 20,
            thp: None,
        }
    }
}

/// Where a console's output goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No output. The UART stays on the bus, as on a PC, so guests that probe it do not stall.
    Off,
    /// The device exists; its output is discarded (same as `Off` for the 16550).
    Null,
    /// Standard output (Cloud Hypervisor's `Tty`, the name it is serialized with).
    #[default]
    #[serde(rename = "Tty", alias = "Stdio", alias = "stdio", alias = "tty")]
    Stdio,
    /// A file, given in `file`.
    #[serde(alias = "file")]
    File,
    /// A new pseudo-terminal (virtio-console only).
    #[serde(alias = "pty")]
    Pty,
}

/// A console (serial port).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where output goes.
    #[serde(default, deserialize_with = "de_console_mode")]
    pub mode: ConsoleMode,
    /// Output file, with mode `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// How the VGA text buffer is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VgaMode {
    /// Not shown.
    #[default]
    #[serde(alias = "off")]
    Off,
    /// The 80x25 text buffer at 0xb8000, rendered as text on exit and on SIGUSR1.
    #[serde(alias = "text")]
    Text,
}

/// The VGA text console.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgaConfig {
    /// Whether the text buffer is rendered.
    #[serde(default)]
    pub mode: VgaMode,
    /// Render into this file instead of standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn num_or_str<E: serde::de::Error>(v: NumOrStr) -> Result<u64, E> {
    match v {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| E::custom(format!("'{s}' is not a number"))),
    }
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    num_or_str(NumOrStr::deserialize(d)?)
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<NumOrStr>::deserialize(d)?
        .map(num_or_str)
        .transpose()
}

fn de_u8<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = de_u64(d)?;
    u8::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is more than 255")))
}

fn de_opt_u8<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match de_opt_u64(d)? {
        None => Ok(None),
        Some(n) => u8::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{n} is more than 255"))),
    }
}

fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    de_bool(d).map(Some)
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrStr {
        Bool(bool),
        Str(String),
    }
    match BoolOrStr::deserialize(d)? {
        BoolOrStr::Bool(b) => Ok(b),
        BoolOrStr::Str(s) => match s.as_str() {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("'{s}' is not on/off"))),
        },
    }
}

fn de_console_mode<'de, D: Deserializer<'de>>(d: D) -> Result<ConsoleMode, D::Error> {
    let s = String::deserialize(d)?;
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(ConsoleMode::Off),
        "null" => Ok(ConsoleMode::Null),
        "stdio" | "tty" => Ok(ConsoleMode::Stdio),
        "file" => Ok(ConsoleMode::File),
        "pty" => Ok(ConsoleMode::Pty),
        _ => Err(serde::de::Error::custom(format!(
            "unknown mode '{s}' (expected off, null, stdio, tty, file or pty)"
        ))),
    }
}

/// Parses a size such as `128M`, `1G`, `4096` or `64K` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

impl VmConfig {
    /// Whether guest RAM asks for transparent huge pages: `memory.thp` when given, otherwise
    /// whether any disk bypasses the page cache (`direct=on`).
    pub fn guest_ram_thp(&self) -> bool {
        self.memory
            .thp
            .unwrap_or_else(|| self.disks.iter().any(|d| d.direct))
    }

    /// Reads a config file: TOML if its name ends in `.toml`, JSON otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| e.message().to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|reason| ConfigError::ParseFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// Disk ids are unique; serial numbers fit GET_ID's 20 bytes.
    fn validate_disks(&self) -> Result<(), ConfigError> {
        let mut ids = std::collections::BTreeSet::new();
        for (i, d) in self.disks.iter().enumerate() {
            let id = d.id.clone().unwrap_or_else(|| format!("blk{i}"));
            if !ids.insert(id.clone()) {
                return Err(ConfigError::Invalid {
                    field: "disk",
                    reason: format!("id {id} is used twice"),
                });
            }
            if d.serial.as_ref().is_some_and(|s| s.len() > 20) {
                return Err(ConfigError::Invalid {
                    field: "disk",
                    reason: format!("serial of {id} is longer than 20 bytes"),
                });
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: values the machine cannot have.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.payload.kernel.is_none() && self.payload.firmware.is_none() {
            return Err(ConfigError::Invalid {
                field: "kernel",
                reason: "no kernel or firmware given (use --kernel PATH or --firmware PATH)".into(),
            });
        }
        if self.cpus.boot_vcpus == 0 {
            return Err(ConfigError::Invalid {
                field: "cpus",
                reason: "boot must be at least 1".into(),
            });
        }
        if self
            .cpus
            .max_vcpus
            .is_some_and(|m| m != self.cpus.boot_vcpus)
        {
            return Err(ConfigError::Invalid {
                field: "cpus",
                reason: "max_vcpus must equal boot_vcpus (there is no CPU hotplug)".into(),
            });
        }
        if self.memory.size < (2 << 20) {
            return Err(ConfigError::Invalid {
                field: "memory",
                reason: format!("size {} is below the minimum of 2 MiB", self.memory.size),
            });
        }
        if !self.memory.size.is_multiple_of(4096) {
            return Err(ConfigError::Invalid {
                field: "memory",
                reason: format!("size {} is not a multiple of 4 KiB", self.memory.size),
            });
        }
        if self.serial.mode == ConsoleMode::File && self.serial.file.is_none() {
            return Err(ConfigError::Invalid {
                field: "serial",
                reason: "mode file needs file=PATH".into(),
            });
        }
        if self.serial.mode == ConsoleMode::Pty {
            return Err(ConfigError::Invalid {
                field: "serial",
                reason: "mode pty is for the virtio console (--console pty)".into(),
            });
        }
        if self.console.mode == ConsoleMode::File && self.console.file.is_none() {
            return Err(ConfigError::Invalid {
                field: "console",
                reason: "mode file needs file=PATH".into(),
            });
        }
        self.validate_disks()?;
        net::validate_net(&self.net)?;
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        if self.serial.mode == ConsoleMode::Stdio && self.console.mode == ConsoleMode::Stdio {
            return Err(ConfigError::Invalid {
                field: "console",
                reason: "the serial port and the virtio console cannot both use the terminal \
                         (add --serial off, null or file=PATH)"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_units() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn test_vmconfig_json_with_aliases_and_strings() {
        let c: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"k"},"cpus":{"boot":"2"},"memory":{"size":"64M"},
                "serial":{"mode":"Tty"}}"#,
        )
        .unwrap();
        assert_eq!(c.cpus.boot_vcpus, 2);
        assert_eq!(c.memory.size, 64 << 20);
        assert_eq!(c.serial.mode, ConsoleMode::Stdio);
        assert!(c.emulation_fallback);
    }

    #[test]
    fn test_vmconfig_unknown_key_rejected() {
        let e = serde_json::from_str::<VmConfig>(r#"{"payload":{},"bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn test_vmconfig_toml() {
        let c: VmConfig = toml::from_str(
            "[payload]\nkernel = \"k\"\ncmdline = \"a b\"\n[memory]\nsize = \"1G\"\n",
        )
        .unwrap();
        assert_eq!(c.memory.size, 1 << 30);
        assert_eq!(c.payload.cmdline.as_deref(), Some("a b"));
    }

    #[test]
    fn test_vmconfig_serialize_roundtrip() {
        let mut c = VmConfig::default();
        c.payload.kernel = Some("k".into());
        let back: VmConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        c.timeout = Some(3);
        let back: VmConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    fn assert_no_null(v: &serde_json::Value, path: &str) {
        match v {
            serde_json::Value::Null => {
                panic!("{path} serializes as null (docs/openapi.yaml has no nullable field)")
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    assert_no_null(x, &format!("{path}[{i}]"));
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    assert_no_null(x, &format!("{path}.{k}"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn test_vmconfig_serializes_absent_options_as_absent() {
        // vm.info returns the config; schemathesis validates it against docs/openapi.yaml,
        // where no property is nullable.
        let c: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"k"},"disks":[{"path":"d","format":"raw"}],"rng":{},"console":{"mode":"null"}}"#,
        )
        .unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_no_null(&v, "config");
        assert_no_null(
            &serde_json::to_value(VmConfig::default()).unwrap(),
            "default",
        );
        let back: VmConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn test_vmconfig_rng_defaults_and_transport_override() {
        let c: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"k"},"transport":"pci","rng":{"transport":"mmio"}}"#,
        )
        .unwrap();

        let rng = c.rng.unwrap();

        assert_eq!(c.transport, Transport::Pci);
        assert_eq!(rng.src, PathBuf::from("/dev/urandom"));
        assert_eq!(rng.transport, Some(Transport::Mmio));
    }

    #[test]
    fn test_vmconfig_console_default_off_and_modes() {
        let default: VmConfig = serde_json::from_str(r#"{"payload":{}}"#).unwrap();
        let pty: VmConfig =
            serde_json::from_str(r#"{"payload":{},"console":{"mode":"pty"}}"#).unwrap();

        assert_eq!(default.console.mode, ConsoleMode::Off);
        assert_eq!(pty.console.mode, ConsoleMode::Pty);
    }

    #[test]
    fn test_validate_console_conflicts_rejected() {
        let mut c = VmConfig::default();
        c.payload.kernel = Some("k".into());
        c.console.mode = ConsoleMode::Stdio;

        let both_tty = c.validate().unwrap_err().to_string();
        c.serial.mode = ConsoleMode::Off;
        let ok = c.validate();
        c.console.mode = ConsoleMode::File;
        let no_file = c.validate().unwrap_err().to_string();
        c.console.mode = ConsoleMode::Off;
        c.serial.mode = ConsoleMode::Pty;
        let serial_pty = c.validate().unwrap_err().to_string();

        assert!(
            both_tty.contains("cannot both use the terminal"),
            "{both_tty}"
        );
        assert!(ok.is_ok());
        assert!(
            no_file.contains("console: mode file needs file=PATH"),
            "{no_file}"
        );
        assert!(serial_pty.contains("virtio console"), "{serial_pty}");
    }

    #[test]
    fn test_vmconfig_memory_thp_default_off_and_on() {
        let default: VmConfig = serde_json::from_str(r#"{"payload":{}}"#).unwrap();
        let on: VmConfig =
            serde_json::from_str(r#"{"payload":{},"memory":{"size":"64M","thp":"on"}}"#).unwrap();

        assert!(!default.guest_ram_thp());
        assert_eq!(default.memory.thp, None);
        assert_eq!((on.memory.size, on.memory.thp), (64 << 20, Some(true)));
        assert!(on.guest_ram_thp());
    }

    #[test]
    fn test_vmconfig_guest_ram_thp_direct_disk_on_unless_thp_off() {
        let disk = r#""disks":[{"path":"a","format":"raw","direct":"on"}]"#;
        let cached = r#""disks":[{"path":"a","format":"raw"}]"#;
        let parse = |s: String| serde_json::from_str::<VmConfig>(&s).unwrap();

        let direct = parse(format!(r#"{{"payload":{{}},{disk}}}"#));
        let page_cache = parse(format!(r#"{{"payload":{{}},{cached}}}"#));
        let off = parse(format!(
            r#"{{"payload":{{}},"memory":{{"size":"64M","thp":"off"}},{disk}}}"#
        ));

        assert!(direct.guest_ram_thp());
        assert!(!page_cache.guest_ram_thp());
        assert!(!off.guest_ram_thp());
    }

    #[test]
    fn test_vmconfig_disks_need_format_and_unique_ids() {
        let missing = serde_json::from_str::<VmConfig>(r#"{"payload":{},"disks":[{"path":"a"}]}"#);
        let mut c: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"k"},"disks":[{"path":"a","format":"qcow2","readonly":"on"},
                {"path":"b","format":"raw","id":"blk0"}]}"#,
        )
        .unwrap();

        let dup = c.validate().unwrap_err().to_string();
        c.disks[1].id = Some("data".into());
        c.disks[1].serial = Some("x".repeat(21));
        let long = c.validate().unwrap_err().to_string();

        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("missing field `format`"));
        assert!(c.disks[0].readonly);
        assert_eq!(c.disks[0].format, DiskFormat::Qcow2);
        assert!(dup.contains("id blk0 is used twice"), "{dup}");
        assert!(long.contains("longer than 20 bytes"), "{long}");
    }

    #[test]
    fn test_validate_max_vcpus_must_equal_boot() {
        let mut c: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"k"},"cpus":{"boot_vcpus":2,"max_vcpus":2}}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());

        c.cpus.max_vcpus = Some(4);

        assert!(c.validate().unwrap_err().to_string().contains("max_vcpus"));
    }

    #[test]
    fn test_validate_zero_cpus_rejected() {
        let mut c = VmConfig::default();
        c.payload.kernel = Some("k".into());
        c.cpus.boot_vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("cpus"));
    }
}
