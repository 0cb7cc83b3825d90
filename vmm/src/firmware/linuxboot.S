/*
 * Strata's linuxboot option ROM: what QEMU's linuxboot_dma.bin does for SeaBIOS, written
 * anew. SeaBIOS runs it from fw_cfg's "genroms/" directory; its PnP header's boot entry
 * vector (BEV) is the first boot entry when "bootorder" names it. The BEV, in real mode:
 * copies the bzImage's setup, protected-mode kernel, command line and initrd from fw_cfg's
 * legacy items to the addresses their *_ADDR items give, by fw_cfg DMA (straight to
 * physical memory, so no mode switch is needed), then enters the setup code in real mode
 * as a boot loader does: DS = ES = FS = GS = SS = setup segment, SP = 0xfff0,
 * CS:IP = setup segment + 0x20 : 0.
 *
 * Built by scripts/build-linuxboot-rom.sh into linuxboot.bin (committed); the VMM fills in
 * both checksums (firmware/rom.rs) before handing it to the firmware.
 */
	.code16
	.text
	.globl	_start
_start:
	.word	0xaa55
	.byte	1			/* 512 bytes */
	jmp	init
	.org	0x18
	.word	0			/* no PCI data structure */
	.word	pnp
	.org	0x20
pnp:
	.ascii	"$PnP"
	.byte	1			/* structure revision */
	.byte	2			/* length: 2 x 16 bytes */
	.word	0			/* no next header */
	.byte	0			/* reserved */
	.byte	0			/* checksum (filled by the VMM) */
	.long	0			/* device identifier */
	.word	0			/* manufacturer */
	.word	name			/* product name */
	.long	0			/* device type, indicators */
	.word	0			/* boot connection vector */
	.word	0			/* disconnect vector */
	.word	bev			/* bootstrap entry vector */
	.word	0			/* reserved */
	.word	0			/* static resources */

init:
	lret

/* EAX = the u32 fw_cfg item AX. Clobbers DX. */
read32:
	movw	$0x510, %dx
	outw	%ax, %dx
	movw	$0x511, %dx
	inb	%dx, %al
	rorl	$8, %eax
	inb	%dx, %al
	rorl	$8, %eax
	inb	%dx, %al
	rorl	$8, %eax
	inb	%dx, %al
	rorl	$8, %eax
	ret

/* Copies ECX bytes of fw_cfg item AX to physical address EDI by DMA (descriptor at 0x7c00). */
DESC = 0x7c00
dma_read:
	testl	%ecx, %ecx
	jz	2f
	movzwl	%ax, %eax
	shll	$16, %eax
	orl	$0x0a, %eax		/* select | read */
	bswapl	%eax
	movl	%eax, DESC
	bswapl	%ecx
	movl	%ecx, DESC + 4
	movl	$0, DESC + 8
	bswapl	%edi
	movl	%edi, DESC + 12
	xorl	%eax, %eax
	movw	$0x514, %dx
	outl	%eax, %dx
	movl	$0x007c0000, %eax	/* DESC, big-endian */
	movw	$0x518, %dx
	outl	%eax, %dx
1:	movl	DESC, %eax
	bswapl	%eax
	andl	$0xfffffffe, %eax	/* anything but the error bit: not done yet */
	jnz	1b
2:	ret

/* Loads item DATA to the address in item ADDR, SIZE bytes. */
.macro	load addr, size, data
	movw	$\addr, %ax
	call	read32
	movl	%eax, %edi
	movw	$\size, %ax
	call	read32
	movl	%eax, %ecx
	movw	$\data, %ax
	call	dma_read
.endm

bev:
	cli
	cld
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %es
	load	0x16, 0x17, 0x18	/* setup */
	load	0x07, 0x08, 0x11	/* kernel */
	load	0x13, 0x14, 0x15	/* command line */
	load	0x0a, 0x0b, 0x12	/* initrd */
	movw	$0x16, %ax
	call	read32
	shrl	$4, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %gs
	movw	%ax, %ss
	movw	$0xfff0, %sp
	addw	$0x20, %ax
	pushw	%ax
	pushw	$0
	lret

name:
	.asciz	"Strata kernel from fw_cfg"
	.org	0x1ff
	.byte	0			/* checksum (filled by the VMM) */
