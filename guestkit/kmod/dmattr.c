// SPDX-License-Identifier: GPL-2.0
/*
 * dmattr: a misc device (/dev/dmattr) for dmtbench.  ioctl(DMATTR_IOC_SET) picks a source
 * (a physically contiguous kernel buffer, or a range of a PCI BAR) and a memory attribute;
 * mmap() then maps exactly that source with that attribute's page protection.
 * DMATTR_IOC_INFO says which attributes each source takes here and the largest buffer.
 *
 * Every argument is validated; a rejected request returns -EINVAL (or -EOPNOTSUPP for an
 * attribute this kernel cannot give that source) and says why in dmesg.
 *
 * Lifetime: vm_ops open/close count the mappings of an fd's source (fork and partial
 * munmap included).  SET returns -EBUSY while one exists, so a source is freed only when
 * nothing maps it: by the next SET, or by release, which comes after the last munmap.
 *
 * A RAM buffer also stays in the kernel's cacheable linear map.  How each arch makes the
 * uncached mapping of it safe:
 *  - arm64: clean and invalidate the whole buffer to the point of coherency (DC CIVAC on
 *    every line) after zeroing it and again before freeing it.  The first leaves no dirty
 *    line in the cacheable alias that could be evicted over what is written through the
 *    uncached mapping, and puts the zeroes in memory; the second drops lines speculation
 *    pulled in through the alias meanwhile (clean, never written back) before the pages
 *    are reused.  The kernel itself never touches the buffer while it is mapped.  This is
 *    the maintenance the DMA API does for a non-coherent device's buffer.
 *  - x86: PAT keeps one memory type per RAM page and forces it on every mapping of the
 *    page ("map pfn RAM range req ... got write-back"), so the buffer's type is set with
 *    set_memory_uc()/set_memory_wc() (which also changes the linear map and flushes the
 *    caches) and set back to write-back before the pages are freed.  PAT gives RAM no
 *    strong UC and set_memory_wt() is not exported to modules, so RAM offers neither
 *    device-ngnrne (UC) nor normal-wt (WT) on x86; a BAR offers both.
 * Each mmap reads back the memory-type bits of the PTEs it installed (first and last page)
 * and fails with -EIO, saying what it found in dmesg, unless they are the type asked for:
 * PAT replaces a type without failing the mapping.
 *
 * A BAR is mapped under the rules of the sysfs resourceN mmap (drivers/pci/pci-sysfs.c
 * pci_mmap_resource, 6.1..7.x): not under lockdown (LOCKDOWN_PCI_ACCESS), only an assigned
 * memory BAR, never a range a driver claimed exclusively (iomem_is_exclusive(), which is
 * not exported: the same test through walk_iomem_res_desc(), over the whole range), and
 * not a range another driver requested (IO_STRICT_DEVMEM, as Debian builds) unless the
 * caller passes DMATTR_ALLOW_CLAIMED; also refused: a device bound to a driver other than
 * vfio-pci (same flag), memory decoding off, a BAR start off a page boundary, MAP_PRIVATE
 * (a private mapping's first write would copy the page into anonymous RAM with this
 * protection).  Opening /dev/dmattr needs CAP_SYS_RAWIO, as /dev/mem does.
 * The source holds its pci_dev until nothing maps it.  When the device is removed (or
 * bound to another driver without DMATTR_ALLOW_CLAIMED) a PCI bus notifier zaps every PTE
 * of /dev/dmattr (unmap_mapping_range on the device inode's mapping: all fds share it);
 * the fault handler then refills the mappings of live sources and gives SIGBUS on the
 * removed one (zap_sem orders the two), so nothing keeps a physical range that may be
 * reassigned.  Left open: an mmap of the removed device's source that the kernel links
 * after the notifier ran (its PTEs come from this module's mmap, before the VMA is linked).  A reset is not
 * seen by a module that does not drive the device; it keeps the BAR's address.
 *
 * DMATTR_IOC_S2READ (arm64): the leaf stage-2 descriptor of a KVM VM's IPA, see s2_read().
 */
#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/ioport.h>
#include <linux/kallsyms.h>
#include <linux/list.h>
#include <linux/pci.h>
#include <linux/rcupdate.h>
#include <linux/rwsem.h>
#include <linux/security.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#ifdef CONFIG_ARM64
#include <asm/cpufeature.h>
#include <asm/sysreg.h>
#if IS_ENABLED(CONFIG_KVM)
#define DMATTR_S2 1
#include <linux/kvm_host.h>
#include <asm/kvm_pgtable.h>
#include <asm/virt.h>
#endif
#endif
#ifdef CONFIG_X86
#include <asm/memtype.h>
#include <asm/set_memory.h>
#endif

#include "dmattr.h"

#if !defined(CONFIG_ARM64) && !defined(CONFIG_X86)
#error "dmattr knows the memory types of arm64 and x86 only"
#endif

/* The buddy allocator's largest block: MAX_ORDER was exclusive before 6.4, inclusive
 * from 6.4, and renamed MAX_PAGE_ORDER in 6.8. */
#if defined(MAX_PAGE_ORDER)
#define DMATTR_TOP_ORDER MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define DMATTR_TOP_ORDER MAX_ORDER
#else
#define DMATTR_TOP_ORDER (MAX_ORDER - 1)
#endif
#define DMATTR_MAX_RAM (PAGE_SIZE << DMATTR_TOP_ORDER)

#ifdef CONFIG_X86
#define DMATTR_TYPE_BITS ((u64)_PAGE_CACHE_MASK)
#else
#define DMATTR_TYPE_BITS ((u64)PTE_ATTRINDX_MASK)
#endif

static const char *const attr_names[DMATTR_NR_ATTRS] = {
	"device-ngnrne", "device-ngnre", "device-ngre", "device-gre", "normal-nc", "normal-wt", "normal",
};

struct dmattr_ctx {
	struct mutex lock;
	struct dmattr_req req;
	bool set;
	atomic_t maps;       /* mappings of the current source */
	struct page *pages;  /* RAM source */
	unsigned int order;
	bool typed;          /* x86: the pages' memtype was changed from WB */
	bool leaked;         /* x86: set_memory_wb() failed, so the pages are never freed */
	phys_addr_t phys;    /* start of the source */
	struct pci_dev *pdev; /* BAR source: held until nothing maps it */
	bool gone;           /* the BAR's device was removed (or taken by another driver) */
	bool allow_claimed;  /* DMATTR_ALLOW_CLAIMED: another driver may own the device */
	struct list_head node; /* in bar_ctxs while pdev is set */
	struct address_space *mapping; /* the /dev/dmattr inode's, shared by every fd */
};

/* The contexts with a BAR source, for the bus notifier (bar_lock nests outside no lock). */
static LIST_HEAD(bar_ctxs);
static DEFINE_MUTEX(bar_lock);
/* Faults hold it for reading while they insert a PTE; the notifier for writing while it
 * marks sources gone and zaps, so no fault inserts a PTE of a removed device after the zap. */
static DECLARE_RWSEM(zap_sem);

#ifdef CONFIG_X86
/* The page protection for an attribute on `source`, or false where x86 has no such type. */
static bool attr_prot(u32 source, u32 attr, pgprot_t *prot)
{
	enum page_cache_mode pcm;

	switch (attr) {
	case DMATTR_DEVICE_NGNRNE:
		if (source == DMATTR_SRC_RAM)
			return false; /* PAT turns UC into UC- for RAM */
		pcm = _PAGE_CACHE_MODE_UC;
		break;
	case DMATTR_DEVICE_NGNRE:
		pcm = _PAGE_CACHE_MODE_UC_MINUS;
		break;
	case DMATTR_NORMAL_NC:
		if (!pat_enabled())
			return false; /* without PAT, WC is UC- */
		pcm = _PAGE_CACHE_MODE_WC;
		break;
	case DMATTR_NORMAL_WT:
		if (source == DMATTR_SRC_RAM)
			return false; /* set_memory_wt() is not exported */
		pcm = _PAGE_CACHE_MODE_WT;
		break;
	case DMATTR_NORMAL:
		pcm = _PAGE_CACHE_MODE_WB;
		break;
	default:
		return false;
	}
	*prot = __pgprot((pgprot_val(*prot) & ~_PAGE_CACHE_MASK) | cachemode2protval(pcm));
	return true;
}

/* Give the RAM pages the attribute's PAT memtype, so the user mapping gets it too. */
static int ram_type_set(struct dmattr_ctx *ctx, u32 attr)
{
	unsigned long addr = (unsigned long)page_address(ctx->pages);
	int n = 1 << ctx->order, ret = 0;

	if (attr == DMATTR_DEVICE_NGNRE)
		ret = set_memory_uc(addr, n);
	else if (attr == DMATTR_NORMAL_NC)
		ret = set_memory_wc(addr, n);
	if (ret)
		pr_warn("dmattr: cannot set the memtype of the buffer to %s (%d)\n", attr_names[attr], ret);
	ctx->typed = !ret && attr != DMATTR_NORMAL;
	return ret;
}

static void ram_type_clear(struct dmattr_ctx *ctx)
{
	int ret = 0;

	if (ctx->typed)
		ret = set_memory_wb((unsigned long)page_address(ctx->pages), 1 << ctx->order);
	if (ret) {
		/* Freed pages would be reused as write-back memory while the linear map (and
		 * PAT's record) still say UC/WC: keep them out of the allocator for good. */
		pr_err("dmattr: set_memory_wb failed (%d): leaking %lu bytes at %pa rather than freeing them still %s\n",
		       ret, PAGE_SIZE << ctx->order, &ctx->phys, attr_names[ctx->req.attr]);
		ctx->leaked = true;
	}
	ctx->typed = false;
}
#else /* CONFIG_ARM64 */
static bool attr_prot(u32 source, u32 attr, pgprot_t *prot)
{
	switch (attr) {
	case DMATTR_DEVICE_NGNRNE:
		*prot = pgprot_noncached(*prot);
		return true;
	case DMATTR_DEVICE_NGNRE:
		*prot = pgprot_device(*prot);
		return true;
#ifdef MT_DEVICE_nGRE
	case DMATTR_DEVICE_NGRE:
		*prot = __pgprot_modify(*prot, PTE_ATTRINDX_MASK, PTE_ATTRINDX(MT_DEVICE_nGRE) | PTE_PXN | PTE_UXN);
		return true;
#endif
#ifdef MT_DEVICE_GRE
	case DMATTR_DEVICE_GRE:
		*prot = __pgprot_modify(*prot, PTE_ATTRINDX_MASK, PTE_ATTRINDX(MT_DEVICE_GRE) | PTE_PXN | PTE_UXN);
		return true;
#endif
	case DMATTR_NORMAL_NC:
		*prot = pgprot_writecombine(*prot);
		return true;
	case DMATTR_NORMAL:
		return true; /* the default user protection is Normal write-back */
	default:
		return false;
	}
}

/* DC CIVAC over [start, start + len): clean and invalidate to the point of coherency. */
static void clean_inval_poc(void *start, size_t len)
{
	/* CTR_EL0.DminLine (bits 19:16) is log2 of the smallest data cache line in words; the
	 * sanitised value is the smallest over all CPUs. */
	unsigned long line = 4UL << ((read_sanitised_ftr_reg(SYS_CTR_EL0) >> 16) & 0xf);
	unsigned long p = (unsigned long)start & ~(line - 1), end = (unsigned long)start + len;

	for (; p < end; p += line)
		asm volatile("dc civac, %0" : : "r"(p) : "memory");
	dsb(sy);
}

static int ram_type_set(struct dmattr_ctx *ctx, u32 attr)
{
	clean_inval_poc(page_address(ctx->pages), PAGE_SIZE << ctx->order);
	return 0;
}

static void ram_type_clear(struct dmattr_ctx *ctx)
{
	clean_inval_poc(page_address(ctx->pages), PAGE_SIZE << ctx->order);
}
#endif

static u32 supported_mask(u32 source)
{
	u32 mask = 0, a;
	pgprot_t p = PAGE_SHARED;

	for (a = 0; a < DMATTR_NR_ATTRS; a++)
		if (attr_prot(source, a, &p))
			mask |= 1u << a;
	return mask;
}

static void release_source(struct dmattr_ctx *ctx)
{
	if (ctx->pages) {
		ram_type_clear(ctx);
		if (!ctx->leaked)
			__free_pages(ctx->pages, ctx->order);
	}
	ctx->pages = NULL;
	ctx->leaked = false;
	if (ctx->pdev) {
		mutex_lock(&bar_lock);
		list_del(&ctx->node);
		mutex_unlock(&bar_lock);
		pci_dev_put(ctx->pdev);
		ctx->pdev = NULL;
	}
	ctx->gone = false;
	ctx->set = false;
}

static int set_ram(struct dmattr_ctx *ctx, const struct dmattr_req *req)
{
	int ret;

	if (req->size > DMATTR_MAX_RAM) {
		pr_warn("dmattr: RAM size %llu above the %lu contiguous bytes the buddy allocator gives\n",
			req->size, (unsigned long)DMATTR_MAX_RAM);
		return -EINVAL;
	}
	ctx->order = get_order(req->size);
	ctx->pages = alloc_pages(GFP_KERNEL | __GFP_ZERO | __GFP_NOWARN, ctx->order);
	if (!ctx->pages) {
		pr_warn("dmattr: no free contiguous block of %lu bytes now\n", PAGE_SIZE << ctx->order);
		return -ENOMEM;
	}
	ctx->phys = page_to_phys(ctx->pages);
	ret = ram_type_set(ctx, req->attr);
	if (ret) {
		__free_pages(ctx->pages, ctx->order);
		ctx->pages = NULL;
	}
	return ret;
}

/* walk_iomem_res_desc callback: any match stops the walk. */
static int found_res(struct resource *res, void *arg)
{
	return 1;
}

/* Whether an iomem resource with all of `flags` overlaps [start, start + len). */
static bool range_has(resource_size_t start, resource_size_t len, unsigned long flags)
{
	return walk_iomem_res_desc(IORES_DESC_NONE, flags, start, start + len - 1, NULL, found_res) == 1;
}

/* Whether memory decoding is on (PCI_COMMAND_MEMORY): off, an access is a master abort. */
static bool decodes_memory(struct pci_dev *pdev)
{
	u16 cmd = 0;

	pci_read_config_word(pdev, PCI_COMMAND, &cmd);
	return cmd & PCI_COMMAND_MEMORY;
}

/* 0, or why [phys, phys + size) of pdev may not be mapped: the rules of the sysfs resource
 * mmap (pci_mmap_resource) and of ownership. */
static int bar_allowed(struct pci_dev *pdev, const struct dmattr_req *req, resource_size_t phys)
{
	bool allow = req->flags & DMATTR_ALLOW_CLAIMED, vfio;
	const char *drv;
	int ret = 0;

	/* iomem_is_exclusive(), over the whole range: system RAM the kernel keeps to itself
	 * or a region a driver requested exclusively (request_mem_region_exclusive). */
	if (range_has(phys, req->size, IORESOURCE_MEM | IORESOURCE_EXCLUSIVE)) {
		pr_warn("dmattr: %s BAR %u: a driver claimed this range exclusively, so no userspace mapping "
			"(as sysfs and /dev/mem refuse it)\n", pci_name(pdev), req->bar);
		return -EPERM;
	}
	device_lock(&pdev->dev);
	drv = pdev->dev.driver ? pdev->dev.driver->name : NULL;
	vfio = drv && !strcmp(drv, "vfio-pci");
	if (drv && !vfio && !allow) {
		pr_warn("dmattr: %s is bound to %s: it may be using the BAR; unbind it (or bind vfio-pci), "
			"or pass allow-claimed if the device is idle\n", pci_name(pdev), drv);
		ret = -EACCES;
	} else if (IS_ENABLED(CONFIG_IO_STRICT_DEVMEM) && !vfio && !allow &&
		   range_has(phys, req->size, IORESOURCE_MEM | IORESOURCE_BUSY)) {
		/* What iomem_is_exclusive() refuses under IO_STRICT_DEVMEM: a requested region. */
		pr_warn("dmattr: %s BAR %u: the range is requested by a driver (/proc/iomem); release it, "
			"or pass allow-claimed\n", pci_name(pdev), req->bar);
		ret = -EACCES;
	}
	device_unlock(&pdev->dev);
	return ret;
}

static int set_bar(struct dmattr_ctx *ctx, const struct dmattr_req *req)
{
	struct pci_dev *pdev;
	resource_size_t len, start;
	unsigned long flags;
	int ret = -EINVAL;

	if (req->bar >= PCI_STD_NUM_BARS || req->bus > 0xff || req->devfn > 0xff) {
		pr_warn("dmattr: bad BAR address %04x:%02x:%02x.%x BAR %u\n", req->domain, req->bus,
			PCI_SLOT(req->devfn), PCI_FUNC(req->devfn), req->bar);
		return -EINVAL;
	}
	if (security_locked_down(LOCKDOWN_PCI_ACCESS)) {
		pr_warn("dmattr: kernel lockdown forbids userspace mappings of PCI BARs (as sysfs resourceN)\n");
		return -EPERM;
	}
	pdev = pci_get_domain_bus_and_slot(req->domain, req->bus, req->devfn);
	if (!pdev) {
		pr_warn("dmattr: no PCI device %04x:%02x:%02x.%x\n", req->domain, req->bus,
			PCI_SLOT(req->devfn), PCI_FUNC(req->devfn));
		return -EINVAL;
	}
	len = pci_resource_len(pdev, req->bar);
	flags = pci_resource_flags(pdev, req->bar);
	start = pci_resource_start(pdev, req->bar);
	if (!(flags & IORESOURCE_MEM) || !len) {
		/* Also where the kernel found no room for the BAR: 6.1..7.2 then clear its flags. */
		pr_warn("dmattr: BAR %u of %s is not a memory BAR (I/O, absent, or left unassigned): "
			"pick an assigned memory BAR (lspci -v)\n", req->bar, pci_name(pdev));
		ret = -ENXIO;
	} else if ((flags & IORESOURCE_UNSET) || !start) {
		/* An unassigned BAR's start is 0 or its size: mapping it would map whatever
		 * sits at that physical address (RAM from 0 on x86). */
		pr_warn("dmattr: BAR %u of %s has no address assigned (IORESOURCE_UNSET): the kernel did not place it; "
			"nothing to map\n", req->bar, pci_name(pdev));
		ret = -EADDRNOTAVAIL;
	} else if (!PAGE_ALIGNED(start)) {
		pr_warn("dmattr: BAR %u of %s starts at %pa, not on a page boundary: its page holds other registers\n",
			req->bar, pci_name(pdev), &start);
		ret = -EINVAL;
	} else if (req->offset >= len || req->size > len - req->offset) {
		pr_warn("dmattr: range %llu+%llu is outside BAR %u (%llu bytes)\n", req->offset, req->size,
			req->bar, (unsigned long long)len);
		ret = -EINVAL;
	} else if (!decodes_memory(pdev)) {
		pr_warn("dmattr: %s has memory decoding off (PCI_COMMAND_MEMORY): write 1 to its sysfs enable\n",
			pci_name(pdev));
		ret = -ENODEV;
	} else {
		ret = bar_allowed(pdev, req, start + req->offset);
	}
	if (ret) {
		pci_dev_put(pdev);
		return ret;
	}
	ctx->phys = start + req->offset;
	ctx->allow_claimed = req->flags & DMATTR_ALLOW_CLAIMED;
	ctx->pdev = pdev; /* the reference is dropped by release_source, after the last munmap */
	mutex_lock(&bar_lock);
	list_add(&ctx->node, &bar_ctxs);
	mutex_unlock(&bar_lock);
	return 0;
}

/* Checks that need no state; 0 or the error SET returns. */
static int check_req(const struct dmattr_req *req)
{
	pgprot_t probe = PAGE_SHARED;

	if (req->attr >= DMATTR_NR_ATTRS) {
		pr_warn("dmattr: unknown attribute %u\n", req->attr);
		return -EINVAL;
	}
	if (req->source >= DMATTR_NR_SOURCES) {
		pr_warn("dmattr: unknown source %u\n", req->source);
		return -EINVAL;
	}
	if (!attr_prot(req->source, req->attr, &probe)) {
		pr_warn("dmattr: %s is not expressible for this source on this kernel\n", attr_names[req->attr]);
		return -EOPNOTSUPP;
	}
	if (!req->size || !PAGE_ALIGNED(req->size) || !PAGE_ALIGNED(req->offset)) {
		pr_warn("dmattr: size %llu and offset %llu must be non-zero page multiples\n", req->size, req->offset);
		return -EINVAL;
	}
	if (req->source == DMATTR_SRC_RAM && req->offset) {
		pr_warn("dmattr: a RAM source takes no offset\n");
		return -EINVAL;
	}
	if (req->flags & ~DMATTR_ALLOW_CLAIMED || req->pad) {
		pr_warn("dmattr: unknown flags %#x\n", req->flags);
		return -EINVAL;
	}
	return 0;
}

static long dmattr_set(struct dmattr_ctx *ctx, const struct dmattr_req *req)
{
	int ret = check_req(req), maps;

	if (ret)
		return ret;
	mutex_lock(&ctx->lock);
	maps = atomic_read(&ctx->maps);
	if (maps) {
		/* Freeing the source now would leave those mappings on freed memory. */
		pr_warn("dmattr: SET refused: %d mapping(s) of the current source remain; munmap first\n", maps);
		mutex_unlock(&ctx->lock);
		return -EBUSY;
	}
	release_source(ctx);
	ret = req->source == DMATTR_SRC_RAM ? set_ram(ctx, req) : set_bar(ctx, req);
	if (!ret) {
		ctx->req = *req;
		ctx->set = true;
	}
	mutex_unlock(&ctx->lock);
	return ret;
}

#ifdef DMATTR_S2
#ifdef KVM_PGTABLE_LAST_LEVEL
#define DMATTR_S2_LAST KVM_PGTABLE_LAST_LEVEL          /* 6.7+: levels are s8, -1 with LPA2 */
#else
#define DMATTR_S2_LAST ((int)KVM_PGTABLE_MAX_LEVELS - 1)
#endif

/* The struct kvm behind a KVM VM fd, or NULL.  Only a file whose f_op is kvm_vm_fops has a
 * struct kvm as private_data; kvm_vm_fops is static, so the test is file_is_kvm() where it
 * is exported (6.1, 6.12; Kbuild looks in Module.symvers), else the symbol the f_op
 * pointer resolves to (7.x: CONFIG_KALLSYMS_ALL).  The anon inode name ("kvm-vm", from
 * kvm_dev_ioctl_create_vm) comes first: any module can name a file so, so it only filters. */
static struct kvm *kvm_of(struct file *f)
{
	if (strcmp(f->f_path.dentry->d_name.name, "kvm-vm"))
		return NULL;
#if defined(DMATTR_HAVE_FILE_IS_KVM)
	return file_is_kvm(f) ? f->private_data : NULL;
#elif defined(CONFIG_KALLSYMS_ALL)
	{
		char sym[KSYM_SYMBOL_LEN];

		sprint_symbol(sym, (unsigned long)f->f_op);
		return strncmp(sym, "kvm_vm_fops+0x0/", 16) ? NULL : f->private_data;
	}
#else
	pr_warn("dmattr: this kernel neither exports file_is_kvm nor has KALLSYMS_ALL: cannot tell a KVM VM fd\n");
	return NULL;
#endif
}

/* Walk pgt for r->ipa with the architectural descriptor format: the entry level (which may
 * be up to 16 concatenated tables, so its index is not masked) from pgt->start_level and
 * pgt->ia_bits, table addresses through the linear map (KVM's host stage-2 mm_ops
 * phys_to_virt is __va).  Fills r; no valid leaf leaves DMATTR_S2_MAPPED clear. */
static int s2_walk(struct kvm_pgtable *pgt, struct dmattr_s2_read *r)
{
	int level;
	kvm_pte_t *table, pte = 0;
	u64 shift = 0, idx;

	if (!pgt)
		return -ENOENT;
	level = pgt->start_level;
	r->ia_bits = pgt->ia_bits;
	r->start_level = level;
	if (pgt->ia_bits < 64 && r->ipa >> pgt->ia_bits)
		return -ERANGE;
	table = (kvm_pte_t *)rcu_dereference_raw(pgt->pgd);
	for (;; level++) {
		shift = kvm_granule_shift(level);
		idx = r->ipa >> shift;
		if (level != pgt->start_level)
			idx &= BIT(PAGE_SHIFT - 3) - 1;
		pte = READ_ONCE(table[idx]);
		r->level = level;
		if (!(pte & KVM_PTE_VALID))
			return 0;
		if (level == DMATTR_S2_LAST) {
			if (!(pte & BIT(1)))
				return 0; /* 0b01 at the last level is reserved: no translation */
			break;
		}
		if (!(pte & BIT(1)))
			break;    /* a block */
		table = phys_to_virt(kvm_pte_to_phys(pte));
	}
	r->desc = pte;
	r->leaf = BIT(shift);
	r->flags |= DMATTR_S2_MAPPED;
	/* KVM's own stage2_has_fwb(): the CPU capability, unless (before 7.0, "KVM: arm64:
	 * Kill KVM_PGTABLE_S2_NOFWB") the table opted out; from 7.0 every table uses FWB. */
	if (cpus_have_final_cap(ARM64_HAS_STAGE2_FWB))
		r->flags |= DMATTR_S2_FWB;
#if LINUX_VERSION_CODE < KERNEL_VERSION(7, 0, 0)
	if (pgt->flags & KVM_PGTABLE_S2_NOFWB)
		r->flags &= ~DMATTR_S2_FWB;
#endif
	return 0;
}

/* DMATTR_IOC_S2READ, read-only.  The fget() reference keeps the VM alive (the VM file's
 * release is what drops its struct kvm), kvm->mmu_lock (an rwlock on arm64) keeps the
 * tables from being torn down or rebuilt under the walk, and RCU covers the table pages
 * that faults running in parallel under the read lock free through RCU. */
static long s2_read(struct dmattr_s2_read *r)
{
	struct file *f;
	struct kvm *kvm;
	long ret;

	/* The same information as KVM's stage-2 ptdump, which lockdown closes with debugfs. */
	if (security_locked_down(LOCKDOWN_DEBUGFS)) {
		pr_warn("dmattr: kernel lockdown forbids reading KVM's stage-2 tables\n");
		return -EPERM;
	}
	f = fget(r->vm_fd);
	if (!f)
		return -EBADF;
	kvm = kvm_of(f);
	if (!kvm) {
		pr_warn("dmattr: fd %d is not a KVM VM fd\n", r->vm_fd);
		ret = -EINVAL;
	} else if (is_protected_kvm_enabled()) {
		pr_warn("dmattr: protected KVM: the host holds no stage-2 table of the VM\n");
		ret = -ENOENT;
	} else {
#ifdef KVM_HAVE_MMU_RWLOCK
		read_lock(&kvm->mmu_lock);
#else
		spin_lock(&kvm->mmu_lock);
#endif
		rcu_read_lock();
		ret = s2_walk(kvm->arch.mmu.pgt, r);
		rcu_read_unlock();
#ifdef KVM_HAVE_MMU_RWLOCK
		read_unlock(&kvm->mmu_lock);
#else
		spin_unlock(&kvm->mmu_lock);
#endif
	}
	fput(f);
	return ret;
}
#else
static long s2_read(struct dmattr_s2_read *r)
{
	return -EOPNOTSUPP; /* stage 2 is arm64 KVM's */
}
#endif

static long dmattr_s2_ioctl(unsigned long arg)
{
	struct dmattr_s2_read r;
	long ret;

	if (copy_from_user(&r, (void __user *)arg, sizeof(r)))
		return -EFAULT;
	r.flags = 0;
	r.desc = r.leaf = 0;
	r.level = r.start_level = 0;
	r.ia_bits = r.pad = 0;
	ret = s2_read(&r);
	if (ret)
		return ret;
	return copy_to_user((void __user *)arg, &r, sizeof(r)) ? -EFAULT : 0;
}

static long dmattr_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dmattr_info info;
	struct dmattr_req req;

	if (cmd == DMATTR_IOC_INFO) {
		info.ram_attrs = supported_mask(DMATTR_SRC_RAM);
		info.bar_attrs = supported_mask(DMATTR_SRC_BAR);
		info.max_ram = DMATTR_MAX_RAM;
		return copy_to_user((void __user *)arg, &info, sizeof(info)) ? -EFAULT : 0;
	}
	if (cmd == DMATTR_IOC_S2READ)
		return dmattr_s2_ioctl(arg);
	if (cmd != DMATTR_IOC_SET)
		return -ENOTTY;
	if (copy_from_user(&req, (void __user *)arg, sizeof(req)))
		return -EFAULT;
	return dmattr_set(file->private_data, &req);
}

static void dmattr_vm_open(struct vm_area_struct *vma)
{
	atomic_inc(&((struct dmattr_ctx *)vma->vm_private_data)->maps);
}

static void dmattr_vm_close(struct vm_area_struct *vma)
{
	atomic_dec(&((struct dmattr_ctx *)vma->vm_private_data)->maps);
}

/* After the bus notifier zapped the PTEs of /dev/dmattr (all fds share its inode), refill
 * the mappings of live sources; a removed device's mapping gets SIGBUS. */
static vm_fault_t dmattr_vm_fault(struct vm_fault *vmf)
{
	struct dmattr_ctx *ctx = vmf->vma->vm_private_data;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	down_read(&zap_sem);
	if (!READ_ONCE(ctx->gone))
		ret = vmf_insert_pfn_prot(vmf->vma, vmf->address, (ctx->phys >> PAGE_SHIFT) + vmf->pgoff,
					  vmf->vma->vm_page_prot);
	up_read(&zap_sem);
	return ret;
}

static const struct vm_operations_struct dmattr_vm_ops = {
	.open = dmattr_vm_open,
	.close = dmattr_vm_close,
	.fault = dmattr_vm_fault,
};

/* The memory-type bits of the PTE that maps addr; false when there is none. */
static bool pte_type(struct vm_area_struct *vma, unsigned long addr, u64 *bits)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	struct follow_pfnmap_args args = { .vma = vma, .address = addr };

	if (follow_pfnmap_start(&args))
		return false;
	*bits = pgprot_val(args.pgprot) & DMATTR_TYPE_BITS;
	follow_pfnmap_end(&args);
#else
	spinlock_t *ptl;
	pte_t *ptep;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
	if (follow_pte(vma, addr, &ptep, &ptl))
#else
	if (follow_pte(vma->vm_mm, addr, &ptep, &ptl))
#endif
		return false;
	*bits = pte_val(*ptep) & DMATTR_TYPE_BITS;
	pte_unmap_unlock(ptep, ptl);
#endif
	return true;
}

/* 0 when the first and last PTEs of the mapping carry the memory type of `want`. */
static int check_type(struct dmattr_ctx *ctx, struct vm_area_struct *vma, unsigned long len, pgprot_t want)
{
	unsigned long addr[2] = { vma->vm_start, vma->vm_start + len - PAGE_SIZE };
	u64 expect = pgprot_val(want) & DMATTR_TYPE_BITS, got;
	int i;

	for (i = 0; i < 2; i++) {
		if (!pte_type(vma, addr[i], &got)) {
			pr_warn("dmattr: no PTE at %#lx after mapping it\n", addr[i]);
			return -EIO;
		}
		if (got != expect) {
			pr_warn("dmattr: %s asked, but the page table holds memory-type bits %#llx instead of %#llx\n",
				attr_names[ctx->req.attr], got, expect);
			return -EIO;
		}
	}
	return 0;
}

static int dmattr_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct dmattr_ctx *ctx = file->private_data;
	unsigned long len = vma->vm_end - vma->vm_start;
	pgprot_t prot = vma->vm_page_prot;
	int ret = -EINVAL;

	mutex_lock(&ctx->lock);
	if (!ctx->set) {
		pr_warn("dmattr: mmap before DMATTR_IOC_SET\n");
	} else if (!(vma->vm_flags & VM_MAYSHARE)) {
		/* MAP_PRIVATE: the first write would copy the page into anonymous RAM mapped with
		 * this protection.  (VM_MAYSHARE, not VM_SHARED: a MAP_SHARED mapping of a
		 * read-only fd loses VM_SHARED but can never be written, so never copied.) */
		pr_warn("dmattr: MAP_PRIVATE refused: a private mapping copies written pages into RAM; use MAP_SHARED\n");
	} else if (READ_ONCE(ctx->gone)) {
		pr_warn("dmattr: the source's device %s was removed or taken by another driver; SET it again\n",
			pci_name(ctx->pdev));
		ret = -ENODEV;
	} else if (ctx->pdev && !decodes_memory(ctx->pdev)) {
		pr_warn("dmattr: %s has memory decoding off (PCI_COMMAND_MEMORY): write 1 to its sysfs enable\n",
			pci_name(ctx->pdev));
		ret = -ENODEV;
	} else if (vma->vm_pgoff || len > ctx->req.size) {
		/* Never map anything beyond the chosen source. */
		pr_warn("dmattr: mmap of %lu bytes at page %lu exceeds the %llu-byte source\n", len,
			vma->vm_pgoff, ctx->req.size);
	} else {
		attr_prot(ctx->req.source, ctx->req.attr, &prot);
		vma->vm_page_prot = prot;
		ret = io_remap_pfn_range(vma, vma->vm_start, ctx->phys >> PAGE_SHIFT, len, prot);
		if (!ret)
			ret = check_type(ctx, vma, len, prot); /* on error the core unmaps the range */
		if (!ret) {
			vma->vm_private_data = ctx;
			vma->vm_ops = &dmattr_vm_ops;
			atomic_inc(&ctx->maps);
		}
	}
	mutex_unlock(&ctx->lock);
	return ret;
}

static int dmattr_open(struct inode *inode, struct file *file)
{
	struct dmattr_ctx *ctx;

	/* Any physical range with any attribute: the capability /dev/mem asks for. */
	if (!capable(CAP_SYS_RAWIO)) {
		pr_warn("dmattr: open refused: the caller lacks CAP_SYS_RAWIO\n");
		return -EPERM;
	}
	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	mutex_init(&ctx->lock);
	atomic_set(&ctx->maps, 0);
	INIT_LIST_HEAD(&ctx->node);
	ctx->mapping = file->f_mapping;
	file->private_data = ctx;
	return 0;
}

static int dmattr_release(struct inode *inode, struct file *file)
{
	struct dmattr_ctx *ctx = file->private_data;

	/* Every mapping holds the file, so release runs after the last munmap. */
	release_source(ctx);
	kfree(ctx);
	return 0;
}

static const struct file_operations dmattr_fops = {
	.owner = THIS_MODULE,
	.open = dmattr_open,
	.release = dmattr_release,
	.unlocked_ioctl = dmattr_ioctl,
	.mmap = dmattr_mmap,
};

static struct miscdevice dmattr_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "dmattr",
	.fops = &dmattr_fops,
	.mode = 0600,
};

/* A BAR's device removed, or bound to a driver other than vfio-pci (unless the source
 * allows claimed devices): zap every mapping of it, so none outlives the assignment. */
static int dmattr_pci_event(struct notifier_block *nb, unsigned long action, void *data)
{
	struct device *dev = data;
	struct address_space *mapping = NULL;
	struct dmattr_ctx *ctx;
	const char *drv;

	if (action != BUS_NOTIFY_DEL_DEVICE && action != BUS_NOTIFY_BOUND_DRIVER)
		return NOTIFY_DONE;
	drv = action == BUS_NOTIFY_BOUND_DRIVER && dev->driver ? dev->driver->name : NULL;
	mutex_lock(&bar_lock);
	down_write(&zap_sem);
	list_for_each_entry(ctx, &bar_ctxs, node) {
		if (&ctx->pdev->dev != dev || ctx->gone)
			continue;
		if (action == BUS_NOTIFY_BOUND_DRIVER && (ctx->allow_claimed || (drv && !strcmp(drv, "vfio-pci"))))
			continue;
		WRITE_ONCE(ctx->gone, true);
		mapping = ctx->mapping;
		pr_warn("dmattr: %s %s%s: its dmattr mappings are zapped (SIGBUS on access)\n", dev_name(dev),
			drv ? "bound to " : "removed", drv ? drv : "");
	}
	if (mapping)
		unmap_mapping_range(mapping, 0, 0, 1);
	up_write(&zap_sem);
	mutex_unlock(&bar_lock);
	return NOTIFY_OK;
}

static struct notifier_block dmattr_pci_nb = {
	.notifier_call = dmattr_pci_event,
};

static int __init dmattr_init(void)
{
	int ret = bus_register_notifier(&pci_bus_type, &dmattr_pci_nb);

	if (ret)
		return ret;
	ret = misc_register(&dmattr_dev);
	if (ret)
		bus_unregister_notifier(&pci_bus_type, &dmattr_pci_nb);
	return ret;
}

static void __exit dmattr_exit(void)
{
	misc_deregister(&dmattr_dev);
	bus_unregister_notifier(&pci_bus_type, &dmattr_pci_nb);
}

module_init(dmattr_init);
module_exit(dmattr_exit);
MODULE_DESCRIPTION("dmtbench: map memory with a chosen memory attribute");
MODULE_LICENSE("GPL");
