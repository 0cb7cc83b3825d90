//! What Strata's fw_cfg carries for a machine: CPU count, RAM size, boot menu off, the memory
//! map (`etc/e820`), an empty `bootorder` (the firmware's default order), `etc/boot-fail-wait`
//! and, with ACPI, the tables through `etc/table-loader` (`acpi::loader`).

use super::{
    FwCfg, FwCfgError, FW_CFG_BOOT_MENU, FW_CFG_MAX_CPUS, FW_CFG_NB_CPUS, FW_CFG_RAM_SIZE,
};
use crate::acpi::loader::{self, LOADER_FILE, RSDP_FILE, TABLES_FILE};
use crate::acpi::AcpiMachine;
use crate::arch::x86_64::layout::MemoryRegion;

/// `etc/boot-fail-wait`: all ones, no retry after a failed boot (SeaBIOS halts).
const BOOT_FAIL_WAIT_NEVER: u32 = u32::MAX;

/// The machine fw_cfg describes.
pub struct FwCfgMachine<'a> {
    /// vCPUs.
    pub cpus: u8,
    /// RAM bytes.
    pub ram_size: u64,
    /// The memory map the guest gets.
    pub memory_map: &'a [MemoryRegion],
    /// The ACPI tables' machine, with ACPI on.
    pub acpi: Option<&'a AcpiMachine>,
    /// With `--firmware`: the kernel's legacy keys and the serial console port.
    pub firmware: Option<&'a FirmwareItems>,
}

/// What fw_cfg adds for firmware (`--firmware`).
#[derive(Debug, Default)]
pub struct FirmwareItems {
    /// The legacy kernel, initrd, command line and setup keys (`fw_cfg::legacy`).
    pub legacy: Vec<(u16, Vec<u8>)>,
    /// `etc/sercon-port`: the port SeaBIOS mirrors its text console to (QEMU gives 0x3f8
    /// when there is no display; Strata has no VGA BIOS).
    pub sercon_port: u16,
    /// Further files (the linuxboot option ROM under `genroms/`).
    pub files: Vec<(String, Vec<u8>)>,
    /// `bootorder`'s contents (one device path per line; empty: the firmware's own order).
    pub bootorder: Vec<u8>,
}

/// `etc/e820`: one 20-byte record (address, length, type; little-endian) per region.
pub fn e820(map: &[MemoryRegion]) -> Vec<u8> {
    let mut v = Vec::with_capacity(map.len() * 20);
    for r in map {
        v.extend_from_slice(&r.base.0.to_le_bytes());
        v.extend_from_slice(&r.size.to_le_bytes());
        v.extend_from_slice(&r.kind.e820_type().to_le_bytes());
    }
    v
}

/// Creates the fw_cfg device over `mem` for `m` and puts it on `pio` at ports 0x510-0x51b.
pub fn register(
    pio: &crate::devices::Bus,
    mem: &vm_memory::GuestMemoryMmap,
    m: &FwCfgMachine<'_>,
) -> Result<(), FwCfgError> {
    let mut cfg = FwCfg::new(mem.clone());
    add_machine(&mut cfg, m)?;
    pio.insert(
        std::sync::Arc::new(std::sync::Mutex::new(cfg)),
        u64::from(super::FW_CFG_PORT),
        u64::from(super::FW_CFG_PORT_LEN),
    )
    .map_err(FwCfgError::Register)
}

/// Adds the machine's items and files to `cfg`.
pub fn add_machine(cfg: &mut FwCfg, m: &FwCfgMachine<'_>) -> Result<(), FwCfgError> {
    cfg.add_item(FW_CFG_NB_CPUS, u16::from(m.cpus).to_le_bytes().to_vec())?;
    cfg.add_item(FW_CFG_MAX_CPUS, u16::from(m.cpus).to_le_bytes().to_vec())?;
    cfg.add_item(FW_CFG_RAM_SIZE, m.ram_size.to_le_bytes().to_vec())?;
    cfg.add_item(FW_CFG_BOOT_MENU, 0u16.to_le_bytes().to_vec())?;
    cfg.add_file("etc/e820", e820(m.memory_map))?;
    let bootorder = m.firmware.map_or(Vec::new(), |f| f.bootorder.clone());
    cfg.add_file("bootorder", bootorder)?;
    cfg.add_file(
        "etc/boot-fail-wait",
        BOOT_FAIL_WAIT_NEVER.to_le_bytes().to_vec(),
    )?;
    if let Some(fw) = m.firmware {
        for (key, data) in &fw.legacy {
            cfg.add_item(*key, data.clone())?;
        }
        cfg.add_file("etc/sercon-port", fw.sercon_port.to_le_bytes().to_vec())?;
        for (name, data) in &fw.files {
            cfg.add_file(name, data.clone())?;
        }
    }
    if let Some(acpi) = m.acpi {
        let files = loader::files(acpi);
        cfg.add_file(TABLES_FILE, files.tables)?;
        cfg.add_file(RSDP_FILE, files.rsdp)?;
        cfg.add_file(LOADER_FILE, files.loader)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::memory_map;
    use crate::devices::PortDevice;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn read_file(cfg: &mut FwCfg, name: &str) -> Option<Vec<u8>> {
        PortDevice::write(cfg, 0, &super::super::FW_CFG_FILE_DIR.to_le_bytes());
        let byte = |cfg: &mut FwCfg| {
            let mut b = [0u8];
            PortDevice::read(cfg, 1, &mut b);
            b[0]
        };
        let count = u32::from_be_bytes([byte(cfg), byte(cfg), byte(cfg), byte(cfg)]);
        let mut found = None;
        for _ in 0..count {
            let e: Vec<u8> = (0..64).map(|_| byte(cfg)).collect();
            let end = e[8..].iter().position(|&c| c == 0).unwrap_or(56);
            if &e[8..8 + end] == name.as_bytes() {
                let size = u32::from_be_bytes(e[..4].try_into().unwrap());
                found = Some((u16::from_be_bytes([e[4], e[5]]), size));
            }
        }
        let (key, size) = found?;
        PortDevice::write(cfg, 0, &key.to_le_bytes());
        Some((0..size).map(|_| byte(cfg)).collect())
    }

    #[test]
    fn test_fw_cfg_machine_files_e820_bootorder_wait_and_acpi() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut cfg = FwCfg::new(mem);
        let map = memory_map(128 << 20);
        let acpi = AcpiMachine {
            cpus: 2,
            pci: None,
            virtio_mmio: vec![],
            ged_irq: 5,
        };

        add_machine(
            &mut cfg,
            &FwCfgMachine {
                cpus: 2,
                ram_size: 128 << 20,
                memory_map: &map,
                acpi: Some(&acpi),
                firmware: None,
            },
        )
        .unwrap();

        let e820 = read_file(&mut cfg, "etc/e820").unwrap();
        assert_eq!(e820.len(), 3 * 20);
        assert_eq!(&e820[40..48], &0x10_0000u64.to_le_bytes());
        assert_eq!(&e820[48..56], &(127u64 << 20).to_le_bytes());
        assert_eq!(&e820[56..60], &1u32.to_le_bytes());
        assert_eq!(read_file(&mut cfg, "bootorder").unwrap(), b"");
        assert_eq!(
            read_file(&mut cfg, "etc/boot-fail-wait").unwrap(),
            [0xff; 4]
        );
        let rsdp = read_file(&mut cfg, "etc/acpi/rsdp").unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        let loader = read_file(&mut cfg, "etc/table-loader").unwrap();
        assert_eq!(loader, loader::files(&acpi).loader);
        assert!(read_file(&mut cfg, "etc/acpi/tables").is_some());
    }
}
