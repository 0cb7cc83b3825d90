/*
 * ring3: a PVH guest that reports like the pvh guest (in 64-bit ring 0),
 * then enters ring 3 with iretq (IOPL=3 and a TSS I/O bitmap allowing all
 * ports -- under PVM IOPL alone does not let ring 3 use ports; user-
 * accessible identity map; TSS with RSP0; exception gates that report and
 * exit with code 2; an int 0x80 gate that halts) and does its work there:
 *
 *   buf[i] = (i * 0x9e3779b1 mod 2^32) >> 24   for 0 <= i < 8 MiB,
 *            stored at 16 MiB (so the guest needs >= 24 MiB of RAM)
 *   result = CRC-32 (IEEE, zlib) of buf
 *
 * and prints from ring 3, via port I/O:
 *   ring3: cpl=<CS & 3>
 *   ring3: result=<result, 8 lowercase hex digits>
 *   done
 * then writes the exit code to port 0xf4 from ring 3 (int 0x80 halts in
 * ring 0 if that returns).
 */
#include "common.h"

#define BUF_ADDR	0x1000000
#define BUF_SIZE	0x800000
/* Linux's selector layout: PVM expects the standard user selectors. */
#define KERNEL_CS	0x10
#define KERNEL_DS	0x18
#define USER_DS		(0x28 | 3)
#define USER_CS		(0x30 | 3)
#define TSS_SEL		0x40
#define HALT_VECTOR	0x80

	.code32
#include "pvh_note.S"

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	%cr4, %eax
	or	$0x20, %eax		/* PAE */
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$0xc0000080, %ecx	/* EFER */
	rdmsr
	or	$0x100, %eax		/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax	/* PG | PE */
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
	mov	$str_name, %rsi
	mov	$str_pvh, %rdi
	call	print_header_64
	call	pvh_report_64
	/* TSS descriptor base */
	mov	$tss, %eax
	mov	%ax, gdt_tss + 2
	shr	$16, %eax
	mov	%al, gdt_tss + 4
	mov	%ah, gdt_tss + 7
	mov	$TSS_SEL, %ax
	ltr	%ax
	/* exception gates 0-31 -> exc_stubs, int 0x80 gate (DPL 3) -> halt */
	mov	$exc_stubs, %eax
	mov	$idt, %rdi
	mov	$32, %ecx
1:	call	set_gate
	add	$16, %eax
	add	$16, %rdi
	dec	%ecx
	jnz	1b
	mov	$halt, %eax
	mov	$(idt + HALT_VECTOR * 16), %rdi
	call	set_gate
	lidt	idt_desc
	/* to ring 3 */
	pushq	$USER_DS
	pushq	$user_stack_top
	pushq	$0x3002			/* IOPL 3, IF 0 (PVM ignores IOPL: the
					 * TSS I/O bitmap grants the ports) */
	pushq	$USER_CS
	pushq	$user_main
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
 * above it on the stack (error code or RIP), exit with code 2. */
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
	mov	$str_exc, %rsi
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

/* Ring 3 from here on. */
user_main:
	mov	$str_cpl, %rsi
	call	puts_64
	mov	%cs, %eax
	and	$3, %eax
	call	print_dec_64
	call	putnl_64
	/* fill buf */
	mov	$BUF_ADDR, %rdi
	xor	%ecx, %ecx
1:	imul	$0x9e3779b1, %ecx, %eax
	shr	$24, %eax
	mov	%al, (%rdi, %rcx)
	inc	%ecx
	cmp	$BUF_SIZE, %ecx
	jb	1b
	mov	$BUF_ADDR, %rsi
	mov	$BUF_SIZE, %ecx
	call	crc32_64
	mov	$str_result, %rsi
	call	puts_64
	call	print_hex8_64
	call	putnl_64
	mov	$str_done, %rsi
	call	puts_64
	mov	exit_code, %eax
	mov	$DEBUG_EXIT_PORT, %dx
	outl	%eax, %dx
	int	$HALT_VECTOR

#define BITS64
#include "common.h"
#include "common.S"
#include "pvh_report.S"
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
str_name:	.asciz "ring3"
str_pvh:	.asciz "pvh"
str_cpl:	.asciz "ring3: cpl="
str_result:	.asciz "ring3: result="
str_exc:	.asciz "error: exception "

	.section .stack, "aw", @progbits
	.balign 16
	.fill	16384, 1, 0
user_stack_top:

#include "stack.S"
