/* The tiny VMM: one KVM VM per case on an arm64 Linux host, loaded with ctypes by
 * bench/targets/kvmvm.py.  It maps the payload's RAM and the memory under test (a host
 * userspace mapping of the window the case uses: anonymous RAM, a sysfs resourceN mmap, a
 * vfio-pci region mmap or a dmattr BAR mmap), lays out the IPAs from the sizes and the
 * VM's IPA limit (vmmcore.c), builds the payload's stage-1 tables, and runs one request at
 * a time.  Each request ends as one of: done (the payload's return value), fault (a
 * synchronous exception the payload took at EL1: ESR, FAR, ELR), serror (an SError taken
 * at EL1, or still pending at the closing barrier: ESR, ISR), runfail (KVM_RUN failed:
 * errno; the caller reads the host log line and decides whether the VM was killed by a
 * stage-2 fault), hang (no answer before the timeout) or error (an exit the payload never
 * causes, or a step that failed).  Opening a VM can also end as refused: KVM would not
 * take a cacheable PFNMAP target memslot (EINVAL; KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED of
 * that VM in `ret`).  The stage-2 attribute is never chosen here: the host kernel's KVM
 * picks it per memslot. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "abi.h"
#include "vmmcore.h"

#define VMM_ABI 3
/* Linux 6.17 (include/uapi/linux/kvm.h); older headers lack it. */
#ifndef KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED
#define KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED 243
#endif

enum { ST_DONE = 0, ST_FAULT = 1, ST_RUNFAIL = 2, ST_HANG = 3, ST_ERROR = 4, ST_REFUSED = 5, ST_SERROR = 6 };

/* Mirrored by bench/targets/kvmvm.py (Config, Result). */
struct dmtk_config {
	const void *payload;
	uint64_t payload_len;
	void *target;         /* host mapping of the window under test, host-page aligned */
	uint64_t target_size; /* bytes, a multiple of the host page size */
	uint64_t ram_size;    /* RAM buffer for copy kernels */
	uint64_t heap_size;   /* heap for kernel init (read-lat's permutation) */
	uint64_t mair;        /* MAIR_EL1: index k = attribute k of bench.memtypes */
	uint32_t timeout_ms;  /* per request */
	uint32_t flags;       /* DMTK_TARGET_* */
};

#define DMTK_TARGET_READONLY 1u  /* the host mapping is read-only: a read-only memslot, no stores */
#define DMTK_TARGET_CACHEABLE 2u /* a cacheable VM_PFNMAP (dmattr normal): KVM may refuse it */

struct dmtk_result {
	int32_t status; /* ST_* */
	int32_t err;    /* errno of the failing call (runfail, error) */
	int64_t ret;    /* the payload's return value (done); refused: the capability value */
	uint64_t esr, far, elr, vector;
	uint64_t exit_reason; /* KVM exit reason or MMIO address (error) */
	uint64_t isr;         /* serror: ISR_EL1 at the closing barrier (0: the SError was taken) */
	uint64_t retried;     /* EINTRs from other signals that were retried */
	char what[96];        /* the failing step, in words (error) */
};

struct dmtk_vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *ram;
	struct dmtk_layout lay;
	uint64_t target_size;
	uint32_t flags;
	uint32_t timeout_ms;
	struct dmtk_entry entry;
	int has_entry;
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

static struct dmtk_mailbox *mailbox(struct dmtk_vm *vm)
{
	return (struct dmtk_mailbox *)(vm->ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
}

/* --- VM lifecycle ---------------------------------------------------------------------- */

void dmtk_close(struct dmtk_vm *vm)
{
	if (!vm)
		return;
	if (vm->has_entry)
		dmtk_entry_fini(&vm->entry);
	if (vm->run)
		munmap(vm->run, vm->run_size);
	if (vm->vcpu >= 0)
		close(vm->vcpu);
	if (vm->vm >= 0)
		close(vm->vm);
	if (vm->kvm >= 0)
		close(vm->kvm);
	if (vm->ram)
		munmap(vm->ram, vm->lay.ram_bytes);
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

/* The target memslot failed with err: `refused` only where the rule it meets is KVM's
 * (Linux 6.17+): EINVAL for a cacheable PFNMAP on a VM that does not advertise
 * KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED.  Any other failure is an error of the case. */
static int target_slot_failed(struct dmtk_vm *vm, const struct dmtk_config *c, struct dmtk_result *r, int err)
{
	int64_t cap = check_extension(vm->vm, KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED);
	fail(r, "KVM_SET_USER_MEMORY_REGION (target memory)", err);
	r->ret = cap;
	if (err == EINVAL && (c->flags & DMTK_TARGET_CACHEABLE) && cap <= 0)
		r->status = ST_REFUSED;
	return -err;
}

static int create_vm(struct dmtk_vm *vm, const struct dmtk_config *c, struct dmtk_result *r)
{
	vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm < 0)
		return fail(r, "open /dev/kvm", errno);
	if (ioctl(vm->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		return fail(r, "KVM_GET_API_VERSION: unexpected KVM API version", EINVAL);
	int64_t max_bits = check_extension(vm->kvm, KVM_CAP_ARM_VM_IPA_SIZE); /* 0: only 40 bits */
	long page = sysconf(_SC_PAGESIZE);
	const char *why;
	int rc = dmtk_layout(c->target_size, c->ram_size, c->heap_size, (uint64_t)page,
			     max_bits > 0 ? (uint32_t)max_bits : 0, &vm->lay, &why);
	if (rc)
		return fail(r, why, -rc);
	if ((uintptr_t)c->target % (uint64_t)page)
		return fail(r, "target mapping not aligned to the host page size", EINVAL);
	vm->vm = ioctl(vm->kvm, KVM_CREATE_VM, (unsigned long)vm->lay.vm_type);
	if (vm->vm < 0)
		return fail(r, vm->lay.vm_type ? "KVM_CREATE_VM with a larger IPA size" : "KVM_CREATE_VM", errno);
	return 0;
}

static int load_payload(struct dmtk_vm *vm, const struct dmtk_config *c, struct dmtk_result *r)
{
	const struct dmtk_layout *l = &vm->lay;
	vm->ram = mmap(NULL, l->ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->ram == MAP_FAILED) {
		vm->ram = NULL;
		return fail(r, "mmap payload RAM", errno);
	}
	if (c->payload_len > DMTK_IMAGE_MAX)
		return fail(r, "payload image larger than DMTK_IMAGE_MAX", E2BIG);
	memcpy(vm->ram, c->payload, c->payload_len);
	struct dmtk_mailbox *mb = mailbox(vm);
	mb->magic = DMTK_MAGIC;
	mb->heap = l->heap_ipa, mb->heap_size = c->heap_size;
	mb->ram = l->ram_buf_ipa, mb->ram_size = c->ram_size;
	mb->target_size = c->target_size;
	if (dmtk_build_tables(vm->ram, l, c->target_size, c->mair, mb))
		return fail(r, "stage-1 tables: pool too small", ENOMEM);
	return 0;
}

static int create(struct dmtk_vm *vm, const struct dmtk_config *c, struct dmtk_result *r)
{
	int rc = create_vm(vm, c, r);
	rc = rc ?: load_payload(vm, c, r);
	if (rc)
		return rc;
	if (slot(vm, 0, DMTK_RAM_IPA, vm->ram, vm->lay.ram_bytes, 0))
		return fail(r, "KVM_SET_USER_MEMORY_REGION (payload RAM)", errno);
	/* Read-only: a guest store becomes an MMIO exit outside the mailbox (an error), never a
	 * write to memory the user did not allow writing. */
	uint32_t tflags = (c->flags & DMTK_TARGET_READONLY) ? KVM_MEM_READONLY : 0;
	if (slot(vm, 1, vm->lay.target_ipa, c->target, c->target_size, tflags))
		return target_slot_failed(vm, c, r, errno);
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
	vm->entry.vcpu = vm->vcpu;
	vm->entry.run = vm->run;
	rc = dmtk_entry_init(&vm->entry);
	vm->has_entry = !rc;
	return rc ? fail(r, "timer_create", -rc) : 0;
}

/* Run the vCPU until the payload exits through EXIT_IPA (or the VM dies). */
static int run_until_exit(struct dmtk_vm *vm, struct dmtk_result *r)
{
	struct dmtk_mailbox *mb = mailbox(vm);
	int rc = dmtk_enter(&vm->entry, vm->timeout_ms);
	r->retried = vm->entry.retried;
	if (rc == DMTK_ENTER_DEADLINE) {
		vm->dead = 1;
		r->status = ST_HANG;
		return -ETIMEDOUT;
	}
	if (rc < 0) {
		vm->dead = 1;
		r->status = ST_RUNFAIL;
		r->err = -rc;
		return rc;
	}
	struct kvm_run *run = vm->run;
	if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == DMTK_EXIT_IPA && run->mmio.is_write) {
		uint64_t code;
		memcpy(&code, run->mmio.data, sizeof(code));
		r->ret = mb->ret;
		if (code == DMTK_EXIT_FAULT || code == DMTK_EXIT_SERROR) {
			r->status = code == DMTK_EXIT_FAULT ? ST_FAULT : ST_SERROR;
			r->esr = mb->esr, r->far = mb->far, r->elr = mb->elr, r->vector = mb->vector, r->isr = mb->isr;
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

/* Create and boot a VM (it answers an INFO request).  On failure *out is NULL and r says
 * why; the VM is torn down. */
int dmtk_open(const struct dmtk_config *c, struct dmtk_vm **out, struct dmtk_result *r)
{
	memset(r, 0, sizeof(*r));
	*out = NULL;
	struct dmtk_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return fail(r, "calloc", ENOMEM);
	vm->kvm = vm->vm = vm->vcpu = -1;
	vm->timeout_ms = c->timeout_ms ? c->timeout_ms : 10000;
	vm->target_size = c->target_size;
	vm->flags = c->flags;
	int rc = create(vm, c, r);
	if (!rc) {
		mailbox(vm)->op = DMTK_OP_INFO;
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
	struct dmtk_mailbox *mb = mailbox(vm);
	out[0] = mb->cntfrq, out[1] = mb->features, out[2] = mb->midr, out[3] = mb->mmfr2;
}

/* The VM fd (for reading this VM's stage-2 tables: bench.stage2) and where things are:
 * out = {target IPA, target size, IPA bits, window stride, payload RAM bytes}. */
int dmtk_vm_fd(struct dmtk_vm *vm) { return vm->vm; }

void dmtk_where(struct dmtk_vm *vm, uint64_t out[5])
{
	out[0] = vm->lay.target_ipa, out[1] = vm->target_size, out[2] = vm->lay.ipa_bits;
	out[3] = vm->lay.window_stride, out[4] = vm->lay.ram_bytes;
}

/* Make a virtual SError pending on the vCPU (KVM_SET_VCPU_EVENTS), with `esr` as its
 * syndrome when non-zero (needs KVM_CAP_ARM_INJECT_SERROR_ESR).  It is what a host's RAS
 * handling does for an asynchronous abort caused by the guest; the payload then reports
 * `serror` for the next request.  0 or -errno. */
int dmtk_inject_serror(struct dmtk_vm *vm, uint64_t esr)
{
	struct kvm_vcpu_events ev;
	memset(&ev, 0, sizeof(ev));
	ev.exception.serror_pending = 1;
	ev.exception.serror_has_esr = esr != 0;
	ev.exception.serror_esr = esr;
	return ioctl(vm->vcpu, KVM_SET_VCPU_EVENTS, &ev) ? -errno : 0;
}

/* One request.  `args` (may be NULL) is copied in for INIT; the payload keeps its copy
 * (cursor, sink) across RUN requests.  PREFAULT touches [offset, offset + length) of the
 * target, and stores (loops != 0) only where the target is writable. */
int dmtk_call(struct dmtk_vm *vm, uint32_t op, uint32_t index, uint32_t attr, uint64_t loops, uint64_t offset,
	      uint64_t length, const struct dmt_args *args, uint32_t timeout_ms, struct dmtk_result *r)
{
	memset(r, 0, sizeof(*r));
	if (vm->dead)
		return fail(r, "the VM is dead (killed, hung or failed earlier)", ESRCH);
	if (attr >= DMTK_ATTRS)
		return fail(r, "attribute index out of range", EINVAL);
	if (op == DMTK_OP_PREFAULT) {
		if (offset > vm->target_size || length > vm->target_size - offset)
			return fail(r, "prefault range outside the target", EINVAL);
		if (vm->flags & DMTK_TARGET_READONLY)
			loops = 0; /* a read-only case is only ever read */
	}
	struct dmtk_mailbox *mb = mailbox(vm);
	if (op == DMTK_OP_INIT && args)
		memcpy((void *)&mb->args, args, sizeof(*args));
	mb->op = op, mb->index = index, mb->attr = attr, mb->loops = loops, mb->offset = offset, mb->length = length;
	vm->timeout_ms = timeout_ms ? timeout_ms : vm->timeout_ms;
	return run_until_exit(vm, r);
}
