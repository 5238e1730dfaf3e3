"""Read the leaf stage-2 descriptor KVM wrote for a guest IPA (dmattr) and decode its MemAttr.

`read(vm_fd, ipa)` asks the guestkit dmattr module (DMATTR_IOC_S2READ) to walk the KVM VM's
own stage-2 table (kvm->arch.mmu.pgt) under kvm->mmu_lock and return the leaf descriptor
that maps `ipa`; `decode(memattr, fwb)` names its MemAttr[3:0] (descriptor bits [5:2]) with
the canonical attribute names of bench.memtypes.  Every expected failure (no module, an
older module, lockdown, an fd that is not a KVM VM, an IPA with no valid leaf yet, an
x86 build) is a `Stage2Read` whose `read` is "unavailable: <reason>", never an exception.

Encodings (Arm ARM, stage-2 block and page descriptors, MemAttr[3:0]):
- FEAT_S2FWB off: MemAttr[3:2] == 0b00 is Device with MemAttr[1:0] the subtype (nGnRnE,
  nGnRE, nGRE, GRE); otherwise Normal with MemAttr[3:2] the outer and MemAttr[1:0] the
  inner cacheability (0b01 Non-cacheable, 0b10 Write-through, 0b11 Write-back; an inner
  0b00 under a Normal outer is reserved).  An encoding whose outer and inner halves differ
  is named by the more restrictive half (memtypes' rank: the combine rule of the project,
  "the more restrictive wins"), since no canonical name holds two cacheabilities; the raw
  value stays in `memattr`.
- FEAT_S2FWB on (HCR_EL2.FWB): MemAttr[2] == 0 is Device with MemAttr[1:0] the subtype;
  0b101 forces Normal-NC (a stage-1 Device type is kept), 0b110 forces Normal write-back,
  0b111 takes stage 1's attributes (`as-s1`); 0b100 is reserved.  MemAttr[3] is not part of
  the FWB encoding (Linux never sets it; the Arm ASL S2ApplyFWBMemAttrs ignores it): a
  descriptor with it set is reported as reserved rather than guessed, because it means the
  FWB reading or the walk is wrong.
The values come from memtypes' `s2` / `fwb` columns, not from a second table here.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from bench import memtypes

# struct dmattr_s2_read in guestkit/kmod/dmattr.h (tests/test_stage2.py checks them).
S2REQ = struct.Struct("<iIQQQiIiI")
IOC_S2READ = (3 << 30) | (S2REQ.size << 16) | (ord("D") << 8) | 4   # _IOWR('D', 4, struct dmattr_s2_read)
S2_MAPPED, S2_FWB = 1, 2       # dmattr_s2_read.flags
MEMATTR_SHIFT, S2AP_SHIFT, XN_BIT = 2, 6, 54   # stage-2 leaf descriptor fields
# Why the module gave no descriptor, by errno.
REASONS = {
    errno.ENOTTY: "the loaded dmattr module has no stage-2 read (DMATTR_IOC_S2READ): reload dmattr.ko "
                  "built from this checkout (python -m guestkit kmod build)",
    errno.EOPNOTSUPP: "this dmattr build has no stage-2 read (only arm64 KVM hosts have one)",
    errno.EPERM: "kernel lockdown forbids reading KVM's stage-2 tables (as it closes debugfs, KVM's own stage-2 dump)",
    errno.EACCES: "reading KVM's stage-2 tables needs CAP_SYS_RAWIO",
    errno.EBADF: "the VM fd is not an open file descriptor of this process",
    errno.EINVAL: "the fd is not a KVM VM fd (anon inode kvm-vm)",
    errno.ERANGE: "the IPA is beyond the VM's IPA size",
    errno.ENOENT: "the VM has no stage-2 page table (not created yet, or a protected VM)",
}


@dataclass(frozen=True)
class Stage2Read:
    """What the leaf stage-2 descriptor of one IPA says.  `read`: a canonical attribute name
    (device-ngnrne ... normal, or as-s1 for FWB MemAttr 7) or "unavailable: <reason>";
    memattr: MemAttr[3:0]; leaf: bytes the leaf maps; s2ap: S2AP[1:0] (bit 0 read, bit 1
    write); xn: descriptor bit 54 (XN[1]: not executable); level: the leaf's table level;
    descriptor: the raw 64-bit descriptor.  All None when unavailable."""

    read: str
    memattr: int | None
    leaf: int | None
    fwb: bool | None
    s2ap: int | None
    xn: bool | None
    level: int | None
    descriptor: int | None = None

    @property
    def available(self) -> bool:
        return not self.read.startswith("unavailable")

    def metadata(self) -> dict:
        """The record's keys as results carry them (issue 17: stage2_read, stage2_memattr,
        stage2_leaf, fwb)."""
        return {"stage2_read": self.read, "stage2_memattr": self.memattr, "stage2_leaf": self.leaf, "fwb": self.fwb}


def unavailable(reason: str) -> Stage2Read:
    """A record that says why no descriptor was read."""
    return Stage2Read(f"unavailable: {reason}", None, None, None, None, None, None)


def _with(column: str, value: int) -> memtypes.MemAttr | None:
    """The canonical attribute whose stage-2 encoding in `column` ('s2' or 'fwb') is value."""
    return next((a for a in (*memtypes.ATTRS, memtypes.AS_S1) if getattr(a, column) == value), None)


def _reserved(memattr: int, why: str) -> str:
    return f"unavailable: reserved MemAttr 0b{memattr:04b} ({why})"


def decode(memattr: int, fwb: bool) -> str:
    """The canonical name of stage-2 MemAttr[3:0] `memattr`, with FEAT_S2FWB in force or not;
    "unavailable: reserved MemAttr 0bXXXX (...)" for a reserved encoding."""
    if not 0 <= memattr <= 0xF:
        raise ValueError(f"MemAttr is 4 bits, got {memattr}")
    return _decode_fwb(memattr) if fwb else _decode_nofwb(memattr)


def _decode_nofwb(memattr: int) -> str:
    outer, inner = memattr >> 2, memattr & 3
    if outer == 0:
        return _with("s2", memattr).name          # Device: the four subtypes are all canonical
    if inner == 0:
        return _reserved(memattr, "Normal with inner cacheability 0b00")
    # Each half alone is the canonical Normal type whose outer and inner halves both equal it.
    halves = (_with("s2", outer << 2 | outer), _with("s2", inner << 2 | inner))
    return max(halves, key=lambda a: a.rank).name


def _decode_fwb(memattr: int) -> str:
    if memattr & 8:
        return _reserved(memattr, "MemAttr[3] is not part of the FWB encoding")
    attr = _with("fwb", memattr)
    return attr.name if attr else _reserved(memattr, "FWB Normal with MemAttr[1:0] 0b00")


def from_descriptor(desc: int, level: int, leaf: int, fwb: bool) -> Stage2Read:
    """Decode a valid leaf descriptor's fields."""
    memattr = desc >> MEMATTR_SHIFT & 0xF
    return Stage2Read(decode(memattr, fwb), memattr, leaf, fwb, desc >> S2AP_SHIFT & 3, bool(desc >> XN_BIT & 1),
                      level, desc)


def read(vm_fd: int, ipa: int) -> Stage2Read:
    """The leaf stage-2 descriptor mapping `ipa` in the KVM VM behind `vm_fd` (an fd of this
    process), through /dev/dmattr ($DMTBENCH_DMATTR); never raises for the expected failures."""
    # Imported here: bench.targets imports the kvm target, which imports this module.
    from bench.targets.kmod import LOAD_HINT, device_path

    dev = device_path()
    try:
        req = S2REQ.pack(vm_fd, 0, ipa, 0, 0, 0, 0, 0, 0)
    except struct.error:
        return unavailable(f"vm fd {vm_fd} or IPA {ipa:#x} out of range")
    try:
        fd = os.open(dev, os.O_RDWR)
    except FileNotFoundError:
        return unavailable(f"no {dev}: {LOAD_HINT}")
    except OSError as exc:
        return unavailable(f"cannot open {dev}: {exc.strerror} (needs root: CAP_SYS_RAWIO)")
    try:
        raw = fcntl.ioctl(fd, IOC_S2READ, req)
    except OSError as exc:
        return unavailable(REASONS.get(exc.errno, f"DMATTR_IOC_S2READ failed: {exc.strerror}"))
    finally:
        os.close(fd)
    _, flags, _, desc, leaf, level, _ia_bits, _start, _ = S2REQ.unpack(raw)
    if not flags & S2_MAPPED:
        return unavailable(f"IPA {ipa:#x} not mapped at stage 2 yet (no valid leaf: the guest has not touched it)")
    return from_descriptor(desc, level, leaf, bool(flags & S2_FWB))
