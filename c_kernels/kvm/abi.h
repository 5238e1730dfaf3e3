/* The contract between the tiny VMM (vmm.c, a ctypes library on an arm64 KVM host) and
 * the L2 payload (payload/, freestanding, runs at EL1 inside the VM).  Keep in sync with
 * bench/targets/kvmvm.py (Result, OP_*, STATUS_*).
 *
 * Guest physical layout (IPA), fixed part:
 *   EXIT_IPA         no memslot: an 8-byte store here is a KVM_EXIT_MMIO, the payload's
 *                    only way to hand control back ("done", "fault" or "serror")
 *   RAM_IPA          payload RAM: the image (entry at RAM_IPA), the mailbox page, an
 *                    unmapped guard page (stage 1), the stack, the stage-1 page tables,
 *                    a heap and the RAM buffer (copy kernels)
 * and the part the VMM lays out per VM from the sizes (vmmcore.c, dmtk_layout):
 *   target IPA       the memory under test (anonymous RAM, sysfs resourceN, a vfio-pci or
 *                    dmattr window): its stage-2 attribute is the host kernel's choice.  At
 *                    least 4 GiB, 1 GiB aligned, after the end of payload RAM, so the two
 *                    memslots never overlap; the VM's IPA size is raised (KVM_VM_TYPE_ARM_IPA_SIZE)
 *                    when the target ends above KVM's default 40 bits.
 * Stage 1 (built by the VMM): RAM identity-mapped Normal WB (less the guard page); EXIT_IPA
 * identity-mapped Device-nGnRnE; one VA window per MAIR index k (all seven attributes) onto
 * the target IPA at window_base + k * window_stride (mailbox), so the same target memory is
 * reachable with every stage-1 attribute. */
#ifndef DMT_KVM_ABI_H
#define DMT_KVM_ABI_H

#define DMTK_RAM_IPA 0x40000000ull
#define DMTK_IMAGE_MAX 0xC0000ull                        /* payload .text/.data/.bss */
#define DMTK_MAILBOX_IPA (DMTK_RAM_IPA + DMTK_IMAGE_MAX) /* one page */
#define DMTK_GUARD_IPA (DMTK_MAILBOX_IPA + 0x1000ull)    /* unmapped at stage 1: a stack overflow faults */
#define DMTK_STACK_TOP (DMTK_RAM_IPA + 0x100000ull)      /* stack grows down to the guard page */
#define DMTK_TABLES_IPA DMTK_STACK_TOP                   /* page tables, then heap, then RAM buffer */
#define DMTK_EXIT_IPA 0x10000000ull
#define DMTK_TARGET_IPA_MIN 0x100000000ull                /* 4 GiB */
#define DMTK_WINDOW_BASE 0x10000000000ull                 /* 1 TiB (VA) */
#define DMTK_VA_BITS 48
#define DMTK_ATTRS 7 /* MAIR indices 0..6: the VMM is given the bytes, in bench.memtypes order */

/* Exit codes written to EXIT_IPA. */
#define DMTK_EXIT_DONE 1
#define DMTK_EXIT_FAULT 2  /* a synchronous exception (or IRQ/FIQ) taken at EL1 */
#define DMTK_EXIT_SERROR 3 /* an SError taken at EL1, or one still pending at a probe's closing barrier */

/* Requests. */
#define DMTK_OP_INFO 1     /* ret = 0; cntfrq, features filled */
#define DMTK_OP_INIT 2     /* args.buf = window[attr]; ret = dmt_init(index, &args) */
#define DMTK_OP_RUN 3      /* ret = dmt_run(index, &args, loops): ns, or -errno */
#define DMTK_OP_PROBE 4    /* ret = probe index on window[attr] + offset: 0 or -errno */
#define DMTK_OP_PREFAULT 5 /* touch each page of window[attr] in [offset, offset + length); store if loops != 0 */

#define DMTK_MAGIC 0x444d544b564d3032ull /* "DMTKVM02" */

#ifndef __ASSEMBLER__
#include <stdint.h>
#include "dmt.h"

struct dmtk_mailbox {
	uint64_t magic;
	/* Set by the VMM before the first run. */
	uint64_t ttbr0, tcr, mair;
	uint64_t heap, heap_size;
	uint64_t ram, ram_size;
	uint64_t target_size;
	uint64_t window_base, window_stride; /* VA of attribute k's window: base + k * stride */
	/* Request. */
	uint32_t op, index, attr, pad;
	uint64_t loops, offset, length;
	struct dmt_args args;
	/* Response. */
	int64_t ret;
	uint64_t esr, far, elr, vector; /* DMTK_EXIT_FAULT / _SERROR: the exception taken at EL1 */
	uint64_t isr;                   /* ISR_EL1 at the closing barrier (SError still pending) */
	uint64_t cntfrq, features, midr, mmfr2;
};

#endif

/* Offsets the start-up assembly uses (checked against the struct in runtime.c). */
#define DMTK_OFF_TTBR0 8
#define DMTK_OFF_TCR 16
#define DMTK_OFF_MAIR 24

#endif
