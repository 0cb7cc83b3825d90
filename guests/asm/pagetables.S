/*
 * Static identity page tables for the first 4 GiB in 2 MiB pages
 * (PML4 -> PDPT -> 4 PDs), built by the assembler so that no ring-0 loop
 * has to write them (ring-0 code is slow under PVM). Define USER_PAGES to
 * make every mapping user-accessible (for the ring3 guest).
 * Exposes: pml4 (load into CR3).
 */
#ifdef USER_PAGES
#define PT_TABLE	0x7	/* present, writable, user */
#define PT_LARGE	0x87	/* present, writable, user, 2 MiB page */
#else
#define PT_TABLE	0x3
#define PT_LARGE	0x83
#endif
	.section .data
	.balign 4096
pml4:
	.quad	pdpt + PT_TABLE
	.fill	511, 8, 0
pdpt:
	.quad	pd + PT_TABLE
	.quad	pd + 0x1000 + PT_TABLE
	.quad	pd + 0x2000 + PT_TABLE
	.quad	pd + 0x3000 + PT_TABLE
	.fill	508, 8, 0
pd:
	.set	pt_i, 0
	.rept	2048
	.quad	(pt_i << 21) | PT_LARGE
	.set	pt_i, pt_i + 1
	.endr
	.text
