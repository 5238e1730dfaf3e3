"""dmattr: builds for arm64 (cross) and x86_64 against Debian's 6.1, 6.12 (and sid) headers;
in arm64 guests (6.1 and 6.12) maps every attribute the kernel has, with the probes, a short
run and the mapping lifetime rules, and refuses what it must (bad requests, an absent or
unassigned BAR, MAP_PRIVATE, a caller without CAP_SYS_RAWIO, a removed device's mapping);
in the x86_64 guest, checks that PAT gives the type asked, an I/O-port BAR is refused and
the stage-2 read says it is arm64's."""
import errno
import json
import platform
import re
import subprocess

import pyperf
import pytest

from bench.targets.kmod import INFO, IOC_INFO, IOC_SET, REQ
from conftest import REPO, assert_one_line_error, run_cli

pytestmark = pytest.mark.guest
DEVICE = {"device-ngnrne", "device-ngnre"}
NORMAL = {"normal-nc", "normal"}
MISSING = {"device-ngre", "device-gre", "normal-wt"}  # no MAIR slot / protection in Linux 6.1 arm64
GUEST_SCRIPT = """
python -m bench targets --target kmod > results/targets-kmod.txt
python -m bench run --target kmod --attr device-gre 2> results/refused.txt
python -m bench probe --target kmod --json > results/probe-kmod.json
python -m bench run --target kmod --fast --infer --workload write-bw --workload read-bw --size 64KiB --label kmod
python -m bench probe --target kmod:pci:0000:00:01.0/2 --probe load8-unaligned --json > results/probe-kmod-bar.json
python -m bench probe --target kmod:pci:0000:00:01.0/2,allow-claimed --probe load8-unaligned --json > results/probe-kmod-claimed.json
python - > results/ioctl.json <<'PY'
import errno, fcntl, json, mmap, os, sys
from bench.targets.kmod import IOC_SET, REQ
IVSHMEM = (0, 0, 1 << 3)  # domain, bus, devfn of 0000:00:01.0
bad = {
    "unknown-attr": (0, 99, 4096, 0, 0, 0, 0, 0),
    "size-zero": (0, 6, 0, 0, 0, 0, 0, 0),
    "size-unaligned": (0, 6, 100, 0, 0, 0, 0, 0),
    "ram-too-big": (0, 6, 1 << 30, 0, 0, 0, 0, 0),
    "ram-with-offset": (0, 6, 4096, 0, 0, 0, 0, 4096),
    "unknown-source": (7, 6, 4096, 0, 0, 0, 0, 0),
    "no-such-device": (1, 6, 4096, 0, 0, 0x50, 2, 0),
    "bar-index": (1, 6, 4096, *IVSHMEM, 9, 0),
    "bar-range": (1, 6, 4096, *IVSHMEM, 2, 1 << 20),
    "unsupported-attr": (0, 3, 4096, 0, 0, 0, 0, 0),
    "unknown-flags": (0, 6, 4096, 0, 0, 0, 0, 0, 2),
    "absent-bar": (1, 1, 4096, *IVSHMEM, 1, 0),   # ivshmem-plain has no BAR 1
}
fd = os.open("/dev/dmattr", os.O_RDWR)
out = {}
for name, req in bad.items():
    try:
        fcntl.ioctl(fd, IOC_SET, REQ.pack(*req, *(0, 0)[:10 - len(req)]))
        out[name] = 0
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
try:
    mmap.mmap(fd, 4096)
    out["mmap-before-set"] = 0
except OSError as exc:
    out["mmap-before-set"] = errno.errorcode[exc.errno]
fcntl.ioctl(fd, IOC_SET, REQ.pack(0, 6, 4096, 0, 0, 0, 0, 0, 0, 0))
try:
    mmap.mmap(fd, 8192)
    out["mmap-beyond-source"] = 0
except OSError as exc:
    out["mmap-beyond-source"] = errno.errorcode[exc.errno]
try:
    mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE)
    out["mmap-private"] = 0
except OSError as exc:
    out["mmap-private"] = errno.errorcode[exc.errno]
{IOBAR}json.dump(out, sys.stdout)
PY
python - > results/lifetime.json <<'PY'
{LIFETIME}PY
python - > results/rawio.json <<'PY'
{RAWIO}PY
python - > results/removal.json <<'PY'
{REMOVAL}PY
dmesg | grep dmattr: > results/dmesg.txt
"""
# The first I/O-port BAR of any device here, asked for as a source: ENXIO.
IOBAR = """
# An I/O-port BAR of any device here (ENXIO); none on arm64 virt, several on x86 (IDE, SATA).
out["io-bar"] = None
for dev in sorted(os.listdir("/sys/bus/pci/devices")):
    lines = open(f"/sys/bus/pci/devices/{dev}/resource").read().split()
    for i in range(6):
        start, end, flags = (int(v, 16) for v in lines[3 * i:3 * i + 3])
        if flags & 0x100 and end > start:
            dom, bus, slot = dev.split(":")
            d, f = slot.split(".")
            try:
                fcntl.ioctl(fd, IOC_SET, REQ.pack(1, 1, 4096, int(dom, 16), int(bus, 16), int(d, 16) << 3 | int(f), i, 0, 0, 0))
                out["io-bar"] = [dev, i, 0]
            except OSError as exc:
                out["io-bar"] = [dev, i, errno.errorcode[exc.errno]]
            break
    if out["io-bar"]:
        break
"""
GUEST_SCRIPT = GUEST_SCRIPT.replace("{IOBAR}", IOBAR.lstrip())
# SET while a mapping exists (also a split one, a fork's copy), and the RAM cap from the module.
LIFETIME = """
import ctypes, errno, fcntl, json, mmap, os, sys
from pathlib import Path
from bench.targets.kmod import IOC_SET, REQ, KmodTarget, module_info
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE

def set_ram(fd, size, attr=6):
    try:
        fcntl.ioctl(fd, IOC_SET, REQ.pack(0, attr, size, 0, 0, 0, 0, 0, 0, 0))
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def map_(fd, size):
    p = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    assert p != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
    return p

out = {}
fd = os.open("/dev/dmattr", os.O_RDWR)
set_ram(fd, 2 * PAGE, 4)
p = map_(fd, 2 * PAGE)
ctypes.memset(p, 0x5A, 2 * PAGE)
out["set-while-mapped"] = set_ram(fd, PAGE)
libc.munmap(p + PAGE, PAGE)
out["set-after-partial-munmap"] = set_ram(fd, PAGE)
out["data-intact"] = ctypes.string_at(p, PAGE) == b"\\x5a" * PAGE
libc.munmap(p, PAGE)
out["set-after-munmap"] = set_ram(fd, PAGE)
p = map_(fd, PAGE)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)
    os._exit(0)
os.close(r)
libc.munmap(p, PAGE)
out["set-while-child-maps"] = set_ram(fd, PAGE)
os.close(w)
os.waitpid(pid, 0)
out["set-after-child-exit"] = set_ram(fd, PAGE)
p = map_(fd, PAGE)
ctypes.memset(p, 0x33, PAGE)
os.close(fd)
out["mapping-after-close"] = ctypes.string_at(p, PAGE) == b"\\x33" * PAGE
libc.munmap(p, PAGE)
info = module_info(Path("/dev/dmattr"))
out["max_ram"], out["target_max"] = info.max_ram, KmodTarget("kmod").max_size()
fd = os.open("/dev/dmattr", os.O_RDWR)
out["set-at-max"] = set_ram(fd, info.max_ram)
p = map_(fd, info.max_ram)
ctypes.memset(p, 1, info.max_ram)
libc.munmap(p, info.max_ram)
out["set-above-max"] = set_ram(fd, info.max_ram + PAGE)
out["release"] = os.uname().release
json.dump(out, sys.stdout)
"""
# Without CAP_SYS_RAWIO (dropped from the bounding set too, so an exec'd root keeps it off):
# the open is refused, and the CLI says so in one line.
RAWIO = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CAP_SYS_RAWIO, PR_CAPBSET_DROP = 17, 24

class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

def drop_rawio():
    assert libc.prctl(PR_CAPBSET_DROP, CAP_SYS_RAWIO, 0, 0, 0) == 0
    hdr, data = Hdr(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(hdr), data) == 0
    data[0].effective &= ~(1 << CAP_SYS_RAWIO)
    data[0].permitted &= ~(1 << CAP_SYS_RAWIO)
    assert libc.capset(ctypes.byref(hdr), data) == 0

out = {}
pid = os.fork()
if pid == 0:
    drop_rawio()
    try:
        os.close(os.open("/dev/dmattr", os.O_RDWR))
        os._exit(0)
    except OSError as exc:
        os._exit(exc.errno)
out["open"] = errno.errorcode.get(os.WEXITSTATUS(os.waitpid(pid, 0)[1]), "ok")
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    drop_rawio()
    os.dup2(w, 2)
    os.execvp(sys.executable, [sys.executable, "-m", "bench", "targets", "--target", "kmod"])
os.close(w)
err = os.read(r, 65536).decode()
out["cli"] = {"status": os.WEXITSTATUS(os.waitpid(pid, 0)[1]), "stderr": err}
json.dump(out, sys.stdout)
"""
# Hot-removal of the device under a BAR mapping: its PTEs are zapped (SIGBUS), another fd's
# RAM mapping is refilled by the fault handler with its data, and no new mmap is allowed.
REMOVAL = """
import errno, fcntl, json, mmap, os, signal, sys
from bench.targets.kmod import IOC_SET, REQ
DEV = "/sys/bus/pci/devices/0000:00:01.0"
out = {}
bar, ram = os.open("/dev/dmattr", os.O_RDWR), os.open("/dev/dmattr", os.O_RDWR)
open(f"{DEV}/enable", "w").write("1")
fcntl.ioctl(bar, IOC_SET, REQ.pack(1, 1, 4096, 0, 0, 1 << 3, 2, 0, 0, 0))
fcntl.ioctl(ram, IOC_SET, REQ.pack(0, 6, 4096, 0, 0, 0, 0, 0, 0, 0))
pb, pr = mmap.mmap(bar, 4096), mmap.mmap(ram, 4096)
pb[:4], pr[:4] = b"abcd", b"wxyz"

def child_touch(m):
    pid = os.fork()
    if pid == 0:
        m[0]
        os._exit(0)
    st = os.waitpid(pid, 0)[1]
    return signal.Signals(os.WTERMSIG(st)).name if os.WIFSIGNALED(st) else "ok"

out["bar-before"] = child_touch(pb)
open(f"{DEV}/remove", "w").write("1")
out["bar-after-remove"] = child_touch(pb)
out["ram-after-remove"] = pr[:4].decode()
try:
    mmap.mmap(bar, 4096)
    out["mmap-after-remove"] = "ok"
except OSError as exc:
    out["mmap-after-remove"] = errno.errorcode[exc.errno]
pb.close()
pr.close()
open("/sys/bus/pci/rescan", "w").write("1")
out["rescanned"] = os.path.isdir(DEV)
json.dump(out, sys.stdout)
"""
GUEST_SCRIPT = GUEST_SCRIPT.replace("{LIFETIME}", LIFETIME.lstrip()).replace("{RAWIO}", RAWIO.lstrip()) \
    .replace("{REMOVAL}", REMOVAL.lstrip())


def elf_machine(path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[16] == 1  # ELF relocatable (ET_REL): a module
    return int.from_bytes(data[18:20], "little")


@pytest.mark.parametrize("arch,machine", [("arm64", 183), ("x86_64", 62)])
def test_module_builds_against_debian_headers(guest_ready, arch, machine):
    proc = run_cli("kmod", "build", "--arch", arch, module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stderr
    from pathlib import Path

    ko = Path(proc.stdout.strip().splitlines()[-1])
    assert ko.name.startswith("dmattr-") and elf_machine(ko) == machine
    check_cache_handling(arch, ko)


@pytest.mark.parametrize("arch,machine", [("arm64", 183), ("x86_64", 62)])
def test_module_builds_against_6_12_headers(guest_ready, arch, machine):
    # 6.8 renamed MAX_ORDER to MAX_PAGE_ORDER, 6.10 and 6.12 changed follow_pte; the 6.12
    # headers also ship a vmlinux (BTF step skipped).  "6.12": the newest in bookworm-backports.
    proc = run_cli("kmod", "build", "--arch", arch, "--kernel", "6.12", module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stderr
    from pathlib import Path

    ko = Path(proc.stdout.strip().splitlines()[-1])
    assert ko.name.startswith("dmattr-6.12.") and elf_machine(ko) == machine
    check_cache_handling(arch, ko)


def test_module_builds_against_sid_headers(guest_ready):
    # sid's 7.x headers want gcc-16 and kbuild tools linked against a newer glibc than this
    # host's: built with the host's cross gcc, the tools run through sid's own loader.
    proc = run_cli("kmod", "build", "--arch", "arm64", "--kernel", "sid", module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stderr
    from pathlib import Path

    ko = Path(proc.stdout.strip().splitlines()[-1])
    assert re.match(r"dmattr-[7-9]\.", ko.name) and elf_machine(ko) == 183
    vermagic = re.search(rb"vermagic=(\S+)", ko.read_bytes()).group(1).decode()
    assert ko.name.startswith(f"dmattr-{vermagic}")  # modpost really ran (it writes the .mod.c)
    check_cache_handling("arm64", ko)


def check_cache_handling(arch: str, ko) -> None:
    """What the built module does about the cacheable alias of its RAM buffer.  arm64: DC
    CIVAC by VA, stepped by the system-wide (sanitised) CTR_EL0 line size, not
    flush_dcache_page() (which does not reach the point of coherency); QEMU has no cache
    model, so this cannot be observed in a guest.  x86: the PAT memtype of the pages is set
    and reset (set_memory_uc/wc, set_memory_wb)."""
    prefix = "aarch64-linux-gnu-" if arch == "arm64" and platform.machine() != "aarch64" else ""
    undefined = subprocess.run([f"{prefix}nm", "-u", str(ko)], capture_output=True, text=True, check=True).stdout.split()
    if arch == "arm64":
        code = subprocess.run([f"{prefix}objdump", "-d", str(ko)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"\bdc\s+civac\b", code) and "read_sanitised_ftr_reg" in undefined
        assert "flush_dcache_page" not in undefined
    else:
        assert {"set_memory_uc", "set_memory_wc", "set_memory_wb"} <= set(undefined)


def test_unknown_kernel_headers_is_one_line(guest_ready):
    proc = run_cli("kmod", "build", "--kernel", "6.1.0-999-arm64", module="guestkit", timeout=300)
    assert_one_line_error(proc, 2, "no linux-headers-6.1.0-999-arm64", "6.12")


def test_ioctl_numbers_match_the_header():
    assert REQ.size == 48 and INFO.size == 16
    assert IOC_SET == 0x40304401 and IOC_INFO == 0x80104403  # _IOW('D',1,48), _IOR('D',3,16)
    header = (REPO / "guestkit" / "kmod" / "dmattr.h").read_text()
    assert "DMATTR_IOC_SET _IOW('D', 1, struct dmattr_req)" in header
    assert "DMATTR_IOC_INFO _IOR('D', 3, struct dmattr_info)" in header


def test_kmod_target_without_module_is_one_line(tmp_path):
    proc = run_cli("run", "--target", "kmod", env={"DMTBENCH_DMATTR": str(tmp_path / "nodev")})
    assert_one_line_error(proc, 2, "insmod", "guestkit")


def test_module_without_info_ioctl_is_one_line(tmp_path):
    # An older dmattr.ko (or any other file) does not answer DMATTR_IOC_INFO: ENOTTY.
    dev = tmp_path / "dmattr"
    dev.write_bytes(b"")
    proc = run_cli("targets", "--target", "kmod", env={"DMTBENCH_DMATTR": str(dev)})
    assert_one_line_error(proc, 2, "does not answer DMATTR_IOC_INFO", "guestkit kmod build")


@pytest.fixture(scope="module")
def kmod_run(guest_ready, tmp_path_factory):
    res = tmp_path_factory.mktemp("kmod") / "results"
    proc = run_cli("run", "--kmod", "--ivshmem", "1MiB", "--timeout", "400", "--results", str(res), "--", "sh", "-c", GUEST_SCRIPT,
                   module="guestkit", timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return res


def test_every_kernel_attribute_is_offered_or_refused_with_reason(kmod_run):
    text = (kmod_run / "targets-kmod.txt").read_text()
    for a in DEVICE | NORMAL:
        assert f"{a:<14} available" in text
    for a in MISSING:
        assert f"{a:<14} not available: this kernel has no page protection for {a}" in text
    refused = (kmod_run / "refused.txt").read_text().strip()
    assert refused.startswith("error: target kmod cannot give device-gre") and len(refused.splitlines()) == 1


def test_probe_matrix_through_the_module(kmod_run):
    data = json.loads((kmod_run / "probe-kmod.json").read_text())
    out = {(o["attr"], o["probe"]): o for o in data["outcomes"]}
    assert {o["attr"] for o in data["outcomes"]} == DEVICE | NORMAL
    for attr in DEVICE:
        for probe in ("load8-unaligned", "store8-unaligned", "load4-unaligned", "store16-unaligned"):
            assert (out[attr, probe]["result"], out[attr, probe]["code"]) == ("SIGBUS", "BUS_ADRALN")
        assert data["inferred"][attr] == "device"
    for attr in NORMAL:
        assert all(out[attr, p]["result"] == "ok" for p in ("load8-unaligned", "store8-unaligned"))
        assert data["inferred"][attr] == "normal"
    # QEMU does not model DC ZVA's alignment fault on Device memory (the probe notes say so).
    wrong = {(o["probe"], o["attr"]) for o in data["outcomes"] if o["agrees"] is False}
    assert data["emulated"] and wrong <= {("dc-zva", a) for a in DEVICE}


def test_run_over_all_attributes_comes_home(kmod_run):
    (path,) = (kmod_run / "qemu-arm64-tcg").glob("*-kmod.json")
    suite = pyperf.BenchmarkSuite.load(str(path))
    attrs = {b.get_metadata()["attr"]: b.get_metadata() for b in suite.get_benchmarks()}
    assert set(attrs) == DEVICE | NORMAL and len(suite) == 8
    for attr, meta in attrs.items():
        assert meta["emulated"] == "true" and meta["target"] == "kmod"
        assert meta["effective_inferred"] == ("device" if attr in DEVICE else "normal")
        assert meta["effective"] == attr  # TCG: no stage 2, so stage 1 is what you get


def test_bar_range_through_the_module(kmod_run):
    data = json.loads((kmod_run / "probe-kmod-bar.json").read_text())
    assert data["target"] == "kmod:pci:0000:00:01.0/2"
    inferred = {"device-ngnrne": "device", "device-ngnre": "device", "normal-nc": "normal", "normal": "normal"}
    assert data["inferred"] == inferred
    # The ownership override (DMATTR_ALLOW_CLAIMED) travels in the spec and changes nothing
    # for an unowned device.
    claimed = json.loads((kmod_run / "probe-kmod-claimed.json").read_text())
    assert claimed["target"] == "kmod:pci:0000:00:01.0/2,allow-claimed" and claimed["inferred"] == inferred


def test_module_rejects_every_bad_request_and_says_why(kmod_run):
    got = json.loads((kmod_run / "ioctl.json").read_text())
    unsupported = errno.errorcode[errno.EOPNOTSUPP]  # ENOTSUP: the same number on Linux
    special = {"unsupported-attr": unsupported, "absent-bar": "ENXIO", "io-bar": None}
    assert got == {name: "EINVAL" for name in got if name not in special} | special  # arm64 virt: no I/O BAR
    assert len(got) == 16
    dmesg = (kmod_run / "dmesg.txt").read_text()
    for why in ("unknown attribute 99", "must be non-zero page multiples", "above the", "takes no offset",
                "unknown source 7", "no PCI device", "bad BAR address", "is outside BAR 2", "device-gre is not expressible",
                "mmap before DMATTR_IOC_SET", "exceeds the 4096-byte source", "unknown flags 0x2",
                "BAR 1 of 0000:00:01.0 is not a memory BAR", "MAP_PRIVATE refused"):
        assert why in dmesg, why


def test_caller_without_cap_sys_rawio_is_refused(kmod_run):
    got = json.loads((kmod_run / "rawio.json").read_text())
    assert got["open"] == "EPERM"
    assert got["cli"]["status"] == 2 and len(got["cli"]["stderr"].strip().splitlines()) == 1
    assert got["cli"]["stderr"].startswith("error: no permission to open /dev/dmattr") and "CAP_SYS_RAWIO" in got["cli"]["stderr"]
    assert "open refused: the caller lacks CAP_SYS_RAWIO" in (kmod_run / "dmesg.txt").read_text()


def test_device_removal_zaps_bar_mappings_only(kmod_run):
    got = json.loads((kmod_run / "removal.json").read_text())
    assert got == {"bar-before": "ok", "bar-after-remove": "SIGBUS", "ram-after-remove": "wxyz",
                   "mmap-after-remove": "ENODEV", "rescanned": True}
    assert "0000:00:01.0 removed: its dmattr mappings are zapped" in (kmod_run / "dmesg.txt").read_text()


def check_lifetime(results) -> dict:
    """The LIFETIME script's answers: no SET while any mapping (split, forked) remains, the
    source outlives the fd, and the RAM cap is the module's and is exact."""
    got = json.loads((results / "lifetime.json").read_text())
    assert {k: v for k, v in got.items() if k.startswith(("set-", "data-", "mapping-"))} == {
        "set-while-mapped": "EBUSY", "set-after-partial-munmap": "EBUSY", "data-intact": True,
        "set-after-munmap": "ok", "set-while-child-maps": "EBUSY", "set-after-child-exit": "ok",
        "mapping-after-close": True, "set-at-max": "ok", "set-above-max": "EINVAL"}
    # Debian arm64 uses 4 KiB pages: MAX_ORDER 11 (exclusive) on 6.1, MAX_PAGE_ORDER 10
    # (inclusive) on 6.12, both 4 MiB; the Python side takes the module's number.
    assert got["max_ram"] == got["target_max"] == 4 << 20
    dmesg = (results / "dmesg.txt").read_text()
    assert "SET refused: 1 mapping(s) of the current source remain" in dmesg
    return got


def test_set_is_refused_while_mapped_and_cap_comes_from_the_module(kmod_run):
    assert check_lifetime(kmod_run)["release"].startswith("6.1.")


GUEST_612 = """
python -m bench targets --target kmod > results/targets-kmod.txt
python -m bench probe --target kmod --json > results/probe-kmod.json
python - > results/lifetime.json <<'PY'
""" + LIFETIME.lstrip() + """PY
dmesg | grep dmattr: > results/dmesg.txt
"""


def test_module_on_6_12_guest(guest_ready, tmp_path):
    # The bookworm-backports 6.12 kernel: insmod, map every attribute with the probes, and
    # the lifetime and cap rules (MAX_PAGE_ORDER, follow_pfnmap_start).
    res = tmp_path / "results"
    proc = run_cli("run", "--kernel", "6.12", "--kmod", "--timeout", "400", "--results", str(res), "--",
                   "sh", "-c", GUEST_612, module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert check_lifetime(res)["release"].startswith("6.12.")
    text = (res / "targets-kmod.txt").read_text()
    assert all(f"{a:<14} available" in text for a in DEVICE | NORMAL)
    data = json.loads((res / "probe-kmod.json").read_text())
    assert data["inferred"] == {a: "device" if a in DEVICE else "normal" for a in DEVICE | NORMAL}


UNASSIGNED = """
import errno, fcntl, json, os, sys
from bench.targets.kmod import IOC_SET, REQ
fd = os.open("/dev/dmattr", os.O_RDWR)
try:
    fcntl.ioctl(fd, IOC_SET, REQ.pack(1, 1, 4096, 0, 0, 1 << 3, 2, 0, 0, 0))
    out = "ok"
except OSError as exc:
    out = errno.errorcode[exc.errno]
json.dump({"set": out, "resource": open("/sys/bus/pci/devices/0000:00:01.0/resource").read().splitlines()[2]},
          sys.stdout)
"""


def test_unassigned_bar_is_refused(guest_ready, tmp_path):
    # A 1 TiB ivshmem BAR does not fit the virt machine's 512 GiB 64-bit window: the kernel
    # fails to assign it (and clears its flags; an IORESOURCE_UNSET BAR that keeps
    # IORESOURCE_MEM, the x86 case the module also refuses, could not be made here).
    res = tmp_path / "results"
    script = "python - > results/unassigned.json <<'PY'\n" + UNASSIGNED.lstrip() + "PY\ndmesg > results/dmesg.txt\n"
    proc = run_cli("run", "--kmod", "--ivshmem", "1TiB", "--timeout", "300", "--results", str(res), "--", "sh", "-c",
                   script, module="guestkit", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    got = json.loads((res / "unassigned.json").read_text())
    dmesg = (res / "dmesg.txt").read_text()
    assert "0000:00:01.0: BAR 2 [mem size 0x10000000000 64bit pref]: failed to assign" in dmesg
    assert got["set"] == "ENXIO" and got["resource"].split()[2] == "0x0000000000000000"
    assert "BAR 2 of 0000:00:01.0 is not a memory BAR (I/O, absent, or left unassigned)" in dmesg


X86_SCRIPT = """
mount -t debugfs debugfs /sys/kernel/debug
python -m bench targets --target kmod > results/targets-kmod.txt
python - > results/x86.json <<'PY'
import json, sys
from bench.errors import UserError
from bench.targets import open_target
from bench.targets.pci import pat_types

def try_open(spec, attr, size):
    t = open_target(spec)
    try:
        m = t.open(attr, size)
    except UserError as exc:
        return {"error": str(exc)}
    got = {"realised": m.realised, "pat": sorted(pat_types(t.pci.bar.start, size)) if getattr(t, "pci", None) else None}
    m.close()
    return got

out = {}
ram = open_target("kmod")
out["ram"] = {a: try_open("kmod", a, 8192) for a in ram.attrs()}
bar = open_target("kmod:pci:0000:00:01.0/2")
out["bar"] = {a: try_open("kmod:pci:0000:00:01.0/2", a, 8192) for a in bar.attrs()}
out["sysfs-wc"] = try_open("pci:0000:00:01.0/2", "normal-nc", 4096)
# PAT hands a WC request the UC- type of an existing mapping of the range: both the
# module (PTE check) and the sysfs target (pat_memtype_list) must refuse, not record WC.
uc = open_target("pci:0000:00:01.0/2").open("device-ngnre", 4096)
out["wc-over-uc"] = {"kmod": try_open("kmod:pci:0000:00:01.0/2", "normal-nc", 4096),
                     "sysfs": try_open("pci:0000:00:01.0/2", "normal-nc", 4096)}
uc.close()
import errno, fcntl, os
from bench.targets.kmod import IOC_SET, REQ
fd = os.open("/dev/dmattr", os.O_RDWR)
{IOBAR}from bench import stage2
out["s2"] = stage2.read(fd, 0).read
json.dump(out, sys.stdout)
PY
dmesg > results/dmesg.txt
"""
X86_SCRIPT = X86_SCRIPT.replace("{IOBAR}", IOBAR.lstrip())
PAT_NAME = {"device-ngnrne": "uncached", "device-ngnre": "uncached-minus", "normal-nc": "write-combining",
            "normal-wt": "write-through", "normal": "write-back"}


def test_x86_pat_gives_the_type_asked(tmp_path):
    deps = run_cli("deps", "--arch", "x86_64", module="guestkit", timeout=1200)
    assert deps.returncode == 0, deps.stderr
    res = tmp_path / "results"
    proc = run_cli("run", "--arch", "x86_64", "--accel", "tcg", "--kmod", "--ivshmem", "1MiB", "--timeout", "400",
                   "--results", str(res), "--", "sh", "-c", X86_SCRIPT, module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    text = (res / "targets-kmod.txt").read_text()
    assert "device-ngnrne  not available: x86 PAT gives RAM UC- at most" in text
    assert "normal-wt      not available: set_memory_wt() is not exported" in text
    got = json.loads((res / "x86.json").read_text())
    # RAM: the pages' memtype is set, so the PTEs (checked by the module) carry the type.
    assert got["ram"] == {"device-ngnre": {"realised": "/dev/dmattr contiguous kernel buffer, PAT UC- checked in the page table", "pat": None},
                          "normal-nc": {"realised": "/dev/dmattr contiguous kernel buffer, PAT WC checked in the page table", "pat": None},
                          "normal": {"realised": "/dev/dmattr contiguous kernel buffer, PAT WB checked in the page table", "pat": None}}
    # BAR: PAT's own record of each mapping is the type asked, strong UC included.  WB on
    # a BAR depends on the MTRRs: PAT may make it UC-, which the module then refuses.
    assert set(got["bar"]) == set(PAT_NAME)
    for attr, res_ in got["bar"].items():
        if attr == "normal" and "error" in res_:
            assert "the kernel mapped another memory type than asked" in res_["error"]
        else:
            assert res_["pat"] == [PAT_NAME[attr]], (attr, res_)
    assert got["sysfs-wc"]["realised"] == "sysfs resource2_wc (PAT write-combining, read back from pat_memtype_list)"
    assert "the kernel mapped another memory type than asked" in got["wc-over-uc"]["kmod"]["error"]
    assert "PAT gave uncached-minus" in got["wc-over-uc"]["sysfs"]["error"]
    assert got["s2"] == "unavailable: this dmattr build has no stage-2 read (only arm64 KVM hosts have one)"
    dev, bar, err = got["io-bar"]  # an x86 PC has I/O-port BARs (IDE, SATA): refused as not memory
    assert err == "ENXIO", got["io-bar"]
    dmesg = (res / "dmesg.txt").read_text()
    assert f"BAR {bar} of {dev} is not a memory BAR" in dmesg
    assert "map pfn RAM range" not in dmesg  # PAT replaced a RAM buffer's type (the old bug)
    assert "dmattr: normal-nc asked, but the page table holds memory-type bits" in dmesg
