/*
 * The PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen",
 * descriptor = 32-bit physical entry point. The descriptor is 8 bytes wide
 * (like Linux's on x86_64): QEMU reads a u64 for ELF64 images.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long	4		/* namesz */
	.long	8		/* descsz */
	.long	18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign 4
	.quad	_start
	.balign 4
	.text
