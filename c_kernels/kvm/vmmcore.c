/* The architecture-independent half of the tiny VMM (see vmmcore.h): the IPA layout and
 * the KVM_RUN loop.  No arm64 definitions here: x86check.c links this file on x86. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "abi.h"
#include "vmmcore.h"

#define GIB (1ull << 30)
#define BLOCK (2ull << 20)
#define S1_PAGE 4096ull /* the payload's stage-1 granule, whatever the host's page size */

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

/* Stage-1 table pages the VMM can need (vmm.c's map(): 1 GiB blocks, then 2 MiB blocks,
 * then pages): per window a level-1 table per 512 GiB plus one level-1, one level-2 and one
 * level-3 table for unaligned ends; the RAM and exit-page maps the same; the root. */
static uint64_t tables_bytes(uint64_t target_size, uint64_t ram_bytes)
{
	uint64_t per_window = 4 + (target_size >> 39);
	return S1_PAGE * (16 + DMTK_ATTRS * per_window + (ram_bytes >> 39));
}

int dmtk_layout(uint64_t target_size, uint64_t ram_size, uint64_t heap_size, uint64_t page,
		uint32_t max_ipa_bits, struct dmtk_layout *l, const char **why)
{
	memset(l, 0, sizeof(*l));
	*why = "";
	if (!page || page & (page - 1) || BLOCK % page) {
		*why = "host page size is not a power of two dividing 2 MiB";
		return -EINVAL;
	}
	if (!target_size || target_size % page) {
		*why = "target size must be a non-zero multiple of the host page size";
		return -EINVAL;
	}
	/* 2^52: the largest IPA any arm64 KVM offers; also keeps the sums below from wrapping. */
	if (target_size > (1ull << 52) || ram_size > (1ull << 52) || heap_size > (1ull << 52)) {
		*why = "target, RAM or heap larger than a 52-bit address space";
		return -E2BIG;
	}
	uint64_t stride = 64 * GIB; /* small targets keep the windows where they always were */
	while (stride < target_size)
		stride <<= 1;
	if (DMTK_WINDOW_BASE + DMTK_ATTRS * stride > (1ull << DMTK_VA_BITS)) {
		*why = "target larger than the payload's seven 48-bit VA windows can map (32 TiB)";
		return -E2BIG;
	}
	l->window_stride = stride;
	l->tables_ipa = DMTK_TABLES_IPA;
	l->tables_bytes = tables_bytes(target_size, 16 * BLOCK + heap_size + ram_size);
	l->heap_ipa = l->tables_ipa + l->tables_bytes;
	l->ram_buf_ipa = round_up(l->heap_ipa + heap_size, BLOCK);
	l->ram_bytes = round_up(l->ram_buf_ipa + ram_size, BLOCK) - DMTK_RAM_IPA;
	/* After payload RAM, 1 GiB aligned (KVM can then use block mappings at stage 2 where
	 * the host mapping allows), never below the 4 GiB the target always had. */
	uint64_t ipa = round_up(DMTK_RAM_IPA + l->ram_bytes, GIB);
	l->target_ipa = ipa > DMTK_TARGET_IPA_MIN ? ipa : DMTK_TARGET_IPA_MIN;
	uint64_t end = l->target_ipa + target_size;
	uint32_t bits = 32;
	while (bits < 52 && end > (1ull << bits))
		bits++;
	if (end > (1ull << bits)) {
		*why = "target ends above a 52-bit IPA";
		return -E2BIG;
	}
	if (bits <= DMTK_IPA_DEFAULT_BITS) {
		l->ipa_bits = DMTK_IPA_DEFAULT_BITS;
		l->vm_type = 0;
		return 0;
	}
	if (max_ipa_bits < bits) {
		*why = "target ends above the largest IPA this host's KVM offers (KVM_CAP_ARM_VM_IPA_SIZE)";
		return -E2BIG;
	}
	l->ipa_bits = bits;
	l->vm_type = bits; /* KVM_VM_TYPE_ARM_IPA_SIZE(bits) */
	return 0;
}

/* --- stage-1 tables (4 KiB granule, 48-bit VA, built in payload RAM) ------------------ */

#define PAGE S1_PAGE
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

/* Map [va, va+size) to [pa, ...) with MAIR index attr: 1 GiB blocks, else 2 MiB blocks
 * where aligned, else 4 KiB pages.  Device and target windows are never executable. */
static int map(struct tables *t, uint64_t va, uint64_t pa, uint64_t size, int attr, int exec)
{
	uint64_t bits = D_AF | D_ISH | D_ATTR(attr) | (exec ? 0 : D_XN);
	while (size) {
		int level = 3;
		if (!(va % GIB) && !(pa % GIB) && size >= GIB)
			level = 1;
		else if (!(va % BLOCK) && !(pa % BLOCK) && size >= BLOCK)
			level = 2;
		uint64_t *e = entry(t, va, level);
		if (!e)
			return -ENOMEM;
		*e = pa | bits | (level < 3 ? D_VALID : D_TABLE);
		uint64_t step = level == 1 ? GIB : level == 2 ? BLOCK : PAGE;
		va += step, pa += step, size -= step;
	}
	return 0;
}

/* TCR_EL1.IPS for an IPA of `bits` (the smallest encoding that covers it). */
static uint64_t ips_of(uint32_t bits)
{
	static const uint32_t sizes[] = {32, 36, 40, 42, 44, 48, 52};
	uint64_t i = 0;
	while (i < 6 && sizes[i] < bits)
		i++;
	return i;
}

int dmtk_build_tables(uint8_t *ram, const struct dmtk_layout *l, uint64_t target_size, uint64_t mair,
		      struct dmtk_mailbox *mb)
{
	struct tables t = {ram, l->tables_ipa, l->tables_ipa + l->tables_bytes, 0};
	t.root = new_table(&t);
	uint64_t ram_end = DMTK_RAM_IPA + l->ram_bytes;
	/* Payload RAM less the guard page: a stack that overflows faults instead of writing
	 * the mailbox. */
	int rc = map(&t, DMTK_RAM_IPA, DMTK_RAM_IPA, DMTK_GUARD_IPA - DMTK_RAM_IPA, 6, 1);
	rc = rc ?: map(&t, DMTK_GUARD_IPA + PAGE, DMTK_GUARD_IPA + PAGE, ram_end - DMTK_GUARD_IPA - PAGE, 6, 1);
	rc = rc ?: map(&t, DMTK_EXIT_IPA, DMTK_EXIT_IPA, PAGE, 0, 0);
	uint64_t size = (target_size + PAGE - 1) / PAGE * PAGE;
	for (int k = 0; k < DMTK_ATTRS && !rc; k++)
		rc = map(&t, DMTK_WINDOW_BASE + k * l->window_stride, l->target_ipa, size, k, 0);
	mb->ttbr0 = t.root;
	/* T0SZ=16 (48-bit VA), walks Inner/Outer WB Inner Shareable, 4 KiB granule, no TTBR1
	 * walks (EPD1), IPS covering the VM's IPA size. */
	mb->tcr = 16 | (1ull << 8) | (1ull << 10) | (3ull << 12) | (1ull << 23) | (ips_of(l->ipa_bits) << 32);
	mb->mair = mair;
	mb->window_base = DMTK_WINDOW_BASE;
	mb->window_stride = l->window_stride;
	return rc;
}

int dmtk_s1_walk(const uint8_t *ram, uint64_t ttbr0, uint64_t va, uint64_t *pa, uint32_t *attr)
{
	uint64_t table = ttbr0;
	for (int l = 0; l < 4; l++) {
		uint64_t e = ((const uint64_t *)(ram + (table - DMTK_RAM_IPA)))[(va >> (39 - 9 * l)) & 511];
		if (!(e & D_VALID))
			return -ENOENT;
		int leaf = l == 3 || (e & 2) == 0; /* a block at levels 1-2, a page at level 3 */
		if (leaf) {
			uint64_t span = 1ull << (39 - 9 * l);
			*pa = (e & D_ADDR & ~(span - 1)) | (va & (span - 1));
			*attr = (uint32_t)((e >> 2) & 7);
			return 0;
		}
		table = e & D_ADDR;
	}
	return -ENOENT;
}

/* --- the run loop ------------------------------------------------------------------------ */

/* The entry whose deadline the timer signal ends (this thread's, while it is armed).
 * initial-exec: a signal handler must not allocate TLS lazily. */
static __thread struct dmtk_entry *volatile armed __attribute__((tls_model("initial-exec")));

/* The timer signal: sets immediate_exit, so a KVM_RUN entered after the signal (the timer
 * fired between arming and entry) returns EINTR at once instead of running on, and marks
 * the deadline as passed.  No SA_RESTART: a KVM_RUN in progress returns EINTR. */
static void on_timer(int sig)
{
	(void)sig;
	struct dmtk_entry *e = armed;
	if (e) {
		e->fired = 1;
		e->run->immediate_exit = 1;
	}
}

static int timer_signal(void) { return SIGRTMIN + 1; }

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static int make_timer(struct dmtk_entry *e)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = timer_signal();
	e->tid = gettid_();
	sev._sigev_un._tid = e->tid; /* the thread in KVM_RUN, not any thread of the process */
	if (timer_create(CLOCK_MONOTONIC, &sev, &e->timer))
		return -errno;
	e->has_timer = 1;
	return 0;
}

int dmtk_entry_init(struct dmtk_entry *e)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_timer;
	sigemptyset(&sa.sa_mask);
	if (sigaction(timer_signal(), &sa, NULL))
		return -errno;
	(void)armed; /* touch this thread's TLS before the handler may read it */
	return make_timer(e);
}

void dmtk_entry_fini(struct dmtk_entry *e)
{
	if (e->has_timer)
		timer_delete(e->timer);
	e->has_timer = 0;
}

static void arm(struct dmtk_entry *e, uint32_t ms)
{
	struct itimerspec its = {{0, 0}, {ms / 1000, (long)(ms % 1000) * 1000000}};
	timer_settime(e->timer, 0, &its, NULL);
}

static int passed(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

int dmtk_enter(struct dmtk_entry *e, uint32_t timeout_ms)
{
	if (e->has_timer && e->tid != gettid_()) {
		/* Called from another thread than the last time: the timer must signal this one. */
		dmtk_entry_fini(e);
		int rc = make_timer(e);
		if (rc)
			return rc;
	}
	if (!e->has_timer)
		return -EINVAL;
	if (!timeout_ms)
		timeout_ms = 1; /* a zero it_value would disarm the timer: no deadline at all */
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	e->entries = e->retried = 0;
	e->fired = 0;
	e->run->immediate_exit = 0; /* only here, before arming: never after the timer may have fired */
	armed = e;
	arm(e, timeout_ms);
	if (e->before_entry)
		e->before_entry(e->ctx);
	int result;
	for (;;) {
		e->entries++;
		int rc = ioctl(e->vcpu, KVM_RUN, 0);
		int err = errno;
		if (rc == 0 && e->run->exit_reason == KVM_EXIT_INTR)
			rc = -1, err = EINTR; /* the same interruption, reported as an exit */
		if (rc == 0) {
			result = DMTK_ENTER_EXIT;
			break;
		}
		if (err != EINTR) {
			result = -err;
			break;
		}
		if (e->fired || passed(&deadline)) {
			result = DMTK_ENTER_DEADLINE;
			break;
		}
		e->retried++; /* another signal (a profiler, the Python side's): not our deadline */
	}
	arm(e, 0);
	armed = NULL;
	e->run->immediate_exit = 0;
	return result;
}
