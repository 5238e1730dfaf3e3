"""L1: read the stage 2 of a VM another process owns (the inner QEMU of `--guest linux`).

bench.stage2.read needs a KVM VM fd of this process.  The L2's VM belongs to the inner
QEMU, so its fd is found under /proc/<pid>/fd (the link reads `anon_inode:kvm-vm`) and
copied into this process with pidfd_getfd(2) (Linux 5.6+; root, as the lab runs in L1):
the same open file, so dmattr's check that it is a KVM VM and its walk of that VM's
kvm->arch.mmu.pgt hold as for the kvm target's own VMs.  Reading never stops the guest.
Every failure is a `stage2_read: unavailable: <reason>` record, never an exception.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

SYS_PIDFD_GETFD = 438  # asm-generic unistd.h: the same number on arm64 and x86_64
VM_LINK = "anon_inode:kvm-vm"


def vm_fds(proc: Path = Path("/proc")) -> list[tuple[int, int]]:
    """(pid, fd) of every KVM VM fd open on this system, lowest pid first."""
    out = []
    for fd_dir in sorted(proc.glob("[0-9]*/fd"), key=lambda p: int(p.parent.name)):
        try:
            links = [(fd, os.readlink(fd)) for fd in fd_dir.iterdir()]
        except OSError:  # the process ended, or is not ours to look at
            continue
        out += [(int(fd_dir.parent.name), int(fd.name)) for fd, link in links if link == VM_LINK]
    return out


def borrow(pid: int, fd: int) -> int:
    """A copy in this process of file descriptor `fd` of process `pid` (pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return got
    finally:
        os.close(pidfd)


def read_foreign(ipa: int, proc: Path = Path("/proc")) -> dict:
    """The four stage-2 result fields (stage2_read, stage2_memattr, stage2_leaf, fwb) of
    the leaf that maps `ipa` in the one VM another process holds open."""
    from bench import stage2

    own = os.getpid()
    vms = [(pid, fd) for pid, fd in vm_fds(proc) if pid != own]
    if len(vms) != 1:
        why = "no KVM VM is open in this host" if not vms else f"{len(vms)} KVM VMs are open: which is the L2's?"
        return stage2.unavailable(why).metadata()
    try:
        fd = borrow(*vms[0])
    except OSError as exc:
        return stage2.unavailable(f"pidfd_getfd of the inner QEMU's VM fd: {exc.strerror}").metadata()
    try:
        return stage2.read(fd, ipa).metadata()
    finally:
        os.close(fd)
