"""guestkit.lab.l1_vmfd (L1): finding the VM fd another process owns, copying it with
pidfd_getfd, and reading its stage 2 (a real KVM VM where /dev/kvm exists; a fake /proc
tree for the counts the lab refuses)."""
import os
import subprocess
import sys
import time

import pytest

from guestkit.lab import l1_vmfd

KVM_CREATE_VM = 0xAE01
HOLDER = ("import fcntl, os, sys, time; kvm = os.open('/dev/kvm', os.O_RDWR); "
          f"vm = fcntl.ioctl(kvm, {KVM_CREATE_VM}, 0); print(vm, flush=True); time.sleep(60)")


def _fake_proc(tmp_path, vms: list[tuple[int, int]]):
    for pid, fd in [*vms, (7, 3)]:
        d = tmp_path / str(pid) / "fd"
        d.mkdir(parents=True, exist_ok=True)
        (d / str(fd)).symlink_to(l1_vmfd.VM_LINK if (pid, fd) in vms else "/dev/null")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_vm_fds_and_the_counts_that_give_no_read(tmp_path):
    proc = _fake_proc(tmp_path, [(41, 9), (12, 4)])
    assert l1_vmfd.vm_fds(proc) == [(12, 4), (41, 9)]
    two = l1_vmfd.read_foreign(0x8000000000, proc)
    assert two["stage2_read"] == "unavailable: 2 KVM VMs are open: which is the L2's?"
    assert (two["stage2_memattr"], two["stage2_leaf"], two["fwb"]) == (None, None, None)
    none = l1_vmfd.read_foreign(0x8000000000, _fake_proc(tmp_path / "none", []))
    assert none["stage2_read"] == "unavailable: no KVM VM is open in this host"


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_a_real_vm_fd_of_another_process_is_found_and_copied():
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        fd = int(child.stdout.readline())
        assert (child.pid, fd) in l1_vmfd.vm_fds()
        mine = l1_vmfd.borrow(child.pid, fd)
        try:
            assert os.readlink(f"/proc/self/fd/{mine}") == l1_vmfd.VM_LINK  # the same open file
        finally:
            os.close(mine)
        # The read itself goes through dmattr, which this machine does not have loaded (or is
        # not arm64): one `unavailable` line that says why, never an exception.
        rec = l1_vmfd.read_foreign(0x1000)
        assert rec["stage2_read"].startswith("unavailable: ") and rec["stage2_memattr"] is None
    finally:
        child.kill()
        child.wait()
    time.sleep(0.1)
    assert all(pid != child.pid for pid, _ in l1_vmfd.vm_fds())


def test_borrow_from_a_process_that_is_gone_is_an_oserror():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(OSError):
        l1_vmfd.borrow(child.pid, 0)
