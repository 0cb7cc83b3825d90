/*
 * multiboot guests: one source, three images.
 *   multiboot1-elf   ELF32 with a multiboot1 header (no a.out kludge)
 *   multiboot1-aout  (-DAOUT) flat binary, multiboot1 header flag 16 with
 *                    header_addr/load_addr/load_end_addr/bss_end_addr/entry
 *   multiboot2       (-DMB2) ELF32 with a multiboot2 header and also a
 *                    multiboot1 header (QEMU boots only multiboot1)
 * The code handles both magics: EAX=0x2BADB002 (EBX -> multiboot_info) and
 * EAX=0x36d76289 (EBX -> multiboot2 information tags). Entry is in 32-bit
 * protected mode without paging.
 */
#include "common.h"

#define MB1_MAGIC	0x1BADB002
#define MB1_BOOT_MAGIC	0x2BADB002
#define MB2_MAGIC	0xE85250D6
#define MB2_BOOT_MAGIC	0x36d76289
#ifdef AOUT
#define MB1_FLAGS	0x00010003	/* page-align modules, memory info, a.out kludge */
#define NAME		"multiboot1-aout"
#elif defined(MB2)
#define MB1_FLAGS	0x00000003
#define NAME		"multiboot2"
#else
#define MB1_FLAGS	0x00000003
#define NAME		"multiboot1-elf"
#endif

	.code32
	.section .boot_header, "ax"
	.balign 8
mb1_header:
	.long	MB1_MAGIC
	.long	MB1_FLAGS
	.long	0x100000000 - (MB1_MAGIC + MB1_FLAGS)
#ifdef AOUT
	.long	mb1_header	/* header_addr */
	.long	_image_start	/* load_addr */
	.long	_image_end	/* load_end_addr */
	.long	_bss_end	/* bss_end_addr */
	.long	_start		/* entry_addr */
#endif
#ifdef MB2
	.balign 8
mb2_header:
	.long	MB2_MAGIC
	.long	0		/* architecture: i386 protected mode */
	.long	mb2_header_end - mb2_header
	.long	0x100000000 - (MB2_MAGIC + (mb2_header_end - mb2_header))
	.balign 8
	.word	1, 0		/* information request, required */
	.long	8 + 4 * 5
	.long	1, 2, 3, 4, 6	/* cmdline, loader name, modules, meminfo, mmap */
	.balign 8
	.word	0, 0		/* end */
	.long	8
mb2_header_end:
#endif

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	$str_name, %esi
	cmp	$MB1_BOOT_MAGIC, %eax
	je	mb1_main
	cmp	$MB2_BOOT_MAGIC, %eax
	je	mb2_main
	mov	$str_unknown, %edi
	call	print_header_32
	mov	$str_bad_magic, %esi
	call	puts_32
	movl	$1, exit_code
	jmp	finish_32

/* multiboot1: EBX -> multiboot_info. */
mb1_main:
	mov	$str_mb1, %edi
	call	print_header_32
	mov	(%ebx), %ebp		/* flags */
	xor	%esi, %esi
	test	$0x4, %ebp
	jz	1f
	mov	16(%ebx), %esi		/* cmdline */
1:	call	print_cmdline_32
	test	$0x40, %ebp
	jz	3f
	mov	48(%ebx), %esi		/* mmap_addr */
	mov	44(%ebx), %edx		/* mmap_length */
	add	%esi, %edx
2:	cmp	%edx, %esi
	jae	3f
	add	$4, %esi		/* entry: u32 size; u64 base; u64 len; u32 type */
	call	print_mem_32
	add	-4(%esi), %esi
	jmp	2b
3:	test	$0x8, %ebp
	jz	5f
	mov	24(%ebx), %edi		/* mods_addr */
	mov	20(%ebx), %edx		/* mods_count */
4:	test	%edx, %edx
	jz	5f
	mov	(%edi), %eax		/* mod_start */
	mov	4(%edi), %ecx		/* mod_end */
	sub	%eax, %ecx
	mov	8(%edi), %esi		/* string */
	call	print_module_32
	add	$16, %edi
	dec	%edx
	jmp	4b
5:	xor	%esi, %esi
	test	$0x200, %ebp
	jz	6f
	mov	64(%ebx), %esi		/* boot_loader_name */
6:	call	print_bootloader
	xor	%eax, %eax
	xor	%ecx, %ecx
	test	$0x1, %ebp
	jz	7f
	mov	4(%ebx), %eax		/* mem_lower */
	mov	8(%ebx), %ecx		/* mem_upper */
7:	call	print_meminfo
	jmp	finish_32

/* multiboot2: EBX -> { u32 total_size; u32 reserved; tags... }. */
mb2_main:
	mov	$str_mb2, %edi
	call	print_header_32
	xor	%esi, %esi
	mov	$1, %eax		/* cmdline */
	xor	%edi, %edi
	call	mb2_next
	test	%edi, %edi
	jz	1f
	lea	8(%edi), %esi
1:	call	print_cmdline_32
	mov	$6, %eax		/* memory map */
	xor	%edi, %edi
	call	mb2_next
	test	%edi, %edi
	jz	3f
	lea	16(%edi), %esi		/* first entry */
	mov	4(%edi), %edx
	add	%edi, %edx		/* end of tag */
2:	lea	20(%esi), %ecx
	cmp	%edx, %ecx
	ja	3f
	call	print_mem_32
	add	8(%edi), %esi		/* entry_size */
	cmpl	$0, 8(%edi)
	jne	2b
3:	xor	%edi, %edi
4:	mov	$3, %eax		/* modules, in order */
	call	mb2_next
	test	%edi, %edi
	jz	5f
	mov	8(%edi), %eax		/* mod_start */
	mov	12(%edi), %ecx		/* mod_end */
	sub	%eax, %ecx
	lea	16(%edi), %esi		/* string */
	call	print_module_32
	jmp	4b
5:	xor	%esi, %esi
	mov	$2, %eax		/* boot loader name */
	xor	%edi, %edi
	call	mb2_next
	test	%edi, %edi
	jz	6f
	lea	8(%edi), %esi
6:	call	print_bootloader
	mov	$4, %eax		/* basic meminfo */
	xor	%edi, %edi
	call	mb2_next
	xor	%ecx, %ecx
	test	%edi, %edi
	jz	7f
	mov	12(%edi), %ecx		/* mem_upper */
	mov	8(%edi), %eax		/* mem_lower */
7:	call	print_meminfo
	jmp	finish_32

/* mb2_next: EBX -> info, EDI = previous tag or 0, EAX = type; returns EDI
 * -> next tag of that type or 0. Stops at the end tag or total_size. */
mb2_next:
	push	%ecx
	push	%edx
	mov	(%ebx), %edx
	add	%ebx, %edx		/* end of info */
	test	%edi, %edi
	jnz	2f
	lea	8(%ebx), %edi
	jmp	3f
2:	mov	4(%edi), %ecx		/* size */
	cmp	$8, %ecx
	jb	8f
	add	$7, %ecx
	and	$~7, %ecx
	add	%ecx, %edi
3:	lea	8(%edi), %ecx
	cmp	%edx, %ecx
	ja	8f
	cmpl	$0, (%edi)		/* end tag */
	je	8f
	cmp	%eax, (%edi)
	jne	2b
	jmp	9f
8:	xor	%edi, %edi
9:	pop	%edx
	pop	%ecx
	ret

/* print_bootloader: ESI -> name or 0. */
print_bootloader:
	push	%esi
	mov	$str_bootloader, %esi
	call	puts_32
	pop	%esi
	call	puts_32
	jmp	putnl_32

/* print_meminfo: EAX = mem_lower, ECX = mem_upper (KiB). */
print_meminfo:
	push	%esi
	mov	$str_meminfo_lo, %esi
	call	puts_32
	call	print_dec_32
	mov	$str_meminfo_up, %esi
	call	puts_32
	mov	%ecx, %eax
	call	print_dec_32
	call	putnl_32
	pop	%esi
	ret

#include "common.S"

	.section .rodata
str_name:	.asciz NAME
str_mb1:	.asciz "multiboot1"
str_mb2:	.asciz "multiboot2"
str_unknown:	.asciz "unknown"
str_bad_magic:	.asciz "error: unknown boot magic\n"

#include "stack.S"
