"""ctypes view of the tiny VMM (c_kernels/kvm/vmm.c): one KVM VM running the payload.

A request ends as an Answer: done (the payload's return value), fault (a synchronous
exception the payload took at EL1, with ESR/FAR/ELR), serror (an SError taken at EL1, or
still pending at the request's closing barrier: ESR, ISR), killed (KVM_RUN failed with
EFAULT and the host logged this vCPU's `Unsupported FSC ... xFSC=0x21`: a stage-2
alignment fault KVM cannot handle; `detail` is that line), hang, or error (any other
KVM_RUN failure, with its errno and the host's log line, or a step that failed).  A VM can
also fail to open as refused: KVM would not take a cacheable PFNMAP as a memslot (EINVAL;
`detail`: the errno and the cacheable-PFNMAP capability of that VM).  A killed VM or a
refused memslot is an outcome, not a crash.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench import kbuild, kvmbuild
from bench.errors import UserError
from bench.kernels import Args

VMM_ABI = 3
OP_INFO, OP_INIT, OP_RUN, OP_PROBE, OP_PREFAULT = 1, 2, 3, 4, 5
TARGET_READONLY, TARGET_CACHEABLE = 1, 2  # DMTK_TARGET_*: read-only memslot; a cacheable PFNMAP
# The VMM's statuses by number; runfail (KVM_RUN failed) becomes killed or error here.
STATUS = ("done", "fault", "runfail", "hang", "error", "refused", "serror")
ISR_A = 1 << 8              # ISR_EL1.A: an SError pending
CAP_CACHEABLE_PFNMAP = 243  # KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED (Linux 6.17), answered on a VM fd
CTR_DIC = 1 << 29           # CTR_EL0.DIC: no instruction-cache invalidation needed for coherence
RAM_IPA = 0x40000000
IMAGE_MAX = 0xC0000


class Config(ctypes.Structure):
    """struct dmtk_config."""

    _fields_ = [("payload", ctypes.c_void_p), ("payload_len", ctypes.c_uint64), ("target", ctypes.c_void_p),
                ("target_size", ctypes.c_uint64), ("ram_size", ctypes.c_uint64), ("heap_size", ctypes.c_uint64),
                ("mair", ctypes.c_uint64), ("timeout_ms", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class Result(ctypes.Structure):
    """struct dmtk_result."""

    _fields_ = [("status", ctypes.c_int32), ("err", ctypes.c_int32), ("ret", ctypes.c_int64),
                ("esr", ctypes.c_uint64), ("far", ctypes.c_uint64), ("elr", ctypes.c_uint64),
                ("vector", ctypes.c_uint64), ("exit_reason", ctypes.c_uint64), ("isr", ctypes.c_uint64),
                ("retried", ctypes.c_uint64), ("what", ctypes.c_char * 96)]


@dataclass(frozen=True)
class Answer:
    """How one request ended."""

    status: str          # done | fault | serror | killed | hang | error | refused
    ret: int = 0         # payload return value (done); refused: the capability value
    esr: int = 0         # fault, serror: ESR_EL1
    far: int = 0
    detail: str = ""     # killed: host log line; hang/error: what happened
    isr: int = 0         # serror: ISR_EL1 (A set: still pending at the closing barrier)
    err: int = 0         # error/killed: errno of the failing call

    @property
    def code(self) -> str:
        """The outcome's `code` in probe output: 'ESR 0x96000021', the host log line, or
        why the memslot was refused."""
        if self.status == "fault":
            return f"ESR {self.esr:#x}"
        if self.status == "serror":
            if self.isr & ISR_A and not self.esr:
                return f"pending at the closing barrier (ISR_EL1 {self.isr:#x})"
            return f"ESR {self.esr:#x}"
        return self.detail


def artefact_dir() -> Path:
    """Where the VMM library and payload built from these sources are: $DMTBENCH_KVM_DIR,
    the bench package (a KVM host image carries them there), or a cache built now."""
    want = kvmbuild.source_hash() if kbuild.source_dir().is_dir() else None
    env = os.environ.get("DMTBENCH_KVM_DIR")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parent.parent)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache_dir = base / "dmtbench" / f"kvm-{want}"
    cands.append(cache_dir)
    for d in cands:
        stamp = d / kvmbuild.HASH_FILE
        if stamp.exists() and (want is None or stamp.read_text().strip() == want):
            return d
    if want is None:
        raise UserError("the kvm target's VMM and payload are missing and there are no c_kernels/ sources: reinstall dmtbench")
    try:
        kvmbuild.build_kvm(cache_dir)
    except kbuild.BuildError as exc:
        raise UserError(str(exc).splitlines()[0] + " (needed to build the kvm target's VMM and payload)") from None
    return cache_dir


def payload_image(elf: bytes) -> bytes:
    """The flat image to load at RAM_IPA: the ELF's PT_LOAD segments (file bytes; .bss is
    left to the zero-filled RAM)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[18] != 183:  # ELFCLASS64, EM_AARCH64
        raise UserError("the kvm payload is not an arm64 ELF: delete it and run again to rebuild")
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    image = bytearray()
    for i in range(phnum):
        ptype, _, off, _, paddr, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
        if ptype != 1 or not filesz:
            continue
        start = paddr - RAM_IPA
        if start < 0 or start + filesz > IMAGE_MAX:
            raise UserError(f"kvm payload segment at {paddr:#x} outside the image area: rebuild it")
        image[len(image):start] = bytes(max(0, start - len(image)))
        image[start:start + filesz] = elf[off:off + filesz]
    return bytes(image)


@cache
def _loaded() -> tuple[ctypes.CDLL, bytes]:
    d = artefact_dir()
    try:
        so = ctypes.CDLL(str(d / kvmbuild.VMM_LIB))
    except OSError as exc:
        raise UserError(f"cannot load the kvm VMM {d / kvmbuild.VMM_LIB}: {exc}") from None
    if so.dmtk_abi() != VMM_ABI:
        raise UserError(f"{d / kvmbuild.VMM_LIB} has VMM ABI {so.dmtk_abi()}, expected {VMM_ABI}: delete it to rebuild")
    so.dmtk_open.argtypes = [ctypes.POINTER(Config), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(Result)]
    so.dmtk_call.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint64,
                             ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(Args), ctypes.c_uint32,
                             ctypes.POINTER(Result)]
    so.dmtk_vm_fd.argtypes = [ctypes.c_void_p]
    so.dmtk_where.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64 * 5)]
    so.dmtk_inject_serror.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    so.dmtk_close.argtypes = [ctypes.c_void_p]
    so.dmtk_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64 * 4)]
    so.dmtk_check_extension.argtypes = [ctypes.c_uint32, ctypes.c_int32]
    so.dmtk_check_extension.restype = ctypes.c_int64
    so.dmtk_ctr_el0.restype = ctypes.c_uint64
    return so, payload_image((d / kvmbuild.PAYLOAD).read_bytes())


class KernelLog:
    """Records of the host kernel log (/dev/kmsg): those logged since this object was made,
    or with from_start every record the ring buffer still holds."""

    def __init__(self, from_start: bool = False) -> None:
        try:
            self.fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            if not from_start:
                os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None  # not root: killed VMs are reported by errno alone

    def read_all(self) -> list[str]:
        """Every available message, then close."""
        try:
            return self.new_messages()
        finally:
            self.close()

    def new_messages(self) -> list[str]:
        """Messages logged since the last call (the text after 'prio,seq,time,flags;')."""
        out = []
        while self.fd is not None:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten records: go on with the next
                    continue
                break
            out.append(rec.decode(errors="replace").split(";", 1)[-1].split("\n", 1)[0])
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def errno_name(err: int) -> str:
    """'EINVAL' for 22; the number where Python has no name for it."""
    return errno.errorcode.get(err, str(err))


def cap_text(value: int) -> str:
    """A KVM_CHECK_EXTENSION answer in words: the value, or the errno name when it failed."""
    return str(value) if value >= 0 else errno_name(-value)


def refusal(err: int, cap: int) -> str:
    """Why a memslot was refused, as the probe `code`: the errno of KVM_SET_USER_MEMORY_REGION
    and KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED of that VM."""
    return f"KVM_SET_USER_MEMORY_REGION: {errno_name(err)}; KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED={cap_text(cap)}"


def check_extension(cap: int, on_vm: bool = True) -> int:
    """KVM_CHECK_EXTENSION(cap) on a fresh VM's fd (or /dev/kvm's): the value, or -errno."""
    so, _ = _loaded()
    return int(so.dmtk_check_extension(cap, int(on_vm)))


def host_dic() -> bool:
    """CTR_EL0.DIC as Linux shows it to user space (the system-wide value)."""
    so, _ = _loaded()
    return bool(so.dmtk_ctr_el0() & CTR_DIC)


def kill_reason(messages: list[str], err: int, tid: int | None = None) -> str:
    """The host log line that explains a failed KVM_RUN (KVM's own 'kvm [tid]: ...' lines,
    of vCPU thread `tid` where given, first), else the errno in words."""
    kvm = [m for m in messages if m.startswith("kvm [") or "Unsupported FSC" in m]
    if tid is not None:
        kvm = [m for m in kvm if not m.startswith("kvm [") or m.startswith(f"kvm [{tid}]")]
    if kvm:
        return kvm[-1].strip()
    return f"KVM_RUN: {os.strerror(err)} (no KVM line in the host log)"


# KVM's line for a stage-2 fault it cannot handle (arch/arm64/kvm/mmu.c, kvm_handle_guest_abort:
# kvm_err("Unsupported FSC: EC=%#x xFSC=%#lx ESR_EL2=%#lx"); kvm_err prefixes "kvm [%i]: "
# with task_pid_nr(current), the vCPU thread).  xFSC 0x21: an alignment fault.
_STAGE2_ALIGNMENT = re.compile(r"^kvm \[(\d+)\]: Unsupported FSC: .*xFSC=0x21\b")


def run_failure(messages: list[str], err: int, tid: int) -> Answer:
    """A failed KVM_RUN as an answer: killed only for EFAULT with this vCPU thread's
    `Unsupported FSC ... xFSC=0x21` line (the VM died of a stage-2 alignment fault, which
    the probes read as stage-2 Device); any other failure is an error that names the errno
    and the host's log line."""
    for m in reversed(messages):
        hit = _STAGE2_ALIGNMENT.match(m.strip())
        if err == errno.EFAULT and hit and int(hit.group(1)) == tid:
            return Answer("killed", detail=m.strip(), err=err)
    line = kill_reason(messages, err, tid)
    log = line if not line.startswith("KVM_RUN:") else "no KVM line in the host log"
    return Answer("error", detail=f"KVM_RUN failed with {errno_name(err)} ({os.strerror(err)}); host log: {log}", err=err)


@dataclass(frozen=True)
class Where:
    """Where the VMM put things in one VM (dmtk_where)."""

    target_ipa: int
    target_size: int
    ipa_bits: int
    window_stride: int
    ram_bytes: int


class Vm:
    """One booted VM over the host mapping [ptr, ptr + size): the window a case uses."""

    def __init__(self, ptr: int, size: int, mair: int, ram_size: int = 0, heap_size: int = 1 << 20,
                 timeout_ms: int = 10000, readonly: bool = False, cacheable: bool = False) -> None:
        self._so, image = _loaded()
        self._image = ctypes.create_string_buffer(image, len(image))
        flags = (TARGET_READONLY if readonly else 0) | (TARGET_CACHEABLE if cacheable else 0)
        cfg = Config(ctypes.cast(self._image, ctypes.c_void_p), len(image), ptr, size, ram_size, heap_size, mair,
                     timeout_ms, flags)
        self._log = KernelLog()
        self._vm = ctypes.c_void_p()
        self._tid = threading.get_native_id()  # KVM's log lines name the vCPU thread: this one
        res = Result()
        if self._so.dmtk_open(ctypes.byref(cfg), ctypes.byref(self._vm), ctypes.byref(res)) < 0:
            answer = self._answer(res)
            self._log.close()
            raise VmError(answer)
        info = (ctypes.c_uint64 * 4)()
        self._so.dmtk_info(self._vm, ctypes.byref(info))
        self.cntfrq, self.features, self.midr, self.mmfr2 = info
        where = (ctypes.c_uint64 * 5)()
        self._so.dmtk_where(self._vm, ctypes.byref(where))
        self.where = Where(*where)
        self.retried = 0  # EINTRs of the last request that the VMM retried

    @property
    def fd(self) -> int:
        """The KVM VM fd (KVM_CREATE_VM's), for reading its stage-2 tables (bench.stage2)."""
        return int(self._so.dmtk_vm_fd(self._vm))

    @property
    def alive(self) -> bool:
        return bool(self._vm)

    def _answer(self, res: Result) -> Answer:
        status = STATUS[res.status]
        if status == "runfail":
            return run_failure(self._log.new_messages(), res.err, self._tid)
        if status == "refused":
            return Answer(status, res.ret, detail=refusal(res.err, res.ret), err=res.err)
        if status == "hang":
            return Answer(status, detail="no answer before the timeout (vCPU interrupted)")
        if status == "error":
            what = res.what.decode()
            extra = f" ({res.exit_reason:#x})" if "exit_reason" in what else ""
            cap = (f"; KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED={cap_text(res.ret)}"
                   if "target memory" in what else "")
            return Answer(status, detail=f"{what}: {errno_name(res.err)} ({os.strerror(res.err)}){extra}{cap}",
                          err=res.err)
        return Answer(status, res.ret, res.esr, res.far, isr=res.isr)

    def call(self, op: int, index: int = 0, attr: int = 0, loops: int = 0, offset: int = 0,
             args: Args | None = None, timeout_ms: int = 0, length: int = 0) -> Answer:
        """One request to the payload (length: PREFAULT's range from offset)."""
        res = Result()
        self._log.new_messages()  # only lines logged during this request explain it
        self._tid = threading.get_native_id()
        self._so.dmtk_call(self._vm, op, index, attr, loops, offset, length, ctypes.byref(args) if args else None,
                           timeout_ms, ctypes.byref(res))
        self.retried = int(res.retried)
        return self._answer(res)

    def inject_serror(self, esr: int = 0) -> int:
        """Make a virtual SError pending (KVM_SET_VCPU_EVENTS), as the host does for an
        asynchronous abort the guest caused: 0 or -errno."""
        return int(self._so.dmtk_inject_serror(self._vm, esr))

    def close(self) -> None:
        if self._vm:
            self._so.dmtk_close(self._vm)
            self._vm = ctypes.c_void_p()
        self._log.close()

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VmError(Exception):
    """The VM could not be created or booted."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.detail)
        self.answer = answer
