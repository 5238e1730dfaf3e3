/* An independent pointer chase for `python -m bench selfcheck`, written like lmbench's
 * lat_mem_rd (random list of pointers, 100 loads unrolled per step) and sharing no code
 * with c_kernels: a different shuffle (drand48 Fisher-Yates over line indices), a
 * different allocator (malloc) and its own clock.
 *   usage: chase_ref SIZE_BYTES STRIDE SECONDS   -> prints ns per load */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define HUNDRED(x) x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x \
	x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x
#define STEP p = (char **)*p;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	size_t size = strtoull(argv[1], 0, 0), stride = strtoull(argv[2], 0, 0), n = size / stride;
	double secs = atof(argv[3]);
	char *mem = malloc(size);
	size_t *order = malloc(n * sizeof(*order));
	if (!mem || !order)
		return 1;
	srand48(12345);
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(drand48() * (i + 1)), t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < n; i++)
		*(char **)(mem + order[i] * stride) = mem + order[(i + 1) % n] * stride;
	free(order);
	char **p = (char **)mem;
	uint64_t loads = 0;
	for (int w = 0; w < 100000; w++) { HUNDRED(STEP) } /* warm the TLB and caches */
	double t0 = now(), t;
	do {
		for (int r = 0; r < 1000; r++) { HUNDRED(STEP) }
		loads += 100000;
	} while ((t = now()) - t0 < secs);
	printf("%.4f %p\n", (t - t0) * 1e9 / loads, (void *)p);
	return 0;
}
