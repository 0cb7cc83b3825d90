//! What KVM holds of a VM and its vCPUs, read for a snapshot and written back at restore
//! (docs/decisions/0013): per vCPU the registers, special registers, XSAVE, XCRs, debug
//! registers, LAPIC, MP state, pending events, every MSR KVM lists (the TSC among them) and the
//! TSC frequency; per VM the PICs, the IOAPIC, the PIT and the KVM clock.
//!
//! KVM's structures are kept as KVM's bytes (kvm-bindings' serde); the MSRs as index/value
//! pairs. The order of the writes at restore is the one KVM needs (Firecracker's): CPUID, MP
//! state, regs, sregs, XSAVE, XCRs, debug registers, LAPIC, MSRs (the TSC deadline after the
//! LAPIC), events last.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors reading or writing KVM state.
#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    /// A vCPU ioctl failed.
    #[error("unable to {op} of vCPU {id}: {source}")]
    Vcpu {
        /// vCPU index.
        id: u8,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// A VM ioctl failed.
    #[error("unable to {op} of the VM: {source}")]
    Vm {
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// The state names more CPUID entries or MSRs than KVM takes.
    #[error("vCPU {id}: {what} list too long for KVM ({len} entries)")]
    TooMany {
        /// vCPU index.
        id: u8,
        /// CPUID or MSRs.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// One MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    /// Its index.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// Everything KVM holds of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Every MSR KVM lists that reads back (the TSC included).
    pub msrs: Vec<MsrValue>,
    /// The guest TSC frequency in kHz, if KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// What KVM holds of the VM itself: the in-kernel interrupt controllers, the PIT, the clock.
#[derive(Serialize, Deserialize)]
pub struct KvmVmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock.
    pub clock: kvm_clock_data,
}

/// MSRs KVM lists but that are not state to carry: the ones that fail to read are dropped as
/// they are found. The list is the host's, read once.
fn msr_index_list() -> &'static [u32] {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    LIST.get_or_init(|| {
        Kvm::new()
            .and_then(|kvm| kvm.get_msr_index_list())
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default()
    })
}

fn msrs_of(entries: &[kvm_msr_entry], id: u8) -> Result<Msrs, KvmStateError> {
    Msrs::from_entries(entries).map_err(|_| KvmStateError::TooMany {
        id,
        what: "MSR",
        len: entries.len(),
    })
}

/// Reads every listed MSR that KVM answers; one that fails is skipped (KVM stops at the first
/// failure and says how many it read).
fn read_msrs(fd: &VcpuFd, id: u8) -> Result<Vec<MsrValue>, KvmStateError> {
    let mut pending: Vec<kvm_msr_entry> = msr_index_list()
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let mut msrs = msrs_of(&pending, id)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| KvmStateError::Vcpu {
                id,
                op: "read the MSRs",
                source,
            })?;
        let read = read.min(pending.len());
        out.extend(msrs.as_slice()[..read].iter().map(|e| MsrValue {
            index: e.index,
            data: e.data,
        }));
        // Entry `read` failed: skip it and go on after it.
        pending.drain(..(read + 1).min(pending.len()));
    }
    Ok(out)
}

/// Writes `values`; one KVM refuses is skipped (the host may differ in a harmless MSR).
fn write_msrs(fd: &VcpuFd, id: u8, values: &[MsrValue]) -> Result<usize, KvmStateError> {
    let mut pending: Vec<kvm_msr_entry> = values
        .iter()
        .map(|v| kvm_msr_entry {
            index: v.index,
            data: v.data,
            ..Default::default()
        })
        .collect();
    let mut skipped = 0;
    while !pending.is_empty() {
        let msrs = msrs_of(&pending, id)?;
        let set = fd.set_msrs(&msrs).map_err(|source| KvmStateError::Vcpu {
            id,
            op: "write the MSRs",
            source,
        })?;
        if set < pending.len() {
            skipped += 1;
        }
        pending.drain(..(set + 1).min(pending.len()));
    }
    Ok(skipped)
}

/// Reads vCPU `id`'s state. Call with the vCPU out of KVM_RUN and its pending I/O completed.
pub fn save_vcpu(fd: &VcpuFd, id: u8) -> Result<VcpuState, KvmStateError> {
    let err = |op: &'static str| move |source| KvmStateError::Vcpu { id, op, source };
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(err("read the CPUID"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().to_vec(),
        mp_state: fd.get_mp_state().map_err(err("read the MP state"))?,
        regs: fd.get_regs().map_err(err("read the registers"))?,
        sregs: fd.get_sregs().map_err(err("read the special registers"))?,
        xsave: fd.get_xsave().map_err(err("read the XSAVE area"))?,
        xcrs: fd.get_xcrs().map_err(err("read the XCRs"))?,
        debugregs: fd
            .get_debug_regs()
            .map_err(err("read the debug registers"))?,
        lapic: fd.get_lapic().map_err(err("read the LAPIC"))?,
        events: fd
            .get_vcpu_events()
            .map_err(err("read the pending events"))?,
        msrs: read_msrs(fd, id)?,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Writes `state` into a freshly created vCPU. Returns how many MSRs KVM refused (skipped).
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<usize, KvmStateError> {
    let id = state.id;
    let err = |op: &'static str| move |source| KvmStateError::Vcpu { id, op, source };
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| KvmStateError::TooMany {
        id,
        what: "CPUID",
        len: state.cpuid.len(),
    })?;
    fd.set_cpuid2(&cpuid).map_err(err("write the CPUID"))?;
    if let Some(khz) = state.tsc_khz {
        // A host whose TSC runs at another rate may refuse to scale: the guest then sees the
        // host's rate, as it would after live migration without TSC scaling.
        let _ = fd.set_tsc_khz(khz);
    }
    fd.set_mp_state(state.mp_state)
        .map_err(err("write the MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(err("write the registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(err("write the special registers"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4 KiB, its size is fixed by its type);
    // KVM reads no more than that for KVM_SET_XSAVE.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(err("write the XSAVE area"))?;
    fd.set_xcrs(&state.xcrs).map_err(err("write the XCRs"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(err("write the debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(err("write the LAPIC"))?;
    let skipped = write_msrs(fd, id, &state.msrs)?;
    fd.set_vcpu_events(&state.events)
        .map_err(err("write the pending events"))?;
    Ok(skipped)
}

fn chip(id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id: id,
        ..Default::default()
    }
}

/// Reads the VM's interrupt controllers, PIT and clock (vCPUs paused).
pub fn save_vm(fd: &VmFd) -> Result<KvmVmState, KvmStateError> {
    let err = |op: &'static str| move |source| KvmStateError::Vm { op, source };
    let mut pic_master = chip(KVM_IRQCHIP_PIC_MASTER);
    let mut pic_slave = chip(KVM_IRQCHIP_PIC_SLAVE);
    let mut ioapic = chip(KVM_IRQCHIP_IOAPIC);
    fd.get_irqchip(&mut pic_master)
        .map_err(err("read the master PIC"))?;
    fd.get_irqchip(&mut pic_slave)
        .map_err(err("read the slave PIC"))?;
    fd.get_irqchip(&mut ioapic)
        .map_err(err("read the IOAPIC"))?;
    Ok(KvmVmState {
        pic_master,
        pic_slave,
        ioapic,
        pit: fd.get_pit2().map_err(err("read the PIT"))?,
        clock: fd.get_clock().map_err(err("read the clock"))?,
    })
}

/// Writes the VM's interrupt controllers, PIT and clock (after KVM_CREATE_IRQCHIP/PIT2).
pub fn restore_vm(fd: &VmFd, state: &KvmVmState) -> Result<(), KvmStateError> {
    let err = |op: &'static str| move |source| KvmStateError::Vm { op, source };
    fd.set_pit2(&state.pit).map_err(err("write the PIT"))?;
    let mut clock = state.clock;
    // Only the clock value carries over; the flags describe how the source host read it.
    clock.flags = 0;
    fd.set_clock(&clock).map_err(err("write the clock"))?;
    for (c, what) in [
        (&state.pic_master, "write the master PIC"),
        (&state.pic_slave, "write the slave PIC"),
        (&state.ioapic, "write the IOAPIC"),
    ] {
        fd.set_irqchip(c).map_err(err(what))?;
    }
    Ok(())
}
