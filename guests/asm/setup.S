/*
 * The real-mode part of the linux guest's bzImage: boot sector, setup
 * header (boot protocol 2.12) and a setup stub. build.rs appends the
 * protected-mode kernel (linux.S) and patches setup_sects, syssize and
 * init_size.
 *
 * A boot loader that enters the setup code in real mode (QEMU -kernel via
 * its linuxboot option ROM) jumps to offset 0x200 with CS = base + 0x20 and
 * the setup loaded at base. The stub uses the loaded setup as the zero page
 * (boot_params): its bytes 0x000-0x1f0 and 0x268-0xcff are zero, the header
 * is already in place. It fills the e820 table with BIOS int 0x15/E820,
 * enables A20, enters 32-bit protected mode with boot-protocol selectors
 * (CS 0x10, DS/ES/SS 0x18) and jumps to code32_start (0x100000) with
 * ESI -> boot_params.
 */
	.code16
	.text
	.globl	_start
_start:
	.org	0x1f1
setup_sects:	.byte	0		/* patched by build.rs */
root_flags:	.word	0
syssize:	.long	0		/* patched by build.rs */
ram_size:	.word	0
vid_mode:	.word	0xffff
root_dev:	.word	0
boot_flag:	.word	0xaa55
	.org	0x200
	.byte	0xeb, start_of_setup - 0x202	/* jmp short */
	.ascii	"HdrS"
version:	.word	0x020c
realmode_swtch:	.long	0
start_sys_seg:	.word	0x1000
kernel_version:	.word	0
type_of_loader:	.byte	0
loadflags:	.byte	0x01		/* LOADED_HIGH */
setup_move_size: .word	0x8000
code32_start:	.long	0x100000
ramdisk_image:	.long	0
ramdisk_size:	.long	0
bootsect_kludge: .long	0
heap_end_ptr:	.word	0
ext_loader_ver:	.byte	0
ext_loader_type: .byte	0
cmd_line_ptr:	.long	0
initrd_addr_max: .long	0x7fffffff
kernel_alignment: .long	0x100000
relocatable_kernel: .byte 0
min_alignment:	.byte	0
xloadflags:	.word	0x0001		/* XLF_KERNEL_64: 64-bit entry at +0x200 */
cmdline_size:	.long	2047
hardware_subarch: .long	0
hardware_subarch_data: .quad 0
payload_offset:	.long	0
payload_length:	.long	0
setup_data:	.quad	0
pref_address:	.quad	0x100000
init_size:	.long	0		/* patched by build.rs */
handover_offset: .long	0
start_of_setup:
	jmp	setup_main

	.org	0xd00		/* keep the zero page's e820_table area free */
setup_main:
	cli
	cld
	mov	%cs, %ax
	sub	$0x20, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$0xfff0, %sp
	/* e820 into boot_params.e820_table (0x2d0), count at 0x1e8 */
	xor	%ebx, %ebx
	mov	$0x2d0, %di
	xor	%bp, %bp
1:	mov	$0xe820, %eax
	mov	$0x534d4150, %edx	/* "SMAP" */
	mov	$20, %ecx
	int	$0x15
	jc	2f
	cmp	$0x534d4150, %eax
	jne	2f
	inc	%bp
	add	$20, %di
	cmp	$128, %bp
	jae	2f
	test	%ebx, %ebx
	jnz	1b
2:	mov	%bp, %ax
	movb	%al, 0x1e8
	cli
	/* A20 through the fast gate */
	inb	$0x92, %al
	or	$2, %al
	and	$0xfe, %al
	outb	%al, $0x92
	/* ESI = linear address of boot_params; GDT base likewise */
	xor	%esi, %esi
	mov	%ds, %si
	shl	$4, %esi
	mov	%esi, %eax
	add	$gdt, %eax
	mov	%eax, gdt_desc + 2
	lgdtl	gdt_desc
	mov	%cr0, %eax
	or	$1, %eax
	mov	%eax, %cr0
	mov	$0x18, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	%ax, %fs
	mov	%ax, %gs
	.byte	0x66, 0xea		/* ljmpl $0x10, $0x100000 */
	.long	0x100000
	.word	0x10

	.balign	8
gdt:
	.quad	0
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x10: __BOOT_CS */
	.quad	0x00cf92000000ffff	/* 0x18: __BOOT_DS */
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	0
