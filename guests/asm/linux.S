/*
 * linux: a Linux x86 boot protocol guest. Linked at 0x100000; this is the
 * protected-mode kernel of the bzImage (after setup.S) and, as an ELF64
 * with its entry at startup_64, the "vmlinux" form.
 *
 *   0x100000 startup_32: 32-bit boot protocol entry. ESI -> boot_params,
 *            flat CS, DS/ES/SS, no paging. Enables long mode with the
 *            static identity map and joins startup_64.
 *   0x100200 startup_64: 64-bit entry (XLF_KERNEL_64). RSI -> boot_params,
 *            long mode, identity paging. Loads its own identity map (all
 *            4 GiB, so the initrd is reachable wherever it was put).
 *
 * boot_params fields read: ext_ramdisk_image 0x0c0, ext_cmd_line_ptr
 * 0x0c8, e820_entries 0x1e8, ramdisk_image 0x218, ramdisk_size 0x21c,
 * cmd_line_ptr 0x228, e820_table 0x2d0 (20-byte entries).
 */
#include "common.h"

	.section .boot_header, "ax"
	.code32
	.globl	startup_32
startup_32:
	cli
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
	lgdt	lm_gdt_desc
	ljmp	$0x08, $startup_64

	.org	0x200
	.code64
	.globl	startup_64
	.globl	_start
_start:
startup_64:
	cli
	mov	$stack_top, %rsp
	mov	$pml4, %rax
	mov	%rax, %cr3
	mov	%rsi, %rbx
	mov	$str_name, %rsi
	mov	$str_name, %rdi		/* the protocol is called "linux" too */
	call	print_header_64
	/* cmdline: cmd_line_ptr | ext_cmd_line_ptr << 32 */
	mov	0x228(%rbx), %esi
	mov	0xc8(%rbx), %eax
	shl	$32, %rax
	or	%rax, %rsi
	call	print_cmdline_64
	/* e820 table */
	movzbl	0x1e8(%rbx), %edx
	cmp	$128, %edx
	jbe	1f
	mov	$128, %edx
1:	lea	0x2d0(%rbx), %rsi
2:	test	%edx, %edx
	jz	3f
	call	print_mem_64
	add	$20, %rsi
	dec	%edx
	jmp	2b
	/* initrd */
3:	mov	0x21c(%rbx), %ecx	/* ramdisk_size */
	test	%ecx, %ecx
	jz	4f
	mov	0x218(%rbx), %eax	/* ramdisk_image */
	mov	0xc0(%rbx), %edx	/* ext_ramdisk_image */
	shl	$32, %rdx
	or	%rdx, %rax
	mov	$str_initrd, %rdi
	call	print_blob_64
	call	putnl_64
4:	jmp	finish_64

#define BITS64
#include "common.h"
#include "common.S"
#include "pagetables.S"

	.section .rodata
	.balign 8
lm_gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: data */
lm_gdt_end:
lm_gdt_desc:
	.word	lm_gdt_end - lm_gdt - 1
	.quad	lm_gdt
str_name:	.asciz "linux"

#include "stack.S"
