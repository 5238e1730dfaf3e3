/* The architecture-independent half of the tiny VMM: the guest-physical layout computed
 * from a case's sizes and the VM's IPA limit, and the KVM_RUN loop with its deadline.
 * vmm.c (arm64) uses both; x86check.c drives the same run loop with a real x86 KVM vCPU,
 * so the loop's timer and EINTR handling are checked on any Linux host with /dev/kvm. */
#ifndef DMT_KVM_VMMCORE_H
#define DMT_KVM_VMMCORE_H
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

#define DMTK_IPA_DEFAULT_BITS 40 /* KVM_CREATE_VM type 0 on arm64 */

/* Where everything goes in one VM (IPAs; sizes in bytes). */
struct dmtk_layout {
	uint64_t tables_ipa, tables_bytes; /* stage-1 page-table pool */
	uint64_t heap_ipa, ram_buf_ipa;    /* kernel-init heap, RAM buffer of copy kernels */
	uint64_t ram_bytes;                /* payload RAM memslot, from DMTK_RAM_IPA */
	uint64_t target_ipa;               /* the target memslot */
	uint64_t window_stride;            /* VA distance between the attributes' windows */
	uint32_t ipa_bits;                 /* the VM's IPA size */
	uint32_t vm_type;                  /* KVM_CREATE_VM argument (0: KVM's default 40 bits) */
};

/* Lay out a VM for a target of target_size bytes (a multiple of `page`, the host page
 * size), a RAM buffer and a heap, on a host whose KVM offers IPAs of up to max_ipa_bits
 * (KVM_CAP_ARM_VM_IPA_SIZE; 0: only the default 40).  0, or -errno with *why set. */
int dmtk_layout(uint64_t target_size, uint64_t ram_size, uint64_t heap_size, uint64_t page,
		uint32_t max_ipa_bits, struct dmtk_layout *l, const char **why);

struct dmtk_mailbox;

/* Build the payload's stage-1 tables in its RAM (host view `ram`, IPA DMTK_RAM_IPA) for
 * layout l: RAM identity-mapped Normal WB less the guard page, the exit page Device, and
 * each attribute's window onto the target IPA; fills mb's ttbr0, tcr, mair and windows.
 * 0, or -ENOMEM when the table pool is too small. */
int dmtk_build_tables(uint8_t *ram, const struct dmtk_layout *l, uint64_t target_size, uint64_t mair,
		      struct dmtk_mailbox *mb);
/* Walk those tables as the payload's MMU would: 0 with *pa and the MAIR index, or -ENOENT. */
int dmtk_s1_walk(const uint8_t *ram, uint64_t ttbr0, uint64_t va, uint64_t *pa, uint32_t *attr);

/* How one dmtk_enter ended (negative: -errno of a KVM_RUN that failed otherwise). */
#define DMTK_ENTER_EXIT 0     /* KVM_RUN returned 0: an exit in run->exit_reason */
#define DMTK_ENTER_DEADLINE 1 /* the timeout passed with the vCPU still in the guest */

struct dmtk_entry {
	int vcpu;              /* the vCPU fd KVM_RUN is called on */
	struct kvm_run *run;   /* its mmapped kvm_run (immediate_exit is set from the timer signal) */
	void (*before_entry)(void *ctx); /* x86check only: runs after the timer is armed */
	void *ctx;
	/* Filled by dmtk_enter. */
	uint64_t entries;      /* KVM_RUN calls */
	uint64_t retried;      /* EINTRs from other signals, retried before the deadline */
	/* Private. */
	timer_t timer;
	int has_timer;
	pid_t tid;             /* the thread the timer signals */
	volatile sig_atomic_t fired;
};

int dmtk_entry_init(struct dmtk_entry *e); /* 0 or -errno (timer_create, sigaction) */
void dmtk_entry_fini(struct dmtk_entry *e);
/* Run the vCPU until KVM_RUN returns an exit, the deadline passes, or KVM_RUN fails. */
int dmtk_enter(struct dmtk_entry *e, uint32_t timeout_ms);

#endif
