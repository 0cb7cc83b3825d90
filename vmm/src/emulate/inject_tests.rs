//! Tests for `inject.rs`: KVM event encoding, and delivery through the IVT/IDT against the
//! architectural definition.

use super::*;
use crate::emulate::testutil::{flat32_state, long_mode_state, memory, read_u64 as mem_u64, DATA};
use kvm_bindings::kvm_vcpu_events;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GDT: u64 = 0x30_000;
const IDT: u64 = 0x32_000;
const TSS: u64 = 0x34_000;
const KERNEL_CS32: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS32: u16 = 0x1b;
const USER_DS: u16 = 0x23;
const KERNEL_CS64: u16 = 0x28;
const USER_CS64: u16 = 0x33;

fn gdt(mem: &GuestMemoryMmap, state: &mut CpuState) {
    let entries: [u64; 7] = [
        0,
        0x00cf_9a00_0000_ffff, // 0x08 kernel code 32
        0x00cf_9200_0000_ffff, // 0x10 kernel data
        0x00cf_fa00_0000_ffff, // 0x18 user code 32
        0x00cf_f200_0000_ffff, // 0x20 user data
        0x00af_9a00_0000_ffff, // 0x28 kernel code 64
        0x00af_fa00_0000_ffff, // 0x30 user code 64
    ];
    for (i, e) in entries.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + i as u64 * 8)).unwrap();
    }
    state.sregs.gdt.base = GDT;
    state.sregs.gdt.limit = 7 * 8 - 1;
    state.sregs.idt.base = IDT;
    state.sregs.idt.limit = 0xfff;
    state.sregs.tr.base = TSS;
    state.sregs.tr.type_ = 0xb;
}

/// A 64-bit gate: interrupt gate (0xE) or trap gate (0xF).
fn gate64(
    mem: &GuestMemoryMmap,
    vector: u8,
    selector: u16,
    offset: u64,
    kind: u8,
    dpl: u8,
    ist: u8,
) {
    let low = (offset & 0xffff)
        | (u64::from(selector) << 16)
        | (u64::from(ist) << 32)
        | (u64::from(0x80 | (dpl << 5) | kind) << 40)
        | (((offset >> 16) & 0xffff) << 48);
    let addr = IDT + u64::from(vector) * 16;
    mem.write_obj(low, GuestAddress(addr)).unwrap();
    mem.write_obj(offset >> 32, GuestAddress(addr + 8)).unwrap();
}

fn gate32(mem: &GuestMemoryMmap, vector: u8, selector: u16, offset: u32, kind: u8, dpl: u8) {
    let raw = u64::from(offset & 0xffff)
        | (u64::from(selector) << 16)
        | (u64::from(0x80 | (dpl << 5) | kind) << 40)
        | (u64::from(offset >> 16) << 48);
    mem.write_obj(raw, GuestAddress(IDT + u64::from(vector) * 8))
        .unwrap();
}

fn soft(vector: u8) -> Injection {
    Injection {
        vector,
        error_code: None,
        cr2: None,
        kind: EventKind::SoftwareInterrupt,
    }
}

fn stack(mem: &GuestMemoryMmap, top: u64, count: usize, size: u64) -> Vec<u64> {
    (0..count as u64)
        .map(|i| {
            let mut buf = [0u8; 8];
            mem.read_slice(&mut buf[..size as usize], GuestAddress(top + i * size))
                .unwrap();
            u64::from_le_bytes(buf)
        })
        .collect()
}

#[test]
fn test_apply_to_events_exception_replaces_kvm_queued_ud() {
    // Arrange: KVM queued #UD with the emulation-failure exit.
    let mut events = kvm_vcpu_events::default();
    events.exception.injected = 1;
    events.exception.nr = 6;
    let mut sregs = kvm_bindings::kvm_sregs::default();
    let inj = Injection {
        vector: 13,
        error_code: Some(0x10),
        cr2: None,
        kind: EventKind::Exception,
    };
    // Act
    let sregs_changed = inj.apply_to_events(&mut events, &mut sregs);
    // Assert
    assert!(!sregs_changed);
    let ex = events.exception;
    assert_eq!(
        (
            ex.injected,
            ex.pending,
            ex.nr,
            ex.has_error_code,
            ex.error_code
        ),
        (1, 0, 13, 1, 0x10)
    );
}

#[test]
fn test_apply_to_events_page_fault_sets_cr2() {
    let mut events = kvm_vcpu_events::default();
    let mut sregs = kvm_bindings::kvm_sregs::default();
    let inj = Injection {
        vector: 14,
        error_code: Some(2),
        cr2: Some(0xdead_0000),
        kind: EventKind::Exception,
    };
    assert!(inj.apply_to_events(&mut events, &mut sregs));
    assert_eq!(sregs.cr2, 0xdead_0000);
    assert_eq!((events.exception.nr, events.exception.error_code), (14, 2));
}

#[test]
fn test_apply_to_events_software_interrupt_uses_interrupt_field() {
    let mut events = kvm_vcpu_events::default();
    events.exception.pending = 1;
    events.exception.nr = 6;
    let mut sregs = kvm_bindings::kvm_sregs::default();
    soft(0x80).apply_to_events(&mut events, &mut sregs);
    assert_eq!(
        (
            events.interrupt.injected,
            events.interrupt.nr,
            events.interrupt.soft
        ),
        (1, 0x80, 0)
    );
    assert_eq!(
        (events.exception.injected, events.exception.pending),
        (0, 0)
    );
}

#[test]
fn test_discard_emulation_failure_ud_leaves_other_exceptions() {
    let mut events = kvm_vcpu_events::default();
    events.exception.injected = 1;
    events.exception.nr = 14;
    assert!(!discard_emulation_failure_ud(&mut events));
    assert_eq!(events.exception.injected, 1);
}

#[test]
fn test_deliver_long_int3_same_privilege_pushes_frame_and_clears_if() {
    // Arrange
    let mem = memory();
    let mut state = long_mode_state();
    gdt(&mem, &mut state);
    gate64(&mem, 3, KERNEL_CS64, 0xffff_8000_0000_2000, 0xe, 3, 0);
    state.regs.rsp = DATA + 0x808;
    state.regs.rflags = 0x246;
    state.regs.rip = 0x10_0001;
    // Act
    let outcome = deliver_through_idt(&mut state, &mem, &soft(3)).unwrap();
    // Assert
    assert!(matches!(outcome, Outcome::Emulated(wb) if wb.regs && wb.sregs));
    assert_eq!(state.regs.rip, 0xffff_8000_0000_2000);
    assert_eq!(state.regs.rsp, DATA + 0x800 - 40);
    assert_eq!(state.regs.rflags, 0x046);
    assert_eq!(
        (state.sregs.cs.selector, state.sregs.cs.l),
        (KERNEL_CS64, 1)
    );
    let frame = stack(&mem, state.regs.rsp, 5, 8);
    assert_eq!(frame, vec![0x10_0001, 0x10, 0x246, DATA + 0x808, 0x18]);
}

#[test]
fn test_deliver_long_page_fault_uses_ist_and_pushes_error_code() {
    let mem = memory();
    let mut state = long_mode_state();
    gdt(&mem, &mut state);
    gate64(&mem, 14, KERNEL_CS64, 0xffff_8000_0000_3000, 0xe, 0, 2);
    mem.write_obj(DATA + 0xf00, GuestAddress(TSS + 0x24 + 8))
        .unwrap(); // IST2
    let inj = Injection {
        vector: 14,
        error_code: Some(0x2),
        cr2: Some(0x1234),
        kind: EventKind::Exception,
    };
    deliver_through_idt(&mut state, &mem, &inj).unwrap();
    assert_eq!(state.regs.rsp, DATA + 0xf00 - 48);
    assert_eq!(mem_u64(&mem, state.regs.rsp), 0x2);
    assert_eq!(mem_u64(&mem, state.regs.rsp + 8), 0x10_0000);
    assert_eq!(state.sregs.cr2, 0x1234);
}

#[test]
fn test_deliver_long_from_user_switches_to_rsp0_with_null_ss() {
    let mem = memory();
    let mut state = long_mode_state();
    gdt(&mem, &mut state);
    gate64(&mem, 0x80, KERNEL_CS64, 0xffff_8000_0000_4000, 0xf, 3, 0);
    mem.write_obj(DATA + 0xe00, GuestAddress(TSS + 4)).unwrap(); // RSP0
    state.sregs.cs.selector = USER_CS64;
    state.sregs.cs.dpl = 3;
    state.sregs.ss.selector = USER_DS;
    state.sregs.ss.dpl = 3;
    state.regs.rsp = 0x7fff_0000;
    state.regs.rflags = 0x202;
    deliver_through_idt(&mut state, &mem, &soft(0x80)).unwrap();
    assert_eq!(state.cpl(), 0);
    assert_eq!((state.sregs.ss.selector, state.sregs.ss.unusable), (0, 1));
    assert_eq!(state.regs.rflags, 0x202); // trap gate keeps IF
    let frame = stack(&mem, state.regs.rsp, 5, 8);
    assert_eq!(
        frame,
        vec![
            0x10_0000,
            u64::from(USER_CS64),
            0x202,
            0x7fff_0000,
            u64::from(USER_DS)
        ]
    );
    assert_eq!(state.regs.rsp, DATA + 0xe00 - 40);
}

#[test]
fn test_deliver_protected_gp_same_privilege_pushes_error_code() {
    let mem = memory();
    let mut state = flat32_state();
    gdt(&mem, &mut state);
    gate32(&mem, 13, KERNEL_CS32, 0xc000_1000, 0xe, 0);
    state.sregs.cs.selector = KERNEL_CS32;
    state.regs.rsp = DATA + 0x100;
    state.regs.rflags = 0x202;
    let inj = Injection {
        vector: 13,
        error_code: Some(0x18),
        cr2: None,
        kind: EventKind::Exception,
    };
    deliver_through_idt(&mut state, &mem, &inj).unwrap();
    assert_eq!(state.regs.rip, 0xc000_1000);
    assert_eq!(state.regs.rsp, DATA + 0x100 - 16);
    assert_eq!(
        stack(&mem, state.regs.rsp, 4, 4),
        vec![0x18, 0x10_0000, 0x8, 0x202]
    );
    assert_eq!(state.regs.rflags, 0x2);
}

#[test]
fn test_deliver_protected_from_ring3_uses_tss_ss0_esp0() {
    let mem = memory();
    let mut state = flat32_state();
    gdt(&mem, &mut state);
    gate32(&mem, 0x80, KERNEL_CS32, 0xc000_2000, 0xf, 3);
    mem.write_obj((DATA + 0x400) as u32, GuestAddress(TSS + 4))
        .unwrap(); // ESP0
    mem.write_obj(u32::from(KERNEL_DS), GuestAddress(TSS + 8))
        .unwrap(); // SS0
    state.sregs.cs.selector = USER_CS32;
    state.sregs.cs.dpl = 3;
    state.sregs.ss.selector = USER_DS;
    state.sregs.ss.dpl = 3;
    state.regs.rsp = 0xbfff_0000;
    deliver_through_idt(&mut state, &mem, &soft(0x80)).unwrap();
    assert_eq!(
        (state.sregs.ss.selector, state.sregs.ss.dpl),
        (KERNEL_DS, 0)
    );
    assert_eq!(
        (state.sregs.cs.selector, state.sregs.cs.dpl),
        (KERNEL_CS32, 0)
    );
    assert_eq!(state.regs.rsp, DATA + 0x400 - 20);
    let frame = stack(&mem, state.regs.rsp, 5, 4);
    assert_eq!(
        frame,
        vec![
            0x10_0000,
            u64::from(USER_CS32),
            0x2,
            0xbfff_0000,
            u64::from(USER_DS)
        ]
    );
}

#[test]
fn test_deliver_real_mode_uses_ivt() {
    let mem = memory();
    let mut state = flat32_state();
    state.sregs.cr0 &= !1;
    state.sregs.cs = kvm_segment {
        selector: 0x1000,
        base: 0x10000,
        limit: 0xffff,
        type_: 0xb,
        present: 1,
        s: 1,
        ..Default::default()
    };
    state.sregs.ss = kvm_segment {
        selector: 0x2000,
        base: 0x20000,
        limit: 0xffff,
        type_: 3,
        present: 1,
        s: 1,
        ..Default::default()
    };
    state.sregs.idt.base = 0;
    state.sregs.idt.limit = 0x3ff;
    state.regs.rip = 0x0123;
    state.regs.rsp = 0x0100;
    state.regs.rflags = 0x0202;
    mem.write_obj(0xf000_e2c3u32, GuestAddress(0x10 * 4))
        .unwrap();
    deliver_through_idt(&mut state, &mem, &soft(0x10)).unwrap();
    assert_eq!(
        (state.sregs.cs.selector, state.sregs.cs.base, state.regs.rip),
        (0xf000, 0xf0000, 0xe2c3)
    );
    assert_eq!(state.regs.rsp, 0xfa);
    assert_eq!(stack(&mem, 0x200fa, 3, 2), vec![0x0123, 0x1000, 0x0202]);
    assert_eq!(state.regs.rflags, 0x2);
}

#[test]
fn test_deliver_through_task_gate_is_unsupported() {
    let mem = memory();
    let mut state = flat32_state();
    gdt(&mem, &mut state);
    gate32(&mem, 8, 0x40, 0, 0x5, 0);
    let inj = Injection {
        vector: 8,
        error_code: Some(0),
        cr2: None,
        kind: EventKind::Exception,
    };
    let outcome = deliver_through_idt(&mut state, &mem, &inj).unwrap();
    assert!(matches!(
        outcome,
        Outcome::Unsupported {
            detail: "task gate",
            ..
        }
    ));
}
