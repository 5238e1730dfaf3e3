/* An independent pointer chase for `python -m bench selfcheck`, written like lmbench's
 * lat_mem_rd (random list of pointers, 100 loads unrolled per step) and sharing no code
 * with c_kernels: a different shuffle (Fisher-Yates over line indices, linked in visit
 * order), a different generator (splitmix64), a different allocator (malloc, faulted in
 * address order like the ram target's buffer) and its own clock reads (CLOCK_MONOTONIC,
 * as dmt_run).  It walks one full cycle before timing, as read-lat does in selfcheck, so
 * both time the steady state of the cycle rather than what initialisation left in the
 * caches (this chain is written in visit order, read-lat's in address order).
 * It used drand48 until 2026-11: a strong generator changed nothing beyond noise.
 *   usage: chase_ref SIZE_BYTES STRIDE SECONDS   -> prints ns per load
 *          chase_ref SIZE_BYTES STRIDE -   -> per line of seconds on stdin: ns per load, wall and CPU time
 *          chase_ref SIZE_BYTES STRIDE - FD OFFSET   -> the same, its chain in memory it shares
 *              with read-lat: the SIZE bytes of the memfd (or file) open as FD, mapped MAP_SHARED,
 *              its pointers OFFSET bytes into each STRIDE slot (selfcheck: read-lat's are at 0,
 *              these at 8), so both chains live in the same cache lines of the same pages. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* 100 loads per step, built from tens so that the count can be read off (until 2026-12 a
 * literal list of 96 x's stood here while the loop counted 100: every figure was 4% low;
 * tests/test_disasm.py now counts the loads in the compiled loop). */
#define TEN(x) x x x x x x x x x x
#define HUNDRED(x) TEN(TEN(x))
#define STEP p = (char **)*p;

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 6)
		return 2;
	size_t size = strtoull(argv[1], 0, 0), stride = strtoull(argv[2], 0, 0), n = size / stride;
	double secs = strcmp(argv[3], "-") ? atof(argv[3]) : 0;
	size_t offset = argc == 6 ? strtoull(argv[5], 0, 0) : 0;
	if (stride < sizeof(char *) || offset + sizeof(char *) > stride)
		return 2;
	char *mem;
	if (argc == 6) {
		/* Memory shared with read-lat (same frames, so the same placement; issue 19's
		 * build-order bias cannot arise).  Its page tables are faulted in address order,
		 * as read-lat's, by writing this chain's own word of each page: read-lat's chain
		 * in the same lines is left intact. */
		mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, atoi(argv[4]), 0);
		if (mem == MAP_FAILED)
			return 1;
		mem += offset;
		for (size_t off = 0; off + stride <= size; off += 4096)
			*(char **)(mem + off) = 0;
	} else {
		mem = malloc(size);
		if (!mem)
			return 1;
		/* Fault the buffer in address order first, as the `ram` target prefaults read-lat's:
		 * left to the linking loop below, pages would be faulted (and their frames handed
		 * out) in visit order, which ran 0-7% faster than the same chain on a prefaulted
		 * buffer in A/B runs on a loaded AMD EPYC VM (docs/fidelity.md): one confound less. */
		memset(mem, 0, size);
	}
	size_t *order = malloc(n * sizeof(*order));
	if (!order)
		return 1;
	uint64_t seed = 12345;
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(splitmix64(&seed) % (i + 1)), t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < n; i++)
		*(char **)(mem + order[i] * stride) = mem + order[(i + 1) % n] * stride;
	free(order);
	char **p = (char **)mem;
	for (size_t w = 0; w < n / 100 + 1; w++) { HUNDRED(STEP) } /* one full cycle: steady state */
	double t0, t, want;
	if (strcmp(argv[3], "-") == 0) {
		/* Serve timings: one line of seconds in, one line of ns per load out, the chain
		 * built once and walked on where the last slice stopped, so that selfcheck can
		 * alternate short slices with read-lat's (a loaded machine then hits both). */
		while (scanf("%lf", &want) == 1) {
			uint64_t loads = 0;
			double c0 = cpu_now();
			t0 = now();
			do {
				for (int r = 0; r < 1000; r++) { HUNDRED(STEP) }
				loads += 100000;
			} while ((t = now()) - t0 < want);
			/* Also this thread's CPU time: on a shared machine it leaves out the time the
			 * chase was not running at all (preempted), though not cache contention. */
			printf("%.4f %.4f\n", (t - t0) * 1e9 / loads, (cpu_now() - c0) * 1e9 / loads);
			fflush(stdout);
		}
		return p == NULL;
	}
	uint64_t loads = 0;
	t0 = now();
	do {
		for (int r = 0; r < 1000; r++) { HUNDRED(STEP) }
		loads += 100000;
	} while ((t = now()) - t0 < secs);
	printf("%.4f %p\n", (t - t0) * 1e9 / loads, (void *)p);
	return 0;
}
