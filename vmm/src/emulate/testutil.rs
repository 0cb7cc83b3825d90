//! Test helpers: guest states for each mode, guest memory with identity page tables.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{emulate, CpuState, EmulationStats, GuestFeatures, Outcome};

/// Guest RAM size for tests.
pub const MEM_SIZE: usize = 4 << 20;
/// Where test code is placed.
pub const CODE: u64 = 0x10_0000;
/// A scratch data area.
pub const DATA: u64 = 0x20_0000;
/// PML4 of the identity page tables.
pub const PML4: u64 = 0x1000;
/// Page table covering the first 2 MiB with 4-KiB pages (for per-page tests).
pub const PT0: u64 = 0x4000;

fn segment(type_: u8, selector: u16, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

fn features() -> GuestFeatures {
    GuestFeatures {
        smap: true,
        lzcnt: true,
        bmi1: true,
        phys_addr_bits: 46,
        mxcsr_mask: 0xffff,
        // What FXSAVE stores is compared with the host CPU's, so this follows the host.
        fxsave_pointers_on_error_only: GuestFeatures::host().fxsave_pointers_on_error_only,
    }
}

/// 64-bit mode, CPL 0, paging on (identity map built by [`memory`]), SSE enabled.
pub fn long_mode_state() -> CpuState {
    let data = segment(3, 0x18, false);
    let sregs = kvm_sregs {
        cs: segment(0xb, 0x10, true),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        cr0: 0x8005_0033,
        cr3: PML4,
        cr4: 0x620,
        efer: 0xd00,
        ..Default::default()
    };
    let regs = kvm_regs {
        rip: CODE,
        rflags: 0x2,
        rsp: DATA + 0x1000,
        ..Default::default()
    };
    CpuState {
        regs,
        sregs,
        fpu: fpu(),
        xcr0: 1,
        features: features(),
    }
}

/// 32-bit protected mode, flat segments, no paging, CPL 0, SSE enabled.
pub fn flat32_state() -> CpuState {
    let data = segment(3, 0x18, false);
    let sregs = kvm_sregs {
        cs: segment(0xb, 0x10, false),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        cr0: 0x33,
        cr4: 0x600,
        ..Default::default()
    };
    let regs = kvm_regs {
        rip: CODE,
        rflags: 0x2,
        rsp: DATA + 0x1000,
        ..Default::default()
    };
    CpuState {
        regs,
        sregs,
        fpu: fpu(),
        xcr0: 1,
        features: features(),
    }
}

/// Guest RAM with identity page tables: 0-2 MiB in 4-KiB pages (PT0), 2-4 MiB as one 2-MiB page.
pub fn memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let put = |addr: u64, value: u64| mem.write_obj(value, GuestAddress(addr)).expect("write");
    put(PML4, 0x2000 | 0x7);
    put(0x2000, 0x3000 | 0x7);
    put(0x3000, PT0 | 0x7);
    put(0x3008, 0x20_0000 | 0x87);
    for page in 0..512u64 {
        put(PT0 + page * 8, (page << 12) | 0x7);
    }
    mem
}

/// Runs the instruction `bytes` at CS:RIP (bytes given as if KVM reported them).
pub fn run(state: &mut CpuState, mem: &GuestMemoryMmap, bytes: &[u8]) -> Outcome {
    let mut stats = EmulationStats::default();
    emulate(state, mem, Some(bytes), &mut stats).expect("emulate")
}

/// Runs the instruction placed in guest memory at the (identity-mapped) RIP.
pub fn run_from_memory(state: &mut CpuState, mem: &GuestMemoryMmap, bytes: &[u8]) -> Outcome {
    mem.write_slice(bytes, GuestAddress(state.regs.rip))
        .expect("write code");
    let mut stats = EmulationStats::default();
    emulate(state, mem, None, &mut stats).expect("emulate")
}

/// The fault an outcome injects, as (vector, error code).
pub fn injected(outcome: &Outcome) -> Option<(u8, Option<u32>)> {
    match outcome {
        Outcome::Inject(i) => Some((i.vector, i.error_code)),
        _ => None,
    }
}

/// Reads a little-endian u64 from guest memory.
pub fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
    mem.read_obj(GuestAddress(addr)).expect("read")
}
