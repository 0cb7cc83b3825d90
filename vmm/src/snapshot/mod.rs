//! Snapshots of a paused VM and restores from them (issue 12, docs/decisions/0013).
//!
//! A snapshot is a directory: `state.json` (`format.rs`: a checksummed, versioned header and a
//! JSON body with the configuration, every vCPU's and the irqchip's KVM state, every device's
//! state through the [`persist::Persist`] interface, the disks) and `memory` (`memory.rs`:
//! guest RAM, sparse). `save.rs` writes one from a paused VM; `restore.rs` builds a VM from
//! one, its memory mapped MAP_PRIVATE from the file or filled lazily through userfaultfd
//! (`uffd.rs`).

pub mod format;
pub mod memory;
pub mod persist;
pub mod restore;
pub mod save;
pub mod uffd;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use format::{FormatError, StateFile};
pub use persist::{DeviceState, Persist, PersistError};

/// Errors taking or restoring a snapshot. Each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The URL is not `file:///absolute/dir`.
    #[error("invalid snapshot URL {0:?}: only file:///absolute/path is supported")]
    Url(String),
    /// The VM is not paused.
    #[error("the VM must be paused to be snapshotted")]
    NotPaused,
    /// A file could not be read or written.
    #[error("unable to {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file is malformed.
    #[error("{path}: {source}")]
    Format {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// The memory file does not have the snapshot's size.
    #[error("memory file {path} is {found} bytes; the snapshot's memory is {want} bytes")]
    MemorySize {
        /// The memory file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The state's.
        want: u64,
    },
    /// Guest memory could not be mapped.
    #[error("unable to map guest memory from the snapshot: {0}")]
    MapMemory(std::io::Error),
    /// userfaultfd could not be set up.
    #[error("unable to set up userfaultfd: {0}")]
    Userfaultfd(std::io::Error),
    /// The configuration given at restore disagrees with the snapshot's.
    #[error("the configuration does not match the snapshot: {0}")]
    ConfigMismatch(String),
    /// A vCPU's state could not be read.
    #[error("unable to save the vCPUs: {0}")]
    SaveVcpus(String),
    /// KVM refused to give or take state.
    #[error("{0}")]
    Kvm(#[from] crate::kvm::persist::KvmStateError),
    /// A device's state could not be saved or restored.
    #[error("{0}")]
    Device(#[from] PersistError),
    /// A disk could not be flushed, sized or given its overlay.
    #[error("disk {path}: {reason}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// How guest memory comes back at restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryRestore {
    /// Mapped MAP_PRIVATE from the memory file (the default).
    #[default]
    Mmap,
    /// Anonymous memory the VMM fills from the file through userfaultfd, page by page.
    Uffd,
}

/// `vm.snapshot`'s body (Cloud Hypervisor's `VmSnapshotConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where to write: `file:///dir` (created if missing).
    pub destination_url: String,
}

/// `vm.restore`'s body (Cloud Hypervisor's `RestoreConfig`) and `strata run --restore`'s
/// options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Where the snapshot is: `file:///dir`.
    pub source_url: String,
    /// Run the VM at once instead of leaving it paused.
    #[serde(default)]
    pub resume: bool,
    /// How guest memory comes back.
    #[serde(default)]
    pub memory: MemoryRestore,
    /// Give each disk a new qcow2 overlay whose backing file is the snapshot's disk, created
    /// in this directory (clones: each restored VM writes to its own overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_dir: Option<PathBuf>,
    /// A new MAC for the VM's virtio-net device (a clone's own; the VM must have exactly one
    /// `--net` device). The guest reads it from the configuration space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_mac: Option<crate::config::MacAddr>,
    /// Another tap for the VM's virtio-net device (attached if it exists, else created): two
    /// clones in one network namespace cannot share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tap: Option<String>,
    /// A new guest CID for the VM's virtio-vsock device (a clone's own). The guest reads it
    /// again on the transport reset event every restore sends.
    #[serde(
        default,
        deserialize_with = "de_opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub vsock_cid: Option<u32>,
    /// Another Unix socket for the vsock device (two VMs cannot listen on one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_socket: Option<PathBuf>,
}

/// A `u32` given as a JSON number or, from the command line's `key=value`, as a string.
fn de_opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let n = match &v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{v} is not a number below 2^32")))
}

/// The directory a `file://` URL names.
pub fn url_path(url: &str) -> Result<PathBuf, SnapshotError> {
    match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') && !p.contains('\0') => Ok(PathBuf::from(p)),
        _ => Err(SnapshotError::Url(url.to_string())),
    }
}

/// Reads and parses `dir/state.json`.
pub fn read_state(dir: &Path) -> Result<StateFile, SnapshotError> {
    let path = dir.join(format::STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| SnapshotError::Io {
        what: "read the state file",
        path: path.clone(),
        source,
    })?;
    format::parse(&bytes).map_err(|source| SnapshotError::Format { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_url_path_file_scheme_only() {
        assert_eq!(url_path("file:///tmp/s").unwrap(), PathBuf::from("/tmp/s"));
        assert!(url_path("http://x/s").is_err());
        assert!(url_path("file://relative").is_err());
    }

    #[test]
    fn test_restore_config_defaults_and_unknown_field() {
        let c: RestoreConfig = serde_json::from_str(r#"{"source_url":"file:///s"}"#).unwrap();
        let bad = serde_json::from_str::<RestoreConfig>(r#"{"source_url":"x","foo":1}"#);

        assert!(!c.resume);
        assert_eq!(c.memory, MemoryRestore::Mmap);
        assert!(bad.is_err());
    }

    #[test]
    fn test_restore_config_clone_identity_fields_parse_from_strings_or_numbers() {
        let from_cli: RestoreConfig = serde_json::from_str(
            r#"{"source_url":"file:///s","net_mac":"52:54:00:00:00:07","vsock_cid":"12"}"#,
        )
        .unwrap();
        let from_api: RestoreConfig =
            serde_json::from_str(r#"{"source_url":"file:///s","vsock_cid":12}"#).unwrap();
        let bad_mac =
            serde_json::from_str::<RestoreConfig>(r#"{"source_url":"x","net_mac":"52:54"}"#);
        let bad_cid =
            serde_json::from_str::<RestoreConfig>(r#"{"source_url":"x","vsock_cid":"-1"}"#);

        assert_eq!(
            from_cli.net_mac.map(|m| m.0),
            Some([0x52, 0x54, 0, 0, 0, 7])
        );
        assert_eq!(from_cli.vsock_cid, Some(12));
        assert_eq!(from_api.vsock_cid, Some(12));
        assert!(bad_mac.is_err() && bad_cid.is_err());
    }
}
