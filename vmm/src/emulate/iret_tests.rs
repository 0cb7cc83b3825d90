//! Tests for `iret.rs` against the architectural definition (IRET cannot run natively at CPL 0).

use super::*;
use crate::emulate::testutil::{flat32_state, injected, long_mode_state, memory, run, DATA};
use crate::emulate::{CpuState, Outcome};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GDT: u64 = 0x30_000;
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS: u16 = 0x1b;
const USER_DS: u16 = 0x23;
const CODE64: u16 = 0x28;
const NOT_PRESENT_CS: u16 = 0x30;
const RING1_DS: u16 = 0x39;

/// Flat 4-GiB descriptors (accessed bit clear, to check IRET sets it).
fn gdt(mem: &GuestMemoryMmap) {
    let entries: [u64; 8] = [
        0,
        0x00cf_9a00_0000_ffff, // 0x08 kernel code 32
        0x00cf_9200_0000_ffff, // 0x10 kernel data
        0x00cf_fa00_0000_ffff, // 0x18 user code 32 (DPL 3)
        0x00cf_f200_0000_ffff, // 0x20 user data (DPL 3)
        0x00af_9a00_0000_ffff, // 0x28 kernel code 64
        0x00cf_1a00_0000_ffff, // 0x30 code, not present
        0x00cf_b200_0000_ffff, // 0x38 data, DPL 1
    ];
    for (i, e) in entries.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + i as u64 * 8)).unwrap();
    }
}

fn state32(mem: &GuestMemoryMmap) -> CpuState {
    gdt(mem);
    let mut state = flat32_state();
    state.sregs.gdt.base = GDT;
    state.sregs.gdt.limit = 8 * 8 - 1;
    state.sregs.cs.selector = KERNEL_CS;
    state.sregs.ss.selector = KERNEL_DS;
    state.regs.rsp = DATA;
    state
}

/// Writes 32-bit stack words at DATA.
fn stack32(mem: &GuestMemoryMmap, words: &[u32]) {
    for (i, w) in words.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(DATA + i as u64 * 4))
            .unwrap();
    }
}

const IRETD: [u8; 1] = [0xcf];

/// A stack image and the (vector, error code) it must raise.
type FaultCase<'a> = (&'a [u32], (u8, Option<u32>));

#[test]
fn test_iret32_same_privilege_restores_eip_cs_eflags() {
    // Arrange: CPL 0 returning to CPL 0 with IOPL=3, IF, AC and CF in the image.
    let mem = memory();
    let mut state = state32(&mem);
    let image = 0x4_3203u32; // AC | IOPL=3 | IF | CF | bit 1
    stack32(&mem, &[0x1234, u32::from(KERNEL_CS), image]);
    // Act
    let outcome = run(&mut state, &mem, &IRETD);
    // Assert
    assert!(matches!(outcome, Outcome::Emulated(wb) if wb.sregs && wb.regs && wb.nmi_unblocked));
    assert_eq!(state.regs.rip, 0x1234);
    assert_eq!(state.regs.rsp, DATA + 12);
    assert_eq!(state.regs.rflags, u64::from(image));
    assert_eq!(
        (
            state.sregs.cs.selector,
            state.sregs.cs.type_,
            state.sregs.cs.db
        ),
        (KERNEL_CS, 0xb, 1)
    );
    assert_eq!(state.sregs.cs.limit, 0xffff_ffff);
    // The accessed bit was set in the GDT.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(GDT + 8 + 5)).unwrap(), 0x9b);
}

#[test]
fn test_iret32_to_outer_privilege_loads_ss_esp_and_nulls_kernel_segments() {
    let mem = memory();
    let mut state = state32(&mem);
    state.sregs.ds.selector = KERNEL_DS;
    state.sregs.es = state.sregs.ds;
    state.sregs.es.selector = USER_DS;
    state.sregs.es.dpl = 3;
    stack32(
        &mem,
        &[
            0x8048000,
            u32::from(USER_CS),
            0x202,
            0xbfff_f000,
            u32::from(USER_DS),
        ],
    );
    let outcome = run(&mut state, &mem, &IRETD);
    assert!(matches!(outcome, Outcome::Emulated(_)));
    assert_eq!(state.regs.rip, 0x804_8000);
    assert_eq!(state.cpl(), 3);
    assert_eq!((state.sregs.cs.selector, state.sregs.cs.dpl), (USER_CS, 3));
    assert_eq!(
        (
            state.sregs.ss.selector,
            state.sregs.ss.dpl,
            state.sregs.ss.type_
        ),
        (USER_DS, 3, 3)
    );
    assert_eq!(state.regs.rsp, 0xbfff_f000);
    assert_eq!((state.sregs.ds.selector, state.sregs.ds.unusable), (0, 1));
    assert_eq!(
        (state.sregs.es.selector, state.sregs.es.unusable),
        (USER_DS, 0)
    );
}

#[test]
fn test_iret_flags_rules_protect_iopl_and_if_below_privilege() {
    // CPL 3 with IOPL 0: IOPL and IF cannot change, arithmetic flags can.
    let mem = memory();
    let mut state = state32(&mem);
    state.sregs.cs = Descriptor {
        raw: 0x00cf_fb00_0000_ffff,
        la: 0,
    }
    .segment(USER_CS);
    state.sregs.ss = Descriptor {
        raw: 0x00cf_f300_0000_ffff,
        la: 0,
    }
    .segment(USER_DS);
    state.regs.rflags = 0x202;
    stack32(&mem, &[0x10, u32::from(USER_CS), 0x3000 | 0x8d5 | 0x2]);
    run(&mut state, &mem, &IRETD);
    assert_eq!(state.regs.rflags, 0x202 | 0x8d5);
}

#[test]
fn test_iretw_changes_only_low_16_flag_bits() {
    let mem = memory();
    let mut state = state32(&mem);
    state.regs.rflags = 0x4_0202; // AC set
    for (i, w) in [0x5678u16, KERNEL_CS, 0x0003].iter().enumerate() {
        mem.write_obj(*w, GuestAddress(DATA + i as u64 * 2))
            .unwrap();
    }
    run(&mut state, &mem, &[0x66, 0xcf]);
    assert_eq!(state.regs.rip, 0x5678);
    assert_eq!(state.regs.rsp, DATA + 6);
    assert_eq!(state.regs.rflags, 0x4_0003);
}

#[test]
fn test_iret32_bad_selectors_fault_with_selector_error_codes() {
    let cases: [FaultCase; 7] = [
        (&[0, 0, 0x2], (13, Some(0))),                            // null CS
        (&[0, 0x48, 0x2], (13, Some(0x48))),                      // beyond GDT limit
        (&[0, u32::from(KERNEL_DS), 0x2], (13, Some(0x10))),      // data as CS
        (&[0, u32::from(NOT_PRESENT_CS), 0x2], (11, Some(0x30))), // not present
        (
            &[0, u32::from(USER_CS), 0x2, 0, u32::from(KERNEL_DS)],
            (13, Some(0x10)),
        ), // SS RPL != CS RPL
        (
            &[0, u32::from(USER_CS), 0x2, 0, u32::from(RING1_DS | 2)],
            (13, Some(0x38)),
        ), // SS DPL wrong
        (&[0x1234, 0x0b, 0x2], (13, Some(0x08))),                 // RPL 3, DPL 0
    ];
    for (words, expected) in cases {
        let mem = memory();
        let mut state = state32(&mem);
        stack32(&mem, words);
        let outcome = run(&mut state, &mem, &IRETD);
        assert_eq!(injected(&outcome), Some(expected), "{words:x?}");
        assert_eq!(state.regs.rip, crate::emulate::testutil::CODE);
    }
}

#[test]
fn test_iret32_eip_beyond_cs_limit_raises_gp0() {
    let mem = memory();
    let mut state = state32(&mem);
    mem.write_obj(0x0040_9a00_0000_0fffu64, GuestAddress(GDT + 8))
        .unwrap(); // byte-granular 4 KiB
    stack32(&mem, &[0x1000, u32::from(KERNEL_CS), 0x2]);
    assert_eq!(
        injected(&run(&mut state, &mem, &IRETD)),
        Some((13, Some(0)))
    );
}

#[test]
fn test_iret32_ss_not_present_raises_ss_fault() {
    let mem = memory();
    let mut state = state32(&mem);
    mem.write_obj(0x00cf_7200_0000_ffffu64, GuestAddress(GDT + 0x20))
        .unwrap(); // user data, P=0
    stack32(&mem, &[0, u32::from(USER_CS), 0x2, 0, u32::from(USER_DS)]);
    assert_eq!(
        injected(&run(&mut state, &mem, &IRETD)),
        Some((12, Some(0x20)))
    );
}

#[test]
fn test_iret_with_nt_set_is_unsupported() {
    let mem = memory();
    let mut state = state32(&mem);
    state.regs.rflags |= flags::NT;
    let outcome = run(&mut state, &mem, &IRETD);
    assert!(
        matches!(outcome, Outcome::Unsupported { ref mnemonic, mode: CpuMode::Protected32, .. } if mnemonic == "iretd")
    );
}

#[test]
fn test_iretq_same_privilege_pops_ss_rsp() {
    let mem = memory();
    gdt(&mem);
    let mut state = long_mode_state();
    state.sregs.gdt.base = GDT;
    state.sregs.gdt.limit = 8 * 8 - 1;
    state.regs.rsp = DATA;
    let frame = [
        0xffff_8000_0000_1000u64,
        u64::from(CODE64),
        0x246,
        DATA + 0x800,
        u64::from(KERNEL_DS),
    ];
    for (i, w) in frame.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(DATA + i as u64 * 8))
            .unwrap();
    }
    let outcome = run(&mut state, &mem, &[0x48, 0xcf]);
    assert!(matches!(outcome, Outcome::Emulated(_)));
    assert_eq!(state.regs.rip, 0xffff_8000_0000_1000);
    assert_eq!(state.regs.rsp, DATA + 0x800);
    assert_eq!(state.regs.rflags, 0x246);
    assert_eq!((state.sregs.cs.selector, state.sregs.cs.l), (CODE64, 1));
    assert_eq!(state.mode(), CpuMode::Long64);
}

#[test]
fn test_iret32_stack_page_fault_reports_address() {
    let mem = memory();
    let mut state = state32(&mem);
    state.sregs.cr0 |= crate::emulate::cpu::cr::CR0_PG;
    state.sregs.cr4 |= crate::emulate::cpu::cr::CR4_PAE;
    state.sregs.cr3 = 0x40_000; // empty PDPT: nothing mapped
    let outcome = run(&mut state, &mem, &IRETD);
    let Outcome::Inject(inj) = outcome else {
        panic!("expected #PF, got {outcome:?}")
    };
    assert_eq!(
        (inj.vector, inj.error_code, inj.cr2),
        (14, Some(0), Some(DATA))
    );
}
