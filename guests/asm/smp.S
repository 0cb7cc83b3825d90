/*
 * smp: a PVH guest in which every vCPU reports. 32-bit, no paging.
 *
 * The BSP prints the common report and `cpu <its APIC id> up`, finds the
 * processors in the MP table (floating pointer "_MP_" searched in the first
 * KiB of the EBDA, the last KiB of base memory and 0xf0000-0xfffff), copies
 * a real-mode trampoline to 0x8000 and starts each enabled AP with
 * INIT-SIPI-SIPI through the local APIC. Each AP enters 32-bit protected
 * mode, takes a spinlock (xchg), prints `cpu <APIC id> up`, counts itself
 * and halts. The BSP waits for all of them (at most ~2^33 TSC cycles),
 * then prints `cpus: <number of CPUs that reported>` and `done`.
 */
#include "common.h"

#define TRAMPOLINE	0x8000		/* SIPI vector 0x08 */
#define APIC_ID		0x20
#define APIC_SVR	0xf0
#define APIC_ICR_LO	0x300
#define APIC_ICR_HI	0x310
#define MAX_CPUS	64

	.code32
#include "pvh_note.S"

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	$str_name, %esi
	mov	$str_pvh, %edi
	call	print_header_32
	call	pvh_report_32
	call	mp_find
	test	%esi, %esi
	jnz	1f
	mov	$str_no_mp, %esi
	call	puts_32
	movl	$1, exit_code
	jmp	finish_32
1:	call	mp_parse
	/* report the BSP */
	mov	apic_base, %ebx
	call	lock_acquire
	call	report_cpu
	call	lock_release
	/* software-enable the local APIC, copy the trampoline */
	orl	$0x1ff, APIC_SVR(%ebx)
	mov	$trampoline, %esi
	mov	$TRAMPOLINE, %edi
	mov	$(trampoline_end - trampoline), %ecx
2:	movb	(%esi), %al
	movb	%al, (%edi)
	inc	%esi
	inc	%edi
	dec	%ecx
	jnz	2b
	/* INIT-SIPI-SIPI to each AP */
	xor	%edx, %edx
3:	cmp	nr_aps, %edx
	jae	4f
	movzbl	ap_ids(%edx), %eax
	shl	$24, %eax
	mov	$0x00004500, %ecx	/* INIT, assert */
	call	send_ipi
	mov	$(0x00004600 | (TRAMPOLINE >> 12)), %ecx	/* STARTUP */
	call	send_ipi
	call	send_ipi
	inc	%edx
	jmp	3b
	/* wait for the APs */
4:	rdtsc
	mov	%edx, %ebp
	add	$2, %ebp		/* deadline: now + 2^33 cycles */
5:	mov	cpus_up, %eax
	cmp	nr_aps, %eax
	jae	6f
	pause
	rdtsc
	cmp	%ebp, %edx
	jb	5b
6:	call	lock_acquire
	mov	$str_cpus, %esi
	call	puts_32
	mov	cpus_up, %eax
	inc	%eax			/* the BSP */
	call	print_dec_32
	call	putnl_32
	call	lock_release
	jmp	finish_32

/* send_ipi: EBX = APIC base, EAX = ICR high, ECX = ICR low; waits for the
 * delivery status to clear. */
send_ipi:
	mov	%eax, APIC_ICR_HI(%ebx)
	mov	%ecx, APIC_ICR_LO(%ebx)
1:	testl	$0x1000, APIC_ICR_LO(%ebx)
	jz	2f
	pause
	jmp	1b
2:	ret

/* report_cpu: EBX = APIC base; prints "cpu <APIC id> up". */
report_cpu:
	push	%eax
	push	%esi
	mov	$str_cpu, %esi
	call	puts_32
	mov	APIC_ID(%ebx), %eax
	shr	$24, %eax
	call	print_dec_32
	mov	$str_up, %esi
	call	puts_32
	pop	%esi
	pop	%eax
	ret

/* lock_acquire / lock_release: the print spinlock. Clobber EAX. */
lock_acquire:
	mov	$1, %eax
	xchg	%eax, print_lock
	test	%eax, %eax
	jz	2f
1:	pause
	cmpl	$0, print_lock
	jne	1b
	jmp	lock_acquire
2:	ret
lock_release:
	xor	%eax, %eax
	xchg	%eax, print_lock
	ret

/* mp_find: returns ESI -> MP floating pointer structure, or 0. */
mp_find:
	movzwl	0x40e, %esi		/* EBDA segment (BIOS data area) */
	shl	$4, %esi
	jz	1f
	mov	$1024, %ecx
	call	mp_scan
	test	%esi, %esi
	jnz	9f
1:	movzwl	0x413, %esi		/* base memory in KiB */
	shl	$10, %esi
	sub	$1024, %esi
	mov	$1024, %ecx
	call	mp_scan
	test	%esi, %esi
	jnz	9f
	mov	$0xf0000, %esi
	mov	$0x10000, %ecx
	call	mp_scan
9:	ret

/* mp_scan: ESI = start, ECX = length; returns ESI -> "_MP_" with a valid
 * 16-byte checksum at a 16-byte boundary, or 0. */
mp_scan:
	push	%eax
	push	%ecx
	push	%edx
1:	cmp	$16, %ecx
	jb	8f
	cmpl	$0x5f504d5f, (%esi)	/* "_MP_" */
	jne	3f
	xor	%eax, %eax
	xor	%edx, %edx
2:	add	(%esi, %edx), %al
	inc	%edx
	cmp	$16, %edx
	jb	2b
	test	%al, %al
	jz	9f
3:	add	$16, %esi
	sub	$16, %ecx
	jmp	1b
8:	xor	%esi, %esi
9:	pop	%edx
	pop	%ecx
	pop	%eax
	ret

/* mp_parse: ESI -> MP floating pointer. Sets apic_base, nr_aps, ap_ids
 * from the configuration table (enabled processors other than the BSP). */
mp_parse:
	mov	4(%esi), %esi		/* configuration table */
	test	%esi, %esi
	jz	9f
	cmpl	$0x504d4350, (%esi)	/* "PCMP" */
	jne	9f
	mov	36(%esi), %eax		/* local APIC address */
	mov	%eax, apic_base
	movzwl	34(%esi), %ecx		/* entry count */
	movzwl	4(%esi), %edx
	add	%esi, %edx		/* end of the base table */
	add	$44, %esi
1:	test	%ecx, %ecx
	jz	9f
	cmp	%edx, %esi
	jae	9f
	cmpb	$0, (%esi)		/* processor entry: 20 bytes */
	jne	3f
	movb	3(%esi), %al		/* flags: bit 0 enabled, bit 1 BSP */
	cmp	$1, %al
	jne	2f
	mov	nr_aps, %eax
	cmp	$MAX_CPUS, %eax
	jae	2f
	push	%ebx
	movb	1(%esi), %bl		/* local APIC id */
	movb	%bl, ap_ids(%eax)
	pop	%ebx
	incl	nr_aps
2:	add	$20, %esi
	dec	%ecx
	jmp	1b
3:	add	$8, %esi
	dec	%ecx
	jmp	1b
9:	ret

/* The AP trampoline, copied to TRAMPOLINE; runs at CS:IP = 0x0800:0000. */
	.code16
trampoline:
	cli
	mov	%cs, %ax
	mov	%ax, %ds
	lgdtl	tramp_gdt_desc - trampoline
	mov	%cr0, %eax
	or	$1, %eax
	mov	%eax, %cr0
	.byte	0x66, 0xea		/* ljmpl $0x10, $ap_entry32 */
	.long	ap_entry32
	.word	0x10
	.balign	4
tramp_gdt_desc:
	.word	ap_gdt_end - ap_gdt - 1
	.long	ap_gdt
trampoline_end:
	.code32

ap_entry32:
	mov	$0x18, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
1:	mov	$1, %eax		/* lock_acquire without a stack */
	xchg	%eax, print_lock
	test	%eax, %eax
	jz	2f
	pause
	jmp	1b
2:	mov	$ap_stack_top, %esp	/* one stack, used only under the lock */
	mov	apic_base, %ebx
	call	report_cpu
	incl	cpus_up
	xor	%eax, %eax
	xchg	%eax, print_lock
3:	cli
	hlt
	jmp	3b

#include "common.S"
#include "pvh_report.S"

	.section .rodata
	.balign 8
ap_gdt:
	.quad	0
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x10: flat code */
	.quad	0x00cf92000000ffff	/* 0x18: flat data */
ap_gdt_end:
str_name:	.asciz "smp"
str_pvh:	.asciz "pvh"
str_no_mp:	.asciz "error: no MP table\n"
str_cpu:	.asciz "cpu "
str_up:		.asciz " up\n"
str_cpus:	.asciz "cpus: "

	.data
	.balign 4
print_lock:	.long 0
cpus_up:	.long 0
apic_base:	.long 0xfee00000
nr_aps:		.long 0
ap_ids:		.fill MAX_CPUS, 1, 0

	.section .stack, "aw", @progbits
	.balign 16
	.fill	4096, 1, 0
ap_stack_top:

#include "stack.S"
