"""`kvm:vfio:<BDF>/<bar>`, `kvm:sysfs:<BDF>/<bar>`, `kvm:kmod-<attr>:<BDF>/<bar>`, `kvm:ram`:
memory as a KVM guest sees it.

The tiny VMM (c_kernels/kvm/) puts the memory in a memslot of a one-vCPU VM whose payload
maps it with every stage-1 attribute (its own MAIR), so all seven are available.  The
stage-2 attribute is the host kernel's own choice for that backing; it is predicted from
the KVM-policy table (bench.kvmpolicy) and observed with a probe (Normal stage 1 +
unaligned load: the VM killed = stage-2 Device, completed = stage-2 Normal).  A host KVM
may also refuse the memslot (Linux 6.17+: a cacheable PFNMAP without FWB and DIC): every probe's
outcome is then `refused`.  Kernels and probes run inside the guest; the payload's clock is
CNTVCT_EL0.

The kmod-* backings map the BAR in the host with the guestkit dmattr module
(io_remap_pfn_range with that page protection, never VM_ALLOW_ANY_UNCACHED): kmod-normal
is a cacheable VM_PFNMAP over non-RAM memory, the stand-in for GPU memory (nvgrace-gpu).
dmattr claims nothing on the device, so the BAR may be owned by any driver (vfio-pci in the lab).

Only the window a case uses (from the BAR's start, rounded up to the host page) is mapped
in the host and registered as the memslot, so a 128 GiB GPU BAR runs a 4 KiB probe.  After a
case has touched the target, while its VM still exists, the leaf stage-2 descriptor KVM
wrote for the target IPA is read (bench.stage2): every result carries stage2_read,
stage2_memattr, stage2_leaf and fwb (docs/kvm-target.md).
"""
from __future__ import annotations

import errno
import mmap
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bench import kernels, kvmpolicy, memtypes, metadata
from bench.errors import UserError
from bench.plan import Case
from bench.outcomes import EXCL_TRIES, STXR_FAIL, Outcome, Probe, probes
from bench.targets import vfio
from bench.targets.base import Availability, Mapping, Target, map_memory
from bench.targets.kmod import KmodTarget, cacheable_bar_refusal, device_path
from bench.targets.kvmvm import (CAP_CACHEABLE_PFNMAP, OP_INIT, OP_PREFAULT, OP_PROBE, OP_RUN, Answer, KernelLog, Vm,
                                  VmError, cap_text, check_extension, host_dic)

STAGE2_KEYS = ("stage2_read", "stage2_memattr", "stage2_leaf", "fwb")  # in each probe outcome and run's metadata
from bench.targets.pci import PciTarget, map_file, scratch_bars

FORMS = ("kvm:vfio:<BDF>/<bar>, kvm:sysfs:<BDF>/<bar>, kvm:kmod-normal|kmod-normal-nc|kmod-device-ngnre:<BDF>/<bar> "
         "or kvm:ram")
BAR_BACKINGS = ("vfio", "sysfs", *kvmpolicy.KMOD_BACKINGS)
WHAT = {"vfio": "vfio-pci region mmap", "sysfs": "sysfs resourceN mmap", "ram": "anonymous RAM",
        **{b: f"dmattr {a} mmap" for b, a in kvmpolicy.KMOD_BACKINGS.items()}}
ARCH_FIXED = ("ldp", "stp", "dc-zva", "exclusive", "atomic")  # outcome not fixed by the architecture
PROBE_TIMEOUT_MS, RUN_TIMEOUT_MS = 5000, 120000
PROBE_BYTES = 4096  # the probes' window (rounded up to the host page)
MAIR = sum((a.mair or 0) << (8 * i) for i, a in enumerate(memtypes.ATTRS)) | 0xFF << 56


def parse_spec(spec: str) -> tuple[str, str]:
    """'kvm:vfio:0000:00:01.0/2' -> ('vfio', 'pci:0000:00:01.0/2'); 'kvm:ram' -> ('ram', '');
    'kvm:kmod-normal:0000:00:01.0/2' -> ('kmod-normal', 'pci:0000:00:01.0/2')."""
    body = spec.removeprefix("kvm:")
    backing, _, rest = body.partition(":")
    if backing == "ram" and not rest:
        return "ram", ""
    if backing in BAR_BACKINGS and rest:
        return backing, f"pci:{rest}"
    if backing in kvmpolicy.BACKINGS:
        raise UserError(f"bad kvm target {spec!r}: use {FORMS}")
    raise UserError(f"unknown kvm backing {backing!r} in {spec!r}: use {FORMS}")


def check_cacheable_backing(spec: str, backing: str, scratch: bool, allowed: bool,
                            emulated: bool | None = None) -> None:
    """UserError (exit 2) for a kmod backing whose host mapping of the BAR is cacheable
    (kmod-normal) unless the BAR is known scratch memory, the host is emulated or the user
    passed --allow-cacheable-bar (bench.targets.kmod.cacheable_bar_refusal says why)."""
    if backing not in kvmpolicy.KMOD_BACKINGS:
        return
    why = cacheable_bar_refusal(spec, kvmpolicy.KMOD_BACKINGS[backing], scratch,
                                metadata.emulated() if emulated is None else emulated, allowed)
    if why:
        raise UserError(why)


def check_host(machine: str | None = None, kvm: str = "/dev/kvm") -> None:
    """UserError unless this is an arm64 Linux host with a usable /dev/kvm."""
    machine = machine or platform.machine()
    if machine not in ("aarch64", "arm64"):
        raise UserError(f"the kvm target needs an arm64 KVM host, this is {machine}: "
                        "run it there, or here in an emulated one: python -m guestkit run --kvm-host -- ...")
    if not os.path.exists(kvm):
        raise UserError(f"no {kvm}: this kernel offers no KVM (boot it at EL2 and load kvm; here: python -m guestkit run --kvm-host)")
    if not os.access(kvm, os.R_OK | os.W_OK):
        raise UserError("no permission to use /dev/kvm: run as root or join the kvm group")


class MemslotRefused(UserError):
    """KVM_SET_USER_MEMORY_REGION refused the target memory: an outcome, not bad input."""

    def __init__(self, spec: str, code: str) -> None:
        super().__init__(f"{spec}: the host's KVM refused the memslot ({code})")
        self.outcome_code = code


class VmStartError(UserError):
    """The case's VM did not start (any failure other than KVM's cacheable-PFNMAP refusal,
    with its errno): an error of that case; the probes record it as their outcome."""

    def __init__(self, spec: str, detail: str) -> None:
        super().__init__(f"{spec}: the VM did not start: {detail}")
        self.detail = detail


def unavailable(reason: str) -> dict:
    """The stage-2 fields of a result whose descriptor could not be read."""
    return {"stage2_read": f"unavailable: {reason}", "stage2_memattr": None, "stage2_leaf": None, "fwb": None}


# Why no descriptor was read, by how the case's last VM ended.
GONE = {"killed": "VM killed before the read", "hang": "VM hung and was torn down before the read",
        "error": "VM failed before the read", "refused": "KVM refused the memslot (no stage 2)"}


def read_stage2(vm: Vm) -> dict:
    """The leaf stage-2 descriptor of vm's target IPA, read while vm exists (bench.stage2,
    after a request touched the target): the four result fields, as JSON values."""
    try:
        from bench import stage2  # helper module; absent in an older install
    except ImportError:
        return unavailable("bench.stage2 is not installed")
    try:
        r = stage2.read(vm.fd, vm.where.target_ipa)
    except (OSError, UserError) as exc:
        return unavailable(f"the read failed: {exc}")
    return {"stage2_read": r.read, "stage2_memattr": r.memattr, "stage2_leaf": r.leaf, "fwb": r.fwb}


def stage2_metadata(fields: dict, host_fwb: bool | None) -> dict[str, str]:
    """The four fields as pyperf metadata (strings; 'null' for none); fwb: the read's, else
    the host's from its boot log."""
    fwb = fields["fwb"] if fields["fwb"] is not None else host_fwb
    return {"stage2_read": fields["stage2_read"], "stage2_memattr": json_text(fields["stage2_memattr"]),
            "stage2_leaf": json_text(fields["stage2_leaf"]), "fwb": {True: "true", False: "false", None: "unknown"}[fwb]}


def json_text(value: object) -> str:
    """A JSON scalar as text: 'null', 'true'/'false', or the number."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Backing:
    """The host mapping that becomes the VM's target memslot."""

    ptr: int
    size: int
    writable: bool
    realised: str
    close: Callable[[], None]


class KvmTarget(Target):
    """The memory of one backing, seen from inside a tiny KVM guest."""

    def __init__(self, spec: str, allow_reads: bool = False, allow_writes: bool = False,
                 allow_cacheable_bar: bool = False) -> None:
        self.backing, pci_spec = parse_spec(spec)
        check_host()
        # kmod-*: dmattr maps the BAR (its own pci target keeps the safety rules); /dev/dmattr
        # missing is one line now, not a failure deep inside a run.
        kmod = self.backing in kvmpolicy.KMOD_BACKINGS
        self.kmod = KmodTarget(f"kmod:{pci_spec}", allow_reads, allow_writes, allow_cacheable_bar) if kmod else None
        if self.kmod:  # kmod-normal: the whole backing is a cacheable BAR mapping, so refuse it now
            check_cacheable_backing(spec, self.backing, bool(self.kmod.pci.scratch), allow_cacheable_bar)
        self.pci = self.kmod.pci if self.kmod else PciTarget(pci_spec, allow_reads, allow_writes) if pci_spec else None
        self.spec = f"kvm:{self.backing}" + (f":{self.pci.spec.removeprefix('pci:')}" if self.pci else "")
        if self.backing == "vfio":
            vfio.check_bound(self.pci.dev)
        self._users, self._device, self._refusal = 0, None, ""
        self.stage2_reads: dict[str, dict] = {}  # attr -> the four stage-2 fields (run_probes)

    # --- what the host is and what KVM should do ---------------------------------------
    @cached_property
    def release(self) -> str:
        return platform.release()

    @cached_property
    def prediction(self) -> kvmpolicy.Prediction:
        return kvmpolicy.predict(self.release, self.backing, self.fwb, self.dic)

    @cached_property
    def fwb(self) -> bool | None:
        return kvmpolicy.fwb_from_log("\n".join(KernelLog(from_start=True).read_all()))

    @cached_property
    def dic(self) -> bool:
        return host_dic()

    @cached_property
    def cacheable_pfnmap_cap(self) -> int:
        """KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED on a VM fd (0 before Linux 6.17)."""
        return check_extension(CAP_CACHEABLE_PFNMAP, on_vm=True)

    @cached_property
    def observed(self) -> str:
        """Stage-2 class seen by the probe (normal stage 1 + unaligned 8-byte load)."""
        probe = next(p for p in probes() if p.name == "load8-unaligned")
        backing = self._map(PROBE_BYTES)
        try:
            answer = self._probe_vm(backing, lambda vm: vm.call(OP_PROBE, probe.index, self.attr_index("normal"),
                                                                 timeout_ms=PROBE_TIMEOUT_MS))
        except MemslotRefused as exc:
            self._refusal = exc.outcome_code
            return "refused"
        except VmStartError:
            return "unknown"  # the probes record the error itself, case by case
        finally:
            backing.close()
        return kvmpolicy.observed_class("ok" if answer.status == "done" and answer.ret == 0 else answer.status)

    def stage2_facts(self) -> dict[str, str]:
        """Metadata: backing, host kernel, FWB, DIC, the cacheable-PFNMAP capability,
        predicted and observed stage 2 (and why KVM refused the memslot, when it did)."""
        agrees = self.observed == "unknown" or self.observed == self.prediction.cls
        if not agrees:
            print(f"warning: {self.spec}: the KVM-policy table predicts stage-2 {self.prediction.shown} "
                  f"({self.prediction.cls}) on Linux {self.release}, but the probe sees {self.observed} memory")
        facts = {"backing": self.backing, "host_kernel": self.release,
                 "fwb": {True: "true", False: "false", None: "unknown"}[self.fwb], "dic": str(self.dic).lower(),
                 "cacheable_pfnmap_cap": cap_text(self.cacheable_pfnmap_cap),
                 "stage2_predicted": self.prediction.shown, "stage2_reason": self.prediction.reason,
                 "stage2_observed": self.observed, "stage2_agrees": "true" if agrees else "false",
                 "vmm": "dmtbench kvm payload (KVM on this host)"}
        if self.observed == "refused":
            facts["memslot_refused"] = self._refusal
        return facts

    def own_stage2(self) -> str | None:
        # A memslot KVM is expected to refuse has no stage 2: 'unknown' keeps the runner's
        # effective-type arithmetic away from it.
        return self.prediction.stage2 or "unknown"

    # --- Target interface -------------------------------------------------------------------
    def availability(self) -> list[Availability]:
        return [Availability(name, True) for name in memtypes.names()]  # the payload's MAIR has all seven

    def max_size(self) -> int | None:
        return self.pci.bar.size if self.pci else None

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        if self.pci:
            self.pci.check_access(attr, reads, writes)

    def describe(self) -> str:
        dev = f" of {self.pci.describe()}" if self.pci else ""
        return (f"{WHAT[self.backing]}{dev} in a KVM guest (host Linux {self.release}; KVM-policy stage 2: "
                f"{self.prediction.shown})")

    def attr_index(self, attr: str) -> int:
        return memtypes.names().index(memtypes.canonical(attr))

    def open(self, attr: str, size: int) -> Mapping:
        """The host side of the memslot (what the VM will map); the guest's view is made
        per case by timer() and run_probes()."""
        attr = memtypes.canonical(attr)
        b = self._map(size)
        return Mapping(b.ptr, b.size, attr, f"{b.realised}; stage 1 {attr} (payload MAIR)", b.writable,
                       self.spec, b.close)

    def _map(self, size: int) -> Backing:
        """A host mapping of the first `size` bytes of the backing (rounded up to the host
        page): only the window a case uses, never the whole BAR.  The vfio device is opened
        once per process and shared (a vfio group can be open only once); close() unmaps
        the window and drops one user of the device."""
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        if self.pci and length > self.pci.bar.size:
            raise UserError(f"{self.spec}: BAR {self.pci.index} is {self.pci.bar.size} bytes, smaller than the "
                            f"{size} asked: pass a smaller --size")
        if self.backing == "ram":
            ptr, close = map_memory(length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            return Backing(ptr, length, True, "anonymous mmap (KVM: guest RAM)", close)
        if self.kmod:
            return self._map_kmod(length)
        if self.backing == "sysfs":
            return self._map_sysfs(length)
        return self._map_vfio(length)

    def _map_vfio(self, length: int) -> Backing:
        if not self._users:
            self._device = vfio.open_device(self.pci.dev, self.pci.index, self.pci.allow_writes)
        self._users += 1
        try:
            r = self._device.map(length)
        except BaseException:
            self._drop_device()
            raise
        state = {"open": True}

        def release() -> None:
            if state["open"]:
                state["open"] = False
                r.close()
                self._drop_device()

        return Backing(r.ptr, r.size, self.pci.allow_writes,
                       f"vfio-pci region {self.pci.index} at offset {self._device.offset:#x} "
                       f"({r.size} of {self._device.region_size} bytes mapped)", release)

    def _drop_device(self) -> None:
        self._users -= 1
        if not self._users:
            self._device.close()
            self._device = None

    def _map_kmod(self, length: int) -> Backing:
        """The window through /dev/dmattr with the backing's page protection."""
        attr = kvmpolicy.KMOD_BACKINGS[self.backing]
        self.pci._enable()  # memory decoding on where no driver owns the device
        m = self.kmod.open(attr, length)
        return Backing(m.ptr, m.size, m.writable, f"dmattr {attr} mmap of BAR {self.pci.index} "
                                                  f"({m.size} bytes; VM_PFNMAP, no VM_ALLOW_ANY_UNCACHED)", m.close)

    def _map_sysfs(self, length: int) -> Backing:
        path = self.pci.dev / f"resource{self.pci.index}"
        writable = self.pci.allow_writes
        self.pci._enable()  # memory decoding on, as the pci target does
        ptr, size, close = map_file(path, length, writable)
        return Backing(ptr, size, writable, f"sysfs {path.name} mmap ({size} bytes)", close)

    def _vm(self, backing: Backing, ram: int = 0, heap: int = 1 << 20, timeout_ms: int = PROBE_TIMEOUT_MS) -> Vm:
        cacheable = self.backing in kvmpolicy.KMOD_BACKINGS and memtypes.canonical(
            kvmpolicy.KMOD_BACKINGS[self.backing]) == "normal"
        try:
            return Vm(backing.ptr, backing.size, MAIR, ram, heap, timeout_ms, readonly=not backing.writable,
                      cacheable=cacheable)
        except VmError as exc:
            if exc.answer.status == "refused":
                raise MemslotRefused(self.spec, exc.answer.code) from None
            raise VmStartError(self.spec, str(exc)) from None

    def _probe_vm(self, backing: Backing, fn) -> Answer:
        with self._vm(backing) as vm:
            return fn(vm)

    # --- hooks the runner and `bench probe` call ---------------------------------------------
    def classify(self, mapping: Mapping) -> str:
        """Device or normal for mapping.attr, from the unaligned 8-byte load in the guest."""
        probe = next(p for p in probes() if p.name == "load8-unaligned")
        b = Backing(mapping.ptr, mapping.size, mapping.writable, mapping.realised, mapping.close)
        try:
            answer = self._probe_vm(b, lambda vm: vm.call(OP_PROBE, probe.index, self.attr_index(mapping.attr),
                                                          timeout_ms=PROBE_TIMEOUT_MS))
        except MemslotRefused:
            return "refused"
        return _class_of(answer)

    def timer(self, case: Case, describe: bool = True) -> "KvmTimer":
        """describe False: no metadata (a case reopened after its first VM described it)."""
        return KvmTimer(self, case, describe)

    def run_probes(self, attrs: list[str], selected: list[Probe], stage2: str | None) -> dict[str, list[Outcome]]:
        """Every probe for every attribute inside VMs over one host window; a fresh VM after
        one is killed, hangs or fails.  A refused memslot makes every probe's outcome
        `refused`; a VM that cannot start for another reason makes it `error` (with the
        errno).  Per attribute, the target's stage-2 descriptor is read from a VM that is
        still alive after a probe of that attribute touched the target (stage2_reads)."""
        s2 = stage2 if stage2 not in (None, "none", "unknown") else self.prediction.stage2
        backing = self._map(PROBE_BYTES)
        vm: Vm | None = None
        gone = ""  # refused / error: the VM cannot be had (outcome, code)
        rows: dict[str, list[Outcome]] = {}
        try:
            for attr in attrs:
                rows[attr] = []
                read: dict = unavailable("no probe of this attribute touched the target")
                final = False  # the read failed for a reason another probe cannot change (no module...)
                for p in selected:
                    if p.writes and not backing.writable:
                        rows[attr].append(Outcome(attr, p.name, "skip", "writes not allowed (--allow-writes)"))
                        continue
                    if not vm and not gone:
                        vm, gone = self._probe_vm_or_why(backing)
                    if gone:
                        result, code = gone
                        rows[attr].append(Outcome(attr, p.name, result, code, expected_outcome(p, attr, s2)))
                        read = unavailable(GONE[result])
                        continue
                    answer = vm.call(OP_PROBE, p.index, self.attr_index(attr), timeout_ms=PROBE_TIMEOUT_MS)
                    if answer.status in ("done", "fault", "serror"):
                        if not _read_ok(read) and not final:
                            read = read_stage2(vm)  # the VM exists and the probe's access has run
                            final = not _read_ok(read) and not _may_map_later(read)
                    else:
                        vm.close()
                        vm = None
                        if not _read_ok(read) and not final:  # a final reason (no module...) stays
                            read = unavailable(GONE.get(answer.status, GONE["error"]))
                    result, code = _probe_result(answer)
                    rows[attr].append(Outcome(attr, p.name, result, code, expected_outcome(p, attr, s2)))
                if read["fwb"] is None:
                    read = {**read, "fwb": self.fwb}  # the host's, from its boot log, where the read has none
                self.stage2_reads[attr] = read
        finally:
            if vm:
                vm.close()
            backing.close()
        return rows

    def _probe_vm_or_why(self, backing: Backing) -> tuple[Vm | None, tuple[str, str] | str]:
        """(a fresh VM for the probes, ''), or (None, (result, code)) when it cannot be had."""
        try:
            return self._vm(backing), ""
        except MemslotRefused as exc:
            return None, ("refused", exc.outcome_code)
        except VmStartError as exc:
            return None, ("error", exc.detail)


def _read_ok(fields: dict) -> bool:
    return not str(fields["stage2_read"]).startswith("unavailable")


def _may_map_later(fields: dict) -> bool:
    """An unavailable read that a later access can change (KVM maps a page on its first fault)."""
    return "not mapped" in str(fields["stage2_read"])


def expected_outcome(probe: Probe, attr: str, stage2: str | None) -> str:
    """The outcome the architecture fixes for stage-1 `attr` over `stage2`: an EL1
    alignment fault when stage 1 is Device (checked before stage 2), the VM killed by a
    stage-2 alignment fault when only stage 2 is Device (KVM: 'Unsupported FSC'), else ok;
    '' where the architecture allows several (pairs, DC ZVA, exclusives, atomics).
    stage2 None: KVM refuses the memslot, so every probe is `refused`."""
    if stage2 is None:
        return "refused"
    if probe.name in ARCH_FIXED:
        return ""
    if not probe.unaligned:
        return "ok"
    if memtypes.get(attr).device:
        return "fault"
    return "killed" if memtypes.get(stage2).device else "ok"


def _probe_result(a: Answer) -> tuple[str, str]:
    """A payload answer as a probe result, named as bench.probe names the forked ones
    (serror: an SError by the closing barrier, never ok)."""
    if a.status == "done":
        if a.ret == -errno.EOPNOTSUPP:
            return "skip", "not on this CPU"
        if a.ret == STXR_FAIL:
            return "stxr-fail", f"STXR status 1 in all {EXCL_TRIES} tries"
        return ("ok", "") if a.ret == 0 else (f"exit {a.ret}", "")
    return a.status, a.code


def _class_of(a: Answer) -> str:
    if a.status == "fault" and a.esr & 0x3F == 0x21:  # DFSC: alignment fault
        return "device"
    if a.status == "killed":
        return "device"  # the only stage-2 fault an unaligned access to a memslot raises (xFSC 0x21)
    return "normal" if a.status == "done" and a.ret == 0 else "unknown"


class KvmTimer:
    """pyperf's time function for one case: one VM, the kernel initialised in the guest,
    then each call runs `loops` iterations there and returns the guest-timed seconds."""

    def __init__(self, target: KvmTarget, case: Case, describe: bool = True) -> None:
        self.case, self.target = case, target
        self.mapping = target.open(case.attr, case.size)
        b = Backing(self.mapping.ptr, self.mapping.size, self.mapping.writable, self.mapping.realised, self.mapping.close)
        needs_ram = bool(case.kernel.flags & kernels.NEEDS_SRC)
        self.vm = target._vm(b, ram=case.size if needs_ram else 0, heap=case.size // 8 + (1 << 20),
                             timeout_ms=RUN_TIMEOUT_MS)
        self.attr = target.attr_index(case.attr)
        # Stage-2 faults of the first touch are not timed.  Only the case's own range, and
        # stores only where the kernel writes (the VMM never stores to a read-only target).
        self._ok(self.vm.call(OP_PREFAULT, 0, self.attr, loops=int(case.kernel.writes), offset=0,
                              length=min(case.size, self.mapping.size)), "prefault")
        self._ok(self.vm.call(OP_INIT, case.kernel.index, self.attr, args=case.args()), "init")
        self.metadata: dict = {}
        if describe:
            self._describe()

    def _describe(self) -> None:
        case, target = self.case, self.target
        # The case has touched the target and its VM exists: read what KVM mapped there.
        stage2 = stage2_metadata(read_stage2(self.vm), target.fwb)
        self.metadata = {**target.stage2_facts(), "clock": f"CNTVCT_EL0 in the guest ({self.vm.cntfrq} Hz)",
                         "realised": self.mapping.realised, "effective_inferred": target.classify(self.mapping),
                         **stage2}
        fwb = target.fwb is True
        pred = target.prediction  # may say refused where this host's KVM took the memslot: a disagreement
        effective = "unknown" if pred.refused else memtypes.combine(case.attr, pred.stage2, fwb).effective
        self.metadata["effective"] = effective

    def _ok(self, answer: Answer, step: str) -> int:
        if answer.status != "done":
            what = {"killed": "VM killed by the host", "fault": "exception in the guest",
                    "serror": "SError in the guest"}.get(answer.status, answer.status)
            raise UserError(f"{self.case.name}: {what} during {step}: {answer.code or answer.detail}")
        if answer.ret < 0:
            raise UserError(f"{self.case.name}: in the guest, {step} ran, but {kernels.failure(answer.ret)}")
        return answer.ret

    def __call__(self, loops: int) -> float:
        answers: list[Answer] = []

        def run() -> int:
            answers.append(self.vm.call(OP_RUN, self.case.kernel.index, self.attr, loops))
            return answers[-1].ret if answers[-1].status == "done" else 0

        kernels.timed(run)
        return self._ok(answers[-1], "the timed loop") * 1e-9

    def close(self) -> None:
        self.vm.close()
        self.mapping.close()


def discover() -> list[str]:
    """kvm specs worth listing on this host: kvm:ram, and the scratch BARs (vfio when bound
    to vfio-pci, sysfs always, kmod-* when the dmattr module is loaded)."""
    if platform.machine() not in ("aarch64", "arm64") or not os.path.exists("/dev/kvm"):
        return []
    specs = ["kvm:ram"]
    kmod = list(kvmpolicy.KMOD_BACKINGS) if device_path().exists() else []
    for dev, i in scratch_bars():
        bound = (dev / "driver").exists() and Path(os.path.realpath(dev / "driver")).name == "vfio-pci"
        specs += [f"kvm:{back}:{dev.name}/{i}" for back in (["vfio"] if bound else []) + ["sysfs"] + kmod]
    return specs
