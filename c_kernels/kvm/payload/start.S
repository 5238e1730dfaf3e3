/* Payload entry and EL1 exception vectors.  KVM_ARM_VCPU_INIT leaves the vCPU at EL1h with
 * the MMU off and DAIF all masked; with the MMU off every data access is Device-nGnRnE,
 * so the MMU is turned on here, before any C runs (the compiler may emit accesses that
 * would fault on Device memory).  SError is then unmasked (DAIF.A): an asynchronous abort
 * from an access to the target is taken (vector 7) and reported as `serror`, where a
 * masked one would stay pending and the request would read as done. */
#include "abi.h"

	.section .text.start, "ax"
	.global _start
_start:
	ldr	x1, =DMTK_STACK_TOP
	mov	sp, x1
	mov	x1, #(3 << 20)			/* CPACR_EL1.FPEN: the kernels use FP/SIMD */
	msr	cpacr_el1, x1
	adr	x1, dmtk_vectors
	msr	vbar_el1, x1
	ldr	x0, =DMTK_MAILBOX_IPA
	ldr	x1, [x0, #DMTK_OFF_MAIR]
	msr	mair_el1, x1
	ldr	x1, [x0, #DMTK_OFF_TCR]
	msr	tcr_el1, x1
	ldr	x1, [x0, #DMTK_OFF_TTBR0]
	msr	ttbr0_el1, x1
	isb
	tlbi	vmalle1
	dsb	nsh
	isb
	mrs	x1, sctlr_el1
	mov	x2, #((1 << 0) | (1 << 2))	/* M: MMU on, C: data cacheable */
	orr	x2, x2, #(1 << 12)		/* I: instruction cacheable */
	orr	x1, x1, x2
	mov	x2, #((1 << 1) | (1 << 3) | (1 << 4))	/* A, SA, SA0 off: only the memory type decides alignment faults */
	bic	x1, x1, x2
	msr	sctlr_el1, x1
	isb
	msr	daifclr, #4			/* unmask SError (A); IRQ and FIQ stay masked */
	isb
	bl	dmtk_main
1:	wfi
	b	1b

/* An exception: record which vector, then C reports it and restarts the request loop on a
 * fresh stack (the faulting context is abandoned, never returned to). */
	.macro	vec n
	.balign	0x80
	mov	x0, #\n
	b	dmtk_exception
	.endm

	.balign	0x800
	.global	dmtk_vectors
dmtk_vectors:
	.irp	n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
	vec	\n
	.endr

dmtk_exception:
	ldr	x1, =DMTK_STACK_TOP
	mov	sp, x1
	bl	dmtk_fault
2:	wfi
	b	2b
