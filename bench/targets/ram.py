"""Host RAM: anonymous memory, pre-faulted, optionally on transparent huge pages."""
from __future__ import annotations

import mmap

from bench import kernels, memtypes
from bench.targets.base import Availability, Mapping, Target, madvise, map_memory

_OTHER_WAYS = {
    "normal-nc": "a prefetchable BAR's resourceN_wc (--target pci:<BDF>/<bar>, e.g. in a guest with a passed-through device via python -m guestkit run) or --target kmod",
}


class RamTarget(Target):
    """`ram` or `ram:thp`: the default target; the kernel maps it Normal WB."""

    def __init__(self, thp: bool = False) -> None:
        self.thp = thp
        self.spec = "ram:thp" if thp else "ram"

    def availability(self) -> list[Availability]:
        out = []
        for name in memtypes.names():
            if name == "normal":
                out.append(Availability(name, True))
                continue
            how = _OTHER_WAYS.get(name, "--target kmod (the guestkit dmattr module)")
            out.append(Availability(name, False, f"anonymous RAM is always Normal WB; for {name} use {how}"))
        return out

    def stage2_hint(self) -> str | None:
        return "normal"  # hypervisors map guest RAM Normal WB at stage 2

    def open(self, attr: str, size: int) -> Mapping:
        self.require(attr)
        ptr, close = map_memory(size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if self.thp:
            madvise(ptr, size, mmap.MADV_HUGEPAGE)
        kernels.lib().dmt_prefault(ptr, size, 1)  # fault every page now, not while timed
        pages = "THP requested (madvise)" if self.thp else "4 KiB pages (no THP madvise)"
        return Mapping(ptr, size, "normal", f"anonymous mmap, prefaulted, {pages}", True, self.spec, close)
