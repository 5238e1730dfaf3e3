/* SPDX-License-Identifier: GPL-2.0 */
/* dmattr: map a kernel buffer or a PCI BAR range with a chosen memory attribute.
 * Shared by the module and (as constants) bench/targets/kmod.py: keep them in sync
 * (tests/test_kmod.py checks the ioctl numbers and struct sizes). */
#ifndef DMATTR_H
#define DMATTR_H
#include <linux/ioctl.h>
#include <linux/types.h>

enum dmattr_attr {
	DMATTR_DEVICE_NGNRNE = 0,
	DMATTR_DEVICE_NGNRE = 1,
	DMATTR_DEVICE_NGRE = 2,
	DMATTR_DEVICE_GRE = 3,
	DMATTR_NORMAL_NC = 4,
	DMATTR_NORMAL_WT = 5,
	DMATTR_NORMAL = 6,
	DMATTR_NR_ATTRS
};

enum dmattr_source {
	DMATTR_SRC_RAM = 0, /* physically contiguous kernel buffer of `size` bytes */
	DMATTR_SRC_BAR = 1, /* [offset, offset + size) of BAR `bar` of domain:bus:devfn */
	DMATTR_NR_SOURCES
};

struct dmattr_req {
	__u32 source;
	__u32 attr;
	__u64 size;
	__u32 domain;
	__u32 bus;
	__u32 devfn;
	__u32 bar;
	__u64 offset;
};

/* What this module can do on this kernel: the attributes each source can be mapped with
 * (bit n: attr n) and the largest RAM buffer (the buddy allocator's top order). */
struct dmattr_info {
	__u32 ram_attrs;
	__u32 bar_attrs;
	__u64 max_ram;
};

/* SET fails with EBUSY while a mapping of the fd's current source exists. */
#define DMATTR_IOC_SET _IOW('D', 1, struct dmattr_req)
#define DMATTR_IOC_INFO _IOR('D', 3, struct dmattr_info)

#endif
