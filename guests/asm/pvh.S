/*
 * pvh: a PVH guest. 32-bit protected-mode entry (no paging), EBX ->
 * hvm_start_info. Prints the common report and exits.
 */
#include "common.h"

	.code32
#include "pvh_note.S"

	.text
	.globl	_start
_start:
	cli
	mov	$stack_top, %esp
	mov	$str_name, %esi
	mov	$str_proto, %edi
	call	print_header_32
	call	pvh_report_32
	jmp	finish_32

#include "common.S"
#include "pvh_report.S"

	.section .rodata
str_name:	.asciz "pvh"
str_proto:	.asciz "pvh"

#include "stack.S"
