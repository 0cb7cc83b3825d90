/*
 * pvh_report: PBX -> hvm_start_info (PVH boot ABI). Writes the cmdline,
 * memory-map and module lines (not the header, not "done").
 *
 * struct hvm_start_info: 0 magic, 4 version, 8 flags, 12 nr_modules,
 * 16 modlist_paddr, 24 cmdline_paddr, 32 rsdp_paddr, 40 memmap_paddr,
 * 48 memmap_entries (40/48 only if version >= 1).
 * hvm_modlist_entry (32 bytes): 0 paddr, 8 size, 16 cmdline_paddr.
 * hvm_memmap_table_entry (24 bytes): 0 addr, 8 size, 16 type.
 * Addresses above 4 GiB are not supported (the high halves are ignored).
 */
FN(pvh_report):
	push	PAX
	push	PCX
	push	PDX
	push	PSI
	push	PDI
	cmpl	$0x336ec578, (PBX)
	jne	9f
	mov	24(PBX), %esi		/* cmdline_paddr */
	call	FN(print_cmdline)
	cmpl	$1, 4(PBX)
	jb	3f
	mov	40(PBX), %esi		/* memmap_paddr */
	mov	48(PBX), %edx		/* memmap_entries */
1:	test	%edx, %edx
	jz	3f
	call	FN(print_mem)
	add	$24, PSI
	dec	%edx
	jmp	1b
3:	mov	16(PBX), %edi		/* modlist_paddr */
	mov	12(PBX), %edx		/* nr_modules */
4:	test	%edx, %edx
	jz	8f
	mov	(PDI), %eax
	mov	8(PDI), %ecx
	mov	16(PDI), %esi
	call	FN(print_module)
	add	$32, PDI
	dec	%edx
	jmp	4b
8:	pop	PDI
	pop	PSI
	pop	PDX
	pop	PCX
	pop	PAX
	ret
9:	mov	$str_pvh_bad_magic, PSI
	call	FN(puts)
	movl	$1, exit_code
	jmp	8b

#ifndef STRATA_PVH_DATA
#define STRATA_PVH_DATA
	.section .rodata
str_pvh_bad_magic: .asciz "error: bad hvm_start_info magic\n"
	.text
#endif
