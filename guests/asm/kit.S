/*
 * kit: the ring-0 start code of the Rust test guests (rust/). It only
 * sets the machine up, then runs the guest in ring 3:
 *
 *   PVH entry (32-bit, EBX -> hvm_start_info) -> long mode with the static
 *   user-accessible identity map of the first 4 GiB (RAM, the 32-bit PCI
 *   hole, virtio-mmio windows, the LAPIC/IOAPIC), SSE enabled (CR0.MP,
 *   CR0.NE, CR0.EM clear, CR4.OSFXSR, CR4.OSXMMEXCPT: compiled Rust uses
 *   SSE), a TSS whose I/O bitmap allows every port, exception gates 0-31
 *   that report; then iretq to the Rust symbol kit_entry(start_info) in
 *   ring 3 with IOPL=3 and IF=0.
 *
 * kit_halt (called from ring 3 when the exit port did not stop the VM)
 * is a ud2 that the #UD stub recognises and turns into a quiet halt in
 * ring 0: under PVM an `int n` from ring 3 raises #UD instead of going
 * through its gate, so a software interrupt is no way down.
 *
 * Ring 0 uses only plain integer instructions (under PVM it goes through
 * KVM's instruction emulator). Everything else -- output, cmdline, PCI,
 * virtio -- is Rust in ring 3.
 *
 * Also here, for the Rust code: memcpy, memmove, memset, memcmp, bcmp
 * (rep movsb/stosb and a byte loop; core calls them by name).
 */
#include "common.h"

/* Linux's selector layout: PVM expects the standard user selectors. */
#define KERNEL_CS	0x10
#define KERNEL_DS	0x18
#define USER_DS		(0x28 | 3)
#define USER_CS		(0x30 | 3)
#define TSS_SEL		0x40

#define CR0_PE		0x1
#define CR0_MP		0x2
#define CR0_EM		0x4
#define CR0_NE		0x20
#define CR0_PG		0x80000000
#define CR4_PAE		0x20
#define CR4_OSFXSR	0x200
#define CR4_OSXMMEXCPT	0x400

	.code32
#include "pvh_note.S"

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	%cr4, %eax
	or	$(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$0xc0000080, %ecx	/* EFER */
	rdmsr
	or	$0x100, %eax		/* LME */
	wrmsr
	mov	%cr0, %eax
	and	$~CR0_EM, %eax
	or	$(CR0_PG | CR0_NE | CR0_MP | CR0_PE), %eax
	mov	%eax, %cr0
	lgdt	gdt_desc
	ljmp	$KERNEL_CS, $kernel64

	.code64
kernel64:
	mov	$KERNEL_DS, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	%ebx, %ebx		/* zero-extend hvm_start_info */
	/* TSS descriptor base */
	mov	$tss, %eax
	mov	%ax, gdt_tss + 2
	shr	$16, %eax
	mov	%al, gdt_tss + 4
	mov	%ah, gdt_tss + 7
	mov	$TSS_SEL, %ax
	ltr	%ax
	/* exception gates 0-31 -> exc_stubs */
	mov	$exc_stubs, %eax
	mov	$idt, %rdi
	mov	$32, %ecx
1:	call	set_gate
	add	$16, %eax
	add	$16, %rdi
	dec	%ecx
	jnz	1b
	lidt	idt_desc
	/* to ring 3: kit_entry(start_info); RSP as after a call (16n + 8) */
	mov	%rbx, %rdi
	pushq	$USER_DS
	pushq	$(user_stack_top - 8)
	pushq	$0x3002			/* IOPL 3, IF 0 (PVM ignores IOPL: the
					 * TSS I/O bitmap grants the ports) */
	pushq	$USER_CS
	pushq	$kit_entry
	iretq

/* set_gate: RDI -> IDT entry, EAX = handler; 64-bit interrupt gate,
 * DPL 3, kernel CS. Preserves EAX. */
set_gate:
	push	%rax
	mov	%ax, (%rdi)
	movw	$KERNEL_CS, 2(%rdi)
	movw	$0xee00, 4(%rdi)
	shr	$16, %eax
	mov	%ax, 6(%rdi)
	pop	%rax
	ret

/* Exception stubs, 16 bytes apart: report the vector and the two qwords
 * above it on the stack (error code and/or RIP), "done", exit code 2;
 * a #UD at kit_halt halts without a word. */
	.balign 16
exc_stubs:
	.set	vec, 0
	.rept	32
	.balign 16
	pushq	$vec
	jmp	exc_common
	.set	vec, vec + 1
	.endr
exc_common:
	cmpq	$6, (%rsp)
	jne	1f
	cmpq	$kit_halt, 8(%rsp)
	je	halt
1:	mov	$str_exc, %rsi
	call	puts_64
	pop	%rax
	call	print_dec_64
	call	putsp_64
	mov	%rsp, %rsi
	call	print_hex64_64
	call	putsp_64
	add	$8, %rsi
	call	print_hex64_64
	call	putnl_64
	movl	$2, exit_code
	jmp	finish_64

halt:
	cli
	hlt
	jmp	halt

/* Ring 3: the way down to halt (see exc_common). */
	.globl	kit_halt
kit_halt:
	ud2

/* The C memory functions the Rust code needs (System V ABI; ring 3). */
	.globl	memcpy
memcpy:
	mov	%rdi, %rax
	mov	%rdx, %rcx
	rep movsb
	ret

	.globl	memmove
memmove:
	mov	%rdi, %rax
	mov	%rdi, %rcx
	sub	%rsi, %rcx
	cmp	%rdx, %rcx		/* dst - src >= n (unsigned): forward */
	jae	memcpy
	lea	-1(%rsi, %rdx), %rsi
	lea	-1(%rdi, %rdx), %rdi
	mov	%rdx, %rcx
	std
	rep movsb
	cld
	ret

	.globl	memset
memset:
	mov	%rdi, %r8
	mov	%esi, %eax
	mov	%rdx, %rcx
	rep stosb
	mov	%r8, %rax
	ret

	.globl	memcmp
	.globl	bcmp
memcmp:
bcmp:
	xor	%eax, %eax
	test	%rdx, %rdx
	jz	2f
1:	movzbl	(%rdi), %eax
	movzbl	(%rsi), %ecx
	sub	%ecx, %eax
	jnz	2f
	inc	%rdi
	inc	%rsi
	dec	%rdx
	jnz	1b
2:	ret

#define BITS64
#include "common.h"
#include "common.S"
#define USER_PAGES
#include "pagetables.S"

	.section .data
	.balign 8
gdt:
	.quad	0
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x10: kernel code, 64-bit */
	.quad	0x00cf92000000ffff	/* 0x18: kernel data */
	.quad	0x00cffa000000ffff	/* 0x20: user code, 32-bit, DPL 3 (unused) */
	.quad	0x00cff2000000ffff	/* 0x28: user data, DPL 3 */
	.quad	0x00affa000000ffff	/* 0x30: user code, 64-bit, DPL 3 */
	.quad	0
gdt_tss:				/* 0x40: 64-bit TSS, base set at run time */
	.word	tss_end - tss - 1, 0
	.byte	0, 0x89, 0, 0
	.quad	0
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt
	.balign 8
tss:
	.long	0
	.quad	stack_top		/* rsp0 */
	.fill	104 - 12 - 2, 1, 0
	.word	104			/* I/O permission bitmap offset */
	.fill	8192, 1, 0		/* all ports allowed */
	.byte	0xff
tss_end:
	.balign 16
idt:
	.fill	256 * 16, 1, 0
idt_desc:
	.word	256 * 16 - 1
	.quad	idt

	.section .rodata
str_exc:	.asciz "error: exception "

/* The ring-3 stack: 128 KiB, part of the file image like the ring-0 one. */
	.section .stack, "aw", @progbits
	.balign 16
	.fill	131072, 1, 0
user_stack_top:

#include "stack.S"
