//! How `Vm::build` (and restore, through `create_machine_devices`) uses `--firmware`: the
//! payload's load step, the memory map and fw_cfg items firmware gets.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::rom::{linuxboot_rom, LINUXBOOT_BOOTORDER, LINUXBOOT_FILE};
use super::smbios;
use super::{map_raw, read, rom_slot, Firmware, FirmwareError, RESET_IP};
use crate::arch::x86_64::layout::{ram_ranges, MemoryRegion, RegionKind};
use crate::boot::{self, BootEntry, BootMachine, BootSource, EntryMode, Protocol};
use crate::config::VmConfig;
use crate::device_manager::{DeviceKind, DevicePlan, Placement};
use crate::devices::fw_cfg::content::FirmwareItems;
use crate::devices::fw_cfg::legacy::{self, LegacyKernel};
use crate::devices::fw_cfg::FW_CFG_SETUP_ADDR;
use crate::devices::serial::COM1_BASE;
use crate::kvm::KvmVm;
use crate::vm::VmmError;

/// Where KVM's real-mode TSS and identity map lie (`kvm::vm`), reserved in firmware's map.
const KVM_PRIVATE_START: u64 = 0xfeff_c000;
const KVM_PRIVATE_SIZE: u64 = 0x4000;

/// The configured firmware, read and checked (None without `--firmware`).
pub(crate) fn configured(config: &VmConfig) -> Result<Option<Firmware>, FirmwareError> {
    config.payload.firmware.as_deref().map(read).transpose()
}

/// Whether the configuration boots a raw BIOS image (which builds its own tables).
pub(crate) fn is_raw(firmware: &Option<Firmware>) -> bool {
    matches!(firmware, Some(Firmware::Raw(_)))
}

/// Boot sequence step 6 with `--firmware`: a raw image is mapped at the top of 4 GiB and
/// below 1 MiB and the vCPU starts at the reset vector (a PVH `--kernel` is put in RAM first,
/// as QEMU does, for the firmware to jump to); a PVH firmware is loaded like a PVH kernel.
pub(crate) fn load(
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    firmware: &Firmware,
    source: &BootSource,
    machine: &BootMachine,
) -> Result<BootEntry, VmmError> {
    match firmware {
        Firmware::Raw(image) => {
            if !source.kernel.as_os_str().is_empty()
                && boot::probe(&source.kernel)? == Protocol::Pvh
            {
                boot::load(mem, source, machine)?;
            }
            map_raw(kvm, mem, image, rom_slot(mem))?;
            Ok(BootEntry {
                protocol: Protocol::Firmware,
                mode: EntryMode::Reset,
                rip: RESET_IP,
                rsp: 0,
                rax: 0,
                rbx: 0,
                rsi: 0,
            })
        }
        Firmware::Pvh(path) => {
            let fw = BootSource {
                kernel: path.clone(),
                initrd: None,
                cmdline: source.cmdline.clone(),
            };
            Ok(boot::load(mem, &fw, machine)?)
        }
    }
}

/// The memory map firmware gets in `etc/e820`, as QEMU gives it: the RAM ranges, and the
/// pages KVM keeps for itself below the ROM window reserved.
pub(crate) fn memory_map(ram_size: u64) -> Vec<MemoryRegion> {
    let mut map: Vec<MemoryRegion> = ram_ranges(ram_size)
        .into_iter()
        .map(|(base, size)| MemoryRegion {
            base,
            size,
            kind: RegionKind::Ram,
        })
        .collect();
    map.push(MemoryRegion {
        base: GuestAddress(KVM_PRIVATE_START),
        size: KVM_PRIVATE_SIZE,
        kind: RegionKind::Reserved,
    });
    map.sort_by_key(|r| r.base);
    map
}

/// fw_cfg's additions for firmware: the kernel's legacy keys (with `--kernel`), the serial
/// console port, the boot order and SMBIOS. `cmdline` is the kernel's full command line.
pub(crate) fn fw_cfg_items(
    config: &VmConfig,
    plan: &DevicePlan,
    cmdline: &str,
) -> Result<Option<FirmwareItems>, VmmError> {
    if config.payload.firmware.is_none() {
        return Ok(None);
    }
    let legacy = match &config.payload.kernel {
        Some(kernel) => legacy::items(&LegacyKernel {
            kernel,
            initrd: config.payload.initramfs.as_deref(),
            cmdline,
            ram_below_4g: ram_ranges(config.memory.size).first().map_or(0, |r| r.1),
        })?,
        None => Vec::new(),
    };
    // A bzImage (the items carry a setup) boots from SeaBIOS through the linuxboot ROM, first
    // in the boot order as QEMU puts its own; qboot reads the items itself.
    let (mut files, bootorder) = match legacy.iter().any(|(key, _)| *key == FW_CFG_SETUP_ADDR) {
        true => (
            vec![(LINUXBOOT_FILE.to_string(), linuxboot_rom())],
            LINUXBOOT_BOOTORDER.as_bytes().to_vec(),
        ),
        false => (Vec::new(), boot_disk_path(config, plan).into_bytes()),
    };
    // SMBIOS as QEMU gives it (SeaBIOS otherwise builds its own, slowly).
    files.extend(smbios::files());
    Ok(Some(FirmwareItems {
        legacy,
        sercon_port: COM1_BASE,
        files,
        bootorder,
    }))
}

/// The `bootorder` line naming the disk marked `boot=on`, in SeaBIOS's device paths (it
/// matches `/pci@i0cf8/*@<device>` for a PCI device and `/virtio-mmio@<16 hex digits>/*` for a
/// virtio-mmio one); empty when no disk is marked.
pub(crate) fn boot_disk_path(config: &VmConfig, plan: &DevicePlan) -> String {
    let Some(index) = config.disks.iter().position(|d| d.boot) else {
        return String::new();
    };
    let placement = plan
        .devices
        .iter()
        .find(|d| d.kind == DeviceKind::Block(index))
        .map(|d| d.placement);
    match placement {
        Some(Placement::Pci { device, .. }) => format!("/pci@i0cf8/disk@{device:x}\n"),
        Some(Placement::Mmio { base, .. }) => format!("/virtio-mmio@{:016x}/disk\n", base.0),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_firmware_memory_map_ram_and_kvm_pages_like_qemu() {
        let map = memory_map(128 << 20);

        assert_eq!(map.len(), 2);
        assert_eq!(map[0].base, GuestAddress(0));
        assert_eq!(map[0].size, 128 << 20);
        assert_eq!(map[0].kind, RegionKind::Ram);
        assert_eq!(map[1].base, GuestAddress(0xfeff_c000));
        assert_eq!(map[1].kind, RegionKind::Reserved);
    }

    #[test]
    fn test_firmware_boot_disk_path_pci_and_mmio_as_seabios_matches() {
        let config = |json: &str| -> VmConfig { serde_json::from_str(json).unwrap() };
        let pci = config(
            r#"{"payload":{},"transport":"pci","disks":[{"path":"a","format":"raw"},{"path":"b","format":"raw","boot":"on"}]}"#,
        );
        let mmio = config(
            r#"{"payload":{},"transport":"mmio","disks":[{"path":"a","format":"raw","boot":true}]}"#,
        );
        let none = config(r#"{"payload":{},"disks":[{"path":"a","format":"raw"}]}"#);
        let plan_of = |c: &VmConfig| {
            let mut r = crate::resources::SystemResources::new(128 << 20);
            DevicePlan::new(&crate::device_manager::requests(c), &mut r).unwrap()
        };

        let pci_line = boot_disk_path(&pci, &plan_of(&pci));
        let mmio_line = boot_disk_path(&mmio, &plan_of(&mmio));
        let none_line = boot_disk_path(&none, &plan_of(&none));

        assert_eq!(pci_line, "/pci@i0cf8/disk@2\n");
        assert_eq!(mmio_line, "/virtio-mmio@00000000d0000000/disk\n");
        assert_eq!(none_line, "");
    }
}
