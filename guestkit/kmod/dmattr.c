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
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#ifdef CONFIG_ARM64
#include <asm/cpufeature.h>
#include <asm/sysreg.h>
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
	phys_addr_t phys;    /* start of the source */
};

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
	if (ctx->typed)
		set_memory_wb((unsigned long)page_address(ctx->pages), 1 << ctx->order);
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
		__free_pages(ctx->pages, ctx->order);
	}
	ctx->pages = NULL;
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

static int set_bar(struct dmattr_ctx *ctx, const struct dmattr_req *req)
{
	struct pci_dev *pdev;
	resource_size_t len;
	unsigned long flags;

	if (req->bar >= PCI_STD_NUM_BARS || req->bus > 0xff || req->devfn > 0xff) {
		pr_warn("dmattr: bad BAR address %04x:%02x:%02x.%x BAR %u\n", req->domain, req->bus,
			PCI_SLOT(req->devfn), PCI_FUNC(req->devfn), req->bar);
		return -EINVAL;
	}
	pdev = pci_get_domain_bus_and_slot(req->domain, req->bus, req->devfn);
	if (!pdev) {
		pr_warn("dmattr: no PCI device %04x:%02x:%02x.%x\n", req->domain, req->bus,
			PCI_SLOT(req->devfn), PCI_FUNC(req->devfn));
		return -EINVAL;
	}
	len = pci_resource_len(pdev, req->bar);
	flags = pci_resource_flags(pdev, req->bar);
	ctx->phys = pci_resource_start(pdev, req->bar) + req->offset;
	if (!(flags & IORESOURCE_MEM) || !len) {
		pr_warn("dmattr: BAR %u of %s is not a memory BAR\n", req->bar, pci_name(pdev));
		pci_dev_put(pdev);
		return -EINVAL;
	}
	pci_dev_put(pdev);
	if (req->offset >= len || req->size > len - req->offset) {
		pr_warn("dmattr: range %llu+%llu is outside BAR %u (%llu bytes)\n", req->offset, req->size,
			req->bar, (unsigned long long)len);
		return -EINVAL;
	}
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

static const struct vm_operations_struct dmattr_vm_ops = {
	.open = dmattr_vm_open,
	.close = dmattr_vm_close,
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
	struct dmattr_ctx *ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);

	if (!ctx)
		return -ENOMEM;
	mutex_init(&ctx->lock);
	atomic_set(&ctx->maps, 0);
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

module_misc_device(dmattr_dev);
MODULE_DESCRIPTION("dmtbench: map memory with a chosen memory attribute");
MODULE_LICENSE("GPL");
