/* x86check: the tiny VMM's run loop (vmmcore.c, the same code vmm.c runs on arm64) driven
 * by a real x86 KVM vCPU in 16-bit real mode, so its deadline and EINTR handling are
 * checked on an x86 Linux host with /dev/kvm (tests/test_kvm.py).  KVM's immediate_exit
 * and EINTR rules are in generic KVM code, the same on both architectures.
 *
 *   x86check late-entry   the timer fires before KVM_RUN is entered (the loop's before_entry
 *                         hook sleeps past the deadline): the case must still end (deadline)
 *   x86check retry        other signals interrupt KVM_RUN three times, then the guest halts:
 *                         every EINTR is retried and the exit (HLT) comes back
 *   x86check signals      other signals every 30 ms and a guest that never exits: retried,
 *                         and still the deadline ends it
 * Prints one line: result=exit|deadline|-ERRNO exit_reason=N entries=N retried=N elapsed_ms=N
 *   x86check layout TARGET RAM HEAP PAGE MAXBITS   dmtk_layout() for those sizes (no KVM used):
 * rc=N target_ipa=0x.. ram_end=0x.. ipa_bits=N vm_type=N stride=0x.. why=...
 *   x86check tables TARGET RAM HEAP   the stage-1 tables vmm.c builds for that layout, walked as
 * the payload's MMU would: one line per address, "NAME va=0x.. pa=0x..|unmapped attr=N" */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "abi.h"
#include "vmmcore.h"

#define FLAG 0x100 /* the byte the "retry" guest polls */

/* jmp $ */
static const unsigned char SPIN[] = {0xeb, 0xfe};
/* 0: cmp byte [0x100], 0; je 0; hlt */
static const unsigned char POLL[] = {0x80, 0x3e, 0x00, 0x01, 0x00, 0x74, 0xf9, 0xf4};

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	volatile unsigned char *mem;
};

static void die(const char *what)
{
	printf("error: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void setup(struct vm *v, const unsigned char *code, size_t len)
{
	if ((v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
		die("open /dev/kvm");
	if ((v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0)) < 0)
		die("KVM_CREATE_VM");
	v->mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (v->mem == MAP_FAILED)
		die("mmap guest memory");
	memcpy((void *)v->mem, code, len);
	struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = 0x1000,
						 .userspace_addr = (uint64_t)(uintptr_t)v->mem};
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		die("KVM_SET_USER_MEMORY_REGION");
	if ((v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0)) < 0)
		die("KVM_CREATE_VCPU");
	int size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	if (v->run == MAP_FAILED)
		die("mmap kvm_run");
	struct kvm_sregs sregs;
	if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs))
		die("KVM_GET_SREGS");
	sregs.cs.base = 0, sregs.cs.selector = 0;
	sregs.ds.base = 0, sregs.ds.selector = 0;
	if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs))
		die("KVM_SET_SREGS");
	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = 0, regs.rflags = 2;
	if (ioctl(v->vcpu, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS");
}

static void on_other(int sig) { (void)sig; } /* no SA_RESTART: KVM_RUN returns EINTR */

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000}, left;
	while (nanosleep(&t, &left) && errno == EINTR)
		t = left; /* the timer's own signal lands here in late-entry: sleep the rest */
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

struct pest {
	pthread_t target;
	int count; /* signals to send (0: until stop) */
	volatile int stop;
	volatile unsigned char *flag; /* set to 1 after the signals (retry), or NULL */
};

/* Another thread that signals the vCPU thread, as a profiler or the Python side might. */
static void *pester(void *arg)
{
	struct pest *p = arg;
	for (int i = 0; !p->stop && (!p->count || i < p->count); i++) {
		sleep_ms(30);
		pthread_kill(p->target, SIGUSR1);
	}
	if (p->flag) {
		sleep_ms(30);
		*p->flag = 1;
	}
	return NULL;
}

static void late_entry(void *ctx)
{
	sleep_ms(*(long *)ctx); /* past the deadline: the timer fires before KVM_RUN is entered */
}

static int layout(char **argv)
{
	struct dmtk_layout l;
	const char *why;
	int rc = dmtk_layout(strtoull(argv[0], NULL, 0), strtoull(argv[1], NULL, 0), strtoull(argv[2], NULL, 0),
			     strtoull(argv[3], NULL, 0), (uint32_t)strtoul(argv[4], NULL, 0), &l, &why);
	printf("rc=%d target_ipa=%#llx ram_end=%#llx ipa_bits=%u vm_type=%u stride=%#llx why=%s\n", rc,
	       (unsigned long long)l.target_ipa, (unsigned long long)(0x40000000ull + l.ram_bytes), l.ipa_bits,
	       l.vm_type, (unsigned long long)l.window_stride, why);
	return 0;
}

static void walk(const char *name, const uint8_t *ram, uint64_t ttbr0, uint64_t va)
{
	uint64_t pa;
	uint32_t attr;
	if (dmtk_s1_walk(ram, ttbr0, va, &pa, &attr))
		printf("%s va=%#llx unmapped\n", name, (unsigned long long)va);
	else
		printf("%s va=%#llx pa=%#llx attr=%u\n", name, (unsigned long long)va, (unsigned long long)pa, attr);
}

static int tables(char **argv)
{
	uint64_t target = strtoull(argv[0], NULL, 0);
	struct dmtk_layout l;
	const char *why;
	if (dmtk_layout(target, strtoull(argv[1], NULL, 0), strtoull(argv[2], NULL, 0), 4096, 48, &l, &why)) {
		printf("error: %s\n", why);
		return 2;
	}
	uint8_t *ram = mmap(NULL, l.ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap payload RAM");
	struct dmtk_mailbox *mb = (struct dmtk_mailbox *)(ram + (DMTK_MAILBOX_IPA - DMTK_RAM_IPA));
	if (dmtk_build_tables(ram, &l, target, 0, mb)) {
		printf("error: stage-1 table pool too small\n");
		return 2;
	}
	printf("target_ipa=%#llx tcr=%#llx\n", (unsigned long long)l.target_ipa, (unsigned long long)mb->tcr);
	walk("image", ram, mb->ttbr0, DMTK_RAM_IPA);
	walk("mailbox", ram, mb->ttbr0, DMTK_MAILBOX_IPA);
	walk("guard", ram, mb->ttbr0, DMTK_GUARD_IPA);
	walk("guard_end", ram, mb->ttbr0, DMTK_GUARD_IPA + 4095);
	walk("stack_low", ram, mb->ttbr0, DMTK_GUARD_IPA + 4096);
	walk("stack_top", ram, mb->ttbr0, DMTK_STACK_TOP - 8);
	walk("ram_end", ram, mb->ttbr0, DMTK_RAM_IPA + l.ram_bytes - 8);
	walk("exit", ram, mb->ttbr0, DMTK_EXIT_IPA);
	for (int k = 0; k < DMTK_ATTRS; k++) {
		char name[32];
		uint64_t w = mb->window_base + k * mb->window_stride;
		snprintf(name, sizeof(name), "window%d", k);
		walk(name, ram, mb->ttbr0, w);
		snprintf(name, sizeof(name), "window%d_last", k);
		walk(name, ram, mb->ttbr0, w + target - 8);
		snprintf(name, sizeof(name), "window%d_past", k);
		walk(name, ram, mb->ttbr0, w + target);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "layout") && argc == 7)
		return layout(argv + 2);
	if (!strcmp(mode, "tables") && argc == 5)
		return tables(argv + 2);
	int retry = !strcmp(mode, "retry"), late = !strcmp(mode, "late-entry"), sigs = !strcmp(mode, "signals");
	if (!retry && !late && !sigs) {
		printf("error: usage: x86check late-entry|retry|signals\n");
		return 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_other;
	sigaction(SIGUSR1, &sa, NULL);
	struct vm v;
	setup(&v, retry ? POLL : SPIN, retry ? sizeof(POLL) : sizeof(SPIN));
	struct dmtk_entry e;
	memset(&e, 0, sizeof(e));
	e.vcpu = v.vcpu, e.run = v.run;
	int rc = dmtk_entry_init(&e);
	if (rc) {
		errno = -rc;
		die("dmtk_entry_init");
	}
	long sleep_for = 300;
	if (late)
		e.before_entry = late_entry, e.ctx = &sleep_for;
	struct pest p = {pthread_self(), retry ? 3 : 0, 0, retry ? v.mem + FLAG : NULL};
	pthread_t t;
	if ((retry || sigs) && pthread_create(&t, NULL, pester, &p))
		die("pthread_create");
	uint32_t timeout = retry ? 5000 : late ? 100 : 300;
	double t0 = now_ms();
	int r = dmtk_enter(&e, timeout);
	double took = now_ms() - t0;
	p.stop = 1;
	if (retry || sigs)
		pthread_join(t, NULL);
	char res[16];
	snprintf(res, sizeof(res), "%d", r);
	printf("result=%s exit_reason=%u entries=%llu retried=%llu elapsed_ms=%.0f\n",
	       r == DMTK_ENTER_EXIT ? "exit" : r == DMTK_ENTER_DEADLINE ? "deadline" : res, v.run->exit_reason,
	       (unsigned long long)e.entries, (unsigned long long)e.retried, took);
	dmtk_entry_fini(&e);
	return 0;
}
