//! Building and running a VM: one linear sequence whose steps are the numbered boot sequence in
//! ARCHITECTURE.md, then the VM's lifecycle until the first vCPU stops it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{bda, layout, mptable};
use crate::boot::{self, BootMachine, BootSource};
use crate::config::{ConfigError, ConsoleMode, VgaConfig, VgaMode, VmConfig};
use crate::device_manager::{self, DeviceContext, DeviceManager, DeviceManagerError, DevicePlan};
use crate::devices::{self, Bus, DebugconTarget, LegacyConfig, LegacyDevices};
use crate::emulate::EmulationStats;
use crate::kvm::{KvmVm, Vcpu, VcpuContext, VcpuEnd, VcpuError, VcpuReport, VcpuStop, VmError};
use crate::memory::{self, MemoryError};
use crate::resources::{ResourceError, SystemResources};
use crate::vm_events::{self, VmEvent, VmEventQueue, VmEventsError};

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
    /// The vCPU kick signal handler could not be installed.
    #[error("unable to install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),
    /// The device-to-VMM event channel could not be created.
    #[error(transparent)]
    VmEvents(#[from] VmEventsError),
    /// The main loop's epoll could not be set up or waited on.
    #[error("unable to wait for VM events")]
    Epoll(#[source] std::io::Error),
}

/// How a VM ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// Why the VM stopped: what the guest asked for (reset, power-off, debug exit) or the
    /// first vCPU stop that was not a request from the VMM.
    pub stop: VcpuStop,
    /// Whether the timeout ended the VM.
    pub timed_out: bool,
    /// The host signal (SIGTERM, SIGINT, SIGHUP) that ended the VM, if one did.
    pub signal: Option<i32>,
    /// Every vCPU's state at the end, in vCPU order.
    pub reports: Vec<VcpuReport>,
    /// The report of the vCPU that ended the VM, if one did.
    pub culprit: Option<u8>,
    /// Instructions the fallback emulator ran, by mnemonic, over all vCPUs.
    pub emulated: EmulationStats,
}

impl VmOutcome {
    /// The process exit status a front end should use: the debug-exit value, 0 for reset or
    /// power-off, 124 for a timeout (as timeout(1)), 128 + the signal number when a host signal
    /// ended the VM (as a shell reports it), 1 for a fatal stop.
    pub fn exit_code(&self) -> i32 {
        if let Some(signal) = self.signal {
            return 128 + signal;
        }
        if self.timed_out {
            return 124;
        }
        match self.stop {
            VcpuStop::DebugExit(code) => i32::from(code),
            VcpuStop::Reset | VcpuStop::PowerOff | VcpuStop::Stopped => 0,
            _ => 1,
        }
    }
}

/// A vCPU thread's notice to the main thread that it stopped.
struct StopNotice {
    id: u8,
    stop: VcpuStop,
}

/// Why the main loop stopped the VM.
enum Ending {
    /// A vCPU stopped by itself (a fatal exit).
    Vcpu(StopNotice),
    /// The guest asked a device to end or reset the machine.
    Guest(VmEvent),
    /// The timeout, a host signal, or every vCPU gone.
    Vmm,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// A built VM, ready to run.
pub struct Vm {
    _kvm: KvmVm,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    devices: LegacyDevices,
    virtio: DeviceManager,
    events: VmEventQueue,
    vga: VgaConfig,
    timeout: Option<Duration>,
}

/// How often the main thread wakes to flush console output and serve VGA dump requests.
const MAIN_TICK: Duration = Duration::from_millis(100);

/// Set by SIGUSR1: render the VGA text console now.
static VGA_DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn vga_dump_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    VGA_DUMP_REQUESTED.store(true, Ordering::Relaxed);
}

/// Set by SIGTERM, SIGINT or SIGHUP to the signal's number: stop the VM and report.
static TERMINATE_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The host signals that stop the VM the way the timeout does (registers reported).
const TERMINATE_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn terminate_handler(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATE_SIGNAL.store(sig, Ordering::Relaxed);
}

fn create_output(what: &'static str, path: &std::path::Path) -> Result<std::fs::File, VmmError> {
    std::fs::File::create(path).map_err(|source| VmmError::OutputFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Creates the legacy devices on `pio` as the config asks (boot sequence step 8); the reset
/// control port only when no PCI root will claim the configuration ports around it.
fn create_devices(
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

impl Vm {
    /// Builds a VM from `config`: the boot sequence of ARCHITECTURE.md, steps 1 to 10.
    pub fn build(config: &VmConfig) -> Result<Vm, VmmError> {
        // 1. Validate the configuration.
        config.validate()?;
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
        let mem = memory::create_guest_memory(config.memory.size)?;
        kvm.register_memory(&mem)?;
        // 4. In-kernel interrupt controllers and PIT.
        kvm.setup_irqchip()?;
        // 5. Plan the devices: MMIO windows, IRQs and PCI slots, before the kernel is loaded.
        let mut resources = SystemResources::new(config.memory.size);
        let plan = DevicePlan::new(&device_manager::requests(config), &mut resources)
            .map_err(VmmError::Resources)?;
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
        };
        let entry = boot::load(&mem, &source, &machine)?;
        // 7. Firmware tables: the BIOS data area words and the MP table (with the plan's IRQs).
        bda::setup_bios_data_area(&mem).map_err(VmmError::BiosDataArea)?;
        mptable::setup_mptable(&mem, cpu_count, &plan.mp_config())?;
        // 8. Legacy devices on the port-I/O bus, interrupts through irqfds.
        let pio = Bus::new();
        let mmio = Bus::new();
        let (vm_events, events) = vm_events::vm_events()?;
        let devices = create_devices(config, &pio, &vm_events, !plan.has_pci())?;
        kvm.register_irqfd(&devices.serial_irq, devices::serial::COM1_IRQ)?;
        kvm.register_irqfd(&devices.i8042_irq, devices::i8042::I8042_KBD_IRQ)?;
        if config.serial.mode == ConsoleMode::Stdio {
            spawn_stdin_pump(&devices)?;
        }
        // 9. The planned devices behind their transports, with ioeventfds and irqfds.
        let mut ctx = DeviceContext {
            mem: &mem,
            wiring: kvm.wiring(),
            pio: &pio,
            mmio: &mmio,
            resources: &mut resources,
            events: &vm_events,
        };
        let virtio = DeviceManager::create(config, &plan, &mut ctx)?;
        // 10. vCPUs: CPUID, MSRs, LAPIC; the boot vCPU gets the entry state.
        let ctx = VcpuContext {
            mem,
            pio,
            mmio,
            stop: Arc::new(AtomicBool::new(false)),
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
        })
    }

    /// Every virtio device's name and counters (for `vm.counters` and `GET /metrics`).
    pub fn device_counters(&self) -> Vec<(String, Arc<crate::counters::Counters>)> {
        self.virtio.counters()
    }

    /// The pseudo-terminal of a `--console pty` device, for the user to open.
    pub fn console_pty(&self) -> Option<&std::path::Path> {
        self.virtio.console_pty()
    }

    /// Runs the VM until a vCPU stops it or the timeout expires (boot sequence step 11), then
    /// stops every vCPU and collects their state (step 12).
    pub fn run(mut self) -> Result<VmOutcome, VmmError> {
        register_signal_handler(kick_signal(), kick_handler).map_err(VmmError::SignalHandler)?;
        // Before SIGUSR1's: a front end that saw SIGUSR1 caught may rely on SIGTERM being too.
        for sig in TERMINATE_SIGNALS {
            register_signal_handler(sig, terminate_handler).map_err(VmmError::SignalHandler)?;
        }
        if self.vga.mode == VgaMode::Text {
            register_signal_handler(libc::SIGUSR1, vga_dump_handler)
                .map_err(VmmError::SignalHandler)?;
        }
        let (tx, rx) = mpsc::channel::<StopNotice>();
        let stopped = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Epoll)?);
        let mut handles: Vec<JoinHandle<VcpuEnd>> = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let tx = tx.clone();
            let stopped = Arc::clone(&stopped);
            let id = vcpu.id();
            let name = format!("vcpu{id}");
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let end = vcpu.run();
                    let _ = tx.send(StopNotice {
                        id,
                        stop: end.stop.clone(),
                    });
                    let _ = stopped.write(1);
                    end
                })
                .map_err(|source| VmmError::SpawnThread { name, source })?;
            handles.push(handle);
        }
        drop(tx);
        let ending = self.wait_for_ending(&rx, &stopped, handles.len())?;
        let signal = match TERMINATE_SIGNAL.swap(0, Ordering::Relaxed) {
            0 => None,
            sig => Some(sig),
        };
        let timed_out = matches!(ending, Ending::Vmm) && signal.is_none();
        self.ctx.stop.store(true, Ordering::Release);
        kick_until_finished(&handles);
        let mut reports = Vec::new();
        let mut emulated = EmulationStats::default();
        for end in handles.into_iter().filter_map(|h| h.join().ok()) {
            emulated.merge(&end.stats);
            reports.extend(end.report);
        }
        self.virtio.shutdown();
        self.devices.flush_output();
        if self.vga.mode == VgaMode::Text {
            self.render_vga()?;
        }
        let (stop, culprit) = match ending {
            Ending::Vcpu(end) => (end.stop, Some(end.id)),
            Ending::Guest(VmEvent::Reset) => (VcpuStop::Reset, None),
            Ending::Guest(VmEvent::PowerOff) => (VcpuStop::PowerOff, None),
            Ending::Guest(VmEvent::DebugExit(code)) => (VcpuStop::DebugExit(code), None),
            Ending::Vmm => (VcpuStop::Stopped, None),
        };
        Ok(VmOutcome {
            stop,
            timed_out,
            signal,
            reports,
            culprit,
            emulated,
        })
    }
}

impl Vm {
    /// Waits until something ends the VM: a vCPU's own stop, a guest request through a device,
    /// the timeout or a host signal; flushes console output and serves VGA renderings every
    /// [`MAIN_TICK`] meanwhile.
    fn wait_for_ending(
        &self,
        stops: &mpsc::Receiver<StopNotice>,
        stopped: &EventFd,
        vcpus: usize,
    ) -> Result<Ending, VmmError> {
        let epoll = Epoll::new().map_err(VmmError::Epoll)?;
        for fd in [self.events.eventfd().as_raw_fd(), stopped.as_raw_fd()] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(VmmError::Epoll)?;
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut finished = 0;
        let mut ready = [EpollEvent::default(); 2];
        loop {
            match epoll.wait(MAIN_TICK.as_millis() as i32, &mut ready) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmmError::Epoll(e)),
            }
            if let Some(event) = self.events.drain().into_iter().next() {
                return Ok(Ending::Guest(event));
            }
            let _ = stopped.read();
            for notice in stops.try_iter() {
                finished += 1;
                if notice.stop != VcpuStop::Stopped {
                    return Ok(Ending::Vcpu(notice));
                }
            }
            self.devices.flush_output();
            if VGA_DUMP_REQUESTED.swap(false, Ordering::Relaxed) {
                self.render_vga()?;
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            let signalled = TERMINATE_SIGNAL.load(Ordering::Relaxed) != 0;
            if timed_out || signalled || finished == vcpus {
                return Ok(Ending::Vmm);
            }
        }
    }

    /// Renders the VGA text buffer to the configured file (rewritten) or standard error.
    fn render_vga(&self) -> Result<(), VmmError> {
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

/// Feeds standard input to the serial port from a detached thread; it ends at end of input.
fn spawn_stdin_pump(devices: &LegacyDevices) -> Result<(), VmmError> {
    let serial = devices.serial.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = serial.pump_input(std::io::stdin());
        })
        .map(|_| ())
        .map_err(|source| VmmError::SpawnThread {
            name: "stdin".into(),
            source,
        })
}

/// Signals every vCPU thread until all have left KVM_RUN and finished. A signal that lands
/// before a thread enters KVM_RUN is lost, so the kick repeats.
fn kick_until_finished<T>(handles: &[JoinHandle<T>]) {
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Builds and runs a VM.
pub fn run(config: &VmConfig) -> Result<VmOutcome, VmmError> {
    Vm::build(config)?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(stop: VcpuStop, timed_out: bool, signal: Option<i32>) -> VmOutcome {
        VmOutcome {
            stop,
            timed_out,
            signal,
            reports: Vec::new(),
            culprit: None,
            emulated: EmulationStats::default(),
        }
    }

    #[test]
    fn test_vm_outcome_exit_code_by_ending() {
        assert_eq!(outcome(VcpuStop::DebugExit(7), false, None).exit_code(), 7);
        assert_eq!(outcome(VcpuStop::Reset, false, None).exit_code(), 0);
        assert_eq!(outcome(VcpuStop::Stopped, true, None).exit_code(), 124);
        assert_eq!(outcome(VcpuStop::Shutdown, false, None).exit_code(), 1);
    }

    #[test]
    fn test_vm_outcome_exit_code_signal_is_128_plus_number() {
        let o = outcome(VcpuStop::Stopped, false, Some(libc::SIGTERM));

        assert_eq!(o.exit_code(), 143);
    }
}
