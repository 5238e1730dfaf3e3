// SPDX-License-Identifier: GPL-2.0
/*
 * dmattr: a misc device (/dev/dmattr) for dmtbench.  ioctl(DMATTR_IOC_SET) picks a source
 * (a physically contiguous kernel buffer, or a range of a PCI BAR) and a memory attribute;
 * the next mmap() maps exactly that source with that attribute's page protection.
 *
 * Every argument is validated; a rejected request returns -EINVAL (or -EOPNOTSUPP for an
 * attribute this kernel cannot express) and says why in dmesg.  A RAM buffer mapped with
 * a non-cacheable attribute also stays in the kernel's cacheable linear map: that alias
 * is what benchmark drivers accept, and why the buffer is zeroed and flushed first.
 */
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
#include <asm/cacheflush.h>

#include "dmattr.h"

#define DMATTR_MAX_RAM (PAGE_SIZE << (MAX_ORDER - 1))

static const char *const attr_names[DMATTR_NR_ATTRS] = {
	"device-ngnrne", "device-ngnre", "device-ngre", "device-gre", "normal-nc", "normal-wt", "normal",
};

struct dmattr_ctx {
	struct mutex lock;
	struct dmattr_req req;
	bool set;
	struct page *pages;  /* RAM source */
	unsigned int order;
	phys_addr_t phys;    /* start of the source */
};

/* The page protection for an attribute, or false where this kernel has no such type. */
static bool attr_prot(u32 attr, pgprot_t *prot)
{
	switch (attr) {
	case DMATTR_DEVICE_NGNRNE:
		*prot = pgprot_noncached(*prot); /* arm64: Device-nGnRnE; x86: UC- (PAT) */
		return true;
	case DMATTR_DEVICE_NGNRE:
#ifdef CONFIG_ARM64
		*prot = pgprot_device(*prot);
#else
		*prot = pgprot_noncached(*prot);
#endif
		return true;
#if defined(CONFIG_ARM64) && defined(MT_DEVICE_nGRE)
	case DMATTR_DEVICE_NGRE:
		*prot = __pgprot_modify(*prot, PTE_ATTRINDX_MASK, PTE_ATTRINDX(MT_DEVICE_nGRE) | PTE_PXN | PTE_UXN);
		return true;
#endif
#if defined(CONFIG_ARM64) && defined(MT_DEVICE_GRE)
	case DMATTR_DEVICE_GRE:
		*prot = __pgprot_modify(*prot, PTE_ATTRINDX_MASK, PTE_ATTRINDX(MT_DEVICE_GRE) | PTE_PXN | PTE_UXN);
		return true;
#endif
	case DMATTR_NORMAL_NC:
		*prot = pgprot_writecombine(*prot); /* arm64: Normal-NC; x86: WC */
		return true;
#if defined(CONFIG_X86)
	case DMATTR_NORMAL_WT:
		*prot = __pgprot(pgprot_val(*prot) | cachemode2protval(_PAGE_CACHE_MODE_WT));
		return true;
#endif
	case DMATTR_NORMAL:
		return true; /* the default user protection is Normal write-back */
	default:
		return false;
	}
}

static u32 supported_mask(void)
{
	u32 mask = 0, a;
	pgprot_t p = PAGE_SHARED;

	for (a = 0; a < DMATTR_NR_ATTRS; a++)
		if (attr_prot(a, &p))
			mask |= 1u << a;
	return mask;
}

static void release_source(struct dmattr_ctx *ctx)
{
	if (ctx->pages)
		__free_pages(ctx->pages, ctx->order);
	ctx->pages = NULL;
	ctx->set = false;
}

static int set_ram(struct dmattr_ctx *ctx, const struct dmattr_req *req)
{
	if (req->size > DMATTR_MAX_RAM) {
		pr_warn("dmattr: RAM size %llu above the %lu contiguous bytes the buddy allocator gives\n",
			req->size, (unsigned long)DMATTR_MAX_RAM);
		return -EINVAL;
	}
	ctx->order = get_order(req->size);
	ctx->pages = alloc_pages(GFP_KERNEL | __GFP_ZERO, ctx->order);
	if (!ctx->pages)
		return -ENOMEM;
	ctx->phys = page_to_phys(ctx->pages);
	/* Push the zeroes out of the cache before a non-cacheable alias can see the memory. */
	flush_dcache_page(ctx->pages);
	return 0;
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

static long dmattr_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dmattr_ctx *ctx = file->private_data;
	struct dmattr_req req;
	pgprot_t probe = PAGE_SHARED;
	u32 mask;
	int ret;

	if (cmd == DMATTR_IOC_QUERY) {
		mask = supported_mask();
		return copy_to_user((void __user *)arg, &mask, sizeof(mask)) ? -EFAULT : 0;
	}
	if (cmd != DMATTR_IOC_SET)
		return -ENOTTY;
	if (copy_from_user(&req, (void __user *)arg, sizeof(req)))
		return -EFAULT;
	if (req.attr >= DMATTR_NR_ATTRS) {
		pr_warn("dmattr: unknown attribute %u\n", req.attr);
		return -EINVAL;
	}
	if (!attr_prot(req.attr, &probe)) {
		pr_warn("dmattr: %s is not expressible on this kernel\n", attr_names[req.attr]);
		return -EOPNOTSUPP;
	}
	if (!req.size || !PAGE_ALIGNED(req.size) || !PAGE_ALIGNED(req.offset)) {
		pr_warn("dmattr: size %llu and offset %llu must be non-zero page multiples\n", req.size, req.offset);
		return -EINVAL;
	}
	if (req.source == DMATTR_SRC_RAM && req.offset) {
		pr_warn("dmattr: a RAM source takes no offset\n");
		return -EINVAL;
	}
	mutex_lock(&ctx->lock);
	release_source(ctx);
	if (req.source == DMATTR_SRC_RAM)
		ret = set_ram(ctx, &req);
	else if (req.source == DMATTR_SRC_BAR)
		ret = set_bar(ctx, &req);
	else {
		pr_warn("dmattr: unknown source %u\n", req.source);
		ret = -EINVAL;
	}
	if (!ret) {
		ctx->req = req;
		ctx->set = true;
	}
	mutex_unlock(&ctx->lock);
	return ret;
}

static int dmattr_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct dmattr_ctx *ctx = file->private_data;
	unsigned long len = vma->vm_end - vma->vm_start;
	int ret = -EINVAL;

	mutex_lock(&ctx->lock);
	if (!ctx->set) {
		pr_warn("dmattr: mmap before DMATTR_IOC_SET\n");
	} else if (vma->vm_pgoff || len > ctx->req.size) {
		/* Never map anything beyond the chosen source. */
		pr_warn("dmattr: mmap of %lu bytes at page %lu exceeds the %llu-byte source\n", len,
			vma->vm_pgoff, ctx->req.size);
	} else {
		attr_prot(ctx->req.attr, &vma->vm_page_prot);
		ret = io_remap_pfn_range(vma, vma->vm_start, ctx->phys >> PAGE_SHIFT, len, vma->vm_page_prot);
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
	file->private_data = ctx;
	return 0;
}

static int dmattr_release(struct inode *inode, struct file *file)
{
	struct dmattr_ctx *ctx = file->private_data;

	/* Mappings hold no reference to ctx; the vma's pfns stay valid until munmap, which
	 * happens before release for every mmap of this file (the vma holds the file). */
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
