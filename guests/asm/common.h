/*
 * Register and symbol macros that let the shared routines in common.S be
 * assembled both as 32-bit (.code32) and 64-bit (.code64) code.
 *
 * Define BITS64 before including this file for the 64-bit flavour.
 * FN(x) appends the flavour suffix (x_32 / x_64) so that one image may hold
 * both flavours (the ring3 guest does).
 */
#ifndef STRATA_COMMON_H
#define STRATA_COMMON_H

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#define COM1 0x3f8
#define COM1_LSR 0x3fd
#define DEBUG_EXIT_PORT 0xf4

#endif

#undef PAX
#undef PBX
#undef PCX
#undef PDX
#undef PSI
#undef PDI
#undef PBP
#undef PSP
#undef FN
#ifdef BITS64
#define PAX %rax
#define PBX %rbx
#define PCX %rcx
#define PDX %rdx
#define PSI %rsi
#define PDI %rdi
#define PBP %rbp
#define PSP %rsp
#define FN(x) CAT(x, _64)
#else
#define PAX %eax
#define PBX %ebx
#define PCX %ecx
#define PDX %edx
#define PSI %esi
#define PDI %edi
#define PBP %ebp
#define PSP %esp
#define FN(x) CAT(x, _32)
#endif
