/* The contract between the tiny VMM (vmm.c, a ctypes library on an arm64 KVM host) and
 * the L2 payload (payload/, freestanding, runs at EL1 inside the VM).  Keep in sync with
 * bench/targets/kvmvm.py (Result, OP_*, STATUS_*).
 *
 * Guest physical layout (IPA):
 *   RAM_IPA          payload image (entry at RAM_IPA), then the mailbox page, the stack,
 *                    the stage-1 page tables, a heap and the RAM buffer (copy kernels)
 *   EXIT_IPA         no memslot: an 8-byte store here is a KVM_EXIT_MMIO, the payload's
 *                    only way to hand control back ("done" or "fault")
 *   TARGET_IPA       the memory under test (anonymous RAM, sysfs resourceN or a vfio-pci
 *                    region mmap): its stage-2 attribute is the host kernel's choice
 * Stage 1 (built by the VMM): RAM identity-mapped Normal WB; EXIT_IPA identity-mapped
 * Device-nGnRnE; one VA window per MAIR index k (all seven attributes) onto TARGET_IPA at
 * WINDOW_VA(k), so the same target memory is reachable with every stage-1 attribute. */
#ifndef DMT_KVM_ABI_H
#define DMT_KVM_ABI_H

#define DMTK_RAM_IPA 0x40000000ull
#define DMTK_IMAGE_MAX 0xC0000ull                     /* payload .text/.data/.bss */
#define DMTK_MAILBOX_IPA (DMTK_RAM_IPA + DMTK_IMAGE_MAX) /* one page */
#define DMTK_STACK_TOP (DMTK_RAM_IPA + 0x100000ull)    /* stack grows down to the mailbox */
#define DMTK_TABLES_IPA DMTK_STACK_TOP                 /* page tables, then heap, then RAM buffer */
#define DMTK_EXIT_IPA 0x10000000ull
#define DMTK_TARGET_IPA 0x100000000ull
#define DMTK_WINDOW_BASE 0x10000000000ull             /* 1 TiB */
#define DMTK_WINDOW_STRIDE 0x1000000000ull            /* 64 GiB: the largest target */
#define DMTK_WINDOW_VA(k) (DMTK_WINDOW_BASE + (unsigned long long)(k) * DMTK_WINDOW_STRIDE)
#define DMTK_ATTRS 7 /* MAIR indices 0..6: the VMM is given the bytes, in bench.memtypes order */

/* Exit codes written to EXIT_IPA. */
#define DMTK_EXIT_DONE 1
#define DMTK_EXIT_FAULT 2

/* Requests. */
#define DMTK_OP_INFO 1     /* ret = 0; cntfrq, features filled */
#define DMTK_OP_INIT 2     /* args.buf = window[attr]; ret = dmt_init(index, &args) */
#define DMTK_OP_RUN 3      /* ret = dmt_run(index, &args, loops): ns, or -errno */
#define DMTK_OP_PROBE 4    /* ret = probe index on window[attr] + offset: 0 or -errno */
#define DMTK_OP_PREFAULT 5 /* touch every page of window[attr] (write if loops != 0) */

#define DMTK_MAGIC 0x444d544b564d3031ull /* "DMTKVM01" */

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
	/* Request. */
	uint32_t op, index, attr, pad;
	uint64_t loops, offset;
	struct dmt_args args;
	/* Response. */
	int64_t ret;
	uint64_t esr, far, elr, vector; /* DMTK_EXIT_FAULT: the exception taken at EL1 */
	uint64_t cntfrq, features, midr, mmfr2;
};

#endif

/* Offsets the start-up assembly uses (checked against the struct in runtime.c). */
#define DMTK_OFF_TTBR0 8
#define DMTK_OFF_TCR 16
#define DMTK_OFF_MAIR 24

#endif
