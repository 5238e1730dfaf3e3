/* SPDX-License-Identifier: GPL-2.0 */
/* dmattr: map a kernel buffer or a PCI BAR range with a chosen memory attribute.
 * Shared by the module and (as constants) bench/targets/kmod.py: keep them in sync. */
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

#define DMATTR_IOC_SET _IOW('D', 1, struct dmattr_req)
#define DMATTR_IOC_QUERY _IOR('D', 2, __u32) /* bit n set: attr n is supported */

#endif
