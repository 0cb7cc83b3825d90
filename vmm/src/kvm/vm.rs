//! The KVM VM: guest memory slots, the in-kernel irqchip and PIT, irqfds, vCPU creation.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

use super::irq::KvmWiring;

/// Errors creating or setting up the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("unable to open /dev/kvm: {0} (is KVM available and accessible?)")]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// KVM_CREATE_VM failed.
    #[error("unable to create the KVM VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("unable to register guest memory slot {slot} with KVM: {source}")]
    SetMemoryRegion {
        /// Memslot number.
        slot: u32,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_TSS_ADDR failed.
    #[error("unable to set the TSS address: {0}")]
    SetTssAddress(kvm_ioctls::Error),
    /// KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("unable to set the identity map address: {0}")]
    SetIdentityMapAddress(kvm_ioctls::Error),
    /// The firmware ROM's memslot could not be registered.
    #[error("unable to register the firmware ROM (memslot {slot}) with KVM: {source}")]
    SetRomRegion {
        /// Memslot number.
        slot: u32,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_CREATE_IRQCHIP failed.
    #[error("unable to create the in-kernel irqchip: {0}")]
    CreateIrqchip(kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("unable to create the in-kernel PIT: {0}")]
    CreatePit(kvm_ioctls::Error),
    /// KVM_IRQFD failed.
    #[error("unable to register an irqfd for GSI {gsi}: {source}")]
    RegisterIrqfd {
        /// The interrupt line.
        gsi: u32,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("unable to read the supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("unable to create vCPU {id}: {source}")]
    CreateVcpu {
        /// vCPU index.
        id: u8,
        /// The cause.
        source: kvm_ioctls::Error,
    },
}

/// Where KVM puts the three pages of its real-mode TSS (inside the MMIO hole, unused there).
/// QEMU's address: below the 16 MiB under 4 GiB that firmware ROMs may take (`--firmware`).
const KVM_TSS_ADDRESS: usize = 0xfeff_d000;
/// Where KVM puts its identity-mapped page table for real mode without unrestricted guest
/// (the page below the TSS, as in QEMU; KVM's default would lie inside a large ROM).
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

/// An open KVM VM.
pub struct KvmVm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    wiring: Arc<KvmWiring>,
    /// Firmware ROM mappings behind read-only memslots (`--firmware`).
    roms: std::sync::Mutex<Vec<MmapRegion>>,
}

impl KvmVm {
    /// Opens /dev/kvm and creates a VM.
    pub fn new() -> Result<KvmVm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        let fd = Arc::new(kvm.create_vm().map_err(VmError::CreateVm)?);
        let wiring = Arc::new(KvmWiring::new(Arc::clone(&fd)));
        Ok(KvmVm {
            kvm,
            fd,
            wiring,
            roms: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The largest number of vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM's one ioeventfd/irqfd/GSI-routing wiring, shared by every device.
    pub fn wiring(&self) -> Arc<KvmWiring> {
        Arc::clone(&self.wiring)
    }

    /// Registers each region of guest memory as one memslot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region's host mapping is owned by `mem`, which the caller keeps alive
            // (in the same `Vm` as this KvmVm) for as long as the VM can run; the size and
            // address are the mapping's own.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(|source| VmError::SetMemoryRegion { slot, source })?;
        }
        Ok(())
    }

    /// Registers `rom` as a read-only memslot at guest address `gpa` (a firmware ROM: guest
    /// writes there become MMIO exits that no device claims) and keeps the mapping as long as
    /// the VM.
    pub fn register_rom(&self, slot: u32, gpa: u64, rom: MmapRegion) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: kvm_bindings::KVM_MEM_READONLY,
            guest_phys_addr: gpa,
            memory_size: rom.size() as u64,
            userspace_addr: rom.as_ptr() as u64,
        };
        // SAFETY: the mapping is moved into `self.roms` below and lives as long as this VM
        // descriptor; its address and size are the mapping's own.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|source| VmError::SetRomRegion { slot, source })?;
        self.roms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(rom);
        Ok(())
    }

    /// Creates the in-kernel PIC/IOAPIC/LAPIC and PIT.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::SetIdentityMapAddress)?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::SetTssAddress)?;
        self.fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::CreatePit)
    }

    /// Makes a write to `fd` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|source| VmError::RegisterIrqfd { gsi, source })
    }

    /// The CPUID KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(|source| VmError::CreateVcpu { id, source })
    }
}
