//! Writing a snapshot of a paused VM. The order matters (docs/decisions/0013): the virtio
//! devices are quiesced first (every request their workers took is answered, so the used
//! rings and the interrupts they raise are final), then the vCPUs' and the irqchip's state is
//! read, then the legacy devices', then guest memory, and the state file last, written to a
//! temporary name and renamed: a directory with a `state.json` holds a whole snapshot.

use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{self, DiskRecord, StateFile, STATE_FILE};
use super::persist::{save_entry, DeviceState};
use super::{memory, SnapshotError};
use crate::config::{DiskFormat, VmConfig};
use crate::kvm::persist::{self as kvm_persist, VcpuState};
use crate::vm::Vm;

/// What a snapshot wrote and how long it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Bytes of guest memory written (pages with data).
    pub memory_written: u64,
    /// Time to write everything.
    pub elapsed: Duration,
}

/// Device IDs of the legacy devices in the state file.
pub const SERIAL_ID: &str = "serial0";
/// The CMOS RTC.
pub const RTC_ID: &str = "rtc0";
/// The i8042.
pub const I8042_ID: &str = "i8042";

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The legacy devices' entries.
pub fn legacy_states(vm: &Vm) -> Result<Vec<DeviceState>, SnapshotError> {
    let d = &vm.devices;
    Ok(vec![
        save_entry(SERIAL_ID, &*lock(d.serial.device()))?,
        save_entry(RTC_ID, &*lock(&d.rtc))?,
        save_entry(I8042_ID, &*lock(&d.i8042))?,
    ])
}

/// The configured disks with their current sizes.
fn disk_records(config: &VmConfig) -> Result<Vec<DiskRecord>, SnapshotError> {
    let mut out = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let (format, name) = match d.format {
            DiskFormat::Raw => (disk::Format::Raw, "raw"),
            DiskFormat::Qcow2 => (disk::Format::Qcow2, "qcow2"),
            DiskFormat::Vmdk => (disk::Format::Vmdk, "vmdk"),
        };
        let info = disk::info(&d.path, format).map_err(|e| SnapshotError::Disk {
            path: d.path.clone(),
            reason: e.to_string(),
        })?;
        out.push(DiskRecord {
            id: d.id.clone().unwrap_or_else(|| format!("blk{i}")),
            path: d.path.to_string_lossy().into_owned(),
            format: name.to_string(),
            size: info.virtual_size,
        });
    }
    Ok(out)
}

/// Creates the snapshot directory (its parent must exist) or takes an existing empty one: a
/// snapshot never overwrites anything, nor creates directory trees.
fn prepare_dir(dir: &Path) -> Result<(), SnapshotError> {
    let occupied = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    };
    if occupied {
        return Err(SnapshotError::Io {
            what: "write a snapshot into",
            path: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists and is not an empty directory",
            ),
        });
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(SnapshotError::Io {
            what: "create the snapshot directory",
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes the snapshot of `vm` (paused, its virtio devices quiesced and saved in `virtio`,
/// its vCPUs saved in `vcpus`) to `dir`.
pub fn write(
    vm: &Vm,
    config: &VmConfig,
    vcpus: Vec<VcpuState>,
    virtio: Vec<DeviceState>,
    dir: &Path,
) -> Result<SaveStats, SnapshotError> {
    let start = Instant::now();
    prepare_dir(dir)?;
    let kvm_state = kvm_persist::save_vm(vm._kvm.fd())?;
    let mut devices = legacy_states(vm)?;
    devices.extend(virtio);
    let disks = disk_records(config)?;
    let (memory, written) = memory::save(&vm.ctx.mem, dir, vm.memory_scan_all)?;
    let state = StateFile {
        strata_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.clone(),
        memory,
        vm: kvm_state,
        vcpus,
        devices,
        disks,
    };
    let bytes = format::encode(&state).map_err(|source| SnapshotError::Format {
        path: dir.join(STATE_FILE),
        source,
    })?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let path = dir.join(STATE_FILE);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { what, path, source }
    };
    std::fs::write(&tmp, &bytes).map_err(io("write the state file", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("sync the state file", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename the state file to", &path))?;
    Ok(SaveStats {
        memory_written: written,
        elapsed: start.elapsed(),
    })
}
