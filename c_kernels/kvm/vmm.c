/* The tiny VMM: one KVM VM per case on an arm64 Linux host, loaded with ctypes by
 * bench/targets/kvmvm.py.  It maps the payload's RAM and the memory under test (a host
 * userspace mapping: anonymous RAM, a sysfs resourceN mmap, a vfio-pci region mmap or a
 * dmattr BAR mmap), builds the payload's stage-1 tables, and runs one request at a time.
 * Each request ends as one of: done (the payload's return value), fault (an exception the
 * payload took at EL1: ESR, FAR, ELR), killed (KVM_RUN failed: errno; the caller reads the
 * host log line), hang (no answer before the timeout) or error (an exit the payload never
 * causes).  Opening a VM can also end as refused: KVM would not take the target memslot
 * (errno, and KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED on that VM in `ret`).
 * The stage-2 attribute is never chosen here: the host kernel's KVM picks it per memslot. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "abi.h"

#define PAGE 4096ull
#define BLOCK (2ull << 20)
#define VMM_ABI 2
/* Linux 6.17 (include/uapi/linux/kvm.h); older headers lack it. */
#ifndef KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED
#define KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED 243
#endif

enum { ST_DONE = 0, ST_FAULT = 1, ST_KILLED = 2, ST_HANG = 3, ST_ERROR = 4, ST_REFUSED = 5 };

/* Mirrored by bench/targets/kvmvm.py (Config, Result). */
struct dmtk_config {
	const void *payload;
	uint64_t payload_len;
	void *target;         /* host mapping of the memory under test, page aligned */
	uint64_t target_size; /* bytes, a multiple of the page size */
	uint64_t ram_size;    /* RAM buffer for copy kernels */
	uint64_t heap_size;   /* heap for kernel init (read-lat's permutation) */
	uint64_t mair;        /* MAIR_EL1: index k = attribute k of bench.memtypes */
	uint32_t timeout_ms;  /* per request */
	uint32_t flags;       /* DMTK_TARGET_READONLY: the host mapping is read-only */
};

#define DMTK_TARGET_READONLY 1u

struct dmtk_result {
	int32_t status; /* ST_* */
	int32_t err;    /* errno of the failing call (killed, error) */
	int64_t ret;    /* the payload's return value (done); refused: the capability value */
	uint64_t esr, far, elr, vector;
	uint64_t exit_reason; /* KVM exit reason or MMIO address (error) */
	char what[96];        /* the failing step, in words (error) */
};

struct dmtk_vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *ram;
	uint64_t ram_bytes;
	uint32_t timeout_ms;
	timer_t timer;
	int has_timer;
	int dead;
};

int dmtk_abi(void) { return VMM_ABI; }
uint64_t dmtk_mailbox_size(void) { return sizeof(struct dmtk_mailbox); }

/* KVM_CHECK_EXTENSION on `fd`: the value, or -errno. */
static int64_t check_extension(int fd, uint32_t cap)
{
	int v = ioctl(fd, KVM_CHECK_EXTENSION, cap);
	return v < 0 ? -errno : v;
}

/* KVM_CHECK_EXTENSION(cap) on /dev/kvm, or with on_vm on a fresh VM's fd (arm64 answers
 * some capabilities, such as CACHEABLE_PFNMAP_SUPPORTED, only there): value or -errno. */
int64_t dmtk_check_extension(uint32_t cap, int32_t on_vm)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return -errno;
	int fd = on_vm ? ioctl(kvm, KVM_CREATE_VM, 0) : kvm;
	int64_t v = fd < 0 ? -errno : check_extension(fd, cap);
	if (on_vm && fd >= 0)
		close(fd);
	close(kvm);
	return v;
}

/* CTR_EL0 as Linux shows it to EL0 (the system-wide safe value): DIC is bit 29. */
uint64_t dmtk_ctr_el0(void)
{
	uint64_t ctr;
	__asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
	return ctr;
}

static int fail(struct dmtk_result *r, const char *what, int err)
{
	r->status = ST_ERROR;
	r->err = err;
	snprintf(r->what, sizeof(r->what), "%s", what);
	return -err;
}

/* --- stage-1 tables (4 KiB granule, 48-bit VA, built in payload RAM) ------------------ */

#define D_VALID 1ull
#define D_TABLE 3ull /* table (levels 0-2) or page (level 3) */
#define D_AF (1ull << 10)
#define D_ISH (3ull << 8)
#define D_XN ((1ull << 53) | (1ull << 54))
#define D_ATTR(i) ((uint64_t)(i) << 2)
#define D_ADDR 0x0000fffffffff000ull

struct tables {
	uint8_t *ram;   /* host view of payload RAM (IPA DMTK_RAM_IPA) */
	uint64_t next;  /* IPA of the next free table */
	uint64_t limit;
	uint64_t root;
};

static uint64_t *host_of(struct tables *t, uint64_t ipa)
{
	return (uint64_t *)(t->ram + (ipa - DMTK_RAM_IPA));
}

static uint64_t new_table(struct tables *t)
{
	if (t->next + PAGE > t->limit)
		return 0;
	uint64_t ipa = t->next;
	t->next += PAGE;
	memset(host_of(t, ipa), 0, PAGE); /* invalid entries */
	return ipa;
}

/* The table entry for va at `level` (0..3), allocating intermediate tables. */
static uint64_t *entry(struct tables *t, uint64_t va, int level)
{
	uint64_t table = t->root;
	for (int l = 0;; l++) {
		uint64_t *e = host_of(t, table) + ((va >> (39 - 9 * l)) & 511);
		if (l == level)
			return e;
		if (!(*e & D_VALID)) {
			uint64_t next = new_table(t);
			if (!next)
				return NULL;
			*e = next | D_TABLE;
		}
		table = *e & D_ADDR;
	}
}

/* Map [va, va+size) to [pa, ...) with MAIR index attr: 2 MiB blocks where aligned, else
 * 4 KiB pages.  Device and target windows are never executable. */
static int map(struct tables *t, uint64_t va, uint64_t pa, uint64_t size, int attr, int exec)
{
	uint64_t bits = D_AF | D_ISH | D_ATTR(attr) | (exec ? 0 : D_XN);
	while (size) {
		int block = !(va % BLOCK) && !(pa % BLOCK) && size >= BLOCK;
		uint64_t *e = entry(t, va, block ? 2 : 3);
		if (!e)
			return -ENOMEM;
		*e = pa | bits | (block ? D_VALID : D_TABLE);
		uint64_t step = block ? BLOCK : PAGE;
		va += step, pa += step, size -= step;
	}
	return 0;
}

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

/* Bytes of tables the layout can need: per window a level-1 and level-2 table per GiB,
 * one level-3 table for an unaligned tail, plus the RAM and exit-page identity maps. */
static uint64_t tables_bytes(uint64_t target_size, uint64_t ram_bytes)
{
	uint64_t per_window = 3 + target_size / (1ull << 30);
	return PAGE * (8 + DMTK_ATTRS * per_window + 2 * (ram_bytes >> 30) + 4);
}

static int build_tables(struct dmtk_vm *vm, const struct dmtk_config *c, uint64_t tbl_ipa, uint64_t tbl_bytes,
			struct dmtk_mailbox *mb)
{
	struct tables t = {vm->ram, tbl_ipa, tbl_ipa + tbl_bytes, 0};
	t.root = new_table(&t);
	int rc = map(&t, DMTK_RAM_IPA, DMTK_RAM_IPA, vm->ram_bytes, 6, 1);
	rc = rc ?: map(&t, DMTK_EXIT_IPA, DMTK_EXIT_IPA, PAGE, 0, 0);
	for (int k = 0; k < DMTK_ATTRS && !rc; k++)
		rc = map(&t, DMTK_WINDOW_VA(k), DMTK_TARGET_IPA, c->target_size, k, 0);
	mb->ttbr0 = t.root;
	/* T0SZ=16 (48-bit VA), walks Inner/Outer WB Inner Shareable, 4 KiB granule, no TTBR1
	 * walks (EPD1), IPS 40 bits (KVM's default IPA size). */
	mb->tcr = 16 | (1ull << 8) | (1ull << 10) | (3ull << 12) | (1ull << 23) | (2ull << 32);
	mb->mair = c->mair;
	return rc;
}

/* --- VM lifecycle ---------------------------------------------------------------------- */

static void on_timer(int sig) { (void)sig; } /* only interrupts KVM_RUN (no SA_RESTART) */

static int timer_signal(void) { return SIGRTMIN + 1; }

static int setup_timer(struct dmtk_vm *vm)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_timer;
	if (sigaction(timer_signal(), &sa, NULL))
		return -errno;
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = timer_signal();
	sev._sigev_un._tid = (pid_t)syscall(SYS_gettid); /* this thread: the one in KVM_RUN */
	if (timer_create(CLOCK_MONOTONIC, &sev, &vm->timer))
		return -errno;
	vm->has_timer = 1;
	return 0;
}

static void arm_timer(struct dmtk_vm *vm, uint32_t ms)
{
	struct itimerspec its = {{0, 0}, {ms / 1000, (long)(ms % 1000) * 1000000}};
	timer_settime(vm->timer, 0, &its, NULL);
}

void dmtk_close(struct dmtk_vm *vm)
{
	if (!vm)
		return;
	if (vm->has_timer)
		timer_delete(vm->timer);
	if (vm->run)
		munmap(vm->run, vm->run_size);
	if (vm->vcpu >= 0)
		close(vm->vcpu);
	if (vm->vm >= 0)
		close(vm->vm);
	if (vm->kvm >= 0)
		close(vm->kvm);
	if (vm->ram)
		munmap(vm->ram, vm->ram_bytes);
	free(vm);
}

static int set_reg(struct dmtk_vm *vm, uint64_t off, uint64_t value)
{
	struct kvm_one_reg reg = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (off / sizeof(uint32_t)),
		.addr = (uint64_t)(uintptr_t)&value,
	};
	return ioctl(vm->vcpu, KVM_SET_ONE_REG, &reg);
}

static int slot(struct dmtk_vm *vm, uint32_t n, uint64_t ipa, void *host, uint64_t size, uint32_t flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = n, .flags = flags, .guest_phys_addr = ipa, .memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)host,
	};
	return ioctl(vm->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

static int create(struct dmtk_vm *vm, const struct dmtk_config *c, struct dmtk_result *r)
{
	vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm < 0)
		return fail(r, "open /dev/kvm", errno);
	if (ioctl(vm->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		return fail(r, "KVM_GET_API_VERSION: unexpected KVM API version", EINVAL);
	vm->vm = ioctl(vm->kvm, KVM_CREATE_VM, 0);
	if (vm->vm < 0)
		return fail(r, "KVM_CREATE_VM", errno);
	uint64_t tbl_bytes = tables_bytes(c->target_size, DMTK_TABLES_IPA - DMTK_RAM_IPA + c->heap_size + c->ram_size);
	uint64_t heap_ipa = DMTK_TABLES_IPA + tbl_bytes;
	uint64_t ram_ipa = round_up(heap_ipa + c->heap_size, BLOCK);
	vm->ram_bytes = round_up(ram_ipa + c->ram_size, BLOCK) - DMTK_RAM_IPA;
	vm->ram = mmap(NULL, vm->ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->ram == MAP_FAILED) {
		vm->ram = NULL;
		return fail(r, "mmap payload RAM", errno);
	}
	if (c->payload_len > DMTK_IMAGE_MAX)
		return fail(r, "payload image larger than DMTK_IMAGE_MAX", E2BIG);
	memcpy(vm->ram, c->payload, c->payload_len);
	struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
	mb->magic = DMTK_MAGIC;
	mb->heap = heap_ipa, mb->heap_size = c->heap_size;
	mb->ram = ram_ipa, mb->ram_size = c->ram_size;
	mb->target_size = c->target_size;
	if (build_tables(vm, c, DMTK_TABLES_IPA, tbl_bytes, mb))
		return fail(r, "stage-1 tables: pool too small", ENOMEM);
	if (slot(vm, 0, DMTK_RAM_IPA, vm->ram, vm->ram_bytes, 0))
		return fail(r, "KVM_SET_USER_MEMORY_REGION (payload RAM)", errno);
	/* Read-only: a guest store becomes an MMIO exit outside the mailbox (an error), never a
	 * write to memory the user did not allow writing. */
	uint32_t tflags = (c->flags & DMTK_TARGET_READONLY) ? KVM_MEM_READONLY : 0;
	if (slot(vm, 1, DMTK_TARGET_IPA, c->target, c->target_size, tflags)) {
		/* An outcome, not a failure: the host's KVM will not map this memory (Linux 6.17+
		 * refuses a cacheable PFNMAP without FWB and DIC).  Say what it advertises. */
		int err = errno;
		fail(r, "KVM_SET_USER_MEMORY_REGION (target memory)", err);
		r->status = ST_REFUSED;
		r->ret = check_extension(vm->vm, KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED);
		return -err;
	}
	vm->vcpu = ioctl(vm->vm, KVM_CREATE_VCPU, 0);
	if (vm->vcpu < 0)
		return fail(r, "KVM_CREATE_VCPU", errno);
	struct kvm_vcpu_init init;
	if (ioctl(vm->vm, KVM_ARM_PREFERRED_TARGET, &init))
		return fail(r, "KVM_ARM_PREFERRED_TARGET", errno);
	if (ioctl(vm->vcpu, KVM_ARM_VCPU_INIT, &init))
		return fail(r, "KVM_ARM_VCPU_INIT", errno);
	int size = ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size <= 0)
		return fail(r, "KVM_GET_VCPU_MMAP_SIZE", errno);
	vm->run_size = (size_t)size;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, 0);
	if (vm->run == MAP_FAILED) {
		vm->run = NULL;
		return fail(r, "mmap kvm_run", errno);
	}
	if (set_reg(vm, offsetof(struct kvm_regs, regs.pc), DMTK_RAM_IPA))
		return fail(r, "KVM_SET_ONE_REG pc", errno);
	int rc = setup_timer(vm);
	return rc ? fail(r, "timer_create", -rc) : 0;
}

/* Run the vCPU until the payload exits through EXIT_IPA (or the VM dies). */
static int run_until_exit(struct dmtk_vm *vm, struct dmtk_result *r)
{
	struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
	for (;;) {
		arm_timer(vm, vm->timeout_ms);
		int rc = ioctl(vm->vcpu, KVM_RUN, 0);
		int err = errno;
		arm_timer(vm, 0);
		if (rc < 0) {
			vm->dead = 1;
			r->status = err == EINTR ? ST_HANG : ST_KILLED;
			r->err = err;
			return -err;
		}
		struct kvm_run *run = vm->run;
		if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == DMTK_EXIT_IPA && run->mmio.is_write) {
			uint64_t code;
			memcpy(&code, run->mmio.data, sizeof(code));
			r->ret = mb->ret;
			if (code == DMTK_EXIT_FAULT) {
				r->status = ST_FAULT;
				r->esr = mb->esr, r->far = mb->far, r->elr = mb->elr, r->vector = mb->vector;
			} else {
				r->status = ST_DONE;
			}
			return 0;
		}
		vm->dead = 1;
		r->exit_reason = run->exit_reason == KVM_EXIT_MMIO ? run->mmio.phys_addr : run->exit_reason;
		return fail(r, run->exit_reason == KVM_EXIT_MMIO ? "MMIO exit outside the mailbox (address in exit_reason)"
								  : "unexpected KVM exit (reason in exit_reason)", EIO);
	}
}

/* Create and boot a VM (it answers an INFO request).  On failure *out is NULL and r says
 * why; the VM is torn down. */
int dmtk_open(const struct dmtk_config *c, struct dmtk_vm **out, struct dmtk_result *r)
{
	memset(r, 0, sizeof(*r));
	*out = NULL;
	if (!c->target_size || c->target_size % PAGE || c->target_size > DMTK_WINDOW_STRIDE)
		return fail(r, "target size must be a multiple of 4 KiB and at most 64 GiB", EINVAL);
	struct dmtk_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return fail(r, "calloc", ENOMEM);
	vm->kvm = vm->vm = vm->vcpu = -1;
	vm->timeout_ms = c->timeout_ms ? c->timeout_ms : 10000;
	int rc = create(vm, c, r);
	if (!rc) {
		struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
		mb->op = DMTK_OP_INFO;
		rc = run_until_exit(vm, r); /* boot: MMU on, then the INFO answer */
		if (!rc && r->status != ST_DONE)
			rc = fail(r, "payload faulted while booting", EIO);
	}
	if (rc) {
		dmtk_close(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

/* The payload's INFO answer (valid after dmtk_open). */
void dmtk_info(struct dmtk_vm *vm, uint64_t out[4])
{
	struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
	out[0] = mb->cntfrq, out[1] = mb->features, out[2] = mb->midr, out[3] = mb->mmfr2;
}

/* One request.  `args` (may be NULL) is copied in for INIT; the payload keeps its copy
 * (cursor, sink) across RUN requests. */
int dmtk_call(struct dmtk_vm *vm, uint32_t op, uint32_t index, uint32_t attr, uint64_t loops, uint64_t offset,
	      const struct dmt_args *args, uint32_t timeout_ms, struct dmtk_result *r)
{
	memset(r, 0, sizeof(*r));
	if (vm->dead)
		return fail(r, "the VM is dead (killed, hung or failed earlier)", ESRCH);
	struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
	if (op == DMTK_OP_INIT && args)
		memcpy((void *)&mb->args, args, sizeof(*args));
	mb->op = op, mb->index = index, mb->attr = attr, mb->loops = loops, mb->offset = offset;
	if (attr >= DMTK_ATTRS)
		return fail(r, "attribute index out of range", EINVAL);
	vm->timeout_ms = timeout_ms ? timeout_ms : vm->timeout_ms;
	return run_until_exit(vm, r);
}
