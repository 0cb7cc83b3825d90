/* A 16 KiB stack, part of the file image so that every loader provides it. */
	.section .stack, "aw", @progbits
	.balign 16
	.fill	16384, 1, 0
stack_top:
	.text
