/*
 * density: the one-line guest of bench/density.py and bench/teardown (issue 13). A PVH guest
 * (every VMM compared boots it: Strata, Firecracker, Cloud Hypervisor, QEMU) that prints one
 * line on COM1 and then ends the VM the way each VMM understands: Cloud Hypervisor's ACPI
 * shutdown port (0x600, S5 | SLP_EN), then the i8042 reset (0xfe to port 0x64: Firecracker
 * and Strata end there), then the debug-exit port (QEMU with isa-debug-exit). Built with STAY
 * it prints its line and halts with interrupts off instead, so that a VMM's memory can be
 * measured while it runs, at no CPU cost.
 */
#include "common.h"

	.code32
#include "pvh_note.S"

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	$str_line, %esi
	call	puts_32
#ifndef STAY
	mov	$0x600, %dx
	mov	$0x34, %al
	outb	%al, %dx
	mov	$0x64, %dx
	mov	$0xfe, %al
	outb	%al, %dx
	mov	$DEBUG_EXIT_PORT, %dx
	xor	%eax, %eax
	outl	%eax, %dx
#endif
1:	cli
	hlt
	jmp	1b

#include "common.S"

	.section .rodata
str_line:	.asciz "strata-density-guest up\n"

#include "stack.S"
