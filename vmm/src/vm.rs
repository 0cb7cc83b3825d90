//! Building a VM: one linear sequence whose steps are the numbered boot sequence in
//! ARCHITECTURE.md (1-10). Running it (steps 11-12) is the control plane's: `control/`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acpi::{self, AcpiError, PowerButton};
use crate::arch::x86_64::{bda, layout, mptable};
use crate::boot::{self, BootMachine, BootSource};
use crate::config::{ConfigError, ConsoleMode, VgaConfig, VmConfig};
use crate::counters::Counters;
use crate::device_manager::{self, DeviceContext, DeviceManager, DeviceManagerError, DevicePlan};
use crate::devices::fw_cfg::content::FwCfgMachine;
use crate::devices::fw_cfg::FwCfgError;
use crate::devices::{self, Bus, DebugconTarget, LegacyConfig, LegacyDevices};
use crate::firmware;
use crate::kvm::reaper::Reaper;
use crate::kvm::{KvmVm, Vcpu, VcpuContext, VcpuError, VmError};
use crate::memory::{self, MemoryError};
use crate::resources::{ResourceError, SystemResources};
use crate::vm_events::{self, VmEventQueue, VmEventsError};
use vm_memory::GuestMemoryMmap;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM refused something.
    #[error(transparent)]
    Kvm(#[from] VmError),
    /// Guest memory could not be allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The BIOS data area could not be written.
    #[error("unable to write the BIOS data area: {0}")]
    BiosDataArea(vm_memory::GuestMemoryError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A device could not be created.
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    /// A virtio device could not be created.
    #[error(transparent)]
    DeviceManager(#[from] DeviceManagerError),
    /// The configured devices do not fit the machine's MMIO windows, IRQs or PCI slots.
    #[error("unable to place the configured devices")]
    Resources(#[source] ResourceError),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// More vCPUs than KVM allows.
    #[error("invalid cpus: boot={requested} is more than KVM's maximum of {max}")]
    TooManyVcpus {
        /// Requested.
        requested: u8,
        /// KVM_CAP_MAX_VCPUS.
        max: usize,
    },
    /// A thread could not be started.
    #[error("unable to start thread {name}: {source}")]
    SpawnThread {
        /// Thread name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An output file could not be created.
    #[error("unable to create {what} file {path}: {source}")]
    OutputFile {
        /// Which output.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The device-to-VMM event channel could not be created.
    #[error(transparent)]
    VmEvents(#[from] VmEventsError),
    /// The control plane failed (threads, event loop, signals, timers).
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The ACPI tables or devices could not be set up.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// The fw_cfg device could not be set up.
    #[error(transparent)]
    FwCfg(#[from] FwCfgError),
    /// A snapshot could not be taken or restored (boxed: it is the largest error here).
    #[error(transparent)]
    Snapshot(Box<crate::snapshot::SnapshotError>),
    /// The firmware (`--firmware`) could not be used.
    #[error(transparent)]
    Firmware(#[from] crate::firmware::FirmwareError),
    /// The kernel could not be handed to the firmware through fw_cfg.
    #[error(transparent)]
    LegacyBoot(#[from] crate::devices::fw_cfg::legacy::LegacyBootError),
}

impl From<crate::snapshot::SnapshotError> for VmmError {
    fn from(e: crate::snapshot::SnapshotError) -> VmmError {
        VmmError::Snapshot(Box::new(e))
    }
}

/// A built VM, ready to run: what the control plane needs of it.
pub struct Vm {
    pub(crate) _kvm: KvmVm,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) ctx: VcpuContext,
    pub(crate) devices: LegacyDevices,
    /// The virtio devices (their workers stop when the VM stops).
    pub(crate) virtio: DeviceManager,
    pub(crate) events: VmEventQueue,
    pub(crate) vga: VgaConfig,
    pub(crate) timeout: Option<Duration>,
    /// Every device's counters, by device name (`vm.counters`, `GET /metrics`).
    pub(crate) device_counters: Vec<(String, Arc<Counters>)>,
    /// The ACPI power button (`vm.power-button`), with ACPI on.
    pub(crate) power_button: Option<PowerButton>,
    /// Guest memory came from a snapshot (mapped from its file or filled through
    /// userfaultfd): a snapshot of this VM looks at every page, not only resident ones.
    pub(crate) memory_scan_all: bool,
    /// The userfaultfd handler that fills guest memory, for a VM restored with memory=uffd.
    pub(crate) _uffd: Option<crate::snapshot::uffd::UffdHandler>,
    /// Set when the VM is dropped, and dropped last: the KVM descriptors' final close, and
    /// with it the kernel's teardown, happens in a reaper process (docs/decisions/0014).
    pub(crate) reaper: Reaper,
}

impl Drop for Vm {
    /// Hands the VM's destruction to a reaper before the fields (the KVM descriptors first)
    /// are dropped; the `reaper` field, dropped last, lets it proceed.
    fn drop(&mut self) {
        self.reaper = crate::kvm::reaper::release();
    }
}

pub(crate) fn create_output(
    what: &'static str,
    path: &std::path::Path,
) -> Result<std::fs::File, VmmError> {
    std::fs::File::create(path).map_err(|source| VmmError::OutputFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Creates the legacy devices on `pio` as the config asks (boot sequence step 8); the reset
/// control port only when no PCI root will claim the configuration ports around it.
pub(crate) fn create_devices(
    config: &VmConfig,
    pio: &Bus,
    events: &vm_events::VmEvents,
    reset_port: bool,
) -> Result<LegacyDevices, VmmError> {
    let serial_out: Option<Box<dyn Write + Send>> = match config.serial.mode {
        ConsoleMode::Stdio => Some(Box::new(std::io::stdout())),
        ConsoleMode::File => {
            let path = config.serial.file.clone().unwrap_or_default();
            Some(Box::new(create_output("serial", &path)?))
        }
        ConsoleMode::Off | ConsoleMode::Null | ConsoleMode::Pty => None,
    };
    let ram = layout::ram_ranges(config.memory.size);
    let below = ram.first().map_or(0, |r| r.1);
    let above = ram.get(1).map_or(0, |r| r.1);
    Ok(devices::register_legacy_devices(
        pio,
        LegacyConfig {
            serial_out,
            debugcon: DebugconTarget::Serial,
            ram_below_4g: below,
            ram_above_4g: above,
            vga_ports: true,
            reset_port,
        },
        events,
    )?)
}

/// The device plan (boot sequence step 5) and, with ACPI, the generic event device's IRQ,
/// allocated after the plan's: boot and restore must place every device alike.
pub(crate) fn plan_devices(
    config: &VmConfig,
) -> Result<(SystemResources, DevicePlan, Option<u32>), VmmError> {
    let mut resources = SystemResources::new(config.memory.size);
    let plan = DevicePlan::new(&device_manager::requests(config), &mut resources)
        .map_err(VmmError::Resources)?;
    let ged_irq = match config.acpi {
        true => Some(resources.irqs.allocate().map_err(VmmError::Resources)?),
        false => None,
    };
    Ok((resources, plan, ged_irq))
}

/// What steps 8 and 9 build: the buses and every device on them.
pub(crate) struct MachineDevices {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) events: VmEventQueue,
    pub(crate) devices: LegacyDevices,
    pub(crate) power_button: Option<PowerButton>,
    pub(crate) virtio: DeviceManager,
    pub(crate) device_counters: Vec<(String, Arc<Counters>)>,
}

/// Boot sequence steps 8 and 9, shared by boot and restore: the legacy devices with their
/// irqfds, with ACPI the power-management registers, fw_cfg, the planned virtio devices behind
/// their transports and, with ACPI and a PCI root, the ECAM window.
pub(crate) fn create_machine_devices(
    config: &VmConfig,
    kvm: &KvmVm,
    mem: &GuestMemoryMmap,
    plan: &DevicePlan,
    resources: &mut SystemResources,
    acpi_machine: Option<&acpi::AcpiMachine>,
) -> Result<MachineDevices, VmmError> {
    // 8. Legacy devices on the port-I/O bus, interrupts through irqfds.
    let pio = Bus::new();
    let mmio = Bus::new();
    let (vm_events, events) = vm_events::vm_events()?;
    let devices = create_devices(config, &pio, &vm_events, !plan.has_pci())?;
    kvm.register_irqfd(&devices.serial_irq, devices::serial::COM1_IRQ)?;
    kvm.register_irqfd(&devices.i8042_irq, devices::i8042::I8042_KBD_IRQ)?;
    let power_button = acpi_machine
        .map(|machine| acpi::setup::register_pm(kvm, &pio, &vm_events, machine.ged_irq))
        .transpose()?;
    //    fw_cfg at 0x510-0x51b: the machine's items and, with ACPI, the table loader; with
    //    --firmware QEMU's memory map, the kernel's legacy keys and the 0x402 debug console.
    let firmware_items = firmware::setup::fw_cfg_items(
        config,
        plan,
        &plan.kernel_cmdline(config.payload.cmdline.as_deref().unwrap_or_default()),
    )?;
    let memory_map = match firmware_items {
        Some(_) => firmware::setup::memory_map(config.memory.size),
        None => layout::memory_map(config.memory.size),
    };
    if firmware_items.is_some() {
        devices.register_debugcon_at(&pio, firmware::FIRMWARE_DEBUGCON_PORT)?;
    }
    let fw_cfg_machine = FwCfgMachine {
        cpus: config.cpus.boot_vcpus,
        ram_size: config.memory.size,
        memory_map: &memory_map,
        acpi: acpi_machine,
        firmware: firmware_items.as_ref(),
    };
    devices::fw_cfg::content::register(&pio, mem, &fw_cfg_machine)?;
    // 9. The planned devices behind their transports, with ioeventfds and irqfds.
    let mut ctx = DeviceContext {
        mem,
        wiring: kvm.wiring(),
        pio: &pio,
        mmio: &mmio,
        resources,
        events: &vm_events,
    };
    let virtio = DeviceManager::create(config, plan, &mut ctx)?;
    if let (Some(root), true) = (virtio.pci_root(), config.acpi) {
        acpi::setup::register_ecam(&mmio, root)?;
    }
    let mut device_counters = vec![("serial0".to_string(), devices.serial.counters())];
    device_counters.extend(virtio.counters());
    Ok(MachineDevices {
        pio,
        mmio,
        events,
        devices,
        power_button,
        virtio,
        device_counters,
    })
}

impl Vm {
    /// Builds a VM from `config`: the boot sequence of ARCHITECTURE.md, steps 1 to 10.
    pub fn build(config: &VmConfig) -> Result<Vm, VmmError> {
        // 1. Validate the configuration (and read and check the firmware, if any).
        config.validate()?;
        let firmware = firmware::setup::configured(config)?;
        let cpu_count = config.cpus.boot_vcpus;
        // 2. Open KVM and create the VM.
        let kvm = KvmVm::new()?;
        if usize::from(cpu_count) > kvm.max_vcpus() || cpu_count > 254 {
            return Err(VmmError::TooManyVcpus {
                requested: cpu_count,
                max: kvm.max_vcpus().min(254),
            });
        }
        // 3. Allocate guest RAM and register it in as few memslots as possible.
        let mem = memory::create_guest_memory(config.memory.size, config.guest_ram_thp())?;
        kvm.register_memory(&mem)?;
        // 4. In-kernel interrupt controllers and PIT.
        kvm.setup_irqchip()?;
        // 5. Plan the devices: MMIO windows, IRQs and PCI slots, before the kernel is loaded.
        //    With ACPI, the generic event device (power button) gets the next IRQ.
        let (mut resources, plan, ged_irq) = plan_devices(config)?;
        // 6. Load the kernel by the protocol its headers declare; the command line announces
        //    the virtio-mmio devices.
        let user_cmdline = config.payload.cmdline.clone().unwrap_or_default();
        let source = BootSource {
            kernel: config.payload.kernel.clone().unwrap_or_default(),
            initrd: config.payload.initramfs.clone(),
            cmdline: plan.kernel_cmdline(&user_cmdline),
        };
        let machine = BootMachine {
            memory_map: layout::memory_map(config.memory.size),
            vcpus: cpu_count,
            rsdp: ged_irq.map(|_| acpi::ACPI_TABLES_START),
        };
        //    With --firmware: the ROM and the reset vector, or a PVH firmware (firmware/).
        let entry = match &firmware {
            None => boot::load(&mem, &source, &machine)?,
            Some(fw) => firmware::setup::load(&kvm, &mem, fw, &source, &machine)?,
        };
        // 7. Firmware tables: the BIOS data area words and the MP table (with the plan's IRQs);
        //    a raw BIOS image builds its own (ACPI from fw_cfg's table loader).
        let raw_firmware = firmware::setup::is_raw(&firmware);
        if !raw_firmware {
            bda::setup_bios_data_area(&mem).map_err(VmmError::BiosDataArea)?;
            mptable::setup_mptable(&mem, cpu_count, &plan.mp_config())?;
        }
        //    With ACPI, the tables from 0xe0000 (docs/decisions/0012).
        let acpi_machine =
            ged_irq.map(|irq| acpi::setup::machine(cpu_count, config.memory.size, &plan, irq));
        if let (Some(machine), false) = (&acpi_machine, raw_firmware) {
            acpi::setup_acpi(&mem, machine)?;
        }
        // 8-9. Legacy devices, ACPI registers, fw_cfg, the planned virtio devices.
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
        // 10. vCPUs: CPUID, MSRs, LAPIC; the boot vCPU gets the entry state.
        let ctx = VcpuContext {
            mem,
            pio,
            mmio,
            guest_request: events.sent_flag(),
            emulation_fallback: config.emulation_fallback,
        };
        let cpuid = kvm.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(cpu_count));
        for id in 0..cpu_count {
            let mut vcpu = Vcpu::new(id, kvm.create_vcpu(id)?, ctx.clone());
            vcpu.configure(&cpuid, cpu_count, (id == 0).then_some(&entry))?;
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
            reaper: Reaper::default(),
            power_button,
            memory_scan_all: false,
            _uffd: None,
        })
    }

    /// The pseudo-terminal of a `--console pty` device, for the user to open.
    pub fn console_pty(&self) -> Option<&std::path::Path> {
        self.virtio.console_pty()
    }
}

impl Vm {
    /// Renders the VGA text buffer to the configured file (rewritten) or standard error.
    pub(crate) fn render_vga(&self) -> Result<(), VmmError> {
        match &self.vga.file {
            Some(path) => {
                let mut f = create_output("VGA text", path)?;
                self.devices.vga.dump(&self.ctx.mem, &mut f)?;
            }
            None => self
                .devices
                .vga
                .dump(&self.ctx.mem, &mut std::io::stderr())?,
        }
        Ok(())
    }
}
