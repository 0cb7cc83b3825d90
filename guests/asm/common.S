/*
 * Shared routines of the test guests: polled COM1 output, number
 * formatting, CRC-32, the cmdline "exit=N" parser and the exit path.
 *
 * Include after common.h, inside .code32 or .code64 (define BITS64 for the
 * latter). May be included twice (once per flavour); symbols carry the
 * flavour suffix through FN(), shared data is emitted once.
 *
 * Only plain integer instructions: ring-0 code under PVM runs through
 * KVM's instruction emulator, which lacks SSE, x87 and friends.
 *
 * Unless stated otherwise every routine preserves all registers except
 * the flags.
 */

	.text

/* putc: write %al to COM1, polling LSR bit 5 (THR empty). */
FN(putc):
	push	PDX
	push	PAX
	mov	$COM1_LSR, %dx
1:	inb	%dx, %al
	test	$0x20, %al
	jz	1b
	pop	PAX
	mov	$COM1, %dx
	outb	%al, %dx
	pop	PDX
	ret

/* putnl: write "\n". */
FN(putnl):
	push	PAX
	mov	$'\n', %al
	call	FN(putc)
	pop	PAX
	ret

/* putsp: write " ". */
FN(putsp):
	push	PAX
	mov	$' ', %al
	call	FN(putc)
	pop	PAX
	ret

/* puts: write the NUL-terminated string at PSI (nothing if PSI is 0). */
FN(puts):
	push	PSI
	push	PAX
	test	PSI, PSI
	jz	2f
1:	movb	(PSI), %al
	test	%al, %al
	jz	2f
	call	FN(putc)
	inc	PSI
	jmp	1b
2:	pop	PAX
	pop	PSI
	ret

/* print_hex: write the low %ecx hex digits (1..8) of %eax, lowercase. */
FN(print_hex):
	push	PAX
	push	PBX
	push	PCX
	push	PDX
	mov	%eax, %ebx
	mov	%ecx, %edx
1:	dec	%edx
	mov	%edx, %ecx
	shl	$2, %ecx
	mov	%ebx, %eax
	shr	%cl, %eax
	and	$15, %eax
	cmp	$10, %eax
	jb	2f
	add	$('a' - '0' - 10), %eax
2:	add	$'0', %eax
	call	FN(putc)
	test	%edx, %edx
	jnz	1b
	pop	PDX
	pop	PCX
	pop	PBX
	pop	PAX
	ret

/* print_hex8: write %eax as exactly 8 hex digits. */
FN(print_hex8):
	push	PCX
	mov	$8, %ecx
	call	FN(print_hex)
	pop	PCX
	ret

/* print_hex64: write the u64 at PSI as exactly 16 hex digits. */
FN(print_hex64):
	push	PAX
	mov	4(PSI), %eax
	call	FN(print_hex8)
	mov	(PSI), %eax
	call	FN(print_hex8)
	pop	PAX
	ret

/* print_dec: write %eax in decimal. */
FN(print_dec):
	push	PAX
	push	PCX
	push	PDX
	push	PBX
	mov	$10, %ebx
	xor	%ecx, %ecx
1:	xor	%edx, %edx
	div	%ebx
	push	PDX
	inc	%ecx
	test	%eax, %eax
	jnz	1b
2:	pop	PAX
	add	$'0', %eax
	call	FN(putc)
	dec	%ecx
	jnz	2b
	pop	PBX
	pop	PDX
	pop	PCX
	pop	PAX
	ret

/* print_mem: PSI -> { u64 base; u64 length; u32 type }; writes
 * "mem: 0x<base %016x> 0x<length %016x> <type>\n". */
FN(print_mem):
	push	PSI
	push	PAX
	push	PSI
	mov	$str_mem, PSI
	call	FN(puts)
	pop	PSI
	call	FN(print_hex64)
	push	PSI
	mov	$str_sp0x, PSI
	call	FN(puts)
	pop	PSI
	add	$8, PSI
	call	FN(print_hex64)
	call	FN(putsp)
	mov	8(PSI), %eax
	call	FN(print_dec)
	call	FN(putnl)
	pop	PAX
	pop	PSI
	ret

/* crc32: IEEE CRC-32 (zlib) of %ecx bytes at PSI, result in %eax. */
FN(crc32):
	push	PSI
	push	PCX
	push	PDX
	mov	$0xffffffff, %eax
	test	%ecx, %ecx
	jz	2f
1:	movzbl	(PSI), %edx
	xor	%al, %dl
	shr	$8, %eax
	xor	crc32_table(, PDX, 4), %eax
	inc	PSI
	dec	%ecx
	jnz	1b
2:	not	%eax
	pop	PDX
	pop	PCX
	pop	PSI
	ret

/* print_blob: PDI -> prefix (e.g. "module: 0x"), PAX = start address,
 * %ecx = size; writes "<prefix><start %08x> 0x<size %08x> crc32=<crc>"
 * (no newline). */
FN(print_blob):
	push	PSI
	push	PAX
	mov	PDI, PSI
	call	FN(puts)
	call	FN(print_hex8)
	mov	$str_sp0x, PSI
	call	FN(puts)
	push	PAX
	mov	%ecx, %eax
	call	FN(print_hex8)
	pop	PAX
	mov	$str_crc, PSI
	call	FN(puts)
	mov	PAX, PSI
	call	FN(crc32)
	call	FN(print_hex8)
	pop	PAX
	pop	PSI
	ret

/* print_module: PAX = start, %ecx = size, PSI -> string or 0; writes
 * "module: 0x<start> 0x<size> crc32=<crc> <string>\n". */
FN(print_module):
	push	PDI
	mov	$str_module, PDI
	call	FN(print_blob)
	call	FN(putsp)
	call	FN(puts)
	call	FN(putnl)
	pop	PDI
	ret

/* print_cmdline: PSI -> cmdline or 0; writes "cmdline: <text>\n" and
 * records the value N of the last "exit=N" token in exit_code. */
FN(print_cmdline):
	push	PSI
	push	PSI
	mov	$str_cmdline, PSI
	call	FN(puts)
	pop	PSI
	call	FN(puts)
	call	FN(putnl)
	call	FN(parse_exit)
	pop	PSI
	ret

/* parse_exit: scan the cmdline at PSI (or 0) for tokens "exit=N". */
FN(parse_exit):
	push	PSI
	push	PDI
	push	PAX
	push	PCX
	test	PSI, PSI
	jz	9f
	mov	PSI, PDI		/* start of the cmdline */
1:	movb	(PSI), %al
	test	%al, %al
	jz	9f
	cmp	PSI, PDI
	je	2f
	cmpb	$' ', -1(PSI)
	jne	8f
2:	cmpl	$0x74697865, (PSI)	/* "exit" */
	jne	8f
	cmpb	$'=', 4(PSI)
	jne	8f
	push	PSI
	add	$5, PSI
	xor	%eax, %eax
3:	movzbl	(PSI), %ecx
	sub	$'0', %ecx
	cmp	$9, %ecx
	ja	4f
	imul	$10, %eax, %eax
	add	%ecx, %eax
	inc	PSI
	jmp	3b
4:	pop	PSI
	mov	%eax, exit_code
8:	inc	PSI
	jmp	1b
9:	pop	PCX
	pop	PAX
	pop	PDI
	pop	PSI
	ret

/* print_header: PSI -> guest name, PDI -> protocol name; writes
 * "strata-test-guest <name>\nprotocol: <protocol>\n". */
FN(print_header):
	push	PSI
	push	PSI
	mov	$str_banner, PSI
	call	FN(puts)
	pop	PSI
	call	FN(puts)
	call	FN(putnl)
	mov	$str_protocol, PSI
	call	FN(puts)
	mov	PDI, PSI
	call	FN(puts)
	call	FN(putnl)
	pop	PSI
	ret

/* finish: write "done\n", then exit_code to the debug-exit port; halt
 * forever if that returns. Never returns. */
FN(finish):
	mov	$str_done, PSI
	call	FN(puts)
	mov	exit_code, %eax
	mov	$DEBUG_EXIT_PORT, %dx
	outl	%eax, %dx
1:	cli
	hlt
	jmp	1b

#ifndef STRATA_COMMON_DATA
#define STRATA_COMMON_DATA
	.section .rodata
str_banner:	.asciz "strata-test-guest "
str_mem:	.asciz "mem: 0x"
str_sp0x:	.asciz " 0x"
str_crc:	.asciz " crc32="
str_module:	.asciz "module: 0x"
str_initrd:	.asciz "initrd: 0x"
str_cmdline:	.asciz "cmdline: "
str_done:	.asciz "done\n"
str_protocol:	.asciz "protocol: "
str_bootloader:	.asciz "bootloader: "
str_meminfo_lo:	.asciz "meminfo: lower="
str_meminfo_up:	.asciz " upper="
	.balign 4
#include "crc32_table.inc"

	.data
	.balign 4
exit_code:	.long 0
#endif
	.text
