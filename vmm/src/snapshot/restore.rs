//! Building a VM from a snapshot: the boot sequence of `Vm::build` with the kernel loading
//! and firmware tables left out (they are in guest memory) and each piece of state written
//! back where `Vm::build` would have configured it.
//!
//! 1. Read and check the state file (`format::parse`); apply the restore's disk overlays.
//! 2. Open KVM, create the VM.
//! 3. Guest memory from the memory file: MAP_PRIVATE (default) or through userfaultfd.
//! 4. The irqchip and PIT, then their saved state and the KVM clock.
//! 5. Plan the devices as the configuration says (the same places as at boot).
//! 8. Legacy devices, then their saved state.
//! 9. The planned virtio devices, then their saved state (running ones are activated with
//!    their queues where they were).
//! 10. The vCPUs with their saved state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::{DiskRecord, StateFile};
use super::persist::restore_entry;
use super::save::{I8042_ID, RTC_ID, SERIAL_ID};
use super::{memory, read_state, uffd, url_path, MemoryRestore, RestoreConfig, SnapshotError};
use crate::acpi;
use crate::config::{DiskFormat, VmConfig};
use crate::kvm::persist as kvm_persist;
use crate::kvm::{KvmVm, Vcpu, VcpuContext};
use crate::vm::{create_machine_devices, plan_devices, MachineDevices, Vm, VmmError};

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Step 1: the snapshot's state, checked, with the restore's changes to its configuration.
pub fn load(restore: &RestoreConfig) -> Result<(PathBuf, StateFile), SnapshotError> {
    let dir = url_path(&restore.source_url)?;
    let mut state = read_state(&dir)?;
    check_disks(&state.config, &state.disks)?;
    if let Some(overlays) = &restore.overlay_dir {
        make_overlays(&mut state.config, overlays)?;
    }
    apply_identity(&mut state.config, restore)?;
    Ok((dir, state))
}

/// A clone's own MAC, tap, vsock CID and socket (docs/decisions/0018), written into the
/// snapshot's configuration before the devices are created from it.
pub fn apply_identity(config: &mut VmConfig, r: &RestoreConfig) -> Result<(), SnapshotError> {
    if r.net_mac.is_some() || r.net_tap.is_some() {
        let [net] = config.net.as_mut_slice() else {
            return Err(SnapshotError::ConfigMismatch(format!(
                "net_mac and net_tap need a VM with exactly one net device; the snapshot has {}",
                config.net.len()
            )));
        };
        if let Some(mac) = r.net_mac {
            net.mac = Some(mac);
        }
        if let Some(tap) = &r.net_tap {
            net.tap = Some(tap.clone());
        }
    }
    if r.vsock_cid.is_some() || r.vsock_socket.is_some() {
        let Some(vsock) = config.vsock.as_mut() else {
            return Err(SnapshotError::ConfigMismatch(
                "vsock_cid and vsock_socket need a VM with a vsock device; the snapshot has none"
                    .into(),
            ));
        };
        if let Some(cid) = r.vsock_cid {
            vsock.cid = cid;
        }
        if let Some(socket) = &r.vsock_socket {
            vsock.socket = socket.clone();
        }
    }
    Ok(())
}

/// Every disk the configuration names must be the one the snapshot recorded, with the same
/// size.
fn check_disks(config: &VmConfig, disks: &[DiskRecord]) -> Result<(), SnapshotError> {
    if config.disks.len() != disks.len() {
        return Err(SnapshotError::ConfigMismatch(format!(
            "{} disks configured, {} recorded",
            config.disks.len(),
            disks.len()
        )));
    }
    for (d, rec) in config.disks.iter().zip(disks) {
        let format = disk_format(d.format);
        let info = disk::info(&d.path, format).map_err(|e| SnapshotError::Disk {
            path: d.path.clone(),
            reason: e.to_string(),
        })?;
        if info.virtual_size != rec.size {
            return Err(SnapshotError::ConfigMismatch(format!(
                "disk {} is {} bytes, the snapshot recorded {} bytes",
                d.path.display(),
                info.virtual_size,
                rec.size
            )));
        }
    }
    Ok(())
}

fn disk_format(f: DiskFormat) -> disk::Format {
    match f {
        DiskFormat::Raw => disk::Format::Raw,
        DiskFormat::Qcow2 => disk::Format::Qcow2,
        DiskFormat::Vmdk => disk::Format::Vmdk,
    }
}

/// Gives every writable disk a new qcow2 overlay in `overlays` whose backing file is the
/// snapshot's disk (clones: each restored VM writes only to its own overlay).
fn make_overlays(config: &mut VmConfig, overlays: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(overlays).map_err(|source| SnapshotError::Io {
        what: "create the overlay directory",
        path: overlays.to_owned(),
        source,
    })?;
    for (i, d) in config.disks.iter_mut().enumerate() {
        if d.readonly {
            continue;
        }
        let base = std::fs::canonicalize(&d.path).map_err(|source| SnapshotError::Io {
            what: "find the disk",
            path: d.path.clone(),
            source,
        })?;
        let format = disk_format(d.format);
        let size = disk::info(&base, format)
            .map_err(|e| SnapshotError::Disk {
                path: base.clone(),
                reason: e.to_string(),
            })?
            .virtual_size;
        let name = d.id.clone().unwrap_or_else(|| format!("blk{i}"));
        let overlay = overlays.join(format!("{name}.qcow2"));
        let options = disk::CreateOptions {
            backing_file: Some(base.to_string_lossy().into_owned()),
            backing_format: Some(format),
            ..Default::default()
        };
        disk::create(&overlay, disk::Format::Qcow2, size, &options).map_err(|e| {
            SnapshotError::Disk {
                path: overlay.clone(),
                reason: format!("unable to create the overlay: {e}"),
            }
        })?;
        d.path = overlay;
        d.format = DiskFormat::Qcow2;
        d.backing = true;
    }
    Ok(())
}

/// Builds a VM from `state` (paused: its vCPUs have not run). Steps as in the module's doc.
pub fn build(dir: &Path, state: &StateFile, how: MemoryRestore) -> Result<Vm, VmmError> {
    let config = &state.config;
    config.validate()?;
    let cpu_count = config.cpus.boot_vcpus;
    // 2. KVM.
    let kvm = KvmVm::new()?;
    if usize::from(cpu_count) > kvm.max_vcpus() || cpu_count > 254 {
        return Err(VmmError::TooManyVcpus {
            requested: cpu_count,
            max: kvm.max_vcpus().min(254),
        });
    }
    // 3. Guest memory from the snapshot.
    let file = memory::open(dir, &state.memory)?;
    let (mem, uffd_handler) = match how {
        MemoryRestore::Mmap => (memory::map_private(&file, &state.memory)?, None),
        MemoryRestore::Uffd => {
            let (mem, h) = uffd::restore(file, &state.memory)?;
            (mem, Some(h))
        }
    };
    crate::memory::dont_fork(&mem);
    kvm.register_memory(&mem)?;
    // 4. irqchip, PIT, clock.
    kvm.setup_irqchip()?;
    kvm_persist::restore_vm(kvm.fd(), &state.vm).map_err(SnapshotError::from)?;
    // 5. The same device places as at boot.
    let (mut resources, plan, ged_irq) = plan_devices(config)?;
    // 8-9. The same devices as at boot (the ACPI tables themselves are in the restored memory;
    //    the power-management registers' and fw_cfg's state, a pending power-button event or a
    //    half-read item, is not carried: docs/decisions/0013), then their state.
    let acpi_machine =
        ged_irq.map(|irq| acpi::setup::machine(cpu_count, config.memory.size, &plan, irq));
    let MachineDevices {
        pio,
        mmio,
        events,
        devices,
        power_button,
        virtio,
        device_counters,
    } = create_machine_devices(
        config,
        &kvm,
        &mem,
        &plan,
        &mut resources,
        acpi_machine.as_ref(),
    )?;
    let entries = &state.devices;
    restore_entry(entries, SERIAL_ID, &mut *lock(devices.serial.device()))
        .map_err(SnapshotError::from)?;
    restore_entry(entries, RTC_ID, &mut *lock(&devices.rtc)).map_err(SnapshotError::from)?;
    restore_entry(entries, I8042_ID, &mut *lock(&devices.i8042)).map_err(SnapshotError::from)?;
    virtio
        .restore_states(entries)
        .map_err(SnapshotError::from)?;
    // 10. vCPUs with their state.
    let ctx = VcpuContext {
        mem,
        pio,
        mmio,
        guest_request: events.sent_flag(),
        emulation_fallback: config.emulation_fallback,
    };
    let mut vcpus = Vec::with_capacity(usize::from(cpu_count));
    for saved in &state.vcpus {
        let mut vcpu = Vcpu::new(saved.id, kvm.create_vcpu(saved.id)?, ctx.clone());
        vcpu.restore_state(saved).map_err(SnapshotError::from)?;
        vcpus.push(vcpu);
    }
    Ok(Vm {
        _kvm: kvm,
        vcpus,
        ctx,
        devices,
        virtio,
        events,
        vga: config.vga.clone(),
        timeout: config.timeout.map(Duration::from_secs),
        device_counters,
        power_button,
        memory_scan_all: true,
        _uffd: uffd_handler,
        reaper: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MacAddr, NetConfig, VsockConfig};

    #[test]
    fn test_apply_identity_sets_clone_mac_and_cid_or_refuses_without_device() {
        let mut config = VmConfig {
            net: vec![NetConfig::default()],
            vsock: Some(VsockConfig {
                cid: 3,
                socket: "/tmp/v.sock".into(),
                id: None,
                transport: None,
            }),
            ..Default::default()
        };
        let r = RestoreConfig {
            net_mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
            vsock_cid: Some(9),
            vsock_socket: Some("/tmp/c9.sock".into()),
            ..Default::default()
        };

        apply_identity(&mut config, &r).unwrap();
        let no_net = apply_identity(&mut VmConfig::default(), &r).unwrap_err();

        assert_eq!(config.net[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
        let vsock = config.vsock.unwrap();
        assert_eq!((vsock.cid, vsock.socket), (9, "/tmp/c9.sock".into()));
        assert!(
            no_net.to_string().contains("exactly one net device"),
            "{no_net}"
        );
    }
}
