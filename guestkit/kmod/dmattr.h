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
	__u32 flags;       /* DMATTR_ALLOW_CLAIMED */
	__u32 pad;
};
/* Map a BAR although a driver other than vfio-pci owns the device (or holds the range):
 * the caller vouches that the device is idle or that its memory is scratch. */
#define DMATTR_ALLOW_CLAIMED 1u

/* DMATTR_IOC_S2READ (arm64 KVM hosts): the leaf stage-2 descriptor that maps `ipa` in the
 * KVM VM behind `vm_fd` (an fd of the caller), read from kvm->arch.mmu.pgt under
 * kvm->mmu_lock.  flags DMATTR_S2_MAPPED clear: no valid leaf yet (level says where the walk
 * stopped).  DMATTR_S2_FWB: KVM encodes this VM's stage 2 with FEAT_S2FWB (as its
 * stage2_has_fwb()).  Errors: EBADF (no such fd), EINVAL (not a KVM VM fd), ERANGE (IPA
 * beyond ia_bits), ENOENT (no stage-2 table), EPERM (lockdown), EOPNOTSUPP (not arm64). */
struct dmattr_s2_read {
	__s32 vm_fd;       /* in */
	__u32 flags;       /* out */
	__u64 ipa;         /* in */
	__u64 desc;        /* out: the raw leaf descriptor (0 when not mapped) */
	__u64 leaf;        /* out: bytes the leaf maps (4096, 2 MiB, 1 GiB with 4 KiB pages) */
	__s32 level;       /* out: the leaf's level */
	__u32 ia_bits;     /* out: the VM's IPA size */
	__s32 start_level; /* out: the level the walk started at */
	__u32 pad;
};
#define DMATTR_S2_MAPPED 1u
#define DMATTR_S2_FWB 2u

/* What this module can do on this kernel: the attributes each source can be mapped with
 * (bit n: attr n) and the largest RAM buffer (the buddy allocator's top order). */
struct dmattr_info {
	__u32 ram_attrs;
	__u32 bar_attrs;
	__u64 max_ram;
};

/* SET fails with EBUSY while a mapping of the fd's current source exists.  A BAR source is
 * refused with EPERM (lockdown, or a range a driver claimed exclusively), ENXIO (an I/O or
 * empty BAR), EADDRNOTAVAIL (a BAR with no address assigned), EACCES (a device owned by a
 * driver other than vfio-pci, or a range such a driver requested, without
 * DMATTR_ALLOW_CLAIMED), ENODEV (memory decoding off, or
 * the device was removed), EINVAL (a BAR start that is not page aligned, and every other bad
 * argument); open needs CAP_SYS_RAWIO (EPERM); mmap needs MAP_SHARED (EINVAL). */
#define DMATTR_IOC_SET _IOW('D', 1, struct dmattr_req)
#define DMATTR_IOC_INFO _IOR('D', 3, struct dmattr_info)
#define DMATTR_IOC_S2READ _IOWR('D', 4, struct dmattr_s2_read)

#endif
